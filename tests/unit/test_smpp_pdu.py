"""Properties and edge cases of the SMPP codec (carrierd.smpp.pdu)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.smpp.pdu import (
    ESM_CLASS_UDHI,
    PDU_CLASSES,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    ConcatInfo,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    Framer,
    GenericNack,
    KnownPdu,
    MalformedPdu,
    NetworkErrorCode,
    Pdu,
    PduEncodeError,
    StreamBroken,
    SubmitSm,
    SubmitSmResp,
    Tlv,
    TlvTag,
    UnknownPdu,
    decode,
    describe_status,
    encode,
    is_response,
    response_command_id,
    split_udh,
    udh_concat,
)

# Tags some PDU class types; a raw Tlv with one of them could legitimately decode
# into the typed field instead, so random extra_tlvs avoid them.
TYPED_TAGS = {
    TlvTag.USER_MESSAGE_REFERENCE,
    TlvTag.SAR_MSG_REF_NUM,
    TlvTag.SAR_TOTAL_SEGMENTS,
    TlvTag.SAR_SEGMENT_SEQNUM,
    TlvTag.MESSAGE_PAYLOAD,
    TlvTag.RECEIPTED_MESSAGE_ID,
    TlvTag.MESSAGE_STATE,
    TlvTag.NETWORK_ERROR_CODE,
    TlvTag.SC_INTERFACE_VERSION,
}


def c_octet_string(max_chars: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=max_chars)


U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)

# One strategy per field name, within the smallest spec maximum the name has.
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "sequence_number": U32,
    "command_status": U32,
    "system_id": c_octet_string(15),
    "password": c_octet_string(8),
    "system_type": c_octet_string(12),
    "interface_version": U8,
    "addr_ton": U8,
    "addr_npi": U8,
    "address_range": c_octet_string(40),
    "service_type": c_octet_string(5),
    "source_addr_ton": U8,
    "source_addr_npi": U8,
    "source_addr": c_octet_string(20),
    "dest_addr_ton": U8,
    "dest_addr_npi": U8,
    "destination_addr": c_octet_string(20),
    "esme_addr_ton": U8,
    "esme_addr_npi": U8,
    "esme_addr": c_octet_string(64),
    "esm_class": U8,
    "protocol_id": U8,
    "priority_flag": U8,
    "schedule_delivery_time": c_octet_string(16),
    "validity_period": c_octet_string(16),
    "final_date": c_octet_string(16),
    "registered_delivery": U8,
    "replace_if_present_flag": U8,
    "data_coding": U8,
    "sm_default_msg_id": U8,
    "short_message": st.binary(max_size=254),
    "message_id": c_octet_string(64),
    "message_state": U8,
    "error_code": U8,
    "user_message_reference": U16,
    "sar_msg_ref_num": U16,
    "sar_total_segments": U8,
    "sar_segment_seqnum": U8,
    "message_payload": st.binary(max_size=600),
    "receipted_message_id": c_octet_string(64),
    "network_error_code": st.builds(NetworkErrorCode, U8, U16),
    "sc_interface_version": U8,
    "extra_tlvs": st.lists(
        st.builds(
            Tlv,
            st.integers(0, 0xFFFF).filter(lambda tag: tag not in TYPED_TAGS),
            st.binary(max_size=40),
        ),
        max_size=3,
    ).map(tuple),
}


def pdu_of(cls: type[KnownPdu]) -> st.SearchStrategy[KnownPdu]:
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for pdu_field in dataclasses.fields(cls):
        strategy = FIELD_STRATEGIES[pdu_field.name]
        kwargs[pdu_field.name] = st.none() | strategy if pdu_field.default is None else strategy
    return st.builds(cls, **kwargs)


any_pdu = st.sampled_from(PDU_CLASSES).flatmap(pdu_of)


def events_of(framer: Framer) -> list[Pdu | MalformedPdu]:
    events: list[Pdu | MalformedPdu] = []
    while (event := framer.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("cls", PDU_CLASSES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_every_pdu_type_round_trips(cls: type[KnownPdu], data: st.DataObject) -> None:
    pdu = data.draw(pdu_of(cls))
    frame = encode(pdu)
    assert int.from_bytes(frame[:4], "big") == len(frame)
    assert int.from_bytes(frame[4:8], "big") == cls.command_id
    assert decode(frame) == pdu


@given(pdus=st.lists(any_pdu, min_size=1, max_size=8), data=st.data())
def test_framer_yields_same_pdus_whatever_the_chunking(
    pdus: list[KnownPdu], data: st.DataObject
) -> None:
    stream = b"".join(encode(pdu) for pdu in pdus)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    framer = Framer()
    events: list[Pdu | MalformedPdu] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        framer.feed(stream[previous:cut])
        previous = cut
        events.extend(events_of(framer))
    assert events == pdus
    assert framer.buffered == 0


def test_framer_fed_one_byte_at_a_time() -> None:
    pdus = [EnquireLink(sequence_number=n) for n in range(1, 4)]
    framer = Framer()
    events: list[Pdu | MalformedPdu] = []
    for byte in b"".join(encode(pdu) for pdu in pdus):
        framer.feed(bytes([byte]))
        events.extend(events_of(framer))
    assert events == pdus


def test_framer_waits_for_a_whole_frame() -> None:
    frame = encode(SubmitSmResp(sequence_number=1, message_id="x"))
    framer = Framer()
    framer.feed(frame[:-1])
    assert framer.next_event() is None
    framer.feed(frame[-1:])
    assert framer.next_event() == SubmitSmResp(sequence_number=1, message_id="x")
    assert framer.next_event() is None


def test_framer_compacts_after_many_frames() -> None:
    framer = Framer()
    frames = [encode(EnquireLink(sequence_number=n)) for n in range(1, 2000)]
    framer.feed(b"".join(frames) + frames[0][:5])
    assert len(events_of(framer)) == len(frames)
    assert framer.buffered == 5


@pytest.mark.parametrize("command_length", [0, 1, 15])
def test_command_length_below_header_breaks_the_stream(command_length: int) -> None:
    framer = Framer()
    framer.feed(command_length.to_bytes(4, "big"))
    with pytest.raises(StreamBroken):
        framer.next_event()


def test_command_length_over_max_breaks_the_stream_before_the_body_arrives() -> None:
    framer = Framer(max_pdu_len=1024)
    framer.feed((1025).to_bytes(4, "big"))
    with pytest.raises(StreamBroken):
        framer.next_event()
    # Sticky: the boundary of the next frame is unknowable.
    framer.feed(encode(EnquireLink(sequence_number=1)))
    with pytest.raises(StreamBroken):
        framer.next_event()


def test_max_pdu_len_is_inclusive_and_defaults_to_64_kib() -> None:
    assert Framer().max_pdu_len == 64 * 1024
    big = SubmitSm(sequence_number=1, message_payload=b"x" * 1000)
    frame = encode(big)
    framer = Framer(max_pdu_len=len(frame))
    framer.feed(frame)
    assert framer.next_event() == big
    with pytest.raises(ValueError):
        Framer(max_pdu_len=15)


def test_malformed_pdu_does_not_disturb_the_next_frame() -> None:
    # submit_sm whose body is one octet: service_type without its NUL.
    bad = bytes.fromhex("00000011 00000004 00000000 0000002a 41")
    good = encode(EnquireLink(sequence_number=43))
    framer = Framer()
    framer.feed(bad + good)
    malformed = framer.next_event()
    assert isinstance(malformed, MalformedPdu)
    assert malformed.sequence_number == 42
    assert malformed.command_id == CommandId.SUBMIT_SM
    assert malformed.nack_status == CommandStatus.ESME_RINVCMDLEN
    assert framer.next_event() == EnquireLink(sequence_number=43)


def _submit_sm_frame_with_tail(tail: bytes) -> bytes:
    body = encode(SubmitSm(sequence_number=1))[16:] + tail
    return (16 + len(body)).to_bytes(4, "big") + bytes.fromhex("00000004 00000000 00000001") + body


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        (bytes.fromhex("02"), CommandStatus.ESME_RINVOPTPARSTREAM),  # stray octet
        (bytes.fromhex("0204 00"), CommandStatus.ESME_RINVOPTPARSTREAM),  # TLV header cut
        (bytes.fromhex("0204 0005 0001"), CommandStatus.ESME_RINVOPTPARSTREAM),  # past end
    ],
)
def test_broken_tlv_stream_is_malformed_not_fatal(tail: bytes, status: int) -> None:
    decoded = decode(_submit_sm_frame_with_tail(tail))
    assert isinstance(decoded, MalformedPdu)
    assert decoded.nack_status == status


def test_sm_length_past_the_end_is_malformed() -> None:
    body = bytearray(encode(SubmitSm(sequence_number=1, short_message=b"abc"))[16:])
    body[-4] = 200  # sm_length
    frame = (16 + len(body)).to_bytes(4, "big") + bytes.fromhex("00000004 0000000000000001")
    decoded = decode(frame + bytes(body))
    assert isinstance(decoded, MalformedPdu)
    assert decoded.nack_status == CommandStatus.ESME_RINVCMDLEN


def test_decode_rejects_a_frame_that_is_not_exactly_one_frame() -> None:
    frame = encode(EnquireLink(sequence_number=1))
    with pytest.raises(StreamBroken):
        decode(frame[:10])
    with pytest.raises(StreamBroken):
        decode(frame + b"\x00")


def test_unknown_tlvs_are_preserved_byte_for_byte() -> None:
    vendor_tlvs = bytes.fromhex("1401 0003 6162633000 0000fffe 0002 0102")
    frame = _submit_sm_frame_with_tail(vendor_tlvs)
    decoded = decode(frame)
    assert isinstance(decoded, SubmitSm)
    assert decoded.extra_tlvs == (
        Tlv(0x1401, b"abc"),
        Tlv(0x3000, b""),
        Tlv(0xFFFE, b"\x01\x02"),
    )
    assert encode(decoded) == frame


def test_typed_tlvs_are_written_before_raw_ones_and_raw_ones_keep_their_bytes() -> None:
    vendor = bytes.fromhex("1401 0003 616263")
    sar_ref = bytes.fromhex("020c 0002 0102")
    decoded = decode(_submit_sm_frame_with_tail(vendor + sar_ref))
    assert isinstance(decoded, SubmitSm)
    assert decoded.sar_msg_ref_num == 0x0102
    assert encode(decoded).endswith(sar_ref + vendor)


def test_known_tag_with_wrong_shape_or_not_allowed_or_repeated_is_kept_raw() -> None:
    tail = bytes.fromhex(
        "0427 0002 0002"  # message_state should be 1 octet
        "001e 0004 61626300"  # receipted_message_id: not a submit_sm TLV
        "020e 0001 03"  # sar_total_segments
        "020e 0001 04"  # repeated
    )
    decoded = decode(_submit_sm_frame_with_tail(tail))
    assert isinstance(decoded, SubmitSm)
    assert decoded.sar_total_segments == 3
    assert decoded.extra_tlvs == (
        Tlv(0x0427, b"\x00\x02"),
        Tlv(0x001E, b"abc\x00"),
        Tlv(0x020E, b"\x04"),
    )


def test_deliver_sm_with_bad_message_state_tlv_keeps_it_raw() -> None:
    pdu = DeliverSm(sequence_number=1, extra_tlvs=(Tlv(0x0427, b"\x00\x00\x00\x02"),))
    decoded = decode(encode(pdu))
    assert decoded == pdu
    assert isinstance(decoded, DeliverSm)
    assert decoded.message_state is None


def test_receipted_message_id_is_accepted_without_its_nul() -> None:
    pdu = DeliverSm(sequence_number=1, extra_tlvs=(Tlv(0x001E, b"abc123"),))
    decoded = decode(encode(pdu))
    assert isinstance(decoded, DeliverSm)
    assert decoded.receipted_message_id == "abc123"
    assert decoded.extra_tlvs == ()


def test_response_message_id_without_nul_is_accepted() -> None:
    frame = bytes.fromhex("00000013 80000004 00000000 00000001 616263")
    assert decode(frame) == SubmitSmResp(sequence_number=1, message_id="abc")


def test_request_c_octet_string_without_nul_is_malformed() -> None:
    frame = bytes.fromhex("00000013 00000002 00000000 00000001 616263")
    decoded = decode(frame)
    assert isinstance(decoded, MalformedPdu)
    assert "system_id" in decoded.reason


def test_header_only_deliver_sm_resp_is_accepted() -> None:
    frame = bytes.fromhex("00000010 80000005 00000000 00000001")
    assert decode(frame) == DeliverSmResp(sequence_number=1)


def test_over_long_fields_decode_but_do_not_encode() -> None:
    body = bytearray(encode(SubmitSm(sequence_number=1))[16:])
    body[3:3] = b"9" * 30  # into source_addr, before its NUL
    frame = (16 + len(body)).to_bytes(4, "big") + bytes.fromhex("00000004 00000000 00000001")
    decoded = decode(frame + bytes(body))
    assert isinstance(decoded, SubmitSm)
    assert decoded.source_addr == "9" * 30
    with pytest.raises(PduEncodeError):
        encode(decoded)


def test_c_octet_strings_round_trip_every_non_nul_byte() -> None:
    every_byte = bytes(range(1, 256)).decode("latin-1")
    pdu = DeliverSm(sequence_number=1, receipted_message_id=every_byte[:64])
    assert decode(encode(pdu)) == pdu


@pytest.mark.parametrize(
    "bad",
    [
        SubmitSm(sequence_number=1, short_message=b"x" * 255),
        SubmitSm(sequence_number=1, source_addr="a\x00b"),
        SubmitSm(sequence_number=1, source_addr="日本"),
        SubmitSm(sequence_number=1, esm_class=256),
        SubmitSm(sequence_number=1, esm_class=-1),
        SubmitSm(sequence_number=1, sar_msg_ref_num=0x10000),
        SubmitSm(sequence_number=1, message_payload=b"x" * 0x10000),
        SubmitSm(sequence_number=1, extra_tlvs=(Tlv(0x10000, b""),)),
        SubmitSmResp(sequence_number=1, message_id="x" * 65),
        BindTransmitter(sequence_number=1, password="x" * 9),
        BindTransmitter(sequence_number=2**32),
        DeliverSm(sequence_number=1, network_error_code=NetworkErrorCode(256, 0)),
    ],
)
def test_encode_refuses_what_the_spec_cannot_carry(bad: KnownPdu) -> None:
    with pytest.raises(PduEncodeError):
        encode(bad)


def test_failed_response_with_content_keeps_its_body() -> None:
    pdu = BindTransmitterResp(sequence_number=1, command_status=0x0D, system_id="SMSC")
    assert len(encode(pdu)) > 16
    assert decode(encode(pdu)) == pdu
    assert len(encode(SubmitSmResp(sequence_number=1, command_status=0x45))) == 16


def test_unknown_command_id_becomes_unknown_pdu_and_encodes_back() -> None:
    frame = bytes.fromhex("00000014 00000021 00000000 00000007 01020304")  # submit_multi
    decoded = decode(frame)
    assert decoded == UnknownPdu(
        command_id=0x21, sequence_number=7, command_status=0, body=b"\x01\x02\x03\x04"
    )
    assert encode(decoded) == frame
    vendor = bytes.fromhex("00000010 00010000 00000000 00000008")
    assert decode(vendor) == UnknownPdu(0x10000, 8, 0, b"")


def test_unknown_command_id_flows_through_the_framer() -> None:
    framer = Framer()
    framer.feed(
        bytes.fromhex("00000012 8000ffff 00000001 00000009 abcd")
        + encode(GenericNack(sequence_number=10))
    )
    assert framer.next_event() == UnknownPdu(0x8000FFFF, 9, 1, b"\xab\xcd")
    assert framer.next_event() == GenericNack(sequence_number=10)


def test_command_id_helpers() -> None:
    assert not is_response(CommandId.SUBMIT_SM)
    assert is_response(CommandId.SUBMIT_SM_RESP)
    assert is_response(CommandId.GENERIC_NACK)
    assert response_command_id(CommandId.SUBMIT_SM) == CommandId.SUBMIT_SM_RESP
    assert response_command_id(CommandId.ENQUIRE_LINK) == CommandId.ENQUIRE_LINK_RESP
    assert response_command_id(CommandId.DATA_SM) == CommandId.DATA_SM_RESP
    with pytest.raises(ValueError):
        response_command_id(CommandId.SUBMIT_SM_RESP)
    for unanswered in (CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION):
        with pytest.raises(ValueError):
            response_command_id(unanswered)
    for cls in PDU_CLASSES:
        if not is_response(cls.command_id) and cls.command_id not in (
            CommandId.OUTBIND,
            CommandId.ALERT_NOTIFICATION,
        ):
            assert response_command_id(cls.command_id) in set(CommandId)


def test_command_status_table_and_names() -> None:
    assert CommandStatus(0x58) is CommandStatus.ESME_RTHROTTLED
    assert CommandStatus(0xC0) is CommandStatus.ESME_RINVOPTPARSTREAM
    assert CommandStatus(0xFF) is CommandStatus.ESME_RUNKNOWNERR
    assert describe_status(0x14) == "ESME_RMSGQFUL"
    assert describe_status(0x40A) == "vendor-specific 0x0000040a"
    assert describe_status(0x09) == "reserved 0x00000009"


def test_udh_concat_layouts() -> None:
    assert udh_concat(0x2A, 3, 2) == bytes.fromhex("050003 2a 03 02")
    assert udh_concat(0x1234, 3, 3, ref16=True) == bytes.fromhex("060804 1234 03 03")
    assert ESM_CLASS_UDHI == 0x40


@pytest.mark.parametrize(
    ("ref", "total", "seq", "ref16"),
    [
        (256, 2, 1, False),
        (-1, 2, 1, False),
        (0x10000, 2, 1, True),
        (1, 2, 3, False),
        (1, 2, 0, False),
        (1, 0, 0, False),
        (1, 256, 1, False),
    ],
)
def test_udh_concat_rejects_impossible_values(ref: int, total: int, seq: int, ref16: bool) -> None:
    with pytest.raises(ValueError):
        udh_concat(ref, total, seq, ref16=ref16)


@given(
    ref16=st.booleans(),
    total=st.integers(1, 255),
    data=st.data(),
    payload=st.binary(max_size=140),
)
def test_split_udh_inverts_udh_concat(
    ref16: bool, total: int, data: st.DataObject, payload: bytes
) -> None:
    ref = data.draw(st.integers(0, 0xFFFF if ref16 else 0xFF))
    seq = data.draw(st.integers(1, total))
    assert split_udh(udh_concat(ref, total, seq, ref16=ref16) + payload) == (
        ConcatInfo(ref, total, seq),
        payload,
    )


def test_split_udh_tolerates_garbage() -> None:
    assert split_udh(b"") == (None, b"")
    assert split_udh(b"\x09\x00\x03") == (None, b"\x09\x00\x03")  # header past the end
    assert split_udh(b"\x05\x00\x03\x01\x02\x00hi") == (None, b"hi")  # part 0
    # Another IE (port addressing 0x05) before the concat IE.
    udh = bytes.fromhex("0b 0504 0b84 23f0 0003 07 02 01")
    assert split_udh(udh + b"x") == (ConcatInfo(7, 2, 1), b"x")


@given(st.binary(max_size=300))
def test_split_udh_never_raises(short_message: bytes) -> None:
    concat, payload = split_udh(short_message)
    assert short_message.endswith(payload)
    if concat is not None:
        assert 1 <= concat.seq <= concat.total
