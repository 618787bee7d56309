"""The reassigned-number gate (DOMAIN §13): a lookup before either leg.

At claim (dispatcher `_decide`), a message with a base date and no verdict
yet goes nowhere near a carrier:

    claim_for_check   room in the gate  → dispatching under the claiming
                                          daemon's lease, handed to the gate
                      gate full         → stays queued, a second later
                                          (a wait, REASSIGN_BACKLOG)
                      no gate here      → skipped (reassignment_lookup_failed)

The gate batches what it holds into lookups of `[reassign] batch_size`,
`concurrency` of them in flight, and never holds the dispatcher: other
messages are claimed and sent while a lookup waits. The verdicts are
recorded by one task, the batches looked up while it recorded the last ones
together in one transaction (domain/reassign.py `after_lookup` decides the
moves, the lifecycle writer applies them, keeps the verdict on the row and
bills §11's units):

    no_history           → in the same transaction on to its leg (the
                           dispatcher's `send_judged`: SMS plan and
                           'sending', +Message lease; handed over after the
                           commit), the verdict riding on the leg's move
                           (domain/reassign.py `carried`): no second claim,
                           no second lookup. The account token was spent at
                           the gate's claim; a message that does not pass
                           gives it back.
    history              → skipped (reassigned_number)
    error after retries  → skipped (reassignment_lookup_failed)

Lookups go on while verdicts are recorded, up to RECORDING_ROUNDS rounds
of batches ahead of the recording: a worker that waited for its own batch's
transaction left the service idle, and at a 20 ms lookup the transactions,
not the lookups, set the pace. The bound keeps the service from being asked
about messages whose verdicts cannot be kept (the database away).

The history event of each names the base date (and the date checked from
when clamped to two years) and the data month.

A daemon that dies mid-lookup leaves its rows dispatching under its lease:
the timers' lost-lease recovery queues them again and the next claim looks
them up again (a verdict is kept only with its move). A verdict is applied
only to rows still held under this daemon's lease, so a lookup that outlived
its lease (a stalled daemon) never decides a message another daemon holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

import structlog

from carrierd.channels.reassign import Lookup, ReassignLookups
from carrierd.config import Config
from carrierd.domain import reasons
from carrierd.domain.clock import Clock
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.reassign import (
    LookupFailed,
    LookupOutcome,
    after_lookup,
    carried,
    checked_base_dates,
)
from carrierd.domain.states import State
from carrierd.engine.lifecycle import Lifecycle
from carrierd.loops import until_database_answers
from carrierd.store.db import Database, Transaction
from carrierd.store.rows import ClaimedMessage
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.reassign_gate")

# A message the gate had no room for is claimed again this much later,
# waiting for this cause.
BACKLOG_RETRY_S = 1.0
REASSIGN_BACKLOG = "reassigned-number check backlog"
# After the gate itself failed (not the service: a bug, the database gone
# mid-batch), its messages are claimed again this much later.
GATE_ERROR_RETRY_S = 5.0
# The gate holds at most this many rounds of full batches (queued and in
# flight): the rest waits in the database, not in memory. A round includes
# handing what passed to its leg; at 8 a burst filled the gate and the
# claims postponed a fifth of the checked messages (a move and an event each).
HELD_ROUNDS = 16
# The verdicts of lookups that ended while others were being recorded are
# recorded together, up to this many messages in one transaction: each
# transaction has its fixed cost (the lock, the legs' statements, commit),
# which batches of a hundred paid again and again.
RECORD_GROUP_MAX = 1000
# Lookups go on while verdicts are recorded, up to this many rounds of full
# batches looked up and not yet recorded: while the database is away, the
# service is not asked about messages whose verdicts could not be kept.
RECORDING_ROUNDS = 2
# The claim's history detail, one object for every claim: the writer
# encodes a detail shared by many moves once (never changed).
_CLAIMED_FOR_CHECK = {"for": "reassigned_check"}


# The gate's transaction work: records the verdicts that end messages and
# locks the rest, returns the messages that passed (as claimed) with their
# verdict moves, not yet applied: `VerdictsToCarry` puts each on its
# message's first leg move.
RecordVerdicts = Callable[[Transaction], Awaitable[list[tuple[ClaimedMessage, Move]]]]


@dataclass
class _Judged:
    """A batch looked up, its verdicts waiting to be recorded."""

    batch: list[ClaimedMessage]
    moves: list[Move]
    outcomes: dict[int, LookupOutcome]
    judged_at: datetime


class VerdictsToCarry:
    """The passing verdicts of one transaction, each put on the first leg
    move of its message (domain/reassign.py `carried`), once."""

    def __init__(self, verdicts: Sequence[Move]) -> None:
        self._verdicts = {v.message_id: v for v in verdicts}

    def __call__(self, move: Move) -> Move:
        verdict = self._verdicts.pop(move.message_id, None)
        return move if verdict is None else carried(move, verdict)

    def take(self, message_ids: Sequence[int]) -> list[Move]:
        """The verdicts of these messages, to be applied as moves of their own."""
        return [v for i in message_ids if (v := self._verdicts.pop(i, None)) is not None]

    def check_all_carried(self) -> None:
        """A verdict left over belongs to a message no leg moved: a defect,
        and the transaction must not commit without it."""
        if self._verdicts:
            raise RuntimeError(f"verdicts on no leg move: {sorted(self._verdicts)[:10]}")


class Onward(Protocol):
    """The dispatcher's side of a verdict (`Dispatcher.send_judged`): runs
    `record` and hands what passed to its leg in the same transaction."""

    async def __call__(
        self, record: RecordVerdicts, judged: Sequence[ClaimedMessage], now: datetime
    ) -> None: ...


def needs_check(message: ClaimedMessage, now: datetime) -> bool:
    """A message whose claim goes to the gate: a base date, no verdict yet,
    and still valid (an expired one expires at claim as any other)."""
    return (
        message.reassign_base_date is not None
        and message.reassign_verdict is None
        and message.expires_at > now
    )


class ReassignGate:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        lookups: ReassignLookups,
        lifecycle: Lifecycle,
        *,
        config: Callable[[], Config],
        lease_owner: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._lookups = lookups
        self._lifecycle = lifecycle
        self._config = config
        self._lease_owner = lease_owner
        self._metrics = metrics
        self._waiting: asyncio.Queue[ClaimedMessage] = asyncio.Queue()
        self._onward: Onward | None = None
        self._in_flight = 0
        # Looked up, verdicts not yet recorded.
        self._recording = 0
        # Set when the recorder has room for another batch's verdicts.
        self._record_room = asyncio.Event()
        self._record_room.set()
        self._workers: list[asyncio.Task[None]] = []
        self._judged: asyncio.Queue[_Judged] = asyncio.Queue()
        self._recorder: asyncio.Task[None] | None = None
        # Set while the gate holds nothing.
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the dispatcher's side ------------------------------------------------------

    def room(self) -> int:
        """How many more messages the gate takes now."""
        reassign = self._config().reassign
        held_max = reassign.batch_size * reassign.concurrency * HELD_ROUNDS
        return max(0, held_max - self.held)

    def take(self, messages: Sequence[ClaimedMessage], onward: Onward | None = None) -> None:
        """Messages the claim moved to dispatching for the gate (committed);
        `onward` hands those that pass to their leg (else the next claim does)."""
        if onward is not None:
            self._onward = onward
        if not self._workers:
            self.start()
        for message in messages:
            self._waiting.put_nowait(message)
        if messages:
            self._idle.clear()

    @property
    def held(self) -> int:
        return self._waiting.qsize() + self._in_flight + self._recording

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """`[reassign] concurrency` workers, each one lookup in flight at a
        time (a reload's new concurrency applies at the next start)."""
        if self._workers:
            return
        self._workers = [
            asyncio.ensure_future(self._work()) for _ in range(self._config().reassign.concurrency)
        ]
        self._recorder = asyncio.ensure_future(self._record_judged())

    async def stop(self, drain_timeout_s: float) -> None:
        """Call before `Dispatcher.stop`: lookups under way finish and record
        their verdicts; what waits for a worker stays dispatching, which the
        dispatcher's stop gives back to the queue."""
        waiting: list[ClaimedMessage] = []
        while not self._waiting.empty():
            waiting.append(self._waiting.get_nowait())
        if waiting:
            log.info("reassign_gate_stopping", left_waiting=len(waiting))
        if not self.held:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        tasks = [*self._workers, *([self._recorder] if self._recorder is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        self._recorder = None

    async def wait_idle(self) -> None:
        """Tests: until everything taken has its verdict recorded."""
        await self._idle.wait()

    # -- the work ------------------------------------------------------------------

    async def _work(self) -> None:
        """Looks batches up one after the other: the verdicts of one are
        recorded (`_record_judged`) while the next is looked up."""
        while True:
            batch = [await self._waiting.get()]
            self._in_flight += 1
            try:
                await self._room_to_look_up()
                batch_size = self._config().reassign.batch_size
                while len(batch) < batch_size and not self._waiting.empty():
                    batch.append(self._waiting.get_nowait())
                self._in_flight += len(batch) - 1
                judged = await self._judge(batch)
                self._recording += len(batch)
                self._judged.put_nowait(judged)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reassign_gate_failed", messages=len(batch))
                await self._give_back(batch)
            finally:
                self._in_flight -= len(batch)
                self._record_room.set()
                if not self.held:
                    self._idle.set()

    async def _room_to_look_up(self) -> None:
        """Until fewer than RECORDING_ROUNDS rounds of batches are looked up
        or being looked up, their verdicts not yet recorded (the caller's
        own first message aside)."""
        while True:
            reassign = self._config().reassign
            room = reassign.batch_size * reassign.concurrency * RECORDING_ROUNDS
            if self._recording + self._in_flight - 1 < room:
                return
            self._record_room.clear()
            await self._record_room.wait()

    async def _judge(self, batch: list[ClaimedMessage]) -> _Judged:
        now = self._clock.now()
        msisdns: list[str] = []
        base_dates: list[date] = []
        for message in batch:
            assert message.reassign_base_date is not None and message.msisdn is not None
            msisdns.append(message.msisdn)
            base_dates.append(message.reassign_base_date)
        checked_from = checked_base_dates(base_dates, now)
        lookups = [Lookup(m, d) for m, d in zip(msisdns, checked_from, strict=True)]
        outcomes = await self._lookups.lookup(lookups)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} lookups")
        judged_at = self._clock.now()
        moves = [
            after_lookup(
                message.id, outcome, message.reassign_base_date, lookup.base_date, judged_at
            )
            for message, lookup, outcome in zip(batch, lookups, outcomes, strict=True)
            if message.reassign_base_date is not None
        ]
        by_id = {message.id: outcome for message, outcome in zip(batch, outcomes, strict=True)}
        return _Judged(batch, moves, by_id, judged_at)

    async def _record_judged(self) -> None:
        """Records the looked-up batches' verdicts: those that were looked
        up while the last were recorded go together (RECORD_GROUP_MAX), so
        that a transaction's fixed cost is paid once for them, and lookups
        go on meanwhile."""
        while True:
            group = [await self._judged.get()]
            size = len(group[0].batch)
            while not self._judged.empty() and size < RECORD_GROUP_MAX:
                group.append(self._judged.get_nowait())
                size += len(group[-1].batch)
            try:
                await self._record_group(group)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reassign_gate_failed", messages=size)
                for judged in group:
                    await self._give_back(judged.batch)
            finally:
                self._recording -= size
                self._record_room.set()
                if not self.held:
                    self._idle.set()

    async def _record_group(self, group: list[_Judged]) -> None:
        batch = [m for j in group for m in j.batch]
        moves = [m for j in group for m in j.moves]
        outcomes = {i: o for j in group for i, o in j.outcomes.items()}
        now = max(j.judged_at for j in group)
        # The service has answered (and may bill us): its verdicts are held
        # while the database is away rather than dropped.
        await until_database_answers(
            "reassign_record", lambda: self._record(batch, moves, outcomes, now)
        )

    async def _record(
        self,
        batch: list[ClaimedMessage],
        moves: list[Move],
        outcomes: dict[int, LookupOutcome],
        now: datetime,
    ) -> None:
        async def work(tx: Transaction) -> list[tuple[ClaimedMessage, Move]]:
            # Locked for this transaction: the passing ones are moved on by
            # their leg before it commits.
            held = {
                r["id"]
                for r in await tx.fetch(
                    "reassign_lock_held", [m.message_id for m in moves], self._lease_owner
                )
            }
            lost = len(moves) - len(held)
            if lost:
                log.warning("reassign_verdicts_without_lease", messages=lost)
            ours = [m for m in moves if m.message_id in held]
            passing = [m for m in ours if m.dst is State.QUEUED]
            await self._lifecycle.apply(tx, [m for m in ours if m.dst is not State.QUEUED], now)
            tally = Counter(m.reassign_verdict or "lookup_failed" for m in ours)
            tx.after_commit(lambda: self._count(tally))
            failed = [o for o in outcomes.values() if isinstance(o, LookupFailed)]
            if failed:
                log.warning("reassign_lookups_failed", messages=len(failed), error=failed[0].error)
            by_id = {m.id: m for m in batch}
            return [(by_id[v.message_id], v) for v in passing]

        async def queued_again(tx: Transaction) -> None:
            # No leg here: what passed is queued with its verdict, and the
            # next claim sends it on.
            passed = await work(tx)
            await self._lifecycle.apply(tx, [v for _, v in passed], now)

        if self._onward is None:
            await self._db.in_transaction(queued_again)
        else:
            await self._onward(work, batch, now)

    def _count(self, tally: Counter[str]) -> None:
        if self._metrics is None:
            return
        for verdict, n in tally.items():
            self._metrics.reassign_verdicts_total.labels(verdict).inc(n)

    async def _give_back(self, batch: list[ClaimedMessage]) -> None:
        """The gate failed on a batch (not the service): its messages are
        claimed again later and looked up then."""
        now = self._clock.now()
        moves = [
            Move(
                m.id,
                State.DISPATCHING,
                State.QUEUED,
                Event.RELEASED,
                not_before=now + timedelta(seconds=GATE_ERROR_RETRY_S),
                detail={"why": "reassign_gate_error"},
            )
            for m in batch
        ]

        async def work(tx: Transaction) -> None:
            held = {
                r["id"]
                for r in await tx.fetch(
                    "reassign_lock_held", [m.message_id for m in moves], self._lease_owner
                )
            }
            await self._lifecycle.apply(tx, [m for m in moves if m.message_id in held], now)

        try:
            await self._db.in_transaction(work)
        except Exception:
            # Their lease runs out and lost-lease recovery queues them.
            log.exception("reassign_give_back_failed", messages=len(batch))


def claim_for_check(
    gate: ReassignGate | None,
    messages: Sequence[ClaimedMessage],
    now: datetime,
    *,
    lease_owner: str,
    lease_until: datetime,
) -> list[Move]:
    """The claim's moves for messages that need the check (`needs_check`):
    those moved to dispatching are handed to the gate once committed."""
    if gate is None:
        return [
            Move(
                m.id,
                State.QUEUED,
                State.SKIPPED,
                Event.SKIPPED,
                reasons.REASSIGNMENT_LOOKUP_FAILED,
                detail={
                    "base_date": m.reassign_base_date.isoformat() if m.reassign_base_date else None,
                    "error": "the reassigned-number check is not configured on this daemon",
                },
            )
            for m in messages
        ]
    room = gate.room()
    moves: list[Move] = []
    taken: set[int] = set()
    for message in messages:
        if len(taken) < room:
            taken.add(message.id)
            moves.append(
                Move(
                    message.id,
                    State.QUEUED,
                    State.DISPATCHING,
                    Event.CLAIMED,
                    lease_owner=lease_owner,
                    lease_until=lease_until,
                    detail=_CLAIMED_FOR_CHECK,
                )
            )
        else:
            moves.append(
                Move(
                    message.id,
                    State.QUEUED,
                    State.QUEUED,
                    Event.POSTPONED,
                    not_before=now + timedelta(seconds=BACKLOG_RETRY_S),
                    wait=REASSIGN_BACKLOG,
                )
            )
    return moves
