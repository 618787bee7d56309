"""`unknown` only where the outcome is ambiguous (domain/attempt.py): late
answers move a message on, and the reason says why it was unknown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carrierd.domain.attempt import (
    AttemptParts,
    ResendPolicy,
    decide_attempt,
    unknown_reason,
)
from carrierd.domain.reasons import WRONG_CARRIER
from carrierd.domain.states import State
from tests.unit.test_attempt import parts

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
NO_RESEND = ResendPolicy(0, 600.0, None)


def decide(p: AttemptParts) -> tuple[State, str | None] | None:
    outcome = decide_attempt(p, NOW, resends_done=0, policy=NO_RESEND)
    if outcome is None:
        return None
    return outcome.to_state, outcome.reason.code if outcome.reason else None


@pytest.mark.parametrize(
    ("cause", "code", "text"),
    [
        ("response_timeout", "response_timeout", "no submit_sm_resp within 10 s"),
        (
            "bind_lost",
            "bind_lost_in_flight",
            "the bind dropped with the part in flight, before its submit_sm_resp",
        ),
        ("unusable_response", "unusable_response", "the submit_sm_resp could not be read"),
        (
            "daemon_stopped",
            "outcome_unknown_after_restart",
            "daemon stopped with the part in flight",
        ),
        (None, "outcome_unknown", "the part was handed over and its outcome is unknown"),
    ],
)
def test_the_reason_says_why_the_outcome_is_unknown(
    cause: str | None, code: str, text: str
) -> None:
    reason = unknown_reason(cause, 10.0)
    assert (reason.code, reason.text) == (code, text)
    outcome = decide_attempt(
        parts(State.SENDING, unknown=1)._replace(unknown_reason=reason),
        NOW,
        resends_done=0,
        policy=NO_RESEND,
    )
    assert outcome is not None and (outcome.to_state, outcome.reason) == (State.UNKNOWN, reason)


def test_a_late_acceptance_waits_for_its_receipt() -> None:
    assert decide(parts(State.UNKNOWN, accepted=1)) is None
    assert decide(parts(State.UNKNOWN, accepted=1, delivered=1)) is None


def test_a_late_not_our_subscriber_reroutes() -> None:
    late = parts(State.UNKNOWN, refused=1)._replace(wrong_carrier=True, refused_status=0x0B)
    outcome = decide_attempt(late, NOW, resends_done=0, policy=NO_RESEND)
    assert outcome is not None
    assert (outcome.to_state, outcome.reason, outcome.reroute) == (
        State.QUEUED,
        WRONG_CARRIER,
        True,
    )


def test_a_late_refusal_fails_even_with_a_part_still_in_doubt() -> None:
    late = parts(State.UNKNOWN, refused=1, unknown=1)._replace(refused_status=0x45)
    assert decide(late) == (State.FAILED, "smpp_submit_failed")


def test_parts_answered_throttled_late_are_sent_again_once_none_is_in_doubt() -> None:
    assert decide(parts(State.UNKNOWN, unsent=2)) == (State.QUEUED, "not_handed_over")
    # Another part may still be with the SMSC: never sent again meanwhile.
    assert decide(parts(State.UNKNOWN, unsent=1, unknown=1)) is None
    assert decide(parts(State.UNKNOWN, unsent=1, pending=1)) is None
    # The SMSC took one part and not the other: the text is incomplete.
    assert decide(parts(State.UNKNOWN, unsent=1, accepted=1)) == (
        State.FAILED,
        "incomplete_submission",
    )


def test_known_parts_decide_after_a_dead_daemons_parts_go_unknown() -> None:
    # Lease recovery marks only the pending parts unknown; what was answered decides.
    wrong = parts(State.SENDING, refused=1, unknown=1)._replace(wrong_carrier=True)
    assert decide(wrong) == (State.QUEUED, "wrong_carrier")
    assert decide(parts(State.SENDING, unsent=2)) == (State.QUEUED, "not_handed_over")
    assert decide(parts(State.SENDING, unsent=1, unknown=1)) == (
        State.FAILED,
        "incomplete_submission",
    )
    assert decide(parts(State.SENDING, accepted=1, unknown=1)) == (
        State.UNKNOWN,
        "outcome_unknown",
    )
