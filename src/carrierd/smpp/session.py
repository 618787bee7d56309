"""One SMPP bind: a thin asyncio shell around the sans-I/O codec and the send window.

An ``SmppSession`` is one bind of one carrier: a single transceiver connection, or a
transmitter + receiver pair (``CarrierConfig.bind_mode``). It only moves bytes; the
codec (``pdu.py``) frames and parses them, the ``Window`` bounds what is unanswered.

    session = SmppSession(carrier_config, "docomo-1", on_deliver)
    await session.start()               # connects and binds; reconnects until stop()
    result = await session.submit(SubmitSm(sequence_number=0, ...))
    await session.stop(drain_timeout_s=5.0)

Rules
-----
Submit outcomes (``SubmitResult.outcome``), every submit gets exactly one:

==========  ==============================================================  ===========
outcome     when                                                            written?
==========  ==============================================================  ===========
accepted    submit_sm_resp ESME_ROK (message_id as the SMSC wrote it)       yes
refused     submit_sm_resp / generic_nack with an error status, vendor      yes
            codes 0x400-0x4FF included: an answer, never a reason to rebind
unknown     written, then no usable answer: response timeout, connection    yes
            lost, malformed or mismatched response. The SMSC may have it.
unsent      never written: not bound, stopping, or the bind was lost while  no
            it waited in the queue
==========  ==============================================================  ===========

- ESME_RTHROTTLED and ESME_RMSGQFUL slow the bind down: its send rate backs off
  multiplicatively and recovers additively (``send_rate.py`` decides, never above
  ``submit_rate_per_s``, never below one submit per ``throttle_pause_s``), so the
  bind settles at the pace the SMSC accepts. The PDU goes back into the queue in
  its original place, so it is written again before any submit that was queued
  after it (PDUs already on the wire stay there). There is no retry limit: the
  SMSC sets the pace, ``stop()`` ends the wait.
- An optional ``SubmitObserver`` hears every answer to a written submit_sm
  (its status and the time since the write, on the session's clock; a late
  answer too) and every throttling answer; outcomes without an answer
  (timeout, lost) are not told.
- The queue is ordered by arrival; parts handed to ``submit_all`` in one call are
  written in order on this bind.
- Sequence numbers are per connection, assigned when the PDU is written (a retried
  PDU gets a new one), 1..0x7FFFFFFF then wrapping to 1.
- Window size is ``CarrierConfig.window``; an unanswered submit expires after
  ``response_timeout_s`` and is reported unknown, never dropped silently.
- A submit reported unknown because its response timed out stays listening on its
  connection for ``LATE_ANSWER_KEEP_FACTOR`` response timeouts (at least
  ``LATE_ANSWER_MIN_KEEP_S``): its ``SubmitResult.late_answer`` future gets the
  answer that comes after all (accepted, refused, or unsent for a throttling
  answer: the SMSC took nothing), or is cancelled when none will be read (the
  connection closed, the time ran out, or too many were waiting). ``cause`` says
  why an outcome is unknown.
- Writes are spaced by a token bucket of one token at the bind's send rate:
  ``submit_rate_per_s`` (0: no limit) until the SMSC throttles, then the adapted rate
  (``send_rate_per_s``). A window slot waited for while the rate was cut is given
  back, so the next write waits for the new rate.
- enquire_link goes out when nothing was received for ``enquire_link_interval_s``;
  no answer within ``response_timeout_s`` means a dead peer: drop and reconnect.
- From the peer: enquire_link is answered; unbind gets unbind_resp then close;
  deliver_sm and data_sm always get their response (ESME_ROK, or ESME_RX_T_APPN
  when our handler raised, so the SMSC delivers it again later); outbind and
  alert_notification are ignored; any other request, an unknown command id or a
  malformed request gets generic_nack. A malformed, unknown or mismatched response
  fails its window entry (unknown). A broken stream (``StreamBroken``) drops the
  connection, which then reconnects.
- Reconnects back off exponentially with jitter (tenacity), capped at
  ``reconnect_max_backoff_s``; a refused bind is retried the same way. After a
  working connection is lost the first attempt is immediate, unless that bind
  lasted less than ``reconnect_max_backoff_s`` (then the backoff goes on growing).
- In pair mode submits use the transmitter; each connection reconnects on its own.
  ``health`` follows the connection that carries submits.

Health: "stopped" (not started, stopping or stopped), "connecting" (the submit
connection is not bound), "throttled" (bound, sending below ``submit_rate_per_s``,
or under any limit when none is configured, because the SMSC throttled; it still
takes submits), "bound".
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal, Protocol, TypeAlias, cast

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from carrierd.config import CarrierConfig
from carrierd.smpp.pdu import (
    DEFAULT_MAX_PDU_LEN,
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Framer,
    GenericNack,
    MalformedPdu,
    Outbind,
    Pdu,
    StreamBroken,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnknownPdu,
    describe_status,
    encode,
    is_response,
)
from carrierd.smpp.send_rate import SendRate, SendRatePolicy, SubmitAnswer, send_rate_after
from carrierd.smpp.window import LateAnswers, ResponseTimeout, Window, WindowTimeout
from carrierd.smpp.writer import CoalescingWriter

log = structlog.get_logger("carrierd.smpp.session")

SubmitOutcome: TypeAlias = Literal["accepted", "refused", "unknown", "unsent"]
# Why a written submit's outcome is unknown.
UnknownCause: TypeAlias = Literal["response_timeout", "bind_lost", "unusable_response"]
SessionHealth: TypeAlias = Literal["bound", "throttled", "connecting", "stopped"]
LinkRole: TypeAlias = Literal["transceiver", "transmitter", "receiver"]
# A handler may return an awaitable: the deliver_sm is then answered only once
# it completes (the receipt is durable), so a crash before that makes the
# SMSC deliver it again instead of the receipt being lost.
DeliverHandler: TypeAlias = Callable[[DeliverSm | DataSm, str], Awaitable[None] | None]
DELIVER_ACK_TIMEOUT_S: Final = 30.0
SubmitResponse: TypeAlias = SubmitSmResp | GenericNack

MAX_SEQUENCE_NUMBER: Final = 0x7FFFFFFF
RETRY_LATER_STATUSES: Final = frozenset(
    {CommandStatus.ESME_RTHROTTLED, CommandStatus.ESME_RMSGQFUL}
)
_TOKEN_SLACK: Final = 1e-9
_SEQUENCE_OFFSET: Final = 12  # sequence_number sits at octets 12..15 of the header
# How long a timed-out submit waits for its late answer: SMSCs that answer late
# under load do so within a few timeouts; a bound keeps memory bounded too.
LATE_ANSWER_KEEP_FACTOR: Final = 6.0
LATE_ANSWER_MIN_KEEP_S: Final = 60.0
LATE_ANSWERS_PER_WINDOW_SLOT: Final = 8
# Refused deliver_sm (their receipt could not be made durable) are logged
# as a count at most this often per connection.
REFUSALS_LOG_EVERY_S: Final = 10.0


def late_answer_keep_s(response_timeout_s: float) -> float:
    """How long after its response timeout a submit's late answer is still read."""
    return max(LATE_ANSWER_MIN_KEEP_S, LATE_ANSWER_KEEP_FACTOR * response_timeout_s)


