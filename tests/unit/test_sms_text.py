import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.domain.sms_text import (
    SmsTextError,
    billable_units,
    decode_gsm7,
    decode_ucs2,
    encode_gsm7,
    encode_ucs2,
    gsm7_septets_of,
    normalize_text,
    prepare_sms,
    split_gsm7,
    split_ucs2,
)

# Characters that pass the charset check once normalised: CP932 variants,
# ASCII, kana, kanji, JIS symbols.
SENDABLE_SAMPLE = "～－∥abcXYZ019 !?.,\nあいうえおアイウエオ漢字東京都〜−‖¢£¬―￥＼＠Ωαжー・「」、。"
GSM_SAMPLE = "abcXYZ019 !?.,@$\n^{}\\[~]|€Δ"


@pytest.mark.parametrize(
    ("chars", "units"),
    [
        (1, 1),
        (70, 1),
        (71, 2),
        (134, 2),
        (135, 3),
        (201, 3),
        (202, 4),
        (268, 4),
        (269, 5),
        (335, 5),
        (336, 6),
        (402, 6),
        (403, 7),
        (469, 7),
        (470, 8),
        (536, 8),
        (537, 9),
        (603, 9),
        (604, 10),
        (660, 10),
        (670, 10),
    ],
)
def test_billing_table(chars: int, units: int) -> None:
    assert billable_units(chars) == units


def test_billable_units_needs_a_character() -> None:
    with pytest.raises(ValueError):
        billable_units(0)


def test_every_ucs2_length_splits_into_billable_units_parts() -> None:
    for length in range(1, 661):
        text = "あ" * length
        parts = split_ucs2(text)
        assert len(parts) == billable_units(length), length
        assert "".join(parts) == text
        limit = 70 if len(parts) == 1 else 67
        assert all(1 <= len(part) <= limit for part in parts)


