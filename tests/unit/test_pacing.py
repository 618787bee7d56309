from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.domain.clock import JST, FakeClock
from carrierd.domain.pacing import (
    Bucket,
    QuietWindow,
    au_not_before,
    next_resend_at,
    take_tokens,
    tokens_at,
)

T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
RATE_PER_HOUR = 40_000.0
BURST = 100


def test_full_bucket_grants_up_to_burst_then_says_how_long_to_wait() -> None:
    bucket, granted, wait_s = take_tokens(Bucket.full(BURST, T0), T0, 250, RATE_PER_HOUR, BURST)
    assert granted == 100
    assert bucket.tokens == pytest.approx(0.0)
    assert wait_s == pytest.approx(3600 / RATE_PER_HOUR, abs=1e-6)  # one token: 90 ms


def test_no_wait_when_everything_is_granted() -> None:
    bucket, granted, wait_s = take_tokens(Bucket.full(BURST, T0), T0, 10, RATE_PER_HOUR, BURST)
    assert (granted, wait_s) == (10, 0.0)
    assert bucket.tokens == pytest.approx(90.0)
    assert bucket.updated_at == T0


def test_refill_is_proportional_to_elapsed_time_and_capped() -> None:
    empty = Bucket.empty(T0)
    _, granted, _ = take_tokens(empty, T0 + timedelta(seconds=0.9), 100, RATE_PER_HOUR, BURST)
    assert granted == 10
    _, granted, _ = take_tokens(empty, T0 + timedelta(hours=5), 1000, RATE_PER_HOUR, BURST)
    assert granted == BURST


def test_fractional_tokens_are_never_granted_but_kept() -> None:
    bucket, granted, wait_s = take_tokens(
        Bucket.empty(T0), T0 + timedelta(seconds=0.045), 1, RATE_PER_HOUR, BURST
    )
    assert granted == 0
    assert bucket.tokens == pytest.approx(0.5)
    assert wait_s == pytest.approx(0.045, abs=1e-6)


def test_zero_want_only_refills() -> None:
    bucket, granted, wait_s = take_tokens(
        Bucket.empty(T0), T0 + timedelta(seconds=9), 0, RATE_PER_HOUR, BURST
    )
    assert (granted, wait_s) == (0, 0.0)
    assert bucket.tokens == pytest.approx(100.0)


def test_clock_behind_the_last_writer_mints_nothing() -> None:
    bucket = Bucket(3.25, T0)
    skewed, granted, _ = take_tokens(bucket, T0 - timedelta(seconds=30), 0, RATE_PER_HOUR, BURST)
    assert granted == 0
    assert skewed == bucket  # tokens kept, updated_at not moved back
    later, _, _ = take_tokens(skewed, T0 + timedelta(seconds=0.09), 0, RATE_PER_HOUR, BURST)
    assert later.tokens == pytest.approx(4.25)


def test_tokens_at_projects_the_refill_without_taking() -> None:
    # 0.9 s at 40,000/h is 10 tokens; the stored bucket is a value, untouched.
    bucket = Bucket(2.5, T0)
    assert tokens_at(bucket, T0 + timedelta(seconds=0.9), RATE_PER_HOUR, BURST) == pytest.approx(
        12.5
    )
    assert tokens_at(bucket, T0 + timedelta(hours=1), RATE_PER_HOUR, BURST) == BURST
    assert tokens_at(bucket, T0 - timedelta(minutes=1), RATE_PER_HOUR, BURST) == 2.5
    assert bucket == Bucket(2.5, T0)


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.floats(min_value=0.0, max_value=500.0),
    elapsed_s=st.floats(min_value=-60.0, max_value=7200.0),
    rate=st.floats(min_value=1.0, max_value=1e6),
    burst=st.integers(min_value=1, max_value=1000),
)
def test_tokens_at_is_what_a_zero_take_leaves(
    tokens: float, elapsed_s: float, rate: float, burst: int
) -> None:
    bucket = Bucket(tokens, T0)
    now = T0 + timedelta(seconds=elapsed_s)
    level = tokens_at(bucket, now, rate, burst)
    assert level <= burst
    assert take_tokens(bucket, now, 0, rate, burst)[0].tokens == level


