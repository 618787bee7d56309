"""SmppSession against the in-test SMSC (smsc_stub) over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import structlog.testing
import uvloop

from carrierd.config import CarrierConfig
from carrierd.smpp import session as session_module
from carrierd.smpp.pdu import (
    HEADER_LEN,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnknownPdu,
    encode,
)
from carrierd.smpp.session import (
    MAX_SEQUENCE_NUMBER,
    SessionHealth,
    SmppSession,
    SubmitRateLimiter,
    SubmitResult,
)
from tests.integration.smsc_stub import StubSmsc

WAIT_S = 5.0  # an upper bound for things to happen, not a speed claim


@dataclass
class Inbox:
    """What the session handed to on_deliver, and a switch to make the handler fail."""

    delivered: list[tuple[DeliverSm | DataSm, str]] = field(default_factory=list)
    fail_next: int = 0

    def __call__(self, pdu: DeliverSm | DataSm, bind_id: str) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("handler failure (test)")
        self.delivered.append((pdu, bind_id))


def carrier(port: int, **overrides: object) -> CarrierConfig:
    base = CarrierConfig(
        name="docomo",
        port=port,
        system_id="carrierd",
        password="secret",
        system_type="A2P",
        addr_ton=1,
        addr_npi=1,
        window=8,
        response_timeout_s=1.0,
        enquire_link_interval_s=30.0,
        reconnect_max_backoff_s=0.1,
        throttle_pause_s=0.05,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def message(number: int) -> SubmitSm:
    return SubmitSm(
        sequence_number=0,
        source_addr_ton=2,
        source_addr_npi=1,
        source_addr="0120000000",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="819012345678",
        registered_delivery=1,
        short_message=f"message {number}".encode(),
    )


def texts(submits: list[SubmitSm]) -> list[str]:
    return [pdu.short_message.decode() for pdu in submits]


@pytest.fixture
async def stub() -> AsyncIterator[StubSmsc]:
    smsc = StubSmsc()
    await smsc.start()
    yield smsc
    await smsc.stop()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def sessions() -> AsyncIterator[list[SmppSession]]:
    """Sessions a test starts are stopped afterwards, whatever the test did."""
    started: list[SmppSession] = []
    yield started
    for session in started:
        await session.stop(drain_timeout_s=0.1)


async def started_session(
    sessions: list[SmppSession],
    config: CarrierConfig,
    inbox: Callable[[DeliverSm | DataSm, str], None],
    **kwargs: object,
) -> SmppSession:
    session = SmppSession(config, "docomo-1", inbox, initial_backoff_s=0.01, **kwargs)  # type: ignore[arg-type]
    sessions.append(session)
    await session.start()
    return session


def health_of(session: SmppSession) -> SessionHealth:
    # A call, so that mypy does not carry an earlier assert on session.health forward.
    return session.health


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - polls state on both sides of the socket
            await asyncio.sleep(0.005)


# -- bind, submit, unbind -----------------------------------------------------------------


async def test_binds_submits_and_unbinds(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port), inbox)
    assert session.health == "bound"
    [bind] = stub.binds
    assert type(bind).__name__ == "BindTransceiver"
    assert (bind.system_id, bind.password, bind.system_type) == ("carrierd", "secret", "A2P")
    assert (bind.addr_ton, bind.addr_npi, bind.interface_version) == (1, 1, 0x34)

    first = await session.submit(message(1))
    second = await session.submit(message(2))

    assert first == SubmitResult("accepted", "docomo-1", message_id="1")
    assert second.message_id == "2"
    # Per-connection sequence numbers: the bind took 1.
    assert [pdu.sequence_number for pdu in stub.submits] == [2, 3]
    assert texts(stub.submits) == ["message 1", "message 2"]

    await session.stop(drain_timeout_s=1.0)
    assert health_of(session) == "stopped"
    assert stub.unbinds == 1
    assert (await session.submit(message(3))).outcome == "unsent"


async def test_pair_mode_binds_transmitter_and_receiver(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.receipts = "tlv"
    session = await started_session(sessions, carrier(stub.port, bind_mode="pair"), inbox)

    assert sorted(type(b).__name__ for b in stub.binds) == ["BindReceiver", "BindTransmitter"]
    assert session.link_states == {"transmitter": True, "receiver": True}
    result = await session.submit(message(1))
    assert result.outcome == "accepted"
    await wait_for(lambda: len(inbox.delivered) == 1)
    receipt, bind_id = inbox.delivered[0]
    assert receipt.receipted_message_id == result.message_id
    assert bind_id == "docomo-1"
    # The receipt came and was answered on the receiver connection.
    await wait_for(lambda: any(isinstance(r, DeliverSmResp) for r in stub.client_responses))

    await session.stop(drain_timeout_s=1.0)
    assert stub.unbinds == 2


@pytest.fixture
def tls_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=smsc",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(
    tls_certificate: tuple[Path, Path], inbox: Inbox, sessions: list[SmppSession]
) -> None:
    cert, key = tls_certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    tls_stub = StubSmsc()
    await tls_stub.start(ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    try:
        session = await started_session(
            sessions, carrier(tls_stub.port, tls=True), inbox, ssl_context=client_context
        )
        assert (await session.submit(message(1))).outcome == "accepted"
        await session.stop(drain_timeout_s=1.0)
    finally:
        await tls_stub.stop()


# -- the window ---------------------------------------------------------------------------


async def test_window_bounds_unanswered_submits(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.response_delay_s = 0.02
    session = await started_session(sessions, carrier(stub.port, window=4), inbox)

    results = await session.submit_all([message(n) for n in range(20)])

    assert [r.outcome for r in results] == ["accepted"] * 20
    assert stub.max_outstanding == 4
    assert texts(stub.submits) == [f"message {n}" for n in range(20)]


async def test_response_timeout_is_unknown_and_bind_stays(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_submits = False
    session = await started_session(sessions, carrier(stub.port, response_timeout_s=0.2), inbox)

    result = await session.submit(message(1))

    assert result.outcome == "unknown"
    assert "no submit_sm_resp" in result.detail
    assert session.in_flight == 0
    stub.behaviour.answer_submits = True
    assert (await session.submit(message(2))).outcome == "accepted"
    assert len(stub.binds) == 1


# -- answers that are not OK -------------------------------------------------------------


@dataclass
class Observed:
    """A SubmitObserver that keeps what it was told."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    throttles: int = 0

    def submit_answered(self, command_status: int, elapsed_s: float) -> None:
        self.answers.append((command_status, elapsed_s))

    def throttled(self) -> None:
        self.throttles += 1


