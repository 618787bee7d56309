"""Billing counts (DOMAIN §11).

Counts are per account and per calendar month in JST, whatever the time
zone of the host or of the stored timestamps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from carrierd.domain.clock import JST, require_aware

RCS_BILLABLE_WINDOW_S = 72 * 3600.0


def billing_month(at: datetime) -> str:
    """ "YYYY-MM" of the JST calendar month containing `at`."""
    require_aware(at, "at")
    jst = at.astimezone(JST)
    return f"{jst.year:04d}-{jst.month:02d}"


def sms_units(parts_delivered: int) -> int:
    """Billable SMS messages: one per part that reached the handset.

    For a fully delivered message this equals `sms_text.billable_units` of
    its length (the §3 table is the part count).
    """
    if parts_delivered < 0:
        raise ValueError(f"parts_delivered must be >= 0, got {parts_delivered}")
    return parts_delivered


def rcs_units(
    sent_at: datetime, delivered_at: datetime | None, window_s: float = RCS_BILLABLE_WINDOW_S
) -> int:
    """1 if the +Message was delivered within `window_s` of sending, else 0.

    Length does not matter. A delivery stamped before the send (clock skew
    between the platform and us) still counts as within the window.
    """
    require_aware(sent_at, "sent_at")
    if delivered_at is None:
        return 0
    require_aware(delivered_at, "delivered_at")
    return 1 if delivered_at - sent_at <= timedelta(seconds=window_s) else 0


def reassignment_check_units(judged: bool) -> int:
    """§13 lookups: 1 per number judged (owner or not); a lookup error is free."""
    return 1 if judged else 0
