"""The SMSC simulator on its own, spoken to by a minimal ESME written here.

The ESME uses only our codec over a raw asyncio socket, never the client
session code: these tests pin down what the simulator puts on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from carrierd.domain.allocation import allocated_carrier
from carrierd.domain.clock import FakeClock
from carrierd.domain.numbers import smpp_international
from carrierd.sim.smsc import (
    CarrierSimConfig,
    MessageIdFormat,
    SimConfigError,
    SmscJournal,
    SmscSimConfig,
    SmscSimulator,
    is_ported,
    load_sim_config,
    read_journal_backlog,
    read_smsc_journal,
    run_smsc_sim,
    sim_config_from_mapping,
    subscriber_carrier,
)
from carrierd.smpp.pdu import (
    ESM_CLASS_MESSAGE_TYPE_MASK,
    ESM_CLASS_RECEIPT,
    ESM_CLASS_UDHI,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DataCoding,
    DataSm,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Framer,
    GenericNack,
    MalformedPdu,
    MessageState,
    NetworkErrorCode,
    Pdu,
    QuerySm,
    QuerySmResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnknownPdu,
    encode,
    is_response,
    split_udh,
    udh_concat,
)
from carrierd.smpp.receipt import normalize_message_id, parse_receipt_text

WAIT_S = 10.0  # an upper bound, not a speed claim
NUMBER = "+819012345678"
SENDER = "0120123456"
ROOT = Path(__file__).resolve().parents[2]


class Esme:
    """A minimal ESME: our codec over a raw socket, answers deliver_sm itself."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        deliver_status: Sequence[int] = (),
        answer_delivers: bool = True,
        delivers: asyncio.Queue[DeliverSm] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = Framer()
        self._sequence_number = 0
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        # Statuses for the first deliver_sm answers; ESME_ROK after them.
        self._deliver_status = list(deliver_status)
        self._answer_delivers = answer_delivers
        self.received: list[Pdu | MalformedPdu] = []
        # Binds of one test may share a queue: receipts come on any of them.
        self.delivers: asyncio.Queue[DeliverSm] = (
            delivers if delivers is not None else asyncio.Queue()
        )
        self.closed = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, **options: Any) -> Esme:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, **options)

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(65536):
                self._framer.feed(data)
                while (event := self._framer.next_event()) is not None:
                    self.received.append(event)
                    self._on_event(event)
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("closed"))

    def _on_event(self, event: Pdu | MalformedPdu) -> None:
        if isinstance(event, DeliverSm):
            self.delivers.put_nowait(event)
            if self._answer_delivers:
                status = self._deliver_status.pop(0) if self._deliver_status else 0
                self.write(
                    DeliverSmResp(sequence_number=event.sequence_number, command_status=status)
                )
        elif isinstance(event, Unbind):
            self.write(UnbindResp(sequence_number=event.sequence_number))
        elif is_response(event.command_id):
            future = self._pending.pop(event.sequence_number, None)
            if future is None or future.done():
                return
            if isinstance(event, MalformedPdu):
                future.set_exception(AssertionError(f"malformed answer: {event}"))
            else:
                future.set_result(event)

    def write(self, pdu: Pdu) -> None:
        self._writer.write(encode(pdu))

    def send(self, *pdus: Pdu) -> list[asyncio.Future[Pdu]]:
        """Write `pdus` in one go with fresh sequence numbers; futures of the answers."""
        futures = []
        data = bytearray()
        for pdu in pdus:
            self._sequence_number += 1
            future = asyncio.get_running_loop().create_future()
            self._pending[self._sequence_number] = future
            futures.append(future)
            data += encode(dataclasses.replace(pdu, sequence_number=self._sequence_number))
        self._writer.write(bytes(data))
        return futures

    async def request(self, pdu: Pdu) -> Pdu:
        [future] = self.send(pdu)
        return await asyncio.wait_for(future, WAIT_S)

    async def bind(
        self,
        kind: type[BindTransmitter | BindReceiver | BindTransceiver] = BindTransceiver,
        system_id: str = "demo",
        password: str = "demo",
    ) -> Pdu:
        response = await self.request(
            kind(sequence_number=0, system_id=system_id, password=password)
        )
        return response

    async def submit(self, pdu: SubmitSm | None = None) -> SubmitSmResp:
        response = await self.request(pdu or submit_pdu())
        assert isinstance(response, SubmitSmResp), response
        return response

    async def next_deliver(self) -> DeliverSm:
        return await asyncio.wait_for(self.delivers.get(), WAIT_S)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        await asyncio.wait_for(self._reading, WAIT_S)


