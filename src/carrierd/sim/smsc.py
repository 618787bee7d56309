"""`carrierd sim smsc`: four carriers' SMSCs in one process, one port each.

Each carrier accepts SMPP 3.4 binds (transmitter, receiver, transceiver) with
configured credentials and answers submit_sm, query_sm, enquire_link and
unbind; malformed and unsupported requests get a generic_nack. Delivery
receipts and mobile-originated messages go out as deliver_sm on any receiver
or transceiver bind of the submitting system_id, not necessarily the bind that
carried the submit (as real SMSCs do); without such a bind they wait for one,
and a deliver_sm left unanswered when its bind drops is sent again later.

The awkward parts of real carriers are configuration (`CarrierSimConfig`):
"not our subscriber" answers (DOMAIN §4) as a submit_sm_resp status or as an
UNDELIV receipt, UNDELIV/EXPIRED receipts, throttling above a rate, window
enforcement, delayed (`response_delay_min_s` .. `response_delay_max_s`),
missing and vendor-status responses, receipts that overtake their
submit_sm_resp, dropped connections (before a submit is taken, or after:
`disconnect_after_accept_share`, whose receipts still come), and message ids
written in hex on one side and decimal on the other.

Which carrier a number belongs to: explicit `subscriber_prefixes` (longest
match over all carriers) win; otherwise the national allocation of its block
(domain/allocation.py), as in life, except for a share of ported numbers
(`ported_share`, 15% by default): a stable hash of the number says whether
it ported and to which other carrier of `hash_carriers`, so a ported number
is on the same carrier in every run and a client's first guess from the
allocation is wrong for exactly those. A number in a block the allocation
gives none of the carriers is placed by the hash among `hash_carriers`.

It deliberately shares no code with the client side (smpp/session.py,
smpp/pool.py, channels/sms.py), only the codec and `domain/`: an error in the
client's reading of the protocol must not be mirrored here.

Per-submit decisions draw from one `random.Random` per carrier seeded with
`seed` and the carrier name: a run is reproducible when submits arrive in the
same order.

Receipts and MO messages wait in one heap per carrier, served by one
scheduler task per carrier (not one task per message): 100k messages in
flight cost 100k small records, not 100k tasks.

Counters (`SmscSimulator.counters`) let tests and benchmarks prove that no
part reached a handset twice: `counters.duplicates()`. A fault campaign that
kills and restarts the simulator process reads the same from a journal file
instead (`SmscJournal`, `carrierd sim smsc --journal PATH`): every accepted
part and every acknowledged receipt, written before the answer leaves. Like
a real SMSC's message store, the journal outlives the process: one started
on it continues the message ids and sends the receipts the last one owed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import json
import os
import random
import signal
import time
import tomllib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeAlias, cast

import structlog

from carrierd.domain.allocation import allocated_carrier
from carrierd.domain.clock import JST, Clock, SystemClock
from carrierd.domain.numbers import NumberError, normalize_msisdn, smpp_international
from carrierd.domain.sms_text import (
    decode_gsm7,
    decode_ucs2,
    encode_gsm7,
    encode_ucs2,
    is_gsm7,
    split_gsm7,
    split_ucs2,
)
from carrierd.smpp.pdu import (
    ESM_CLASS_RECEIPT,
    ESM_CLASS_UDHI,
    INTERFACE_VERSION_34,
    REGISTERED_DELIVERY_RECEIPT_ALWAYS,
    REGISTERED_DELIVERY_RECEIPT_ON_FAILURE,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandStatus,
    DataCoding,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Framer,
    GenericNack,
    MalformedPdu,
    MessageState,
    NetworkErrorCode,
    Npi,
    Pdu,
    QuerySm,
    QuerySmResp,
    StreamBroken,
    SubmitSm,
    SubmitSmResp,
    Ton,
    Unbind,
    UnbindResp,
    encode,
    is_response,
    split_udh,
    udh_concat,
)
from carrierd.smpp.writer import CoalescingWriter

_log = structlog.get_logger(__name__)

MessageIdFormat: TypeAlias = Literal["hex", "decimal"]
ThrottleScope: TypeAlias = Literal["bind", "carrier"]
BindMode: TypeAlias = Literal["transmitter", "receiver", "transceiver"]
ReceiptStat: TypeAlias = Literal["DELIVRD", "UNDELIV", "EXPIRED"]

# (destination E.164, text of the part) and (destination E.164, concat reference,
# part number): the keys under which accepted parts are counted.
TextPartKey: TypeAlias = tuple[str, str]
ConcatPartKey: TypeAlias = tuple[str, int, int]

DEFAULT_HASH_CARRIERS: Final = ("docomo", "au", "softbank", "rakuten")
# About the share of Japanese mobile numbers that have been ported (MNP).
DEFAULT_PORTED_SHARE: Final = 0.15

_RECEIPT_STATES: Final[Mapping[ReceiptStat, MessageState]] = {
    "DELIVRD": MessageState.DELIVERED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "EXPIRED": MessageState.EXPIRED,
}
_NETWORK_TYPE_GSM: Final = 3
_RECEIPT_TEXT_EXCERPT_CHARS: Final = 20  # Appendix B: "the first 20 characters"
_MAX_SEQUENCE_NUMBER: Final = 0x7FFFFFFF
_SCHEDULER_SLACK_S: Final = 0.002
_ADDRESS_MAX_CHARS: Final = 20  # source_addr/destination_addr are C-octet strings of 21


class SimConfigError(ValueError):
    """The simulator configuration is invalid; the message names every bad key."""


@dataclass(frozen=True, kw_only=True)
class CarrierSimConfig:
    """How one carrier's SMSC behaves. Shares are probabilities (0..1) per submit."""

    port: int = 0  # 0: an ephemeral port, reported by `SmscSimulator.start`
    # system_id -> password accepted in binds.
    accounts: Mapping[str, str] = field(default_factory=lambda: {"demo": "demo"})
    # system_id the SMSC names itself in bind responses ("" = the carrier name).
    smsc_system_id: str = ""

    # Subscribers: national prefixes ("090123") that belong to this carrier; they
    # override the hash rule. "0" claims every number not claimed more precisely.
    subscriber_prefixes: tuple[str, ...] = ()
    # The carrier whose subscribers this SMSC reaches; "" for its own name. A
    # second SMSC of one carrier (another route to it, DOMAIN §6) names it:
    # [carriers.softbank_ordinary] serves = "softbank".
    serves: str = ""
    # "Not our subscriber" (DOMAIN §4): a submit_sm_resp status, or (when
    # `wrong_carrier_as_receipt`) acceptance followed by an UNDELIV receipt.
    not_subscriber_status: int = CommandStatus.ESME_RINVDSTADR
    wrong_carrier_as_receipt: bool = False
    wrong_carrier_receipt_err: int = 11

    # Receipts: delay after the submit_sm_resp, uniform in [min, max].
    receipt_delay_min_s: float = 0.2
    receipt_delay_max_s: float = 2.0
    undeliverable_share: float = 0.0
    undeliverable_err: int = 1
    # National prefixes of this carrier's subscribers whose every part fails
    # (UNDELIV, `undeliverable_err`): a scripted failure, unlike the share.
    undeliverable_prefixes: tuple[str, ...] = ()
    expired_share: float = 0.0
    expired_err: int = 0
    receipt_tlvs: bool = True  # receipted_message_id + message_state (+ network_error_code)
    receipt_text: bool = True  # SMPP 3.4 Appendix B text in short_message
    # Receipts sent before the submit_sm_resp; the response then waits at least
    # `receipt_first_lead_s` so that it trails a receipt sent on another bind.
    receipt_before_response_share: float = 0.0
    receipt_first_lead_s: float = 0.05
    # How message ids are written: in submit_sm_resp, in the receipt text's
    # "id:", and in receipted_message_id. SMPP 3.4 makes that TLV the
    # submit_sm_resp id, so "" (the default) writes it in
    # submit_resp_id_format; some SMSCs write it like their text instead.
    submit_resp_id_format: MessageIdFormat = "hex"
    receipt_id_format: MessageIdFormat = "hex"
    receipt_tlv_id_format: MessageIdFormat | Literal[""] = ""

    # deliver_sm flow to the client: unanswered deliver_sm per bind, and what
    # happens when the client answers one with an error status.
    deliver_window: int = 64
    deliver_retry_delay_s: float = 1.0
    deliver_max_attempts: int = 5

    # Load and faults.
    throttle_rate_per_s: float = 0.0  # 0: never throttle
    throttle_scope: ThrottleScope = "bind"
    # A throttling SMSC: each bind accepts at most this many submits a second
    # (with a second's worth of burst) and answers the rest ESME_RTHROTTLED,
    # whatever `throttle_scope` says. 0: no such limit.
    throttle_accept_per_s: float = 0.0
    window: int = 0  # submits awaiting their response per bind; 0: unlimited
    window_exceeded_status: int = CommandStatus.ESME_RTHROTTLED
    window_exceeded_generic_nack: bool = False  # answer with generic_nack instead
    response_delay_min_s: float = 0.0
    response_delay_max_s: float = 0.0
    # Responses never sent. With `missing_response_accepts` the message was
    # accepted all the same (receipted, counted): the lost answer a client
    # must not turn into a duplicate. Without it the submit is forgotten.
    missing_response_share: float = 0.0
    missing_response_accepts: bool = True
    disconnect_share: float = 0.0  # the socket is dropped instead of answering
    # The submit is taken (counted, receipted later like any accepted one) and
    # the socket dropped before its response: what a bind lost with submits in
    # flight looks like to a client, whose receipts still come on a new bind.
    disconnect_after_accept_share: float = 0.0
    vendor_status_share: float = 0.0
    vendor_status: int = 0x0000040B

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in (
            "undeliverable_share",
            "expired_share",
            "receipt_before_response_share",
            "missing_response_share",
            "disconnect_share",
            "disconnect_after_accept_share",
            "vendor_status_share",
        ):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                problems.append(f"{name} must be within 0..1, got {share}")
        if self.undeliverable_share + self.expired_share > 1.0:
            problems.append("undeliverable_share + expired_share must not exceed 1")
        for low, high in (
            ("receipt_delay_min_s", "receipt_delay_max_s"),
            ("response_delay_min_s", "response_delay_max_s"),
        ):
            if not 0.0 <= getattr(self, low) <= getattr(self, high):
                problems.append(f"need 0 <= {low} <= {high}")
        for name in (
            "receipt_first_lead_s",
            "deliver_retry_delay_s",
            "throttle_rate_per_s",
            "throttle_accept_per_s",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} outside 0..65535")
        if not self.accounts:
            problems.append("accounts: at least one system_id is needed")
        for name in ("submit_resp_id_format", "receipt_id_format"):
            if getattr(self, name) not in ("hex", "decimal"):
                problems.append(f"{name} must be hex or decimal")
        if self.receipt_tlv_id_format not in ("", "hex", "decimal"):
            problems.append('receipt_tlv_id_format must be "", hex or decimal')
        if self.throttle_scope not in ("bind", "carrier"):
            problems.append("throttle_scope must be bind or carrier")
        if not (self.receipt_tlvs or self.receipt_text):
            problems.append("receipt_tlvs or receipt_text must be true: a receipt needs an id")
        if self.window < 0:
            problems.append("window must be >= 0")
        if self.deliver_window < 1 or self.deliver_max_attempts < 1:
            problems.append("deliver_window and deliver_max_attempts must be >= 1")
        for name in ("not_subscriber_status", "window_exceeded_status", "vendor_status"):
            if not 0 < getattr(self, name) <= 0xFFFFFFFF:
                problems.append(f"{name} must be a non-zero command_status")
        for name in ("wrong_carrier_receipt_err", "undeliverable_err", "expired_err"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                problems.append(f"{name} must be within 0..65535")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class SmscSimConfig:
    carriers: Mapping[str, CarrierSimConfig]
    seed: int = 0
    # The carriers ported numbers (and numbers of blocks allocated to none
    # of them) are placed on by a hash of the number, in order.
    hash_carriers: tuple[str, ...] = DEFAULT_HASH_CARRIERS
    # Share (0..1) of numbers ported away from the carrier of their block.
    ported_share: float = DEFAULT_PORTED_SHARE

    def __post_init__(self) -> None:
        if not self.carriers:
            raise ValueError("carriers: at least one carrier is needed")
        if not self.hash_carriers:
            raise ValueError("hash_carriers must not be empty")
        if not 0.0 <= self.ported_share <= 1.0:
            raise ValueError(f"ported_share: {self.ported_share} is not between 0 and 1")
        ports = [c.port for c in self.carriers.values() if c.port != 0]
        if len(ports) != len(set(ports)):
            raise ValueError(f"carriers share a port: {sorted(ports)}")


@dataclass
class CarrierSimCounters:
    binds: int = 0
    bind_failures: int = 0
    submits: int = 0  # every submit_sm received on a bound transmitter
    accepted: int = 0  # answered ESME_ROK, or accepted with the answer dropped
    refused: int = 0  # answered with a non-zero status (throttled included)
    throttled: int = 0  # over the rate
    window_rejections: int = 0  # over the window
    not_subscriber: int = 0  # refused, or accepted to fail, as another carrier's
    vendor_errors: int = 0
    responses_dropped: int = 0
    disconnects: int = 0
    receipts_sent: int = 0  # deliver_sm receipts written, redeliveries included
    receipts_by_stat: Counter[str] = field(default_factory=Counter)
    # Accepted submits per source_addr as written: which sender a route sent.
    accepted_by_sender: Counter[str] = field(default_factory=Counter)
    mo_sent: int = 0
    deliveries_acknowledged: int = 0  # deliver_sm_resp ESME_ROK (receipts and MO)
    deliveries_nacked: int = 0  # deliver_sm answered with an error
    deliveries_redelivered: int = 0  # unanswered when their bind dropped
    deliveries_abandoned: int = 0  # refused deliver_max_attempts times
    queries: int = 0
    generic_nacks: int = 0
    # bind label ("docomo#3") -> most submits awaiting their response at once.
    max_outstanding_by_bind: dict[str, int] = field(default_factory=dict)

    @property
    def max_outstanding(self) -> int:
        return max(self.max_outstanding_by_bind.values(), default=0)


@dataclass
class SmscSimCounters:
    carriers: dict[str, CarrierSimCounters]
    # Every accepted submit, whatever became of it.
    accepted_text_parts: Counter[TextPartKey] = field(default_factory=Counter)
    accepted_concat_parts: Counter[ConcatPartKey] = field(default_factory=Counter)
    # Accepted by the recipient's own carrier with a DELIVRD outcome: parts that
    # reach (or will reach) the handset. A resend after UNDELIV or a reroute after
    # "not our subscriber" is not a duplicate here.
    handset_text_parts: Counter[TextPartKey] = field(default_factory=Counter)
    handset_concat_parts: Counter[ConcatPartKey] = field(default_factory=Counter)

    def duplicates(self, *, include_undelivered: bool = False) -> list[TextPartKey | ConcatPartKey]:
        """Keys seen more than once: parts that reached a handset twice or, with
        `include_undelivered`, parts accepted twice by any carrier.

        Distinct messages must differ in text (or concat reference) for this to
        mean anything: the same text sent twice on purpose shows up here, and
        so does an 8-bit concat reference reused after 256 long messages to
        one number.
        """
        text, concat = (
            (self.accepted_text_parts, self.accepted_concat_parts)
            if include_undelivered
            else (self.handset_text_parts, self.handset_concat_parts)
        )
        found: list[TextPartKey | ConcatPartKey] = [k for k, n in text.items() if n > 1]
        found.extend(k for k, n in concat.items() if n > 1)
        return found


def subscriber_carrier(config: SmscSimConfig, msisdn: str) -> str | None:
    """The carrier whose subscriber `msisdn` is, or None for a non-mobile number."""
    try:
        e164 = normalize_msisdn(msisdn, allow_m2m=True)
    except NumberError:
        return None
    return _owner(config, "0" + e164[3:])


def _owner(config: SmscSimConfig, national: str) -> str:
    best: tuple[int, str] | None = None
    for name, carrier in config.carriers.items():
        for prefix in carrier.subscriber_prefixes:
            if national.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), carrier.serves or name)
    if best is not None:
        return best[1]
    # Not salted with the seed: the same numbers belong to the same carriers in
    # every run, so demo data and test expectations stay put.
    digest = hashlib.sha256(national.encode("ascii")).digest()
    allocated = allocated_carrier("+81" + national[1:]) if national[1:].isdigit() else None
    if allocated is None:
        index = int.from_bytes(digest[:8], "big") % len(config.hash_carriers)
        return config.hash_carriers[index]
    ported = int.from_bytes(digest[8:16], "big") < config.ported_share * 2**64
    others = [c for c in config.hash_carriers if c != allocated]
    if not ported or not others:
        return allocated
    return others[int.from_bytes(digest[:8], "big") % len(others)]


