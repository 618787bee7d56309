"""The au spacing rule (DOMAIN §5, domain/au_gate.py): what holds a
message, and what opens the gate again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carrierd.domain.au_gate import (
    AU_IN_FLIGHT_RECHECK_S,
    AuGateFacts,
    AuGateRelease,
    au_gate_check,
    au_gate_releases,
)
from carrierd.domain.states import State

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def test_held_while_one_is_in_flight_then_spaced_from_its_arrival() -> None:
    in_flight = au_gate_check(AuGateFacts(True, None), taken_in_batch=False, now=NOW, spacing_s=22)
    assert in_flight is not None and in_flight.why == "in_flight"
    assert in_flight.not_before == NOW + timedelta(seconds=AU_IN_FLIGHT_RECHECK_S)
    arrived = NOW - timedelta(seconds=10)
    spaced = au_gate_check(AuGateFacts(False, arrived), taken_in_batch=False, now=NOW, spacing_s=22)
    assert spaced is not None and spaced.not_before == arrived + timedelta(seconds=22)
    assert au_gate_check(None, taken_in_batch=False, now=NOW, spacing_s=22) is None


def test_an_arrival_opens_the_gate_from_its_receipt() -> None:
    receipt_at = NOW - timedelta(seconds=3)
    for state in (State.DELIVERED, State.FAILED):
        assert au_gate_releases(
            carrier="au", last_receipt_at=receipt_at, to_state=state, reroute=False
        ) == AuGateRelease(receipt_at)


def test_a_refusal_from_au_is_not_an_arrival_and_opens_the_gate_at_once() -> None:
    """The probe at au was refused ("not our subscriber", at submit or by
    receipt), or au refused it for another reason, or nothing left: no SMS
    reached the handset, so nothing holds the next one back."""
    at_once = AuGateRelease(None)
    assert (
        au_gate_releases(carrier="au", last_receipt_at=None, to_state=State.QUEUED, reroute=True)
        == at_once
    )
    wrong_by_receipt = au_gate_releases(
        carrier="au", last_receipt_at=NOW, to_state=State.QUEUED, reroute=True
    )
    assert wrong_by_receipt == at_once
    assert (
        au_gate_releases(carrier="au", last_receipt_at=None, to_state=State.FAILED, reroute=False)
        == at_once
    )
    assert (
        au_gate_releases(carrier="au", last_receipt_at=None, to_state=State.QUEUED, reroute=False)
        == at_once
    )


def test_the_gate_stays_shut_while_the_sms_may_still_arrive() -> None:
    for state in (State.SUBMITTED, State.UNKNOWN):
        assert (
            au_gate_releases(carrier="au", last_receipt_at=None, to_state=state, reroute=False)
            is None
        )
    assert (
        au_gate_releases(
            carrier="docomo", last_receipt_at=NOW, to_state=State.DELIVERED, reroute=False
        )
        is None
    )
