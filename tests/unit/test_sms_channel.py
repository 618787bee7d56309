"""channels/sms.py pure parts: message -> submit_sm PDUs, deliver_sm -> Receipt / InboundSms."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.channels.sms import (
    SmppGateway,
    build_submit_pdus,
    concat_reference,
    parse_deliver,
    part_outcomes,
    smpp_absolute_time,
    source_address,
)
from carrierd.channels.types import InboundSms, PartOutcome, Receipt, SmsRequest
from carrierd.config import CarrierConfig
from carrierd.domain.clock import JST, FakeClock
from carrierd.domain.sms_text import encode_gsm7, split_ucs2
from carrierd.smpp.pdu import (
    ESM_CLASS_RECEIPT,
    ESM_CLASS_UDHI,
    ConcatInfo,
    DataSm,
    DeliverSm,
    MessageState,
    NetworkErrorCode,
    SubmitSm,
    decode,
    encode,
    split_udh,
)
from carrierd.smpp.receipt import MessageIdStyle
from carrierd.smpp.session import SubmitResult

RECEIVED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_TEXT = "ご予約ありがとうございます。" * 10  # 140 characters: three UCS-2 parts


def request(parts: tuple[str, ...] = ("こんにちは",), **changes: object) -> SmsRequest:
    base = SmsRequest(
        message_id=123456,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=parts,
        expires_at=datetime(2025, 3, 4, 14, 30, 15, tzinfo=JST),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def carrier(**changes: object) -> CarrierConfig:
    return replace(CarrierConfig(name="docomo"), **changes)  # type: ignore[arg-type]


def long_parts() -> tuple[str, ...]:
    return tuple(split_ucs2(LONG_TEXT))


# -- message -> PDUs ------------------------------------------------------------------------


def test_single_part_ucs2() -> None:
    [pdu] = build_submit_pdus(request(), carrier())

    assert pdu.data_coding == 0x08
    assert pdu.short_message == "こんにちは".encode("utf-16-be")
    assert pdu.esm_class == 0
    assert (pdu.source_addr_ton, pdu.source_addr_npi, pdu.source_addr) == (2, 1, "0120123456")
    assert (pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr) == (1, 1, "819012345678")
    assert pdu.registered_delivery == 1
    # 14:30:15 JST is 05:30:15 UTC.
    assert pdu.validity_period == "250304053015000+"
    assert pdu.sar_msg_ref_num is None and pdu.message_payload is None
    assert decode(encode(pdu)) == pdu


def test_single_part_gsm7() -> None:
    [pdu] = build_submit_pdus(request(("Code: 1234 @home",), encoding="gsm7"), carrier())

    assert pdu.data_coding == 0x00
    assert pdu.short_message == encode_gsm7("Code: 1234 @home")


@pytest.mark.parametrize("concat", ["udh8", "udh16", "sar", "payload"])
def test_single_part_is_plain_in_every_mode(concat: str) -> None:
    [pdu] = build_submit_pdus(request(), carrier(concat=concat))

    assert pdu.esm_class == 0
    assert pdu.short_message == "こんにちは".encode("utf-16-be")
    assert pdu.sar_total_segments is None and pdu.message_payload is None


def test_udh8_parts() -> None:
    parts = long_parts()
    pdus = build_submit_pdus(request(parts), carrier(concat="udh8"))

    reference = concat_reference(123456, 1, bits=8)
    assert len(pdus) == 3
    for number, (pdu, part) in enumerate(zip(pdus, parts, strict=True), start=1):
        assert pdu.esm_class == ESM_CLASS_UDHI
        assert pdu.short_message[:6] == bytes([5, 0, 3, reference, 3, number])
        assert split_udh(pdu.short_message) == (
            ConcatInfo(reference, 3, number),
            part.encode("utf-16-be"),
        )
    # 67 UCS-2 characters and a 6-octet header fill one SMS exactly.
    assert len(pdus[0].short_message) == 140


def test_udh16_parts() -> None:
    pdus = build_submit_pdus(request(long_parts()), carrier(concat="udh16"))

    reference = concat_reference(123456, 1, bits=16)
    assert [pdu.short_message[:7] for pdu in pdus] == [
        bytes([6, 8, 4, reference >> 8, reference & 0xFF, 3, number]) for number in (1, 2, 3)
    ]
    assert all(pdu.esm_class == ESM_CLASS_UDHI for pdu in pdus)


def test_sar_parts() -> None:
    parts = long_parts()
    pdus = build_submit_pdus(request(parts), carrier(concat="sar"))

    reference = concat_reference(123456, 1, bits=16)
    assert [(p.sar_msg_ref_num, p.sar_total_segments, p.sar_segment_seqnum) for p in pdus] == [
        (reference, 3, 1),
        (reference, 3, 2),
        (reference, 3, 3),
    ]
    assert [p.short_message for p in pdus] == [part.encode("utf-16-be") for part in parts]
    assert all(p.esm_class == 0 for p in pdus)
    assert all(decode(encode(p)) == p for p in pdus)


def test_payload_is_one_pdu() -> None:
    [pdu] = build_submit_pdus(request(long_parts()), carrier(concat="payload"))

    assert pdu.message_payload == LONG_TEXT.encode("utf-16-be")
    assert pdu.short_message == b""
    assert pdu.esm_class == 0
    assert decode(encode(pdu)) == pdu


def test_gsm7_parts_with_udh() -> None:
    parts = ("a" * 153, "b" * 10)
    pdus = build_submit_pdus(request(parts, encoding="gsm7"), carrier())

    assert [p.data_coding for p in pdus] == [0, 0]
    assert pdus[1].short_message[6:] == b"b" * 10


@given(st.integers(min_value=1, max_value=2**62), st.integers(min_value=0, max_value=1000))
def test_concat_reference_is_stable_and_differs_between_attempts(
    message_id: int, attempt: int
) -> None:
    for bits in (8, 16):
        reference = concat_reference(message_id, attempt, bits=bits)
        assert 0 <= reference < 1 << bits
        assert reference == concat_reference(message_id, attempt, bits=bits)
        assert reference != concat_reference(message_id, attempt + 1, bits=bits)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("0120123456", (2, 1, "0120123456")),
        ("09012345678", (2, 1, "09012345678")),
        ("249200", (3, 0, "249200")),
        ("+81312345678", (1, 1, "81312345678")),
        ("Carrierd", (5, 0, "Carrierd")),
        ("SHOP-JP", (5, 0, "SHOP-JP")),
    ],
)
def test_source_address(sender: str, expected: tuple[int, int, str]) -> None:
    assert source_address(sender) == expected


def test_absolute_time_requires_an_aware_datetime() -> None:
    assert smpp_absolute_time(datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)) == (
        "301231235959000+"
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        smpp_absolute_time(datetime(2030, 1, 1))


# -- results -> outcomes ------------------------------------------------------------------


def test_part_outcomes_normalise_ids() -> None:
    results = [
        SubmitResult("accepted", "docomo-1", message_id="0000001A"),
        SubmitResult("refused", "docomo-1", command_status=0x45),
        SubmitResult("unknown", "docomo-1", detail="timeout"),
    ]

    outcomes = part_outcomes(request(("a", "b", "c")), results, "hex")

    assert outcomes == [
        PartOutcome(1, "accepted", smsc_message_id="26", bind_id="docomo-1"),
        PartOutcome(2, "refused", command_status=0x45, bind_id="docomo-1"),
        PartOutcome(3, "unknown", bind_id="docomo-1"),
    ]


def test_one_payload_pdu_is_one_record_for_every_part() -> None:
    results = [SubmitResult("accepted", "docomo-2", message_id="AbC-9")]

    outcomes = part_outcomes(request(("a", "b")), results, "as_is")

    # One submit_sm, one SMSC id, one receipt: one record, not two parts
    # sharing an id that a single receipt can never both settle.
    assert [(o.part_no, o.result, o.smsc_message_id) for o in outcomes] == [
        (1, "accepted", "abc-9"),
    ]


def test_unsent_without_bind() -> None:
    [outcome] = part_outcomes(request(), [SubmitResult("unsent", None)], "as_is")

    assert outcome == PartOutcome(1, "unsent")


# -- receipts ---------------------------------------------------------------------------------


def receipt_pdu(**fields: object) -> DeliverSm:
    base = DeliverSm(
        sequence_number=1,
        source_addr="819012345678",
        destination_addr="0120123456",
        esm_class=ESM_CLASS_RECEIPT,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def parsed(
    pdu: DeliverSm | DataSm,
    style: MessageIdStyle = "as_is",
    *,
    tlv_style: MessageIdStyle | None = None,
) -> Receipt | InboundSms | None:
    """`style` reads the text id, and the TLV too unless `tlv_style` is given."""
    return parse_deliver(
        pdu,
        carrier="docomo",
        message_id_style=tlv_style or style,
        receipt_id_style=style,
        received_at=RECEIVED_AT,
    )


def test_receipt_from_tlvs() -> None:
    pdu = receipt_pdu(
        receipted_message_id="0A1B",
        message_state=MessageState.DELIVERED,
        short_message=b"id:IGNORED stat:UNDELIV err:000",
    )

    assert parsed(pdu, "hex") == Receipt(
        "docomo", "2587", "DELIVRD", "000", RECEIVED_AT, alt_smsc_message_id="ignored"
    )


@pytest.mark.parametrize(
    ("state", "stat"),
    [
        (MessageState.ENROUTE, "ENROUTE"),
        (MessageState.DELIVERED, "DELIVRD"),
        (MessageState.EXPIRED, "EXPIRED"),
        (MessageState.DELETED, "DELETED"),
        (MessageState.UNDELIVERABLE, "UNDELIV"),
        (MessageState.ACCEPTED, "ACCEPTD"),
        (MessageState.UNKNOWN, "UNKNOWN"),
        (MessageState.REJECTED, "REJECTD"),
    ],
)
def test_message_state_maps_to_stat(state: int, stat: str) -> None:
    receipt = parsed(receipt_pdu(receipted_message_id="1", message_state=state))

    assert isinstance(receipt, Receipt)
    assert receipt.stat == stat
    assert receipt.err is None


def test_receipt_from_text_decimal_id() -> None:
    text = (
        b"id:0000012345 sub:001 dlvrd:000 submit date:2501020304 "
        b"done date:2501020305 stat:UNDELIV err:0x0b text:hello"
    )

    receipt = parsed(receipt_pdu(short_message=text), "decimal")

    assert receipt == Receipt("docomo", "12345", "UNDELIV", "0x0b", RECEIVED_AT)


def test_hex_response_id_and_decimal_receipt_id_compare_equal() -> None:
    [outcome] = part_outcomes(
        request(), [SubmitResult("accepted", "docomo-1", message_id="3039")], "hex"
    )
    receipt = parsed(receipt_pdu(short_message=b"id:12345 stat:DELIVRD err:000"), "decimal")

    assert isinstance(receipt, Receipt)
    assert receipt.smsc_message_id == outcome.smsc_message_id == "12345"


def test_receipt_text_in_ucs2_and_long_stat() -> None:
    text = "id:ab12 stat:DELIVERED err:000".encode("utf-16-be")

    receipt = parsed(receipt_pdu(short_message=text, data_coding=8))

    assert receipt == Receipt("docomo", "ab12", "DELIVRD", "000", RECEIVED_AT)


def test_receipted_message_id_alone_makes_a_receipt() -> None:
    pdu = receipt_pdu(esm_class=0, receipted_message_id="77", short_message=b"stat:EXPIRED")

    assert parsed(pdu) == Receipt("docomo", "77", "EXPIRED", None, RECEIVED_AT)


def test_receipt_without_state_is_unknown_and_network_error_is_kept() -> None:
    pdu = receipt_pdu(
        receipted_message_id="77",
        network_error_code=NetworkErrorCode(network_type=3, error_code=11),
    )

    assert parsed(pdu) == Receipt("docomo", "77", "UNKNOWN", "011", RECEIVED_AT)


def test_receipt_by_data_sm() -> None:
    pdu = DataSm(
        sequence_number=1,
        esm_class=ESM_CLASS_RECEIPT,
        message_payload=b"id:99 stat:REJECTD err:005",
    )

    assert parsed(pdu) == Receipt("docomo", "99", "REJECTD", "005", RECEIVED_AT)


def test_receipt_without_any_id_is_dropped() -> None:
    assert parsed(receipt_pdu(short_message=b"stat:DELIVRD")) is None


# -- mobile-originated --------------------------------------------------------------------------


def mo_pdu(**fields: object) -> DeliverSm:
    base = DeliverSm(sequence_number=1, source_addr="819012345678", destination_addr="0120123456")
    return replace(base, **fields)  # type: ignore[arg-type]


def test_mo_is_handed_over_unread() -> None:
    # Replies have one owner (engine/inbound.py): the channel passes the
    # deliver_sm's fields on as they came, header and coding included.
    udh = bytes([5, 0, 3, 42, 2, 1])
    body = udh + "前半".encode("utf-16-be")
    pdu = mo_pdu(esm_class=ESM_CLASS_UDHI, data_coding=8, short_message=body)

    assert parsed(pdu) == InboundSms(
        carrier="docomo",
        source_addr="819012345678",
        destination_addr="0120123456",
        esm_class=ESM_CLASS_UDHI,
        data_coding=8,
        short_message=body,
        received_at=RECEIVED_AT,
    )


def test_mo_by_data_sm_payload_with_sar() -> None:
    pdu = DataSm(
        sequence_number=1,
        source_addr="SHORTCODE",
        destination_addr="249200",
        data_coding=3,
        message_payload="café".encode("latin-1"),
        sar_msg_ref_num=7,
        sar_total_segments=2,
        sar_segment_seqnum=1,
    )

    inbound = parsed(pdu)

    assert isinstance(inbound, InboundSms)
    assert (inbound.short_message, inbound.sar_msg_ref_num, inbound.sar_segment_seqnum) == (
        "café".encode("latin-1"),
        7,
        1,
    )


def test_expiry_is_written_in_utc_even_for_a_jst_deadline() -> None:
    expires_at = datetime(2025, 1, 1, 0, 0, tzinfo=JST) + timedelta(hours=72)

    [pdu] = build_submit_pdus(request(expires_at=expires_at), carrier())

    assert pdu.validity_period == "250103150000000+"
    assert isinstance(pdu, SubmitSm)


TEXT_12345 = b"id:0000012345 sub:001 dlvrd:001 stat:DELIVRD err:000"


def test_tlv_in_hex_and_text_in_decimal_give_two_candidates() -> None:
    # The TLV is read in the submit_sm_resp style (hex), the text in decimal:
    # "1234abcd" and 12345 are different ids, and either may be the part's.
    pdu = receipt_pdu(receipted_message_id="1234ABCD", short_message=TEXT_12345)

    receipt = parsed(pdu, "decimal", tlv_style="hex")

    assert isinstance(receipt, Receipt)
    assert (receipt.smsc_message_id, receipt.alt_smsc_message_id) == (str(0x1234ABCD), "12345")


def test_tlv_alone_is_read_in_the_response_style() -> None:
    pdu = receipt_pdu(receipted_message_id="3039", message_state=MessageState.DELIVERED)

    receipt = parsed(pdu, "decimal", tlv_style="hex")

    assert receipt == Receipt("docomo", "12345", "DELIVRD", None, RECEIVED_AT)


def test_text_alone_is_read_in_the_receipt_style() -> None:
    receipt = parsed(receipt_pdu(short_message=TEXT_12345), "decimal", tlv_style="hex")

    assert receipt == Receipt("docomo", "12345", "DELIVRD", "000", RECEIVED_AT)


def test_tlv_and_text_naming_the_same_id_give_one_candidate() -> None:
    pdu = receipt_pdu(receipted_message_id="3039", short_message=TEXT_12345)

    receipt = parsed(pdu, "decimal", tlv_style="hex")

    assert receipt == Receipt("docomo", "12345", "DELIVRD", "000", RECEIVED_AT)


class _Collected:
    def __init__(self) -> None:
        self.receipts: list[Receipt] = []

    def receipt(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)

    def inbound(self, message: InboundSms) -> None:
        raise AssertionError(message)


def test_gateway_reads_the_tlv_as_the_response_id_and_the_text_in_its_own_base() -> None:
    # The carrier answers submit_sm in hex and writes that same id in
    # receipted_message_id (SMPP 3.4), but its "id:" text in decimal.
    events = _Collected()
    gateway = SmppGateway(
        {"docomo": carrier(message_id_style="hex", receipt_id_style="decimal")},
        events,
        FakeClock(RECEIVED_AT),
        receipt_message_id_styles={"docomo": "decimal"},
    )
    [outcome] = part_outcomes(
        request(), [SubmitResult("accepted", "docomo-1", message_id="3039")], "hex"
    )
    pdu = receipt_pdu(receipted_message_id="3039", short_message=b"id:12345 stat:DELIVRD err:000")

    gateway._on_deliver("docomo", pdu, "docomo-1")

    [receipt] = events.receipts
    assert receipt.smsc_message_id == outcome.smsc_message_id == "12345"
