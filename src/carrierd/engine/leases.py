"""Leases: a daemon's claim on the messages it works on.

A message in 'dispatching' (the +Message leg talks to the platform) or
'sending' (SMS parts leaving) is held under its daemon's lease; the daemon
renews its leases while it lives, gives back what it did not hand over when
it stops, and a lease that ran out (the daemon died) is recovered by the
timers of any daemon. A lease belongs to one process, not to a daemon id:
a daemon restarted under the same id (systemd does, and so does the
README's multi-daemon recipe) never renews its dead predecessor's leases.

  dispatching  -> queued: nothing was handed over
  sending      -> its parts still pending become unknown (written or not,
                  nobody can tell now: "daemon stopped with the part in
                  flight"), then the message is settled from its parts like
                  any other (domain/attempt.py): parts recorded refused,
                  unsent or accepted are known, so a refusal reroutes or
                  fails, a message none of whose parts left is queued
                  again, and only a message with a part in doubt ends
                  unknown. An account that chose at-least-once delivery
                  gets a message with parts in flight queued again instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from carrierd.config import Config
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.states import State
from carrierd.engine.lifecycle import Lifecycle
from carrierd.store.db import Database, Transaction

# Leases are renewed this many times per engine.lease_s.
RENEWALS_PER_LEASE = 3
# parts.unknown_cause of a part a dead daemon left pending.
DAEMON_STOPPED = "daemon_stopped"


def lease_owner_for(daemon_id: str) -> str:
    """This process's name on its leases: its daemon id, for people reading
    the rows, and a token drawn at start, so that each start owns only what
    it claimed itself."""
    return f"{daemon_id}/{secrets.token_hex(6)}"


class Leases:
    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        *,
        config: Callable[[], Config],
        lease_owner: str,
    ) -> None:
        self._db = db
        self._lifecycle = lifecycle
        self._config = config
        self._lease_owner = lease_owner

    async def renew(self, now: datetime) -> None:
        """Extend the leases with less than 2.5 renewal periods left
        (renewals come every lease_s / RENEWALS_PER_LEASE): a lease skipped
        now survives even a renewal that comes 1.5 periods late."""
        lease_s = self._config().engine.lease_s
        renew_every_s = lease_s / RENEWALS_PER_LEASE
        await self._db.execute(
            "renew_leases",
            self._lease_owner,
            now + timedelta(seconds=lease_s),
            now + timedelta(seconds=2.5 * renew_every_s),
        )

    async def release(self, now: datetime) -> None:
        """On shutdown: what this daemon claimed but did not hand over goes back."""

        async def work(tx: Transaction) -> None:
            rows = await tx.fetch("release_lease_claims", self._lease_owner)
            await self._lifecycle.apply(
                tx,
                [
                    Move(
                        r["id"],
                        State.DISPATCHING,
                        State.QUEUED,
                        Event.RELEASED,
                        detail={"why": "daemon stopping"},
                    )
                    for r in rows
                ],
                now,
            )

        await self._db.in_transaction(work)

    async def recover_lost(
        self, tx: Transaction, now: datetime, limit: int
    ) -> tuple[int, list[int]]:
        """Apply what a dead daemon's lost leases mean; returns how many
        messages moved, and those whose every part was answered, for the
        caller to settle from their parts."""
        rows = await tx.fetch("due_lost_leases", now, limit)
        if not rows:
            return 0, []
        config = self._config()
        moves: list[Move] = []
        settle_from_parts: list[int] = []
        in_flight: list[int] = []
        for row in rows:
            if row["state"] == State.DISPATCHING:
                # Nothing was handed over: any daemon may take it again.
                moves.append(
                    Move(row["id"], State.DISPATCHING, State.QUEUED, Event.LEASE_RECOVERED)
                )
            elif row["pending"] == 0:
                # Every part has its response recorded: the parts decide.
                settle_from_parts.append(row["id"])
            else:
                account = config.accounts.get(row["account_id"])
                # Parts in flight are ambiguous either way: never counted as sent.
                if account is not None and account.at_least_once:
                    moves.append(
                        Move(
                            row["id"],
                            State.SENDING,
                            State.QUEUED,
                            Event.LEASE_RECOVERED,
                            detail={"at_least_once": True, "pending_parts": row["pending"]},
                        )
                    )
                    await tx.execute("parts_outcome_unknown", [row["id"]], DAEMON_STOPPED, True)
                else:
                    in_flight.append(row["id"])
        if in_flight:
            # The parts with a recorded answer still decide: only the
            # pending ones are in doubt.
            await tx.execute("parts_outcome_unknown", in_flight, DAEMON_STOPPED, False)
            settle_from_parts += in_flight
        applied = await self._lifecycle.apply(tx, moves, now)
        return len(applied), settle_from_parts
