"""Typed rows: what the engine reads, named and typed once.

Each is built from the named statement that selects it (the statement's
name is in the docstring); the engine reads attributes, never string keys.
The two built for every message on the SMS path are NamedTuples: as
immutable as a frozen dataclass, at a sixth of its construction cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple


class ClaimedMessage(NamedTuple):
    """A due message locked by a claim (`claim_due`)."""

    id: int
    account_id: str
    channel: str
    leg: str
    validated: bool
    recipient_raw: str
    msisdn: str | None
    sms_text: str | None
    sms_encoding: str | None
    sms_parts: int | None
    rcs_content: Any
    carrier_named: str | None
    carriers_allowed: tuple[str, ...] | None
    carrier: str | None
    carriers_wrong: tuple[str, ...]
    attempt: int
    resends_done: int
    expires_at: datetime
    accepted_at: datetime
    send_at: datetime | None
    # DOMAIN §12: whether the send skips opted-out numbers (None: the
    # account's default) and the list's verdict (None: not read yet).
    skip_opted_out: bool | None = None
    opted_out: bool | None = None
    # §13: the base date of the reassigned-number check (None: no check),
    # and its verdict once judged.
    reassign_base_date: date | None = None
    reassign_verdict: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ClaimedMessage:
        allowed = row["carriers_allowed"]
        return cls(
            row["id"],
            row["account_id"],
            row["channel"],
            row["leg"],
            row["validated"],
            row["recipient_raw"],
            row["msisdn"],
            row["sms_text"],
            row["sms_encoding"],
            row["sms_parts"],
            row["rcs_content"],
            row["carrier_named"],
            None if allowed is None else tuple(allowed),
            row["carrier"],
            tuple(row["carriers_wrong"] or ()),
            row["attempt"],
            row["resends_done"],
            row["expires_at"],
            row["accepted_at"],
            row["send_at"],
            row["skip_opted_out"],
            row["opted_out"],
            row["reassign_base_date"],
            row["reassign_verdict"],
        )


class AttemptRow(NamedTuple):
    """What the parts of a message's current attempt say (`attempt_parts`)."""

    id: int
    state: str
    account_id: str
    channel: str
    carrier: str
    attempt: int
    msisdn: str
    resends_done: int
    total: int
    pending: int
    accepted: int
    refused: int
    delivered: int
    failed: int
    unknown: int
    unsent: int
    delivered_units: int
    refused_status: int | None
    failed_stat: str | None
    failed_err: str | None
    last_receipt_at: datetime | None
    last_resp_at: datetime | None
    learned_carrier: str | None
    unknown_cause: str | None  # of the first unknown part
    # DOMAIN §6: the carrier's route of the attempt; NULL before routes.
    route: str | None = None
    carrier_named: str | None = None  # the carrier the sender named

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AttemptRow:
        return cls(
            row["id"],
            row["state"],
            row["account_id"],
            row["channel"],
            row["carrier"],
            row["attempt"],
            row["msisdn"],
            row["resends_done"],
            row["total"],
            row["pending"],
            row["accepted"],
            row["refused"],
            row["delivered"],
            row["failed"],
            row["unknown"],
            row["unsent"],
            row["delivered_units"],
            row["refused_status"],
            row["failed_stat"],
            row["failed_err"],
            row["last_receipt_at"],
            row["last_resp_at"],
            row["learned_carrier"],
            row["unknown_cause"],
            row["route"],
            row["carrier_named"],
        )


@dataclass(frozen=True, slots=True)
class RcsMessage:
    """A +Message the leg settles (`rcs_lock_messages`, the timer claims)."""

    id: int
    account_id: str
    channel: str
    leg: str | None
    state: str | None
    rcs_sent_at: datetime | None
    accepted_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RcsMessage:
        return cls(
            row["id"],
            row["account_id"],
            row["channel"],
            row.get("leg"),
            row.get("state"),
            row["rcs_sent_at"],
            row.get("accepted_at"),
        )
