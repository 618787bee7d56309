"""Delivery-receipt text parsing and message-id normalization (carrierd.smpp.receipt)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.smpp.receipt import ReceiptText, normalize_message_id, parse_receipt_text

APPENDIX_B = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531"
    b" stat:DELIVRD err:000 text:Hello world"
)


def test_appendix_b_layout() -> None:
    assert parse_receipt_text(APPENDIX_B) == ReceiptText(
        message_id="0123456789",
        sub=1,
        dlvrd=1,
        submit_date=datetime(2024, 1, 2, 15, 30),
        done_date=datetime(2024, 1, 2, 15, 31),
        stat="DELIVRD",
        err="000",
        text="Hello world",
        err_code=0,
    )


def test_any_order_any_key_case_and_seconds() -> None:
    receipt = parse_receipt_text(
        b"STAT:undeliv Err:0x1A ID:abc Done Date:240102153145 Submit_Date:2401021530"
        b" DLVRD:000 SUB:001 Text:x"
    )
    assert receipt.message_id == "abc"
    assert receipt.stat == "UNDELIV"
    assert receipt.err == "0x1A"
    assert receipt.err_code == 26
    assert receipt.done_date == datetime(2024, 1, 2, 15, 31, 45)
    assert receipt.submit_date == datetime(2024, 1, 2, 15, 30)
    assert receipt.sub == 1
    assert receipt.dlvrd == 0
    assert receipt.text == "x"


@pytest.mark.parametrize(
    ("err", "code"),
    [("000", 0), ("075", 75), ("0x4b", 75), ("0X4B", 75), ("1A", 26), ("ff", 255), ("E1", 225)],
)
def test_err_code_decimal_or_hex(err: str, code: int) -> None:
    receipt = parse_receipt_text(f"id:1 stat:UNDELIV err:{err}".encode())
    assert receipt.err == err
    assert receipt.err_code == code


@pytest.mark.parametrize("err", ["", "n/a", "0x", "-1", "１２"])
def test_err_code_unreadable_keeps_raw(err: str) -> None:
    receipt = parse_receipt_text(f"id:1 err:{err} stat:X".encode())
    assert receipt.err == (err or None)
    assert receipt.err_code is None


def test_repeated_key_inside_text_stays_in_the_text() -> None:
    receipt = parse_receipt_text(b"id:42 stat:DELIVRD err:0 text:your id: is 7 stat:ok")
    assert receipt.message_id == "42"
    assert receipt.stat == "DELIVRD"
    assert receipt.text == "your id: is 7 stat:ok"


def test_text_in_the_middle_ends_at_the_next_new_key() -> None:
    receipt = parse_receipt_text(b"id:42 text:hello there stat:EXPIRED err:000")
    assert receipt.text == "hello there"
    assert receipt.stat == "EXPIRED"


def test_key_must_start_a_word() -> None:
    receipt = parse_receipt_text(b"msgid:9 id:10 stat:DELIVRD")
    assert receipt.message_id == "10"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2401021530", datetime(2024, 1, 2, 15, 30)),
        ("240102153059", datetime(2024, 1, 2, 15, 30, 59)),
        ("20240102153059", datetime(2024, 1, 2, 15, 30, 59)),
        ("2024-01-02 15:30:59", datetime(2024, 1, 2, 15, 30, 59)),
        ("2413021530", None),  # month 13
        ("2402301530", None),  # 30 February
        ("24010215", None),
        ("abcdefghij", None),
        ("", None),
    ],
)
def test_dates(raw: str, expected: datetime | None) -> None:
    receipt = parse_receipt_text(f"id:1 submit date:{raw} stat:DELIVRD".encode())
    assert receipt.submit_date == expected


def test_ucs2_receipt_text() -> None:
    receipt = parse_receipt_text(APPENDIX_B.decode().encode("utf-16-be"))
    assert receipt == parse_receipt_text(APPENDIX_B)


def test_utf8_and_latin1_text_and_trailing_nul() -> None:
    assert parse_receipt_text("id:1 text:こんにちは".encode()).text == "こんにちは"
    assert parse_receipt_text(b"id:1 text:caf\xe9").text == "café"
    assert parse_receipt_text(b"id:1 stat:DELIVRD\x00\x00").stat == "DELIVRD"


def test_missing_fields_are_none() -> None:
    receipt = parse_receipt_text(b"id:77 stat:DELIVRD")
    assert receipt.message_id == "77"
    assert receipt.sub is None
    assert receipt.dlvrd is None
    assert receipt.submit_date is None
    assert receipt.err is None
    assert receipt.err_code is None
    assert receipt.text is None
    assert not receipt.is_empty


@pytest.mark.parametrize("garbage", [b"", b"\x00\x00", b"hello", b"\xff\xfe\x00\x01", b"id:"])
def test_empty_or_garbage_gives_all_none(garbage: bytes) -> None:
    receipt = parse_receipt_text(garbage)
    assert receipt == ReceiptText()
    assert receipt.is_empty


RECEIPT_FRAGMENTS = st.sampled_from(
    [
        "id:",
        "sub:",
        "dlvrd:",
        "submit date:",
        "done date:",
        "stat:",
        "err:",
        "text:",
        " ",
        "0x",
        "2401021530",
        "DELIVRD",
        "999",
        "\x00",
        "ID :",
    ]
)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(short_message: bytes) -> None:
    assert isinstance(parse_receipt_text(short_message), ReceiptText)


@given(st.lists(RECEIPT_FRAGMENTS | st.text(max_size=5), max_size=30), st.booleans())
def test_receipt_like_soup_never_raises(fragments: list[str], ucs2: bool) -> None:
    text = "".join(fragments)
    encoded = (
        text.encode("utf-16-be", errors="replace") if ucs2 else text.encode("utf-8", "replace")
    )
    assert isinstance(parse_receipt_text(encoded), ReceiptText)


@pytest.mark.parametrize(
    ("raw", "style", "canonical"),
    [
        ("1A2B", "hex", "6699"),
        ("0x1a2b", "hex", "6699"),
        ("00001a2b", "hex", "6699"),
        ("6699", "decimal", "6699"),
        ("0006699", "decimal", "6699"),
        ("0", "decimal", "0"),
        ("000", "hex", "0"),
        (" AbC-123 ", "as_is", "abc-123"),
        ("0123", "as_is", "0123"),
        ("msg-1", "hex", "msg-1"),  # not hex: falls back to the as_is form
        ("12ab", "decimal", "12ab"),
        ("1_000", "decimal", "1_000"),  # int() would accept it; we do not
        ("１２３", "decimal", "１２３"),  # non-ASCII digits are not decimal ids
        ("", "hex", ""),
    ],
)
def test_normalize_message_id(raw: str, style: str, canonical: str) -> None:
    assert normalize_message_id(raw, style) == canonical  # type: ignore[arg-type]


def test_hex_response_correlates_with_decimal_receipt() -> None:
    from_submit_sm_resp = normalize_message_id("3B9ACA07", "hex")
    from_receipt = normalize_message_id("1000000007", "decimal")
    assert from_submit_sm_resp == from_receipt


@given(st.integers(0, 2**80))
def test_hex_and_decimal_spellings_of_a_number_agree(value: int) -> None:
    assert normalize_message_id(f"{value:X}", "hex") == normalize_message_id(str(value), "decimal")
    assert normalize_message_id(f"0x{value:x}", "hex") == str(value)
