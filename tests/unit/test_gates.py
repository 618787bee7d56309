"""The opt-out gate's two decisions (DOMAIN §12): when a send reads its
list, and what its recorded verdict makes of it when claimed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from carrierd.config import AccountConfig
from carrierd.domain.gates import (
    OPTOUT_LIST_LEAD,
    GateVerdict,
    optout_gate,
    optout_list_as_of,
    optout_list_read_at,
)
from carrierd.intake import CONTENT_COLUMNS, validate_batch
from carrierd.optout_list import parse_optout_csv

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_an_immediate_send_reads_the_list_at_registration() -> None:
    assert optout_list_read_at(None, NOW) is None


def test_a_scheduled_send_reads_it_15_minutes_before() -> None:
    send_at = NOW + timedelta(hours=2)
    assert optout_list_read_at(send_at, NOW) == send_at - timedelta(minutes=15)
    just_over = NOW + timedelta(minutes=15, microseconds=1)
    assert optout_list_read_at(just_over, NOW) == NOW + timedelta(microseconds=1)


def test_a_send_15_minutes_away_or_closer_reads_it_at_registration() -> None:
    for ahead in (
        timedelta(minutes=15),
        timedelta(minutes=10),
        timedelta(0),
        -timedelta(minutes=2),
    ):
        assert optout_list_read_at(NOW + ahead, NOW) is None


def test_a_fed_row_obeys_the_list_of_its_registration_or_15_minutes_before() -> None:
    assert optout_list_as_of(None, NOW) == NOW
    assert optout_list_as_of(NOW + timedelta(minutes=15), NOW) == NOW
    assert optout_list_as_of(NOW - timedelta(minutes=1), NOW) == NOW
    send_at = NOW + timedelta(hours=2)
    assert optout_list_as_of(send_at, NOW) == send_at - timedelta(minutes=15)


@given(st.timedeltas(min_value=-timedelta(minutes=5), max_value=timedelta(days=60)))
def test_the_list_is_never_read_after_15_minutes_before_nor_before_now(ahead: timedelta) -> None:
    send_at = NOW + ahead
    read_at = optout_list_read_at(send_at, NOW) or NOW
    assert read_at >= NOW
    assert read_at <= max(NOW, send_at - OPTOUT_LIST_LEAD)


def test_the_gate_skips_only_a_send_that_asked_and_is_listed() -> None:
    assert optout_gate(True, False, True) is GateVerdict.SKIP
    assert optout_gate(True, False, False) is GateVerdict.PASS
    assert optout_gate(False, True, True) is GateVerdict.PASS
    # Not read yet (a SQL-feed row): read it now.
    assert optout_gate(True, False, None) is GateVerdict.CHECK
    # A fed row that did not say takes the account's default.
    assert optout_gate(None, True, None) is GateVerdict.CHECK
    assert optout_gate(None, True, True) is GateVerdict.SKIP
    assert optout_gate(None, False, None) is GateVerdict.PASS


def test_a_csv_import_takes_any_spelling_and_names_wrong_rows() -> None:
    text = (
        "\ufeffmsisdn,added_at\n"
        "090-1234-5678,x\n"
        "\n"
        "+819012345679\n"
        "050-1111-2222\n"
        "０９０１２３４５６７０\n"
    )
    numbers, errors = parse_optout_csv(text, allow_m2m=False)
    assert numbers == ["+819012345678", "+819012345679", "+819012345670"]
    assert [e.row for e in errors] == [5]
    assert errors[0].reason.startswith("ip_phone")
    # Without a header the first row is a number like any other.
    assert parse_optout_csv("abc\n09012345678", allow_m2m=False) == (["+819012345678"], [])
    [error] = parse_optout_csv("09012345678\nabc", allow_m2m=False)[1]
    assert error.row == 2 and error.reason.startswith("not_a_number")


def test_skipping_opted_out_numbers_is_part_of_a_message_s_content() -> None:
    """Idempotency: the same client_ref asking to skip, where the first did
    not, is other content; a message that does not ask hashes as before the
    field existed."""
    account = AccountConfig(account_id="a", token_sha256=())
    item = {"to": "09012345678", "sms": {"text": "ご案内"}}

    def hashes(*items: dict[str, object], default: bool = False) -> list[bytes]:
        batch = validate_batch(
            {"messages": list(items)},
            replace(account, skip_opted_out=default),
            NOW,
            max_items=10,
            expiry_s=3600,
        )
        return [row["request_sha256"] for row in batch.rows]

    plain, asked, declined = hashes(
        item, {**item, "skip_opted_out": True}, {**item, "skip_opted_out": False}
    )
    assert plain == declined != asked
    # The hash as stored before the field existed (the row sends now).
    [row] = validate_batch({"messages": [item]}, account, NOW, max_items=10, expiry_s=3600).rows
    content = {c: row[c] for c in CONTENT_COLUMNS}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(canonical.encode("utf-8")).digest() == plain
    assert hashes(item, default=True) == [asked]
