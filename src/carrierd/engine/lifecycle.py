"""The lifecycle writer: the only code that writes a message's state.

Every state change of every message is a checked `Move` (domain/lifecycle.py)
applied here, inside the caller's transaction, with every effect that must
commit or roll back with it:

  - the history event (message_events), in the same statement;
  - parts whose outcome became unknown with their message;
  - billing units on the message and in billing_counts (§11), per JST month;
  - the durable status callback (the outbox the ops/callbacks sender drains);
  - metrics, counted only once the transaction has committed.

Follow-ups (§14) hang here: the move that ends a message releases or skips
its waiting follow-up (domain/follow_up.py decides) in the same
transaction, so a crash cannot separate the delivery from the release.
Auto-replies will hang here too: they are effects of a state change.
History without a state change (`Note`) goes through here as well, so
message_events has one writer.

A Move whose row is no longer in the state it was decided from (another
daemon, a concurrent flush or a webhook moved it first) is left alone, and
none of its effects happen: the returned rows are the moves that applied.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from carrierd.config import PREMIUM
from carrierd.domain.attempt import ATTEMPT_ENDED
from carrierd.domain.billing import billing_month
from carrierd.domain.follow_up import decide_follow_up
from carrierd.domain.lifecycle import Event, Move, Note
from carrierd.domain.states import FINAL_STATES, State
from carrierd.domain.status import callback_payload
from carrierd.store.db import Transaction
from carrierd.telemetry import Metrics


@dataclass(slots=True)
class Applied:
    """A move that applied, with what its effects needed of the row."""

    move: Move
    account_id: str
    channel: str
    carrier: str | None
    route: str | None


class Lifecycle:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        # labels() looks its child up under a lock on every call; a few
        # label sets exist, so keep them.
        self._children: dict[tuple[Any, ...], Any] = {}
        # Per transaction (`bills_at_end`): units added at its end.
        self._deferred: dict[int, _Bills] = {}

    async def apply(self, tx: Transaction, moves: Sequence[Move], now: datetime) -> list[Applied]:
        """Apply `moves` (one per message) in `tx`; returns those that applied."""
        if not moves:
            return []
        by_id = _one_each(moves)
        # apply_moves takes the 28 column arrays, then the time ($29).
        rows = await tx.fetch("apply_moves", *_move_arrays(moves), now)
        if not rows:
            return []
        applied = [
            Applied(by_id[r["id"]], r["account_id"], r["channel"], r["carrier"], r["route"])
            for r in rows
        ]
        unknown = [a.move.message_id for a in applied if a.move.dst is State.UNKNOWN]
        if unknown:
            # The parts still open take their message's outcome: nobody knows.
            await tx.execute("parts_outcome_unknown", unknown, None, True)
        left_open = [
            a.move.message_id
            for a in applied
            if a.move.src in _ATTEMPT_OPEN and a.move.dst in _ENDS_ATTEMPT_EARLY
        ]
        if left_open:
            # An attempt that ended on one part (a failed receipt, a reroute)
            # may leave others still waiting for their response: they are in
            # doubt, so that their answer or receipt still finds and bills them.
            await tx.execute("parts_outcome_unknown", left_open, ATTEMPT_ENDED, False)
        notify = [
            r["id"]
            for r in rows
            if r["callback_url"]
            and (r["state"] in _FINAL_VALUES or r["callback_every_change"])
            # The same wait again changed nothing a receiver could see.
            and not r["wait_repeated"]
        ]
        if notify:
            await self._enqueue_callbacks(tx, notify, now)
        deferred = self._deferred.get(id(tx))
        bills = _Bills() if deferred is None else deferred
        for a in applied:
            move = a.move
            if move.billed_at is not None:
                bills.add(
                    a.account_id,
                    a.route,
                    move.billed_at,
                    move.sms_units,
                    move.rcs_units,
                    move.reassign_units,
                )
        ended = {r["id"]: r["state"] for r in rows if r["state"] in _FINAL_VALUES}
        if ended:
            await self._follow_ups(tx, ended, now)
        if deferred is not None:
            tx.after_commit(lambda: self._count(applied, _NO_BILLS))
            return applied
        # Last: every writer adds to the same (account, month) rows, whose
        # locks are then held until commit for the shortest time.
        await self._add_billing(tx, bills)
        tx.after_commit(lambda: self._count(applied, bills))
        return applied

    @contextlib.asynccontextmanager
    async def bills_at_end(self, tx: Transaction) -> AsyncIterator[None]:
        """The billing units of every move and note applied in `tx` inside
        this block, added to billing_counts once, at its end. A transaction
        that does more after its moves (the legs' planning after the gate's
        verdicts) would otherwise hold the (account, month) rows every
        writer adds to for all of it, and concurrent ones queue on them."""
        bills = _Bills()
        self._deferred[id(tx)] = bills
        try:
            yield
        finally:
            del self._deferred[id(tx)]
        await self._add_billing(tx, bills)
        tx.after_commit(lambda: self._count([], bills))

    async def _follow_ups(self, tx: Transaction, ended: dict[int, str], now: datetime) -> None:
        """Release or skip the follow-ups waiting for messages that just
        ended: in this transaction, as moves of their own (a follow-up's own
        follow-up is then decided the same way)."""
        waiting = await tx.fetch("waiting_follow_ups", list(ended))
        moves = [
            move
            for w in waiting
            if (
                move := decide_follow_up(
                    w["id"],
                    w["after_message_id"],
                    State(ended[w["after_message_id"]]),
                    w["delay_s"],
                    w["validity_s"],
                    now,
                )
            )
            is not None
        ]
        if moves:
            await self.apply(tx, moves, now)

    async def note(self, tx: Transaction, notes: Sequence[Note], now: datetime) -> list[int]:
        """Log history without a state change; returns the messages noted."""
        if not notes:
            return []
        by_id = _one_each(notes)
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
        deferred = self._deferred.get(id(tx))
        bills = _Bills() if deferred is None else deferred
        for r in rows:
            noted = by_id[r["id"]]
            if noted.billed_at is not None:
                rcs_units = noted.rcs_units if r["bills"] else 0
                bills.add(r["account_id"], r["route"], noted.billed_at, noted.sms_units, rcs_units)
        if deferred is None:
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

    async def _add_billing(self, tx: Transaction, bills: _Bills) -> None:
        if not bills.units:
            return
        # In key order, like every multi-row upsert here: concurrent writers
        # then wait for each other instead of deadlocking.
        keys = sorted(bills.units)
        await tx.execute(
            "add_billing",
            [a for a, _, _, _ in keys],
            [m for _, m, _, _ in keys],
            [c for _, _, c, _ in keys],
            [bills.units[k] for k in keys],
            [r for _, _, _, r in keys],
        )

    def _count(self, applied: Sequence[Applied], bills: _Bills) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        # Tallied first, then one increment per label set: a counter's
        # labels() and inc() each take a lock, and a flush moves thousands.
        counts: Counter[tuple[Any, ...]] = Counter()
        moved = Counter([(a.move.src, a.move.dst, a.channel) for a in applied])
        for (src, dst, channel), n in moved.items():
            counts[(metrics.transitions_total, src, dst)] += n
            if dst in FINAL_STATES:
                counts[(metrics.messages_final_total, channel, dst)] += n
            if dst is State.EXPIRED:
                counts[(metrics.expiries_total, channel)] += n
        for a in applied:
            if a.move.event in _LABELLED_BY_MOVE:
                counts[_labelled(metrics, a)] += 1
        for (account_id, _month, channel, _route), units in bills.units.items():
            counts[(metrics.billing_units_total, account_id, channel)] += units
        for (metric, *labels), amount in counts.items():
            self._inc(metric, *labels, amount=amount)

    def _inc(self, metric: Any, *labels: str, amount: int = 1) -> None:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        child.inc(amount)


class _Bills:
    """Billing units (§11) per (account, JST month, channel, route): SMS
    units by the route that carried them (DOMAIN §6), '' for +Message and
    reassigned-number checks."""

    __slots__ = ("_month_of", "units")

    def __init__(self) -> None:
        self.units: dict[tuple[str, str, str, str], int] = {}
        # A flush bills thousands of receipts of the same few seconds: the
        # JST month of each is looked up once per distinct second.
        self._month_of: dict[int, str] = {}

    def add(
        self,
        account_id: str,
        route: str | None,
        billed_at: datetime,
        sms_units: int,
        rcs_units: int,
        reassign_units: int = 0,
    ) -> None:
        if not (sms_units or rcs_units or reassign_units):
            return
        second = int(billed_at.timestamp())
        month = self._month_of.get(second)
        if month is None:
            month = self._month_of[second] = billing_month(billed_at)
        units = self.units
        if sms_units:
            # A message from before routes went over the premium route.
            key = (account_id, month, "sms", route or PREMIUM)
            units[key] = units.get(key, 0) + sms_units
        if rcs_units:
            key = (account_id, month, "rcs", "")
            units[key] = units.get(key, 0) + rcs_units
        if reassign_units:
            key = (account_id, month, "reassigned_check", "")
            units[key] = units.get(key, 0) + reassign_units


_NO_BILLS = _Bills()
# One encoder, built once: json.dumps() would build one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False)
_FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)
_ATTEMPT_OPEN = frozenset({State.SENDING, State.SUBMITTED})
# Every part is delivered when a message is: only these can leave one open.
_ENDS_ATTEMPT_EARLY = frozenset({State.FAILED, State.EXPIRED, State.QUEUED})


# Events whose metric takes a label from the move itself.
_LABELLED_BY_MOVE = frozenset({Event.REROUTED, Event.RESEND_SCHEDULED, Event.FALLBACK})


def _labelled(metrics: Metrics, a: Applied) -> tuple[Any, ...]:
    detail = a.move.detail or {}
    if a.move.event is Event.REROUTED:
        return (metrics.reroutes_total, str(detail.get("wrong_carrier", "")))
    if a.move.event is Event.RESEND_SCHEDULED:
        return (metrics.resends_total, a.carrier or "")
    return (metrics.fallbacks_total, str(detail.get("cause", "")))


_Written = TypeVar("_Written", Move, Note)


def _one_each(changes: Sequence[_Written]) -> dict[int, _Written]:
    """The changes by message; two for one message in one statement would
    apply one of them (which, PostgreSQL does not say) and bill the other."""
    by_id = {c.message_id: c for c in changes}
    if len(by_id) != len(changes):
        counts = Counter(c.message_id for c in changes)
        twice = sorted(message_id for message_id, n in counts.items() if n > 1)
        raise ValueError(f"two changes for one message in one write: {twice[:10]}")
    return by_id


def _json(detail: Any) -> str | None:
    return None if detail is None else _ENCODER.encode(detail)


def _move_arrays(moves: Sequence[Move]) -> list[list[Any] | None]:
    """The 28 column arrays of apply_moves, in one pass over the moves. A
    column no move sets is sent as NULL (unnest pads it with NULLs): most
    moves set a few of the 28, and every element is encoded one by one."""
    encoded: dict[int, str] = {}

    def detail_json(detail: Any) -> str | None:
        # A detail shared by many moves (the gate's claims share one) is
        # encoded once; keyed by identity, as a dict is not hashable.
        if detail is None:
            return None
        text = encoded.get(id(detail))
        if text is None:
            text = encoded[id(detail)] = _ENCODER.encode(detail)
        return text

    rows = [
        (
            m.message_id,
            # StrEnum members are str: asyncpg sends them as their values.
            m.src,
            m.dst,
            m.reason.code if m.reason else None,
            m.reason.text if m.reason else None,
            m.not_before,
            m.receipt_deadline,
            m.fallback_at,
            m.expires_at,
            m.submitted_at,
            m.leg,
            m.carrier,
            m.attempt,
            m.resends_done,
            m.wrong_carrier or None,
            m.lease_owner,
            m.lease_until,
            m.sms_units or None,
            m.rcs_units or None,
            m.event,
            detail_json(m.detail),
            m.wait,
            m.retries_wait or None,
            m.route,
            m.reassign_verdict,
            m.reassign_data_month,
            m.first_event,
            detail_json(m.first_detail),
        )
        for m in moves
    ]
    return [
        None if column.count(None) == len(column) else list(column)
        for column in zip(*rows, strict=True)
    ]