def submit_pdu(to: str = NUMBER, text: str = "こんにちは", **fields: Any) -> SubmitSm:
    values: dict[str, Any] = {
        "source_addr_ton": 5,
        "source_addr": SENDER,
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": smpp_international(to),
        "data_coding": DataCoding.UCS2,
        "short_message": text.encode("utf-16-be"),
        "registered_delivery": 1,
    }
    values.update(fields)
    return SubmitSm(sequence_number=0, **values)


def one_carrier(**overrides: Any) -> SmscSimConfig:
    """docomo alone, owning every number, receipts at once."""
    settings: dict[str, Any] = {
        "subscriber_prefixes": ("0",),
        "receipt_delay_min_s": 0.0,
        "receipt_delay_max_s": 0.0,
    }
    settings.update(overrides)
    return SmscSimConfig(carriers={"docomo": CarrierSimConfig(**settings)})


@contextlib.asynccontextmanager
async def running(
    config: SmscSimConfig, clock: FakeClock | None = None
) -> AsyncIterator[tuple[SmscSimulator, dict[str, int]]]:
    sim = SmscSimulator(config, clock=clock)
    ports = await sim.start()
    try:
        yield sim, ports
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def bound(
    port: int,
    kind: type[BindTransmitter | BindReceiver | BindTransceiver] = BindTransceiver,
    **options: Any,
) -> AsyncIterator[Esme]:
    esme = await Esme.connect(port, **options)
    try:
        response = await esme.bind(kind)
        assert response.command_status == 0, response
        yield esme
    finally:
        await esme.close()


def is_receipt(pdu: DeliverSm) -> bool:
    return pdu.esm_class & ESM_CLASS_MESSAGE_TYPE_MASK == ESM_CLASS_RECEIPT


# -- binds and session ---------------------------------------------------------------


async def test_binds_credentials_and_session_commands() -> None:
    async with running(one_carrier(accounts={"demo": "demo", "other": "pw"})) as (sim, ports):
        esme = await Esme.connect(ports["docomo"])
        before_bind = await esme.request(submit_pdu())
        assert isinstance(before_bind, SubmitSmResp)
        assert before_bind.command_status == CommandStatus.ESME_RINVBNDSTS
        wrong = await esme.bind(BindTransceiver, password="nope")
        assert wrong.command_status == CommandStatus.ESME_RINVPASWD
        unknown = await esme.bind(BindTransceiver, system_id="nobody")
        assert unknown.command_status == CommandStatus.ESME_RINVSYSID
        ok = await esme.bind(BindTransceiver)
        assert ok.command_status == 0
        assert getattr(ok, "system_id", None) == "docomo"
        again = await esme.bind(BindTransmitter)
        assert again.command_status == CommandStatus.ESME_RALYBND
        assert isinstance(await esme.request(EnquireLink(sequence_number=0)), EnquireLinkResp)
        assert isinstance(await esme.request(Unbind(sequence_number=0)), UnbindResp)
        await asyncio.wait_for(esme.closed.wait(), WAIT_S)
        await esme.close()

        for kind in (BindTransmitter, BindReceiver):
            other = await Esme.connect(ports["docomo"])
            assert (await other.bind(kind, system_id="other", password="pw")).command_status == 0
            if kind is BindReceiver:
                refused = await other.request(submit_pdu())
                assert refused.command_status == CommandStatus.ESME_RINVBNDSTS
            await other.close()
    counters = sim.counters.carriers["docomo"]
    assert counters.binds == 3
    assert counters.bind_failures == 3


async def test_malformed_and_unsupported_pdus_get_generic_nack() -> None:
    async with running(one_carrier()) as (sim, ports), bound(ports["docomo"]) as esme:
        # A submit_sm whose body stops after service_type: framed, not decodable.
        esme.write(UnknownPdu(0x00000004, 41, 0, b"\x00\x01"))
        esme.write(UnknownPdu(0x00000099, 42, 0, b""))
        [data_sm] = esme.send(DataSm(sequence_number=0, destination_addr="819012345678"))
        nack = await asyncio.wait_for(data_sm, WAIT_S)
        assert isinstance(nack, GenericNack)
        assert nack.command_status == CommandStatus.ESME_RINVCMDID
        nacks = {
            p.sequence_number: p.command_status for p in esme.received if isinstance(p, GenericNack)
        }
        assert nacks[41] == CommandStatus.ESME_RINVCMDLEN
        assert nacks[42] == CommandStatus.ESME_RINVCMDID
        # The bind survives all of it.
        assert isinstance(await esme.request(EnquireLink(sequence_number=0)), EnquireLinkResp)
        assert (await esme.submit()).command_status == 0
    assert sim.counters.carriers["docomo"].generic_nacks == 3