def test_tokens_at_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        tokens_at(Bucket.empty(T0), T0, 0.0, BURST)
    with pytest.raises(ValueError):
        tokens_at(Bucket.empty(T0), T0, RATE_PER_HOUR, 0)
    with pytest.raises(ValueError):
        tokens_at(Bucket.empty(T0), datetime(2026, 7, 1), RATE_PER_HOUR, BURST)


def test_lowered_burst_caps_stored_tokens() -> None:
    _, granted, _ = take_tokens(Bucket(500.0, T0), T0, 1000, RATE_PER_HOUR, 50)
    assert granted == 50


@pytest.mark.parametrize(
    ("want", "rate", "burst"), [(-1, 1.0, 1), (1, 0.0, 1), (1, -5.0, 1), (1, 1.0, 0)]
)
def test_bad_arguments(want: int, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        take_tokens(Bucket.empty(T0), T0, want, rate, burst)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        take_tokens(Bucket.empty(T0), datetime(2026, 7, 1), 1, RATE_PER_HOUR, BURST)


def simulate_hour(start_tokens: float, backlog: int) -> int:
    """Drive the bucket as the dispatcher would, for one simulated hour."""
    clock = FakeClock(T0)
    bucket = Bucket(start_tokens, T0)
    end = T0 + timedelta(hours=1)
    granted_total = 0
    while backlog and clock.now() <= end:
        bucket, granted, wait_s = take_tokens(
            bucket, clock.now(), min(500, backlog), RATE_PER_HOUR, BURST
        )
        granted_total += granted
        backlog -= granted
        if granted == 0:
            clock.advance(wait_s)
    return granted_total


@pytest.mark.parametrize(
    ("start_tokens", "expected"),
    [
        (0.0, 40_000),  # empty bucket: exactly the hourly rate
        (float(BURST), 40_000 + BURST),  # full bucket: the burst is spent on top
    ],
)
def test_backlog_drains_at_the_account_rate(start_tokens: float, expected: int) -> None:
    granted = simulate_hour(start_tokens, backlog=60_000)
    assert abs(granted - expected) <= 0.001 * 40_000


def test_two_daemons_with_skewed_clocks_share_one_rate() -> None:
    bucket = Bucket.empty(T0)
    granted_total = 0
    true_now = T0
    end = T0 + timedelta(minutes=10)
    skew = timedelta(seconds=-7)  # the second host's clock is behind
    turn = 0
    while true_now <= end:
        daemon_now = true_now + (skew if turn % 2 else timedelta(0))
        bucket, granted, wait_s = take_tokens(bucket, daemon_now, 50, RATE_PER_HOUR, BURST)
        granted_total += granted
        true_now += timedelta(seconds=max(wait_s, 0.05))
        turn += 1
    assert granted_total <= RATE_PER_HOUR * 10 / 60 + 1


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=120.0, allow_nan=False),
        st.integers(min_value=0, max_value=300),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1.0, max_value=200_000.0),
    st.integers(min_value=1, max_value=500),
    st.floats(min_value=0.0, max_value=1.0),
    steps,
)
def test_no_window_gets_more_than_burst_plus_rate(
    rate_per_hour: float,
    burst: int,
    start_fill: float,
    step_list: list[tuple[float, int, bool]],
) -> None:
    bucket = Bucket(start_fill * burst, T0)
    now = T0
    last_wait_s = 0.0
    history: list[tuple[datetime, int]] = []
    for dt_s, want, follow_wait in step_list:
        now += timedelta(seconds=last_wait_s if follow_wait else dt_s)
        bucket, granted, last_wait_s = take_tokens(bucket, now, want, rate_per_hour, burst)
        assert 0 <= granted <= want
        assert last_wait_s == 0.0 if granted == want else last_wait_s > 0.0
        history.append((now, granted))
    for i, (window_start, _) in enumerate(history):
        in_window = 0
        for at, granted in history[i:]:
            in_window += granted
            window_s = (at - window_start).total_seconds()
            assert in_window <= burst + rate_per_hour * window_s / 3600 + 1


