"""Time as a value passed in.

Domain code never reads the clock: it takes `now` as an argument. The shell
holds a `Clock` and asks it once per decision, so tests can swap in a
`FakeClock` and run a 72-hour expiry in microseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol

# Japan has no daylight saving time, so a fixed offset is exact.
JST = timezone(timedelta(hours=9), "JST")


def require_aware(at: datetime, what: str = "datetime") -> None:
    """Raise ValueError for a naive datetime: a naive time in a shared
    database is read differently by daemons in different time zones."""
    if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {at.isoformat()}")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        require_aware(start, "FakeClock start")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"advance() cannot go backwards ({seconds} s); use set()")
        self._now += timedelta(seconds=seconds)

    def set(self, at: datetime) -> None:
        """Jump to `at`, backwards too (to simulate skew between hosts)."""
        require_aware(at, "FakeClock.set")
        self._now = at