async def test_observer_hears_every_answer_with_its_time_since_the_write(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.response_delay_s = 0.05
    statuses = {1: CommandStatus.ESME_RTHROTTLED, 3: CommandStatus.ESME_RINVDSTADR}
    stub.behaviour.submit_status = lambda pdu, index: statuses.get(index, 0)
    observed = Observed()
    session = await started_session(
        sessions, carrier(stub.port, window=1), inbox, observer=observed
    )

    results = await session.submit_all([message(n) for n in range(3)])

    assert [r.outcome for r in results] == ["accepted", "accepted", "refused"]
    # Message 1 was throttled once and answered again when resent.
    assert [status for status, _ in observed.answers] == [
        0, CommandStatus.ESME_RTHROTTLED, 0, CommandStatus.ESME_RINVDSTADR
    ]  # fmt: skip
    assert observed.throttles == 1
    # Each answer waited out the stub's delay (less the loop's timer slack).
    assert all(elapsed_s >= 0.04 for _, elapsed_s in observed.answers)


async def test_observer_is_not_told_of_submits_without_an_answer(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_submits = False
    observed = Observed()
    session = await started_session(
        sessions, carrier(stub.port, response_timeout_s=0.2), inbox, observer=observed
    )

    assert (await session.submit(message(1))).outcome == "unknown"

    assert observed.answers == [] and observed.throttles == 0


@pytest.mark.parametrize(
    "status", [CommandStatus.ESME_RTHROTTLED, CommandStatus.ESME_RMSGQFUL], ids=lambda s: s.name
)
async def test_throttling_slows_the_bind_and_retries_in_order(
    status: int, stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.submit_status = lambda pdu, index: status if index in (1, 2) else 0
    health_seen: list[SessionHealth] = []
    session = await started_session(
        sessions,
        carrier(stub.port, window=1),
        inbox,
        on_health_change=lambda s: health_seen.append(s.health),
    )

    results = await session.submit_all([message(n) for n in range(5)])

    assert [r.outcome for r in results] == ["accepted"] * 5
    # Throttled twice, the second PDU goes out again before any later one.
    assert texts(stub.submits) == [
        "message 0", "message 1", "message 1", "message 1", "message 2", "message 3", "message 4"
    ]  # fmt: skip
    assert "throttled" in health_seen
    assert session.stats.throttled == 2
    assert len(stub.binds) == 1
    # No rate was configured; the bind now keeps to one, backed off to its
    # floor (one submit per throttle_pause_s) and recovering from there.
    assert session.health == "throttled"
    assert session.send_rate_per_s is not None and session.send_rate_per_s >= 1 / 0.05


async def test_throttled_pdu_goes_before_later_queued_ones(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.response_delay_s = 0.01
    stub.behaviour.submit_status = lambda pdu, index: (
        CommandStatus.ESME_RTHROTTLED if index == 0 else 0
    )
    session = await started_session(sessions, carrier(stub.port, window=2), inbox)

    results = await session.submit_all([message(n) for n in range(8)])

    assert all(r.outcome == "accepted" for r in results)
    sent = texts(stub.submits)
    retry_at = sent.index("message 0", 1)
    # Only what was already on the wire when the throttle answer came may precede it.
    assert set(sent[1:retry_at]) <= {"message 1", "message 2"}


@pytest.mark.parametrize("status", [0x400, 0x4FF, CommandStatus.ESME_RINVDSTADR])
async def test_error_status_is_refused_without_rebind(
    status: int, stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.submit_status = lambda pdu, index: status if index == 0 else 0
    session = await started_session(sessions, carrier(stub.port), inbox)

    refused = await session.submit(message(1))
    accepted = await session.submit(message(2))

    assert (refused.outcome, refused.command_status) == ("refused", status)
    assert accepted.outcome == "accepted"
    assert len(stub.binds) == 1
    assert stub.disconnects == 0


async def test_generic_nack_answer_is_refused(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.raw_submit_response = lambda pdu, index: encode(
        GenericNack(
            sequence_number=pdu.sequence_number, command_status=CommandStatus.ESME_RINVCMDLEN
        )
    )
    session = await started_session(sessions, carrier(stub.port), inbox)

    result = await session.submit(message(1))

    assert (result.outcome, result.command_status) == ("refused", CommandStatus.ESME_RINVCMDLEN)


async def test_malformed_response_fails_its_entry_as_unknown(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    def broken_response(pdu: SubmitSm, index: int) -> bytes | None:
        if index != 0:
            return None
        body = b"abc\x00\x01"  # message_id, then one stray octet: a broken TLV stream
        header = (HEADER_LEN + len(body)).to_bytes(4, "big") + CommandId.SUBMIT_SM_RESP.to_bytes(
            4, "big"
        )
        return header + bytes(4) + pdu.sequence_number.to_bytes(4, "big") + body

    stub.behaviour.raw_submit_response = broken_response
    session = await started_session(sessions, carrier(stub.port), inbox)

    broken = await session.submit(message(1))
    fine = await session.submit(message(2))

    assert broken.outcome == "unknown"
    assert "unreadable response" in broken.detail
    assert fine.outcome == "accepted"
    # No generic_nack for a response, and the bind stays.
    assert not any(isinstance(r, GenericNack) for r in stub.client_responses)
    assert len(stub.binds) == 1


# -- losing the connection ----------------------------------------------------------------


async def test_disconnect_mid_window_in_flight_unknown_queued_unsent_then_reconnects(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_submits = False
    session = await started_session(sessions, carrier(stub.port, window=3), inbox)

    pending = asyncio.ensure_future(session.submit_all([message(n) for n in range(5)]))
    await wait_for(lambda: len(stub.submits) == 3)
    stub.drop_connections()
    results = await pending

    assert [r.outcome for r in results] == ["unknown"] * 3 + ["unsent"] * 2
    assert "bind lost" in results[3].detail
    await wait_for(lambda: session.health == "bound")
    stub.behaviour.answer_submits = True
    assert (await session.submit(message(9))).outcome == "accepted"
    assert len(stub.binds) == 2
    assert (session.stats.binds, session.stats.reconnects) == (2, 1)


async def test_peer_closing_on_a_submit(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.disconnect_on_submit = 2
    session = await started_session(sessions, carrier(stub.port), inbox)

    assert (await session.submit(message(1))).outcome == "accepted"
    assert (await session.submit(message(2))).outcome == "unknown"
    await wait_for(lambda: session.health == "bound")
    assert (await session.submit(message(3))).outcome == "accepted"


async def test_enquire_link_when_idle(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    await started_session(sessions, carrier(stub.port, enquire_link_interval_s=0.05), inbox)

    await wait_for(lambda: stub.enquire_links >= 3)
    assert len(stub.binds) == 1


async def test_unanswered_enquire_link_means_dead_peer(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_enquire_link = False
    config = carrier(stub.port, enquire_link_interval_s=0.05, response_timeout_s=0.1)
    session = await started_session(sessions, config, inbox)

    await wait_for(lambda: len(stub.binds) >= 2)
    assert session.stats.dead_peers >= 1
    stub.behaviour.answer_enquire_link = True
    await wait_for(lambda: session.health == "bound")


async def test_bind_refused_is_retried(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.bind_status = CommandStatus.ESME_RINVPASWD
    session = await started_session(sessions, carrier(stub.port), inbox)

    assert session.health == "connecting"
    assert (await session.submit(message(1))).outcome == "unsent"
    await wait_for(lambda: len(stub.binds) >= 2)
    stub.behaviour.bind_status = 0
    await wait_for(lambda: session.health == "bound")
    # Refused attempts are failures; the first bind that works is no reconnect.
    assert session.stats.bind_failures == len(stub.binds) - 1
    assert session.stats.reconnects == 0


async def test_binds_dropped_at_once_do_not_reconnect_in_a_tight_loop(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.drop_after_bind = True
    await started_session(sessions, carrier(stub.port, reconnect_max_backoff_s=0.2), inbox)

    await asyncio.sleep(0.5)

    # Backoff 0.01, 0.02, 0.04 ... capped at 0.2 s allows about eight binds in 0.5 s;
    # reconnecting at once would make hundreds. (Slowness only lowers the count.)
    assert 2 <= len(stub.binds) < 30


async def test_unreachable_smsc_start_returns_and_submit_is_unsent(
    inbox: Inbox, sessions: list[SmppSession]
) -> None:
    closed = StubSmsc()
    await closed.start()
    port = closed.port
    await closed.stop()

    session = await started_session(sessions, carrier(port), inbox)

    assert session.health == "connecting"
    result = await session.submit(message(1))
    assert (result.outcome, result.detail) == ("unsent", "bind connecting")


# -- what the SMSC sends us -----------------------------------------------------------------


async def test_deliver_sm_and_data_sm_are_always_answered(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    await started_session(sessions, carrier(stub.port), inbox)
    inbox.fail_next = 1

    stub.send_to_clients(DeliverSm(sequence_number=10, short_message=b"first"))
    stub.send_to_clients(DeliverSm(sequence_number=11, short_message=b"second"))
    stub.send_to_clients(DataSm(sequence_number=12, message_payload=b"third"))
    await wait_for(lambda: len(stub.client_responses) == 3)

    assert stub.client_responses == [
        DeliverSmResp(sequence_number=10, command_status=CommandStatus.ESME_RX_T_APPN),
        DeliverSmResp(sequence_number=11),
        DataSmResp(sequence_number=12),
    ]
    assert [pdu.sequence_number for pdu, _ in inbox.delivered] == [11, 12]


async def test_deliver_sm_is_answered_when_its_handler_future_completes(
    stub: StubSmsc, sessions: list[SmppSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The recorder hands back a future completed when the receipt is durable;
    # the SMSC hears OK only then, and a temporary error if it fails or never
    # completes (it delivers again later).
    monkeypatch.setattr(session_module, "DELIVER_ACK_TIMEOUT_S", 0.3)
    futures: dict[int, asyncio.Future[None]] = {}

    def recording(pdu: DeliverSm | DataSm, bind_id: str) -> asyncio.Future[None]:
        futures[pdu.sequence_number] = asyncio.get_running_loop().create_future()
        return futures[pdu.sequence_number]

    await started_session(sessions, carrier(stub.port), recording)  # type: ignore[arg-type]
    for sequence_number in (30, 31, 32):
        stub.send_to_clients(DeliverSm(sequence_number=sequence_number, short_message=b"x"))
    await wait_for(lambda: len(futures) == 3)
    await asyncio.sleep(0.05)
    assert stub.client_responses == []  # nothing answered before it is recorded

    futures[31].set_result(None)
    futures[30].set_exception(RuntimeError("database down (test)"))
    await wait_for(lambda: len(stub.client_responses) == 2)
    await wait_for(lambda: len(stub.client_responses) == 3)  # 32 times out
    futures[32].set_result(None)  # too late: must not answer twice
    await asyncio.sleep(0.1)

    assert sorted(stub.client_responses, key=lambda r: r.sequence_number) == [
        DeliverSmResp(sequence_number=30, command_status=CommandStatus.ESME_RX_T_APPN),
        DeliverSmResp(sequence_number=31),
        DeliverSmResp(sequence_number=32, command_status=CommandStatus.ESME_RX_T_APPN),
    ]


async def test_refused_delivers_are_logged_as_a_count_not_a_line_each(
    stub: StubSmsc, sessions: list[SmppSession]
) -> None:
    """Through a database outage every receipt is refused; a line per
    receipt would flood the journal at the SMSC's receipt rate."""

    def not_durable(pdu: DeliverSm | DataSm, bind_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("database down (test)"))
        return future

    await started_session(sessions, carrier(stub.port), not_durable)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        for sequence_number in range(100, 120):
            stub.send_to_clients(DeliverSm(sequence_number=sequence_number, short_message=b"x"))
        await wait_for(lambda: len(stub.client_responses) == 20)
    assert {r.command_status for r in stub.client_responses} == {CommandStatus.ESME_RX_T_APPN}
    refused = [entry for entry in logs if entry["event"] == "smpp_delivers_refused"]
    assert [entry["refused"] for entry in refused] == [1]


async def test_receipt_before_submit_response(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.receipts = "tlv"
    stub.behaviour.receipt_before_response = True
    session = await started_session(sessions, carrier(stub.port), inbox)

    result = await session.submit(message(1))

    assert result.outcome == "accepted"
    # The receipt was handed over before the submit's own answer was.
    assert [pdu.receipted_message_id for pdu, _ in inbox.delivered] == [result.message_id]


async def test_peer_enquire_link_and_unbind(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port), inbox)

    stub.send_to_clients(EnquireLink(sequence_number=20))
    await wait_for(lambda: EnquireLinkResp(sequence_number=20) in stub.client_responses)
    stub.send_to_clients(Unbind(sequence_number=21))
    await wait_for(lambda: UnbindResp(sequence_number=21) in stub.client_responses)

    # The SMSC unbound us; we answer, close and bind again.
    await wait_for(lambda: len(stub.binds) == 2 and session.health == "bound")


async def test_generic_nack_for_unknown_and_malformed_requests(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port), inbox)

    stub.send_to_clients(UnknownPdu(0x00000099, 30, 0, b"whatever"))
    # A deliver_sm whose body stops after service_type.
    truncated_body = b"\x00\x01"
    stub.send_to_clients(
        (HEADER_LEN + len(truncated_body)).to_bytes(4, "big")
        + CommandId.DELIVER_SM.to_bytes(4, "big")
        + bytes(4)
        + (31).to_bytes(4, "big")
        + truncated_body
    )
    # A request an ESME does not serve.
    stub.send_to_clients(SubmitSm(sequence_number=32))
    await wait_for(lambda: len(stub.client_responses) == 3)

    assert stub.client_responses == [
        GenericNack(sequence_number=30, command_status=CommandStatus.ESME_RINVCMDID),
        GenericNack(sequence_number=31, command_status=CommandStatus.ESME_RINVCMDLEN),
        GenericNack(sequence_number=32, command_status=CommandStatus.ESME_RINVCMDID),
    ]
    assert inbox.delivered == []
    assert (await session.submit(message(1))).outcome == "accepted"
    assert len(stub.binds) == 1


async def test_broken_stream_drops_and_rebinds(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port), inbox)

    stub.send_to_clients((8).to_bytes(4, "big") + bytes(12))  # command_length 8 < header

    await wait_for(lambda: len(stub.binds) == 2 and session.health == "bound")
    assert (await session.submit(message(1))).outcome == "accepted"


# -- stopping -----------------------------------------------------------------------------


async def test_stop_waits_for_responses_in_flight(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.response_delay_s = 0.05
    session = await started_session(sessions, carrier(stub.port, window=2), inbox)

    pending = asyncio.ensure_future(session.submit_all([message(n) for n in range(4)]))
    await wait_for(lambda: len(stub.submits) == 2)
    await session.stop(drain_timeout_s=WAIT_S)
    results = await pending

    # Two were on the wire and got their answers; two had not left yet.
    assert [r.outcome for r in results] == ["accepted", "accepted", "unsent", "unsent"]
    assert stub.unbinds == 1


async def test_stop_gives_up_on_missing_responses_after_the_drain_timeout(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_submits = False
    session = await started_session(sessions, carrier(stub.port), inbox)

    pending = asyncio.ensure_future(session.submit(message(1)))
    await wait_for(lambda: len(stub.submits) == 1)
    await session.stop(drain_timeout_s=0.05)

    assert (await pending).outcome == "unknown"
    assert session.health == "stopped"


# -- pure parts ---------------------------------------------------------------------------


async def test_sequence_numbers_wrap(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port), inbox)
    connection = session._submit_link.connection
    assert connection is not None
    connection._last_sequence = MAX_SEQUENCE_NUMBER - 1

    await session.submit_all([message(1), message(2)])

    assert [pdu.sequence_number for pdu in stub.submits] == [MAX_SEQUENCE_NUMBER, 1]


def test_rate_limiter_spaces_tokens() -> None:
    limiter = SubmitRateLimiter(rate_per_s=10.0)

    assert limiter.reserve(100.0) == 0.0
    assert limiter.reserve(100.0) == pytest.approx(0.1)
    assert limiter.reserve(100.05) == pytest.approx(0.05)
    assert limiter.reserve(100.1) == 0.0
    # Idle time refills at most one token (burst 1).
    assert limiter.reserve(200.0) == 0.0
    assert limiter.reserve(200.0) == pytest.approx(0.1)


async def test_rate_limited_session_still_delivers_everything(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    session = await started_session(sessions, carrier(stub.port, submit_rate_per_s=200.0), inbox)

    results = await session.submit_all([message(n) for n in range(5)])

    assert [r.outcome for r in results] == ["accepted"] * 5


def test_runs_on_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> list[str]:
        stub = StubSmsc()
        stub.behaviour.receipts = "tlv"
        await stub.start()
        inbox = Inbox()
        session = SmppSession(carrier(stub.port), "docomo-1", inbox, initial_backoff_s=0.01)
        await session.start()
        try:
            results = await session.submit_all([message(n) for n in range(3)])
            await wait_for(lambda: len(inbox.delivered) == 3)
        finally:
            await session.stop(drain_timeout_s=1.0)
            await stub.stop()
        return [result.outcome for result in results]

    assert uvloop.run(scenario()) == ["accepted"] * 3


# -- answers that come after the timeout ---------------------------------------------------


async def late_result(result: SubmitResult) -> SubmitResult:
    assert result.late_answer is not None
    async with asyncio.timeout(WAIT_S):
        return await result.late_answer


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0, "accepted"),
        (CommandStatus.ESME_RINVDSTADR, "refused"),
        # Not taken: the engine sends it again, the bind's queue does not.
        (CommandStatus.ESME_RTHROTTLED, "unsent"),
    ],
)
async def test_a_late_answer_reaches_the_submitter(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession], status: int, outcome: str
) -> None:
    stub.behaviour.response_delay_s = 0.4
    stub.behaviour.submit_status = lambda pdu, index: status
    session = await started_session(sessions, carrier(stub.port, response_timeout_s=0.1), inbox)

    result = await session.submit(message(1))

    assert (result.outcome, result.cause) == ("unknown", "response_timeout")
    assert result.detail == "no submit_sm_resp within 0.1 s"
    late = await late_result(result)
    assert late.outcome == outcome
    if outcome == "accepted":
        assert late.message_id == "1"
    else:
        assert late.command_status == status
    assert session.stats.late_answers == 1


async def test_an_answer_read_right_after_its_timeout_is_not_lost(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    """The timeout fails the submit's future, whose callback runs on the
    next turn of the loop; an answer read before that turn must still
    reach the submitter as its late answer."""
    stub.behaviour.answer_submits = False
    session = await started_session(sessions, carrier(stub.port, response_timeout_s=30.0), inbox)
    submitted = asyncio.create_task(session.submit(message(1)))
    await wait_for(lambda: len(stub.submits) == 1)
    connection = session._submit_link.connection
    assert connection is not None and connection.window is not None
    [sequence_number] = list(connection.window._in_flight)

    # One turn of the loop: the timeout, then the answer read at once.
    connection.expire_unanswered(connection.last_received_at_s + 60.0)
    connection._dispatch_response(SubmitSmResp(sequence_number=sequence_number, message_id="77"))

    result = await submitted
    assert (result.outcome, result.cause) == ("unknown", "response_timeout")
    late = await late_result(result)
    assert (late.outcome, late.message_id) == ("accepted", "77")


async def test_no_late_answer_once_the_connection_is_gone(
    stub: StubSmsc, inbox: Inbox, sessions: list[SmppSession]
) -> None:
    stub.behaviour.answer_submits = False
    session = await started_session(sessions, carrier(stub.port, response_timeout_s=0.1), inbox)
    result = await session.submit(message(1))
    assert result.late_answer is not None and not result.late_answer.done()

    stub.drop_connections()

    with pytest.raises(asyncio.CancelledError):
        await late_result(result)