@pytest.mark.parametrize(
    ("variant", "jis"),
    [
        ("\uff5e", "\u301c"),  # ～ -> 〜
        ("\uff0d", "\u2212"),  # － -> −
        ("\u2225", "\u2016"),  # ∥ -> ‖
        ("\uffe0", "\u00a2"),
        ("\uffe1", "\u00a3"),
        ("\uffe2", "\u00ac"),
        ("\u2014", "\u2015"),
    ],
)
def test_cp932_variants_map_to_encodable_jis_code_points(variant: str, jis: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        variant.encode("iso2022_jp")
    assert normalize_text(variant) == jis
    jis.encode("iso2022_jp")
    body = prepare_sms(f"10時{variant}12時")
    assert body.text == f"10時{jis}12時"


def test_normalisation_keeps_positions() -> None:
    text = "Ａ～Ｂ－Ｃ\u00a0D"
    assert len(normalize_text(text)) == len(text)


def test_japanese_text_is_ucs2_single_part() -> None:
    body = prepare_sms("【東京】明日の予約は10時〜です。")
    assert body.encoding == "ucs2"
    assert body.parts == (body.text,)
    assert body.billable_units == 1
    assert body.chars == len(body.text)
    assert encode_ucs2(body.parts[0])[:2] == "【".encode("utf-16-be")


def test_long_text_splits_into_67_character_parts() -> None:
    text = "あ" * 71
    body = prepare_sms(text)
    assert [len(part) for part in body.parts] == [67, 4]
    assert body.billable_units == 2


def test_foreign_character_is_named_with_its_position() -> None:
    with pytest.raises(SmsTextError) as caught:
        prepare_sms("ご予約 café")
    error = caught.value
    assert error.reason == "charset"
    assert error.position == 8
    assert error.char == "é"
    assert error.message == (
        "character 'é' (U+00E9) at position 8 is outside the domestic character set (JIS X 0208)"
    )


@pytest.mark.parametrize(
    ("text", "char", "position"),
    [
        ("①番窓口", "①", 1),  # NEC special (CP932 only)
        ("髙橋様", "髙", 1),  # IBM extension kanji (CP932 only)
        ("안녕", "안", 1),
        ("ok 😀", "😀", 4),
        ("€5", "€", 1),
        ("a\u200bb", "\u200b", 2),
        ("\ufeffhello", "\ufeff", 1),
    ],
)
def test_characters_outside_jis_x_0208_are_rejected(text: str, char: str, position: int) -> None:
    with pytest.raises(SmsTextError) as caught:
        prepare_sms(text)
    assert caught.value.reason == "charset"
    assert caught.value.char == char
    assert caught.value.position == position
    assert f"U+{ord(char):04X}" in caught.value.message
    assert f"position {position}" in caught.value.message


def test_half_width_katakana_is_rejected_by_name() -> None:
    with pytest.raises(SmsTextError) as caught:
        prepare_sms("ｺﾝﾆﾁﾊ")
    assert caught.value.char == "ｺ"
    assert caught.value.position == 1
    assert "half-width katakana" in caught.value.message


def test_line_breaks_are_allowed() -> None:
    assert prepare_sms("一行目\n二行目\r\n三行目").chars == 12


@pytest.mark.parametrize(("text", "position"), [("a\tb", 2), ("a\rb", 2), ("ab\x7f", 3)])
def test_other_control_characters_are_rejected(text: str, position: int) -> None:
    with pytest.raises(SmsTextError) as caught:
        prepare_sms(text)
    assert caught.value.reason == "charset"
    assert caught.value.position == position


@pytest.mark.parametrize("text", ["", " ", "\n\n", "\u3000"])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(SmsTextError) as caught:
        prepare_sms(text)
    assert caught.value.reason == "empty"


def test_length_limits() -> None:
    assert prepare_sms("あ" * 660).billable_units == 10
    with pytest.raises(SmsTextError) as caught:
        prepare_sms("あ" * 661)
    assert caught.value.reason == "too_long"
    assert "661" in caught.value.message and "660" in caught.value.message
    assert prepare_sms("a" * 670, max_chars=670).billable_units == 10
    with pytest.raises(SmsTextError):
        prepare_sms("a" * 71, max_chars=70)


@pytest.mark.parametrize("max_chars", [671, 1000, 0, -1])
def test_route_setting_outside_bounds_is_a_config_error(max_chars: int) -> None:
    with pytest.raises(ValueError) as caught:
        prepare_sms("hello", max_chars=max_chars)
    assert not isinstance(caught.value, SmsTextError)


def test_gsm7_only_when_allowed_and_possible() -> None:
    assert prepare_sms("Your code is 1234").encoding == "ucs2"
    body = prepare_sms("Your code is 1234", allow_gsm7=True)
    assert body.encoding == "gsm7"
    assert encode_gsm7(body.parts[0]) == b"Your code is 1234"
    assert prepare_sms("コード 1234", allow_gsm7=True).encoding == "ucs2"
    assert prepare_sms("back`tick", allow_gsm7=True).encoding == "ucs2"


def test_gsm7_part_sizes() -> None:
    assert len(prepare_sms("a" * 160, allow_gsm7=True).parts) == 1
    body = prepare_sms("a" * 161, allow_gsm7=True)
    assert [len(part) for part in body.parts] == [153, 8]
    assert body.billable_units == 2


def test_gsm7_extension_characters_cost_two_septets_and_stay_whole() -> None:
    assert gsm7_septets_of("€") == 2
    assert len(split_gsm7("{" * 80)) == 1
    parts = split_gsm7("a" + "{" * 80)  # 161 septets
    assert [len(part) for part in parts] == [77, 4]  # 1 + 76*2 = 153 septets, then 4 braces
    assert encode_gsm7("{€}") == bytes([0x1B, 0x28, 0x1B, 0x65, 0x1B, 0x29])


def test_gsm7_encoding_uses_default_alphabet_positions() -> None:
    assert encode_gsm7("@£$¥\nΔ_") == bytes([0x00, 0x01, 0x02, 0x03, 0x0A, 0x10, 0x11])
    with pytest.raises(ValueError):
        encode_gsm7("あ")
    with pytest.raises(ValueError):
        decode_gsm7(b"\x1b")


def test_splitter_never_splits_a_surrogate_pair() -> None:
    text = "a" * 66 + "😀" + "b" * 10  # 78 code units: the emoji would straddle 67
    parts = split_ucs2(text)
    assert parts[0] == "a" * 66
    assert parts[1].startswith("😀")
    assert all(len(part.encode("utf-16-be")) <= 134 for part in parts)
    assert split_ucs2("😀" * 35) == ["😀" * 35]  # exactly 70 code units


jis_text = st.text(alphabet=st.sampled_from(SENDABLE_SAMPLE), min_size=1, max_size=660).filter(
    lambda text: text.strip() != ""
)


@settings(max_examples=150)
@given(jis_text)
def test_parts_rejoin_and_respect_limits(text: str) -> None:
    body = prepare_sms(text)
    assert "".join(body.parts) == body.text == normalize_text(text)
    assert len(body.parts) == body.billable_units == billable_units(body.chars)
    limit = 70 if len(body.parts) == 1 else 67
    for part in body.parts:
        assert 1 <= len(encode_ucs2(part)) // 2 <= limit
        assert decode_ucs2(encode_ucs2(part)) == part


@settings(max_examples=150)
@given(st.text(alphabet=st.sampled_from(GSM_SAMPLE), min_size=1, max_size=660))
def test_gsm7_parts_rejoin_and_respect_limits(text: str) -> None:
    parts = split_gsm7(text)
    assert "".join(parts) == text
    limit = 160 if len(parts) == 1 else 153
    for part in parts:
        encoded = encode_gsm7(part)
        assert len(encoded) <= limit
        assert not encoded.endswith(b"\x1b")  # escape pair never split
        assert decode_gsm7(encoded) == part


@settings(max_examples=300)
@given(st.text())
def test_normalize_text_is_idempotent_and_length_preserving(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert len(once) == len(text)


@settings(max_examples=300)
@given(st.text(max_size=50))
def test_prepare_sms_raises_only_sms_text_errors(text: str) -> None:
    try:
        body = prepare_sms(text)
    except SmsTextError as error:
        assert error.reason in {"charset", "too_long", "empty"}
        if error.reason == "charset":
            assert error.position is not None and error.char is not None
            assert normalize_text(text)[error.position - 1] == error.char
        return
    body.text.encode("iso2022_jp")
