"""The outcome of an SMS attempt (DOMAIN §4, §9, §10, §11).

Pure: the write-behind and the timers read what the parts of a message's
current attempt say, `decide_attempt` says what that means, and
`attempt_move` turns it into the checked Move the lifecycle writer applies
(history event, reason, resend time, billing units).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from carrierd.domain import reasons
from carrierd.domain.lifecycle import BILLED_STATES, Event, Move
from carrierd.domain.pacing import QuietWindow, next_resend_at
from carrierd.domain.reasons import Reason
from carrierd.domain.states import State

NOT_HANDED_OVER = Reason("not_handed_over", "no bind of the carrier was available; retrying")
INCOMPLETE_SUBMISSION = Reason(
    "incomplete_submission", "some parts were never handed to the carrier"
)
UNSENT_RETRY_S = 1.0
# Why a part's outcome is unknown (parts.unknown_cause): the reason says what
# happened, so that an operator can tell a slow SMSC from a dropped bind or a
# dead daemon.
BIND_LOST_IN_FLIGHT = Reason(
    "bind_lost_in_flight", "the bind dropped with the part in flight, before its submit_sm_resp"
)
UNUSABLE_RESPONSE = Reason("unusable_response", "the submit_sm_resp could not be read")
DAEMON_STOPPED_IN_FLIGHT = Reason(
    reasons.OUTCOME_UNKNOWN_AFTER_RESTART.code, "daemon stopped with the part in flight"
)
OUTCOME_UNKNOWN = Reason("outcome_unknown", "the part was handed over and its outcome is unknown")
# parts.unknown_cause of a part still waiting for its response when its
# attempt ended on another part: its answer is still welcome.
ATTEMPT_ENDED = "attempt_ended"


PartState = Literal["pending", "accepted", "refused", "delivered", "failed", "unknown"]


# AttemptParts, AttemptFacts and AttemptOutcome are built for every
# settled message: NamedTuples, immutable at a sixth of a frozen
# dataclass's construction cost.
class AttemptParts(NamedTuple):
    """What the parts of a message's current attempt say."""

    state: State  # the message's state now (sending, submitted or unknown)
    total: int
    pending: int
    accepted: int
    refused: int
    delivered: int
    failed: int
    unknown: int
    unsent: int  # never handed over (no bind up, shutdown)
    wrong_carrier: bool  # a refusal or receipt meaning "not our subscriber"
    refused_status: int | None
    failure: Reason | None  # reason of the first failed part
    # §3 units of the delivered parts (a part row stands for several when
    # one submit_sm carried a whole multipart text, concat = "payload").
    delivered_units: int = 0
    unknown_reason: Reason | None = None  # of the first unknown part


def unknown_reason(cause: str | None, response_timeout_s: float) -> Reason:
    """What a part's recorded unknown_cause means, for the message's reason."""
    if cause == "response_timeout":
        return Reason("response_timeout", f"no submit_sm_resp within {response_timeout_s:g} s")
    if cause == "bind_lost":
        return BIND_LOST_IN_FLIGHT
    if cause == "unusable_response":
        return UNUSABLE_RESPONSE
    if cause == "daemon_stopped":
        return DAEMON_STOPPED_IN_FLIGHT
    return OUTCOME_UNKNOWN


@dataclass(frozen=True)
class ResendPolicy:
    max_resends: int
    interval_s: float
    quiet: QuietWindow | None


class AttemptOutcome(NamedTuple):
    to_state: State
    reason: Reason | None = None
    not_before: datetime | None = None
    resend: bool = False
    reroute: bool = False


def decide_attempt(
    parts: AttemptParts,
    now: datetime,
    *,
    resends_done: int,
    policy: ResendPolicy,
) -> AttemptOutcome | None:
    """The message's next state from its parts, or None when nothing changes.

    A multipart message is delivered when every part is, failed as soon as
    one part finally fails (§10). "Not our subscriber" reroutes (§4); any
    other failure receipt may be resent under the account's policy (§9).

    A message whose outcome was `unknown` moves when the SMSC reveals it
    after all. A late final receipt: failed as soon as one part failed,
    delivered when every part is. A late submit_sm_resp: while any part is
    still unknown (or pending) the message is never sent again (ambiguous);
    once none is, a refusal decides as it would have in time (reroute after
    "not our subscriber", else failed), and parts the SMSC answered it took
    nothing for (throttled) are retried like unsent ones; accepted parts
    wait for their receipts.
    """
    if parts.state is State.UNKNOWN:
        if parts.failed:
            return AttemptOutcome(
                State.FAILED, parts.failure or reasons.from_receipt("UNDELIV", None)
            )
        if parts.delivered == parts.total:
            return AttemptOutcome(State.DELIVERED)
        # A refusal decides as it would have in time, whatever the other
        # parts: a carrier that refused one part does not complete the text.
        if not (parts.wrong_carrier or parts.refused) and (
            parts.unknown or parts.pending or not parts.unsent
        ):
            return None  # still ambiguous, or accepted: receipts decide
    if parts.wrong_carrier:
        return AttemptOutcome(State.QUEUED, reasons.WRONG_CARRIER, not_before=now, reroute=True)
    if parts.refused:
        status = parts.refused_status if parts.refused_status is not None else 0
        return AttemptOutcome(State.FAILED, reasons.from_smpp_status(status))
    if parts.failed:
        failure = parts.failure or reasons.from_receipt("UNDELIV", None)
        if policy.max_resends <= 0:
            return AttemptOutcome(State.FAILED, failure)
        at = next_resend_at(now, resends_done, policy.max_resends, policy.interval_s, policy.quiet)
        if at is None:
            if resends_done >= policy.max_resends:
                exhausted = reasons.RESENDS_EXHAUSTED
                return AttemptOutcome(
                    State.FAILED, Reason(exhausted.code, f"{exhausted.text}: {failure.text}")
                )
            quiet = reasons.QUIET_WINDOW
            return AttemptOutcome(State.FAILED, Reason(quiet.code, f"{quiet.text}: {failure.text}"))
        return AttemptOutcome(State.QUEUED, failure, not_before=at, resend=True)
    if parts.delivered == parts.total:
        return AttemptOutcome(State.DELIVERED)
    if parts.pending:
        return None
    if parts.unsent:
        if parts.unsent == parts.total:
            # Nothing left this process: safe to try again shortly.
            return AttemptOutcome(
                State.QUEUED, NOT_HANDED_OVER, not_before=now + timedelta(seconds=UNSENT_RETRY_S)
            )
        return AttemptOutcome(State.FAILED, INCOMPLETE_SUBMISSION)
    if parts.unknown:
        return AttemptOutcome(State.UNKNOWN, parts.unknown_reason or OUTCOME_UNKNOWN)
    if parts.state is State.SENDING:
        return AttemptOutcome(State.SUBMITTED)
    return None


