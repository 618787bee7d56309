"""SmppPool (several binds to the in-test SMSC: dispatch, health) and the SmppGateway on top."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from carrierd.channels.sms import SmppGateway, concat_reference
from carrierd.channels.types import InboundSms, Receipt, SmsGateway, SmsRequest
from carrierd.config import CarrierConfig
from carrierd.domain.clock import SystemClock
from carrierd.smpp.pdu import CommandStatus, DataSm, DeliverSm, SubmitSm
from carrierd.smpp.pool import SmppPool
from carrierd.telemetry import Metrics, SubmitMetrics
from tests.integration.smsc_stub import StubSmsc

WAIT_S = 5.0  # an upper bound for things to happen, not a speed claim


def carrier(port: int, **overrides: object) -> CarrierConfig:
    base = CarrierConfig(
        name="softbank",
        port=port,
        binds=3,
        system_id="carrierd",
        password="secret",
        window=8,
        response_timeout_s=2.0,
        reconnect_max_backoff_s=0.1,
        throttle_pause_s=0.05,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def message(number: int) -> SubmitSm:
    return SubmitSm(
        sequence_number=0,
        source_addr="249200",
        destination_addr="819012345678",
        short_message=f"message {number}".encode(),
    )


def ignore(pdu: DeliverSm | DataSm, bind_id: str) -> None:
    pass


@pytest.fixture
async def stub() -> AsyncIterator[StubSmsc]:
    smsc = StubSmsc()
    await smsc.start()
    yield smsc
    await smsc.stop()


@pytest.fixture
async def pools() -> AsyncIterator[list[SmppPool]]:
    started: list[SmppPool] = []
    yield started
    for pool in started:
        await pool.stop(drain_timeout_s=0.1)


async def started_pool(
    pools: list[SmppPool], config: CarrierConfig, bind_wait_s: float = 1.0
) -> SmppPool:
    pool = SmppPool(config, ignore, initial_backoff_s=0.01, bind_wait_s=bind_wait_s)
    pools.append(pool)
    await pool.start()
    return pool


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - polls state on both sides of the socket
            await asyncio.sleep(0.005)


def per_connection(stub: StubSmsc) -> list[int]:
    return sorted(c.submits_received for c in stub.bound_connections)


async def test_health_lists_every_bind(stub: StubSmsc, pools: list[SmppPool]) -> None:
    pool = await started_pool(pools, carrier(stub.port))

    health = pool.health()

    assert health.carrier == "softbank"
    assert [b.bind_id for b in health.binds] == ["softbank-1", "softbank-2", "softbank-3"]
    assert [b.state for b in health.binds] == ["bound"] * 3
    assert health.bound_count == 3
    assert health.available and pool.is_available()
    assert len(stub.binds) == 3

    await pool.stop(drain_timeout_s=1.0)
    assert pool.health().bound_count == 0
    assert stub.unbinds == 3


async def test_dispatches_to_the_least_loaded_bind(stub: StubSmsc, pools: list[SmppPool]) -> None:
    stub.behaviour.response_delay_s = 0.1
    pool = await started_pool(pools, carrier(stub.port))

    results = await asyncio.gather(*(pool.submit(message(n)) for n in range(6)))

    assert all(r.outcome == "accepted" for r in results)
    assert per_connection(stub) == [2, 2, 2]
    assert sorted(r.bind_id or "" for r in results) == [
        "softbank-1", "softbank-1", "softbank-2", "softbank-2", "softbank-3", "softbank-3"
    ]  # fmt: skip


async def test_idle_binds_share_sequential_traffic(stub: StubSmsc, pools: list[SmppPool]) -> None:
    pool = await started_pool(pools, carrier(stub.port))

    for n in range(6):
        assert (await pool.submit(message(n))).outcome == "accepted"

    assert per_connection(stub) == [2, 2, 2]


async def test_parts_go_in_order_on_one_bind(stub: StubSmsc, pools: list[SmppPool]) -> None:
    pool = await started_pool(pools, carrier(stub.port))

    results = await pool.submit_all([message(n) for n in range(4)])

    assert len({r.bind_id for r in results}) == 1
    assert per_connection(stub) == [0, 0, 4]
    assert [p.short_message for p in stub.submits] == [f"message {n}".encode() for n in range(4)]


async def test_a_dead_bind_is_skipped(stub: StubSmsc, pools: list[SmppPool]) -> None:
    pool = await started_pool(pools, carrier(stub.port, binds=2))
    # From now on the SMSC refuses binds, so a dropped connection stays down.
    stub.behaviour.bind_status = CommandStatus.ESME_RBINDFAIL
    stub.connections[0].transport.abort()  # type: ignore[union-attr]
    await wait_for(lambda: pool.health().bound_count == 1)

    results = await asyncio.gather(*(pool.submit(message(n)) for n in range(4)))

    assert [r.outcome for r in results] == ["accepted"] * 4
    assert len({r.bind_id for r in results}) == 1
    assert sorted(b.state for b in pool.health().binds) == ["bound", "connecting"]


async def test_throttled_bind_is_used_only_when_no_other_is_free(
    stub: StubSmsc, pools: list[SmppPool]
) -> None:
    stub.behaviour.submit_status = lambda pdu, index: (
        CommandStatus.ESME_RTHROTTLED if index == 0 else 0
    )
    pool = await started_pool(pools, carrier(stub.port, binds=2, throttle_pause_s=0.5))
    first = asyncio.ensure_future(pool.submit(message(0)))
    await wait_for(lambda: any(b.state == "throttled" for b in pool.health().binds))
    throttled = next(b.bind_id for b in pool.health().binds if b.state == "throttled")
    assert not all(b.state == "throttled" for b in pool.health().binds)

    later = [await pool.submit(message(n)) for n in range(1, 4)]

    assert {r.bind_id for r in later} != {throttled}
    assert all(r.outcome == "accepted" for r in later)
    assert (await first).outcome == "accepted"


async def test_a_throttled_bind_still_takes_submits_at_its_slower_rate(
    stub: StubSmsc, pools: list[SmppPool]
) -> None:
    stub.behaviour.submit_status = lambda pdu, index: (
        CommandStatus.ESME_RTHROTTLED if index == 0 else 0
    )
    pool = await started_pool(
        pools, carrier(stub.port, binds=1, submit_rate_per_s=100.0, throttle_pause_s=0.5)
    )

    assert (await pool.submit(message(0))).outcome == "accepted"

    (bind,) = pool.health().binds
    assert bind.state == "throttled"
    assert bind.send_rate_per_s == pytest.approx(80.0)  # cut from its ceiling
    # The only bind is throttled, and the carrier is still available: a
    # message claimed now goes to it rather than being held back.
    assert pool.is_available()
    assert pool.health().available
    assert (await pool.submit(message(1))).outcome == "accepted"


async def test_no_bind_waits_briefly_then_unsent(pools: list[SmppPool]) -> None:
    closed = StubSmsc()
    await closed.start()
    port = closed.port
    await closed.stop()
    pool = await started_pool(pools, carrier(port, binds=2), bind_wait_s=0.05)

    results = await pool.submit_all([message(1), message(2)])

    assert [(r.outcome, r.detail) for r in results] == [("unsent", "no bind available")] * 2
    assert pool.health().bound_count == 0
    assert not pool.is_available()
    assert [b.state for b in pool.health().binds] == ["connecting", "connecting"]


async def test_submit_waits_for_a_bind_that_comes_up(stub: StubSmsc, pools: list[SmppPool]) -> None:
    stub.behaviour.bind_status = CommandStatus.ESME_RBINDFAIL
    pool = await started_pool(pools, carrier(stub.port, binds=1), bind_wait_s=WAIT_S)
    assert pool.health().bound_count == 0

    pending = asyncio.ensure_future(pool.submit(message(1)))
    await asyncio.sleep(0.05)
    assert not pending.done()
    stub.behaviour.bind_status = 0

    assert (await pending).outcome == "accepted"


# -- the SMS gateway on top of the pools ----------------------------------------------------


@dataclass
class RecordingEvents:
    """SmsEvents that keep what they are given."""

    receipts: list[Receipt] = field(default_factory=list)
    inbound_messages: list[InboundSms] = field(default_factory=list)

    def receipt(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)

    def inbound(self, message: InboundSms) -> None:
        self.inbound_messages.append(message)


async def test_receipts_backlogged_once_the_smsc_deliver_window_is_full(
    stub: StubSmsc, pools: list[SmppPool]
) -> None:
    # Each deliver_sm is answered when its receipt is durable (the future
    # completes); the SMSC's deliver window is learned as the most ever
    # unanswered, and being at it means receipts queue at the SMSC.
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = []

    def recording(pdu: DeliverSm | DataSm, bind_id: str) -> asyncio.Future[None]:
        futures.append(loop.create_future())
        return futures[-1]

    pool = SmppPool(carrier(stub.port, binds=1), recording, initial_backoff_s=0.01)
    pools.append(pool)
    await pool.start()

    def deliver(sequence_numbers: range) -> None:
        for n in sequence_numbers:
            stub.send_to_clients(DeliverSm(sequence_number=n, short_message=b"x"))

    deliver(range(1, 5))
    await wait_for(lambda: len(futures) == 4)
    assert not pool.receipts_backlogged()  # four say nothing about the window yet

    deliver(range(5, 11))
    await wait_for(lambda: len(futures) == 10)
    assert pool.receipts_backlogged()
    assert pool.health().binds[0].delivers_unanswered == 10

    for future in futures[:5]:
        future.set_result(None)
    await wait_for(lambda: len(stub.client_responses) == 5)
    assert not pool.receipts_backlogged()  # 5 of a window of 10
    assert pool.health().binds[0].delivers_unanswered == 5

    deliver(range(11, 16))
    await wait_for(lambda: len(futures) == 15)
    assert pool.receipts_backlogged()  # full again
    for future in futures[5:]:
        future.set_result(None)
    await wait_for(lambda: len(stub.client_responses) == 15)
    assert not pool.receipts_backlogged()


async def test_gateway_submits_parts_and_correlates_receipts(stub: StubSmsc) -> None:
    stub.behaviour.message_id_style = "hex"
    stub.behaviour.receipts = "text"
    stub._last_message_id = 0x1F  # ids go out as "20", "21", "22"
    events = RecordingEvents()
    config = carrier(stub.port, name="au", binds=2, message_id_style="hex")
    gateway = SmppGateway({"au": config}, events, SystemClock())
    as_protocol: SmsGateway = gateway  # the dispatcher's view of it
    await gateway.start()
    request = SmsRequest(
        message_id=42,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=("あ" * 67, "い" * 67, "う" * 6),
        expires_at=datetime.now(UTC) + timedelta(hours=72),
    )
    try:
        assert list(as_protocol.carriers()) == ["au"]
        assert as_protocol.is_available("au") and not as_protocol.is_available("docomo")
        assert gateway.health()["au"].bound_count == 2

        outcomes = await as_protocol.submit("au", request)

        assert [(o.part_no, o.result, o.smsc_message_id) for o in outcomes] == [
            (1, "accepted", "32"),
            (2, "accepted", "33"),
            (3, "accepted", "34"),
        ]
        assert len({o.bind_id for o in outcomes}) == 1
        await wait_for(lambda: len(events.receipts) == 3)
        assert [(r.carrier, r.smsc_message_id, r.stat) for r in events.receipts] == [
            ("au", "32", "DELIVRD"),
            ("au", "33", "DELIVRD"),
            ("au", "34", "DELIVRD"),
        ]
        # What reached the SMSC: concatenated UCS-2 parts to the international number.
        assert [p.short_message[:6] for p in stub.submits] == [
            bytes([5, 0, 3, concat_reference(42, 1, bits=8), 3, n]) for n in (1, 2, 3)
        ]
        assert {p.destination_addr for p in stub.submits} == {"819012345678"}

        stub.send_to_clients(
            DeliverSm(
                sequence_number=99,
                source_addr="819012345678",
                destination_addr="0120123456",
                data_coding=8,
                short_message="はい".encode("utf-16-be"),
            )
        )
        await wait_for(lambda: len(events.inbound_messages) >= 1)
        inbound = events.inbound_messages[0]
        assert (inbound.carrier, inbound.source_addr, inbound.short_message) == (
            "au",
            "819012345678",
            "はい".encode("utf-16-be"),
        )
    finally:
        await gateway.stop(drain_timeout_s=1.0)
    assert gateway.health()["au"].bound_count == 0
    with pytest.raises(ValueError, match="no SMPP pool"):
        await gateway.submit("docomo", request)


async def test_gateway_feeds_the_submit_metrics_of_each_carrier(stub: StubSmsc) -> None:
    statuses = {0: CommandStatus.ESME_RTHROTTLED, 2: CommandStatus.ESME_RINVDSTADR}
    stub.behaviour.submit_status = lambda pdu, index: statuses.get(index, 0)
    metrics = Metrics()
    config = carrier(stub.port, name="au", binds=2)
    gateway = SmppGateway(
        {"au": config},
        RecordingEvents(),
        SystemClock(),
        submit_observers={"au": SubmitMetrics(metrics, "au")},
    )
    await gateway.start()
    request = SmsRequest(
        message_id=7,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=("あ",),
        expires_at=datetime.now(UTC) + timedelta(hours=72),
    )
    try:
        first = await gateway.submit("au", request)
        second = await gateway.submit("au", request)
    finally:
        await gateway.stop(drain_timeout_s=1.0)

    assert [o.result for o in first + second] == ["accepted", "refused"]
    sample = metrics.registry.get_sample_value
    assert sample("carrierd_submit_responses_total", {"carrier": "au", "status": "ok"}) == 1
    assert sample("carrierd_submit_responses_total", {"carrier": "au", "status": "0x00000058"}) == 1
    assert sample("carrierd_submit_responses_total", {"carrier": "au", "status": "0x0000000b"}) == 1
    assert sample("carrierd_throttled_total", {"carrier": "au"}) == 1
    assert sample("carrierd_submit_response_seconds_count", {"carrier": "au"}) == 3