def test_au_gate_counts_from_the_previous_receipt() -> None:
    receipt_at = T0 + timedelta(seconds=5)
    assert au_not_before(receipt_at) == receipt_at + timedelta(seconds=22)
    assert au_not_before(receipt_at, spacing_s=30) == receipt_at + timedelta(seconds=30)


NIGHT = QuietWindow(time(21, 0), time(9, 0))
LUNCH = QuietWindow(time(12, 0), time(13, 0))


def jst(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 7, 1, hour, minute, second, tzinfo=JST)


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        (jst(20, 59, 59), False),
        (jst(21, 0), True),
        (jst(23, 59), True),
        (jst(0, 0), True),
        (jst(3, 0), True),
        (jst(8, 59, 59), True),
        (jst(9, 0), False),
        (jst(15, 0), False),
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), True),  # 21:00 JST
        (datetime(2026, 7, 1, 11, 59, tzinfo=UTC), False),  # 20:59 JST
    ],
)
def test_quiet_window_crossing_midnight(at: datetime, inside: bool) -> None:
    assert NIGHT.contains(at) is inside


@pytest.mark.parametrize(
    ("at", "inside"),
    [(jst(11, 59), False), (jst(12, 0), True), (jst(12, 30), True), (jst(13, 0), False)],
)
def test_quiet_window_within_one_day(at: datetime, inside: bool) -> None:
    assert LUNCH.contains(at) is inside


def test_quiet_window_in_another_zone() -> None:
    utc_night = QuietWindow(time(21, 0), time(9, 0), tz=UTC)
    assert utc_night.contains(jst(6, 30))  # 21:30 UTC the day before
    assert not utc_night.contains(jst(18, 30))  # 09:30 UTC


def test_quiet_window_rejects_ambiguous_settings() -> None:
    with pytest.raises(ValueError):
        QuietWindow(time(9, 0), time(9, 0))
    with pytest.raises(ValueError):
        QuietWindow(time(21, 0, tzinfo=JST), time(9, 0))
    with pytest.raises(ValueError):
        NIGHT.contains(datetime(2026, 7, 1, 12, 0))


TEN_MINUTES_S = 600.0


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (jst(20, 49), jst(20, 59)),  # lands at 20:59: still allowed
        (jst(20, 50), None),  # lands at 21:00: inside, ends as failed
        (jst(23, 0), None),
        (jst(8, 45), None),  # 08:55: still inside after midnight
        (jst(8, 50), jst(9, 0)),  # 09:00: the window is over
        (jst(14, 0), jst(14, 10)),
    ],
)
def test_resend_and_the_night_window(now: datetime, expected: datetime | None) -> None:
    assert next_resend_at(now, 0, 3, TEN_MINUTES_S, NIGHT) == expected


def test_resend_and_a_daytime_window() -> None:
    assert next_resend_at(jst(11, 45), 0, 3, TEN_MINUTES_S, LUNCH) == jst(11, 55)
    assert next_resend_at(jst(11, 50), 0, 3, TEN_MINUTES_S, LUNCH) is None
    assert next_resend_at(jst(12, 50), 0, 3, TEN_MINUTES_S, LUNCH) == jst(13, 0)


def test_resend_stops_at_the_maximum() -> None:
    assert next_resend_at(jst(14, 0), 2, 3, TEN_MINUTES_S, None) == jst(14, 10)
    assert next_resend_at(jst(14, 0), 3, 3, TEN_MINUTES_S, None) is None
    assert next_resend_at(jst(14, 0), 0, 0, TEN_MINUTES_S, NIGHT) is None


def test_resend_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError):
        next_resend_at(jst(14, 0), 0, 3, 0.0, None)
