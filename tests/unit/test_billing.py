from datetime import UTC, datetime, timedelta

import pytest

from carrierd.domain.billing import (
    billing_month,
    rcs_units,
    reassignment_check_units,
    sms_units,
)
from carrierd.domain.clock import JST
from carrierd.domain.sms_text import prepare_sms


@pytest.mark.parametrize(
    ("at", "month"),
    [
        (datetime(2026, 1, 31, 15, 30, tzinfo=UTC), "2026-02"),  # 00:30 JST on 1 Feb
        (datetime(2026, 1, 31, 14, 59, 59, tzinfo=UTC), "2026-01"),
        (datetime(2026, 12, 31, 15, 0, tzinfo=UTC), "2027-01"),
        (datetime(2026, 3, 1, 0, 0, tzinfo=JST), "2026-03"),
        (datetime(2026, 2, 28, 23, 59, tzinfo=JST), "2026-02"),
    ],
)
def test_billing_month_is_the_jst_calendar_month(at: datetime, month: str) -> None:
    assert billing_month(at) == month


def test_billing_month_refuses_naive_times() -> None:
    with pytest.raises(ValueError):
        billing_month(datetime(2026, 1, 31, 15, 30))


def test_sms_units_count_delivered_parts() -> None:
    assert sms_units(0) == 0
    assert sms_units(3) == 3
    body = prepare_sms("あ" * 200)
    assert sms_units(len(body.parts)) == body.billable_units == 3
    with pytest.raises(ValueError):
        sms_units(-1)


SENT = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delivered_at", "units"),
    [
        (None, 0),
        (SENT + timedelta(seconds=3), 1),
        (SENT + timedelta(hours=72), 1),
        (SENT + timedelta(hours=72, microseconds=1), 0),
        (SENT + timedelta(days=14), 0),  # old apps that ignored the discard
        (SENT - timedelta(seconds=2), 1),  # platform clock slightly ahead
    ],
)
def test_rcs_units(delivered_at: datetime | None, units: int) -> None:
    assert rcs_units(SENT, delivered_at) == units


def test_rcs_window_is_configurable() -> None:
    assert rcs_units(SENT, SENT + timedelta(hours=2), window_s=3600) == 0


def test_reassignment_check_units() -> None:
    assert reassignment_check_units(judged=True) == 1
    assert reassignment_check_units(judged=False) == 0
