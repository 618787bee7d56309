"""domain/inbound.py: reading MO (concatenation, decoding by data_coding),
keywords and reassembly, with vectors from the specifications rather than
from our own encoder where one exists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.inbound import (
    MoPdu,
    PartOctets,
    assemble,
    candidate_accounts,
    decode_mo,
    keyword_confirmation,
    matched_keyword,
    normalize_keyword,
    owning_account,
    pack_gsm7,
    read_mo,
    reassembly_deadline,
    unpack_gsm7,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def pdu(body: bytes, **fields: object) -> MoPdu:
    base: dict[str, object] = {
        "carrier": "docomo",
        "source_addr": "819012345678",
        "destination_addr": "0120111111",
        "esm_class": 0,
        "data_coding": 8,
        "short_message": body,
        "received_at": T0,
    }
    return MoPdu(**{**base, **fields})  # type: ignore[arg-type]


# -- concatenation ------------------------------------------------------------------------


def test_udh_with_8_bit_reference() -> None:
    # 3GPP 23.040 9.2.3.24.1: UDHL 05, IEI 00, IEDL 03, ref, total, seq.
    segment = read_mo(pdu(bytes.fromhex("050003A70302") + b"\x30\x42", esm_class=0x40))

    assert segment.concat is not None
    assert (segment.concat.reference, segment.concat.total, segment.concat.seq) == (0xA7, 3, 2)
    assert (segment.udh_octets, segment.payload) == (6, b"\x30\x42")
    assert segment.msisdn == "+819012345678"


def test_udh_with_16_bit_reference() -> None:
    # 9.2.3.24.8: UDHL 06, IEI 08, IEDL 04, ref (2 octets), total, seq.
    segment = read_mo(pdu(bytes.fromhex("06080412340201") + b"AB", esm_class=0x40))

    assert segment.concat is not None
    assert (segment.concat.reference, segment.concat.scheme) == (0x1234, "udh16")
    assert segment.udh_octets == 7


def test_sar_tlvs() -> None:
    segment = read_mo(
        pdu(b"\x30\x42", sar_msg_ref_num=513, sar_total_segments=4, sar_segment_seqnum=4)
    )

    assert segment.concat is not None
    assert (segment.concat.reference, segment.concat.seq, segment.concat.scheme) == (513, 4, "sar")


@pytest.mark.parametrize(
    "body",
    [
        bytes.fromhex("FF0003A70302"),  # header length past the message
        bytes.fromhex("050003A70300"),  # part 0
        bytes.fromhex("050003A70304"),  # part 4 of 3
    ],
)
def test_impossible_headers_are_no_concatenation(body: bytes) -> None:
    assert read_mo(pdu(body, esm_class=0x40)).concat is None


def test_a_redelivery_has_the_same_key_and_another_part_another() -> None:
    first = read_mo(pdu(bytes.fromhex("050003A70301") + b"\x30\x42", esm_class=0x40))
    again = read_mo(pdu(bytes.fromhex("050003A70301") + b"\x30\x42", esm_class=0x40))
    other = read_mo(pdu(bytes.fromhex("050003A70302") + b"\x30\x42", esm_class=0x40))

    assert first.mo_key == again.mo_key != other.mo_key


# -- decoding -----------------------------------------------------------------------------


def one(payload: bytes, data_coding: int, udh_octets: int = 0) -> list[PartOctets]:
    return [PartOctets(data_coding, udh_octets, payload)]


def test_gsm7_packed_from_the_specification_example() -> None:
    # The classic 23.038 example: "hellohello" packs to these 9 octets.
    packed = bytes.fromhex("E8329BFD4697D9EC37")

    decoded = decode_mo(one(packed, 0), "gsm7_packed")

    assert (decoded.text, decoded.undecodable) == ("hellohello", False)


def test_gsm7_unpacked_with_the_extension_table() -> None:
    # One septet per octet; 1B 65 is the euro sign, 1B 28 '{'.
    septets = b"Price 5\x1b\x65 \x1b\x28ok\x1b\x29"

    assert decode_mo(one(septets, 0), "gsm7").text == "Price 5€ {ok}"


def test_gsm7_packed_after_a_header_skips_its_fill_bits() -> None:
    septets = bytes(range(0x41, 0x41 + 20))  # 'A'..'T'
    for udh_octets in (6, 7):
        packed = pack_gsm7(septets, udh_octets)
        assert unpack_gsm7(packed, udh_octets) == septets


def test_ucs2_surrogate_pair_split_between_parts_decodes_whole() -> None:
    octets = "予約😀です".encode("utf-16-be")
    parts = [PartOctets(8, 6, octets[:6]), PartOctets(8, 6, octets[6:])]  # inside the pair

    decoded = decode_mo(parts, "gsm7")

    assert (decoded.text, decoded.undecodable) == ("予約😀です", False)


def test_iso_2022_jp_split_inside_a_kanji_run() -> None:
    octets = "配信停止します".encode("iso2022_jp")
    parts = [PartOctets(5, 6, octets[:7]), PartOctets(5, 6, octets[7:])]

    assert decode_mo(parts, "gsm7").text == "配信停止します"


def test_shift_jis_under_the_default_alphabet_split_inside_a_character() -> None:
    octets = "はい、参加します".encode("cp932")
    parts = [PartOctets(0, 6, octets[:5]), PartOctets(0, 6, octets[5:])]

    assert decode_mo(parts, "shift_jis").text == "はい、参加します"


def test_extended_kanji_jis_is_iso_2022_jp_1() -> None:
    # 丂 is in JIS X 0212 only: ESC $ ( D, 0x30 0x21.
    octets = b"\x1b$(D0!\x1b(B" + "丸".encode("iso2022_jp")

    assert decode_mo(one(octets, 0x0D), "gsm7").text == "丂丸"


@pytest.mark.parametrize(
    ("payload", "data_coding", "alphabet", "text"),
    [
        (b"caf\xe9", 0x03, "gsm7", "café"),
        (b"hello", 0x01, "gsm7", "hello"),
        (b"caf\xe9", 0x00, "latin1", "café"),
        (b"ok", 0xF0, "gsm7", "ok"),  # message class coding, 7-bit
    ],
)
def test_other_codings(payload: bytes, data_coding: int, alphabet: str, text: str) -> None:
    decoded = decode_mo(one(payload, data_coding), alphabet)  # type: ignore[arg-type]
    assert (decoded.text, decoded.undecodable, decoded.raw_hex) == (text, False, None)


@pytest.mark.parametrize(
    ("payload", "data_coding", "alphabet"),
    [
        (b"\x80abc", 0x00, "gsm7"),  # not a septet
        (b"\xd8\x00", 0x08, "gsm7"),  # a lone surrogate
        (b"\x82", 0x00, "shift_jis"),  # half a double byte
        (b"\xff\x01", 0xF4, "gsm7"),  # 8-bit data: not text
        (b"\x01\x02", 0x02, "gsm7"),  # binary
    ],
)
def test_undecodable_octets_are_kept_as_hex_and_marked(
    payload: bytes, data_coding: int, alphabet: str
) -> None:
    decoded = decode_mo(one(payload, data_coding), alphabet)  # type: ignore[arg-type]
    assert decoded.undecodable
    assert decoded.raw_hex == payload.hex()


@given(st.binary(max_size=200), st.integers(0, 255), st.sampled_from(["gsm7", "gsm7_packed"]))
def test_decoding_never_raises(payload: bytes, data_coding: int, alphabet: str) -> None:
    decoded = decode_mo(one(payload, data_coding), alphabet)  # type: ignore[arg-type]
    assert decoded.undecodable == (decoded.raw_hex is not None)


# -- reassembly ---------------------------------------------------------------------------


def test_assemble_orders_parts_and_says_what_is_missing() -> None:
    parts = {3: PartOctets(8, 6, b"c"), 1: PartOctets(8, 6, b"a")}

    assembled = assemble(3, parts)

    assert [p.payload for p in assembled.parts] == [b"a", b"c"]
    assert (assembled.complete, assembled.received, assembled.expected) == (False, 2, 3)
    assert assemble(2, {1: parts[1], 2: parts[3]}).complete
    assert reassembly_deadline(T0, 300) == T0 + timedelta(seconds=300)


# -- ownership and keywords ---------------------------------------------------------------


def test_accounts_of_an_address_and_the_owner() -> None:
    addresses = [("acme", ["0120111111", "249200"]), ("globex", ["0120111111"]), ("x", ["1"])]

    assert candidate_accounts("249200", addresses) == ("acme",)
    assert candidate_accounts("0120111111", addresses) == ("acme", "globex")
    assert owning_account(None, ("acme",)) == "acme"
    assert owning_account(None, ("acme", "globex")) is None
    assert owning_account("globex", ("acme", "globex")) == "globex"


@pytest.mark.parametrize(
    "reply", ["STOP", " stop ", "ＳＴＯＰ", "Ｓｔｏｐ\u3000", "配信停止", "停止\n"]
)
def test_keywords_match_case_and_width_insensitively(reply: str) -> None:
    assert matched_keyword([reply], ["停止", "STOP", "配信停止"]) in {"停止", "STOP", "配信停止"}


def test_a_keyword_inside_a_sentence_or_only_in_the_postback() -> None:
    assert matched_keyword(["停止しないでください"], ["停止"]) is None
    assert matched_keyword(["配信を止める", "ｓｔｏｐ"], ["STOP"]) == "STOP"
    assert normalize_keyword("ＡＢＣ") == "abc"


def test_the_confirmation_only_when_newly_listed() -> None:
    assert keyword_confirmation(True, "停止しました") == "停止しました"
    assert keyword_confirmation(False, "停止しました") is None
    assert keyword_confirmation(True, "") is None
