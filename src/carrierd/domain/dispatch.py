"""What to do with a claimed message (DOMAIN §1, §8, §9).

Pure: the dispatcher claims, `claim_route` decides the leg, the legs decide
the rest (carrier and au gate for SMS, capability for +Message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

ClaimRoute = Literal["expire", "rcs", "sms", "sms_fallback", "fail_no_rcs"]


def claim_route(
    *, channel: str, leg: str, expires_at: datetime, now: datetime, rcs_enabled: bool
) -> ClaimRoute:
    """expire: its validity ended before it left (§9); rcs / sms: its leg;
    sms_fallback: an rcs_then_sms on a daemon without +Message goes as SMS
    at once (§8: not capable); fail_no_rcs: +Message only, and none here."""
    if expires_at <= now:
        return "expire"
    if leg != "rcs":
        return "sms"
    if rcs_enabled:
        return "rcs"
    return "sms_fallback" if channel == "rcs_then_sms" else "fail_no_rcs"
