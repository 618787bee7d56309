"""Checked moves of a message along the state machine (DOMAIN §10).

A `Move` is one decided state change: from the state it was decided in, to
the next, with the history event that explains it and the columns that
change with it. Building a Move checks the edge against
`states.TRANSITIONS` and raises `states.IllegalTransition` for an edge the table
does not list, so a wrong decision fails where it is made, not as a row
silently left alone. engine/lifecycle.py is the only code that applies
Moves (and the only code that writes a message's state).

A `Note` is a history event that changes no state (a revoke the platform
refused, a +Message delivered after the SMS fallback started); it may carry
billing units, which the writer counts like a Move's.

The event kinds below are public: the status API's history and the delivery
log export show them, so rename one only on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from carrierd.domain.reasons import Reason
from carrierd.domain.states import State, check_transition


class Event(StrEnum):
    # Stored in message_events.kind: never rename a value.
    ACCEPTED = "accepted"  # intake created the message
    DUE = "due"  # scheduled -> queued at send_at
    CLAIMED = "claimed"  # queued -> dispatching, under a daemon's lease
    POSTPONED = "postponed"  # waits (no bind up, parts budget); not_before set
    WAIT_ENDED = "wait_ended"  # a wait's end: its cause, retries, seconds waited
    AU_GATE_HOLD = "au_gate_hold"  # waits for the au spacing (§5)
    SENDING = "sending"  # SMS parts about to leave
    SUBMITTED = "submitted"  # every part accepted by the SMSC
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    REROUTED = "rerouted"  # "not our subscriber": another carrier next (§4)
    RESEND_SCHEDULED = "resend_scheduled"  # system resend after a failure (§9)
    RECEIPT_TIMEOUT = "receipt_timeout"  # no final receipt in time (§9)
    RELEASED = "released"  # a stopping daemon gave its claim back
    LEASE_RECOVERED = "lease_recovered"  # a dead daemon's claim taken back
    LEASE_LOST = "lease_lost"  # a dead daemon had parts in flight
    FALLBACK = "fallback"  # +Message -> SMS (§8)
    RCS_SENT = "rcs_sent"
    RCS_RETRY = "rcs_retry"  # platform error; asked again later
    RCS_SEND_UNKNOWN = "rcs_send_unknown"  # send answer lost past the fallback delay
    # A follow-up (§14) released by its first message's delivery.
    FOLLOW_UP_RELEASED = "follow_up_released"
    # §13: judged "no history" since the base date; queued again to be sent.
    REASSIGNMENT_CHECKED = "reassignment_checked"
    # Notes: history without a state change.
    RCS_REVOKE_REFUSED = "rcs_revoke_refused"
    RCS_LATE_DELIVERY = "rcs_late_delivery"
    # A part delivered after its attempt was settled (the message failed on
    # another part, or moved on): it reached the handset, so it is billed.
    PART_DELIVERED_LATE = "part_delivered_late"


# Moves that end an attempt at a carrier: the writer bills the delivered
# parts they carry. `unknown` too: the parts delivered so far reached the
# handset; those delivered later are billed as they arrive.
BILLED_STATES: frozenset[State] = frozenset(
    {State.DELIVERED, State.FAILED, State.QUEUED, State.EXPIRED, State.UNKNOWN}
)


# Move and Note are not frozen: two are built per message on the SMS path,
# and a frozen dataclass's __init__ (object.__setattr__ per field) costs
# 2.5 times as much. Nothing mutates one after its check.
@dataclass(slots=True)
class Move:
    """One checked state change. None fields keep the column as it is."""

    message_id: int
    src: State
    dst: State
    event: Event
    reason: Reason | None = None
    detail: Mapping[str, Any] | None = None
    not_before: datetime | None = None
    receipt_deadline: datetime | None = None
    fallback_at: datetime | None = None
    expires_at: datetime | None = None
    submitted_at: datetime | None = None
    leg: str | None = None
    carrier: str | None = None
    # DOMAIN §6: the carrier's route of this attempt (with `carrier`).
    route: str | None = None
    attempt: int | None = None
    resends_done: int | None = None
    # The carrier just answered "not our subscriber" (§4): never asked again
    # for this message.
    wrong_carrier: bool = False
    # A daemon's claim: (daemon id, lease end), for moves into dispatching
    # or sending. Every other move drops the lease.
    lease_owner: str | None = None
    lease_until: datetime | None = None
    # Billing (§11): units this move adds, counted in the JST month of
    # `billed_at`.
    sms_units: int = 0
    rcs_units: int = 0
    # §13: reassigned-number checks judged (billing_counts only: a check
    # is no delivery, so the message's own unit columns do not hold it).
    reassign_units: int = 0
    # §13: the verdict judged and the month of the data it was judged on,
    # kept on the row (a message judged no_history is not looked up again).
    reassign_verdict: str | None = None
    reassign_data_month: str | None = None
    billed_at: datetime | None = None
    # A wait (back to queued: no bind up, parts budget, au gate, a
    # +Message platform error): its cause. The writer logs the move's event
    # when the wait starts or its cause changes; a repeat of the same cause
    # (every second while an SMSC is away) only counts as a retry; the next
    # move of any other kind ends the wait, logging `wait_ended` with the
    # cause and the retries.
    wait: str | None = None
    # A claim that is the retry of whatever wait the message is in (the
    # +Message leg claims, then waits again after another platform error):
    # the wait stays open and the claim logs nothing while it does.
    retries_wait: bool = False
    # History logged just before this move's own event, in the same
    # statement: a decision that rides on the move instead of a row update
    # of its own (the reassigned-number verdict on the leg's move, §13).
    first_event: Event | None = None
    first_detail: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_transition(self.src, self.dst)
        if (self.sms_units or self.rcs_units or self.reassign_units) and self.billed_at is None:
            raise ValueError(f"message {self.message_id}: units without billed_at")
        if self.lease_owner is not None and self.dst not in (State.DISPATCHING, State.SENDING):
            raise ValueError(f"message {self.message_id}: a lease on a move to {self.dst}")
        if self.wait is not None and self.dst is not State.QUEUED:
            raise ValueError(f"message {self.message_id}: a wait goes back to queued")
        if self.retries_wait and self.src is not State.QUEUED:
            raise ValueError(f"message {self.message_id}: only a claim retries a wait")


@dataclass(slots=True)
class Note:
    """A history event without a state change, applied only while the
    message is still in `state` (None: whatever its state); `once`: at most
    one event of this kind per message."""

    message_id: int
    state: State | None
    event: Event
    detail: Mapping[str, Any] | None = None
    fallback_at: datetime | None = None
    rcs_units: int = 0
    sms_units: int = 0
    billed_at: datetime | None = None
    once: bool = False

    def __post_init__(self) -> None:
        if (self.rcs_units or self.sms_units) and self.billed_at is None:
            raise ValueError(f"message {self.message_id}: units without billed_at")