async def test_stop_unbinds_clients() -> None:
    sim = SmscSimulator(one_carrier())
    ports = await sim.start()
    esme = await Esme.connect(ports["docomo"])
    await esme.bind()
    await sim.stop()
    await asyncio.wait_for(esme.closed.wait(), WAIT_S)
    assert any(isinstance(pdu, Unbind) for pdu in esme.received)
    await esme.close()


# -- submit, response, receipt --------------------------------------------------------


@pytest.mark.parametrize(
    ("resp_format", "receipt_format"), [("hex", "decimal"), ("decimal", "hex")]
)
async def test_submit_response_and_receipt_with_configured_id_formats(
    resp_format: MessageIdFormat, receipt_format: MessageIdFormat
) -> None:
    # 06:30 UTC is 15:30 in Japan, where carriers date their receipts.
    clock = FakeClock(datetime(2026, 1, 2, 6, 30, tzinfo=UTC))
    config = one_carrier(submit_resp_id_format=resp_format, receipt_id_format=receipt_format)
    async with running(config, clock) as (sim, ports), bound(ports["docomo"]) as esme:
        response = await esme.submit()
        assert response.command_status == 0
        receipt = await esme.next_deliver()
        query = await esme.request(QuerySm(sequence_number=0, message_id=response.message_id))
        unknown = await esme.request(QuerySm(sequence_number=0, message_id="zz"))

    assert is_receipt(receipt)
    assert receipt.source_addr == smpp_international(NUMBER)
    assert receipt.destination_addr == SENDER
    assert receipt.message_state == MessageState.DELIVERED
    assert receipt.network_error_code is None
    # receipted_message_id is the submit_sm_resp id, as SMPP 3.4 defines it.
    assert receipt.receipted_message_id == response.message_id
    text = parse_receipt_text(receipt.short_message)
    assert text.message_id is not None
    assert text.stat == "DELIVRD"
    assert text.err_code == 0
    assert text.dlvrd == 1
    assert text.submit_date == datetime(2026, 1, 2, 15, 30)
    # Written differently, the same id once normalised.
    assert normalize_message_id(response.message_id, resp_format) == normalize_message_id(
        text.message_id, receipt_format
    )
    assert response.message_id != text.message_id
    decimal_id = response.message_id if resp_format == "decimal" else text.message_id
    assert decimal_id is not None and decimal_id.isdigit()

    assert isinstance(query, QuerySmResp)
    assert query.message_state == MessageState.DELIVERED
    assert query.final_date.startswith("260102153000")
    assert unknown.command_status == CommandStatus.ESME_RQUERYFAIL
    counters = sim.counters.carriers["docomo"]
    assert (counters.accepted, counters.receipts_sent, counters.deliveries_acknowledged) == (
        1,
        1,
        1,
    )


@pytest.mark.parametrize(("tlvs", "text"), [(True, False), (False, True)])
async def test_receipt_as_tlvs_or_text(tlvs: bool, text: bool) -> None:
    config = one_carrier(receipt_tlvs=tlvs, receipt_text=text)
    async with running(config) as (_sim, ports), bound(ports["docomo"]) as esme:
        response = await esme.submit()
        receipt = await esme.next_deliver()
    if tlvs:
        assert receipt.receipted_message_id == response.message_id
        assert receipt.message_state == MessageState.DELIVERED
        assert receipt.short_message == b""
    else:
        assert receipt.receipted_message_id is None
        assert receipt.message_state is None
        assert parse_receipt_text(receipt.short_message).message_id == response.message_id


async def test_receipt_tlv_id_written_like_the_text_when_configured() -> None:
    config = one_carrier(
        submit_resp_id_format="hex", receipt_id_format="decimal", receipt_tlv_id_format="decimal"
    )
    async with running(config) as (_sim, ports), bound(ports["docomo"]) as esme:
        response = await esme.submit()
        receipt = await esme.next_deliver()
    text = parse_receipt_text(receipt.short_message)
    assert receipt.receipted_message_id == text.message_id == str(int(response.message_id, 16))


def test_receipt_tlv_id_format_is_checked() -> None:
    with pytest.raises(ValueError, match="receipt_tlv_id_format"):
        CarrierSimConfig(receipt_tlv_id_format="octal")  # type: ignore[arg-type]


