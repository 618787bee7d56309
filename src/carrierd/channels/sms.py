"""SMS over SMPP: the ``SmsGateway`` of channels/types.py, one ``SmppPool`` per carrier.

Outbound, ``build_submit_pdus`` (pure) turns an ``SmsRequest`` into submit_sm PDUs:

- data_coding 0x08 with UTF-16BE text for ``ucs2``, 0x00 with unpacked GSM 7-bit
  septets for ``gsm7`` (the SMSC packs them).
- A multi-part message is concatenated per the carrier's ``concat``:
  ``udh8`` / ``udh16`` put a concatenation UDH (8- or 16-bit reference) in front of
  each part and set UDHI in esm_class; ``sar`` sends the same reference, count and
  part number as sar_* TLVs and lets the SMSC build the header; ``payload`` sends the
  whole text as one submit_sm with message_payload and lets the SMSC split it (that
  one PDU is one record: one outcome, one message id, one receipt). A single part is
  sent plain in every mode.
- The concatenation reference is derived from (message_id, attempt), never from a
  counter: a resend of the same attempt after a crash reuses it, and the next attempt
  gets the next value, so a handset never joins parts of two attempts.
- source_addr: an alphanumeric sender goes as TON 5 / NPI 0; ``+<digits>`` as
  international (TON 1 / NPI 1, without the plus); digits starting with 0 (0120...,
  a national number) as national, TON 2 / NPI 1; other digits (a carrier short code
  such as SoftBank's 249200) as network-specific, TON 3 / NPI 0.
- destination: ``smpp_international(msisdn)`` (819012345678), TON 1 / NPI 1.
- registered_delivery 1 (a receipt for success and failure).
- validity_period: absolute time in UTC, ``YYMMDDhhmmss000+`` (tenths 0, offset 00
  quarter-hours, "+"), from ``request.expires_at``. Absolute rather than relative so
  that the deadline does not stretch by however long the PDU waited in a queue.

A part whose submit_sm_resp timed out is reported unknown with a ``late``
future (``PartOutcome.late``): the outcome the SMSC's late answer reveals,
or cancelled when none will be read (smpp/session.py).

Inbound, ``parse_deliver`` (pure) turns a deliver_sm / data_sm into:

- a ``Receipt`` when esm_class has the receipt bit (0x04) or receipted_message_id is
  present. The id comes from the receipted_message_id TLV and from the text's ``id:``
  (``parse_receipt_text``): when both are present and normalise differently, the TLV
  id is ``smsc_message_id`` and the text id ``alt_smsc_message_id``, and a part that
  carries either is the receipt's. State comes from the message_state TLV when
  present, else from the text; err from the text,
  else from network_error_code. message_state maps to the text stats (DELIVERED ->
  DELIVRD, UNDELIVERABLE -> UNDELIV, REJECTED -> REJECTD, ACCEPTED -> ACCEPTD, ...);
  long spellings in text (DELIVERED...) are shortened the same way; no state at all
  gives UNKNOWN. A receipt without any message id cannot be matched and is dropped
  (logged). The receipt also carries, unparsed, what else says which part it is
  for (source_addr, the text's ``submit date`` and ``text``): read only when its
  id matches no part (domain/receipt_match.py).
- otherwise an ``InboundSms`` (mobile-originated): its fields as they came (body with
  any UDH, data_coding, SAR TLVs). Replies have one owner, engine/inbound.py: it
  reassembles the parts and decodes the text (domain/inbound.py).

Message ids are normalised (``normalize_message_id``) so that the id of
submit_sm_resp and the id in its receipt compare equal: the carrier's
``message_id_style`` names the base of the submit_sm_resp id, and so of the
receipted_message_id TLV (SMPP 3.4: the id returned in submit_sm_resp); the text
``id:`` uses ``receipt_message_id_styles[carrier]`` when given, else the same style.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import ssl
import zlib
from collections.abc import Awaitable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal, overload

import structlog

from carrierd.channels.types import InboundSms, PartOutcome, Receipt, SmsEvents, SmsRequest
from carrierd.config import PREMIUM, CarrierConfig
from carrierd.domain.clock import Clock, require_aware
from carrierd.domain.numbers import smpp_international
from carrierd.domain.sms_text import encode_gsm7, encode_ucs2
from carrierd.smpp.pdu import (
    ESM_CLASS_RECEIPT,
    ESM_CLASS_UDHI,
    REGISTERED_DELIVERY_RECEIPT_ALWAYS,
    DataCoding,
    DataSm,
    DeliverSm,
    MessageState,
    Npi,
    SubmitSm,
    Ton,
    udh_concat,
)
from carrierd.smpp.pool import PoolHealth, SmppPool
from carrierd.smpp.receipt import MessageIdStyle, normalize_message_id, receipt_text_fields
from carrierd.smpp.session import SubmitObserver, SubmitResult

log = structlog.get_logger("carrierd.channels.sms")

MESSAGE_STATE_STATS: Final[Mapping[int, str]] = {
    MessageState.ENROUTE: "ENROUTE",
    MessageState.DELIVERED: "DELIVRD",
    MessageState.EXPIRED: "EXPIRED",
    MessageState.DELETED: "DELETED",
    MessageState.UNDELIVERABLE: "UNDELIV",
    MessageState.ACCEPTED: "ACCEPTD",
    MessageState.UNKNOWN: "UNKNOWN",
    MessageState.REJECTED: "REJECTD",
}
# Receipt texts that spell the state out instead of the Appendix B abbreviation.
_LONG_STATS: Final[Mapping[str, str]] = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "REJECTED": "REJECTD",
    "ACCEPTED": "ACCEPTD",
}
_DIGITS: Final = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------------
# Outbound: request -> PDUs


def source_address(source_addr: str) -> tuple[int, int, str]:
    """(TON, NPI, address) for a sender; see the module docstring for the rules."""
    if source_addr.startswith("+") and _DIGITS.fullmatch(source_addr[1:]):
        return Ton.INTERNATIONAL, Npi.ISDN, source_addr[1:]
    if _DIGITS.fullmatch(source_addr):
        if source_addr.startswith("0"):
            return Ton.NATIONAL, Npi.ISDN, source_addr
        return Ton.NETWORK_SPECIFIC, Npi.UNKNOWN, source_addr
    return Ton.ALPHANUMERIC, Npi.UNKNOWN, source_addr


@functools.lru_cache(maxsize=1024)  # a claimed batch shares a few seconds of expiry
def smpp_absolute_time(at: datetime) -> str:
    """SMPP absolute time (section 7.1.1) in UTC: ``YYMMDDhhmmss000+``."""
    require_aware(at, "validity time")
    return at.astimezone(UTC).strftime("%y%m%d%H%M%S") + "000+"


def concat_reference(message_id: int, attempt: int, *, bits: Literal[8, 16]) -> int:
    """Concatenation reference of one attempt of a message (see module docstring)."""
    spread = zlib.crc32(message_id.to_bytes(8, "big", signed=True))
    return (spread + attempt) % (1 << bits)


def build_submit_pdus(request: SmsRequest, config: CarrierConfig) -> list[SubmitSm]:
    """The submit_sm PDUs of ``request`` for ``config``'s carrier, in part order.

    Raises ValueError for text the requested encoding cannot carry (intake
    validates text, so this is a bug upstream) and ``PduEncodeError`` later, at
    submit, for a field SMPP cannot carry.
    """
    if not request.parts:
        raise ValueError(f"message {request.message_id} has no parts")
    encode_part = encode_ucs2 if request.encoding == "ucs2" else encode_gsm7
    data_coding = DataCoding.UCS2 if request.encoding == "ucs2" else DataCoding.SMSC_DEFAULT
    source_ton, source_npi, source = source_address(request.source_addr)
    # Keyword arguments, not a template PDU copied with replace(): every PDU
    # is then built once (a frozen dataclass of ~40 fields is not cheap).
    common: dict[str, Any] = {
        "sequence_number": 0,
        "source_addr_ton": source_ton,
        "source_addr_npi": source_npi,
        "source_addr": source,
        "dest_addr_ton": Ton.INTERNATIONAL,
        "dest_addr_npi": Npi.ISDN,
        "destination_addr": smpp_international(request.msisdn),
        "validity_period": smpp_absolute_time(request.expires_at),
        "registered_delivery": REGISTERED_DELIVERY_RECEIPT_ALWAYS,
        "data_coding": data_coding,
    }
    total = len(request.parts)
    if total == 1:
        return [SubmitSm(**common, short_message=encode_part(request.parts[0]))]
    if config.concat == "payload":
        encoded = [encode_part(part) for part in request.parts]
        return [SubmitSm(**common, message_payload=b"".join(encoded))]
    numbers = request.numbers()
    if config.concat == "sar":
        reference = concat_reference(request.message_id, request.attempt, bits=16)
        return [
            SubmitSm(
                **common,
                short_message=encode_part(request.parts[number - 1]),
                sar_msg_ref_num=reference,
                sar_total_segments=total,
                sar_segment_seqnum=number,
            )
            for number in numbers
        ]
    wide = config.concat == "udh16"
    reference = concat_reference(request.message_id, request.attempt, bits=16 if wide else 8)
    return [
        SubmitSm(
            **common,
            esm_class=ESM_CLASS_UDHI,
            short_message=udh_concat(reference, total, number, ref16=wide)
            + encode_part(request.parts[number - 1]),
        )
        for number in numbers
    ]


def part_outcomes(
    request: SmsRequest, results: Sequence[SubmitResult], message_id_style: MessageIdStyle
) -> list[PartOutcome]:
    """One outcome per submit_sm, numbered as the engine's part records: a
    single message_payload PDU is one record (part 1) for the whole text."""
    numbers = request.numbers()
    if len(results) == 1 and len(numbers) > 1:
        numbers = (1,)  # one message_payload PDU for the whole text
    if len(results) != len(numbers):
        raise ValueError(f"{len(results)} results for parts {numbers}")
    return [
        _part_outcome(number, result, message_id_style)
        for number, result in zip(numbers, results, strict=True)
    ]


def _part_outcome(
    number: int, result: SubmitResult, message_id_style: MessageIdStyle
) -> PartOutcome:
    late: asyncio.Future[PartOutcome] | None = None
    if result.late_answer is not None:
        late = asyncio.get_running_loop().create_future()
        result.late_answer.add_done_callback(
            partial(_late_part_outcome, number, message_id_style, late)
        )
    return PartOutcome(
        part_no=number,
        result=result.outcome,
        smsc_message_id=(
            normalize_message_id(result.message_id, message_id_style)
            if result.outcome == "accepted" and result.message_id
            else None
        ),
        command_status=result.command_status,
        bind_id=result.bind_id,
        unknown_cause=result.cause,
        late=late,
    )


def _late_part_outcome(
    number: int,
    message_id_style: MessageIdStyle,
    late: asyncio.Future[PartOutcome],
    answer: asyncio.Future[SubmitResult],
) -> None:
    if late.done():
        return
    if answer.cancelled():
        late.cancel()
    else:
        late.set_result(_part_outcome(number, answer.result(), message_id_style))


# ---------------------------------------------------------------------------
# Inbound: deliver_sm / data_sm -> Receipt | InboundSms


def is_receipt(pdu: DeliverSm | DataSm) -> bool:
    return bool(pdu.esm_class & ESM_CLASS_RECEIPT) or pdu.receipted_message_id is not None


def parse_deliver(
    pdu: DeliverSm | DataSm,
    *,
    carrier: str,
    message_id_style: MessageIdStyle,
    receipt_id_style: MessageIdStyle,
    received_at: datetime,
) -> Receipt | InboundSms | None:
    """What a deliver_sm / data_sm says; None for a receipt no part can match.
    ``message_id_style`` reads the receipted_message_id TLV, ``receipt_id_style``
    the text ``id:``."""
    body = _body(pdu)
    if is_receipt(pdu):
        # The id, stat and err only (the same values parse_receipt_text
        # gives): its dates are not used here, and were half its cost.
        text = receipt_text_fields(body)
        candidates: list[str] = []
        if pdu.receipted_message_id:
            candidates.append(normalize_message_id(pdu.receipted_message_id, message_id_style))
        text_id = text.get("id")
        if text_id:
            normalized = normalize_message_id(text_id, receipt_id_style)
            if normalized not in candidates:
                candidates.append(normalized)
        if not candidates:
            return None
        stat = MESSAGE_STATE_STATS.get(pdu.message_state or 0)
        if stat is None:
            text_stat = (text.get("stat") or "").upper()
            stat = _LONG_STATS.get(text_stat, text_stat) if text_stat else "UNKNOWN"
        err = text.get("err") or None
        if err is None and pdu.network_error_code is not None:
            err = f"{pdu.network_error_code.error_code:03d}"
        return Receipt(
            carrier=carrier,
            smsc_message_id=candidates[0],
            stat=stat,
            err=err,
            received_at=received_at,
            alt_smsc_message_id=candidates[1] if len(candidates) > 1 else None,
            recipient_addr=pdu.source_addr or None,
            submit_date=text.get("submit date") or None,
            text_start=text.get("text") or None,
        )
    return InboundSms(
        carrier=carrier,
        source_addr=pdu.source_addr,
        destination_addr=pdu.destination_addr,
        esm_class=pdu.esm_class,
        data_coding=pdu.data_coding,
        short_message=body,
        received_at=received_at,
        sar_msg_ref_num=pdu.sar_msg_ref_num,
        sar_total_segments=pdu.sar_total_segments,
        sar_segment_seqnum=pdu.sar_segment_seqnum,
    )


def _body(pdu: DeliverSm | DataSm) -> bytes:
    if pdu.message_payload is not None:
        return pdu.message_payload
    return pdu.short_message if isinstance(pdu, DeliverSm) else b""


# ---------------------------------------------------------------------------
# The gateway


class SmppGateway:
    """``SmsGateway`` over one ``SmppPool`` per carrier route (DOMAIN §6: a
    carrier's premium route and its others, each its own SMSC); receipts and
    MO to ``events``.

    Two SMSCs number their messages each on its own, so the SMSC ids of a
    route other than the premium one are scoped by its name (``ordinary:4F2A``)
    on both sides, in the submit_sm_resp's outcome and in its receipts: a
    receipt from one route never settles a part sent over another.
    """

    def __init__(
        self,
        carriers: Mapping[str, CarrierConfig],
        events: SmsEvents,
        clock: Clock,
        *,
        receipt_message_id_styles: Mapping[str, MessageIdStyle] | None = None,
        bind_wait_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        submit_observers: Mapping[str, SubmitObserver] | None = None,
    ) -> None:
        self._events = events
        self._clock = clock
        routes = [route for config in carriers.values() for route in config.all_routes()]
        # (TLV id style, text id style) per route; receipt_message_id_styles
        # names the premium routes' text style by carrier.
        self._receipt_id_styles = {
            (route.name, route.route): (
                route.message_id_style,
                (receipt_message_id_styles or {}).get(route.name, route.message_id_style)
                if route.route == PREMIUM
                else route.receipt_id_style,
            )
            for route in routes
        }
        self._pools = {
            (route.name, route.route): SmppPool(
                route,
                partial(self._on_deliver, route.name, route=route.route),
                bind_wait_s=bind_wait_s,
                ssl_context=ssl_context,
                observer=(submit_observers or {}).get(route.pool_name),
            )
            for route in routes
        }

    def carriers(self) -> Collection[str]:
        return tuple(dict.fromkeys(carrier for carrier, _ in self._pools))

    def is_available(self, carrier: str, route: str = PREMIUM) -> bool:
        pool = self._pools.get((carrier, route))
        return pool is not None and pool.is_available()

    def receipts_backlogged(self) -> bool:
        return any(pool.receipts_backlogged() for pool in self._pools.values())

    def pool(self, carrier: str, route: str = PREMIUM) -> SmppPool:
        try:
            return self._pools[(carrier, route)]
        except KeyError:
            raise ValueError(f"no SMPP pool for carrier {carrier!r} route {route!r}") from None

    async def start(self) -> None:
        await asyncio.gather(*(pool.start() for pool in self._pools.values()))

    async def stop(self, drain_timeout_s: float) -> None:
        await asyncio.gather(*(pool.stop(drain_timeout_s) for pool in self._pools.values()))

    def health(self) -> dict[str, PoolHealth]:
        """Per pool: the carrier's name for its premium route, else carrier/route."""
        return {pool.config.pool_name: pool.health() for pool in self._pools.values()}

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        pool = self.pool(carrier, request.route)
        pdus = build_submit_pdus(request, pool.config)
        results = await pool.submit_all(pdus)
        outcomes = part_outcomes(request, results, pool.config.message_id_style)
        if request.route == PREMIUM:
            return outcomes
        return [_scoped_outcome(outcome, request.route) for outcome in outcomes]

    def _on_deliver(
        self, carrier: str, pdu: DeliverSm | DataSm, bind_id: str, *, route: str = PREMIUM
    ) -> Awaitable[None] | None:
        # Exceptions propagate to the session, which answers ESME_RX_T_APPN so the
        # SMSC delivers the PDU again rather than losing it.
        tlv_id_style, text_id_style = self._receipt_id_styles[(carrier, route)]
        event = parse_deliver(
            pdu,
            carrier=carrier,
            message_id_style=tlv_id_style,
            receipt_id_style=text_id_style,
            received_at=self._clock.now(),
        )
        if isinstance(event, Receipt):
            if route != PREMIUM:
                event = dataclasses.replace(
                    event,
                    smsc_message_id=scoped_message_id(route, event.smsc_message_id),
                    alt_smsc_message_id=scoped_message_id(route, event.alt_smsc_message_id),
                )
            return self._events.receipt(event)
        if isinstance(event, InboundSms):
            return self._events.inbound(event)
        log.warning("smpp_receipt_without_id", carrier=carrier, route=route, bind=bind_id)
        return None


@overload
def scoped_message_id(route: str, smsc_message_id: str) -> str: ...
@overload
def scoped_message_id(route: str, smsc_message_id: None) -> None: ...
def scoped_message_id(route: str, smsc_message_id: str | None) -> str | None:
    """An SMSC id of a route other than premium, as parts and receipts keep it."""
    if smsc_message_id is None or route == PREMIUM:
        return smsc_message_id
    return f"{route}:{smsc_message_id}"


def _scoped_outcome(outcome: PartOutcome, route: str) -> PartOutcome:
    late = outcome.late
    if late is not None:
        scoped_late: asyncio.Future[PartOutcome] = asyncio.get_running_loop().create_future()
        late.add_done_callback(partial(_scope_late, route, scoped_late))
        late = scoped_late
    return dataclasses.replace(
        outcome,
        smsc_message_id=scoped_message_id(route, outcome.smsc_message_id),
        late=late,
    )


def _scope_late(
    route: str, scoped: asyncio.Future[PartOutcome], late: asyncio.Future[PartOutcome]
) -> None:
    if scoped.done():
        return
    if late.cancelled():
        scoped.cancel()
    else:
        scoped.set_result(_scoped_outcome(late.result(), route))
