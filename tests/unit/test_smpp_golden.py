"""Golden vectors for the SMPP 3.4 codec.

Every frame below is written by hand, field by field, from the byte layouts in the
SMPP 3.4 specification (sections 3.2 header, 4.x PDU bodies, 5.3 TLVs); none was
produced by our encoder. Each test decodes the frame and checks the fields, then
encodes the expected PDU and checks the bytes.
"""

from __future__ import annotations

import pytest

from carrierd.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    CommandStatus,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    MessageState,
    NetworkErrorCode,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Tlv,
    Unbind,
    UnbindResp,
    decode,
    encode,
)

BIND_TRANSCEIVER = bytes.fromhex(
    "00000029"  # command_length = 16 + 25
    "00000009"  # command_id bind_transceiver
    "00000000"  # command_status
    "00000001"  # sequence_number
    "6361727269657264 00"  # system_id "carrierd"
    "736563726574 00"  # password "secret"
    "534d5050 00"  # system_type "SMPP"
    "34"  # interface_version 3.4
    "01"  # addr_ton international
    "01"  # addr_npi ISDN
    "00"  # address_range ""
)

BIND_TRANSCEIVER_RESP = bytes.fromhex(
    "0000001a"  # command_length = 16 + 10
    "80000009"  # command_id bind_transceiver_resp
    "00000000"
    "00000001"
    "534d5343 00"  # system_id "SMSC"
    "0210 0001 34"  # TLV sc_interface_version = 0x34
)

SUBMIT_SM_PLAIN = bytes.fromhex(
    "0000003d"  # command_length = 16 + 45
    "00000004"  # submit_sm
    "00000000"
    "00000002"
    "00"  # service_type ""
    "02"  # source_addr_ton national
    "01"  # source_addr_npi ISDN
    "30313230313233343536 00"  # source_addr "0120123456"
    "01"  # dest_addr_ton international
    "01"  # dest_addr_npi ISDN
    "383139303132333435363738 00"  # destination_addr "819012345678"
    "00"  # esm_class
    "00"  # protocol_id
    "00"  # priority_flag
    "00"  # schedule_delivery_time ""
    "00"  # validity_period ""
    "01"  # registered_delivery: receipt always
    "00"  # replace_if_present_flag
    "08"  # data_coding UCS2
    "00"  # sm_default_msg_id
    "06"  # sm_length
    "30c6 30b9 30c8"  # short_message "テスト" in UCS-2
)

SUBMIT_SM_UDH_TLV = bytes.fromhex(
    "0000004e"  # command_length = 16 + 62
    "00000004"
    "00000000"
    "00000003"
    "00"
    "02"
    "01"
    "30313230313233343536 00"
    "01"
    "01"
    "383139303132333435363738 00"
    "40"  # esm_class UDHI
    "00"
    "00"
    "00"
    "00"
    "00"  # registered_delivery none
    "00"
    "08"
    "00"
    "0a"  # sm_length 10
    "05 00 03 2a 02 01"  # UDH: concat 8-bit, ref 0x2a, 2 parts, part 1
    "3042 3044"  # "あい"
    "0204 0002 1234"  # TLV user_message_reference = 0x1234
    "1401 0003 616263"  # vendor TLV 0x1401 = "abc"
)

SUBMIT_SM_RESP = bytes.fromhex(
    "00000017"  # command_length = 16 + 7
    "80000004"
    "00000000"
    "00000002"
    "616263313233 00"  # message_id "abc123"
)

RECEIPT_TEXT = (
    b"id:abc123 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531"
    b" stat:DELIVRD err:000 text:"
)
DELIVER_SM_RECEIPT = (
    bytes.fromhex(
        "000000b0"  # command_length = 16 + 160
        "00000005"  # deliver_sm
        "00000000"
        "00000010"
        "00"  # service_type
        "01"  # source_addr_ton
        "01"  # source_addr_npi
        "383139303132333435363738 00"  # source_addr: the handset
        "02"  # dest_addr_ton
        "01"  # dest_addr_npi
        "30313230313233343536 00"  # destination_addr: our sender number
        "04"  # esm_class: SMSC delivery receipt
        "00"  # protocol_id
        "00"  # priority_flag
        "00"  # schedule_delivery_time
        "00"  # validity_period
        "00"  # registered_delivery
        "00"  # replace_if_present_flag
        "00"  # data_coding
        "00"  # sm_default_msg_id
        "62"  # sm_length 98
    )
    + RECEIPT_TEXT
    + bytes.fromhex(
        "001e 0007 616263313233 00"  # receipted_message_id "abc123"
        "0427 0001 02"  # message_state DELIVERED
        "0423 0003 03 0000"  # network_error_code GSM, 0
    )
)

DELIVER_SM_RESP = bytes.fromhex("00000011 80000005 00000000 00000010 00")
ENQUIRE_LINK = bytes.fromhex("00000010 00000015 00000000 00000005")
ENQUIRE_LINK_RESP = bytes.fromhex("00000010 80000015 00000000 00000005")
GENERIC_NACK = bytes.fromhex("00000010 80000000 00000003 00000007")
UNBIND = bytes.fromhex("00000010 00000006 00000000 00000008")
UNBIND_RESP = bytes.fromhex("00000010 80000006 00000000 00000008")

