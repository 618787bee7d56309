from collections import deque

import pytest

from carrierd.domain.states import (
    FINAL_STATES,
    INITIAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
    is_final,
)

ALL_PAIRS = [(src, dst) for src in State for dst in State]


def test_stored_values_are_fixed() -> None:
    # The database stores these strings: renaming one is a migration.
    assert {state.value for state in State} == {
        "scheduled",
        "queued",
        "dispatching",
        "sending",
        "submitted",
        "rcs_sent",
        "delivered",
        "failed",
        "expired",
        "cancelled",
        "skipped",
        "rejected",
        "unknown",
    }
    assert State("rcs_sent") is State.RCS_SENT
    assert f"{State.QUEUED}" == "queued"


def test_final_and_initial_sets() -> None:
    assert {s.value for s in FINAL_STATES} == {
        "delivered",
        "failed",
        "expired",
        "cancelled",
        "skipped",
        "rejected",
        "unknown",
    }
    assert {s.value for s in INITIAL_STATES} == {"scheduled", "queued", "rejected"}


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_final_states_have_no_exits() -> None:
    for state in FINAL_STATES - {State.UNKNOWN}:
        assert is_final(state)
        assert TRANSITIONS[state] == frozenset()
    # unknown is left only for the outcome a late answer reveals: a final
    # receipt, or a submit_sm_resp showing the SMSC took nothing (queued).
    assert TRANSITIONS[State.UNKNOWN] == {State.DELIVERED, State.FAILED, State.QUEUED}
    assert not any(is_final(state) for state in set(State) - FINAL_STATES)


def test_non_final_states_have_exits() -> None:
    for state in set(State) - FINAL_STATES:
        assert TRANSITIONS[state], state


def reachable_from(starts: frozenset[State]) -> set[State]:
    seen = set(starts)
    todo = deque(starts)
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_intake() -> None:
    assert reachable_from(INITIAL_STATES) == set(State)


def test_every_reachable_state_can_finish() -> None:
    for state in reachable_from(INITIAL_STATES):
        assert reachable_from(frozenset({state})) & FINAL_STATES, state


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS)
def test_check_transition_follows_the_table(src: State, dst: State) -> None:
    if dst in TRANSITIONS[src]:
        check_transition(src, dst)
    else:
        with pytest.raises(IllegalTransition) as caught:
            check_transition(src, dst)
        assert caught.value.src is src and caught.value.dst is dst
        assert f"{src.value} -> {dst.value}" in str(caught.value)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (State.SENDING, State.DELIVERED),  # receipt before the last submit_sm_resp
        (State.SENDING, State.UNKNOWN),  # crash with parts in flight
        (State.SUBMITTED, State.QUEUED),  # reroute / system resend
        (State.RCS_SENT, State.QUEUED),  # SMS fallback
        (State.RCS_SENT, State.EXPIRED),  # 72 h discard
        (State.QUEUED, State.SENDING),  # marked in the claim, before submit_sm
        (State.QUEUED, State.QUEUED),  # postponed in the claim (au gate, no bind)
        (State.QUEUED, State.SKIPPED),  # carrier restriction
        (State.DISPATCHING, State.QUEUED),  # +Message lease given back
        (State.UNKNOWN, State.DELIVERED),  # a late final receipt: the truth wins
        (State.UNKNOWN, State.FAILED),
        # Not ambiguous any more: a late "not our subscriber" or throttled
        # answer (domain/attempt.py decides when).
        (State.UNKNOWN, State.QUEUED),
    ],
)
def test_domain_edges_exist(src: State, dst: State) -> None:
    check_transition(src, dst)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (State.SCHEDULED, State.SENDING),  # must be due and claimed first
        (State.SCHEDULED, State.DISPATCHING),
        (State.DELIVERED, State.FAILED),
        (State.SUBMITTED, State.CANCELLED),  # the SMSC already has it
        (State.SENDING, State.SENDING),
    ],
)
def test_dangerous_edges_do_not_exist(src: State, dst: State) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(src, dst)


def test_illegal_transition_is_a_value_error() -> None:
    assert issubclass(IllegalTransition, ValueError)