async def test_no_receipt_unless_requested_and_query_says_enroute_until_final() -> None:
    config = one_carrier(receipt_delay_min_s=1.0, receipt_delay_max_s=1.0)
    async with running(config) as (sim, ports), bound(ports["docomo"]) as esme:
        unrequested = await esme.submit(submit_pdu(text="no receipt", registered_delivery=0))
        on_failure = await esme.submit(submit_pdu(text="on failure", registered_delivery=2))
        requested = await esme.submit()
        query = await esme.request(QuerySm(sequence_number=0, message_id=requested.message_id))
        assert sim.pending_deliveries() == 1
    assert unrequested.command_status == on_failure.command_status == 0
    assert isinstance(query, QuerySmResp)
    assert query.message_state == MessageState.ENROUTE
    assert query.final_date == ""


async def test_receipt_comes_on_a_receiver_bind_of_the_same_system_id() -> None:
    async with (
        running(one_carrier()) as (_sim, ports),
        bound(ports["docomo"], BindTransmitter) as transmitter,
        bound(ports["docomo"], BindReceiver) as receiver,
    ):
        response = await transmitter.submit()
        receipt = await receiver.next_deliver()
    assert receipt.receipted_message_id == response.message_id
    assert transmitter.delivers.empty()


async def test_receipts_wait_for_a_receiver_and_unanswered_ones_are_sent_again() -> None:
    async with running(one_carrier()) as (sim, ports):
        async with bound(ports["docomo"], BindTransmitter) as transmitter:
            response = await transmitter.submit()
        # Nobody to deliver to: the receipt waits.
        await asyncio.sleep(0.05)
        assert sim.pending_deliveries() == 1
        async with bound(ports["docomo"], BindReceiver, answer_delivers=False) as silent:
            first = await silent.next_deliver()
        async with bound(ports["docomo"], BindReceiver) as receiver:
            again = await receiver.next_deliver()
        assert sim.pending_deliveries() == 0
    assert first.receipted_message_id == again.receipted_message_id == response.message_id
    counters = sim.counters.carriers["docomo"]
    assert counters.deliveries_redelivered == 1
    assert counters.receipts_sent == 2
    assert counters.deliveries_acknowledged == 1


async def test_a_refused_deliver_sm_is_retried() -> None:
    config = one_carrier(deliver_retry_delay_s=0.0)
    async with (
        running(config) as (sim, ports),
        bound(ports["docomo"], deliver_status=[CommandStatus.ESME_RX_T_APPN]) as esme,
    ):
        await esme.submit()
        first = await esme.next_deliver()
        second = await esme.next_deliver()
    assert first.receipted_message_id == second.receipted_message_id
    counters = sim.counters.carriers["docomo"]
    assert (counters.deliveries_nacked, counters.deliveries_acknowledged) == (1, 1)


# -- carriers and subscribers -----------------------------------------------------------


def two_carriers(**docomo: Any) -> SmscSimConfig:
    common: dict[str, Any] = {"receipt_delay_min_s": 0.0, "receipt_delay_max_s": 0.0}
    return SmscSimConfig(
        carriers={
            "docomo": CarrierSimConfig(subscriber_prefixes=("090",), **common, **docomo),
            "au": CarrierSimConfig(subscriber_prefixes=("080",), **common),
        }
    )


async def test_not_our_subscriber_as_a_response_status() -> None:
    config = two_carriers(not_subscriber_status=0x0401)
    async with running(config) as (sim, ports), bound(ports["docomo"]) as esme:
        refused = await esme.submit(submit_pdu(to="+818012345678"))
        invalid = await esme.submit(submit_pdu(to="+815012345678"))
        accepted = await esme.submit(submit_pdu(to="+819012345678"))
    assert refused.command_status == 0x0401
    assert invalid.command_status == CommandStatus.ESME_RINVDSTADR
    assert accepted.command_status == 0
    counters = sim.counters.carriers["docomo"]
    assert (counters.not_subscriber, counters.refused, counters.accepted) == (1, 2, 1)


async def test_not_our_subscriber_as_an_undeliv_receipt() -> None:
    config = two_carriers(wrong_carrier_as_receipt=True, wrong_carrier_receipt_err=13)
    async with running(config) as (sim, ports):
        async with bound(ports["docomo"]) as esme:
            response = await esme.submit(submit_pdu(to="+818012345678"))
            receipt = await esme.next_deliver()
        # The client reroutes to au: no duplicate, the handset got it once.
        async with bound(ports["au"]) as esme:
            assert (await esme.submit(submit_pdu(to="+818012345678"))).command_status == 0
    assert response.command_status == 0
    assert receipt.receipted_message_id == response.message_id
    assert receipt.message_state == MessageState.UNDELIVERABLE
    assert receipt.network_error_code == NetworkErrorCode(3, 13)
    text = parse_receipt_text(receipt.short_message)
    assert (text.stat, text.err, text.dlvrd) == ("UNDELIV", "013", 0)
    assert sim.counters.carriers["docomo"].not_subscriber == 1
    assert sim.duplicates() == []
    assert sim.duplicates(include_undelivered=True) == [("+818012345678", "こんにちは")]