SENDER = "0120123456"
HANDSET = "819012345678"

VECTORS: list[tuple[str, bytes, Pdu]] = [
    (
        "bind_transceiver",
        BIND_TRANSCEIVER,
        BindTransceiver(
            sequence_number=1,
            system_id="carrierd",
            password="secret",
            system_type="SMPP",
            interface_version=0x34,
            addr_ton=1,
            addr_npi=1,
            address_range="",
        ),
    ),
    (
        "bind_transceiver_resp",
        BIND_TRANSCEIVER_RESP,
        BindTransceiverResp(sequence_number=1, system_id="SMSC", sc_interface_version=0x34),
    ),
    (
        "submit_sm",
        SUBMIT_SM_PLAIN,
        SubmitSm(
            sequence_number=2,
            source_addr_ton=2,
            source_addr_npi=1,
            source_addr=SENDER,
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr=HANDSET,
            registered_delivery=1,
            data_coding=8,
            short_message="テスト".encode("utf-16-be"),
        ),
    ),
    (
        "submit_sm_udh_tlv",
        SUBMIT_SM_UDH_TLV,
        SubmitSm(
            sequence_number=3,
            source_addr_ton=2,
            source_addr_npi=1,
            source_addr=SENDER,
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr=HANDSET,
            esm_class=0x40,
            data_coding=8,
            short_message=b"\x05\x00\x03\x2a\x02\x01" + "あい".encode("utf-16-be"),
            user_message_reference=0x1234,
            extra_tlvs=(Tlv(0x1401, b"abc"),),
        ),
    ),
    ("submit_sm_resp", SUBMIT_SM_RESP, SubmitSmResp(sequence_number=2, message_id="abc123")),
    (
        "deliver_sm_receipt",
        DELIVER_SM_RECEIPT,
        DeliverSm(
            sequence_number=0x10,
            source_addr_ton=1,
            source_addr_npi=1,
            source_addr=HANDSET,
            dest_addr_ton=2,
            dest_addr_npi=1,
            destination_addr=SENDER,
            esm_class=0x04,
            short_message=RECEIPT_TEXT,
            receipted_message_id="abc123",
            message_state=MessageState.DELIVERED,
            network_error_code=NetworkErrorCode(network_type=3, error_code=0),
        ),
    ),
    ("deliver_sm_resp", DELIVER_SM_RESP, DeliverSmResp(sequence_number=0x10)),
    ("enquire_link", ENQUIRE_LINK, EnquireLink(sequence_number=5)),
    ("enquire_link_resp", ENQUIRE_LINK_RESP, EnquireLinkResp(sequence_number=5)),
    (
        "generic_nack",
        GENERIC_NACK,
        GenericNack(sequence_number=7, command_status=CommandStatus.ESME_RINVCMDID),
    ),
    ("unbind", UNBIND, Unbind(sequence_number=8)),
    ("unbind_resp", UNBIND_RESP, UnbindResp(sequence_number=8)),
]


@pytest.mark.parametrize(
    ("frame", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_golden_vector_decodes_to_expected_fields(frame: bytes, expected: Pdu) -> None:
    assert decode(frame) == expected


@pytest.mark.parametrize(
    ("frame", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_golden_vector_encodes_to_expected_bytes(frame: bytes, expected: Pdu) -> None:
    assert encode(expected).hex() == frame.hex()


def test_receipt_vector_is_a_receipt_with_typed_tlvs() -> None:
    receipt = decode(DELIVER_SM_RECEIPT)
    assert isinstance(receipt, DeliverSm)
    assert receipt.esm_class & 0x3C == 0x04
    assert receipt.receipted_message_id == "abc123"
    assert receipt.message_state == MessageState.DELIVERED
    assert receipt.extra_tlvs == ()


def test_header_only_error_response_decodes_with_defaults() -> None:
    # SMSCs omit the body of a failed response (spec 4.4.2: message_id only on success).
    frame = bytes.fromhex("00000010 80000004 00000045 00000009")
    assert decode(frame) == SubmitSmResp(
        sequence_number=9, command_status=CommandStatus.ESME_RSUBMITFAIL, message_id=""
    )
    failed_bind = bytes.fromhex("00000010 80000009 0000000e 00000001")
    assert decode(failed_bind) == BindTransceiverResp(
        sequence_number=1, command_status=CommandStatus.ESME_RINVPASWD
    )


def test_vendor_command_status_survives_decode() -> None:
    frame = bytes.fromhex("00000010 80000004 0000040a 0000000b")
    decoded = decode(frame)
    assert isinstance(decoded, SubmitSmResp)
    assert decoded.command_status == 0x40A
    # A failed response without content goes back header-only, as the spec says.
    assert encode(decoded) == frame