class SubmitObserver(Protocol):
    """Told of every submit_sm answer, for metrics; called on the read path at
    thousands a second, so an implementation must cost no more than a dict
    lookup and a counter increment."""

    def submit_answered(self, command_status: int, elapsed_s: float) -> None:
        """A submit_sm_resp or generic_nack answered a submit_sm written
        ``elapsed_s`` earlier (monotonic); throttling answers included."""

    def throttled(self) -> None:
        """A throttling answer (ESME_RTHROTTLED, ESME_RMSGQFUL) came; the submit
        waits in the queue to go again at the bind's slower rate."""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What became of one submit_sm (see the table in the module docstring)."""

    outcome: SubmitOutcome
    bind_id: str | None  # None when no bind was available at all (pool)
    message_id: str | None = None  # raw, as in submit_sm_resp; accepted only
    command_status: int | None = None  # refused only
    detail: str = ""
    cause: UnknownCause | None = None  # unknown only
    # Response timeouts only: resolved with the answer if it comes late after all.
    late_answer: asyncio.Future[SubmitResult] | None = field(default=None, compare=False)


@dataclass(slots=True)
class SessionStats:
    """Counters since start, for metrics and logs."""

    written: int = 0
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    unsent: int = 0
    late_answers: int = 0  # answers to submits already reported unknown
    throttled: int = 0
    binds: int = 0
    reconnects: int = 0  # binds after a connection's first: it had been lost
    bind_failures: int = 0
    dead_peers: int = 0


class ConnectionLost(Exception):
    """The connection closed; requests in flight on it have an unknown outcome."""


class BindRefused(Exception):
    """The SMSC answered our bind with an error status (or the wrong response)."""

    def __init__(self, command_status: int) -> None:
        super().__init__(f"bind refused: {describe_status(command_status)}")
        self.command_status = command_status


class UnusableResponse(Exception):
    """A response arrived for a request but cannot be read as its answer."""


class SubmitRateLimiter:
    """Token bucket on a monotonic clock: time is passed in, the caller sleeps."""

    def __init__(self, rate_per_s: float, burst: float = 1.0) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._updated_at_s: float | None = None

    def set_rate(self, rate_per_s: float, now_s: float, *, empty: bool) -> None:
        """Refill at the old rate until ``now_s``, then at ``rate_per_s``; ``empty``:
        drop the tokens, so that the next write waits a whole interval at the new rate."""
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if self._updated_at_s is not None:
            elapsed_s = max(0.0, now_s - self._updated_at_s)
            self._tokens = min(self._burst, self._tokens + elapsed_s * self._rate_per_s)
            self._updated_at_s = max(now_s, self._updated_at_s)
        else:
            self._updated_at_s = now_s
        if empty:
            self._tokens = 0.0
        self._rate_per_s = rate_per_s

    def reserve(self, now_s: float) -> float:
        """Take one token and return 0.0, or return how long to wait before asking again."""
        if self._updated_at_s is not None:
            elapsed_s = max(0.0, now_s - self._updated_at_s)
            self._tokens = min(self._burst, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_at_s = now_s if self._updated_at_s is None else max(now_s, self._updated_at_s)
        # Float refill can land a hair below a whole token at the instant the previous
        # wait said it would be whole; without the slack the sender would spin.
        if self._tokens >= 1.0 - _TOKEN_SLACK:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate_per_s


@dataclass(slots=True)
class _QueuedSubmit:
    ordinal: int  # arrival order within this session; the queue's sort key
    frame: bytes  # encoded once; the sequence number is patched in at write time
    future: asyncio.Future[SubmitResult]
    sequence_number: int = 0  # of its latest write
    written_at_s: float = 0.0  # session clock at its latest write

    def __lt__(self, other: _QueuedSubmit) -> bool:
        return self.ordinal < other.ordinal


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: framing, request/response matching, keepalive."""

    def __init__(
        self,
        *,
        role: LinkRole,
        config: CarrierConfig,
        bind_id: str,
        on_deliver: DeliverHandler,
        on_lost: Callable[[_Connection, str], None],
        stats: SessionStats,
        clock: Callable[[], float],
        max_pdu_len: int,
    ) -> None:
        self.role = role
        self._config = config
        self._bind_id = bind_id
        self._on_deliver = on_deliver
        self._deliver_acks: set[asyncio.Task[None]] = set()
        # deliver_sm handed over and not yet answered, and the most there
        # ever were: once the SMSC has filled its deliver window, that peak
        # is the window, and being at it means receipts queue at the SMSC.
        self.delivers_unanswered = 0
        self.delivers_unanswered_peak = 0
        # Small PDUs (deliver_sm_resp, keepalive) sent in one loop iteration
        # leave in one write: a receipt flush answers hundreds at once.
        self._writer = CoalescingWriter(self._open_transport)
        self._on_lost = on_lost
        self._stats = stats
        self._clock = clock
        self._framer = Framer(max_pdu_len)
        self._transport: asyncio.Transport | None = None
        self._last_sequence = 0
        # Bind, enquire_link and unbind: answered by sequence number outside the window.
        self._requests: dict[int, asyncio.Future[Pdu]] = {}
        self.window: Window[SubmitResponse] | None = (
            Window(config.window, clock=clock) if role != "receiver" else None
        )
        # deliver_sm answered with a temporary error, and how many were logged.
        self.delivers_refused = 0
        self._refusals_logged = 0
        self._refusals_logged_at_s = -math.inf
        # Late-answer futures of submits just expired, until their callback
        # (Session._submit_answered) claims them.
        self.expired_unclaimed: dict[int, asyncio.Future[SubmitResponse]] = {}
        self.late_answers: LateAnswers[SubmitResponse] = LateAnswers(
            keep_s=late_answer_keep_s(config.response_timeout_s),
            max_entries=max(1, config.window) * LATE_ANSWERS_PER_WINDOW_SLOT,
        )
        self.last_received_at_s = clock()
        # An Event, not a Future: a cancelled waiter would cancel a Future for everyone.
        self.closed = asyncio.Event()
        self.bound = False
        self._timers: list[asyncio.Task[None]] = []
        self._close_reason = "connection closed by peer"

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_received_at_s = self._clock()
        self._framer.feed(data)
        while self._transport is not None:
            try:
                event = self._framer.next_event()
            except StreamBroken as exc:
                self.abort(f"stream broken: {exc}")
                return
            if event is None:
                return
            self._dispatch(event)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason if exc is None else f"{self._close_reason}: {exc!r}"
        self._transport = None
        self.bound = False
        for timer in self._timers:
            timer.cancel()
        lost = ConnectionLost(reason)
        requests, self._requests = self._requests, {}
        for future in requests.values():
            if not future.done():
                future.set_exception(lost)
        if self.window is not None:
            self.window.fail_all(lost)
        self.late_answers.forget_all()
        self.closed.set()
        self._on_lost(self, reason)

    # -- writing ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def next_sequence(self) -> int:
        self._last_sequence = self._last_sequence % MAX_SEQUENCE_NUMBER + 1
        return self._last_sequence

    def write(self, frames: bytes | bytearray) -> None:
        """Write now, after anything `send` still holds (order is kept)."""
        self._writer.now(frames)

    def send(self, pdu: Pdu) -> None:
        """Write at the end of this loop iteration, with whatever else is sent in it."""
        self._writer.later(encode(pdu))

    def _open_transport(self) -> asyncio.Transport | None:
        transport = self._transport
        return transport if transport is not None and not transport.is_closing() else None

    async def request(self, pdu: Pdu, timeout_s: float) -> Pdu:
        """Send a control request (bind, enquire_link, unbind) and await its response."""
        if not self.is_open:
            raise ConnectionLost("connection is not open")
        # Encoded before its answer is awaited: a PDU that cannot be encoded
        # (a bind field over its SMPP limit) raises here and leaves no future
        # behind for the connection's loss to fail unheard.
        self.send(pdu)
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._requests[pdu.sequence_number] = future
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._requests.pop(pdu.sequence_number, None)

    def close(self, reason: str) -> None:
        """Close after what is buffered has been written (used after unbind)."""
        self._close_reason = reason
        self._writer.flush()
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str) -> None:
        """Drop at once: the peer is dead or the stream cannot be trusted."""
        self._close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    # -- after bind -----------------------------------------------------------------------

    def start_timers(self) -> None:
        self.bound = True
        self._timers.append(asyncio.create_task(self._guarded(self._keep_alive())))
        if self.window is not None:
            self._timers.append(asyncio.create_task(self._guarded(self._expire_unanswered())))

    async def _guarded(self, timer: Coroutine[None, None, None]) -> None:
        # A connection whose keepalive or expiry died would hang silently: drop it,
        # the session reconnects with fresh timers.
        try:
            await timer
        except Exception:
            log.exception("smpp_connection_timer_failed", bind=self._bind_id, role=self.role)
            self.abort("connection timer failed")

    async def _keep_alive(self) -> None:
        interval_s = self._config.enquire_link_interval_s
        while self.is_open:
            idle_s = self._clock() - self.last_received_at_s
            if idle_s < interval_s:
                await asyncio.sleep(interval_s - idle_s)
                continue
            try:
                await self.request(
                    EnquireLink(sequence_number=self.next_sequence()),
                    self._config.response_timeout_s,
                )
            except TimeoutError:
                self._stats.dead_peers += 1
                log.warning(
                    "smpp_dead_peer",
                    bind=self._bind_id,
                    role=self.role,
                    waited_s=self._config.response_timeout_s,
                )
                self.abort("enquire_link unanswered")
                return
            except UnusableResponse:
                continue  # an unreadable answer still shows the peer is alive
            except ConnectionLost:
                return

    async def _expire_unanswered(self) -> None:
        assert self.window is not None
        timeout_s = self._config.response_timeout_s
        while self.is_open:
            due_s = self.window.next_expiry_at(timeout_s)
            now_s = self._clock()
            if due_s is None:
                # Anything offered from now on expires no earlier than now + timeout.
                await asyncio.sleep(timeout_s)
            elif due_s > now_s:
                await asyncio.sleep(due_s - now_s)
            else:
                self.expire_unanswered(now_s)

    def expire_unanswered(self, now_s: float) -> list[int]:
        """Time out the submits unanswered for the response timeout; their
        late answers are awaited from this moment."""
        assert self.window is not None
        expired = self.window.expire(now_s, self._config.response_timeout_s)
        for sequence_number in expired:
            # Remembered now, not when the submit's callback runs: an answer
            # read in between would find nothing waiting for it.
            self.expired_unclaimed[sequence_number] = self.late_answers.remember(
                sequence_number, now_s
            )
        if expired:
            log.warning(
                "smpp_response_timeout",
                bind=self._bind_id,
                count=len(expired),
                first_sequence=expired[0],
            )
        return expired

    # -- reading --------------------------------------------------------------------------

    def _dispatch(self, event: Pdu | MalformedPdu) -> None:
        if isinstance(event, MalformedPdu | UnknownPdu):
            self._dispatch_unreadable(event)
        elif is_response(event.command_id):
            self._dispatch_response(event)
        elif isinstance(event, DeliverSm | DataSm):
            self._deliver(event)
        elif isinstance(event, EnquireLink):
            self.send(EnquireLinkResp(sequence_number=event.sequence_number))
        elif isinstance(event, Unbind):
            log.info("smpp_peer_unbind", bind=self._bind_id, role=self.role)
            self.send(UnbindResp(sequence_number=event.sequence_number))
            self.close("unbound by peer")
        elif isinstance(event, Outbind | AlertNotification):
            # Neither has a response; outbind only matters to an ESME that listens.
            log.info("smpp_ignored_request", bind=self._bind_id, command=type(event).__name__)
        else:
            # A request an ESME does not serve (submit_sm, bind, query_sm...).
            self.send(
                GenericNack(
                    sequence_number=event.sequence_number,
                    command_status=CommandStatus.ESME_RINVCMDID,
                )
            )

    def _dispatch_unreadable(self, event: MalformedPdu | UnknownPdu) -> None:
        if is_response(event.command_id):
            self._fail_request(
                event.sequence_number,
                UnusableResponse(
                    f"unreadable response 0x{event.command_id:08x}"
                    + (f": {event.reason}" if isinstance(event, MalformedPdu) else "")
                ),
            )
            return
        if isinstance(event, MalformedPdu):
            log.warning(
                "smpp_malformed_pdu",
                bind=self._bind_id,
                command_id=event.command_id,
                reason=event.reason,
            )
            status = event.nack_status
        else:
            log.warning("smpp_unknown_command", bind=self._bind_id, command_id=event.command_id)
            status = CommandStatus.ESME_RINVCMDID
        self.send(GenericNack(sequence_number=event.sequence_number, command_status=status))

    def _dispatch_response(self, response: Pdu) -> None:
        sequence_number = response.sequence_number
        future = self._requests.pop(sequence_number, None)
        if future is not None:
            if not future.done():
                future.set_result(response)
            return
        window = self.window
        if window is not None and sequence_number in window:
            if isinstance(response, SubmitSmResp | GenericNack):
                window.complete(sequence_number, response)
            else:
                window.fail(
                    sequence_number,
                    UnusableResponse(f"{type(response).__name__} answered a submit_sm"),
                )
            return
        if isinstance(response, SubmitSmResp | GenericNack):
            late = self.late_answers.take(sequence_number, self._clock())
            if late is not None:
                # Its submit was reported unknown at the timeout; whoever
                # holds the future records what the SMSC did after all.
                late.set_result(response)
                return
        log.warning(
            "smpp_unmatched_response",
            bind=self._bind_id,
            command=type(response).__name__,
            sequence_number=sequence_number,
            command_status=describe_status(response.command_status),
        )

    def _fail_request(self, sequence_number: int, exc: Exception) -> None:
        future = self._requests.pop(sequence_number, None)
        if future is not None:
            if not future.done():
                future.set_exception(exc)
        elif self.window is None or not self.window.fail(sequence_number, exc):
            late = self.late_answers.take(sequence_number, self._clock())
            if late is not None:
                late.cancel()  # an unreadable late answer tells nothing
            log.warning("smpp_unmatched_response", bind=self._bind_id, detail=str(exc))

    def _deliver(self, pdu: DeliverSm | DataSm) -> None:
        status: int = CommandStatus.ESME_ROK
        try:
            pending = self._on_deliver(pdu, self._bind_id)
        except Exception:
            # Still answered: an unanswered deliver_sm would stall the SMSC's window.
            # A temporary error makes it deliver the PDU again later.
            log.exception("smpp_deliver_handler_failed", bind=self._bind_id)
            status = CommandStatus.ESME_RX_T_APPN
            pending = None
        if pending is not None:
            self.delivers_unanswered += 1
            self.delivers_unanswered_peak = max(
                self.delivers_unanswered_peak, self.delivers_unanswered
            )
        if isinstance(pending, asyncio.Future):
            # A callback, not a task per receipt: at thousands a second the
            # task and its wait_for were a visible share of the daemon's CPU.
            _DeliverAck(self, pdu, pending)
            return
        if pending is not None:
            task = asyncio.ensure_future(self._answer_when_durable(pdu, pending))
            self._deliver_acks.add(task)
            task.add_done_callback(self._deliver_acks.discard)
            return
        self._answer_deliver(pdu, status)

    async def _answer_when_durable(self, pdu: DeliverSm | DataSm, pending: Awaitable[None]) -> None:
        status: int = CommandStatus.ESME_ROK
        try:
            await asyncio.wait_for(pending, DELIVER_ACK_TIMEOUT_S)
        except Exception as exc:
            self._refused_deliver(exc)
            status = CommandStatus.ESME_RX_T_APPN
        self.delivers_unanswered -= 1
        self._answer_deliver(pdu, status)

    def deliver_recorded(self, pdu: DeliverSm | DataSm, failure: BaseException | None) -> None:
        self.delivers_unanswered -= 1
        status: int = CommandStatus.ESME_ROK
        if failure is not None:
            self._refused_deliver(failure)
            status = CommandStatus.ESME_RX_T_APPN
        self._answer_deliver(pdu, status)

    def _refused_deliver(self, failure: BaseException) -> None:
        """Log a deliver_sm answered with a temporary error (the SMSC sends it
        again): the first at once, then a count every REFUSALS_LOG_EVERY_S,
        not a line per receipt through a database outage."""
        self.delivers_refused += 1
        now_s = self._clock()
        if now_s - self._refusals_logged_at_s < REFUSALS_LOG_EVERY_S:
            return
        log.warning(
            "smpp_delivers_refused",
            bind=self._bind_id,
            refused=self.delivers_refused - self._refusals_logged,
            error=repr(failure),
        )
        self._refusals_logged_at_s = now_s
        self._refusals_logged = self.delivers_refused

    def _answer_deliver(self, pdu: DeliverSm | DataSm, status: int) -> None:
        if isinstance(pdu, DeliverSm):
            self.send(DeliverSmResp(sequence_number=pdu.sequence_number, command_status=status))
        else:
            self.send(DataSmResp(sequence_number=pdu.sequence_number, command_status=status))


