"""The SMS leg: plan claimed messages, mark them sending, hand them over.

Inside the claim's transaction (`plan`, then `mark_sending`):
  - the carrier (domain/routing.pick_carrier: named, learned, number range,
    default order; a carrier restriction tries only its carriers; a carrier
    with no bind up is passed over, and only when none is up does it wait),
    and the account's route at that carrier (DOMAIN §6), whose bind pool,
    sender and concatenation the submit uses,
  - the au gate (domain/au_gate: hold while the previous SMS to the number
    is in flight, then spacing_s after its final receipt),
  - the parts budget of accounts that count their rate in parts,
  - the survivors move to 'sending' under this daemon's lease, with one
    'pending' part row per submit_sm, durably before anything leaves.
After the commit (`hand_over`): submit_sm per part, FIFO per recipient;
every outcome goes to the write-behind. A multipart message to a carrier not
yet confirmed for the recipient (domain/routing.sends_part_one_first) sends
part 1 alone; its other parts wait as 'unsent' rows until the write-behind
has durably recorded part 1 accepted and marked them 'pending' in the same
transaction, and leave only then. A refusal of part 1 reroutes with the
rest of the text never shown to that carrier.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import structlog

from carrierd.channels.types import PartOutcome, SmsGateway, SmsRequest
from carrierd.config import Config
from carrierd.domain.au_gate import AU, AuGateFacts, au_gate_check
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.pacing import parts_budget
from carrierd.domain.routing import NumberRanges, pick_carrier, sends_part_one_first
from carrierd.domain.sms_text import split_gsm7, split_ucs2
from carrierd.domain.states import State
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.write_behind import SubmittedPart, WriteBehind
from carrierd.store.db import Transaction
from carrierd.store.rows import ClaimedMessage

log = structlog.get_logger("carrierd.engine.sms_leg")

NO_BIND_RETRY_S = 1.0
# Causes of waits (Move.wait), also the `why` of their history event.
NO_BIND_UP = "no bind up"
PARTS_BUDGET = "rate counted in parts"
AU_GATE = "au gate"
# Tests' wait_idle: how often it looks whether parts wait for a release.
RELEASE_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Planned:
    message: ClaimedMessage
    carrier: str
    carrier_source: str
    attempt: int
    route: str  # DOMAIN §6: the carrier's route (bind pool) the account sends over
    request: SmsRequest
    # One record per submit_sm: (part_no, part_total, §3 units it carries).
    records: tuple[tuple[int, int, int], ...]
    # Carriers ahead in the order passed over for having no bind up.
    carriers_down: tuple[str, ...] = ()
    # Part 1 goes alone; the others once the carrier accepted it.
    part_one_first: bool = False


class SmsLeg:
    def __init__(
        self,
        gateway: SmsGateway,
        write_behind: WriteBehind,
        lifecycle: Lifecycle,
        *,
        config: Callable[[], Config],
        lease_owner: str,
        on_submitted: Callable[[Sequence[Planned], datetime], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self._write_behind = write_behind
        self._lifecycle = lifecycle
        self._config = config
        self._lease_owner = lease_owner
        self._on_submitted = on_submitted
        self._in_flight: set[asyncio.Task[None]] = set()
        # Messages handed over whose outcomes are not all with the
        # write-behind. Counted per hand-over: a message claimed again
        # (a reroute) may be handed over while its previous hand-over's task
        # is still ending, and that end must not release the new one.
        self._held: Counter[int] = Counter()
        # Part 1 sent alone, the rest waiting for its outcome to be recorded.
        self._releases: set[asyncio.Future[bool]] = set()

    @property
    def in_flight(self) -> int:
        """Submits under way. A message whose other parts wait for part 1's
        outcome to be written holds no bind window and costs no work until
        then: it does not count, or the write-behind's latency would hold
        back claims of messages that could go at once."""
        return len(self._in_flight) - len(self._releases)

    async def wait_for_slot(self, max_in_flight: int) -> None:
        while self.in_flight >= max_in_flight:
            await asyncio.wait(
                self._in_flight, timeout=RELEASE_POLL_S, return_when=asyncio.FIRST_COMPLETED
            )

    async def wait_idle(self) -> None:
        """Tests: wait for every spawned submit to finish. Parts waiting for
        their part 1's acceptance to be recorded are released by a flush of
        the write-behind (the daemon's runs by itself; a test's may not)."""
        while self._in_flight:
            if self._releases:
                await self._write_behind.flush_once()
            await asyncio.wait(
                self._in_flight, timeout=RELEASE_POLL_S, return_when=asyncio.FIRST_COMPLETED
            )

    async def stop(self, drain_timeout_s: float) -> None:
        if self._in_flight:
            _done, pending = await asyncio.wait(self._in_flight, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()

    # -- in the claim's transaction --------------------------------------------------

    async def plan(
        self, tx: Transaction, messages: Sequence[ClaimedMessage], now: datetime, config: Config
    ) -> tuple[list[Planned], list[Move]]:
        """The carrier, sender and parts of each SMS; what cannot go now is
        held (au gate, no bind, parts budget) or ends here (skipped, failed)."""
        configured = [c for c in self._gateway.carriers() if c in config.carriers]
        # DOMAIN §6: a carrier is up for an account when the route it sends
        # over is.
        bound_for: dict[str, set[str]] = {}
        learned = {
            r["msisdn"]: r["carrier"]
            for r in await tx.fetch("learned_carriers", [m.msisdn for m in messages])
        }
        number_ranges = NumberRanges(
            {prefix: name for name, c in config.carriers.items() for prefix in c.number_prefixes}
        )
        moves: list[Move] = []
        planned: list[Planned] = []
        for message in messages:
            assert message.msisdn is not None and message.sms_text is not None
            account = config.accounts[message.account_id]
            bound = bound_for.get(message.account_id)
            if bound is None:
                bound = bound_for[message.account_id] = {
                    c for c in configured if self._gateway.is_available(c, account.route_for(c))
                }
            pick = pick_carrier(
                message.msisdn,
                named=message.carrier_named,
                learned=learned.get(message.msisdn),
                number_ranges=number_ranges,
                default_order=config.engine.default_carrier_order,
                wrong=message.carriers_wrong,
                configured=configured,
                allowed=message.carriers_allowed,
                bound=bound,
            )
            if pick.action in ("skip", "fail"):
                final = State.SKIPPED if pick.action == "skip" else State.FAILED
                moves.append(
                    Move(
                        message.id,
                        State.QUEUED,
                        final,
                        Event(final.value),
                        reason=pick.reason,
                        detail={"carriers_wrong": list(message.carriers_wrong)},
                    )
                )
                continue
            assert pick.carrier is not None
            if pick.action == "wait":
                moves.append(
                    Move(
                        message.id,
                        State.QUEUED,
                        State.QUEUED,
                        Event.POSTPONED,
                        not_before=now + timedelta(seconds=NO_BIND_RETRY_S),
                        detail={
                            "why": NO_BIND_UP,
                            "carriers": list(pick.down),
                            "route": account.route_for(pick.carrier),
                        },
                        # Every second while the SMSCs are away: one event
                        # when it starts waiting, one when it stops.
                        wait=NO_BIND_UP,
                    )
                )
                continue
            planned.append(self._planned(message, pick.carrier, pick.source, config, pick.down))
        planned, held = await self._au_gate(tx, planned, now, config.engine.au_spacing_s)
        moves += held
        if config.engine.pacing:
            fits = parts_budget(
                [
                    (
                        p.request.account_id,
                        len(p.request.parts),
                        config.accounts[p.request.account_id].count_parts,
                    )
                    for p in planned
                ]
            )
            moves += [
                Move(
                    p.message.id,
                    State.QUEUED,
                    State.QUEUED,
                    Event.POSTPONED,
                    detail={"why": PARTS_BUDGET},
                    wait=PARTS_BUDGET,
                )
                for p, fit in zip(planned, fits, strict=True)
                if not fit
            ]
            planned = [p for p, fit in zip(planned, fits, strict=True) if fit]
        return planned, moves

    def _planned(
        self,
        message: ClaimedMessage,
        carrier: str,
        source: str,
        config: Config,
        carriers_down: tuple[str, ...] = (),
    ) -> Planned:
        assert message.msisdn is not None and message.sms_text is not None
        account = config.accounts[message.account_id]
        # Validated and normalised at intake: only the split is redone, not
        # the charset scan (the text and its encoding are stored).
        route = account.route_for(carrier)
        # Checked at config load (config._check_routes); the carrier's own
        # connection stands in should a reload have dropped the route.
        connection = config.carriers[carrier].route_config(route) or config.carriers[carrier]
        encoding: Literal["ucs2", "gsm7"] = "gsm7" if message.sms_encoding == "gsm7" else "ucs2"
        split = split_gsm7 if encoding == "gsm7" else split_ucs2
        parts = tuple(split(message.sms_text))
        attempt = message.attempt + 1
        total = len(parts)
        if total > 1 and connection.concat == "payload":
            # One submit_sm with the whole text: one record, one SMSC id, one
            # receipt, billed the units of every part it carries.
            records: tuple[tuple[int, int, int], ...] = ((1, 1, total),)
        else:
            records = tuple((n, total, 1) for n in range(1, total + 1))
        return Planned(
            message=message,
            carrier=carrier,
            carrier_source=source,
            attempt=attempt,
            route=connection.route,
            request=SmsRequest(
                message_id=message.id,
                attempt=attempt,
                account_id=message.account_id,
                msisdn=message.msisdn,
                source_addr=connection.sender_for(account),
                encoding=encoding,
                parts=parts,
                expires_at=message.expires_at,
                route=connection.route,
            ),
            records=records,
            carriers_down=carriers_down,
            part_one_first=sends_part_one_first(source, len(records)),
        )

    async def _au_gate(
        self, tx: Transaction, planned: list[Planned], now: datetime, spacing_s: float
    ) -> tuple[list[Planned], list[Move]]:
        """DOMAIN §5 (domain/au_gate.py decides); what waits for the SMS in
        flight is recorded, so that its final receipt releases it."""
        au = [p for p in planned if p.carrier == AU]
        if not au:
            return planned, []
        facts = {
            r["msisdn"]: AuGateFacts(r["in_flight"], r["last_final_at"])
            for r in await tx.fetch(
                "au_gate_state",
                sorted({p.request.msisdn for p in au}),
                [p.request.message_id for p in au],
            )
        }
        kept: list[Planned] = []
        held: list[Move] = []
        waiting: list[tuple[int, str, datetime]] = []
        taken_in_batch: set[str] = set()
        for p in planned:
            if p.carrier != AU:
                kept.append(p)
                continue
            msisdn = p.request.msisdn
            hold = au_gate_check(
                facts.get(msisdn),
                taken_in_batch=msisdn in taken_in_batch,
                now=now,
                spacing_s=spacing_s,
            )
            if hold is None:
                taken_in_batch.add(msisdn)
                kept.append(p)
                continue
            if hold.why == "in_flight":
                waiting.append((p.message.id, msisdn, hold.not_before))
            held.append(
                Move(
                    p.message.id,
                    State.QUEUED,
                    State.QUEUED,
                    Event.AU_GATE_HOLD,
                    not_before=hold.not_before,
                    detail={"why": hold.why},
                    # Held again (still in flight at each recheck, then for
                    # the spacing): one wait, logged as it starts and ends.
                    wait=AU_GATE,
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

    async def mark_sending(
        self,
        tx: Transaction,
        planned: Sequence[Planned],
        now: datetime,
        lease_until: datetime,
        carry: Callable[[Move], Move] | None = None,
    ) -> list[Planned]:
        """'sending' under our lease, parts 'pending': a crash from here on
        is never resent blindly. `carry` puts what rides on a message's move
        onto it (a reassigned-number verdict)."""
        moves = [
            Move(
                p.message.id,
                State.QUEUED,
                State.SENDING,
                Event.SENDING,
                leg="sms",
                carrier=p.carrier,
                route=p.route,
                attempt=p.attempt,
                lease_owner=self._lease_owner,
                lease_until=lease_until,
                detail={
                    "attempt": p.attempt,
                    "carrier_from": p.carrier_source,
                    "route": p.route,
                    **({"carriers_down": list(p.carriers_down)} if p.carriers_down else {}),
                },
            )
            for p in planned
        ]
        applied = await self._lifecycle.apply(
            tx, moves if carry is None else [carry(m) for m in moves], now
        )
        marked = {a.move.message_id for a in applied}
        ours = [p for p in planned if p.message.id in marked]
        records = [(p, record) for p in ours for record in p.records]
        await tx.execute(
            "insert_parts",
            [p.message.id for p, _ in records],
            [p.attempt for p, _ in records],
            [part_no for _, (part_no, _, _) in records],
            [total for _, (_, total, _) in records],
            [p.carrier for p, _ in records],
            [units for _, (_, _, units) in records],
            now,
            [
                "unsent" if p.part_one_first and part_no > 1 else "pending"
                for p, (part_no, _, _) in records
            ],
        )
        return ours

    # -- after the commit ------------------------------------------------------------

    def held_message_ids(self) -> set[int]:
        """Messages handed over whose submit outcomes have not all reached
        the write-behind yet."""
        return set(self._held)

    def holding(self) -> set[int]:
        """Messages being submitted or with an outcome waiting to be written."""
        return set(self._held) | self._write_behind.unwritten_message_ids()

    def give_back_unheld(
        self,
        claims: Sequence[tuple[int, int, str, Sequence[int]]],
        held_before: set[int] | None = None,
    ) -> list[int]:
        """Of (message id, attempt, carrier, pending part numbers) claimed
        under this process's lease, those it holds nowhere (not being
        submitted, no outcome waiting to be written) were never handed to a
        bind: their pending parts are recorded unsent, which queues the
        message again. Returns their ids.

        `held_before`: what was held before the claims were read. A message
        whose outcome was written while they were read shows pending in
        them yet is held by neither the leg nor the write-behind any more:
        it was held before, so it is no orphan."""
        held = self.holding() | (held_before or set())
        orphans = [c for c in claims if c[0] not in held]
        for message_id, attempt, carrier, pending in orphans:
            for part_no in pending:
                self._write_behind.response(
                    SubmittedPart(message_id, attempt, carrier, PartOutcome(part_no, "unsent"))
                )
        return [c[0] for c in orphans]

    def hand_over(self, ours: Sequence[Planned], now: datetime) -> None:
        """Submit what the committed claim marked 'sending'."""
        self._held.update(p.request.message_id for p in ours)
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
        left = [p.request.message_id for p in queue]
        try:
            for p in queue:
                await self._submit_one(p)
                self._let_go(left.pop(0))
        finally:
            # A task that ended early (cancelled at shutdown) holds nothing.
            for message_id in left:
                self._let_go(message_id)

    def _let_go(self, message_id: int) -> None:
        self._held[message_id] -= 1
        if self._held[message_id] <= 0:
            del self._held[message_id]

    async def _submit_one(self, p: Planned) -> None:
        if not p.part_one_first:
            await self._submit(p, p.request)
            return
        released: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._releases.add(released)
        released.add_done_callback(self._releases.discard)
        await self._submit(p, replace(p.request, part_numbers=(1,)), released)
        # The next message to the number waits too (FIFO per recipient):
        # its parts must not overtake this one's.
        if await released:
            rest = tuple(range(2, len(p.request.parts) + 1))
            await self._submit(p, replace(p.request, part_numbers=rest))

    async def _submit(
        self, p: Planned, request: SmsRequest, released: asyncio.Future[bool] | None = None
    ) -> None:
        try:
            outcomes = await self._gateway.submit(p.carrier, request)
            if released is not None and outcomes:
                outcomes = [await _answer_of_part_one(outcomes[0]), *outcomes[1:]]
        except Exception:
            # The gateway reports per submit; an exception here means we
            # do not know what left: ambiguous, never resent blindly.
            log.exception("submit_failed", message_id=request.message_id)
            numbers = request.part_numbers or tuple(n for n, _, _ in p.records)
            outcomes = [PartOutcome(n, "unknown") for n in numbers]
        for outcome in outcomes:
            self._write_behind.response(
                SubmittedPart(
                    message_id=request.message_id,
                    attempt=p.attempt,
                    carrier=p.carrier,
                    outcome=outcome,
                    releases=released if outcome.part_no == 1 else None,
                )
            )
        if released is not None and not released.done() and not outcomes:
            released.set_result(False)


async def _answer_of_part_one(outcome: PartOutcome) -> PartOutcome:
    """Part 1 sent alone decides whether the others leave: when its
    submit_sm_resp timed out, its late answer (awaited while the bind keeps
    it, smpp.session.late_answer_keep_s) decides instead of the timeout,
    so that a slow SMSC's "accepted" still releases them."""
    if outcome.result != "unknown" or outcome.late is None:
        return outcome
    try:
        return await asyncio.shield(outcome.late)
    except asyncio.CancelledError:
        if not outcome.late.cancelled():
            raise  # our own task is being cancelled
        return outcome  # no answer will come: unknown, as recorded at the timeout


def counts_by_carrier(planned: Sequence[Planned]) -> Mapping[str, int]:
    """Submit records per carrier (the parts_submitted metric)."""
    counts: dict[str, int] = defaultdict(int)
    for p in planned:
        counts[p.carrier] += sum(units for _, _, units in p.records)
    return counts
