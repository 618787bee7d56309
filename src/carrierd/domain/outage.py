"""After a database outage: whose leases may be taken over, and when.

A lease runs out when its daemon stops renewing it: normally because the
daemon died, but during a database outage every daemon on the database
stops renewing at once, alive and holding its work (submit responses in
memory, binds up). When the database is back, each daemon renews its own
leases before it recovers anyone's, and gives the others a grace before
treating their expired leases as a dead daemon's: long enough for them to
notice the database is back (their own backoff) and renew.
"""

from __future__ import annotations

from datetime import datetime


def lost_lease_grace_s(lease_s: float, reconnect_backoff_s: float) -> float:
    """How long after the database came back another daemon's expired lease
    is still presumed alive: one renewal period is a third of a lease, so a
    whole lease leaves room for a late renewal, plus the slowest reconnect."""
    return lease_s + reconnect_backoff_s


def may_recover_lost_leases(
    now: datetime, database_back_at: datetime | None, grace_s: float
) -> bool:
    """Whether lost leases may be recovered at `now`. `database_back_at` is
    when this daemon last reached the database again after failing to; None
    when it has not failed since it started (its own start is then the
    latest reconnect, and a daemon starting up has no outage to forgive)."""
    if database_back_at is None:
        return True
    return (now - database_back_at).total_seconds() >= grace_s
