import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.domain import reasons
from carrierd.domain.reasons import (
    Reason,
    from_config,
    from_receipt,
    from_smpp_status,
    smpp_status_is_transient,
)

SNAKE_CASE = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")


@pytest.mark.parametrize(
    ("status", "code", "spec_name"),
    [
        (0x0B, "smpp_invalid_destination_address", "ESME_RINVDSTADR"),
        (0x58, "smpp_throttled", "ESME_RTHROTTLED"),
        (0x14, "smpp_queue_full", "ESME_RMSGQFUL"),
        (0x45, "smpp_submit_failed", "ESME_RSUBMITFAIL"),
        (0x08, "smpp_system_error", "ESME_RSYSERR"),
        (0x0A, "smpp_invalid_source_address", "ESME_RINVSRCADR"),
        (0xFF, "smpp_unknown_error", "ESME_RUNKNOWNERR"),
    ],
)
def test_standard_smpp_statuses(status: int, code: str, spec_name: str) -> None:
    reason = from_smpp_status(status)
    assert reason.code == code
    assert spec_name in reason.text
    assert f"0x{status:08X}" in reason.text


def test_vendor_statuses_are_kept_raw() -> None:
    reason = from_smpp_status(0x40B)
    assert reason.code == "smpp_status_0x0000040b"
    assert "0x0000040B" in reason.text
    assert "vendor" in reason.text


def test_unknown_statuses_are_kept_raw() -> None:
    reason = from_smpp_status(0x1234)
    assert reason.code == "smpp_status_0x00001234"
    assert "0x00001234" in reason.text


def test_transient_statuses() -> None:
    assert smpp_status_is_transient(0x58)
    assert smpp_status_is_transient(0x14)
    assert not smpp_status_is_transient(0x0B)
    assert not smpp_status_is_transient(0x40B)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_every_status_has_a_non_blank_snake_case_reason(status: int) -> None:
    reason = from_smpp_status(status)
    assert SNAKE_CASE.fullmatch(reason.code)
    assert reason.text.strip()


@pytest.mark.parametrize(
    ("stat", "code"),
    [
        ("DELIVRD", "delivered"),
        ("UNDELIV", "undeliverable"),
        ("EXPIRED", "smsc_validity_expired"),
        ("REJECTD", "rejected_by_smsc"),
        ("DELETED", "deleted_by_smsc"),
        ("UNKNOWN", "receipt_state_unknown"),
        ("ACCEPTD", "accepted_by_smsc"),
        (" undeliv ", "undeliverable"),
    ],
)
def test_receipt_stats_without_error(stat: str, code: str) -> None:
    for no_error in (None, "000", 0, ""):
        assert from_receipt(stat, no_error).code == code


def test_unmapped_receipt_error_is_kept_raw() -> None:
    reason = from_receipt("UNDELIV", "012")
    assert reason.code == "undeliverable_err_012"
    assert "UNDELIV" in reason.text and "012" in reason.text
    assert from_receipt("UNDELIV", 12).code == "undeliverable_err_012"
    assert from_receipt("REJECTD", "0x0B").code == "rejected_by_smsc_err_0x0b"


def test_delivered_ignores_error_field() -> None:
    assert from_receipt("DELIVRD", "005").code == "delivered"


def test_unknown_stat_is_kept_raw() -> None:
    reason = from_receipt("FOO-BAR", None)
    assert reason.code == "receipt_stat_foo_bar"
    assert "FOO-BAR" in reason.text
    assert from_receipt("", "7").code == "receipt_stat_blank_err_7"


def test_carrier_error_mapping_wins() -> None:
    mapping = {12: ("handset_off", "the handset is switched off")}
    assert from_receipt("UNDELIV", "012", err_mapping=mapping) == Reason(
        "handset_off", "the handset is switched off"
    )
    assert from_receipt("UNDELIV", "013", err_mapping=mapping).code == "undeliverable_err_013"
    assert from_receipt("UNDELIV", "²", err_mapping=mapping).text.endswith("error ²")
    assert from_receipt("UNDELIV", "١٢", err_mapping=mapping).code == "undeliverable_err_other"


def test_from_config() -> None:
    mapping = {0x40B: ("wrong_carrier", "not our subscriber")}
    assert from_config(mapping, 0x40B) == Reason("wrong_carrier", "not our subscriber")
    assert from_config(mapping, 0x40C) is None


@settings(max_examples=200)
@given(st.text(max_size=10), st.one_of(st.none(), st.integers(0, 999), st.text(max_size=6)))
def test_receipts_never_give_a_blank_reason(stat: str, err: str | int | None) -> None:
    reason = from_receipt(stat, err)
    assert SNAKE_CASE.fullmatch(reason.code)
    assert reason.text.strip()


def test_engine_constants() -> None:
    constants = [
        reasons.WRONG_CARRIER,
        reasons.OUTCOME_UNKNOWN_AFTER_RESTART,
        reasons.RECEIPT_TIMEOUT,
        reasons.QUIET_WINDOW,
        reasons.RESENDS_EXHAUSTED,
        reasons.NOT_IN_CARRIER_RESTRICTION,
        reasons.OPTED_OUT,
        reasons.VALIDITY_EXPIRED,
        reasons.NO_CARRIER_LEFT,
        reasons.CANCELLED_BY_SENDER,
        reasons.REASSIGNED_NUMBER,
        reasons.REASSIGNMENT_LOOKUP_FAILED,
        reasons.RCS_NOT_CAPABLE,
        reasons.RCS_NOT_DELIVERED_IN_TIME,
        reasons.RCS_DISCARDED,
    ]
    assert len({reason.code for reason in constants}) == len(constants)
    for reason in constants:
        assert SNAKE_CASE.fullmatch(reason.code)
        assert reason.text
    assert reasons.OUTCOME_UNKNOWN_AFTER_RESTART.text == "outcome unknown after restart"