def means_wrong_carrier(
    refused_status: int | None,
    receipt_err: str | None,
    *,
    statuses: Collection[int],
    receipt_errors: Collection[int],
) -> bool:
    """Whether a refusal (submit_sm_resp status) or a failure receipt's err
    is the carrier's "not our subscriber" (§4); each carrier names its own
    codes in config."""
    if refused_status is not None and refused_status in statuses:
        return True
    err_code = receipt_err_code(receipt_err)
    return err_code is not None and err_code in receipt_errors


def receipt_err_code(err: str | None) -> int | None:
    """A receipt's err as a number: decimal, or hex with or without 0x
    (carriers write both); None when it is not a number."""
    if not err:
        return None
    text = err.strip().lower()
    with contextlib.suppress(ValueError):
        if text.startswith("0x"):
            return int(text, 16)
        return int(text, 10)
    with contextlib.suppress(ValueError):
        return int(text, 16)
    return None


class AttemptFacts(NamedTuple):
    """The message an attempt belongs to, as the settle reads it."""

    message_id: int
    carrier: str
    attempt: int
    resends_done: int
    parts: AttemptParts
    last_receipt_at: datetime | None
    last_resp_at: datetime | None
    carrier_named: str | None = None  # the carrier the sender named, if any


def attempt_move(
    facts: AttemptFacts, outcome: AttemptOutcome, now: datetime, *, receipt_timeout_s: float
) -> Move:
    """The checked Move for an attempt's outcome.

    Billing (§11) follows the state: the parts that reached the handset are
    billed when the attempt ends (delivered, failed, rerouted, resent), in
    the month of the last receipt; nothing while it is still open, and
    nothing for `unknown` until a late receipt reveals the outcome.
    """
    parts = facts.parts
    state = parts.state
    detail: dict[str, Any] = {"attempt": facts.attempt}
    if outcome.reroute:
        event = Event.REROUTED
        detail["wrong_carrier"] = facts.carrier
        if facts.carrier == facts.carrier_named:
            # A named carrier is a first guess (§4): it said "not our
            # subscriber", and the history says so before another is tried.
            detail["named_carrier_refused"] = True
    elif outcome.resend:
        event = Event.RESEND_SCHEDULED
    else:
        event = _EVENT_OF_STATE[outcome.to_state]
    if state is State.UNKNOWN:
        detail["late"] = True
    # From `unknown`: the parts delivered before it were billed by the move
    # into it, and those delivered since as they arrived.
    units = (
        parts.delivered_units
        if outcome.to_state in BILLED_STATES and state is not State.UNKNOWN
        else 0
    )
    # Settled from 'sending' with every part accepted: the SMSC took the
    # attempt at its last response, whether or not it ever showed 'submitted'.
    submitted_at = (
        facts.last_resp_at
        if state is State.SENDING and not parts.pending and not parts.refused
        else None
    )
    return Move(
        facts.message_id,
        state,
        outcome.to_state,
        event,
        reason=outcome.reason,
        detail=detail,
        not_before=outcome.not_before,
        receipt_deadline=(
            now + timedelta(seconds=receipt_timeout_s)
            if outcome.to_state is State.SUBMITTED
            else None
        ),
        submitted_at=submitted_at,
        resends_done=facts.resends_done + 1 if outcome.resend else None,
        wrong_carrier=outcome.reroute,
        sms_units=units,
        billed_at=(facts.last_receipt_at or now) if units else None,
    )


_EVENT_OF_STATE: dict[State, Event] = {
    State.DELIVERED: Event.DELIVERED,
    State.FAILED: Event.FAILED,
    State.SUBMITTED: Event.SUBMITTED,
    State.UNKNOWN: Event.UNKNOWN,
    # Nothing was handed over: tried again shortly.
    State.QUEUED: Event.POSTPONED,
}