async def test_numbers_under_an_undeliverable_prefix_always_fail() -> None:
    config = two_carriers(undeliverable_prefixes=("0909",), undeliverable_err=34)
    async with running(config) as (sim, ports), bound(ports["docomo"]) as esme:
        stats = []
        for to in ("+819091234567", "+819012345678", "+819091234567"):
            assert (await esme.submit(submit_pdu(to=to))).command_status == 0
            receipt = parse_receipt_text((await esme.next_deliver()).short_message)
            stats.append((receipt.stat, receipt.err))
    assert stats == [("UNDELIV", "034"), ("DELIVRD", "000"), ("UNDELIV", "034")]
    assert sim.counters.carriers["docomo"].receipts_by_stat == {"UNDELIV": 2, "DELIVRD": 1}


def test_subscribers_by_the_allocation_with_a_stable_share_ported() -> None:
    """A number is on the carrier its block is allocated to unless it
    ported (15% by default, by a stable hash of the number): then always on
    the same other carrier, whatever the seed or the spelling."""
    carriers = {name: CarrierSimConfig() for name in ("docomo", "au", "softbank", "rakuten")}
    config = SmscSimConfig(carriers=carriers)
    # Two numbers in each of the 2,700 blocks of 070, 080 and 090.
    numbers = [
        f"0{prefix}{block:03d}{(block * 7919 + i * 50_021) % 100_000:05d}"
        for prefix in (90, 80, 70)
        for block in range(100, 1000)
        for i in range(2)
    ]
    allocated = [allocated_carrier("+81" + number[1:]) for number in numbers]
    owners = [subscriber_carrier(config, number) for number in numbers]
    in_allocation = [(o, a) for o, a in zip(owners, allocated, strict=True) if a is not None]
    ported = [o for o, a in in_allocation if o != a]
    assert 0.13 < len(ported) / len(in_allocation) < 0.17
    assert set(ported) == set(carriers)  # ported to every carrier
    assert sum(is_ported(config, n) for n in numbers) == len(ported)
    # Stable: another seed, another spelling of the number, the same owner.
    other = SmscSimConfig(carriers=carriers, seed=42)
    assert [subscriber_carrier(other, "+81" + n[1:]) for n in numbers[:200]] == owners[:200]
    nobody_ported = SmscSimConfig(carriers=carriers, ported_share=0.0)
    assert all(
        subscriber_carrier(nobody_ported, n) == a
        for n, a in zip(numbers, allocated, strict=True)
        if a is not None
    )
    assert subscriber_carrier(config, "050-1234-5678") is None

    claimed = dict(carriers)
    claimed["rakuten"] = CarrierSimConfig(subscriber_prefixes=("0901",))
    claimed["au"] = CarrierSimConfig(subscriber_prefixes=("090111",))
    by_prefix = SmscSimConfig(carriers=claimed)
    assert subscriber_carrier(by_prefix, "09012345678") == "rakuten"
    assert subscriber_carrier(by_prefix, "09011100001") == "au"  # longest prefix wins
    assert SmscSimulator(by_prefix).carrier_of("+819012345678") == "rakuten"


# -- load and faults --------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["bind", "carrier"])
async def test_throttling_above_the_rate(scope: str) -> None:
    config = one_carrier(throttle_rate_per_s=5.0, throttle_scope=scope)
    async with (
        running(config) as (sim, ports),
        bound(ports["docomo"]) as first,
        bound(ports["docomo"]) as second,
    ):
        futures = first.send(*(submit_pdu(text=f"a{i}") for i in range(50)))
        futures += second.send(*(submit_pdu(text=f"b{i}") for i in range(50)))
        statuses = [(await asyncio.wait_for(f, WAIT_S)).command_status for f in futures]
    accepted = statuses.count(0)
    throttled = statuses.count(CommandStatus.ESME_RTHROTTLED)
    assert accepted >= (10 if scope == "bind" else 5)
    assert throttled >= 1
    assert accepted + throttled == 100
    counters = sim.counters.carriers["docomo"]
    assert (counters.accepted, counters.throttled) == (accepted, throttled)


