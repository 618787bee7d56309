"""Follow-ups (連続配信, DOMAIN §14): a second message to a recipient once
the first was delivered, optionally after a delay.

A follow-up is registered with its first message, in the same batch, and
waits in `scheduled` with no time (not_before 'infinity': no timer takes it)
and `after_message_id` naming the first message. When the first message
ends, the lifecycle writer asks `decide_follow_up` in the very transaction
that ends it, so a crash can neither lose the follow-up (the delivery and
the release commit together) nor send it twice (the release is a move of
the follow-up's own row, applied once):

    first delivered      -> the follow-up is released: queued now, or
                            scheduled at delivery + delay
    first ends otherwise -> the follow-up is skipped (parent_not_delivered):
                            failed, expired, cancelled, skipped, rejected
    first unknown        -> nothing yet: the carrier has not said, and a
                            late receipt (delivered or failed) decides it
                            then (§10: unknown may still change)
    first not final      -> nothing yet (a reroute, an SMS fallback)

A follow-up whose first message never settles is not kept for ever: it
waits with an expiry (the first's validity, then its own), and the timers
end it `expired` like any scheduled message that outlived its validity.

Pure: the time is passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.reasons import PARENT_NOT_DELIVERED
from carrierd.domain.states import FINAL_STATES, State


def decide_follow_up(
    follow_up_id: int,
    parent_id: int,
    parent_state: State,
    delay_s: float,
    validity_s: float,
    now: datetime,
) -> Move | None:
    """The move of a waiting follow-up when its first message reached
    `parent_state` at `now`, or None while the first is not final."""
    if parent_state is State.DELIVERED:
        due = now + timedelta(seconds=delay_s)
        return Move(
            follow_up_id,
            State.SCHEDULED,
            State.QUEUED if delay_s <= 0 else State.SCHEDULED,
            Event.FOLLOW_UP_RELEASED,
            detail={"after_message_id": str(parent_id), "delay_s": delay_s},
            not_before=due,
            expires_at=due + timedelta(seconds=validity_s),
        )
    if parent_state in FINAL_STATES and parent_state is not State.UNKNOWN:
        return Move(
            follow_up_id,
            State.SCHEDULED,
            State.SKIPPED,
            Event.SKIPPED,
            reason=PARENT_NOT_DELIVERED,
            detail={"after_message_id": str(parent_id), "parent_state": parent_state.value},
        )
    return None
