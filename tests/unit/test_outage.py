"""Lost leases after a database outage (domain/outage.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carrierd.domain.outage import lost_lease_grace_s, may_recover_lost_leases

BACK = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)


def test_the_grace_covers_a_lease_and_the_slowest_reconnect() -> None:
    assert lost_lease_grace_s(60.0, 5.0) == 65.0


def test_a_daemon_that_never_lost_the_database_recovers_at_once() -> None:
    assert may_recover_lost_leases(BACK, None, 65.0)


def test_after_an_outage_lost_leases_wait_for_the_grace() -> None:
    assert not may_recover_lost_leases(BACK, BACK, 65.0)
    assert not may_recover_lost_leases(BACK + timedelta(seconds=64.9), BACK, 65.0)
    assert may_recover_lost_leases(BACK + timedelta(seconds=65), BACK, 65.0)
