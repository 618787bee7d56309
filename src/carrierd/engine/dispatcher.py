"""Dispatcher: claim due messages, decide, hand them to their leg.

One cycle (`dispatch_once`):
  1. which accounts have due work, and tokens from their shared buckets
     (rows in PostgreSQL, so daemons together hold each account's rate);
  2. in one transaction: lock up to that many messages per account
     (FOR UPDATE SKIP LOCKED), oldest first; per message validate SQL-feed
     rows, skip opted-out recipients (§12), hand those awaiting their
     reassigned-number check (§13) to its gate under this daemon's lease,
     expire what ran out, pick the leg (domain: `claim_route`); the SMS leg plans carriers, the au
     gate and the parts budget and marks its messages 'sending'; +Message
     messages move to 'dispatching' under this daemon's lease. Every
     change goes through the lifecycle writer.
  3. after the commit, *then* hand over: submits for SMS, the +Message leg
     for the rest.
The gate's verdicts (`send_judged`) take steps 2 (from the pick of the leg)
and 3 for the messages that pass, in the transaction that records them.
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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from carrierd.channels.types import SmsGateway
from carrierd.config import AccountConfig, Config
from carrierd.domain import reasons
from carrierd.domain.clock import Clock
from carrierd.domain.dispatch import claim_route
from carrierd.domain.gates import GateVerdict, optout_gate, optout_list_as_of
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.pacing import Bucket, take_tokens
from carrierd.domain.rcs_flow import RCS_NOT_CONFIGURED
from carrierd.domain.reasons import Reason
from carrierd.domain.states import State
from carrierd.engine.leases import RENEWALS_PER_LEASE, Leases
from carrierd.engine.lifecycle import Applied, Lifecycle
from carrierd.engine.reassign_gate import (
    ReassignGate,
    RecordVerdicts,
    VerdictsToCarry,
    claim_for_check,
    needs_check,
)
from carrierd.engine.sms_leg import Planned, SmsLeg
from carrierd.intake import validate_fed
from carrierd.loops import supervise, until_database_answers
from carrierd.store.db import Database, Transaction, is_transient_db_error
from carrierd.store.rows import ClaimedMessage
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.dispatcher")

# A claim waits this long, again and again, while receipts are backlogged.
RECEIPT_BACKLOG_PAUSE_S = 0.02
# ...but never longer than this in a row: a receipt backlog can take minutes
# to drain (after an outage), and new messages (one-time passwords) must
# still flow meanwhile, a claim batch at least this often.
RECEIPT_BACKLOG_MAX_WAIT_S = 1.0


class RcsLeg(Protocol):
    """The +Message path; the dispatcher hands it messages whose leg is 'rcs'."""

    async def dispatch(self, messages: Sequence[ClaimedMessage], now: datetime) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...


@dataclass
class _Claim:
    """What one claim transaction decided, acted on once it has committed."""

    # Messages never sent before, each of which spent a token.
    claimed_per_account: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    claimed_again: int = 0  # messages sent once already: no token
    sending: list[Planned] = field(default_factory=list)
    rcs: list[ClaimedMessage] = field(default_factory=list)
    # §13: messages for the reassigned-number gate (dispatching; each spent
    # its token, handed to its leg by `send_judged` once judged), and how
    # many more the gate step decided without taking them (no token).
    reassign: list[ClaimedMessage] = field(default_factory=list)
    reassign_decided: int = 0
    # `send_judged`: the judged messages that passed the gate (no_history).
    passed: set[int] = field(default_factory=set)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        gateway: SmsGateway,
        sms_leg: SmsLeg,
        lifecycle: Lifecycle,
        leases: Leases,
        *,
        config: Callable[[], Config],
        lease_owner: str,
        rcs_leg: RcsLeg | None = None,
        metrics: Metrics | None = None,
        reassign_gate: ReassignGate | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._gateway = gateway
        self.sms_leg = sms_leg
        self._lifecycle = lifecycle
        self.leases = leases
        self._config = config
        self.lease_owner = lease_owner
        self.rcs_leg = rcs_leg
        self.reassign_gate = reassign_gate
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self._claiming = asyncio.Lock()
        self._claim_loop: asyncio.Task[None] | None = None
        # Messages the gate's verdicts are handing to the SMS leg (see
        # `send_judged`): held, though the leg has them only after the commit.
        self._judged_in_hand: set[int] = set()
        self._held_since_s: float | None = None
        self.pacing_wait_s = 0.0

    @property
    def in_flight(self) -> int:
        return self.sms_leg.in_flight

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Claim until stopped, under the daemon's one loop policy: a
        database outage is waited out (a claim that failed committed
        nothing, and one that committed was handed over first), anything
        else is logged and retried, and gives up only when it keeps failing.

        Leases are renewed by a loop of their own: the claim loop waits
        whenever its legs are full (a window of submits the SMSC throttles,
        a +Message platform that answers slowly) and a renewal that waited
        with it let the leases of messages still in flight run out, so the
        timers declared their parts lost while this process still sent them."""
        async with asyncio.TaskGroup() as loops:
            self._claim_loop = loops.create_task(
                supervise("dispatcher", self._step, self._stopping)
            )
            loops.create_task(supervise("lease_renewal", self._renew_step, self._stopping))

    async def _renew_step(self) -> float:
        """Renew this process's leases and give back claims it holds
        nowhere; returns the wait until the next renewal."""
        now = self._clock.now()
        renew_every_s = self._config().engine.lease_s / RENEWALS_PER_LEASE
        await self.leases.renew(now)
        await self.release_orphans(now - timedelta(seconds=renew_every_s))
        return renew_every_s

    async def _step(self) -> float:
        """One turn of the loop; returns how long to wait before the next."""
        now = self._clock.now()
        config = self._config()
        max_in_flight = max(1000, config.engine.claim_batch * 2)
        if self.sms_leg.in_flight >= max_in_flight:
            await self.sms_leg.wait_for_slot(max_in_flight)
            return 0.0
        if self._gateway.receipts_backlogged():
            # Receipts first: they wait on the same database and CPU a claim
            # would take, and the SMSC sends no more until we answer.
            # Claiming on would only grow both queues (and leave messages
            # 'submitted' for longer). Real time, like the pauses it bounds
            # (the clock may be a test's).
            self._held_since_s = self._held_since_s or time.monotonic()
            if time.monotonic() - self._held_since_s < RECEIPT_BACKLOG_MAX_WAIT_S:
                return RECEIPT_BACKLOG_PAUSE_S
        self._held_since_s = None
        if await self.dispatch_once(now):
            return 0.0
        return min(max(self.pacing_wait_s, config.engine.idle_poll_s), 1.0)

    async def release_orphans(self, claimed_before: datetime) -> int:
        """Give back this process's claims that it holds nowhere: 'sending'
        under its lease, no part answered, yet neither the SMS leg nor the
        write-behind has them. Their leases would be renewed for as long as
        the daemon lives and nothing would ever send them; they were never
        handed to a bind, so their parts are recorded unsent and the message
        is queued again like any other not handed over. Returns how many."""
        async with self._claiming:
            held_before = self.sms_leg.holding()
            rows = await self._db.fetch("own_claims_unanswered", self.lease_owner, claimed_before)
            if not rows:
                return 0
            # Checked again after the rows were read: a claim handed over
            # since is held; one written since was held before.
            orphans = self.sms_leg.give_back_unheld(
                [
                    (r["id"], r["attempt"], r["carrier"], r["pending"])
                    for r in rows
                    if r["id"] not in self._judged_in_hand
                ],
                held_before,
            )
        if orphans:
            log.error("orphaned_claims_released", messages=len(orphans), first=orphans[:5])
        return len(orphans)

    async def _committed_part(self, decided: _Claim) -> _Claim:
        """What of a claim whose commit went unanswered the database holds:
        all of it if it committed, nothing if it rolled back."""
        ids = [p.message.id for p in decided.sending] + [
            m.id for m in decided.rcs + decided.reassign
        ]
        held = {
            r["id"]: (r["state"], r["attempt"])
            for r in await self._db.fetch("claim_outcome", ids, self.lease_owner)
        }
        committed = _Claim(
            sending=[
                p for p in decided.sending if held.get(p.message.id) == (State.SENDING, p.attempt)
            ],
            rcs=[m for m in decided.rcs if m.id in held and held[m.id][0] == State.DISPATCHING],
            reassign=[
                m for m in decided.reassign if m.id in held and held[m.id][0] == State.DISPATCHING
            ],
        )
        if committed.sending or committed.rcs or committed.reassign or not ids:
            committed.claimed_per_account = decided.claimed_per_account
            committed.claimed_again = decided.claimed_again
            committed.reassign_decided = decided.reassign_decided
            committed.passed = decided.passed
        log.warning(
            "claim_outcome",
            committed=bool(committed.sending or committed.rcs or committed.reassign),
            messages=len(ids),
        )
        return committed

    async def stop_claiming(self, drain_timeout_s: float) -> None:
        """No claim starts after this, and the one under way has handed its
        messages over: the legs and the gate are stopped only then, or a
        late claim hands messages to a leg being torn down (left 'sending'
        with parts pending, or taken by a stopped gate)."""
        self._stopping.set()
        if self._claim_loop is not None:
            # The loop ends after its current turn (hand-overs included).
            await asyncio.wait({self._claim_loop}, timeout=drain_timeout_s)
        async with self._claiming:
            pass

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop claiming; wait for in-flight submits; give back what is unsent."""
        await self.stop_claiming(drain_timeout_s)
        await self.sms_leg.stop(drain_timeout_s)
        await self.leases.release(self._clock.now())

    async def wait_idle(self) -> None:
        """Tests: wait for every spawned submit to finish."""
        await self.sms_leg.wait_idle()

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
        # Messages sent once already (reroutes above all) spent their token.
        again = {d["account_id"]: min(d["again"], per_account_cap) for d in due}
        if config.engine.pacing:
            granted = await self._take_tokens(
                {a: n for a, n in wants.items() if n > 0}, now, config.accounts
            )
        else:
            granted = wants
        quotas = {a: granted.get(a, 0) for a in wants if granted.get(a, 0) > 0 or again[a] > 0}
        if not quotas:
            return 0
        lease_until = now + timedelta(seconds=config.engine.lease_s)

        worked_out: list[_Claim] = []

        async def claim(tx: Transaction) -> _Claim:
            worked_out.clear()
            rows = await tx.fetch(
                "claim_due", now, list(quotas), list(quotas.values()), [again[a] for a in quotas]
            )
            decided = _Claim()
            messages = [ClaimedMessage.from_row(r) for r in rows]
            for message in messages:
                if message.attempt == 0:
                    decided.claimed_per_account[message.account_id] += 1
                decided.claimed_again += 1 if message.attempt > 0 else 0
            if messages:
                await self._decide(tx, messages, now, lease_until, config, decided)
            worked_out.append(decided)
            return decided

        # From the claim to its hand-over the claimed messages are held
        # nowhere yet: the orphan release (another task) waits meanwhile.
        async with self._claiming:
            if self._stopping.is_set():
                # `stop` drains the leg once no claim is under way: claim
                # nothing after that (tokens taken go back below).
                decided = _Claim()
            else:
                try:
                    decided = await self._db.in_transaction(claim)
                except Exception as exc:
                    if not (worked_out and is_transient_db_error(exc)):
                        raise
                    # The connection broke after the claim's work, at its COMMIT:
                    # it may have committed with the answer lost (a server restart).
                    # Its messages would then be 'sending' under our lease, renewed
                    # for as long as we live and never sent: ask the database.
                    log.warning("claim_commit_unanswered", error=repr(exc))
                    decided = await until_database_answers(
                        "claim_outcome",
                        lambda: self._committed_part(worked_out[0]),
                        stop=self._stopping,
                    )
            # Handed over first: what the claim marked 'sending' must leave even
            # if the next statement fails, or it would end 'unknown' unsent.
            if decided.sending:
                self.sms_leg.hand_over(decided.sending, now)
        if decided.reassign and self.reassign_gate is not None:
            self.reassign_gate.take(decided.reassign, self.send_judged)
        if decided.rcs and self.rcs_leg is not None:
            await self.rcs_leg.dispatch(decided.rcs, now)
        if config.engine.pacing:
            await self._return_tokens(
                {a: quotas[a] - decided.claimed_per_account.get(a, 0) for a in quotas}
            )
        return (
            sum(decided.claimed_per_account.values())
            + decided.claimed_again
            + decided.reassign_decided
        )

    async def send_judged(
        self, record: RecordVerdicts, judged: Sequence[ClaimedMessage], now: datetime
    ) -> None:
        """The gate's verdicts on `judged` (messages it holds under this
        daemon's lease) and, in the same transaction, the legs' moves of
        those that passed: no second claim. Their token was spent when the
        gate claimed them; those that did not pass give it back. A commit
        that went unanswered and did not happen raises, for the gate to
        record again."""
        config = self._config()
        lease_until = now + timedelta(seconds=config.engine.lease_s)
        worked_out: list[_Claim] = []

        async def work(tx: Transaction) -> _Claim:
            worked_out.clear()
            # Several verdicts are recorded at once, each billing the same
            # (account, month) row: billed last, held only to the commit.
            async with self._lifecycle.bills_at_end(tx):
                passed = await record(tx)
                decided = _Claim(passed={m.id for m, _ in passed})
                if passed:
                    moves, fallbacks, sms, rcs = self._routes([m for m, _ in passed], now)
                    carry = VerdictsToCarry([v for _, v in passed])
                    # A +Message claim retries its wait from queued: its
                    # verdict is a move of its own, before the lease.
                    await self._lifecycle.apply(tx, carry.take([m.id for m in rcs]), now)
                    await self._to_legs(
                        tx, moves, fallbacks, sms, rcs, now, lease_until, config, decided, carry
                    )
                    carry.check_all_carried()
            worked_out.append(decided)
            return decided

        # Not under `_claiming`: claims would wait for lookups' verdicts and
        # verdicts for claims. The orphan release leaves these alone instead.
        ids = [m.id for m in judged]
        self._judged_in_hand.update(ids)
        try:
            try:
                decided = await self._db.in_transaction(work)
            except Exception as exc:
                if not (worked_out and is_transient_db_error(exc)):
                    raise
                log.warning("verdicts_commit_unanswered", error=repr(exc))
                still = await until_database_answers(
                    "claim_outcome",
                    lambda: self._db.fetch("reassign_lock_held", ids, self.lease_owner),
                    stop=self._stopping,
                )
                if still:
                    raise  # rolled back: the gate records its verdicts again
                decided = await until_database_answers(
                    "claim_outcome",
                    lambda: self._committed_part(worked_out[0]),
                    stop=self._stopping,
                )
            if decided.sending:
                self.sms_leg.hand_over(decided.sending, now)
        finally:
            self._judged_in_hand.difference_update(ids)
        if decided.rcs and self.rcs_leg is not None:
            await self.rcs_leg.dispatch(decided.rcs, now)
        if config.engine.pacing:
            unused: dict[str, int] = defaultdict(int)
            for m in judged:
                if m.id not in decided.passed and m.attempt == 0:
                    unused[m.account_id] += 1
            await self._return_tokens(unused)

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
        messages: list[ClaimedMessage],
        now: datetime,
        lease_until: datetime,
        config: Config,
        decided: _Claim,
    ) -> None:
        moves: list[Move] = []
        routed: list[ClaimedMessage] = []
        to_check: list[ClaimedMessage] = []
        for message in messages:
            if not message.validated:
                checked = await self._validate_fed(tx, message, config.accounts[message.account_id])
                if isinstance(checked, Reason):
                    moves.append(
                        Move(message.id, State.QUEUED, State.REJECTED, Event.REJECTED, checked)
                    )
                    continue
                message = checked
            opted_out = await self._optout_gate(tx, message, config.accounts[message.account_id])
            if opted_out is not None:
                moves.append(opted_out)
                continue
            if needs_check(message, now):
                # §13: judged first, then handed on by the gate.
                to_check.append(message)
                continue
            routed.append(message)
        route_moves, fallbacks, sms, rcs = self._routes(routed, now)
        moves += route_moves
        if to_check:
            moves += claim_for_check(
                self.reassign_gate,
                to_check,
                now,
                lease_owner=self.lease_owner,
                lease_until=lease_until,
            )
        applied = await self._to_legs(
            tx, moves, fallbacks, sms, rcs, now, lease_until, config, decided
        )
        if to_check:
            leased = {a.move.message_id for a in applied if a.move.dst is State.DISPATCHING}
            decided.reassign = [m for m in to_check if m.id in leased]
            for m in to_check:
                if m.id in leased:
                    # Its token is spent now: once judged, the gate hands it
                    # to its leg without a second claim (`send_judged`).
                    continue
                if m.attempt == 0:
                    decided.claimed_per_account[m.account_id] -= 1
                else:
                    decided.claimed_again -= 1
                decided.reassign_decided += 1

    def _routes(
        self, messages: Sequence[ClaimedMessage], now: datetime
    ) -> tuple[list[Move], list[Move], list[ClaimedMessage], list[ClaimedMessage]]:
        """Which leg each message past the gates takes: (moves of those
        that end or fail here, fallback moves, the SMS ones, the +Message ones)."""
        moves: list[Move] = []
        fallbacks: list[Move] = []
        sms: list[ClaimedMessage] = []
        rcs: list[ClaimedMessage] = []
        for message in messages:
            route = claim_route(
                channel=message.channel,
                leg=message.leg,
                expires_at=message.expires_at,
                now=now,
                rcs_enabled=self.rcs_leg is not None,
            )
            if route == "expire":
                moves.append(
                    Move(
                        message.id,
                        State.QUEUED,
                        State.EXPIRED,
                        Event.EXPIRED,
                        reasons.VALIDITY_EXPIRED,
                    )
                )
            elif route == "rcs":
                rcs.append(message)
            elif route == "sms":
                sms.append(message)
            elif route == "sms_fallback":
                # +Message is off on this daemon: the SMS leg, recorded as a
                # fallback (the row's leg too, so the au gate sees it).
                fallbacks.append(
                    Move(
                        message.id,
                        State.QUEUED,
                        State.QUEUED,
                        Event.FALLBACK,
                        leg="sms",
                        detail={"cause": "rcs_not_configured"},
                    )
                )
                sms.append(message._replace(leg="sms"))
            else:
                moves.append(
                    Move(message.id, State.QUEUED, State.FAILED, Event.FAILED, RCS_NOT_CONFIGURED)
                )
        return moves, fallbacks, sms, rcs

    async def _to_legs(
        self,
        tx: Transaction,
        moves: list[Move],
        fallbacks: list[Move],
        sms: list[ClaimedMessage],
        rcs: list[ClaimedMessage],
        now: datetime,
        lease_until: datetime,
        config: Config,
        decided: _Claim,
        carry: Callable[[Move], Move] | None = None,
    ) -> list[Applied]:
        """Apply `moves` with the legs' own (from queued): the SMS leg plans
        and marks its messages 'sending', +Message ones are leased. Returns
        what `moves` and the leases applied; `decided` gets what to hand over.
        `carry` puts a gate's verdict on the first move of its message."""
        if fallbacks:
            # Before the SMS leg's moves of the same messages (one move per
            # message per statement).
            await self._lifecycle.apply(
                tx, fallbacks if carry is None else [carry(m) for m in fallbacks], now
            )
        planned: list[Planned] = []
        if sms:
            planned, held = await self.sms_leg.plan(tx, sms, now, config)
            moves += held
        if carry is not None:
            moves = [carry(m) for m in moves]
        if rcs:
            moves += [
                Move(
                    m.id,
                    State.QUEUED,
                    State.DISPATCHING,
                    Event.CLAIMED,
                    lease_owner=self.lease_owner,
                    lease_until=lease_until,
                    # After a platform error the claim is the wait's retry.
                    retries_wait=True,
                )
                for m in rcs
            ]
        applied = await self._lifecycle.apply(tx, moves, now)
        leased = {a.move.message_id for a in applied if a.move.dst is State.DISPATCHING}
        decided.rcs = [m for m in rcs if m.id in leased]
        if planned:
            decided.sending = await self.sms_leg.mark_sending(tx, planned, now, lease_until, carry)
        return applied

    async def _optout_gate(
        self, tx: Transaction, message: ClaimedMessage, account: AccountConfig
    ) -> Move | None:
        """DOMAIN §12, before the legs split (SMS and +Message alike): the
        skip of a message whose recipient is on the list it obeys, else
        None. The verdict was recorded at intake or by its check's timer;
        SQL-feed rows, validated only now, read the list now as it was when
        they were fed (or 15 minutes before send_at)."""
        verdict = optout_gate(message.skip_opted_out, account.skip_opted_out, message.opted_out)
        if verdict is GateVerdict.CHECK:
            as_of = optout_list_as_of(message.send_at, message.accepted_at)
            row = await tx.fetchrow("record_optout_verdicts", [message.id], as_of)
            verdict = GateVerdict.SKIP if row is not None and row["opted_out"] else GateVerdict.PASS
        if verdict is GateVerdict.SKIP:
            return Move(message.id, State.QUEUED, State.SKIPPED, Event.SKIPPED, reasons.OPTED_OUT)
        return None

    async def _validate_fed(
        self, tx: Transaction, message: ClaimedMessage, account: AccountConfig
    ) -> Reason | ClaimedMessage:
        """SQL-feed rows get the checks HTTP intake gives; store the result."""
        checked = validate_fed(
            message.recipient_raw, message.channel, message.sms_text, message.rcs_content, account
        )
        if isinstance(checked, Reason):
            return checked
        await tx.execute(
            "store_validation",
            self._clock.now(),
            [message.id],
            [checked.msisdn],
            [checked.sms_text],
            [checked.sms_encoding],
            [checked.sms_parts],
            [None if checked.rcs_content is None else _json(checked.rcs_content)],
        )
        return message._replace(
            msisdn=checked.msisdn,
            sms_text=checked.sms_text,
            sms_encoding=checked.sms_encoding,
            sms_parts=checked.sms_parts,
            rcs_content=checked.rcs_content,
            validated=True,
        )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