async def test_throttle_accept_per_s_limits_each_bind_on_its_own() -> None:
    config = one_carrier(throttle_accept_per_s=5.0)
    async with (
        running(config) as (sim, ports),
        bound(ports["docomo"]) as first,
        bound(ports["docomo"]) as second,
    ):
        futures = [
            esme.send(*(submit_pdu(text=f"{name}{i}") for i in range(30)))
            for name, esme in (("a", first), ("b", second))
        ]
        statuses = [
            [(await asyncio.wait_for(f, WAIT_S)).command_status for f in bind_futures]
            for bind_futures in futures
        ]
    for bind_statuses in statuses:
        # Each bind has its own second's worth (5) and is throttled past it.
        assert bind_statuses.count(0) >= 5
        assert bind_statuses.count(CommandStatus.ESME_RTHROTTLED) >= 1
        assert set(bind_statuses) == {0, CommandStatus.ESME_RTHROTTLED}
    counters = sim.counters.carriers["docomo"]
    assert counters.accepted == sum(s.count(0) for s in statuses)
    assert counters.throttled == 60 - counters.accepted


@pytest.mark.parametrize("as_generic_nack", [False, True])
async def test_window_enforcement(as_generic_nack: bool) -> None:
    config = one_carrier(
        window=2,
        window_exceeded_generic_nack=as_generic_nack,
        response_delay_min_s=0.3,
        response_delay_max_s=0.3,
    )
    async with running(config) as (sim, ports), bound(ports["docomo"]) as esme:
        futures = esme.send(*(submit_pdu(text=f"w{i}") for i in range(6)))
        answers = [await asyncio.wait_for(f, WAIT_S) for f in futures]
    assert [a.command_status for a in answers] == [0, 0] + [CommandStatus.ESME_RTHROTTLED] * 4
    refusal_type = GenericNack if as_generic_nack else SubmitSmResp
    assert all(isinstance(a, refusal_type) for a in answers[2:])
    counters = sim.counters.carriers["docomo"]
    assert counters.window_rejections == 4
    # Two waiting for their answers, and the third that overflowed the window.
    assert counters.max_outstanding == 3


async def test_vendor_status_codes() -> None:
    async with (
        running(one_carrier(vendor_status_share=1.0)) as (sim, ports),
        bound(ports["docomo"]) as esme,
    ):
        response = await esme.submit()
    assert response.command_status == 0x0000040B
    assert response.message_id == ""
    assert sim.counters.carriers["docomo"].vendor_errors == 1
    assert sim.counters.accepted_text_parts == {}


async def test_receipt_before_response() -> None:
    config = one_carrier(receipt_before_response_share=1.0)
    async with running(config) as (_sim, ports), bound(ports["docomo"]) as esme:
        response = await esme.submit()
        receipt = await esme.next_deliver()
    order = [type(pdu) for pdu in esme.received]
    assert order.index(DeliverSm) < order.index(SubmitSmResp)
    assert receipt.receipted_message_id == response.message_id


async def test_missing_response_still_accepts_and_receipts() -> None:
    config = one_carrier(missing_response_share=1.0)
    async with running(config) as (sim, ports), bound(ports["docomo"]) as esme:
        [unanswered] = esme.send(submit_pdu())
        receipt = await esme.next_deliver()
        # On one bind the answer would have come before the receipt it precedes.
        assert not unanswered.done()
        assert isinstance(await esme.request(EnquireLink(sequence_number=0)), EnquireLinkResp)
        assert not unanswered.done()
    assert receipt.receipted_message_id
    counters = sim.counters.carriers["docomo"]
    assert (counters.accepted, counters.responses_dropped) == (1, 1)


async def test_random_disconnect_drops_the_socket() -> None:
    async with running(one_carrier(disconnect_share=1.0)) as (sim, ports):
        esme = await Esme.connect(ports["docomo"])
        await esme.bind()
        [future] = esme.send(submit_pdu())
        await asyncio.wait_for(esme.closed.wait(), WAIT_S)
        with pytest.raises(ConnectionError):
            await future
        await esme.close()
    counters = sim.counters.carriers["docomo"]
    assert (counters.disconnects, counters.accepted) == (1, 0)


# -- multipart and duplicates -----------------------------------------------------------


def ucs2(text: str) -> bytes:
    return text.encode("utf-16-be")


