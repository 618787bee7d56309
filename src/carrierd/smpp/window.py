"""The send window of one SMPP session: requests sent and still awaiting a response.

An SMSC accepts only so many outstanding requests per bind (the window size in the
carrier contract); beyond it, it throttles or drops the bind. ``Window`` bounds them:

    window: Window[SubmitSmResp] = Window(size=10)
    response_future = await window.offer(seq, timeout_s=5.0)   # may wait for a slot
    transport.write(encode(submit_sm))                         # only after the slot
    ...
    # read loop, when a response arrives:
    if not window.complete(resp.sequence_number, resp):
        log.warning("late or duplicate response", seq=resp.sequence_number)
    # a periodic tick:
    for seq in window.expire(time.monotonic(), response_timeout_s=30.0):
        log.warning("response timeout", seq=seq)     # the future raised ResponseTimeout
    # on disconnect:
    lost = window.fail_all(ConnectionLost())          # outcome unknown for these

Rules:

- ``offer`` takes a free slot at once, or waits; waiting offers get slots strictly
  in arrival order (a new offer never overtakes one already waiting), and raise
  ``WindowTimeout`` if no slot frees within ``timeout_s``. A cancelled offer gives
  back a slot handed to it.
- A slot is held from ``offer`` until ``complete``, ``fail``, ``expire`` or
  ``fail_all`` releases it. Cancelling a response future does *not* release its
  slot: the request is on the wire and the SMSC still counts it.
- ``expire`` reports every request older than the response timeout (by the
  ``clock`` reading taken when its slot was granted) and fails its future with
  ``ResponseTimeout``; nothing leaves the window unreported.
- ``fail_all`` fails in-flight futures and every offer still waiting (those were
  never sent) with the given exception; the window stays usable afterwards.
- Sequence numbers must be unique among in-flight requests (``ValueError``
  otherwise): the session allocates them.

The window does no I/O and has no task of its own; timing of ``expire`` is the
caller's (``next_expiry_at`` says when the next one is due).

An expired request is not forgotten by the SMSC: its answer may still come, late.
``LateAnswers`` keeps what the caller needs to make use of it (a future to resolve)
per sequence number for ``keep_s`` after the timeout, at most ``max_entries`` of
them (the oldest go first); a forgotten entry's future is cancelled, so whoever
waits on it learns that no answer will be read any more:

    late: LateAnswers[SubmitSmResp] = LateAnswers(keep_s=60.0, max_entries=640)
    for seq in window.expire(now, timeout_s):
        late_future = late.remember(seq, now)       # the caller keeps the future
    ...
    # read loop, a response the window no longer knows:
    late_future = late.take(resp.sequence_number, now)
    if late_future is not None:
        late_future.set_result(resp)
    # on disconnect: no answer can come on this connection any more
    late.forget_all()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class WindowTimeout(Exception):
    """No window slot became free within the offer's timeout; nothing was sent."""

    def __init__(self, sequence_number: int, timeout_s: float) -> None:
        super().__init__(f"no window slot for sequence {sequence_number} within {timeout_s}s")
        self.sequence_number = sequence_number
        self.timeout_s = timeout_s


class ResponseTimeout(Exception):
    """A sent request got no response in time; the SMSC may or may not have acted on it."""

    def __init__(self, sequence_number: int, waited_s: float) -> None:
        super().__init__(f"no response for sequence {sequence_number} after {waited_s:.3f}s")
        self.sequence_number = sequence_number
        self.waited_s = waited_s


@dataclass(slots=True)
class _InFlight(Generic[T]):
    future: asyncio.Future[T]
    offered_at: float