def is_ported(config: SmscSimConfig, msisdn: str) -> bool:
    """Whether the number's subscriber is on another carrier than its block's
    allocation says (benchmarks count how often a first guess can be right)."""
    owner = subscriber_carrier(config, msisdn)
    allocated = allocated_carrier(normalize_msisdn(msisdn)) if owner is not None else None
    return allocated is not None and owner != allocated


# ---------------------------------------------------------------------------
# Records and deliveries


@dataclass(slots=True)
class _MessageRecord:
    """One accepted part, as query_sm and its receipt need it."""

    message_id: int
    system_id: str
    source_ton: int
    source_npi: int
    source_addr: str
    dest_ton: int
    dest_npi: int
    destination_addr: str
    submitted_at: datetime
    final_at_s: float  # loop time from which the outcome is final
    stat: ReceiptStat
    err: int
    excerpt: str


@dataclass(slots=True)
class _Delivery:
    """A deliver_sm waiting for a receiver bind: a receipt, or an MO message."""

    system_id: str
    record: _MessageRecord | None = None
    mo_pdu: DeliverSm | None = None
    attempts: int = 0


class _Reply(NamedTuple):
    pdu: SubmitSmResp | GenericNack | None  # None: never answered
    delay_s: float = 0.0
    disconnect: bool = False


