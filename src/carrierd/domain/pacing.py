"""Pacing decisions (DOMAIN §5, §9).

Pure arithmetic on values: the functions say how much may go now and how
long to wait; the shell does the waiting. The account bucket is a plain
value so that it can live in one PostgreSQL row that every daemon updates
under a row lock: the rate is per account, not per host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from math import ceil, floor

from carrierd.domain.clock import JST, require_aware

DEFAULT_ACCOUNT_RATE_PER_HOUR = 40_000.0
AU_SPACING_S = 22.0

# Float refill arithmetic can land a hair below a whole token at the exact
# instant the wait said it would be whole; without this slack the shell
# would spin on sub-microsecond waits.
_TOKEN_EPSILON = 1e-9
# datetimes have microsecond resolution: a shorter wait would not move a
# fake (or stored) clock at all.
_MIN_WAIT_S = 1e-6


@dataclass(frozen=True)
class Bucket:
    """Token bucket state: `tokens` available as of `updated_at`."""

    tokens: float
    updated_at: datetime

    @classmethod
    def full(cls, burst: int, at: datetime) -> Bucket:
        require_aware(at, "Bucket.updated_at")
        return cls(float(burst), at)

    @classmethod
    def empty(cls, at: datetime) -> Bucket:
        require_aware(at, "Bucket.updated_at")
        return cls(0.0, at)


def tokens_at(bucket: Bucket, now: datetime, rate_per_hour: float, burst: int) -> float:
    """Tokens in the bucket at `now`: the stored ones plus the refill since
    `updated_at`, never more than `burst`."""
    require_aware(now, "now")
    if rate_per_hour <= 0:
        raise ValueError(f"rate_per_hour must be > 0, got {rate_per_hour}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    # A daemon whose clock is behind the last writer's must not mint tokens
    # for time that already counted.
    elapsed_s = max(0.0, (now - bucket.updated_at).total_seconds())
    return min(float(burst), bucket.tokens + elapsed_s * rate_per_hour / 3600.0)


def take_tokens(
    bucket: Bucket, now: datetime, want: int, rate_per_hour: float, burst: int
) -> tuple[Bucket, int, float]:
    """Take up to `want` whole tokens.

    Returns (new bucket, granted, wait_s): `wait_s` is how long until at
    least one more token exists when `granted < want`, else 0.0. The caller
    stores the new bucket whether or not anything was granted.
    """
    if want < 0:
        raise ValueError(f"want must be >= 0, got {want}")
    available = tokens_at(bucket, now, rate_per_hour, burst)
    # Nor may a clock behind the last writer's move updated_at backwards.
    updated_at = max(now, bucket.updated_at)

    granted = min(want, floor(available + _TOKEN_EPSILON))
    remaining = max(0.0, available - granted)
    new_bucket = Bucket(remaining, updated_at)
    if granted >= want:
        return new_bucket, granted, 0.0
    missing = max(0.0, 1.0 - remaining)
    wait_s = max(_MIN_WAIT_S, ceil(missing * 3600.0 / rate_per_hour / _MIN_WAIT_S) * _MIN_WAIT_S)
    return new_bucket, granted, wait_s


def au_not_before(previous_final_receipt_at: datetime, spacing_s: float = AU_SPACING_S) -> datetime:
    """Earliest time the next SMS to the same au number may leave.

    au counts from the previous message's arrival (its final receipt), not
    from its submission (§5).
    """
    require_aware(previous_final_receipt_at, "previous_final_receipt_at")
    return previous_final_receipt_at + timedelta(seconds=spacing_s)


@dataclass(frozen=True)
class QuietWindow:
    """Local time-of-day window in which no resend may happen.

    `start` is inside, `end` is outside. A window with start > end crosses
    midnight (21:00-09:00). `start` and `end` are wall-clock times without
    tzinfo, read in `tz`.
    """

    start: time
    end: time
    tz: tzinfo = JST

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("QuietWindow start/end are wall-clock times: give tz separately")
        if self.start == self.end:
            # Ambiguous (empty or all day): configure None for "no window".
            raise ValueError(f"QuietWindow start and end are both {self.start.isoformat()}")

    def contains(self, at: datetime) -> bool:
        require_aware(at, "at")
        local = at.astimezone(self.tz).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def next_resend_at(
    now: datetime,
    resends_done: int,
    max_resends: int,
    interval_s: float,
    quiet: QuietWindow | None,
) -> datetime | None:
    """When to resend after a failure receipt, or None: end as failed.

    None when `max_resends` resends were already made, or when the resend
    would fall inside the quiet window (§9: it is not pushed past the
    window, the message ends instead).
    """
    require_aware(now, "now")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    if resends_done >= max_resends:
        return None
    at = now + timedelta(seconds=interval_s)
    if quiet is not None and quiet.contains(at):
        return None
    return at


def parts_budget(claimed: Sequence[tuple[str, int, bool]]) -> list[bool]:
    """Which claimed SMS fit their account's budget, in claim order.

    `claimed` is (account, parts, counts_parts) per message. Each message
    was claimed with one token; an account that counts its rate in parts
    spends one per part, so a multipart message may overspend what the claim
    took: it and every later message of the account wait for the next cycle
    (FIFO holds). The first message of an account always fits, or a message
    longer than a cycle's tokens would never leave.
    """
    budget: dict[str, int] = {}
    for account, _, _ in claimed:
        budget[account] = budget.get(account, 0) + 1
    spent: dict[str, int] = {}
    closed: set[str] = set()
    fits: list[bool] = []
    for account, parts, counts_parts in claimed:
        if not counts_parts:
            fits.append(True)
            continue
        used = spent.get(account, 0)
        if account in closed or (used + parts > budget[account] and used > 0):
            closed.add(account)
            fits.append(False)
            continue
        spent[account] = used + parts
        fits.append(True)
    return fits
