"""The send rate of one bind, adapted to what the SMSC accepts (AIMD).

Sans-I/O: time (the session's monotonic clock, in seconds) is passed in; the
session spaces its writes with a token bucket at the rate this module says.

    policy = SendRatePolicy.for_carrier(submit_rate_per_s=50.0, throttle_pause_s=1.0)
    rate = SendRate.start(policy)
    # at every throttling or accepted answer to a submit_sm:
    rate = send_rate_after(rate, "throttled", now_s, written_at_s=..., backlogged=True,
                           unanswered=..., policy=policy)
    rate.rate_per_s                     # None: no limit in force

An SMSC answers ESME_RTHROTTLED (or ESME_RMSGQFUL) to the submits it will not
take at the pace they come. Pausing the whole bind for a fixed time and then
writing a full window again only hammers it (nearly every submit throttled);
the bind instead finds the SMSC's pace and keeps to it.

Rules (``send_rate_after``):

- Multiplicative decrease: a throttling answer sets the rate to
  ``decrease_factor`` times the rate in force, never below ``floor_per_s``.
  Only answers to submits written at or after the last decrease count: the
  ones written before it went out at the old rate, which that decrease has
  already corrected (one decrease per round trip, however many submits were
  in flight).
- With no rate in force (no ceiling configured, and not throttled since the
  limit was last lifted), the decrease starts from the pace the bind was
  writing at: the answers accepted over the last second plus the submits
  still unanswered (they left within the last round trip). Counting only
  the accepted ones would start from almost nothing when a throttling
  answer overtakes the acceptances of the same burst.
- Additive increase: each accepted answer while submits were waiting for
  the rate raises it by ``increase_share_per_s`` of the reference rate (the
  rate the last decrease started from) for every second since the previous
  answer (at most ``MAX_STEP_GAP_S`` of them at once), up to the ceiling.
  An answer while nothing waited does not raise it: the rate is not what
  holds the bind back then, and a rate raised without use would come back
  as a burst the SMSC throttles. The step is a share of the reference, so
  the climb back takes about as long on a 5/s bind as on a 500/s one.
- A rate that grows to ``PROVEN_AFTER_FACTOR`` times the reference with no
  throttling answer has shown that the SMSC takes more than it did: with a
  ceiling it becomes the new reference (the steps grow, so a bind cut to
  its floor during an SMSC's bad minute is back at its ceiling in about a
  minute, not an hour); without one the limit is lifted.
- The configured ceiling (``submit_rate_per_s``) is never exceeded; the floor
  is one submit per ``throttle_pause_s`` (the slowest a throttled bind goes,
  so that it keeps probing), never above the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, TypeAlias

SubmitAnswer: TypeAlias = Literal["accepted", "throttled"]

DECREASE_FACTOR: Final = 0.8
INCREASE_SHARE_PER_S: Final = 0.1
# An accepted answer after a long quiet spell raises the rate by no more
# than this many seconds' worth of steps.
MAX_STEP_GAP_S: Final = 1.0
PROVEN_AFTER_FACTOR: Final = 2.0
# The floor when throttle_pause_s is 0 (no pause configured).
MIN_FLOOR_PER_S: Final = 0.1
# The accepted rate with no limit in force is counted in buckets this long.
ACCEPT_BUCKET_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class SendRatePolicy:
    ceiling_per_s: float | None  # submit_rate_per_s; None: no configured limit
    floor_per_s: float
    decrease_factor: float = DECREASE_FACTOR
    increase_share_per_s: float = INCREASE_SHARE_PER_S

    def __post_init__(self) -> None:
        if self.ceiling_per_s is not None and self.ceiling_per_s <= 0:
            raise ValueError(f"ceiling_per_s must be > 0 or None, got {self.ceiling_per_s}")
        if self.floor_per_s <= 0:
            raise ValueError(f"floor_per_s must be > 0, got {self.floor_per_s}")
        if not 0 < self.decrease_factor < 1:
            raise ValueError(f"decrease_factor must be within (0, 1), got {self.decrease_factor}")
        if self.increase_share_per_s <= 0:
            raise ValueError(f"increase_share_per_s must be > 0, got {self.increase_share_per_s}")

    @classmethod
    def for_carrier(cls, *, submit_rate_per_s: float, throttle_pause_s: float) -> SendRatePolicy:
        """A carrier's policy: its ``submit_rate_per_s`` (0: none) is the ceiling,
        one submit per ``throttle_pause_s`` the floor."""
        ceiling = submit_rate_per_s if submit_rate_per_s > 0 else None
        floor = 1.0 / throttle_pause_s if throttle_pause_s > 0 else MIN_FLOOR_PER_S
        if ceiling is not None:
            floor = min(floor, ceiling)
        return cls(ceiling_per_s=ceiling, floor_per_s=floor)


# A NamedTuple: one is built per accepted answer, at thousands a second.
class SendRate(NamedTuple):
    """One bind's send rate and what the next step needs to know."""

    rate_per_s: float | None  # in force now; None: no limit
    # The reference of the additive step: the rate the last decrease started
    # from, or a rate reached since at PROVEN_AFTER_FACTOR times it.
    throttled_at_per_s: float
    decreased_at_s: float | None  # when the last decrease happened
    stepped_at_s: float | None  # the last accepted answer (or decrease)
    # Accepted answers in the current one-second bucket and the one before:
    # the pace a decrease starts from when no limit was in force.
    bucket_started_at_s: float | None
    accepted_in_bucket: int
    accepted_in_previous_bucket: int

    @classmethod
    def start(cls, policy: SendRatePolicy) -> SendRate:
        return cls(policy.ceiling_per_s, 0.0, None, None, None, 0, 0)

    def below_ceiling(self, policy: SendRatePolicy) -> bool:
        """Held below the configured rate (or held at all, with no ceiling)
        because the SMSC throttled: the bind's health says "throttled"."""
        if self.rate_per_s is None:
            return False
        return policy.ceiling_per_s is None or self.rate_per_s < policy.ceiling_per_s


