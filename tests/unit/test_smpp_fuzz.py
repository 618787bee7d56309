"""Fuzzing the SMPP decoder: whatever a peer sends, the codec returns a PDU, a
MalformedPdu or None (need more bytes), or raises StreamBroken. Nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.smpp.pdu import (
    HEADER_LEN,
    PDU_CLASSES,
    CommandId,
    DeliverSm,
    Framer,
    KnownPdu,
    MalformedPdu,
    NetworkErrorCode,
    Pdu,
    StreamBroken,
    SubmitSm,
    Tlv,
    UnknownPdu,
    decode,
    encode,
)

ALLOWED_EVENTS = (*PDU_CLASSES, UnknownPdu, MalformedPdu)


def check_event(event: object) -> None:
    assert isinstance(event, ALLOWED_EVENTS), event
    if isinstance(event, MalformedPdu):
        assert not event.reason.startswith("decoder bug"), event.reason


def drain(framer: Framer) -> int:
    """Pull events until the framer wants more bytes or breaks; returns the count."""
    count = 0
    try:
        while (event := framer.next_event()) is not None:
            check_event(event)
            count += 1
    except StreamBroken:
        pass
    return count


def decode_checked(frame: bytes) -> None:
    with contextlib.suppress(StreamBroken):
        check_event(decode(frame))


def with_length(command_id: int, body: bytes, sequence_number: int = 1) -> bytes:
    header = (HEADER_LEN + len(body)).to_bytes(4, "big") + command_id.to_bytes(4, "big")
    return header + bytes(4) + sequence_number.to_bytes(4, "big") + body


# Valid frames with rich bodies, to mutate.
SEED_PDUS: list[KnownPdu] = [
    SubmitSm(
        sequence_number=1,
        source_addr="0120123456",
        destination_addr="819012345678",
        esm_class=0x40,
        data_coding=8,
        short_message=b"\x05\x00\x03\x01\x02\x01" + "テスト".encode("utf-16-be"),
        sar_msg_ref_num=1,
        sar_total_segments=2,
        sar_segment_seqnum=1,
        extra_tlvs=(Tlv(0x1401, b"vendor"),),
    ),
    DeliverSm(
        sequence_number=2,
        esm_class=0x04,
        short_message=b"id:1 sub:001 dlvrd:001 stat:DELIVRD err:000",
        receipted_message_id="1",
        message_state=2,
        network_error_code=NetworkErrorCode(3, 0),
    ),
    *(cls(sequence_number=3) for cls in PDU_CLASSES),
]
SEED_FRAMES = [encode(pdu) for pdu in SEED_PDUS]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEED_FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        # Mostly in the body: header damage mostly yields StreamBroken or UnknownPdu.
        body_position = st.integers(min(HEADER_LEN, len(frame)), len(frame))
        position = draw(body_position | body_position | st.integers(0, len(frame)))
        if kind == "flip" and position < len(frame):
            frame[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and position < len(frame):
            frame[position] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif kind == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del frame[position : position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del frame[position:]
    return bytes(frame)


def fix_length(frame: bytes) -> bytes:
    """Make command_length agree with the frame so the body decoder gets exercised."""
    if len(frame) < HEADER_LEN:
        return frame
    return len(frame).to_bytes(4, "big") + frame[4:]


@settings(max_examples=400)
@given(st.binary(max_size=600), st.integers(HEADER_LEN, 1024), st.integers(1, 64))
def test_random_bytes_through_the_framer(stream: bytes, max_pdu_len: int, chunk: int) -> None:
    framer = Framer(max_pdu_len=max_pdu_len)
    for start in range(0, len(stream), chunk):
        framer.feed(stream[start : start + chunk])
        drain(framer)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_random_bytes_through_decode(frame: bytes) -> None:
    decode_checked(frame)
    decode_checked(fix_length(frame))


@settings(max_examples=600)
@given(mutated_frames())
def test_mutated_frames_through_decode(frame: bytes) -> None:
    decode_checked(frame)
    decode_checked(fix_length(frame))


@settings(max_examples=300)
@given(st.lists(mutated_frames().map(fix_length), min_size=1, max_size=5))
def test_mutated_frames_through_the_framer(frames: list[bytes]) -> None:
    framer = Framer()
    framer.feed(b"".join(frames))
    drain(framer)


@settings(max_examples=600)
@given(st.sampled_from(list(CommandId)), st.binary(max_size=200))
def test_random_bodies_for_every_command_id(command_id: CommandId, body: bytes) -> None:
    decode_checked(with_length(command_id, body))


TLV_TAGS = st.sampled_from([0x0204, 0x020C, 0x020E, 0x020F, 0x0424, 0x001E, 0x0427, 0x0423])


@st.composite
def tlv_soup(draw: st.DrawFn) -> bytes:
    """TLV streams mixing typed tags, odd lengths and lying length fields."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        tag = draw(TLV_TAGS | st.integers(0, 0xFFFF))
        value = draw(st.binary(max_size=12))
        declared = draw(st.sampled_from([len(value), len(value) + 1, 0xFFFF, 0]))
        out += tag.to_bytes(2, "big") + declared.to_bytes(2, "big") + value
    out += draw(st.binary(max_size=3))
    return bytes(out)


@settings(max_examples=400)
@given(st.sampled_from([SubmitSm, DeliverSm]), tlv_soup())
def test_tlv_soup_after_a_valid_mandatory_part(cls: Any, tlvs: bytes) -> None:
    mandatory = encode(cls(sequence_number=1))[HEADER_LEN:]
    decode_checked(with_length(cls.command_id, mandatory + tlvs))


@given(st.sampled_from(SEED_PDUS), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_any_status_and_sequence_decode(pdu: Pdu, status: int, sequence_number: int) -> None:
    frame = encode(dataclasses.replace(pdu, command_status=status, sequence_number=sequence_number))
    decoded = decode(frame)
    assert not isinstance(decoded, MalformedPdu)
    assert decoded.command_status == status
    assert decoded.sequence_number == sequence_number
