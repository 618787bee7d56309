"""The lifecycle writer: the only code that writes a message's state.

Every state change of every message is a checked `Move` (domain/lifecycle.py)
applied here, inside the caller's transaction, with every effect that must
commit or roll back with it:

  - the history event (message_events), in the same statement;
  - parts whose outcome became unknown with their message;
  - billing units on the message and in billing_counts (§11), per JST month;
  - the durable status callback (the outbox the ops/callbacks sender drains);
  - metrics, counted only once the transaction has committed.

Follow-ups and auto-replies (§14) will hang here too: they are effects of a
state change. History without a state change (`Note`) goes through here as
well, so message_events has one writer.

A Move whose row is no longer in the state it was decided from (another
daemon, a concurrent flush or a webhook moved it first) is left alone, and
none of its effects happen: the returned rows are the moves that applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carrierd.domain.billing import billing_month
from carrierd.domain.lifecycle import Event, Move, Note
from carrierd.domain.states import FINAL_STATES, State
from carrierd.domain.status import callback_payload
from carrierd.store.db import Transaction
from carrierd.telemetry import Metrics


@dataclass(frozen=True, slots=True)
class Applied:
    """A move that applied, with what its effects needed of the row."""

    move: Move
    account_id: str
    channel: str
    carrier: str | None


@dataclass(frozen=True, slots=True)
class _Bill:
    account_id: str
    month: str
    channel: str
    units: int


class Lifecycle:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        # labels() looks its child up under a lock on every call; a few
        # label sets exist, so keep them.
        self._children: dict[tuple[Any, ...], Any] = {}

    async def apply(self, tx: Transaction, moves: Sequence[Move], now: datetime) -> list[Applied]:
        """Apply `moves` (one per message) in `tx`; returns those that applied."""
        if not moves:
            return []
        rows = await tx.fetch("apply_moves", *_move_arrays(moves), now)
        if not rows:
            return []
        by_id = {m.message_id: m for m in moves}
        applied = [
            Applied(by_id[r["id"]], r["account_id"], r["channel"], r["carrier"]) for r in rows
        ]
        unknown = [a.move.message_id for a in applied if a.move.dst is State.UNKNOWN]
        if unknown:
            # The parts still open take their message's outcome: nobody knows.
            await tx.execute("parts_outcome_unknown", unknown)
        notify = [
            r["id"]
            for r in rows
            if r["callback_url"]
            and (State(r["state"]) in FINAL_STATES or r["callback_every_change"])
        ]
        if notify:
            await self._enqueue_callbacks(tx, notify, now)
        bills = [
            bill
            for a in applied
            for bill in _bills(a.account_id, a.move.billed_at, a.move.sms_units, a.move.rcs_units)
        ]
        # Last: every writer adds to the same (account, month) rows, whose
        # locks are then held until commit for the shortest time.
        await self._add_billing(tx, bills)
        tx.after_commit(lambda: self._count(applied, bills))
        return applied

    async def note(self, tx: Transaction, notes: Sequence[Note], now: datetime) -> list[int]:
        """Log history without a state change; returns the messages noted."""
        if not notes:
            return []
        rows = await tx.fetch(
            "apply_notes",
            [n.message_id for n in notes],
            [n.state.value if n.state is not None else None for n in notes],
            [n.event.value for n in notes],
            [_json(n.detail) for n in notes],
            [n.fallback_at for n in notes],
            [n.rcs_units for n in notes],
            [n.once for n in notes],
            now,
            [n.sms_units for n in notes],
        )
        by_id = {n.message_id: n for n in notes}
        bills: list[_Bill] = []
        for r in rows:
            noted = by_id[r["id"]]
            rcs_units = noted.rcs_units if r["bills"] else 0
            bills += _bills(r["account_id"], noted.billed_at, noted.sms_units, rcs_units)
        await self._add_billing(tx, bills)
        tx.after_commit(lambda: self._count([], bills))
        return [r["id"] for r in rows]

    async def _enqueue_callbacks(
        self, tx: Transaction, message_ids: Sequence[int], now: datetime
    ) -> None:
        """The status document of each message, queued in the same
        transaction as its move: a restart never loses a callback."""
        rows = await tx.fetch("status_documents", sorted(message_ids))
        for row in rows:
            payload = callback_payload(row, now)
            await tx.fetchval(
                "insert_status_callback",
                row["id"],
                row["account_id"],
                row["callback_url"],
                payload,
                now,
            )

    async def _add_billing(self, tx: Transaction, bills: Sequence[_Bill]) -> None:
        totals: dict[tuple[str, str, str], int] = {}
        for bill in bills:
            key = (bill.account_id, bill.month, bill.channel)
            totals[key] = totals.get(key, 0) + bill.units
        if not totals:
            return
        # In key order, like every multi-row upsert here: concurrent writers
        # then wait for each other instead of deadlocking.
        keys = sorted(totals)
        await tx.execute(
            "add_billing",
            [a for a, _, _ in keys],
            [m for _, m, _ in keys],
            [c for _, _, c in keys],
            [totals[k] for k in keys],
        )

    def _count(self, applied: Iterable[Applied], bills: Iterable[_Bill]) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        for a in applied:
            move = a.move
            self._inc(metrics.transitions_total, move.src.value, move.dst.value)
            if move.dst in FINAL_STATES:
                self._inc(metrics.messages_final_total, a.channel, move.dst.value)
            if move.dst is State.EXPIRED:
                self._inc(metrics.expiries_total, a.channel)
            if move.event is Event.REROUTED:
                wrong = (move.detail or {}).get("wrong_carrier", "")
                self._inc(metrics.reroutes_total, str(wrong))
            elif move.event is Event.RESEND_SCHEDULED:
                self._inc(metrics.resends_total, a.carrier or "")
            elif move.event is Event.FALLBACK:
                self._inc(metrics.fallbacks_total, str((move.detail or {}).get("cause", "")))
        for bill in bills:
            self._inc(
                metrics.billing_units_total,
                bill.account_id,
                bill.channel,
                bill.month,
                amount=bill.units,
            )

    def _inc(self, metric: Any, *labels: str, amount: int = 1) -> None:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        child.inc(amount)


def _bills(
    account_id: str, billed_at: datetime | None, sms_units: int, rcs_units: int
) -> list[_Bill]:
    if billed_at is None:
        return []
    month = billing_month(billed_at)
    bills = []
    if sms_units:
        bills.append(_Bill(account_id, month, "sms", sms_units))
    if rcs_units:
        bills.append(_Bill(account_id, month, "rcs", rcs_units))
    return bills


def _json(detail: Any) -> str | None:
    return None if detail is None else json.dumps(detail, ensure_ascii=False)


def _move_arrays(moves: Sequence[Move]) -> list[list[Any]]:
    return [
        [m.message_id for m in moves],
        [m.src.value for m in moves],
        [m.dst.value for m in moves],
        [m.reason.code if m.reason else None for m in moves],
        [m.reason.text if m.reason else None for m in moves],
        [m.not_before for m in moves],
        [m.receipt_deadline for m in moves],
        [m.fallback_at for m in moves],
        [m.expires_at for m in moves],
        [m.submitted_at for m in moves],
        [m.leg for m in moves],
        [m.carrier for m in moves],
        [m.attempt for m in moves],
        [m.resends_done for m in moves],
        [m.wrong_carrier for m in moves],
        [m.lease_owner for m in moves],
        [m.lease_until for m in moves],
        [m.sms_units for m in moves],
        [m.rcs_units for m in moves],
        [m.event.value for m in moves],
        [_json(m.detail) for m in moves],
    ]