def send_rate_after(
    rate: SendRate,
    answer: SubmitAnswer,
    now_s: float,
    *,
    written_at_s: float,
    backlogged: bool,
    unanswered: int = 0,
    policy: SendRatePolicy,
) -> SendRate:
    """The bind's send rate after ``answer`` to a submit written at ``written_at_s``;
    ``backlogged``: submits were waiting for the rate when the answer came;
    ``unanswered``: submits written and not yet answered.
    See the module docstring for the rules."""
    if answer == "throttled":
        return _decreased(rate, now_s, written_at_s, unanswered, policy)
    # Called for every accepted answer: one tuple built, no _replace.
    rate_per_s, proven_per_s, decreased_at_s, stepped_at_s, started_s, count, previous = rate
    if started_s is not None and now_s - started_s < ACCEPT_BUCKET_S:
        count += 1
    else:
        previous = count if started_s is not None and now_s - started_s < 2 * ACCEPT_BUCKET_S else 0
        # Buckets stay a second apart while the last one ended under a second ago.
        started_s = started_s + ACCEPT_BUCKET_S if started_s is not None and previous else now_s
        count = 1
    if rate_per_s is not None and backlogged and stepped_at_s is not None:
        gap_s = min(MAX_STEP_GAP_S, max(0.0, now_s - stepped_at_s))
        rate_per_s += policy.increase_share_per_s * proven_per_s * gap_s
        if rate_per_s >= PROVEN_AFTER_FACTOR * proven_per_s:
            if policy.ceiling_per_s is None:
                rate_per_s = None
            else:
                proven_per_s = rate_per_s
        if rate_per_s is not None and policy.ceiling_per_s is not None:
            rate_per_s = min(rate_per_s, policy.ceiling_per_s)
    return SendRate(rate_per_s, proven_per_s, decreased_at_s, now_s, started_s, count, previous)


def accepted_per_s(rate: SendRate, now_s: float) -> float:
    """Accepted answers over the last second: the current bucket plus the
    share of the previous one still inside the second (a sliding count in
    two buckets)."""
    if rate.bucket_started_at_s is None:
        return 0.0
    age_s = now_s - rate.bucket_started_at_s
    if age_s >= 2 * ACCEPT_BUCKET_S:
        return 0.0
    if age_s >= ACCEPT_BUCKET_S:
        # The current bucket is already the previous one.
        previous, current, age_s = rate.accepted_in_bucket, 0, age_s - ACCEPT_BUCKET_S
    else:
        previous, current = rate.accepted_in_previous_bucket, rate.accepted_in_bucket
    previous_share = 1.0 - age_s / ACCEPT_BUCKET_S
    return (current + previous * previous_share) / ACCEPT_BUCKET_S


def _decreased(
    rate: SendRate, now_s: float, written_at_s: float, unanswered: int, policy: SendRatePolicy
) -> SendRate:
    if rate.decreased_at_s is not None and written_at_s < rate.decreased_at_s:
        return rate  # sent at the old rate, which the last decrease already cut
    if rate.rate_per_s is not None:
        start_per_s = rate.rate_per_s
    else:
        start_per_s = max(policy.floor_per_s, accepted_per_s(rate, now_s) + unanswered)
    if policy.ceiling_per_s is not None:
        start_per_s = min(start_per_s, policy.ceiling_per_s)
    lowered = max(policy.floor_per_s, policy.decrease_factor * start_per_s)
    return rate._replace(
        rate_per_s=lowered, throttled_at_per_s=start_per_s, decreased_at_s=now_s, stepped_at_s=now_s
    )
