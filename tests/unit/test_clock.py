from datetime import UTC, datetime, timedelta

import pytest

from carrierd.domain.clock import JST, Clock, FakeClock, SystemClock, require_aware

START = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)


def test_system_clock_is_aware_utc() -> None:
    clock: Clock = SystemClock()
    assert clock.now().utcoffset() == timedelta(0)


def test_fake_clock_advances_only_when_told() -> None:
    clock: Clock = FakeClock(START)
    assert clock.now() == START
    assert isinstance(clock, FakeClock)
    clock.advance(1.5)
    assert clock.now() == START + timedelta(seconds=1.5)
    clock.advance(72 * 3600)
    assert clock.now() == START + timedelta(hours=72, seconds=1.5)


def test_fake_clock_set_may_go_backwards() -> None:
    clock = FakeClock(START)
    clock.set(START - timedelta(seconds=5))
    assert clock.now() == START - timedelta(seconds=5)


def test_fake_clock_refuses_negative_advance() -> None:
    with pytest.raises(ValueError):
        FakeClock(START).advance(-1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        FakeClock(START).set(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        require_aware(datetime(2026, 1, 1))


def test_jst_is_utc_plus_nine() -> None:
    assert JST.utcoffset(None) == timedelta(hours=9)
    assert datetime(2026, 1, 1, 9, tzinfo=JST) == datetime(2026, 1, 1, tzinfo=UTC)
