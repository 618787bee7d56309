import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.clock import JST
from carrierd.domain.status import STATUS_COLUMNS, callback_payload, status_document

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)

# The keys a status callback carried before the status document existed:
# receivers parse them, so they stay.
CALLBACK_KEYS_BEFORE = {
    "id",
    "client_ref",
    "state",
    "channel",
    "carrier",
    "reason",
    "billing",
    "at",
}


def delivered_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 42,
        "client_ref": "order-7",
        "channel": "sms",
        "leg": "sms",
        "state": "delivered",
        "reason_code": None,
        "reason_text": None,
        "recipient_raw": "090-1234-5678",
        "msisdn": "+819012345678",
        "carrier": "docomo",
        "route": "premium",
        "carriers_wrong": ["au"],
        "sms_parts": 2,
        "attempt": 1,
        "sms_units": 2,
        "rcs_units": 0,
        "accepted_at": T0,
        "send_at": None,
        "submitted_at": T0 + timedelta(seconds=1),
        "rcs_sent_at": None,
        "final_at": T0 + timedelta(seconds=5),
        "expires_at": T0 + timedelta(hours=72),
        "updated_at": T0 + timedelta(seconds=5),
    }
    assert set(row) == set(STATUS_COLUMNS)
    row.update(changes)
    return row


def test_a_delivered_sms() -> None:
    assert status_document(delivered_row()) == {
        "id": "42",
        "client_ref": "order-7",
        "channel": "sms",
        "leg": "sms",
        "state": "delivered",
        "status": 2,
        "reason": None,
        "to": "+819012345678",
        "carrier": "docomo",
        "route": "premium",
        "carriers_wrong": ["au"],
        "parts": 2,
        "attempt": 1,
        "billing": {"sms_units": 2, "rcs_units": 0},
        "timestamps": {
            "accepted_at": "2026-11-22T03:00:00+00:00",
            "send_at": None,
            "submitted_at": "2026-11-22T03:00:01+00:00",
            "rcs_sent_at": None,
            "final_at": "2026-11-22T03:00:05+00:00",
            "expires_at": "2026-11-25T03:00:00+00:00",
            "updated_at": "2026-11-22T03:00:05+00:00",
        },
    }


def test_a_number_intake_could_not_read_shows_as_sent() -> None:
    document = status_document(delivered_row(msisdn=None, recipient_raw="0120-12"))
    assert document["to"] == "0120-12"


def test_reason_appears_with_a_code_or_a_text() -> None:
    assert status_document(delivered_row(reason_code="expired"))["reason"] == {
        "code": "expired",
        "text": None,
    }
    assert status_document(delivered_row(reason_text="carrier said no"))["reason"] == {
        "code": None,
        "text": "carrier said no",
    }


def test_no_carriers_wrong_reads_as_an_empty_list() -> None:
    assert status_document(delivered_row(carriers_wrong=None))["carriers_wrong"] == []


def test_callback_payload_keeps_every_key_receivers_had_and_adds_at() -> None:
    at = T0 + timedelta(seconds=5)
    payload = callback_payload(delivered_row(), at)
    assert set(payload) >= CALLBACK_KEYS_BEFORE
    assert payload["at"] == at.isoformat()
    assert {k: v for k, v in payload.items() if k != "at"} == status_document(delivered_row())


_instants = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, JST]),
)
_text = st.none() | st.text(max_size=20)
_rows = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=1, max_value=2**63 - 1),
        "client_ref": _text,
        "channel": st.sampled_from(["sms", "rcs"]),
        "leg": st.sampled_from(["sms", "rcs"]),
        "state": st.sampled_from(["queued", "submitted", "delivered", "failed", "expired"]),
        "reason_code": _text,
        "reason_text": _text,
        "recipient_raw": st.text(max_size=20),
        "msisdn": _text,
        "carrier": st.none() | st.sampled_from(["docomo", "au", "softbank", "rakuten"]),
        "route": st.none() | st.sampled_from(["premium", "ordinary"]),
        "carriers_wrong": st.none() | st.lists(st.sampled_from(["docomo", "au"]), max_size=2),
        "sms_parts": st.none() | st.integers(min_value=1, max_value=10),
        "attempt": st.integers(min_value=0, max_value=5),
        "sms_units": st.integers(min_value=0, max_value=10),
        "rcs_units": st.integers(min_value=0, max_value=1),
        **{column: _instants for column in STATUS_COLUMNS if column.endswith("_at")},
    }
)


@given(_rows)
def test_every_row_gives_a_json_document_that_reads_back_its_instants(
    row: dict[str, Any],
) -> None:
    document = json.loads(json.dumps(status_document(row)))
    assert document["id"] == str(row["id"])
    for column, text in document["timestamps"].items():
        expected = row[column]
        assert (None if text is None else datetime.fromisoformat(text)) == expected
    # Whichever is given, the document shows the number and never loses it.
    assert document["to"] == (row["msisdn"] or row["recipient_raw"])
