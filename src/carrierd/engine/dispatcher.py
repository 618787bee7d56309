"""Dispatcher: claim due messages, decide, pace, hand to the carriers.

One cycle (`dispatch_once`):
  1. which accounts have due work, and tokens from their shared buckets
     (rows in PostgreSQL, so daemons together hold each account's rate);
  2. in one transaction: lock up to that many messages per account
     (FOR UPDATE SKIP LOCKED), oldest first; per message validate SQL-feed
     rows, pick the channel leg, resolve the carrier, apply the carrier
     restriction and the au gate; record what was decided, and mark the SMS
     survivors 'sending' with 'pending' parts;
  3. after the commit, *then* submit; outcomes go to the write-behind
     recorder. +Message rows leave the transaction 'dispatching' under a
     lease and go to the +Message leg.
A claim writes nothing until its decisions do, and a crash before the
commit leaves the rows queued. Waiting (pacing, au gate) is a not_before
timestamp, never a task.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import structlog

from carrierd.channels.types import PartOutcome, SmsGateway, SmsRequest
from carrierd.config import AccountConfig, Config
from carrierd.domain import reasons
from carrierd.domain.clock import Clock
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.pacing import Bucket, take_tokens
from carrierd.domain.rcs_content import RcsContentError, content_to_json, validate_rcs
from carrierd.domain.reasons import Reason
from carrierd.domain.routing import NumberRanges, resolve_carrier
from carrierd.domain.sms_text import SmsTextError, prepare_sms, split_gsm7, split_ucs2
from carrierd.domain.states import State
from carrierd.engine.write_behind import SubmittedPart, WriteBehind
from carrierd.store.db import TRANSIENT_DB_ERRORS, Database, Row, Transaction, Transition

log = structlog.get_logger("carrierd.engine.dispatcher")

# Re-check interval for a message held because an earlier SMS to the same
# au number is still in flight: the receipt moves not_before precisely, this
# only bounds the wait when the receipt never comes.
AU_IN_FLIGHT_RECHECK_S = 30.0
NO_BIND_RETRY_S = 1.0


# Leases are renewed this many times per engine.lease_s.
RENEWALS_PER_LEASE = 3
# A claim waits this long, again and again, while receipts are backlogged.
RECEIPT_BACKLOG_PAUSE_S = 0.02
# ...but never longer than this in a row: a receipt backlog can take minutes
# to drain (after an outage), and new messages (one-time passwords) must
# still flow meanwhile, a claim batch at least this often.
RECEIPT_BACKLOG_MAX_WAIT_S = 1.0


class RcsLeg(Protocol):
    """The +Message path; the dispatcher hands it rows whose leg is 'rcs'."""

    async def dispatch(self, rows: Sequence[Row], now: datetime) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...


@dataclass(frozen=True)
class Planned:
    row: Row
    carrier: str
    carrier_source: str
    attempt: int
    request: SmsRequest


@dataclass
class _Claim:
    """What one claim transaction decided, acted on once it has committed."""

    claimed_per_account: dict[str, int]
    sending: list[Planned]
    rcs_rows: list[Row]


class Dispatcher:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        gateway: SmsGateway,
        recorder: WriteBehind,
        *,
        config: Callable[[], Config],
        daemon_id: str,
        rcs_leg: RcsLeg | None = None,
        on_submitted: Callable[[Sequence[Planned], datetime], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._gateway = gateway
        self._recorder = recorder
        self._config = config
        self._daemon_id = daemon_id
        self.rcs_leg = rcs_leg
        self._on_submitted = on_submitted
        self._in_flight: set[asyncio.Task[None]] = set()
        self._claiming = True
        self.pacing_wait_s = 0.0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        config = self._config()
        max_in_flight = max(1000, config.engine.claim_batch * 2)
        renew_every_s = config.engine.lease_s / RENEWALS_PER_LEASE
        last_renewal = self._clock.now()
        failures = 0
        # Real time, like the pauses it bounds (the clock may be a test's).
        held_since_s: float | None = None
        while self._claiming:
            now = self._clock.now()
            try:
                if (now - last_renewal).total_seconds() >= renew_every_s:
                    await self.renew_leases(now)
                    last_renewal = now
                if len(self._in_flight) >= max_in_flight:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if self._gateway.receipts_backlogged():
                    # Receipts first: they wait on the same database and
                    # CPU a claim would take, and the SMSC sends no more
                    # until we answer. Claiming on would only grow both
                    # queues (and leave messages 'submitted' for longer).
                    held_since_s = held_since_s or time.monotonic()
                    if time.monotonic() - held_since_s < RECEIPT_BACKLOG_MAX_WAIT_S:
                        await asyncio.sleep(RECEIPT_BACKLOG_PAUSE_S)
                        continue
                held_since_s = None
                claimed = await self.dispatch_once(now)
            except TRANSIENT_DB_ERRORS:
                # A claim that failed committed nothing (its rows stay
                # queued); one whose commit went through was handed over
                # before anything else could fail. Try again, more slowly.
                failures += 1
                log.exception("dispatch_cycle_failed", failures=failures)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if claimed == 0:
                idle_s = self._config().engine.idle_poll_s
                await asyncio.sleep(min(max(self.pacing_wait_s, idle_s), 1.0))

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop claiming; wait for in-flight submits; give back what is unsent."""
        self._claiming = False
        if self._in_flight:
            _done, pending = await asyncio.wait(self._in_flight, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
        await self.release_claims(self._clock.now())

    async def renew_leases(self, now: datetime) -> None:
        """Extend the leases with less than 2.5 renewal periods left
        (renewals come every lease_s / RENEWALS_PER_LEASE): a lease skipped
        now survives even a renewal that comes 1.5 periods late."""
        lease_s = self._config().engine.lease_s
        renew_every_s = lease_s / RENEWALS_PER_LEASE
        await self._db.execute(
            "renew_leases",
            self._daemon_id,
            now + timedelta(seconds=lease_s),
            now + timedelta(seconds=2.5 * renew_every_s),
        )

    async def release_claims(self, now: datetime) -> None:
        rows = await self._db.fetch("release_lease_claims", self._daemon_id)
        if rows:
            await self._apply(
                [
                    Transition(
                        r["id"],
                        State.DISPATCHING,
                        State.QUEUED,
                        "released",
                        detail={"why": "daemon stopping"},
                    )
                    for r in rows
                ],
                now,
            )

    async def wait_idle(self) -> None:
        """Tests: wait for every spawned submit to finish."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    # -- one cycle -----------------------------------------------------------------

    async def dispatch_once(self, now: datetime) -> int:
        config = self._config()
        due = await self._db.fetch("due_accounts", now, config.engine.claim_batch)
        due = [d for d in due if d["account_id"] in config.accounts]
        if not due:
            self.pacing_wait_s = 0.0
            return 0
        per_account_cap = max(1, config.engine.claim_batch // len(due))
        wants = {d["account_id"]: min(d["due"], per_account_cap) for d in due}
        if config.engine.pacing:
            granted = await self._take_tokens(wants, now, config.accounts)
        else:
            granted = wants
        quotas = {a: n for a, n in granted.items() if n > 0}
        if not quotas:
            return 0
        lease_until = now + timedelta(seconds=config.engine.lease_s)

        async def claim(tx: Transaction) -> _Claim:
            rows = await tx.fetch("claim_due", now, list(quotas), list(quotas.values()))
            decided = _Claim(defaultdict(int), [], [])
            for row in rows:
                decided.claimed_per_account[row["account_id"]] += 1
            if rows:
                await self._decide(tx, rows, now, lease_until, config, decided)
            return decided

        decided = await self._db.in_transaction(claim)
        # Handed over first: what the claim marked 'sending' must leave even
        # if the next statement fails, or it would end 'unknown' unsent.
        if decided.sending:
            self._hand_over(decided.sending, now)
        if decided.rcs_rows and self.rcs_leg is not None:
            await self.rcs_leg.dispatch(decided.rcs_rows, now)
        if config.engine.pacing:
            await self._return_tokens(
                {a: quotas[a] - decided.claimed_per_account.get(a, 0) for a in quotas}
            )
        return sum(decided.claimed_per_account.values())

    async def _take_tokens(
        self, wants: Mapping[str, int], now: datetime, accounts: Mapping[str, AccountConfig]
    ) -> dict[str, int]:
        async def work(tx: Transaction) -> dict[str, int]:
            names = sorted(wants)
            await tx.execute(
                "ensure_buckets",
                names,
                [0.0] * len(names),
                [now] * len(names),
            )
            rows = await tx.fetch("lock_buckets", names)
            granted: dict[str, int] = {}
            new_tokens: list[float] = []
            new_times: list[datetime] = []
            waits: list[float] = []
            for row in rows:
                account = accounts[row["account_id"]]
                bucket, got, wait_s = take_tokens(
                    Bucket(row["tokens"], row["updated_at"]),
                    now,
                    wants[row["account_id"]],
                    account.rate_per_hour,
                    account.burst,
                )
                granted[row["account_id"]] = got
                new_tokens.append(bucket.tokens)
                new_times.append(bucket.updated_at)
                if got == 0:
                    waits.append(wait_s)
            await tx.execute(
                "store_buckets", [r["account_id"] for r in rows], new_tokens, new_times
            )
            self.pacing_wait_s = min(waits) if waits and not any(granted.values()) else 0.0
            return granted

        return await self._db.in_transaction(work)

    async def _return_tokens(self, unused: Mapping[str, int]) -> None:
        back = {a: n for a, n in unused.items() if n > 0}
        if back:
            await self._db.execute("return_tokens", list(back), [float(n) for n in back.values()])

    # -- deciding ------------------------------------------------------------------

    async def _decide(
        self,
        tx: Transaction,
        rows: list[Row],
        now: datetime,
        lease_until: datetime,
        config: Config,
        decided: _Claim,
    ) -> None:
        transitions: list[Transition] = []
        sms_rows: list[Row] = []
        rcs_rows: list[Row] = []
        for row in rows:
            account = config.accounts[row["account_id"]]
            if not row["validated"]:
                checked = await self._validate_fed_row(tx, row, account)
                if isinstance(checked, Reason):
                    transitions.append(_to(row, State.REJECTED, "rejected", checked))
                    continue
                row = checked
            if row["expires_at"] <= now:
                transitions.append(_to(row, State.EXPIRED, "expired", reasons.VALIDITY_EXPIRED))
                continue
            if row["leg"] == "rcs":
                if self.rcs_leg is not None:
                    rcs_rows.append(row)
                elif row["channel"] == "rcs_then_sms":
                    row = {**row, "leg": "sms"}
                    sms_rows.append(row)
                else:
                    transitions.append(_to(row, State.FAILED, "failed", RCS_NOT_CONFIGURED))
                continue
            sms_rows.append(row)
        planned: list[Planned] = []
        if sms_rows:
            planned, held = await self._plan_sms(tx, sms_rows, now, config)
            transitions += held
        if transitions:
            await self._apply_in(tx, transitions, now)
        if rcs_rows:
            await tx.execute(
                "lease_claims", [r["id"] for r in rcs_rows], self._daemon_id, lease_until, now
            )
            decided.rcs_rows = rcs_rows
        if planned:
            decided.sending = await self._mark_sending(tx, planned, now, lease_until)

    async def _validate_fed_row(
        self, tx: Transaction, row: Row, account: AccountConfig
    ) -> Reason | Row:
        """SQL-feed rows get the checks HTTP intake gives; store the result.
        Returns the rejection, or the row as validated."""
        try:
            msisdn = normalize_msisdn(row["recipient_raw"], allow_m2m=account.allow_m2m)
        except NumberError as exc:
            return Reason("invalid_field", f"to: {exc.reason}: {exc.message}")
        sms_text = encoding = None
        parts = None
        if row["channel"] in ("sms", "rcs_then_sms"):
            if not row["sms_text"]:
                return Reason("invalid_field", "sms.text: required")
            try:
                body = prepare_sms(
                    row["sms_text"], max_chars=account.max_sms_chars, allow_gsm7=account.allow_gsm7
                )
            except SmsTextError as exc:
                return Reason("invalid_field", f"sms.text: {exc.reason}: {exc.message}")
            sms_text, encoding, parts = body.text, body.encoding, len(body.parts)
        rcs_json = None
        if row["channel"] in ("rcs", "rcs_then_sms"):
            try:
                rcs_json = content_to_json(validate_rcs(row["rcs_content"]))
            except RcsContentError as exc:
                first = exc.violations[0]
                return Reason("invalid_field", f"{first.path}: {first.reason}")
        await tx.execute(
            "store_validation",
            self._clock.now(),
            [row["id"]],
            [msisdn],
            [sms_text],
            [encoding],
            [parts],
            [None if rcs_json is None else _json(rcs_json)],
        )
        return {
            **row,
            "msisdn": msisdn,
            "sms_text": sms_text,
            "sms_encoding": encoding,
            "sms_parts": parts,
            "rcs_content": rcs_json,
            "validated": True,
        }

    async def _plan_sms(
        self, tx: Transaction, rows: list[Row], now: datetime, config: Config
    ) -> tuple[list[Planned], list[Transition]]:
        """The carrier, sender and parts of each SMS; what cannot go now is
        held (au gate, no bind, parts budget) or ends here."""
        available = [c for c in self._gateway.carriers() if c in config.carriers]
        learned = {
            r["msisdn"]: r["carrier"]
            for r in await tx.fetch("learned_carriers", [r["msisdn"] for r in rows])
        }
        number_ranges = NumberRanges(
            {prefix: name for name, c in config.carriers.items() for prefix in c.number_prefixes}
        )
        transitions: list[Transition] = []
        planned: list[Planned] = []
        for row in rows:
            choice = resolve_carrier(
                row["msisdn"],
                named=row["carrier_named"],
                learned=learned.get(row["msisdn"]),
                number_ranges=number_ranges,
                default_order=config.engine.default_carrier_order,
                tried=row["carriers_wrong"] or (),
                available=available,
            )
            if choice.carrier is None:
                transitions.append(_to(row, State.FAILED, "failed", reasons.NO_CARRIER_LEFT))
                continue
            allowed = row["carriers_allowed"]
            if allowed is not None and choice.carrier not in allowed:
                transitions.append(
                    _to(
                        row,
                        State.SKIPPED,
                        "skipped",
                        reasons.NOT_IN_CARRIER_RESTRICTION,
                        detail={"carrier": choice.carrier},
                    )
                )
                continue
            if not self._gateway.is_available(choice.carrier):
                transitions.append(
                    Transition(
                        row["id"],
                        State.QUEUED,
                        State.QUEUED,
                        "postponed",
                        not_before=now + timedelta(seconds=NO_BIND_RETRY_S),
                        detail={"why": "no bind up", "carrier": choice.carrier},
                    )
                )
                continue
            account = config.accounts[row["account_id"]]
            # Validated and normalised at intake: only the split is redone,
            # not the charset scan (the text and its encoding are stored).
            encoding: Literal["ucs2", "gsm7"] = "gsm7" if row["sms_encoding"] == "gsm7" else "ucs2"
            split = split_gsm7 if encoding == "gsm7" else split_ucs2
            parts = tuple(split(row["sms_text"]))
            attempt = row["attempt"] + 1
            planned.append(
                Planned(
                    row=row,
                    carrier=choice.carrier,
                    carrier_source=choice.source,
                    attempt=attempt,
                    request=SmsRequest(
                        message_id=row["id"],
                        attempt=attempt,
                        account_id=row["account_id"],
                        msisdn=row["msisdn"],
                        source_addr=account.senders.get(choice.carrier, ""),
                        encoding=encoding,
                        parts=parts,
                        expires_at=row["expires_at"],
                    ),
                )
            )
        planned, held = await self._au_gate(tx, planned, now, config.engine.au_spacing_s)
        transitions += held
        if config.engine.pacing:
            planned, over = self._parts_budget(planned, config.accounts)
            transitions += over
        return planned, transitions

    async def _au_gate(
        self, tx: Transaction, planned: list[Planned], now: datetime, spacing_s: float
    ) -> tuple[list[Planned], list[Transition]]:
        """DOMAIN §5: ≥ spacing_s after the previous au SMS to the number got
        its final receipt; while one is in flight, the next waits."""
        au = [p for p in planned if p.carrier == "au"]
        if not au:
            return planned, []
        state = {
            r["msisdn"]: r
            for r in await tx.fetch(
                "au_gate_state",
                sorted({p.request.msisdn for p in au}),
                [p.request.message_id for p in au],
            )
        }
        kept: list[Planned] = []
        held: list[Transition] = []
        waiting: list[tuple[int, str, datetime]] = []
        taken_in_batch: set[str] = set()
        for p in planned:
            if p.carrier != "au":
                kept.append(p)
                continue
            gate = state.get(p.request.msisdn)
            not_before: datetime | None = None
            why = ""
            if p.request.msisdn in taken_in_batch or (gate is not None and gate["in_flight"]):
                not_before, why = now + timedelta(seconds=AU_IN_FLIGHT_RECHECK_S), "in_flight"
            elif gate is not None and gate["last_final_at"] is not None:
                opens_at = gate["last_final_at"] + timedelta(seconds=spacing_s)
                if opens_at > now:
                    not_before, why = opens_at, "spacing"
            if not_before is None:
                taken_in_batch.add(p.request.msisdn)
                kept.append(p)
            else:
                if why == "in_flight":
                    waiting.append((p.request.message_id, p.request.msisdn, not_before))
                held.append(
                    Transition(
                        p.row["id"],
                        State.QUEUED,
                        State.QUEUED,
                        "au_gate_hold",
                        not_before=not_before,
                        detail={"why": why},
                    )
                )
        if waiting:
            # The receipt that ends the one in flight releases these.
            await tx.execute(
                "au_gate_hold",
                [message_id for message_id, _, _ in waiting],
                [msisdn for _, msisdn, _ in waiting],
                [recheck_at for _, _, recheck_at in waiting],
            )
        return kept, held

    def _parts_budget(
        self, planned: list[Planned], accounts: Mapping[str, AccountConfig]
    ) -> tuple[list[Planned], list[Transition]]:
        """Accounts that count their rate in parts: a claimed multipart
        message spends more than its one token; what would overspend waits
        for the next cycle (in order, so FIFO holds)."""
        # Budget = messages claimed for the account (one token each).
        budget: dict[str, int] = defaultdict(int)
        for p in planned:
            budget[p.request.account_id] += 1
        kept: list[Planned] = []
        over: list[Transition] = []
        spent: dict[str, int] = defaultdict(int)
        closed: set[str] = set()
        for p in planned:
            account = p.request.account_id
            if not accounts[account].count_parts:
                kept.append(p)
                continue
            cost = len(p.request.parts)
            if account in closed or (
                spent[account] + cost > budget[account] and spent[account] > 0
            ):
                closed.add(account)
                over.append(
                    Transition(
                        p.row["id"],
                        State.QUEUED,
                        State.QUEUED,
                        "postponed",
                        detail={"why": "rate counted in parts"},
                    )
                )
                continue
            spent[account] += cost
            kept.append(p)
        return kept, over

    # -- handing over --------------------------------------------------------------

    async def _mark_sending(
        self, tx: Transaction, planned: list[Planned], now: datetime, lease_until: datetime
    ) -> list[Planned]:
        marked = {
            r["id"]
            for r in await tx.fetch(
                "mark_sending",
                [p.row["id"] for p in planned],
                [p.carrier for p in planned],
                [p.attempt for p in planned],
                [p.carrier_source for p in planned],
                now,
                lease_until,
                self._daemon_id,
            )
        }
        ours = [p for p in planned if p.row["id"] in marked]
        await tx.execute(
            "insert_parts",
            [p.row["id"] for p in ours for _ in p.request.parts],
            [p.attempt for p in ours for _ in p.request.parts],
            [i + 1 for p in ours for i in range(len(p.request.parts))],
            [len(p.request.parts) for p in ours for _ in p.request.parts],
            [p.carrier for p in ours for _ in p.request.parts],
            now,
        )
        return ours

    def _hand_over(self, ours: list[Planned], now: datetime) -> None:
        """Submit what the committed claim marked 'sending'."""
        if self._on_submitted is not None:
            self._on_submitted(ours, now)
        # FIFO per recipient: messages to one number go out one after another.
        by_recipient: dict[str, list[Planned]] = defaultdict(list)
        for p in ours:
            by_recipient[p.request.msisdn].append(p)
        for queue in by_recipient.values():
            task = asyncio.ensure_future(self._submit_in_order(queue))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _submit_in_order(self, queue: list[Planned]) -> None:
        for p in queue:
            try:
                outcomes = await self._gateway.submit(p.carrier, p.request)
            except Exception:
                # The gateway reports per part; an exception here means we do
                # not know what left: ambiguous, never resent blindly.
                log.exception("submit_failed", message_id=p.request.message_id)
                outcomes = [PartOutcome(i + 1, "unknown") for i in range(len(p.request.parts))]
            for outcome in outcomes:
                self._recorder.response(
                    SubmittedPart(
                        message_id=p.request.message_id,
                        attempt=p.attempt,
                        carrier=p.carrier,
                        outcome=outcome,
                    )
                )

    async def _apply(self, transitions: list[Transition], now: datetime) -> list[Row]:
        return await self._db.in_transaction(lambda tx: self._apply_in(tx, transitions, now))

    async def _apply_in(
        self, tx: Transaction, transitions: list[Transition], now: datetime
    ) -> list[Row]:
        changed = await tx.apply_transitions(transitions, now)
        hook = self._recorder.on_transitions
        if changed and hook is not None:
            await hook(tx, changed, now)
        return changed


RCS_NOT_CONFIGURED = Reason("rcs_not_configured", "+Message is not configured on this daemon")


def _to(
    row: Row,
    state: State,
    event: str,
    reason: Reason | None,
    *,
    detail: dict[str, Any] | None = None,
) -> Transition:
    return Transition(
        row["id"],
        State.QUEUED,
        state,
        event,
        reason_code=reason.code if reason else None,
        reason_text=reason.text if reason else None,
        detail=detail,
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
