"""Timers: every timer is a row (DESIGN principle 4); this claims the due ones.

Each `settle_once(now)` pass:
  - scheduled sends' opt-out checks due 15 minutes before send_at (§12):
    the verdict recorded, and a send to a listed number → skipped
  - scheduled sends whose time came → queued
  - messages whose validity ended before they left → expired
  - submitted messages with no final receipt by the deadline → unknown (§9, §10)
  - lost leases (a daemon died): claimed-but-not-sent → queued again; parts in
    flight with no response → unknown "outcome unknown after restart", unless
    the account opted into at-least-once (then queued and resent). After a
    database outage lost leases are recovered only after a grace
    (domain/outage.py): every daemon's leases ran out during the outage,
    this one's included, not only dead ones'; the grace lets each daemon's
    dispatcher renew its own first.
  - receipts that beat their response meet their part (across daemons too);
    those whose part never learns an id (its response was lost) are given
    to the one part their recipient, submit date and text fit
  - au gate holds whose re-check is long past, released by no receipt, go
  - +Message fallback and expiry timers, through the RCS leg when configured
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from carrierd.config import Config
from carrierd.domain import reasons
from carrierd.domain.clock import Clock
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.outage import lost_lease_grace_s, may_recover_lost_leases
from carrierd.domain.receipt_match import MAX_RECEIPT_AGE_S
from carrierd.domain.states import State
from carrierd.engine.leases import Leases
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.write_behind import EARLY_RECEIPT_KEEP_S, WriteBehind
from carrierd.loops import MAX_BACKOFF_S, supervise
from carrierd.store.db import Database, Row, Transaction, is_database_unreachable
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.timers")

# A held au message is re-checked at its hold's time; the row that lets a
# final receipt release it earlier is kept this much longer, then dropped.
AU_GATE_HOLD_KEEP_S = 600.0


class RcsTimers(Protocol):
    async def settle_due(self, now: datetime, limit: int) -> int: ...


class Timers:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        write_behind: WriteBehind,
        lifecycle: Lifecycle,
        leases: Leases,
        *,
        config: Callable[[], Config],
        batch: int = 1000,
        interval_s: float = 0.5,
        rcs_timers: RcsTimers | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._write_behind = write_behind
        self._lifecycle = lifecycle
        self._leases = leases
        self._config = config
        self._batch = batch
        self._interval_s = interval_s
        self.rcs_timers = rcs_timers
        self._metrics = metrics
        self._stopping = asyncio.Event()
        # A pass failed for the database being away; the next one that
        # reaches it notes when: lost leases wait for a grace after that.
        self._database_failed = False
        self._database_back_at: datetime | None = None

    async def run(self) -> None:
        await supervise("timers", self.settle_step, self._stopping)

    async def settle_step(self) -> float:
        """One turn of the loop; returns how long to wait before the next."""
        now = self._clock.now()
        if self._database_failed:
            # Maybe back: if this pass gets through, the grace starts now.
            self._database_back_at = now
        try:
            await self.settle_once(now)
        except Exception as exc:
            if is_database_unreachable(exc):
                self._database_failed = True
            raise
        self._database_failed = False
        return self._interval_s

    def stop(self) -> None:
        self._stopping.set()

    async def settle_once(self, now: datetime) -> int:
        done = 0
        # Before the sends they gate fall due, should both be due at once.
        done += await self._in_tx(lambda tx: self._optout_checks(tx, now))
        done += await self._in_tx(lambda tx: self._scheduled(tx, now))
        done += await self._in_tx(lambda tx: self._expired(tx, now))
        done += await self._in_tx(lambda tx: self._receipt_timeouts(tx, now))
        grace_s = lost_lease_grace_s(self._config().engine.lease_s, MAX_BACKOFF_S)
        if may_recover_lost_leases(now, self._database_back_at, grace_s):
            done += await self._in_tx(lambda tx: self._lost_leases(tx, now))
        done += await self._in_tx(lambda tx: self._early_receipts(tx, now))
        if self.rcs_timers is not None:
            done += await self.rcs_timers.settle_due(now, self._batch)
        return done

    async def _in_tx(self, work: Callable[[Transaction], Awaitable[int]]) -> int:
        return await self._db.in_transaction(work)

    async def _apply(self, tx: Transaction, moves: list[Move], now: datetime) -> int:
        return len(await self._lifecycle.apply(tx, moves, now))

    async def _scheduled(self, tx: Transaction, now: datetime) -> int:
        rows = await tx.fetch("due_scheduled", now, self._batch)
        return await self._apply(
            tx, [Move(r["id"], State.SCHEDULED, State.QUEUED, Event.DUE) for r in rows], now
        )

    async def _optout_checks(self, tx: Transaction, now: datetime) -> int:
        due = [r["id"] for r in await tx.fetch("due_optout_checks", now, self._batch)]
        if not due:
            return 0
        verdicts = await tx.fetch("record_optout_verdicts", due, now)
        # A send already queued (a check run late) is skipped by the
        # dispatcher's gate on the verdict; a final one needs nothing.
        skips = [
            Move(r["id"], State.SCHEDULED, State.SKIPPED, Event.SKIPPED, reasons.OPTED_OUT)
            for r in verdicts
            if r["opted_out"] and r["state"] == State.SCHEDULED
        ]
        await self._apply(tx, skips, now)
        return len(due)

    async def _expired(self, tx: Transaction, now: datetime) -> int:
        rows = await tx.fetch("due_expired", now, self._batch)
        return await self._apply(
            tx,
            [
                Move(
                    r["id"],
                    State(r["state"]),
                    State.EXPIRED,
                    Event.EXPIRED,
                    reasons.VALIDITY_EXPIRED,
                )
                for r in rows
            ],
            now,
        )

    async def _receipt_timeouts(self, tx: Transaction, now: datetime) -> int:
        rows = await tx.fetch("due_receipt_timeouts", now, self._batch)
        return await self._apply(
            tx,
            [
                Move(
                    r["id"],
                    State.SUBMITTED,
                    State.UNKNOWN,
                    Event.RECEIPT_TIMEOUT,
                    reasons.RECEIPT_TIMEOUT,
                    sms_units=r["delivered_units"],
                    billed_at=r["last_receipt_at"] or now,
                )
                for r in rows
            ],
            now,
        )

    async def _lost_leases(self, tx: Transaction, now: datetime) -> int:
        moved, settle_from_parts = await self._leases.recover_lost(tx, now, self._batch)
        if settle_from_parts:
            moved += len(await self._write_behind.settle(tx, settle_from_parts, now))
        return moved

    async def _early_receipts(self, tx: Transaction, now: datetime) -> int:
        changed: list[Row] = await tx.fetch("apply_early_receipts")
        for dropped in await tx.fetch(
            "expire_stale_early_receipts", now - timedelta(seconds=EARLY_RECEIPT_KEEP_S)
        ):
            # Often a carrier writing its ids in a base its config does not say.
            log.warning(
                "receipt_unmatched",
                carrier=dropped["carrier"],
                smsc_message_id=dropped["smsc_message_id"],
                alt_smsc_message_id=dropped["alt_smsc_message_id"],
                stat=dropped["stat"],
                waited_s=(now - dropped["received_at"]).total_seconds(),
            )
            if self._metrics is not None:
                self._metrics.receipts_unmatched_total.labels(dropped["carrier"]).inc()
        await tx.execute("expire_stale_au_gate_holds", now - timedelta(seconds=AU_GATE_HOLD_KEEP_S))
        await tx.execute("forget_old_doubts", now - timedelta(seconds=MAX_RECEIPT_AGE_S))
        # A part the sweep delivers may belong to an attempt already settled
        # (a concurrent flush failed it on another part): billed on its own.
        moved = await self._write_behind.settle_receipted(tx, changed, now)
        return moved + await self._write_behind.correlate_receipts(tx, now)