async def test_every_part_gets_its_own_id_and_receipt() -> None:
    udh8 = [
        submit_pdu(
            text="", esm_class=ESM_CLASS_UDHI, short_message=udh_concat(7, 3, n) + ucs2(f"八{n}")
        )
        for n in (1, 2, 3)
    ]
    udh16 = [
        submit_pdu(
            text="",
            esm_class=ESM_CLASS_UDHI,
            short_message=udh_concat(700, 2, n, ref16=True) + ucs2(f"十六{n}"),
        )
        for n in (1, 2)
    ]
    sar = [
        submit_pdu(text=f"SAR{n}", sar_msg_ref_num=9, sar_total_segments=2, sar_segment_seqnum=n)
        for n in (1, 2)
    ]
    payload = submit_pdu(text="", message_payload=ucs2("長" * 200))
    async with running(one_carrier()) as (sim, ports), bound(ports["docomo"]) as esme:
        futures = esme.send(*udh8, *udh16, *sar, payload)
        responses = [await asyncio.wait_for(f, WAIT_S) for f in futures]
        receipts = [await esme.next_deliver() for _ in responses]
    ids = [r.message_id for r in responses if isinstance(r, SubmitSmResp)]
    assert len(set(ids)) == 8
    assert {r.receipted_message_id for r in receipts} == set(ids)
    totals = sim.counters
    assert set(totals.accepted_concat_parts) == {
        (NUMBER, 7, 1), (NUMBER, 7, 2), (NUMBER, 7, 3),
        (NUMBER, 700, 1), (NUMBER, 700, 2),
        (NUMBER, 9, 1), (NUMBER, 9, 2),
    }  # fmt: skip
    assert (NUMBER, "八2") in totals.handset_text_parts
    assert (NUMBER, "長" * 200) in totals.handset_text_parts
    assert sim.duplicates() == []


async def test_duplicates_are_reported_only_for_parts_that_reach_the_handset() -> None:
    part = submit_pdu(
        text="", esm_class=ESM_CLASS_UDHI, short_message=udh_concat(3, 2, 1) + ucs2("一")
    )
    async with running(one_carrier()) as (sim, ports), bound(ports["docomo"]) as esme:
        await esme.submit(part)
        await esme.submit(submit_pdu(text="only once"))
        await esme.submit(part)
    assert sorted(sim.duplicates(), key=len) == [(NUMBER, "一"), (NUMBER, 3, 1)]

    # A resend after UNDELIV never reached the handset twice.
    async with (
        running(one_carrier(undeliverable_share=1.0, undeliverable_err=34)) as (sim, ports),
        bound(ports["docomo"]) as esme,
    ):
        for _ in range(2):
            await esme.submit()
            receipt = await esme.next_deliver()
            assert receipt.message_state == MessageState.UNDELIVERABLE
    assert sim.duplicates() == []
    assert sim.duplicates(include_undelivered=True) == [(NUMBER, "こんにちは")]
    assert sim.counters.carriers["docomo"].receipts_by_stat == {"UNDELIV": 2}


async def test_many_messages_over_two_binds_each_receipted_once() -> None:
    count = 2000
    config = one_carrier(receipt_delay_min_s=0.0, receipt_delay_max_s=0.2, expired_share=0.1)
    receipts: asyncio.Queue[DeliverSm] = asyncio.Queue()
    async with (
        running(config) as (sim, ports),
        bound(ports["docomo"], delivers=receipts) as first,
        bound(ports["docomo"], delivers=receipts) as second,
    ):
        futures = first.send(*(submit_pdu(text=f"m{i}") for i in range(0, count, 2)))
        futures += second.send(*(submit_pdu(text=f"m{i}") for i in range(1, count, 2)))
        responses = [await asyncio.wait_for(f, WAIT_S) for f in futures]
        receipted = [(await asyncio.wait_for(receipts.get(), WAIT_S)) for _ in range(count)]
        # Each bind wrote its deliver_sm_resp before this, and is read in order.
        for esme in (first, second):
            await esme.request(EnquireLink(sequence_number=0))
        assert sim.pending_deliveries() == 0
    ids = {r.message_id for r in responses if isinstance(r, SubmitSmResp)}
    assert len(ids) == count
    assert sorted(r.receipted_message_id or "" for r in receipted) == sorted(ids)
    assert sim.duplicates() == []
    counters = sim.counters.carriers["docomo"]
    assert counters.receipts_sent == counters.deliveries_acknowledged == count
    assert counters.receipts_by_stat["EXPIRED"] > 0


# -- MO -----------------------------------------------------------------------------------


async def test_mobile_originated_messages() -> None:
    async with running(one_carrier()) as (sim, ports), bound(ports["docomo"], BindReceiver) as esme:
        assert sim.send_mo("docomo", source="090-1234-5678", destination=SENDER, text="はい") == 1
        short = await esme.next_deliver()
        long_text = "了解しました。" * 15
        assert sim.send_mo("docomo", source=NUMBER, destination=SENDER, text=long_text) == 2
        parts = [await esme.next_deliver(), await esme.next_deliver()]
        sim.send_mo("docomo", source=NUMBER, destination=SENDER, text="STOP")
        gsm = await esme.next_deliver()
    assert not is_receipt(short)
    assert short.source_addr == "819012345678"
    assert short.destination_addr == SENDER
    assert short.data_coding == DataCoding.UCS2
    assert short.short_message.decode("utf-16-be") == "はい"
    pieces = {}
    for part in parts:
        assert part.esm_class & ESM_CLASS_UDHI
        concat, body = split_udh(part.short_message)
        assert concat is not None and concat.total == 2
        pieces[concat.seq] = body.decode("utf-16-be")
    assert pieces[1] + pieces[2] == long_text
    assert (gsm.data_coding, gsm.short_message) == (DataCoding.SMSC_DEFAULT, b"STOP")
    assert sim.counters.carriers["docomo"].mo_sent == 4


