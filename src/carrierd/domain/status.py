"""The public status document of a message (DOMAIN §10, §11, §15)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def status_document(message: Mapping[str, Any]) -> dict[str, Any]:
    """What the status API and the status callbacks show of a message."""
    return {
        "id": str(message["id"]),
        "client_ref": message["client_ref"],
        "channel": message["channel"],
        "leg": message["leg"],
        "state": message["state"],
        "reason": (
            {"code": message["reason_code"], "text": message["reason_text"]}
            if message["reason_code"] or message["reason_text"]
            else None
        ),
        "to": message["msisdn"] or message["recipient_raw"],
        "carrier": message["carrier"],
        "carriers_wrong": list(message["carriers_wrong"] or []),
        "parts": message["sms_parts"],
        "attempt": message["attempt"],
        "billing": {"sms_units": message["sms_units"], "rcs_units": message["rcs_units"]},
        "timestamps": {
            "accepted_at": _iso(message["accepted_at"]),
            "send_at": _iso(message["send_at"]),
            "submitted_at": _iso(message["submitted_at"]),
            "rcs_sent_at": _iso(message["rcs_sent_at"]),
            "final_at": _iso(message["final_at"]),
            "expires_at": _iso(message["expires_at"]),
            "updated_at": _iso(message["updated_at"]),
        },
    }