class Window(Generic[T]):
    """Bounded set of in-flight requests keyed by sequence number (see module docs)."""

    def __init__(self, size: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self._size = size
        self._clock = clock
        # Insertion order is offer order, which keeps expiry reports in send order.
        self._in_flight: dict[int, _InFlight[T]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Slots handed to waiters whose tasks have not resumed yet; counted as taken so
        # that a newcomer cannot grab them in between.
        self._reserved = 0
        # Bumped by fail_all so offers that were waiting at that moment fail too,
        # even if a slot had already been handed to them.
        self._generation = 0
        self._failure: BaseException | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_flight(self) -> int:
        """Requests holding a slot (sent, awaiting response)."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Offers waiting for a slot."""
        return len(self._waiters)

    def __contains__(self, sequence_number: object) -> bool:
        return sequence_number in self._in_flight

    async def offer(self, sequence_number: int, timeout_s: float) -> asyncio.Future[T]:
        """Take a slot for ``sequence_number`` (waiting if full); return its response future.

        Raises ``WindowTimeout`` if no slot frees within ``timeout_s``, the exception
        given to ``fail_all`` if that runs while waiting, ``ValueError`` if the
        sequence number is already in flight.
        """
        self._reject_duplicate(sequence_number)
        if not self._waiters and self._free_slots() > 0:
            return self._register(sequence_number)

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        generation = self._generation
        timer = loop.call_later(
            timeout_s, self._time_out_waiter, waiter, sequence_number, timeout_s
        )
        try:
            await waiter
        except BaseException:
            timer.cancel()
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Our task was cancelled after a slot was handed over: pass it on.
                self._reserved -= 1
                self._grant_free_slots()
            else:
                self._discard_waiter(waiter)
            raise
        timer.cancel()
        self._reserved -= 1
        if generation != self._generation and self._failure is not None:
            self._grant_free_slots()
            raise self._failure
        try:
            return self._register(sequence_number)
        except ValueError:
            self._grant_free_slots()
            raise

    def complete(self, sequence_number: int, result: T) -> bool:
        """Resolve the request's future; False if unknown (late or duplicate response)."""
        entry = self._in_flight.pop(sequence_number, None)
        if entry is None:
            return False
        if not entry.future.done():
            entry.future.set_result(result)
        self._grant_free_slots()
        return True

    def fail(self, sequence_number: int, exc: BaseException) -> bool:
        """Fail the request's future with ``exc``; False if the sequence is unknown."""
        entry = self._in_flight.pop(sequence_number, None)
        if entry is None:
            return False
        if not entry.future.done():
            entry.future.set_exception(exc)
        self._grant_free_slots()
        return True

    def expire(self, now_monotonic: float, response_timeout_s: float) -> list[int]:
        """Fail with ``ResponseTimeout`` and return, in offer order, every request
        offered ``response_timeout_s`` or more before ``now_monotonic``."""
        expired = [
            sequence_number
            for sequence_number, entry in self._in_flight.items()
            if now_monotonic - entry.offered_at >= response_timeout_s
        ]
        for sequence_number in expired:
            entry = self._in_flight.pop(sequence_number)
            if not entry.future.done():
                entry.future.set_exception(
                    ResponseTimeout(sequence_number, now_monotonic - entry.offered_at)
                )
        if expired:
            self._grant_free_slots()
        return expired

    def fail_all(self, exc: BaseException) -> list[int]:
        """Fail every in-flight request and waiting offer with ``exc`` (disconnect).

        Returns the in-flight sequence numbers in offer order: requests that were sent
        and whose outcome is now unknown. Waiting offers were never sent.
        """
        entries = self._in_flight
        self._in_flight = {}
        for entry in entries.values():
            if not entry.future.done():
                entry.future.set_exception(exc)
        waiters = self._waiters
        self._waiters = deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._generation += 1
        self._failure = exc
        return list(entries)

    def next_expiry_at(self, response_timeout_s: float) -> float | None:
        """Clock reading at which the oldest in-flight request expires; None if empty."""
        if not self._in_flight:
            return None
        return min(entry.offered_at for entry in self._in_flight.values()) + response_timeout_s

    def _free_slots(self) -> int:
        return self._size - len(self._in_flight) - self._reserved

    def _reject_duplicate(self, sequence_number: int) -> None:
        if sequence_number in self._in_flight:
            raise ValueError(f"sequence number {sequence_number} is already in flight")

    def _register(self, sequence_number: int) -> asyncio.Future[T]:
        self._reject_duplicate(sequence_number)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._in_flight[sequence_number] = _InFlight(future, self._clock())
        return future

    def _grant_free_slots(self) -> None:
        while self._waiters and self._free_slots() > 0:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            waiter.set_result(None)
            self._reserved += 1

    def _discard_waiter(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _time_out_waiter(
        self, waiter: asyncio.Future[None], sequence_number: int, timeout_s: float
    ) -> None:
        if not waiter.done():
            waiter.set_exception(WindowTimeout(sequence_number, timeout_s))
            self._discard_waiter(waiter)


@dataclass(slots=True)
class _LateEntry(Generic[T]):
    future: asyncio.Future[T]
    timed_out_at: float


class LateAnswers(Generic[T]):
    """Timed-out requests whose answer may still arrive (see module docs)."""

    def __init__(self, *, keep_s: float, max_entries: int) -> None:
        if keep_s <= 0 or max_entries < 1:
            raise ValueError("keep_s must be > 0 and max_entries >= 1")
        self._keep_s = keep_s
        self._max_entries = max_entries
        # Insertion order is timeout order: the oldest entry is always first.
        self._entries: dict[int, _LateEntry[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, sequence_number: int, now: float) -> asyncio.Future[T]:
        """Keep ``sequence_number`` for a late answer; the future gets it, or is
        cancelled once the entry is forgotten."""
        self._forget_older_than(now - self._keep_s)
        stale = self._entries.pop(sequence_number, None)
        if stale is not None:
            stale.future.cancel()
        while len(self._entries) >= self._max_entries:
            self._entries.pop(next(iter(self._entries))).future.cancel()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._entries[sequence_number] = _LateEntry(future, now)
        return future

    def take(self, sequence_number: int, now: float) -> asyncio.Future[T] | None:
        """The future of a remembered request, removed; None if it is not (or no
        longer) remembered."""
        self._forget_older_than(now - self._keep_s)
        entry = self._entries.pop(sequence_number, None)
        return None if entry is None else entry.future

    def forget_all(self) -> None:
        entries, self._entries = self._entries, {}
        for entry in entries.values():
            entry.future.cancel()

    def _forget_older_than(self, limit: float) -> None:
        while self._entries:
            sequence_number, entry = next(iter(self._entries.items()))
            if entry.timed_out_at > limit:
                return
            del self._entries[sequence_number]
            entry.future.cancel()
