"""The public status document of a message: one shape for every reader.

The status API (GET /v1/messages/{id}) and the status callbacks both start
from `status_document`, so an account sees the same keys, the same reason
object and the same timestamps whichever way it asks. Each adds its own
extras on top (the API: history and SMS parts; a callback: the time of the
change in "at").

Pure: it reads the columns of the `get_message` statement (STATUS_COLUMNS)
from a mapping and returns JSON-ready values (ids and instants as strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from carrierd.domain.states import State

# DOMAIN §10's numbered statuses.
STATUS_UNKNOWN = 0
STATUS_SENDING = 1
STATUS_DELIVERED = 2
STATUS_FAILED = 3

_STATUS_OF_STATE: Mapping[State, int] = {
    # Not started yet, and may still change.
    State.SCHEDULED: STATUS_UNKNOWN,
    State.QUEUED: STATUS_UNKNOWN,
    State.DISPATCHING: STATUS_UNKNOWN,
    # Handed to a carrier or the +Message platform, no final answer yet.
    State.SENDING: STATUS_SENDING,
    State.SUBMITTED: STATUS_SENDING,
    State.RCS_SENT: STATUS_SENDING,
    State.DELIVERED: STATUS_DELIVERED,
    # Will never reach the handset: §10's "plus expired, discarded/cancelled
    # and rejected" are failures by number, told apart by `state`.
    State.FAILED: STATUS_FAILED,
    State.EXPIRED: STATUS_FAILED,
    State.CANCELLED: STATUS_FAILED,
    State.SKIPPED: STATUS_FAILED,
    State.REJECTED: STATUS_FAILED,
    # The carrier never revealed the outcome: a late receipt may still settle it.
    State.UNKNOWN: STATUS_UNKNOWN,
}


def status_number(state: State | str) -> int:
    """The §10 status number (0 unknown, 1 sending, 2 delivered, 3 failed)
    of a carrierd state."""
    return _STATUS_OF_STATE[State(state)]


# What a row must carry; the engine's transition rows feed the callbacks, so
# a column missing there shows up as a KeyError in its tests, not as a
# silently absent field in a receiver's payload.
STATUS_COLUMNS: tuple[str, ...] = (
    "id",
    "client_ref",
    "channel",
    "leg",
    "state",
    "reason_code",
    "reason_text",
    "recipient_raw",
    "msisdn",
    "carrier",
    "route",
    "carriers_wrong",
    "sms_parts",
    "attempt",
    "sms_units",
    "rcs_units",
    "accepted_at",
    "send_at",
    "submitted_at",
    "rcs_sent_at",
    "final_at",
    "expires_at",
    "updated_at",
)

TIMESTAMP_COLUMNS: tuple[str, ...] = (
    "accepted_at",
    "send_at",
    "submitted_at",
    "rcs_sent_at",
    "final_at",
    "expires_at",
    "updated_at",
)


def iso_instant(value: datetime | None) -> str | None:
    # asyncpg reads 'infinity' (a follow-up waiting for its first message
    # has no time yet) as datetime.max: no instant to show.
    if value is None or value == datetime.max:
        return None
    return value.isoformat()


def status_document(message: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of one message row (see STATUS_COLUMNS)."""
    reason_code, reason_text = message["reason_code"], message["reason_text"]
    return {
        "id": str(message["id"]),
        "client_ref": message["client_ref"],
        "channel": message["channel"],
        "leg": message["leg"],
        "state": message["state"],
        "status": status_number(message["state"]),
        "reason": (
            {"code": reason_code, "text": reason_text} if reason_code or reason_text else None
        ),
        # The normalized number once intake could read one, else what the
        # account sent (a rejected number has no normalized form).
        "to": message["msisdn"] or message["recipient_raw"],
        "carrier": message["carrier"],
        # DOMAIN §6: the carrier's route of the SMS attempt (premium, ...).
        "route": message["route"],
        "carriers_wrong": list(message["carriers_wrong"] or []),
        "parts": message["sms_parts"],
        "attempt": message["attempt"],
        "billing": {"sms_units": message["sms_units"], "rcs_units": message["rcs_units"]},
        "timestamps": {column: iso_instant(message[column]) for column in TIMESTAMP_COLUMNS},
    }


def callback_payload(message: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    """The body of a status callback for the change made at `at`."""
    return {**status_document(message), "at": at.isoformat()}
