"""The outcome of an SMS attempt (domain/attempt.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carrierd.domain.attempt import (
    AttemptFacts,
    AttemptParts,
    ResendPolicy,
    attempt_move,
    decide_attempt,
    means_wrong_carrier,
    receipt_err_code,
)
from carrierd.domain.lifecycle import Event
from carrierd.domain.states import State

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
NO_RESEND = ResendPolicy(0, 600.0, None)


def parts(state: State, **counts: int) -> AttemptParts:
    base = dict.fromkeys(
        ("pending", "accepted", "refused", "delivered", "failed", "unknown", "unsent"), 0
    )
    base.update(counts)
    total = counts.pop("total", None) or sum(base.values())
    base.pop("total", None)
    return AttemptParts(
        state=state,
        total=total,
        wrong_carrier=False,
        refused_status=None,
        failure=None,
        delivered_units=base["delivered"],
        **base,
    )


def test_unknown_moves_only_when_a_late_receipt_reveals_the_outcome() -> None:
    still = decide_attempt(
        parts(State.UNKNOWN, delivered=1, unknown=1), NOW, resends_done=0, policy=NO_RESEND
    )
    assert still is None
    delivered = decide_attempt(
        parts(State.UNKNOWN, delivered=2), NOW, resends_done=0, policy=ResendPolicy(3, 60.0, None)
    )
    assert delivered is not None and delivered.to_state is State.DELIVERED
    # Never resent: the outcome was ambiguous, a resend could duplicate it.
    failed = decide_attempt(
        parts(State.UNKNOWN, failed=1, unknown=1),
        NOW,
        resends_done=0,
        policy=ResendPolicy(3, 60.0, None),
    )
    assert failed is not None and (failed.to_state, failed.resend) == (State.FAILED, False)


def test_a_late_delivery_says_it_was_late_and_bills_nothing_twice() -> None:
    """The parts of an unknown attempt were billed when it became unknown
    (those delivered by then) or as their receipts came (the rest)."""
    facts = AttemptFacts(7, "au", 1, 0, parts(State.UNKNOWN, delivered=2), NOW, NOW)
    outcome = decide_attempt(facts.parts, NOW, resends_done=0, policy=NO_RESEND)
    assert outcome is not None
    move = attempt_move(facts, outcome, NOW, receipt_timeout_s=3600)
    assert (move.src, move.dst, move.event) == (State.UNKNOWN, State.DELIVERED, Event.DELIVERED)
    assert (move.sms_units, move.detail) == (0, {"attempt": 1, "late": True})


def test_unknown_bills_the_parts_delivered_so_far() -> None:
    """A part that reached the handset is billed (§11), whatever became of
    the others."""
    facts = AttemptFacts(7, "au", 1, 0, parts(State.SUBMITTED, delivered=1, unknown=1), NOW, NOW)
    outcome = decide_attempt(facts.parts, NOW, resends_done=0, policy=NO_RESEND)
    assert outcome is not None and outcome.to_state is State.UNKNOWN
    move = attempt_move(facts, outcome, NOW, receipt_timeout_s=3600)
    assert (move.sms_units, move.billed_at) == (1, NOW)


@pytest.mark.parametrize(
    ("refused", "err", "expected"),
    [
        (0x0B, None, True),
        (0x45, None, False),
        (None, "011", True),
        (None, "0x0b", True),
        (None, "b", True),
        (None, "012", False),
        (None, "zz", False),
        (None, None, False),
    ],
)
def test_not_our_subscriber_by_status_or_receipt_err(
    refused: int | None, err: str | None, expected: bool
) -> None:
    assert means_wrong_carrier(refused, err, statuses={0x0B}, receipt_errors={11}) is expected


def test_receipt_err_codes() -> None:
    assert [receipt_err_code(e) for e in ("000", "0x1F", "1f", " 12 ", "", None, "x")] == [
        0,
        31,
        31,
        12,
        None,
        None,
        None,
    ]


def test_a_reroute_from_the_named_carrier_says_the_named_carrier_refused() -> None:
    """A carrier the sender named is a first guess (§4): when it answers
    "not our subscriber" the message is rerouted, and its history says that
    the named carrier refused; a reroute from a guessed carrier does not."""
    refused = parts(State.SENDING, refused=1)._replace(wrong_carrier=True, refused_status=0x0B)
    outcome = decide_attempt(refused, NOW, resends_done=0, policy=NO_RESEND)
    assert outcome is not None and outcome.reroute
    named = AttemptFacts(7, "au", 1, 0, refused, None, NOW, carrier_named="au")
    move = attempt_move(named, outcome, NOW, receipt_timeout_s=3600)
    assert (move.dst, move.event, move.wrong_carrier) == (State.QUEUED, Event.REROUTED, True)
    assert move.detail == {"attempt": 1, "wrong_carrier": "au", "named_carrier_refused": True}
    guessed = AttemptFacts(7, "docomo", 2, 0, refused, None, NOW, carrier_named="au")
    move = attempt_move(guessed, outcome, NOW, receipt_timeout_s=3600)
    assert move.detail == {"attempt": 2, "wrong_carrier": "docomo"}