class _RateLimiter:
    """A token bucket holding one second of `rate_per_s` submits (at least one)."""

    def __init__(self, rate_per_s: float, now_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._updated_s = now_s

    def try_take(self, now_s: float) -> bool:
        elapsed_s = max(0.0, now_s - self._updated_s)
        self._tokens = min(self._capacity, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


# ---------------------------------------------------------------------------
# One carrier


class _Carrier:
    """One carrier's SMSC: its listening socket, binds, policy and delivery heap."""

    def __init__(
        self,
        name: str,
        config: CarrierSimConfig,
        sim_config: SmscSimConfig,
        counters: SmscSimCounters,
        clock: Clock,
        journal: SmscJournal | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.config = config
        self.sim_config = sim_config
        self.counters = counters.carriers[name]
        self.totals = counters
        self.clock = clock
        self.smsc_system_id = config.smsc_system_id or name
        self._rng = random.Random(f"{sim_config.seed}:{name}")
        # Ids start at a per-carrier offset large enough that hex ids have letters
        # and the two carriers' ids do not collide.
        offset_digest = hashlib.sha256(f"{sim_config.seed}:{name}".encode()).digest()
        self._next_message_id = 0x10000000 + int.from_bytes(offset_digest[:4]) % 0x60000000
        # A restarted SMSC keeps its message store: ids go on where the last
        # process stopped, and receipts it owed are sent after all.
        self._owed: list[tuple[_MessageRecord, float]] = []
        if journal is not None:
            last_id = journal.backlog.last_id.get(name)
            if last_id is not None:
                self._next_message_id = max(self._next_message_id, last_id + 1)
            self._owed = journal.backlog.owed.get(name, [])
        self._records: dict[int, _MessageRecord] = {}
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._heap_serial = 0
        self._ready: dict[str, deque[_Delivery]] = {}
        self._receivers: dict[str, list[_SmppConnection]] = {}
        self._round_robin = 0
        self._connections: set[_SmppConnection] = set()
        self._bind_serial = 0
        self._mo_reference = 0
        self._server: asyncio.Server | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._carrier_limiter: _RateLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------

    async def start(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        if self.config.throttle_rate_per_s > 0 and self.config.throttle_scope == "carrier":
            self._carrier_limiter = _RateLimiter(self.config.throttle_rate_per_s, loop.time())
        self._server = await loop.create_server(
            lambda: _SmppConnection(self), host, self.config.port
        )
        self._scheduler = loop.create_task(self._run_scheduler(), name=f"smsc-sim-{self.name}")
        self._scheduler.add_done_callback(self._scheduler_done)
        owed, self._owed = self._owed, []
        now_s, wall_s = loop.time(), time.time()
        for record, final_at_wall_s in owed:
            record.final_at_s = now_s + max(0.0, final_at_wall_s - wall_s)
            self._records[record.message_id] = record
            self._push(record.final_at_s, _Delivery(record.system_id, record=record))
        if owed:
            _log.info("smsc_sim_receipts_owed", carrier=self.name, receipts=len(owed))
        port: int = self._server.sockets[0].getsockname()[1]
        _log.info("smsc_sim_listening", carrier=self.name, host=host, port=port)
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.shutdown()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        # A crash here would otherwise vanish: nobody awaits the scheduler.
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("smsc_sim_scheduler_failed", carrier=self.name, exc_info=exc)

    # -- binds ------------------------------------------------------------------

    def new_bind_label(self) -> str:
        self._bind_serial += 1
        return f"{self.name}#{self._bind_serial}"

    def connection_made(self, connection: _SmppConnection) -> None:
        self._connections.add(connection)

    def authenticate(self, system_id: str, password: str) -> int:
        expected = self.config.accounts.get(system_id)
        if expected is None:
            return CommandStatus.ESME_RINVSYSID
        if password != expected:
            return CommandStatus.ESME_RINVPASWD
        return CommandStatus.ESME_ROK

    def new_limiter(self) -> _RateLimiter | None:
        if self.config.throttle_rate_per_s > 0 and self.config.throttle_scope == "bind":
            return _RateLimiter(self.config.throttle_rate_per_s, self._now_s())
        return None

    def new_accept_limiter(self) -> _RateLimiter | None:
        if self.config.throttle_accept_per_s > 0:
            return _RateLimiter(self.config.throttle_accept_per_s, self._now_s())
        return None

    def receiver_bound(self, connection: _SmppConnection) -> None:
        self._receivers.setdefault(connection.system_id, []).append(connection)
        self.drain(connection.system_id)

    def connection_lost(self, connection: _SmppConnection, unanswered: list[_Delivery]) -> None:
        self._connections.discard(connection)
        receivers = self._receivers.get(connection.system_id)
        if receivers is not None and connection in receivers:
            receivers.remove(connection)
        if unanswered:
            # Sent but never answered: the client may or may not have seen them, so
            # they go again (a client must tolerate a repeated receipt).
            self.counters.deliveries_redelivered += len(unanswered)
            queue = self._ready.setdefault(connection.system_id, deque())
            queue.extendleft(reversed(unanswered))
            self.drain(connection.system_id)

    # -- submits ----------------------------------------------------------------

    def submit(self, connection: _SmppConnection, pdu: SubmitSm) -> _Reply:
        """Decide the fate of one submit_sm; its receipt is scheduled on acceptance."""
        config = self.config
        counters = self.counters
        sequence_number = pdu.sequence_number
        counters.submits += 1
        if self._chance(config.disconnect_share):
            counters.disconnects += 1
            return _Reply(None, disconnect=True)
        # Window and rate refusals answer at once (load is shed before queueing);
        # the others wait the configured response delay like acceptances.
        # The connection counts this submit among its outstanding ones already.
        if config.window and connection.outstanding_submits > config.window:
            counters.window_rejections += 1
            counters.refused += 1
            status = config.window_exceeded_status
            if config.window_exceeded_generic_nack:
                return _Reply(GenericNack(sequence_number=sequence_number, command_status=status))
            return _Reply(_refusal(sequence_number, status))
        limiter = self._carrier_limiter or connection.limiter
        accept_limiter = connection.accept_limiter
        if (limiter is not None and not limiter.try_take(self._now_s())) or (
            accept_limiter is not None and not accept_limiter.try_take(self._now_s())
        ):
            counters.throttled += 1
            counters.refused += 1
            return _Reply(_refusal(sequence_number, CommandStatus.ESME_RTHROTTLED))
        response_delay_s = self._uniform(config.response_delay_min_s, config.response_delay_max_s)
        if self._chance(config.vendor_status_share):
            counters.vendor_errors += 1
            counters.refused += 1
            return _Reply(_refusal(sequence_number, config.vendor_status), response_delay_s)
        try:
            destination = normalize_msisdn(pdu.destination_addr, allow_m2m=True)
        except NumberError:
            counters.refused += 1
            refusal = _refusal(sequence_number, CommandStatus.ESME_RINVDSTADR)
            return _Reply(refusal, response_delay_s)
        ours = _owner(self.sim_config, "0" + destination[3:]) == (config.serves or self.name)
        if not ours:
            counters.not_subscriber += 1
            if not config.wrong_carrier_as_receipt:
                counters.refused += 1
                refusal = _refusal(sequence_number, config.not_subscriber_status)
                return _Reply(refusal, response_delay_s)
        drop_response = self._chance(config.missing_response_share)
        if drop_response and not config.missing_response_accepts:
            counters.responses_dropped += 1
            return _Reply(None)
        receipt_first = self._chance(config.receipt_before_response_share)
        record = self._accept(connection, pdu, destination, ours, response_delay_s)
        self._schedule_receipt(pdu, record, receipt_first=receipt_first)
        if self._chance(config.disconnect_after_accept_share):
            counters.disconnects += 1
            return _Reply(None, disconnect=True)
        if drop_response:
            counters.responses_dropped += 1
            return _Reply(None)
        if receipt_first:
            response_delay_s = max(response_delay_s, config.receipt_first_lead_s)
        message_id = _format_message_id(record.message_id, config.submit_resp_id_format)
        return _Reply(
            SubmitSmResp(sequence_number=sequence_number, message_id=message_id),
            response_delay_s,
        )

    def _accept(
        self,
        connection: _SmppConnection,
        pdu: SubmitSm,
        destination: str,
        ours: bool,
        response_delay_s: float,
    ) -> _MessageRecord:
        config = self.config
        self.counters.accepted += 1
        concat, text = _part_of(pdu)
        totals = self.totals
        text_key: TextPartKey = (destination, text)
        totals.accepted_text_parts[text_key] += 1
        concat_key: ConcatPartKey | None = None
        if concat is not None:
            concat_key = (destination, concat[0], concat[1])
            totals.accepted_concat_parts[concat_key] += 1

        stat: ReceiptStat
        if not ours:
            stat, err = "UNDELIV", config.wrong_carrier_receipt_err
        elif config.undeliverable_prefixes and ("0" + destination[3:]).startswith(
            config.undeliverable_prefixes
        ):
            stat, err = "UNDELIV", config.undeliverable_err
        else:
            roll = self._rng.random()
            if roll < config.undeliverable_share:
                stat, err = "UNDELIV", config.undeliverable_err
            elif roll < config.undeliverable_share + config.expired_share:
                stat, err = "EXPIRED", config.expired_err
            else:
                stat, err = "DELIVRD", 0
        if stat == "DELIVRD":
            totals.handset_text_parts[text_key] += 1
            if concat_key is not None:
                totals.handset_concat_parts[concat_key] += 1

        message_id = self._next_message_id
        self._next_message_id += 1
        receipt_delay_s = self._uniform(config.receipt_delay_min_s, config.receipt_delay_max_s)
        record = _MessageRecord(
            message_id=message_id,
            system_id=connection.system_id,
            source_ton=pdu.source_addr_ton,
            source_npi=pdu.source_addr_npi,
            source_addr=pdu.source_addr[:_ADDRESS_MAX_CHARS],
            dest_ton=pdu.dest_addr_ton,
            dest_npi=pdu.dest_addr_npi,
            destination_addr=pdu.destination_addr[:_ADDRESS_MAX_CHARS],
            submitted_at=self.clock.now(),
            final_at_s=self._now_s() + response_delay_s + receipt_delay_s,
            stat=stat,
            err=err,
            excerpt=text[:_RECEIPT_TEXT_EXCERPT_CHARS],
        )
        self._records[message_id] = record
        self.counters.accepted_by_sender[record.source_addr] += 1
        if self.journal is not None:
            self.journal.accepted(
                self.name,
                record,
                destination,
                text,
                receipt_owed=_receipt_wanted(pdu.registered_delivery, stat),
                final_in_s=response_delay_s + receipt_delay_s,
            )
        return record

    def _schedule_receipt(
        self, pdu: SubmitSm, record: _MessageRecord, *, receipt_first: bool
    ) -> None:
        if not _receipt_wanted(pdu.registered_delivery, record.stat):
            return
        delivery = _Delivery(record.system_id, record=record)
        if receipt_first:
            record.final_at_s = self._now_s()
            self._ready.setdefault(record.system_id, deque()).appendleft(delivery)
            self.drain(record.system_id)
        else:
            self._push(record.final_at_s, delivery)

    # -- query_sm ---------------------------------------------------------------

    def query(self, pdu: QuerySm) -> QuerySmResp:
        self.counters.queries += 1
        number = _parse_message_id(pdu.message_id, self.config.submit_resp_id_format)
        record = self._records.get(number) if number is not None else None
        if record is None:
            return QuerySmResp(
                sequence_number=pdu.sequence_number, command_status=CommandStatus.ESME_RQUERYFAIL
            )
        if self._now_s() < record.final_at_s:
            state, final_date, error_code = MessageState.ENROUTE, "", 0
        else:
            state = _RECEIPT_STATES[record.stat]
            final_date = _smpp_absolute_time(self.clock.now())
            error_code = min(record.err, 0xFF)
        return QuerySmResp(
            sequence_number=pdu.sequence_number,
            message_id=pdu.message_id,
            final_date=final_date,
            message_state=state,
            error_code=error_code,
        )

    # -- MO ---------------------------------------------------------------------

    def send_mo(self, source: str, destination: str, text: str, system_id: str) -> int:
        handset = smpp_international(normalize_msisdn(source, allow_m2m=True))
        if is_gsm7(text):
            parts, coding, encoder = split_gsm7(text), DataCoding.SMSC_DEFAULT, encode_gsm7
        else:
            parts, coding, encoder = split_ucs2(text), DataCoding.UCS2, encode_ucs2
        reference = 0
        if len(parts) > 1:
            self._mo_reference = (self._mo_reference + 1) % 256
            reference = self._mo_reference
        now_s = self._now_s()
        for number, part in enumerate(parts, start=1):
            payload = encoder(part)
            esm_class = 0
            if len(parts) > 1:
                payload = udh_concat(reference, len(parts), number) + payload
                esm_class = ESM_CLASS_UDHI
            mo = DeliverSm(
                sequence_number=0,
                source_addr_ton=Ton.INTERNATIONAL,
                source_addr_npi=Npi.ISDN,
                source_addr=handset,
                dest_addr_ton=Ton.UNKNOWN,
                dest_addr_npi=Npi.ISDN,
                destination_addr=destination,
                esm_class=esm_class,
                data_coding=coding,
                short_message=payload,
            )
            self._push(now_s, _Delivery(system_id, mo_pdu=mo))
        return len(parts)

    def queue_mo(self, pdus: list[DeliverSm], system_id: str) -> None:
        """Deliver these MO PDUs as given (order, duplicates and all)."""
        now_s = self._now_s()
        for mo in pdus:
            self._push(now_s, _Delivery(system_id, mo_pdu=mo))

    # -- deliveries -------------------------------------------------------------

    def _push(self, due_s: float, delivery: _Delivery) -> None:
        self._heap_serial += 1
        heapq.heappush(self._heap, (due_s, self._heap_serial, delivery))
        # Only a new earliest entry changes when the scheduler must wake.
        if self._heap[0][2] is delivery and self._wake is not None:
            self._wake.set()

    async def _run_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        heap = self._heap
        while True:
            wake.clear()
            # Timers fire to the millisecond (libuv's resolution under uvloop),
            # possibly just before the instant asked for: what falls due
            # within the slack counts as due, or the loop would spin re-arming.
            due_s = loop.time() + _SCHEDULER_SLACK_S
            touched: set[str] = set()
            while heap and heap[0][0] <= due_s:
                delivery = heapq.heappop(heap)[2]
                self._ready.setdefault(delivery.system_id, deque()).append(delivery)
                touched.add(delivery.system_id)
            for system_id in touched:
                self.drain(system_id)
            timer = loop.call_at(heap[0][0], wake.set) if heap else None
            try:
                await wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    def drain(self, system_id: str) -> None:
        """Send what is due for `system_id` on its receiver binds, round robin.

        Called when something falls due, a receiver binds, a deliver_sm is
        answered or a bind can be written to again: nothing polls.
        """
        queue = self._ready.get(system_id)
        receivers = self._receivers.get(system_id)
        if not queue or not receivers:
            return
        while queue:
            connection = self._next_receiver(receivers)
            if connection is None:
                return
            connection.deliver(queue.popleft())

    def _next_receiver(self, receivers: list[_SmppConnection]) -> _SmppConnection | None:
        for _ in range(len(receivers)):
            self._round_robin = (self._round_robin + 1) % len(receivers)
            candidate = receivers[self._round_robin]
            if candidate.can_deliver:
                return candidate
        return None

    def delivery_pdu(self, delivery: _Delivery, sequence_number: int) -> DeliverSm:
        if delivery.mo_pdu is not None:
            self.counters.mo_sent += 1
            return dataclasses.replace(delivery.mo_pdu, sequence_number=sequence_number)
        record = delivery.record
        assert record is not None
        self.counters.receipts_sent += 1
        self.counters.receipts_by_stat[record.stat] += 1
        config = self.config
        receipt_id = _format_message_id(record.message_id, config.receipt_id_format)
        short_message = b""
        if config.receipt_text:
            short_message = _receipt_text(record, receipt_id, self.clock.now())
        with_tlvs = config.receipt_tlvs
        tlv_id = _format_message_id(
            record.message_id, config.receipt_tlv_id_format or config.submit_resp_id_format
        )
        return DeliverSm(
            sequence_number=sequence_number,
            source_addr_ton=record.dest_ton,
            source_addr_npi=record.dest_npi,
            source_addr=record.destination_addr,
            dest_addr_ton=record.source_ton,
            dest_addr_npi=record.source_npi,
            destination_addr=record.source_addr,
            esm_class=ESM_CLASS_RECEIPT,
            short_message=short_message,
            receipted_message_id=tlv_id if with_tlvs else None,
            message_state=_RECEIPT_STATES[record.stat] if with_tlvs else None,
            network_error_code=(
                NetworkErrorCode(_NETWORK_TYPE_GSM, record.err)
                if with_tlvs and record.err
                else None
            ),
        )

    def delivery_answered(self, delivery: _Delivery, status: int, system_id: str) -> None:
        if status == CommandStatus.ESME_ROK:
            self.counters.deliveries_acknowledged += 1
            if self.journal is not None and delivery.record is not None:
                self.journal.receipt_acknowledged(self.name, delivery.record)
        else:
            self.counters.deliveries_nacked += 1
            delivery.attempts += 1
            if delivery.attempts >= self.config.deliver_max_attempts:
                self.counters.deliveries_abandoned += 1
            else:
                self._push(self._now_s() + self.config.deliver_retry_delay_s, delivery)
        self.drain(system_id)

    @property
    def pending_deliveries(self) -> int:
        in_flight = sum(c.deliveries_in_flight for c in self._connections)
        return len(self._heap) + sum(len(q) for q in self._ready.values()) + in_flight

    # -- randomness and time ----------------------------------------------------

    def _chance(self, share: float) -> bool:
        return share > 0.0 and self._rng.random() < share

    def _uniform(self, low: float, high: float) -> float:
        return low if high <= low else self._rng.uniform(low, high)

    def _now_s(self) -> float:
        assert self._loop is not None, "start() first"
        return self._loop.time()


# ---------------------------------------------------------------------------
# One bind (one TCP connection)

_BindResponse: TypeAlias = BindTransmitterResp | BindReceiverResp | BindTransceiverResp
_BIND_RESPONSES: Final[Mapping[type, tuple[type[_BindResponse], BindMode]]] = {
    BindTransmitter: (BindTransmitterResp, "transmitter"),
    BindReceiver: (BindReceiverResp, "receiver"),
    BindTransceiver: (BindTransceiverResp, "transceiver"),
}


class _SmppConnection(asyncio.Protocol):
    """The SMSC side of one TCP connection: bind state, framing, pending answers."""

    def __init__(self, carrier: _Carrier) -> None:
        self._carrier = carrier
        self._framer = Framer()
        self._transport: asyncio.Transport | None = None
        self.label = carrier.new_bind_label()
        self.mode: BindMode | None = None
        self.system_id = ""
        self.limiter: _RateLimiter | None = None
        self.accept_limiter: _RateLimiter | None = None  # throttle_accept_per_s
        self.outstanding_submits = 0
        self._max_outstanding = 0
        self._delayed: dict[int, asyncio.TimerHandle] = {}
        self._in_flight: dict[int, _Delivery] = {}
        self._sequence_number = 0
        self._closing = False
        self._write_paused = False
        # What one loop iteration writes leaves in one write: a syscall per
        # PDU was the simulator's largest cost under load.
        self._writer = CoalescingWriter(self._open_transport)

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but a
        # stream server always hands us a read/write transport.
        self._transport = cast(asyncio.Transport, transport)
        self._carrier.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
        unanswered = [self._in_flight[seq] for seq in sorted(self._in_flight)]
        self._in_flight.clear()
        self._carrier.connection_lost(self, unanswered)

    def pause_writing(self) -> None:
        # The client does not read: stop reading its submits and stop sending it
        # deliver_sm until it catches up, instead of buffering without bound.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
        if self.mode in ("receiver", "transceiver"):
            self._carrier.drain(self.system_id)

    def data_received(self, data: bytes) -> None:
        self._framer.feed(data)
        while not self._closing:
            try:
                event = self._framer.next_event()
            except StreamBroken as exc:
                _log.info("smsc_sim_stream_broken", bind=self.label, problem=str(exc))
                self._abort()
                return
            if event is None:
                return
            self._dispatch(event)

    # -- dispatch ---------------------------------------------------------------

    def _dispatch(self, event: Pdu | MalformedPdu) -> None:
        match event:
            case MalformedPdu():
                if not is_response(event.command_id):
                    self._nack(event.sequence_number, event.nack_status)
            case BindTransmitter() | BindReceiver() | BindTransceiver():
                self._on_bind(event)
            case SubmitSm():
                self._on_submit(event)
            case DeliverSmResp():
                self._on_delivery_answer(event.sequence_number, event.command_status)
            case GenericNack():
                # A client that nacks our deliver_sm refused it.
                status = event.command_status or CommandStatus.ESME_RSYSERR
                self._on_delivery_answer(event.sequence_number, status)
            case EnquireLink():
                self._write(EnquireLinkResp(sequence_number=event.sequence_number))
            case QuerySm():
                if self.mode in ("transmitter", "transceiver"):
                    self._write(self._carrier.query(event))
                else:
                    self._refuse_unbound(QuerySmResp, event.sequence_number)
            case Unbind():
                self._write(UnbindResp(sequence_number=event.sequence_number))
                self._close()
            case UnbindResp():
                self._close()
            case _ if is_response(event.command_id):
                pass  # an answer to nothing we asked: ignored, as SMSCs do
            case _:
                # Not served by this SMSC: submit_multi, data_sm, cancel_sm, replace_sm...
                self._nack(event.sequence_number, CommandStatus.ESME_RINVCMDID)

    def _on_bind(self, pdu: BindTransmitter | BindReceiver | BindTransceiver) -> None:
        response_class, mode = _BIND_RESPONSES[type(pdu)]
        carrier = self._carrier
        if self.mode is not None:
            status: int = CommandStatus.ESME_RALYBND
        else:
            status = carrier.authenticate(pdu.system_id, pdu.password)
        if status != CommandStatus.ESME_ROK:
            carrier.counters.bind_failures += 1
            self._write(response_class(sequence_number=pdu.sequence_number, command_status=status))
            return
        self.mode = mode
        self.system_id = pdu.system_id
        self.limiter = carrier.new_limiter()
        self.accept_limiter = carrier.new_accept_limiter()
        carrier.counters.binds += 1
        carrier.counters.max_outstanding_by_bind[self.label] = 0
        _log.info("smsc_sim_bound", bind=self.label, mode=mode, system_id=pdu.system_id)
        # The response goes out before any deliver_sm that binding releases.
        self._write(
            response_class(
                sequence_number=pdu.sequence_number,
                system_id=carrier.smsc_system_id,
                sc_interface_version=INTERFACE_VERSION_34,
            )
        )
        if mode != "transmitter":
            carrier.receiver_bound(self)

    def _on_submit(self, pdu: SubmitSm) -> None:
        if self.mode not in ("transmitter", "transceiver"):
            self._refuse_unbound(SubmitSmResp, pdu.sequence_number)
            return
        # Counted from arrival to answer: with immediate answers the maximum is 1;
        # with delayed answers it shows how many submits the client had in flight.
        self.outstanding_submits += 1
        if self.outstanding_submits > self._max_outstanding:
            self._max_outstanding = self.outstanding_submits
            self._carrier.counters.max_outstanding_by_bind[self.label] = self._max_outstanding
        reply = self._carrier.submit(self, pdu)
        if reply.disconnect:
            self._abort()
            return
        if reply.pdu is None or reply.delay_s <= 0:
            self.outstanding_submits -= 1
            if reply.pdu is not None:
                self._write(reply.pdu)
            return
        loop = asyncio.get_running_loop()
        # Keyed by the request's sequence number: a client that reuses one while
        # it is pending gets only the last answer, which is its own bug to see.
        self._delayed[pdu.sequence_number] = loop.call_later(
            reply.delay_s, self._send_delayed, pdu.sequence_number, reply.pdu
        )

    def _send_delayed(self, sequence_number: int, response: SubmitSmResp | GenericNack) -> None:
        self._delayed.pop(sequence_number, None)
        self.outstanding_submits -= 1
        self._write(response)

    def _refuse_unbound(
        self, response_class: type[SubmitSmResp | QuerySmResp], sequence_number: int
    ) -> None:
        self._write(
            response_class(
                sequence_number=sequence_number, command_status=CommandStatus.ESME_RINVBNDSTS
            )
        )

    # -- deliveries -------------------------------------------------------------

    @property
    def can_deliver(self) -> bool:
        return (
            not self._closing
            and not self._write_paused
            and len(self._in_flight) < self._carrier.config.deliver_window
        )

    @property
    def deliveries_in_flight(self) -> int:
        return len(self._in_flight)

    def deliver(self, delivery: _Delivery) -> None:
        sequence_number = self._next_sequence_number()
        self._in_flight[sequence_number] = delivery
        self._write(self._carrier.delivery_pdu(delivery, sequence_number))

    def _on_delivery_answer(self, sequence_number: int, status: int) -> None:
        delivery = self._in_flight.pop(sequence_number, None)
        if delivery is not None:
            self._carrier.delivery_answered(delivery, status, self.system_id)

    # -- output -----------------------------------------------------------------

    def shutdown(self) -> None:
        """The SMSC goes away: unbind, then close without waiting for the answer."""
        if self._closing:
            return
        if self.mode is not None:
            self._write(Unbind(sequence_number=self._next_sequence_number()))
        self._close()

    def _next_sequence_number(self) -> int:
        self._sequence_number = self._sequence_number % _MAX_SEQUENCE_NUMBER + 1
        return self._sequence_number

    def _nack(self, sequence_number: int, status: int) -> None:
        self._carrier.counters.generic_nacks += 1
        self._write(GenericNack(sequence_number=sequence_number, command_status=status))

    def _write(self, pdu: Pdu) -> None:
        if self._open_transport() is not None:
            self._writer.later(encode(pdu))

    def _open_transport(self) -> asyncio.Transport | None:
        return None if self._closing else self._transport

    def _close(self) -> None:
        self._writer.flush()
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        # Abrupt on purpose: answers still in the buffer are lost, as in a real drop.
        self._closing = True
        self._writer.discard()
        if self._transport is not None:
            self._transport.abort()


# ---------------------------------------------------------------------------
# The simulator


class SmscSimulator:
    """Every configured carrier's SMSC; `start()` opens their ports."""

    def __init__(
        self,
        config: SmscSimConfig,
        *,
        clock: Clock | None = None,
        journal: SmscJournal | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.counters = SmscSimCounters(
            carriers={name: CarrierSimCounters() for name in config.carriers}
        )
        clock = clock or SystemClock()
        self._carriers = {
            name: _Carrier(name, carrier, config, self.counters, clock, journal)
            for name, carrier in config.carriers.items()
        }
        self.ports: dict[str, int] = {}

    async def start(self, host: str = "127.0.0.1") -> dict[str, int]:
        """Listen on every carrier's port; returns carrier -> bound port."""
        try:
            for name, carrier in self._carriers.items():
                self.ports[name] = await carrier.start(host)
        except BaseException:
            await self.stop()
            raise
        return dict(self.ports)

    async def stop(self) -> None:
        """Unbind every client, close every port and stop the schedulers."""
        await asyncio.gather(*(carrier.stop() for carrier in self._carriers.values()))
        self.ports.clear()

    def carrier_of(self, msisdn: str) -> str | None:
        """The carrier whose subscriber `msisdn` is (None: not a mobile number)."""
        return subscriber_carrier(self.config, msisdn)

    def duplicates(self, *, include_undelivered: bool = False) -> list[TextPartKey | ConcatPartKey]:
        return self.counters.duplicates(include_undelivered=include_undelivered)

    def send_mo(
        self,
        carrier: str,
        *,
        source: str,
        destination: str,
        text: str,
        system_id: str | None = None,
    ) -> int:
        """Queue a mobile-originated message from handset `source` to `destination`
        (the sender's short code or 0120 number) for `system_id`'s receiver binds
        (default: the carrier's first account). Long text goes as concatenated
        parts with an 8-bit UDH; returns the number of parts."""
        runtime = self._carriers[carrier]
        target = system_id if system_id is not None else next(iter(runtime.config.accounts))
        return runtime.send_mo(source, destination, text, target)

    def send_mo_pdus(
        self, carrier: str, pdus: list[DeliverSm], *, system_id: str | None = None
    ) -> None:
        """Queue MO deliver_sms exactly as given (built by `mo_deliver_pdus`,
        then reordered, repeated or thinned out by a test): what a handset's
        concatenated reply looks like after a real network's retries."""
        runtime = self._carriers[carrier]
        target = system_id if system_id is not None else next(iter(runtime.config.accounts))
        runtime.queue_mo(pdus, target)

    def pending_deliveries(self, carrier: str | None = None) -> int:
        """Receipts and MO messages not yet answered by a client."""
        carriers = self._carriers.values() if carrier is None else [self._carriers[carrier]]
        return sum(c.pending_deliveries for c in carriers)


async def run_smsc_sim(
    config: SmscSimConfig,
    host: str = "127.0.0.1",
    on_listening: Callable[[dict[str, int]], None] | None = None,
    journal_path: Path | None = None,
) -> None:
    """Serve until cancelled. `on_listening` gets carrier -> bound port (port 0
    in the config picks a free port, so this is how a caller learns it).
    With `journal_path`, parts are journalled there and SIGUSR1 appends the
    counters (see `SmscJournal`)."""
    journal = SmscJournal.open(journal_path, seed=config.seed) if journal_path else None
    simulator = SmscSimulator(config, journal=journal)
    loop = asyncio.get_running_loop()
    try:
        if journal is not None:
            loop.add_signal_handler(
                signal.SIGUSR1, journal.write_counters, simulator.counters.carriers
            )
        ports = await simulator.start(host)
        if on_listening is not None:
            on_listening(ports)
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
        if journal is not None:
            loop.remove_signal_handler(signal.SIGUSR1)
            journal.write_counters(simulator.counters.carriers)
            journal.close()


# ---------------------------------------------------------------------------
# Stats exposure: the journal a fault campaign judges the client by
#
# A fault campaign kills the simulator too, so in-memory counters are not
# enough: the journal is an append-only file of JSON lines, one per accepted
# part and per receipt the client acknowledged, each written (unbuffered)
# before the answer that reveals it leaves, so it survives a SIGKILL.
# Several simulator processes may append to one file in turn (a restart on
# the same ports); `read_smsc_journal` adds them up.
#
#   {"event": "start", "incarnation": "<pid>-<ns>", "seed": 7}
#   {"event": "accepted", "carrier": "au", "id": 4711, "to": "+8180...",
#    "text": "...", "stat": "DELIVRD", "receipt": true, ...the rest of the
#    record, for the next process to send the receipt if this one cannot}
#   {"event": "receipt_acknowledged", "carrier": "au", "id": 4711}
#   {"event": "counters", "carriers": {"au": {...CarrierSimCounters...}}}

# (destination E.164, text of the part): a campaign sends distinct texts to
# distinct numbers, so this names one part of one message.
JournalPartKey: TypeAlias = tuple[str, str]


class SmscJournal:
    """Writes the journal; `_Carrier` calls it on acceptance and acknowledgement."""

    def __init__(self, fd: int, incarnation: str, backlog: JournalBacklog | None = None) -> None:
        self._fd = fd
        self.incarnation = incarnation
        # What earlier processes writing this journal left: the last id per
        # carrier and the receipts they owed (see `read_journal_backlog`).
        self.backlog = backlog or JournalBacklog()

    @classmethod
    def open(cls, path: Path, *, seed: int) -> SmscJournal:
        backlog = read_journal_backlog(path) if path.exists() else JournalBacklog()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        journal = cls(fd, f"{os.getpid()}-{time.time_ns()}", backlog)
        journal._line({"event": "start", "incarnation": journal.incarnation, "seed": seed})
        return journal

    def accepted(
        self,
        carrier: str,
        record: _MessageRecord,
        destination: str,
        text: str,
        *,
        receipt_owed: bool = False,
        final_in_s: float = 0.0,
    ) -> None:
        self._line(
            {
                "event": "accepted",
                "carrier": carrier,
                "id": record.message_id,
                "to": destination,
                "text": text,
                "stat": record.stat,
                "err": record.err,
                "receipt": receipt_owed,
                "final_at": time.time() + final_in_s,
                "system_id": record.system_id,
                "source": [record.source_ton, record.source_npi, record.source_addr],
                "destination": [record.dest_ton, record.dest_npi, record.destination_addr],
                "submitted_at": record.submitted_at.isoformat(),
                "excerpt": record.excerpt,
            }
        )

    def receipt_acknowledged(self, carrier: str, record: _MessageRecord) -> None:
        self._line({"event": "receipt_acknowledged", "carrier": carrier, "id": record.message_id})

    def write_counters(self, carriers: Mapping[str, CarrierSimCounters]) -> None:
        self._line(
            {
                "event": "counters",
                "incarnation": self.incarnation,
                # Not dataclasses.asdict: it rebuilds a Counter from (key, value)
                # pairs, counting the pairs.
                "carriers": {
                    name: {
                        f.name: dict(value) if isinstance(value, dict) else value
                        for f in dataclasses.fields(c)
                        for value in (getattr(c, f.name),)
                    }
                    for name, c in carriers.items()
                },
            }
        )

    def close(self) -> None:
        os.close(self._fd)

    def _line(self, record: dict[str, object]) -> None:
        # One write per line on an O_APPEND descriptor: whole lines, no buffer
        # to lose when the process is killed.
        os.write(self._fd, json.dumps(record, ensure_ascii=False).encode() + b"\n")


@dataclass
class JournalPart:
    accepted: int = 0  # accepted by any carrier, each time
    delivered: int = 0  # accepted with a DELIVRD outcome: reached the handset
    receipts_acknowledged: int = 0  # receipts (any stat) the client answered ESME_ROK


@dataclass
class SmscJournalSummary:
    parts: dict[JournalPartKey, JournalPart] = field(default_factory=dict)
    incarnations: int = 0
    # Per incarnation that wrote any, the last counters written (SIGUSR1, exit).
    counters: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def duplicates(self) -> list[JournalPartKey]:
        """Parts accepted more than once, by any carrier, in any incarnation."""
        return [key for key, part in self.parts.items() if part.accepted > 1]

    def counter_total(self, name: str) -> int:
        """An integer counter summed over carriers and incarnations."""
        return sum(
            int(carrier.get(name, 0))
            for carriers in self.counters.values()
            for carrier in carriers.values()
        )


@dataclass
class JournalBacklog:
    """What the processes that wrote a journal left to the next one."""

    last_id: dict[str, int] = field(default_factory=dict)  # per carrier
    # Per carrier: accepted parts whose receipt was owed and never
    # acknowledged, with the wall-clock time their outcome is final.
    owed: dict[str, list[tuple[_MessageRecord, float]]] = field(default_factory=dict)


def read_journal_backlog(path: Path) -> JournalBacklog:
    """The ids and owed receipts a journal's earlier writers left."""
    backlog = JournalBacklog()
    owed: dict[tuple[str, int], tuple[_MessageRecord, float]] = {}
    for record in _journal_lines(path):
        event = record["event"]
        if event == "accepted":
            carrier, number = record["carrier"], record["id"]
            backlog.last_id[carrier] = max(backlog.last_id.get(carrier, number), number)
            if record.get("receipt"):
                source_ton, source_npi, source_addr = record["source"]
                dest_ton, dest_npi, destination_addr = record["destination"]
                owed[(carrier, number)] = (
                    _MessageRecord(
                        message_id=number,
                        system_id=record["system_id"],
                        source_ton=source_ton,
                        source_npi=source_npi,
                        source_addr=source_addr,
                        dest_ton=dest_ton,
                        dest_npi=dest_npi,
                        destination_addr=destination_addr,
                        submitted_at=datetime.fromisoformat(record["submitted_at"]),
                        final_at_s=0.0,
                        stat=record["stat"],
                        err=record["err"],
                        excerpt=record["excerpt"],
                    ),
                    float(record["final_at"]),
                )
        elif event == "receipt_acknowledged":
            owed.pop((record["carrier"], record["id"]), None)
    for (carrier, _), entry in owed.items():
        backlog.owed.setdefault(carrier, []).append(entry)
    return backlog


def _journal_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                return  # cut short by a kill mid-write
            yield json.loads(line)


def read_smsc_journal(path: Path) -> SmscJournalSummary:
    """Add up a journal written by one or more simulator processes."""
    summary = SmscJournalSummary()
    # (carrier, SMSC message id) -> part: a process continues the ids of the
    # one before it, and acknowledges the receipts that one owed.
    by_id: dict[tuple[str, int], JournalPart] = {}
    for record in _journal_lines(path):
        event = record["event"]
        if event == "start":
            summary.incarnations += 1
        elif event == "accepted":
            part = summary.parts.setdefault((record["to"], record["text"]), JournalPart())
            part.accepted += 1
            if record["stat"] == "DELIVRD":
                part.delivered += 1
            by_id[(record["carrier"], record["id"])] = part
        elif event == "receipt_acknowledged":
            acknowledged = by_id.get((record["carrier"], record["id"]))
            if acknowledged is not None:
                acknowledged.receipts_acknowledged += 1
        elif event == "counters":
            summary.counters[record["incarnation"]] = record["carriers"]
    return summary


# ---------------------------------------------------------------------------
# Configuration file


def load_sim_config(path: str | Path) -> SmscSimConfig:
    """Read a simulator TOML file::

        seed = 7
        [defaults]                 # every carrier's values unless it sets its own
        receipt_delay_max_s = 5.0
        [carriers.docomo]
        port = 2775
        accounts = { demo = "demo" }

    Every `CarrierSimConfig` field may appear in `[defaults]` or a carrier
    table; unknown keys and wrong types raise SimConfigError naming them all.
    """
    with Path(path).open("rb") as file:
        raw = tomllib.load(file)
    return sim_config_from_mapping(raw, source=str(path))


def sim_config_from_mapping(raw: Mapping[str, Any], *, source: str = "config") -> SmscSimConfig:
    """`load_sim_config` on an already parsed document."""
    problems: list[str] = []
    for key in raw:
        if key not in ("seed", "hash_carriers", "ported_share", "defaults", "carriers"):
            problems.append(f"{key}: unknown key")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append("seed: expected an integer")
        seed = 0
    hash_carriers = _strings(
        raw.get("hash_carriers", DEFAULT_HASH_CARRIERS), "hash_carriers", problems
    )
    ported_share = raw.get("ported_share", DEFAULT_PORTED_SHARE)
    if not isinstance(ported_share, int | float) or isinstance(ported_share, bool):
        problems.append("ported_share: expected a number between 0 and 1")
        ported_share = DEFAULT_PORTED_SHARE
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a table")
        defaults = {}
    tables = raw.get("carriers", {})
    if not isinstance(tables, dict) or not tables:
        problems.append("carriers: expected at least one [carriers.NAME] table")
        tables = {}
    carriers: dict[str, CarrierSimConfig] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            problems.append(f"carriers.{name}: expected a table")
            continue
        carrier = _carrier_from_mapping({**defaults, **table}, f"carriers.{name}", problems)
        if carrier is not None:
            carriers[name] = carrier
    if not problems:
        try:
            return SmscSimConfig(
                carriers=carriers,
                seed=seed,
                hash_carriers=hash_carriers,
                ported_share=float(ported_share),
            )
        except ValueError as exc:
            problems.append(str(exc))
    raise SimConfigError(f"{source}: " + "; ".join(problems))


_CARRIER_FIELDS: Final = {f.name: f for f in dataclasses.fields(CarrierSimConfig)}
_CARRIER_DEFAULTS: Final = CarrierSimConfig()


def _carrier_from_mapping(
    raw: Mapping[str, Any], path: str, problems: list[str]
) -> CarrierSimConfig | None:
    values: dict[str, Any] = {}
    before = len(problems)
    for key, value in raw.items():
        where = f"{path}.{key}"
        if key not in _CARRIER_FIELDS:
            problems.append(f"{where}: unknown key")
            continue
        # The default's type says what the key takes (bool before int: a bool is an int).
        default = getattr(_CARRIER_DEFAULTS, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            expected = "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
            expected = "a number"
        elif isinstance(default, str):
            ok = isinstance(value, str)
            expected = "a string"
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
            value = tuple(value) if ok else value
            expected = "a list of strings"
        else:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            )
            expected = 'a table of system_id = "password"'
        if not ok:
            problems.append(f"{where}: expected {expected}")
        values[key] = value
    if len(problems) > before:
        return None
    try:
        return CarrierSimConfig(**values)
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _strings(value: object, where: str, problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    problems.append(f"{where}: expected a list of strings")
    return ()


# ---------------------------------------------------------------------------
# Helpers


# How a simulated handset's MO text is coded: data_coding 0x08 UTF-16BE;
# 0x00 GSM 7-bit one septet per octet (gsm7) or packed (gsm7_packed); 0x05
# ISO-2022-JP (jis); Shift_JIS under data_coding 0x00 (shift_jis, for an SMSC
# whose default alphabet is agreed to be Shift_JIS); 0x03 Latin-1.
MoCoding = Literal["ucs2", "gsm7", "gsm7_packed", "jis", "shift_jis", "latin1"]
MoConcat = Literal["udh8", "udh16", "sar"]
_MO_CODINGS: Final[Mapping[str, tuple[int, str]]] = {
    "ucs2": (DataCoding.UCS2, "utf-16-be"),
    "jis": (DataCoding.JIS, "iso2022_jp"),
    "shift_jis": (DataCoding.SMSC_DEFAULT, "cp932"),
    "latin1": (DataCoding.LATIN_1, "latin-1"),
}


def mo_deliver_pdus(
    source: str,
    destination: str,
    text: str,
    *,
    coding: MoCoding = "ucs2",
    concat: MoConcat = "udh8",
    reference: int = 0,
    part_octets: int | None = None,
) -> list[DeliverSm]:
    """The deliver_sms of one MO message, in part order. Text longer than one
    SMS is cut into parts of `part_octets` octets (septets for GSM 7-bit;
    default: what fits beside a concatenation header) wherever that falls:
    inside a UTF-16 surrogate pair, a Shift_JIS double byte or an ISO-2022-JP
    kanji run, as a handset's octets would be; the receiver joins before
    decoding. Written apart from the daemon's reading of MO on purpose."""
    handset = smpp_international(normalize_msisdn(source, allow_m2m=True))
    if coding in ("gsm7", "gsm7_packed"):
        data_coding = int(DataCoding.SMSC_DEFAULT)
        octets = encode_gsm7(text)  # septets, one per octet
        single, size = 160, part_octets or 153
    else:
        data_coding, codec = _MO_CODINGS[coding]
        octets = text.encode(codec)
        single, size = 140, part_octets or 134
    chunks = (
        [octets]
        if len(octets) <= single
        else [octets[i : i + size] for i in range(0, len(octets), size)]
    )
    pdus: list[DeliverSm] = []
    for number, chunk in enumerate(chunks, start=1):
        esm_class = 0
        header = b""
        sar: dict[str, int] = {}
        if len(chunks) > 1:
            if concat == "sar":
                sar = {
                    "sar_msg_ref_num": reference,
                    "sar_total_segments": len(chunks),
                    "sar_segment_seqnum": number,
                }
            else:
                header = udh_concat(reference, len(chunks), number, ref16=concat == "udh16")
                esm_class = ESM_CLASS_UDHI
        body = _pack_septets(chunk, len(header)) if coding == "gsm7_packed" else chunk
        pdus.append(
            DeliverSm(
                sequence_number=0,
                source_addr_ton=Ton.INTERNATIONAL,
                source_addr_npi=Npi.ISDN,
                source_addr=handset,
                dest_addr_ton=Ton.UNKNOWN,
                dest_addr_npi=Npi.ISDN,
                destination_addr=destination,
                esm_class=esm_class,
                data_coding=data_coding,
                short_message=header + body,
                **sar,  # type: ignore[arg-type]
            )
        )
    return pdus


def _pack_septets(septets: bytes, header_octets: int) -> bytes:
    """GSM 03.38 packing, as a bit string: after a user data header, fill
    bits bring the first septet to a septet boundary of the user data."""
    fill = (7 - header_octets * 8 % 7) % 7 if header_octets else 0
    # Septets least significant bit first, as they go on the air.
    bits = "0" * fill + "".join(format(s, "07b")[::-1] for s in septets)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8][::-1], 2) for i in range(0, len(bits), 8))


def _refusal(sequence_number: int, status: int) -> SubmitSmResp:
    return SubmitSmResp(sequence_number=sequence_number, command_status=status)


def _part_of(pdu: SubmitSm) -> tuple[tuple[int, int] | None, str]:
    """(concat reference and part number, or None; the part's text)."""
    payload = pdu.message_payload if pdu.message_payload is not None else pdu.short_message
    concat: tuple[int, int] | None = None
    if pdu.esm_class & ESM_CLASS_UDHI:
        info, payload = split_udh(payload)
        if info is not None:
            concat = (info.ref, info.seq)
    elif pdu.sar_msg_ref_num is not None and pdu.sar_segment_seqnum is not None:
        concat = (pdu.sar_msg_ref_num, pdu.sar_segment_seqnum)
    return concat, _decode_text(pdu.data_coding, payload)


def _decode_text(data_coding: int, payload: bytes) -> str:
    # Only a counting key and a receipt excerpt: undecodable bytes are kept as
    # hex rather than refused (refusing bad text is the client's job).
    try:
        if data_coding == DataCoding.UCS2:
            return decode_ucs2(payload)
        if data_coding == DataCoding.SMSC_DEFAULT:
            return decode_gsm7(payload)
        if data_coding in (DataCoding.IA5, DataCoding.LATIN_1):
            return payload.decode("latin-1")
    except ValueError:
        pass
    return payload.hex()


def _receipt_wanted(registered_delivery: int, stat: ReceiptStat) -> bool:
    wanted = registered_delivery & 0x03
    return wanted == REGISTERED_DELIVERY_RECEIPT_ALWAYS or (
        wanted == REGISTERED_DELIVERY_RECEIPT_ON_FAILURE and stat != "DELIVRD"
    )


def _format_message_id(number: int, id_format: MessageIdFormat) -> str:
    return f"{number:x}" if id_format == "hex" else str(number)


def _parse_message_id(raw: str, id_format: MessageIdFormat) -> int | None:
    try:
        return int(raw.strip(), 16 if id_format == "hex" else 10)
    except ValueError:
        return None


def _receipt_text(record: _MessageRecord, receipt_id: str, done_at: datetime) -> bytes:
    delivered = 1 if record.stat == "DELIVRD" else 0
    # Japanese text becomes "?": many SMSCs' receipts are ASCII-only.
    excerpt = record.excerpt.encode("ascii", errors="replace").decode("ascii")
    text = (
        f"id:{receipt_id} sub:001 dlvrd:{delivered:03d}"
        f" submit date:{_receipt_date(record.submitted_at)}"
        f" done date:{_receipt_date(done_at)}"
        f" stat:{record.stat} err:{record.err:03d} text:{excerpt}"
    )
    return text.encode("ascii")


def _receipt_date(at: datetime) -> str:
    # Japanese carriers write receipt dates in local time (JST). Formatted
    # by hand: strftime was the simulator's largest single cost.
    jst = at.astimezone(JST)
    return f"{jst.year % 100:02d}{jst.month:02d}{jst.day:02d}{jst.hour:02d}{jst.minute:02d}"


def _smpp_absolute_time(at: datetime) -> str:
    """SMPP 3.4 §7.1.1 absolute time in JST: YYMMDDhhmmss, tenths, quarter hours, +."""
    local = at.astimezone(JST)
    return f"{local:%y%m%d%H%M%S}{local.microsecond // 100_000}36+"
