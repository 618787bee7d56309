"""The binds of one carrier route: ``CarrierConfig.binds`` sessions behind one ``submit``.

    pool = SmppPool(carrier_config, on_deliver)
    await pool.start()
    results = await pool.submit_all(part_pdus)   # every part on the same bind, in order
    pool.health().bound_count                    # readiness and metrics
    await pool.stop(drain_timeout_s=5.0)

Dispatch: among the sessions that take submits ("bound", or "throttled": sending
at the slower pace the SMSC allows), the one that will have written its queue
soonest, (in flight + queued + 1) / send rate, a session without a rate limit
counting as soonest; then the least loaded. Ties go round-robin so idle binds
share the traffic. A throttled bind is a bind at work: the pool is available
while any session is bound or throttled. With none, ``submit`` waits up to
``bind_wait_s`` for one, then answers unsent. A session that loses its bind while
the submit sat in its queue answers unsent for all of it; the pool then tries
another bound session within the same wait. A health change of any session wakes
the waiting submits. An ``observer`` (``SubmitObserver``) given to the pool is
shared by all its sessions: it hears every submit answer of the carrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from carrierd.config import CarrierConfig
from carrierd.smpp.pdu import SubmitSm
from carrierd.smpp.session import (
    DeliverHandler,
    SessionHealth,
    SessionStats,
    SmppSession,
    SubmitObserver,
    SubmitResult,
)

_TAKES_SUBMITS: Final = ("bound", "throttled")
# See SmppPool.receipts_backlogged.
DELIVER_WINDOW_MIN: Final = 8
DELIVER_WINDOW_FULL_SHARE: Final = 0.9


@dataclass(frozen=True, slots=True)
class BindHealth:
    bind_id: str
    state: SessionHealth
    links: dict[str, bool]  # bound or not, per connection role
    in_flight: int
    queued: int
    stats: SessionStats
    delivers_unanswered: int = 0  # receipts and MO handed over, not yet durable
    send_rate_per_s: float | None = None  # writes spaced at this rate; None: no limit


@dataclass(frozen=True, slots=True)
class PoolHealth:
    carrier: str
    binds: tuple[BindHealth, ...]

    @property
    def bound_count(self) -> int:
        """Binds that take submits (bound, or throttled to the SMSC's pace)."""
        return sum(1 for bind in self.binds if bind.state in ("bound", "throttled"))

    @property
    def available(self) -> bool:
        """At least one bind takes submits (bound, or throttled to the SMSC's pace)."""
        return self.bound_count > 0


class SmppPool:
    def __init__(
        self,
        config: CarrierConfig,
        on_deliver: DeliverHandler,
        *,
        bind_wait_s: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        initial_backoff_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        observer: SubmitObserver | None = None,
    ) -> None:
        self.config = config
        self._bind_wait_s = bind_wait_s
        self._clock = clock
        self.sessions: tuple[SmppSession, ...] = tuple(
            SmppSession(
                config,
                f"{config.pool_name.replace('/', '-')}-{number}",
                on_deliver,
                ssl_context=ssl_context,
                on_health_change=self._session_changed,
                initial_backoff_s=initial_backoff_s,
                clock=clock,
                observer=observer,
            )
            for number in range(1, config.binds + 1)
        )
        self._changed = asyncio.Event()
        self._next_turn = 0

    async def start(self) -> None:
        """Start every bind; returns after each one's first attempt (bound or not)."""
        await asyncio.gather(*(session.start() for session in self.sessions))

    async def stop(self, drain_timeout_s: float) -> None:
        await asyncio.gather(*(session.stop(drain_timeout_s) for session in self.sessions))

    def health(self) -> PoolHealth:
        return PoolHealth(
            self.config.name,
            tuple(
                BindHealth(
                    session.bind_id,
                    session.health,
                    session.link_states,
                    session.in_flight,
                    session.queued,
                    replace(session.stats),  # a snapshot, not the live counters
                    session.deliver_backlog[0],
                    session.send_rate_per_s,
                )
                for session in self.sessions
            ),
        )

    def is_available(self) -> bool:
        """Some bind takes submits now. A throttled one counts: it sends at the
        SMSC's pace, and a message held back for it would only be claimed
        again and again while the bind works through its queue."""
        return any(session.health in _TAKES_SUBMITS for session in self.sessions)

    def receipts_backlogged(self) -> bool:
        """The SMSC has its deliver window full on every bind: receipts are
        queueing there, waiting for our answers (each is answered once its
        receipt is durable). The window is learned as the most deliver_sm
        ever unanswered at once; a bind that never had DELIVER_WINDOW_MIN
        unanswered has told us nothing yet."""
        unanswered = peak = 0
        for session in self.sessions:
            now, most = session.deliver_backlog
            unanswered += now
            peak += most
        return peak >= DELIVER_WINDOW_MIN and unanswered >= DELIVER_WINDOW_FULL_SHARE * peak

    async def submit(self, pdu: SubmitSm) -> SubmitResult:
        return (await self.submit_all((pdu,)))[0]

    async def submit_all(self, pdus: Sequence[SubmitSm]) -> list[SubmitResult]:
        """Submit ``pdus`` in order on one bind; one result each (see module docs)."""
        deadline_s = self._clock() + self._bind_wait_s
        while True:
            session = self._pick()
            if session is not None:
                results = await session.submit_all(pdus)
                if self._clock() >= deadline_s or any(r.outcome != "unsent" for r in results):
                    return results
                # Nothing left this process and that bind is gone: try another one.
                continue
            remaining_s = deadline_s - self._clock()
            if remaining_s <= 0:
                return [SubmitResult("unsent", None, detail="no bind available") for _ in pdus]
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await self._changed.wait()

    def _pick(self) -> SmppSession | None:
        ready = [s for s in self.sessions if s.health in _TAKES_SUBMITS]
        if not ready:
            return None
        count = len(self.sessions)
        turn = self._next_turn
        self._next_turn = (turn + 1) % count

        def order(session: SmppSession) -> tuple[float, int, int]:
            rate_per_s = session.send_rate_per_s
            written_in_s = 0.0 if rate_per_s is None else (session.load + 1) / rate_per_s
            # Soonest written; then least loaded; then the first at or after this turn.
            return written_in_s, session.load, (self.sessions.index(session) - turn) % count

        return min(ready, key=order)

    def _session_changed(self, session: SmppSession) -> None:
        self._changed.set()