class _DeliverAck:
    """Answers one deliver_sm when its handler's future completes, or with a
    temporary error after DELIVER_ACK_TIMEOUT_S (the SMSC delivers it again)."""

    __slots__ = ("_connection", "_pdu", "_timer")

    def __init__(
        self, connection: _Connection, pdu: DeliverSm | DataSm, pending: asyncio.Future[None]
    ) -> None:
        self._connection = connection
        self._pdu = pdu
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            DELIVER_ACK_TIMEOUT_S, self._timed_out, pending
        )
        pending.add_done_callback(self._done)

    def _done(self, pending: asyncio.Future[None]) -> None:
        if self._timer is None:
            return  # already answered by the timeout
        self._timer.cancel()
        self._timer = None
        failure = pending.exception() if not pending.cancelled() else asyncio.CancelledError()
        self._connection.deliver_recorded(self._pdu, failure)

    def _timed_out(self, pending: asyncio.Future[None]) -> None:
        self._timer = None
        pending.remove_done_callback(self._done)
        self._connection.deliver_recorded(
            self._pdu, TimeoutError(f"not recorded within {DELIVER_ACK_TIMEOUT_S:g} s")
        )


_BIND_RESPONSES: Final[dict[LinkRole, type[Pdu]]] = {
    "transceiver": BindTransceiverResp,
    "transmitter": BindTransmitterResp,
    "receiver": BindReceiverResp,
}


