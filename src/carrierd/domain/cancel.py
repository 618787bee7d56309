"""What a sender's cancel does to a message (POST /v1/messages/{id}/cancel).

A cancel may stop only what has not reached a handset's carrier:

    scheduled, queued   -> cancelled at once
    queued on the +Message leg, rcs_sent
                        -> revoke at the +Message platform first (a queued
                           +Message may be a send retried after an answer
                           that was lost: the platform may hold it); revoked
                           (or unknown to it) -> cancelled; "already
                           delivered" -> refused, the message stays as it is
    dispatching         -> refused for now: a daemon holds it under a lease
                           and may be handing it to the platform this very
                           moment (ask again shortly)
    anything else       -> refused with the state: sending and submitted
                           were handed to an SMSC, the rest are final

The cancel's Move is applied by the one writer, only while the row is still
in the state the decision read: a dispatcher that claimed the message
first (its claim holds the row lock until its Move to `sending` commits)
wins, and the cancel then reads the new state and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.reasons import CANCELLED_BY_SENDER
from carrierd.domain.states import State

RevokeAnswer = Literal["revoked", "already_delivered", "not_found", "error"]


@dataclass(frozen=True)
class Refused:
    """The cancel cannot be done; `retry` when asking again may succeed."""

    state: State
    reason: str
    retry: bool = False


@dataclass(frozen=True)
class RevokeFirst:
    """Ask the +Message platform to revoke, then decide with `after_revoke`."""

    state: State


CancelDecision = Move | Refused | RevokeFirst


def decide_cancel(
    message_id: int, state: State, leg: str = "sms", can_revoke: bool = True
) -> CancelDecision:
    """The cancel of a message in `state` on `leg`; `can_revoke`: this
    daemon reaches a +Message platform (without one, nothing of ours can be
    there unless the configuration changed, and a queued message is
    cancelled as it is)."""
    if state is State.QUEUED and leg == "rcs" and can_revoke:
        return RevokeFirst(state)
    if state in (State.SCHEDULED, State.QUEUED):
        return Move(
            message_id,
            state,
            State.CANCELLED,
            Event.CANCELLED,
            reason=CANCELLED_BY_SENDER,
            detail={"by": "sender"},
        )
    if state is State.RCS_SENT:
        return RevokeFirst(state)
    if state is State.DISPATCHING:
        return Refused(state, "a daemon is handing it to the +Message platform now", retry=True)
    if state in (State.SENDING, State.SUBMITTED):
        return Refused(state, "already handed to the carrier's SMSC")
    return Refused(state, f"already final ({state.value})")


def after_revoke(
    message_id: int, src: State, answer: RevokeAnswer, revoke_detail: dict[str, Any]
) -> Move | Refused:
    """The cancel of a message decided in `src` (RevokeFirst) once the
    platform answered the revoke."""
    if answer in ("revoked", "not_found"):
        return Move(
            message_id,
            src,
            State.CANCELLED,
            Event.CANCELLED,
            reason=CANCELLED_BY_SENDER,
            detail={"by": "sender", "revoke": revoke_detail},
        )
    if answer == "already_delivered":
        return Refused(src, "the +Message platform says it was already delivered")
    return Refused(src, "the +Message platform did not answer the revoke", retry=True)


CancelResult = Literal["cancelled", "not_found", "refused", "revoke_failed", "not_configured"]


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel request came to, for the API to answer."""

    result: CancelResult
    state: State | None = None
    reason: str = ""
    retry: bool = False