# -- configuration and entry point ------------------------------------------------------


def test_demo_config_file() -> None:
    config = load_sim_config(ROOT / "conf/sim.toml")
    assert {name: c.port for name, c in config.carriers.items()} == {
        "docomo": 2775,
        "au": 2776,
        "softbank": 2777,
        "rakuten": 2778,
        # Ordinary routes (DOMAIN §6): other SMSCs reaching these subscribers.
        "softbank_ordinary": 2787,
        "rakuten_ordinary": 2788,
    }
    assert config.carriers["softbank_ordinary"].serves == "softbank"
    for carrier in config.carriers.values():
        assert carrier.accounts == {"demo": "demo"}
        assert carrier.receipt_delay_max_s == 5.0  # from [defaults]
    assert config.carriers["au"].receipt_tlvs is False


def test_config_errors_name_every_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        "[defaults]\nwindow = 'big'\n"
        "[carriers.docomo]\nport = 2775\ncolour = 'red'\n"
        "[carriers.au]\nport = 2775\n"
    )
    with pytest.raises(SimConfigError) as error:
        load_sim_config(path)
    message = str(error.value)
    assert "carriers.docomo.window: expected an integer" in message
    assert "carriers.docomo.colour: unknown key" in message
    with pytest.raises(SimConfigError, match="share a port"):
        sim_config_from_mapping({"carriers": {"docomo": {"port": 2775}, "au": {"port": 2775}}})
    with pytest.raises(SimConfigError, match="undeliverable_share"):
        sim_config_from_mapping({"carriers": {"docomo": {"undeliverable_share": 2}}})


async def test_run_smsc_sim_serves_every_carrier_until_cancelled() -> None:
    listening: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    config = sim_config_from_mapping(
        {"carriers": {name: {"port": 0} for name in ("docomo", "au", "softbank", "rakuten")}}
    )
    task = asyncio.create_task(run_smsc_sim(config, "127.0.0.1", listening.set_result))
    try:
        ports = await asyncio.wait_for(listening, WAIT_S)
        assert set(ports) == {"docomo", "au", "softbank", "rakuten"}
        assert len(set(ports.values())) == 4
        for port in ports.values():
            async with bound(port) as esme:
                assert isinstance(
                    await esme.request(EnquireLink(sequence_number=0)), EnquireLinkResp
                )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_restarted_simulator_sends_the_receipts_it_owed_and_keeps_ids_unique(
    tmp_path: Path,
) -> None:
    """An SMSC keeps its message store across a restart: a campaign that
    kills the simulator must still get the receipts of what it accepted,
    and a new part must never take an id an older one had."""
    journal_path = tmp_path / "journal.jsonl"
    first = SmscJournal.open(journal_path, seed=0)
    sim = SmscSimulator(
        one_carrier(receipt_delay_min_s=1.0, receipt_delay_max_s=1.0, port=0), journal=first
    )
    ports = await sim.start()
    try:
        async with bound(ports["docomo"]) as esme:
            accepted = await esme.submit(submit_pdu(text="before the restart"))
    finally:
        await sim.stop()
        first.close()

    second = SmscJournal.open(journal_path, seed=0)
    sim = SmscSimulator(one_carrier(port=0), journal=second)
    ports = await sim.start()
    try:
        async with bound(ports["docomo"]) as esme:
            receipt = await esme.next_deliver()
            await asyncio.sleep(0.05)  # its acknowledgement is journalled
            later = await esme.submit(submit_pdu(text="after the restart"))
            await esme.next_deliver()
            await asyncio.sleep(0.05)
    finally:
        await sim.stop()
        second.close()

    assert receipt.receipted_message_id == accepted.message_id
    assert int(later.message_id, 16) > int(accepted.message_id, 16)
    summary = read_smsc_journal(journal_path)
    before = summary.parts[(NUMBER, "before the restart")]
    assert (before.accepted, before.receipts_acknowledged) == (1, 1)
    backlog = read_journal_backlog(journal_path)
    assert backlog.owed == {}
    assert backlog.last_id == {"docomo": int(later.message_id, 16)}