def bind_request(
    role: LinkRole, sequence_number: int, config: CarrierConfig
) -> BindTransceiver | BindTransmitter | BindReceiver:
    """The bind PDU that opens a connection of ``role``."""
    request_class: type[BindTransceiver | BindTransmitter | BindReceiver]
    if role == "transceiver":
        request_class = BindTransceiver
    elif role == "transmitter":
        request_class = BindTransmitter
    else:
        request_class = BindReceiver
    return request_class(
        sequence_number=sequence_number,
        system_id=config.system_id,
        password=config.password,
        system_type=config.system_type,
        addr_ton=config.addr_ton,
        addr_npi=config.addr_npi,
    )


@dataclass(slots=True)
class _Link:
    """One connection role of the bind and its reconnect loop."""

    role: LinkRole
    connection: _Connection | None = None  # set only while bound
    task: asyncio.Task[None] | None = None
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event)


class SmppSession:
    """One bind to one carrier's SMSC (see the module docstring for the rules)."""

    def __init__(
        self,
        config: CarrierConfig,
        bind_id: str,
        on_deliver: DeliverHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        on_health_change: Callable[[SmppSession], None] | None = None,
        initial_backoff_s: float = 0.5,
        max_pdu_len: int = DEFAULT_MAX_PDU_LEN,
        clock: Callable[[], float] = time.monotonic,
        observer: SubmitObserver | None = None,
    ) -> None:
        self.config = config
        self._observer = observer
        self.bind_id = bind_id
        self._on_deliver = on_deliver
        self._ssl_context = ssl_context
        self._on_health_change = on_health_change
        self._initial_backoff_s = min(initial_backoff_s, config.reconnect_max_backoff_s)
        self._max_pdu_len = max_pdu_len
        self._clock = clock
        if config.bind_mode == "pair":
            self._links: tuple[_Link, ...] = (_Link("transmitter"), _Link("receiver"))
        else:
            self._links = (_Link("transceiver"),)
        self._submit_link = self._links[0]
        self._state: Literal["idle", "running", "stopping", "stopped"] = "idle"
        self._queue: list[_QueuedSubmit] = []
        self._next_ordinal = 0
        self._wake_sender = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._rate_policy = SendRatePolicy.for_carrier(
            submit_rate_per_s=config.submit_rate_per_s, throttle_pause_s=config.throttle_pause_s
        )
        self._send_rate = SendRate.start(self._rate_policy)
        self._rate_limiter = (
            SubmitRateLimiter(self._send_rate.rate_per_s)
            if self._send_rate.rate_per_s is not None
            else None
        )
        # Bumped at each cut of the send rate: a write that waited for a window
        # slot across a cut gives the slot back and waits for the new rate.
        self._rate_cuts = 0
        self.stats = SessionStats()

    # -- state ----------------------------------------------------------------------------

    @property
    def health(self) -> SessionHealth:
        if self._state != "running":
            return "stopped"
        if self._submit_link.connection is None:
            return "connecting"
        if self._send_rate.below_ceiling(self._rate_policy):
            return "throttled"
        return "bound"

    @property
    def link_states(self) -> dict[str, bool]:
        """Bound or not, per connection role (pair mode has two)."""
        return {link.role: link.connection is not None for link in self._links}

    @property
    def send_rate_per_s(self) -> float | None:
        """The rate writes are spaced at now; None: no limit."""
        return self._send_rate.rate_per_s

    @property
    def in_flight(self) -> int:
        """Submits written and awaiting their response."""
        connection = self._submit_link.connection
        return connection.window.in_flight if connection and connection.window else 0

    @property
    def queued(self) -> int:
        """Submits accepted by ``submit`` but not yet written."""
        return len(self._queue)

    @property
    def load(self) -> int:
        return self.in_flight + len(self._queue)

    @property
    def deliver_backlog(self) -> tuple[int, int]:
        """(deliver_sm awaiting our answer, the most there ever were) over
        this bind's connections; see `SmppGateway.receipts_backlogged`."""
        now = peak = 0
        for link in self._links:
            if link.connection is not None:
                now += link.connection.delivers_unanswered
                peak += link.connection.delivers_unanswered_peak
        return now, peak

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting; return once every connection's first bind attempt has ended.

        Does not raise when the SMSC is unreachable: the session keeps trying in the
        background until ``stop()`` (``health`` says "connecting" meanwhile).
        """
        if self._state != "idle":
            raise RuntimeError(f"session {self.bind_id} already started")
        self._state = "running"
        if self.config.tls and self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        for link in self._links:
            link.task = asyncio.create_task(
                self._supervise(link), name=f"smpp-{self.bind_id}-{link.role}"
            )
        self._sender = asyncio.create_task(self._send_loop(), name=f"smpp-{self.bind_id}-sender")
        await asyncio.gather(*(link.first_attempt_done.wait() for link in self._links))

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new submits, fail queued ones as unsent, wait up to ``drain_timeout_s``
        for responses in flight (the rest become unknown), unbind and close."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        self._notify_health()
        self._fail_queued("session stopping")
        if self.in_flight:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    await self._drained.wait()
        tasks = [link.task for link in self._links if link.task is not None]
        if self._sender is not None:
            tasks.append(self._sender)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(self._unbind(link.connection) for link in self._links if link.connection)
        )
        self._state = "stopped"
        self._notify_health()
        log.info("smpp_session_stopped", bind=self.bind_id, **_stats_fields(self.stats))

    async def _unbind(self, connection: _Connection) -> None:
        with contextlib.suppress(TimeoutError, ConnectionLost, UnusableResponse):
            await connection.request(
                Unbind(sequence_number=connection.next_sequence()),
                self.config.response_timeout_s,
            )
        connection.close("unbound")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.response_timeout_s):
                await connection.closed.wait()
        connection.abort("unbound")

    # -- connecting -----------------------------------------------------------------------

    async def _supervise(self, link: _Link) -> None:
        short_lived_binds = 0
        bound_before = False
        while self._state == "running":
            connection = await self._connect_with_backoff(link)
            if not connection.is_open:
                continue  # lost between its bind_resp and now: its loss went unseen
            link.connection = connection
            bound_at_s = self._clock()
            self.stats.binds += 1
            if bound_before:
                self.stats.reconnects += 1
            bound_before = True
            log.info(
                "smpp_bound",
                bind=self.bind_id,
                role=link.role,
                host=self.config.host,
                port=self.config.port,
            )
            self._notify_health()
            await connection.closed.wait()
            # An SMSC that drops binds at once (too many binds, maintenance) must not
            # get a tight reconnect loop: a bind shorter than the backoff cap counts
            # as a failed attempt.
            if self._clock() - bound_at_s < self.config.reconnect_max_backoff_s:
                short_lived_binds += 1
                await asyncio.sleep(
                    min(
                        self.config.reconnect_max_backoff_s,
                        self._initial_backoff_s * 2 ** (short_lived_binds - 1),
                    )
                )
            else:
                short_lived_binds = 0

    async def _connect_with_backoff(self, link: _Link) -> _Connection:
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=self._initial_backoff_s,
                max=self.config.reconnect_max_backoff_s,
                jitter=self._initial_backoff_s,
            ),
            retry=retry_if_exception_type(Exception),
            before_sleep=partial(self._log_bind_failure, link),
            reraise=True,
        )

        async def attempt() -> _Connection:
            try:
                return await self._connect_once(link)
            finally:
                link.first_attempt_done.set()

        return await retrying(attempt)

    def _log_bind_failure(self, link: _Link, retry_state: RetryCallState) -> None:
        self.stats.bind_failures += 1
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        next_wait_s = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "smpp_bind_failed",
            bind=self.bind_id,
            role=link.role,
            attempt=retry_state.attempt_number,
            error=repr(error),
            retry_in_s=round(next_wait_s, 3),
        )

    async def _connect_once(self, link: _Link) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(
            role=link.role,
            config=self.config,
            bind_id=self.bind_id,
            on_deliver=self._on_deliver,
            on_lost=partial(self._connection_lost, link),
            stats=self.stats,
            clock=self._clock,
            max_pdu_len=self._max_pdu_len,
        )
        try:
            async with asyncio.timeout(self.config.response_timeout_s):
                await loop.create_connection(
                    lambda: connection,
                    self.config.host,
                    self.config.port,
                    ssl=self._ssl_context,
                    server_hostname=self.config.host if self._ssl_context else None,
                )
            response = await connection.request(
                bind_request(link.role, connection.next_sequence(), self.config),
                self.config.response_timeout_s,
            )
            if response.command_status != 0 or not isinstance(response, _BIND_RESPONSES[link.role]):
                raise BindRefused(response.command_status)
        except BaseException:
            connection.abort("bind failed")
            raise
        connection.start_timers()
        return connection

    def _connection_lost(self, link: _Link, connection: _Connection, reason: str) -> None:
        if link.connection is not connection:
            return  # never bound: the bind attempt reports its own failure
        link.connection = None
        if link is self._submit_link:
            # Queued submits never left this process; the caller may send them elsewhere.
            self._fail_queued(f"bind lost before sending: {reason}")
        if self._state == "running":
            log.warning("smpp_bind_lost", bind=self.bind_id, role=link.role, reason=reason)
        self._notify_health()

    def _notify_health(self) -> None:
        if self._on_health_change is not None:
            self._on_health_change(self)

    # -- submitting -----------------------------------------------------------------------

    async def submit(self, pdu: SubmitSm) -> SubmitResult:
        """Submit one PDU (its sequence_number is ignored); see the outcome table."""
        return (await self.submit_all((pdu,)))[0]

    async def submit_all(self, pdus: Sequence[SubmitSm]) -> list[SubmitResult]:
        """Queue ``pdus`` together, written in this order on this bind; one result each.

        Raises ``PduEncodeError`` (before anything is queued) for a PDU that SMPP
        cannot carry.
        """
        frames = [encode(pdu) for pdu in pdus]
        if self.health not in ("bound", "throttled"):
            detail = f"bind {self.health}"
            self.stats.unsent += len(frames)
            return [SubmitResult("unsent", self.bind_id, detail=detail) for _ in frames]
        loop = asyncio.get_running_loop()
        items = []
        for frame in frames:
            self._next_ordinal += 1
            item = _QueuedSubmit(self._next_ordinal, frame, loop.create_future())
            heapq.heappush(self._queue, item)
            items.append(item)
        self._wake_sender.set()
        if len(items) == 1:
            return [await items[0].future]
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _send_loop(self) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            try:
                await self._write_queued()
            except Exception:
                # Never leave callers waiting on a dead sender: what was not written
                # is unsent, what was written has its response callback.
                log.exception("smpp_sender_failed", bind=self.bind_id)
                self._fail_queued("internal error in the sender")

    async def _write_queued(self) -> None:
        """Write queued submits while the bind allows; return when nothing more can go.

        Frames are gathered and written together, and always before any await: a
        frame whose response callback is armed is on its way to the socket.
        """
        pending = bytearray()
        connection: _Connection | None = None

        def flush() -> None:
            if pending and connection is not None:
                connection.write(pending)
                pending.clear()

        try:
            while self._queue:
                if self._queue[0].future.done():  # caller gave up before it was written
                    heapq.heappop(self._queue)
                    continue
                if connection is not self._submit_link.connection:
                    flush()
                    connection = self._submit_link.connection
                if (
                    connection is None
                    or connection.window is None
                    or not connection.is_open
                    or self._state != "running"
                ):
                    return
                window = connection.window
                now_s = self._clock()
                rate_cuts = self._rate_cuts
                if self._rate_limiter is not None:
                    wait_s = self._rate_limiter.reserve(now_s)
                    if wait_s > 0:
                        flush()
                        await asyncio.sleep(wait_s)
                        continue
                if window.in_flight >= window.size:
                    flush()  # offer is about to wait for a response
                sequence_number = connection.next_sequence()
                try:
                    response = await window.offer(
                        sequence_number, timeout_s=self.config.response_timeout_s
                    )
                except (WindowTimeout, ConnectionLost):
                    continue
                if (
                    connection is not self._submit_link.connection
                    or not self._queue
                    or self._queue[0].future.done()
                    or self._rate_cuts != rate_cuts
                ):
                    # The world moved while we waited for the slot: give it back.
                    window.fail(sequence_number, ConnectionLost("slot returned unused"))
                    response.exception()  # retrieved, so asyncio does not log it
                    continue
                item = heapq.heappop(self._queue)
                item.sequence_number = sequence_number
                # Taken after the slot wait: a full window is our queueing, not
                # the SMSC's response time.
                item.written_at_s = self._clock()
                start = len(pending)
                pending += item.frame
                pending[start + _SEQUENCE_OFFSET : start + _SEQUENCE_OFFSET + 4] = (
                    sequence_number.to_bytes(4, "big")
                )
                self.stats.written += 1
                response.add_done_callback(partial(self._submit_answered, item, connection))
        finally:
            flush()

    def _submit_answered(
        self,
        item: _QueuedSubmit,
        connection: _Connection,
        response: asyncio.Future[SubmitResponse],
    ) -> None:
        try:
            answer = response.result()
        except ResponseTimeout as exc:
            late: asyncio.Future[SubmitResult] | None = None
            awaited = connection.expired_unclaimed.pop(exc.sequence_number, None)
            if awaited is None and connection.is_open:
                awaited = connection.late_answers.remember(exc.sequence_number, self._clock())
            if awaited is not None and not awaited.cancelled():
                late = asyncio.get_running_loop().create_future()
                awaited.add_done_callback(partial(self._late_answered, item, late))
            self._resolve(
                item,
                "unknown",
                detail=f"no submit_sm_resp within {self.config.response_timeout_s:g} s",
                cause="response_timeout",
                late_answer=late,
            )
            return
        except ConnectionLost as exc:
            self._resolve(item, "unknown", detail=str(exc), cause="bind_lost")
            return
        except UnusableResponse as exc:
            self._resolve(item, "unknown", detail=str(exc), cause="unusable_response")
            return
        status = answer.command_status
        if self._observer is not None:
            self._observer.submit_answered(status, self._clock() - item.written_at_s)
        if status == CommandStatus.ESME_ROK and isinstance(answer, SubmitSmResp):
            self._adapt_send_rate("accepted", item)
            self._resolve(item, "accepted", message_id=answer.message_id)
        elif status in RETRY_LATER_STATUSES:
            self._retry_later(item, status)
        elif status == CommandStatus.ESME_ROK:
            self._resolve(
                item,
                "unknown",
                detail="generic_nack without an error status",
                cause="unusable_response",
            )
        else:
            self._resolve(item, "refused", command_status=status, detail=describe_status(status))

    def _retry_later(self, item: _QueuedSubmit, status: int) -> None:
        self.stats.throttled += 1
        if self._observer is not None:
            self._observer.throttled()
        if self._state != "running" or self._submit_link.connection is None:
            self._resolve(item, "unsent", detail=f"{describe_status(status)}, then bind ended")
            return
        self._adapt_send_rate("throttled", item)
        heapq.heappush(self._queue, item)
        self._wake_sender.set()

    def _adapt_send_rate(self, answer: SubmitAnswer, item: _QueuedSubmit) -> None:
        before = self._send_rate
        now_s = self._clock()
        after = send_rate_after(
            before,
            answer,
            now_s,
            written_at_s=item.written_at_s,
            backlogged=bool(self._queue),
            unanswered=self.in_flight,
            policy=self._rate_policy,
        )
        self._send_rate = after
        if after.rate_per_s == before.rate_per_s:
            return
        cut = after.rate_per_s is not None and (
            before.rate_per_s is None or after.rate_per_s < before.rate_per_s
        )
        if after.rate_per_s is None:
            self._rate_limiter = None
        elif self._rate_limiter is None:
            self._rate_limiter = SubmitRateLimiter(after.rate_per_s)
            self._rate_limiter.set_rate(after.rate_per_s, now_s, empty=True)
        else:
            self._rate_limiter.set_rate(after.rate_per_s, now_s, empty=cut)
        if cut:
            self._rate_cuts += 1
            log.debug("smpp_send_rate_cut", bind=self.bind_id, rate_per_s=after.rate_per_s)
        was_throttled = before.below_ceiling(self._rate_policy)
        if was_throttled != after.below_ceiling(self._rate_policy):
            log.info(
                "smpp_throttled" if not was_throttled else "smpp_send_rate_recovered",
                bind=self.bind_id,
                rate_per_s=after.rate_per_s,
                ceiling_per_s=self._rate_policy.ceiling_per_s,
            )
            self._notify_health()

    def _late_answered(
        self,
        item: _QueuedSubmit,
        late: asyncio.Future[SubmitResult],
        answer: asyncio.Future[SubmitResponse],
    ) -> None:
        """A submit already reported unknown got its answer after all (or never
        will: ``answer`` was cancelled)."""
        if late.done():
            return
        if answer.cancelled():
            late.cancel()
            return
        response = answer.result()
        status = response.command_status
        self.stats.late_answers += 1
        if self._observer is not None:
            self._observer.submit_answered(status, self._clock() - item.written_at_s)
        if status == CommandStatus.ESME_ROK and isinstance(response, SubmitSmResp):
            result = SubmitResult("accepted", self.bind_id, message_id=response.message_id)
        elif status in RETRY_LATER_STATUSES:
            # Not taken: it is the engine's to send again, not this queue's.
            detail = f"{describe_status(status)}, answered late"
            result = SubmitResult("unsent", self.bind_id, command_status=status, detail=detail)
        elif status == CommandStatus.ESME_ROK:
            late.cancel()  # a generic_nack without an error tells nothing
            return
        else:
            result = SubmitResult(
                "refused", self.bind_id, command_status=status, detail=describe_status(status)
            )
        late.set_result(result)

    def _resolve(
        self,
        item: _QueuedSubmit,
        outcome: SubmitOutcome,
        *,
        message_id: str | None = None,
        command_status: int | None = None,
        detail: str = "",
        cause: UnknownCause | None = None,
        late_answer: asyncio.Future[SubmitResult] | None = None,
    ) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if not item.future.done():
            item.future.set_result(
                SubmitResult(
                    outcome,
                    self.bind_id,
                    message_id,
                    command_status,
                    detail,
                    cause=cause,
                    late_answer=late_answer,
                )
            )
        elif late_answer is not None:
            late_answer.cancel()  # nobody is there to hear it
        if self._state == "stopping" and self.in_flight == 0:
            self._drained.set()

    def _fail_queued(self, detail: str) -> None:
        queue, self._queue = self._queue, []
        for item in sorted(queue):
            self._resolve(item, "unsent", detail=detail)


def _stats_fields(stats: SessionStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in SessionStats.__slots__}
