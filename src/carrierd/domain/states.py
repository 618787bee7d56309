"""Message state machine (DOMAIN §4, §8, §9, §10, §13).

The table below is the whole machine. domain/lifecycle.py builds every
state change as a `Move` checked against it, and the one writer
(engine/lifecycle.py) applies a Move only while the row is still in the
state it was decided from, so a row moves along an edge listed here even
when several daemons race for it.

    scheduled    send_at is in the future, or a follow-up (§14) waits for
                 its first message (not_before 'infinity', domain/follow_up.py).
                 -> queued      send_at reached; a follow-up released with
                                no delay
                 -> scheduled   a follow-up released with a delay: its time
                                and validity set
                 -> skipped     a follow-up whose first message was not
                                delivered; opted out: on the list its check
                                read 15 minutes before send_at (§12)
                 -> cancelled   sender cancelled
                 -> expired     validity ended before send_at

    queued       due (or waiting for not_before); claimable by a dispatcher.
                 A claim locks the row for one transaction that decides it,
                 so these moves happen in the claim itself:
                 -> sending     SMS: marked before the first submit_sm
                                leaves, so a crash after this point is never
                                resent blindly
                 -> queued      postponed (au gate, no bind up, parts
                                budget, reassigned-number check backlog);
                                not_before is set
                 -> dispatching +Message: handed to its leg under a lease;
                                or the reassigned-number check (§13): handed
                                to the gate under a lease
                 -> skipped     carrier restriction excludes the recipient;
                                opted out (§12: the gate, before the legs
                                split); reassigned-number check asked for on
                                a daemon without one (lookup failed)
                 -> rejected    SQL-feed row that fails validation
                 -> failed, expired, cancelled

    dispatching  +Message rows under a lease while the leg talks to the
                 platform (and rows claimed by an older version); rows the
                 reassigned-number gate looks up (§13).
                 -> queued      postponed (account bucket, au gate, lease
                                given back on shutdown); not_before is set;
                                judged no_history (§13): in the same
                                transaction its leg takes it on (or, with
                                no dispatcher to hand it to, the next
                                claim does)
                 -> sending     SMS: marked before the first submit_sm
                                leaves, so a crash after this point is never
                                resent blindly
                 -> rcs_sent    +Message accepted by the platform
                 -> skipped     carrier restriction excludes the recipient;
                                reassigned number, or its lookup failed (§13)
                 -> failed, expired, cancelled

    sending      SMS parts are being handed to the SMSC.
                 -> submitted   every part accepted (submit_sm_resp OK)
                 -> queued      reroute after "not our subscriber", or
                                throttled before any part was handed over
                 -> delivered   a receipt may beat the last submit_sm_resp
                 -> failed      permanent submit error
                 -> unknown     crash or disconnect with parts in flight:
                                the SMSC may or may not have them

    submitted    all parts accepted; waiting for receipts.
                 -> delivered, failed
                 -> queued      reroute to another carrier, or system resend
                                (§9); the resend time is in not_before
                 -> unknown     no final receipt before the timeout (§9)
                 -> expired     SMSC reported the validity period expired

    rcs_sent     +Message accepted; waiting for delivery, fallback or expiry.
                 -> delivered
                 -> queued      fallback to SMS (not capable / not delivered
                                within 10 minutes, §8)
                 -> expired     72 h passed, discard request sent (§9)
                 -> failed, cancelled

    unknown      the carrier never revealed the outcome (no receipt before
                 the timeout, no submit_sm_resp in time, or parts in flight
                 when a bind dropped or a daemon died).
                 -> delivered, failed   a final receipt (or a refusal) that
                                        came late: the truth wins, and
                                        billing follows it
                 -> queued      a late submit_sm_resp shows the SMSC took
                                nothing: "not our subscriber" (reroute), or
                                every part answered throttled. No longer
                                ambiguous, so sent again like any refusal
                                answered in time (domain/attempt.py).

    delivered, failed, expired, cancelled, skipped, rejected are final:
    nothing leaves them. `unknown` is final too, except for a late answer.
    `skipped` and `unknown` are not billed.

Intake may create a message only in scheduled, queued or rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class State(StrEnum):
    # The string values are stored in the database: never rename them.
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    DISPATCHING = "dispatching"
    SENDING = "sending"
    SUBMITTED = "submitted"
    RCS_SENT = "rcs_sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


FINAL_STATES: frozenset[State] = frozenset(
    {
        State.DELIVERED,
        State.FAILED,
        State.EXPIRED,
        State.CANCELLED,
        State.SKIPPED,
        State.REJECTED,
        State.UNKNOWN,
    }
)

INITIAL_STATES: frozenset[State] = frozenset({State.SCHEDULED, State.QUEUED, State.REJECTED})

TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        State.SCHEDULED: frozenset(
            {State.QUEUED, State.SCHEDULED, State.SKIPPED, State.CANCELLED, State.EXPIRED}
        ),
        State.QUEUED: frozenset(
            {
                State.QUEUED,
                State.DISPATCHING,
                State.SENDING,
                State.SKIPPED,
                State.REJECTED,
                State.FAILED,
                State.CANCELLED,
                State.EXPIRED,
            }
        ),
        State.DISPATCHING: frozenset(
            {
                State.QUEUED,
                State.SENDING,
                State.RCS_SENT,
                State.SKIPPED,
                State.FAILED,
                State.EXPIRED,
                State.REJECTED,
                State.CANCELLED,
            }
        ),
        State.SENDING: frozenset(
            {State.SUBMITTED, State.QUEUED, State.FAILED, State.UNKNOWN, State.DELIVERED}
        ),
        State.SUBMITTED: frozenset(
            {State.DELIVERED, State.FAILED, State.QUEUED, State.UNKNOWN, State.EXPIRED}
        ),
        State.RCS_SENT: frozenset(
            {State.DELIVERED, State.QUEUED, State.EXPIRED, State.FAILED, State.CANCELLED}
        ),
        # A late answer (§9, §10): the carrier did reveal the outcome.
        State.UNKNOWN: frozenset({State.DELIVERED, State.FAILED, State.QUEUED}),
        **{final: frozenset() for final in FINAL_STATES - {State.UNKNOWN}},
    }
)


class IllegalTransition(ValueError):
    def __init__(self, src: State, dst: State) -> None:
        super().__init__(f"illegal state transition {src.value} -> {dst.value}")
        self.src = src
        self.dst = dst


def check_transition(src: State, dst: State) -> None:
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(src, dst)


def is_final(state: State) -> bool:
    return state in FINAL_STATES
