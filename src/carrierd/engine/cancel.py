"""A sender's cancel (POST /v1/messages/{id}/cancel): domain/cancel.py
decides, this applies the decision through the lifecycle writer.

Race-safety comes from the writer: a Move applies only while the row is in
the state it was decided from. A dispatcher's claim locks the row and moves
it to `sending` in the same transaction, so a cancel that reads `queued`
either commits first (and the claim no longer finds the row queued) or
waits for the claim's commit and then finds nothing to move. Either way the
message is sent or cancelled, never both; when the cancel's Move did not
apply, the state is read again and decided again (a few times at most).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import structlog

from carrierd.channels.rcs import RevokeOutcome
from carrierd.domain.cancel import (
    CancelOutcome,
    Refused,
    RevokeFirst,
    after_revoke,
    decide_cancel,
)
from carrierd.domain.clock import Clock
from carrierd.domain.lifecycle import Move
from carrierd.domain.states import State
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.rcs_leg import REVOKE_RETRY_S
from carrierd.store.db import Database, Transaction

log = structlog.get_logger("carrierd.engine.cancel")

# (account id, message id): the account's official account revokes it.
Revoke = Callable[[str, int], Awaitable[RevokeOutcome]]

# Each round reads the state, decides and tries to move; a round is lost
# only to another writer that moved the message meanwhile.
MAX_ROUNDS = 3
# Revokes a send's cancel has in flight at once at the +Message platform.
REVOKE_CONCURRENCY = 8


class Canceller:
    def __init__(
        self, db: Database, lifecycle: Lifecycle, clock: Clock, revoke: Revoke | None = None
    ) -> None:
        self._db = db
        self._lifecycle = lifecycle
        self._clock = clock
        self._revoke = revoke

    async def cancel(self, account_id: str, message_id: int) -> CancelOutcome:
        state: State | None = None
        for _ in range(MAX_ROUNDS):
            row = await self._db.get_message(account_id, message_id)
            if row is None:
                return CancelOutcome("not_found")
            state = State(row["state"])
            decision = decide_cancel(
                message_id, state, row["leg"], can_revoke=self._revoke is not None
            )
            if isinstance(decision, Refused):
                return _refused(decision)
            if isinstance(decision, RevokeFirst):
                outcome = await self._revoke_then_decide(account_id, message_id, state)
                if outcome is None:
                    continue  # the message moved meanwhile: decide again
                if isinstance(outcome, CancelOutcome):
                    return outcome
                decision = outcome
            if await self._apply(decision):
                log.info("message_cancelled", message_id=message_id, src=decision.src.value)
                return CancelOutcome("cancelled", State.CANCELLED)
        # Another writer kept moving it: say where it is now.
        return CancelOutcome(
            "refused", state, "the message changed state while being cancelled", retry=True
        )

    async def cancel_many(
        self, account_id: str, message_ids: Sequence[int]
    ) -> Counter[tuple[str, str | None]]:
        """Cancel many messages of the account (a send's): those
        decide_cancel moves at once are moved in one transaction; those to
        revoke first, or that moved meanwhile, go through `cancel` one by
        one (the same rule). Returns how many came to each (result, state)."""
        outcomes: Counter[tuple[str, str | None]] = Counter()
        rows = await self._db.fetch("messages_for_cancel", list(message_ids), account_id)
        moves: list[Move] = []
        one_by_one: list[int] = []
        for row in rows:
            decision = decide_cancel(
                row["id"], State(row["state"]), row["leg"], can_revoke=self._revoke is not None
            )
            if isinstance(decision, Move):
                moves.append(decision)
            elif isinstance(decision, RevokeFirst):
                one_by_one.append(row["id"])
            else:
                outcomes[("refused", decision.state.value)] += 1
        if moves:
            at = self._clock.now()

            async def work(tx: Transaction) -> set[int]:
                return {a.move.message_id for a in await self._lifecycle.apply(tx, moves, at)}

            applied = await self._db.in_transaction(work)
            outcomes[("cancelled", State.CANCELLED.value)] += len(applied)
            one_by_one += [m.message_id for m in moves if m.message_id not in applied]
        gate = asyncio.Semaphore(REVOKE_CONCURRENCY)

        async def one(message_id: int) -> CancelOutcome:
            async with gate:
                return await self.cancel(account_id, message_id)

        for outcome in await asyncio.gather(*(one(m) for m in one_by_one)):
            state = outcome.state.value if outcome.state is not None else None
            outcomes[(outcome.result, state)] += 1
        return outcomes

    async def _revoke_then_decide(
        self, account_id: str, message_id: int, state: State
    ) -> Move | CancelOutcome | None:
        if self._revoke is None:
            return CancelOutcome(
                "not_configured",
                state,
                "+Message is not configured on this daemon: it cannot revoke",
                retry=True,
            )
        now = self._clock.now()
        held = await self._db.fetchval(
            "rcs_hold_for_cancel",
            message_id,
            account_id,
            now + timedelta(seconds=REVOKE_RETRY_S),
            state,
        )
        if held is None:
            return None
        answer = await self._revoke(account_id, message_id)
        detail: dict[str, object] = {"answer": answer.kind}
        if answer.http_status is not None:
            detail["http_status"] = answer.http_status
        decision = after_revoke(message_id, state, answer.kind, detail)
        if isinstance(decision, Refused):
            log.info(
                "message_cancel_refused",
                message_id=message_id,
                revoke=answer.kind,
                reason=answer.reason,
            )
            if answer.kind == "error":
                return CancelOutcome("revoke_failed", decision.state, decision.reason, retry=True)
            return _refused(decision)
        return decision

    async def _apply(self, move: Move) -> bool:
        at = self._clock.now()

        async def work(tx: Transaction) -> bool:
            return bool(await self._lifecycle.apply(tx, [move], at))

        return await self._db.in_transaction(work)


def _refused(refused: Refused) -> CancelOutcome:
    return CancelOutcome("refused", refused.state, refused.reason, refused.retry)
