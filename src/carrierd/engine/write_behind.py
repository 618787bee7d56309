"""Write-behind of SMS outcomes: submit responses and receipts to PostgreSQL.

Outcomes are buffered for a few milliseconds and written in one transaction
per flush (DESIGN principle 3): parts updated, early receipts matched, and
every touched message settled: domain/attempt.py decides what its parts
mean, the lifecycle writer applies the move (history, billing, callbacks).
A receipt's deliver_sm is answered OK only once the flush that stored it
has committed; a flush that fails answers its receipts with a transient
error (ESME_RX_T_APPN), so the SMSC delivers them again, and keeps the
submit responses (ours alone) to write again. A crash loses at most the
buffered responses, whose parts then settle through the lease and receipt
timers like any ambiguous outcome.

A message whose parts the SMSC all accepted is not marked submitted at
once: it stays 'sending' for `submitted_grace_s`, and a receipt in that time
settles it straight to its final state. Most receipts come within seconds,
even under load, so most messages are settled once instead of twice. The responses
themselves are written at once; a crash meanwhile leaves a 'sending' message
whose parts all have their response, which lease recovery settles from its
parts like any other.

Up to `max_concurrent_flushes` transactions run at once. A deliver_sm is
answered only after its receipt commits, so the SMSC's deliver window
divided by the commit latency bounds the receipt rate: one flush at a time
would make that latency a whole flush. Concurrent flushes are safe for the
same reasons two daemons are: messages are locked in id order before they
are settled, and a receipt that misses its part's uncommitted response
waits in early_receipts for the next flush.

Doubt is resolved when the SMSC speaks after all. A submit whose response
timed out is recorded unknown, and its late answer, if one comes while the
connection still listens (smpp/session.py), is recorded on that part
(accepted with its SMSC id, refused, or unsent when throttled); the message
then moves on from `unknown` as domain/attempt.py says. A receipt whose id
matches no part (its response was lost) waits in early_receipts; once it
has waited `CORRELATE_AFTER_S`, `correlate_receipts` (run by the settler)
gives it to the one part its recipient, submit date and text fit
(domain/receipt_match.py), or leaves it when two or more fit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog

from carrierd.channels.types import FINAL_RECEIPT_STATS, InboundSms, PartOutcome, Receipt
from carrierd.config import AccountConfig, CarrierConfig
from carrierd.domain import reasons
from carrierd.domain.attempt import (
    AttemptFacts,
    AttemptParts,
    ResendPolicy,
    attempt_move,
    decide_attempt,
    means_wrong_carrier,
    unknown_reason,
)
from carrierd.domain.au_gate import au_gate_releases
from carrierd.domain.clock import Clock
from carrierd.domain.lifecycle import Event, Move, Note
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.pacing import QuietWindow
from carrierd.domain.receipt_match import (
    Candidate,
    Match,
    ReceiptClues,
    match_receipts,
    part_text,
    sent_at_window,
)
from carrierd.domain.routing import teaches_resolver
from carrierd.domain.states import State
from carrierd.engine.inbound import Inbound
from carrierd.engine.lifecycle import Lifecycle
from carrierd.smpp.receipt import parse_receipt_date
from carrierd.smpp.session import LATE_ANSWER_MIN_KEEP_S, late_answer_keep_s
from carrierd.store.db import Database, Row, Transaction, is_transient_db_error
from carrierd.store.rows import AttemptRow
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.write_behind")

EARLY_RECEIPT_KEEP_S = 3600.0
# After a flush found the database away, the next try waits this long.
TRANSIENT_RETRY_S = 0.5
# How long after leaving a receipt in early_receipts the recorder looks for
# its part at each flush: past any submit_sm_resp timeout.
EARLY_RECEIPT_LOOK_S = 120.0
# A receipt that met no part by id is matched by its other clues only after
# this wait: a receipt that merely beat its response meets its part by id
# long before (and a pending part counts as a candidate anyway).
CORRELATE_AFTER_S = 2.0
# How often a receipt no part fitted (or two did) is tried again: candidates
# change as responses and late answers come in.
CORRELATE_AGAIN_S = 10.0
CORRELATE_BATCH = 500


@dataclass
class _Batch:
    responses: list[SubmittedPart]
    receipts: list[Receipt]
    inbound: list[InboundSms]
    receipt_commits: list[asyncio.Future[None]]
    inbound_commits: list[asyncio.Future[None]]
    # Messages whose grace for a receipt is over: settled from their parts.
    grace_over: list[int]


@dataclass(frozen=True)
class SubmittedPart:
    message_id: int
    attempt: int
    carrier: str
    outcome: PartOutcome
    # The answer to a submit already recorded unknown (response timeout).
    late: bool = False
    # Part 1 sent alone first (engine/sms_leg.py): completed once the flush
    # that records its outcome has committed, True when that flush released
    # the other parts (part 1 accepted), which may leave only then.
    releases: asyncio.Future[bool] | None = field(default=None, compare=False)


class NotDurable(Exception):
    """A receipt or MO the write-behind could not store: its deliver_sm is
    answered with a transient error, and the SMSC delivers it again."""


class WriteBehind:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        lifecycle: Lifecycle,
        inbound: Inbound,
        *,
        accounts: Callable[[], Mapping[str, AccountConfig]],
        carriers: Callable[[], Mapping[str, CarrierConfig]],
        au_spacing_s: Callable[[], float],
        submitted_grace_s: Callable[[], float] = lambda: 0.0,
        flush_interval_s: float = 0.005,
        max_batch: int = 2000,
        max_concurrent_flushes: int = 3,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._lifecycle = lifecycle
        self._inbound_store = inbound
        self._metrics = metrics
        self._receipt_seconds: dict[str, Any] = {}
        self._accounts = accounts
        self._carriers = carriers
        self._au_spacing_s = au_spacing_s
        self._submitted_grace_s = submitted_grace_s
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._responses: list[SubmittedPart] = []
        # Per message, its submit outcomes handed here and not yet written
        # (kept through a database outage): its parts are still 'pending' in
        # the database, yet they left (Dispatcher.release_orphans).
        self._unwritten: Counter[int] = Counter()
        self._receipts: list[Receipt] = []
        self._inbound: list[InboundSms] = []
        self._wake = asyncio.Event()
        # Completed when the receipt (MO) at the same index is committed: the
        # SMSC's deliver_sm is acknowledged only then.
        self._receipt_commits: list[asyncio.Future[None]] = []
        self._inbound_commits: list[asyncio.Future[None]] = []
        # Message id -> when its grace for a receipt ends, in that order (the
        # grace is the same for all, so insertion order is due order).
        self._awaiting_receipt: dict[int, datetime] = {}
        self._early_receipt_at: datetime | None = None
        self._flush_slots = asyncio.Semaphore(max_concurrent_flushes)
        self._flushing: set[asyncio.Task[None]] = set()

    # -- producers (never block: the SMPP read loop calls these) ------------------

    def response(self, part: SubmittedPart) -> None:
        self._unwritten[part.message_id] += 1
        self._responses.append(part)
        if part.outcome.late is not None:
            part.outcome.late.add_done_callback(partial(self._late_response, part))
        self._wake.set()

    def _late_response(self, part: SubmittedPart, late: asyncio.Future[PartOutcome]) -> None:
        if late.cancelled():
            return  # no answer will be read: the part stays unknown
        self.response(
            SubmittedPart(part.message_id, part.attempt, part.carrier, late.result(), late=True)
        )

    def receipt(self, receipt: Receipt) -> asyncio.Future[None] | None:
        """Buffer a receipt; the future completes once it is committed."""
        if receipt.stat.upper() not in FINAL_RECEIPT_STATS:
            return None  # ENROUTE / ACCEPTD: intermediate, nothing to settle
        future = asyncio.get_running_loop().create_future()
        self._receipts.append(receipt)
        self._receipt_commits.append(future)
        self._wake.set()
        return future

    def inbound(self, message: InboundSms) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._inbound.append(message)
        self._inbound_commits.append(future)
        self._wake.set()
        return future

    @property
    def backlog(self) -> int:
        return len(self._responses) + len(self._receipts) + len(self._inbound)

    @property
    def awaiting_receipt(self) -> int:
        """Messages kept 'sending' while their receipt may still come."""
        return len(self._awaiting_receipt)

    def _grace_over(self, now: datetime) -> bool:
        first_due = next(iter(self._awaiting_receipt.values()), None)
        return first_due is not None and first_due <= now

    def _has_work(self, now: datetime) -> bool:
        return bool(self.backlog) or self._grace_over(now)

    # -- the flush loop ------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wait_for_work()
            # A short pause gathers the outcomes of a whole window into one write.
            await asyncio.sleep(self._flush_interval_s)
            while self._has_work(self._clock.now()):
                # While every slot is busy the buffer grows: batches get
                # larger exactly when the database is the bottleneck.
                await self._flush_slots.acquire()
                now = self._clock.now()
                if not self._has_work(now):
                    self._flush_slots.release()
                    break
                task = asyncio.ensure_future(self._flush(self._take_batch(now), now))
                self._flushing.add(task)
                task.add_done_callback(self._flush_finished)

    async def _wait_for_work(self) -> None:
        first_due = next(iter(self._awaiting_receipt.values()), None)
        if first_due is None:
            await self._wake.wait()
        else:
            wait_s = max((first_due - self._clock.now()).total_seconds(), self._flush_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
        self._wake.clear()

    def _flush_finished(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        self._flush_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("recorder_flush_crashed", error=repr(task.exception()))

    async def drain(self) -> None:
        """Write out everything buffered and settle every message awaiting its
        receipt (shutdown: what this daemon holds in memory is written)."""
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)
        while self.backlog or self._awaiting_receipt:
            now = self._clock.now()
            await self._flush(self._take_batch(now, whole_grace=True), now)

    async def flush_once(self) -> None:
        """One flush of what is buffered and of the messages whose grace is over."""
        now = self._clock.now()
        await self._flush(self._take_batch(now), now)

    def _take_batch(self, now: datetime, *, whole_grace: bool = False) -> _Batch:
        n_receipts = min(len(self._receipts), self._max_batch)
        n_inbound = min(len(self._inbound), self._max_batch)
        grace_over: list[int] = []
        for message_id, due in self._awaiting_receipt.items():
            if len(grace_over) >= self._max_batch or (due > now and not whole_grace):
                break
            grace_over.append(message_id)
        for message_id in grace_over:
            del self._awaiting_receipt[message_id]
        batch = _Batch(
            responses=self._responses[: self._max_batch],
            receipts=self._receipts[:n_receipts],
            inbound=self._inbound[:n_inbound],
            receipt_commits=self._receipt_commits[:n_receipts],
            inbound_commits=self._inbound_commits[:n_inbound],
            grace_over=grace_over,
        )
        del self._responses[: len(batch.responses)]
        del self._receipts[:n_receipts]
        del self._inbound[:n_inbound]
        del self._receipt_commits[:n_receipts]
        del self._inbound_commits[:n_inbound]
        return batch

    def unwritten_message_ids(self) -> set[int]:
        """Messages with a submit outcome held here, not yet written."""
        return set(self._unwritten)

    def _written(self, responses: Sequence[SubmittedPart]) -> None:
        for r in responses:
            left = self._unwritten[r.message_id] - 1
            if left > 0:
                self._unwritten[r.message_id] = left
            else:
                self._unwritten.pop(r.message_id, None)

    async def _flush(self, batch: _Batch, now: datetime) -> None:
        responses, receipts, inbound = batch.responses, batch.receipts, batch.inbound
        grace_over = batch.grace_over
        try:
            awaiting, settled = await self._db.in_transaction(
                lambda tx: self._write(tx, responses, receipts, inbound, grace_over, now)
            )
            self._written(responses)
        except Exception as exc:
            if is_transient_db_error(exc):
                # The database is away (restart, outage): the receipts are
                # not durable, so the SMSC is told to deliver them again; the
                # responses exist only here and wait, in front, for the next
                # try. The pause keeps an outage from becoming a busy loop.
                self._keep(responses, grace_over, now)
                self._refuse(batch, exc)
                log.warning(
                    "write_behind_waiting_for_database",
                    responses=len(responses),
                    refused=len(batch.receipt_commits) + len(batch.inbound_commits),
                    error=repr(exc),
                )
                await asyncio.sleep(TRANSIENT_RETRY_S)
                self._wake.set()
                return
            # One bad row must not stall every outcome behind it: write the
            # batch item by item; a receipt or MO that still fails is refused
            # (the SMSC delivers it again), a response is logged and left to
            # the timers.
            log.exception("write_behind_batch_failed", responses=len(responses))
            awaiting, settled = await self._write_one_by_one(batch, now)
        # Only once committed. A receipt settles most messages within their
        # grace; settling them again when it ends would be wasted work (and
        # is harmless when a concurrent flush races this: the message is then
        # found final and left alone).
        for message_id in settled:
            self._awaiting_receipt.pop(message_id, None)
        due = now + timedelta(seconds=self._submitted_grace_s())
        for message_id in awaiting:
            self._awaiting_receipt.setdefault(message_id, due)
        for future in (*batch.receipt_commits, *batch.inbound_commits):
            if not future.done():
                future.set_result(None)

    def _keep(
        self, responses: Sequence[SubmittedPart], grace_over: Sequence[int], now: datetime
    ) -> None:
        self._responses[:0] = responses
        self._awaiting_receipt = {**dict.fromkeys(grace_over, now), **self._awaiting_receipt}

    @staticmethod
    def _refuse(batch: _Batch, exc: BaseException) -> None:
        for future in (*batch.receipt_commits, *batch.inbound_commits):
            if not future.done():
                future.set_exception(NotDurable(repr(exc)))

    async def _write_one_by_one(self, batch: _Batch, now: datetime) -> tuple[set[int], set[int]]:
        items: list[
            tuple[
                list[SubmittedPart],
                list[Receipt],
                list[InboundSms],
                list[int],
                asyncio.Future[None] | None,
            ]
        ] = [
            *(([r], [], [], [], None) for r in batch.responses),
            *(
                ([], [r], [], [], f)
                for r, f in zip(batch.receipts, batch.receipt_commits, strict=True)
            ),
            *(
                ([], [], [m], [], f)
                for m, f in zip(batch.inbound, batch.inbound_commits, strict=True)
            ),
            *(([], [], [], [i], None) for i in batch.grace_over),
        ]
        awaiting: set[int] = set()
        settled: set[int] = set()
        for one_response, one_receipt, one_inbound, one_grace_over, future in items:

            async def write_one(
                tx: Transaction,
                a: list[SubmittedPart] = one_response,
                b: list[Receipt] = one_receipt,
                c: list[InboundSms] = one_inbound,
                d: list[int] = one_grace_over,
            ) -> tuple[set[int], set[int]]:
                return await self._write(tx, a, b, c, d, now)

            try:
                one_awaiting, one_settled = await self._db.in_transaction(write_one)
                awaiting |= one_awaiting
                settled |= one_settled
                self._written(one_response)
            except Exception as exc:
                if future is not None and not future.done():
                    future.set_exception(NotDurable(repr(exc)))
                if is_transient_db_error(exc):
                    # Not this item's fault: a response is kept for the next
                    # flush instead of being dropped.
                    self._keep(one_response, one_grace_over, now)
                    continue
                self._written(one_response)
                for response in one_response:
                    # Not recorded: its other parts stay unsent, never sent.
                    if response.releases is not None and not response.releases.done():
                        response.releases.set_result(False)
                log.exception(
                    "write_behind_item_failed",
                    response=repr(one_response),
                    receipt=repr(one_receipt),
                    message_id=one_grace_over[0] if one_grace_over else None,
                    refused=future is not None,
                )
        return awaiting, settled

    async def _write(
        self,
        tx: Transaction,
        responses: Sequence[SubmittedPart],
        receipts: Sequence[Receipt],
        inbound: Sequence[InboundSms],
        grace_over: Sequence[int],
        now: datetime,
    ) -> tuple[set[int], set[int]]:
        """Write one batch; returns the messages to settle when their grace
        for a receipt ends, and those it settled."""
        touched: set[int] = set(grace_over)
        awaiting: set[int] = set()
        late = [r for r in responses if r.late]
        if late:
            responses = [r for r in responses if not r.late]
        if responses:
            await tx.execute(
                "record_part_responses",
                [r.message_id for r in responses],
                [r.attempt for r in responses],
                [r.outcome.part_no for r in responses],
                [r.outcome.result for r in responses],
                [r.outcome.smsc_message_id for r in responses],
                [r.outcome.command_status for r in responses],
                [r.outcome.bind_id for r in responses],
                now,
                [r.outcome.unknown_cause for r in responses],
            )
            in_doubt = [r for r in responses if r.outcome.result == "unknown"]
            if in_doubt:
                await tx.execute(
                    "note_parts_in_doubt",
                    [r.message_id for r in in_doubt],
                    [r.attempt for r in in_doubt],
                    [r.outcome.part_no for r in in_doubt],
                )
            releasing = [r for r in responses if r.releases is not None]
            if releasing:
                await self._release_parts_after_part_one(tx, releasing, now)
            accepted = {r.message_id for r in responses if r.outcome.result == "accepted"}
            # A refusal or an unsendable part decides now (reroute, fail).
            decisive = {r.message_id for r in responses} - accepted
            touched |= decisive
            if self._submitted_grace_s() > 0:
                awaiting = accepted - decisive
            else:
                touched |= accepted
        if late:
            recorded = await tx.fetch(
                "record_late_responses",
                [r.message_id for r in late],
                [r.attempt for r in late],
                [r.outcome.part_no for r in late],
                [r.outcome.result for r in late],
                [r.outcome.smsc_message_id for r in late],
                [r.outcome.command_status for r in late],
                [r.outcome.bind_id for r in late],
                now,
            )
            touched.update(r["message_id"] for r in recorded)
            if any(r.outcome.result == "accepted" for r in late):
                # Its receipt may have come first and wait for the id.
                self._early_receipt_at = now
        changed_parts: list[Row] = []
        if receipts:
            for row in await tx.fetch(
                "record_receipts",
                [r.carrier for r in receipts],
                [r.smsc_message_id for r in receipts],
                [r.stat.upper() for r in receipts],
                [r.err for r in receipts],
                [r.received_at for r in receipts],
                [r.alt_smsc_message_id for r in receipts],
                [r.recipient_addr for r in receipts],
                [r.submit_date for r in receipts],
                [r.text_start for r in receipts],
            ):
                if row["state"] == "early":
                    self._early_receipt_at = now
                else:
                    changed_parts.append(row)
        # Receipts that beat their response wait in early_receipts. Looking
        # for them costs a statement per flush; so the recorder looks only
        # while some it left there may still meet their part, and the
        # settler's sweep (every pass) finds the rest, and those that
        # reached another daemon.
        early_recent = (
            self._early_receipt_at is not None
            and (now - self._early_receipt_at).total_seconds() < EARLY_RECEIPT_LOOK_S
        )
        if (responses or receipts) and early_recent:
            changed_parts += await tx.fetch("apply_early_receipts")
        touched.update(p["message_id"] for p in changed_parts)
        if changed_parts:
            tx.after_commit(lambda: self._observe_receipts(changed_parts))
        if inbound:
            await self._inbound_store.store_sms(tx, inbound, now)
        if touched:
            moved = await self.settle(tx, sorted(touched), now)
            await self._bill_late_parts(tx, changed_parts, _billed_with_move(moved), now)
        return awaiting - touched, touched

    @staticmethod
    async def _release_parts_after_part_one(
        tx: Transaction, releasing: Sequence[SubmittedPart], now: datetime
    ) -> None:
        """The other parts of each accepted part 1 become pending here, in
        the transaction that records the acceptance; they leave once it has
        committed (their sender waits on `releases`)."""
        accepted = [r for r in releasing if r.outcome.result == "accepted"]
        released: set[tuple[int, int]] = set()
        if accepted:
            released = {
                (row["message_id"], row["attempt"])
                for row in await tx.fetch(
                    "release_parts_after_part_one",
                    [r.message_id for r in accepted],
                    [r.attempt for r in accepted],
                    now,
                )
            }

        def answer() -> None:
            for r in releasing:
                if r.releases is not None and not r.releases.done():
                    r.releases.set_result((r.message_id, r.attempt) in released)

        tx.after_commit(answer)

    async def _bill_late_parts(
        self, tx: Transaction, parts: Sequence[Row], billed: set[int], now: datetime
    ) -> None:
        """Parts delivered after their attempt was settled (`unknown`
        included) are billed on their own (§11: they reached the handset);
        the parts of an attempt whose move in this flush billed them
        (`billed`) are not billed twice."""
        delivered = [
            p for p in parts if p["state"] == "delivered" and p["message_id"] not in billed
        ]
        if not delivered:
            return
        settled = {
            (r["message_id"], r["attempt"])
            for r in await tx.fetch(
                "settled_attempts",
                [p["message_id"] for p in delivered],
                [p["attempt"] for p in delivered],
            )
        }
        late: dict[int, list[Row]] = defaultdict(list)
        for p in delivered:
            if (p["message_id"], p["attempt"]) in settled:
                late[p["message_id"]].append(p)
        await self._lifecycle.note(
            tx,
            [
                Note(
                    message_id,
                    None,
                    Event.PART_DELIVERED_LATE,
                    detail={"attempt": ps[0]["attempt"], "parts": len(ps)},
                    sms_units=sum(p["units"] for p in ps),
                    billed_at=max(p["receipt_at"] for p in ps),
                )
                for message_id, ps in sorted(late.items())
            ],
            now,
        )

    async def correlate_receipts(self, tx: Transaction, now: datetime) -> int:
        """Give receipts whose id met no part to the one part their other
        clues fit (see the module docstring); returns the messages moved."""
        waiting = await tx.fetch(
            "early_receipts_to_correlate",
            now - timedelta(seconds=CORRELATE_AFTER_S),
            now - timedelta(seconds=CORRELATE_AGAIN_S),
            CORRELATE_BATCH,
        )
        if not waiting:
            return 0
        clues: list[ReceiptClues | None] = [_clues(r) for r in waiting]
        looked_up = [(i, c) for i, c in enumerate(clues) if c is not None]
        by_index = dict(looked_up)
        candidates: dict[int, list[Candidate]] = defaultdict(list)
        if looked_up:
            windows = [sent_at_window(c) for _, c in looked_up]
            for row in await tx.fetch(
                "doubt_candidates",
                [i for i, _ in looked_up],
                [c.carrier for _, c in looked_up],
                [c.msisdn for _, c in looked_up],
                [w[0] for w in windows],
                [w[1] for w in windows],
            ):
                candidates[row["receipt"]].append(
                    Candidate(
                        row["message_id"],
                        row["attempt"],
                        row["part_no"],
                        row["sent_at"],
                        part_text(
                            row["sms_text"] or "",
                            row["sms_encoding"] or "ucs2",
                            row["part_no"],
                            row["part_total"],
                        ),
                        answer_may_come=self._answer_may_come(
                            row, by_index[row["receipt"]].carrier, now
                        ),
                    )
                )
        matched = iter(match_receipts([(c, candidates[i]) for i, c in looked_up]))
        matches = [next(matched) if c is not None else Match(None, 0) for c in clues]
        found = [(r, m.part) for r, m in zip(waiting, matches, strict=True) if m.part is not None]
        unmatched = [(r, m) for r, m in zip(waiting, matches, strict=True) if m.part is None]
        changed_parts: list[Row] = []
        if found:
            changed_parts = await tx.fetch(
                "correlate_receipts",
                [r["carrier"] for r, _ in found],
                [r["smsc_message_id"] for r, _ in found],
                [p.message_id for _, p in found],
                [p.attempt for _, p in found],
                [p.part_no for _, p in found],
            )
        newly_ambiguous: list[str] = []
        if unmatched:
            newly_ambiguous = [
                r["carrier"]
                for r in await tx.fetch(
                    "mark_receipts_checked",
                    [r["carrier"] for r, _ in unmatched],
                    [r["smsc_message_id"] for r, _ in unmatched],
                    now,
                    [m.fitting > 1 for _, m in unmatched],
                )
                if r["newly_ambiguous"]
            ]
        if changed_parts or newly_ambiguous:
            log.info(
                "receipts_correlated",
                matched=len(changed_parts),
                ambiguous=len(newly_ambiguous),
            )
        correlated = [p["carrier"] for p in changed_parts]
        tx.after_commit(lambda: self._count_correlation(correlated, newly_ambiguous))
        return await self.settle_receipted(tx, changed_parts, now)

    def _answer_may_come(self, part: Row, carrier: str, now: datetime) -> bool:
        """Whether a candidate part may still hear its submit_sm_resp: it is
        pending, or its response timed out within the late-answer keep time."""
        if part["state"] == "pending":
            return True
        if part["unknown_cause"] != "response_timeout" or part["resp_at"] is None:
            return False
        config = self._carriers().get(carrier)
        keep_s = (
            late_answer_keep_s(config.response_timeout_s)
            if config is not None
            else LATE_ANSWER_MIN_KEEP_S
        )
        return bool((now - part["resp_at"]).total_seconds() < keep_s)

    async def settle_receipted(self, tx: Transaction, parts: Sequence[Row], now: datetime) -> int:
        """Settle the messages of parts a receipt just changed outside a
        flush (the settler's sweep), billing parts delivered after their
        attempt was settled; returns the messages moved."""
        if not parts:
            return 0
        tx.after_commit(lambda: self._observe_receipts(parts))
        moved = await self.settle(tx, sorted({p["message_id"] for p in parts}), now)
        await self._bill_late_parts(tx, parts, _billed_with_move(moved), now)
        return len(moved)

    def _count_correlation(self, correlated: Sequence[str], ambiguous: Sequence[str]) -> None:
        if self._metrics is None:
            return
        for carrier in correlated:
            self._metrics.receipts_correlated_total.labels(carrier).inc()
        for carrier in ambiguous:
            self._metrics.receipts_ambiguous_total.labels(carrier).inc()

    def _observe_receipts(self, parts: Sequence[Row]) -> None:
        """receipt_seconds: from the submit_sm_resp to the receipt, per carrier."""
        if self._metrics is None:
            return
        for part in parts:
            if part["resp_at"] is None or part["receipt_at"] is None:
                continue
            carrier = part["carrier"]
            child = self._receipt_seconds.get(carrier)
            if child is None:
                child = self._receipt_seconds[carrier] = self._metrics.receipt_seconds.labels(
                    carrier
                )
            child.observe(max(0.0, (part["receipt_at"] - part["resp_at"]).total_seconds()))

    async def settle(
        self, tx: Transaction, message_ids: Sequence[int], now: datetime
    ) -> list[Move]:
        """Move each message to what its current attempt's parts say;
        returns the moves that applied."""
        await tx.execute("lock_messages", list(message_ids))
        rows = [AttemptRow.from_row(r) for r in await tx.fetch("attempt_parts", list(message_ids))]
        moves: list[Move] = []
        learned: list[tuple[str, str]] = []
        au_released: list[tuple[str, datetime]] = []
        au_opened: list[str] = []
        accounts = self._accounts()
        carriers = self._carriers()
        policies: dict[str, ResendPolicy] = {}
        for row in rows:
            carrier_config = carriers.get(row.carrier)
            if carrier_config is not None and row.route is not None:
                # The route's SMSC says "not our subscriber" in its own codes.
                carrier_config = carrier_config.route_config(row.route) or carrier_config
            policy = policies.get(row.account_id)
            if policy is None:
                policy = policies[row.account_id] = _resend_policy(accounts.get(row.account_id))
            facts = AttemptFacts(
                message_id=row.id,
                carrier=row.carrier,
                attempt=row.attempt,
                resends_done=row.resends_done,
                parts=_attempt_parts(row, carrier_config),
                last_receipt_at=row.last_receipt_at,
                last_resp_at=row.last_resp_at,
                carrier_named=row.carrier_named,
            )
            outcome = decide_attempt(
                facts.parts,
                now,
                resends_done=row.resends_done,
                policy=policy,
            )
            if outcome is None:
                continue
            timeout_s = carrier_config.receipt_timeout_s if carrier_config else 72 * 3600.0
            moves.append(attempt_move(facts, outcome, now, receipt_timeout_s=timeout_s))
            if outcome.to_state is State.DELIVERED and teaches_resolver(
                row.learned_carrier, row.carrier
            ):
                learned.append((row.msisdn, row.carrier))
            release = au_gate_releases(
                carrier=row.carrier,
                last_receipt_at=row.last_receipt_at,
                to_state=outcome.to_state,
                reroute=outcome.reroute,
            )
            if release is not None and release.arrived_at is not None:
                au_released.append((row.msisdn, release.arrived_at))
            elif release is not None:
                au_opened.append(row.msisdn)
        if learned:
            # In key order, like every multi-row upsert here: concurrent
            # flushes then wait for each other instead of deadlocking.
            learned.sort()
            await tx.execute(
                "learn_carriers",
                [m for m, _ in learned],
                [c for _, c in learned],
                [now] * len(learned),
            )
        if au_released:
            await tx.execute(
                "au_gate_release",
                [m for m, _ in au_released],
                [t for _, t in au_released],
                self._au_spacing_s(),
            )
        if au_opened:
            await tx.execute("au_gate_open", sorted(set(au_opened)), now)
        applied = await self._lifecycle.apply(tx, moves, now)
        return [a.move for a in applied]


def _clues(row: Row) -> ReceiptClues | None:
    """What a waiting receipt says about its part; None when it names no
    recipient we could have sent to."""
    try:
        msisdn = normalize_msisdn(row["recipient_addr"] or "", allow_m2m=True)
    except NumberError:
        return None
    return ReceiptClues(
        carrier=row["carrier"],
        msisdn=msisdn,
        received_at=row["received_at"],
        submit_date=parse_receipt_date(row["submit_date"]),
        text_start=row["text_start"],
        second_look=row["checked_at"] is not None,
    )


def _billed_with_move(moves: Sequence[Move]) -> set[int]:
    """Messages whose move billed their attempt's delivered parts: every
    settling move but one from `unknown`, whose parts were billed at the
    move into it or as they arrived (domain/attempt.attempt_move)."""
    return {m.message_id for m in moves if m.src is not State.UNKNOWN}


def _resend_policy(account: AccountConfig | None) -> ResendPolicy:
    if account is None:
        return ResendPolicy(0, 600.0, None)
    resend = account.resend
    quiet = None
    if resend.quiet_window is not None:
        quiet = QuietWindow(resend.quiet_window.start, resend.quiet_window.end)
    return ResendPolicy(resend.max_resends, resend.interval_s, quiet)


def _attempt_parts(row: AttemptRow, carrier: CarrierConfig | None) -> AttemptParts:
    refused_status = row.refused_status
    failed_err = row.failed_err
    wrong_carrier = carrier is not None and means_wrong_carrier(
        refused_status,
        failed_err,
        statuses=carrier.wrong_carrier_statuses,
        receipt_errors=carrier.wrong_carrier_receipt_errors,
    )
    failure = None
    if row.failed:
        failure = reasons.from_receipt(row.failed_stat or "UNDELIV", failed_err)
    return AttemptParts(
        state=State(row.state),
        total=row.total,
        pending=row.pending,
        accepted=row.accepted,
        refused=row.refused,
        delivered=row.delivered,
        failed=row.failed,
        unknown=row.unknown,
        unsent=row.unsent,
        wrong_carrier=wrong_carrier,
        refused_status=refused_status,
        failure=failure,
        delivered_units=row.delivered_units,
        unknown_reason=(
            unknown_reason(
                row.unknown_cause, carrier.response_timeout_s if carrier is not None else 10.0
            )
            if row.unknown
            else None
        ),
    )
