"""Moves are checked against the state table where they are decided."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carrierd.domain.lifecycle import Event, Move, Note
from carrierd.domain.states import TRANSITIONS, IllegalTransition, State

AT = datetime(2026, 12, 1, tzinfo=UTC)
PAIRS = [(src, dst) for src in State for dst in State]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_a_move_exists_only_along_an_edge_of_the_table(src: State, dst: State) -> None:
    if dst in TRANSITIONS[src]:
        assert Move(1, src, dst, Event.POSTPONED).dst is dst
    else:
        with pytest.raises(IllegalTransition):
            Move(1, src, dst, Event.POSTPONED)


def test_units_need_the_time_that_names_their_month() -> None:
    with pytest.raises(ValueError, match="billed_at"):
        Move(1, State.SUBMITTED, State.DELIVERED, Event.DELIVERED, sms_units=1)
    with pytest.raises(ValueError, match="billed_at"):
        Note(1, None, Event.PART_DELIVERED_LATE, sms_units=1)
    Move(1, State.SUBMITTED, State.DELIVERED, Event.DELIVERED, sms_units=1, billed_at=AT)


def test_a_lease_rides_only_on_a_claim() -> None:
    Move(1, State.QUEUED, State.SENDING, Event.SENDING, lease_owner="d1", lease_until=AT)
    with pytest.raises(ValueError, match="lease"):
        Move(1, State.SENDING, State.SUBMITTED, Event.SUBMITTED, lease_owner="d1")


def test_a_wait_goes_back_to_queued_and_only_a_claim_retries_one() -> None:
    Move(1, State.QUEUED, State.QUEUED, Event.POSTPONED, wait="no bind up")
    Move(1, State.DISPATCHING, State.QUEUED, Event.RCS_RETRY, wait="+Message platform error")
    with pytest.raises(ValueError, match="wait"):
        Move(1, State.QUEUED, State.SENDING, Event.SENDING, wait="no bind up")
    Move(1, State.QUEUED, State.DISPATCHING, Event.CLAIMED, retries_wait=True)
    with pytest.raises(ValueError, match="wait"):
        Move(1, State.DISPATCHING, State.RCS_SENT, Event.RCS_SENT, retries_wait=True)
