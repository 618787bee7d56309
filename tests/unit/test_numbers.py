import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carrierd.domain.numbers import (
    BAD_LENGTH,
    EMPTY,
    FOREIGN_NUMBER,
    IP_PHONE,
    M2M_NOT_ALLOWED,
    NONEXISTENT_NUMBER,
    NOT_A_NUMBER,
    NOT_MOBILE,
    NumberError,
    national_form,
    normalize_msisdn,
    smpp_international,
)

ALL_REASONS = {
    EMPTY,
    NOT_A_NUMBER,
    BAD_LENGTH,
    FOREIGN_NUMBER,
    NOT_MOBILE,
    NONEXISTENT_NUMBER,
    IP_PHONE,
    M2M_NOT_ALLOWED,
}
CANONICAL = re.compile(r"\+81[1-9][0-9]{9}")
FULL_WIDTH_DIGITS = str.maketrans("0123456789-+", "０１２３４５６７８９－＋")


@pytest.mark.parametrize(
    "raw",
    [
        "09012345678",
        "090-1234-5678",
        "090 1234 5678",
        " 090-1234-5678 ",
        "０９０－１２３４－５６７８",
        "０９０ー１２３４ー５６７８",
        "090\u30001234\u30005678",
        "+819012345678",
        "+81 90-1234-5678",
        "+81 (0)90-1234-5678",
        "＋８１９０１２３４５６７８",
        "819012345678",
    ],
)
def test_spellings_of_one_mobile(raw: str) -> None:
    assert normalize_msisdn(raw) == "+819012345678"


@pytest.mark.parametrize(
    "raw",
    ["07011112222", "08099998888", "09098765432", "06012345678", "060-9999-0000"],
)
def test_mobile_prefixes(raw: str) -> None:
    assert CANONICAL.fullmatch(normalize_msisdn(raw))


def test_m2m_only_when_allowed() -> None:
    with pytest.raises(NumberError) as caught:
        normalize_msisdn("020-1234-5678")
    assert caught.value.reason == M2M_NOT_ALLOWED
    assert "M2M" in caught.value.message
    assert normalize_msisdn("020-1234-5678", allow_m2m=True) == "+812012345678"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", EMPTY),
        ("   ", EMPTY),
        ("050-1234-5678", IP_PHONE),
        ("+81 50 1234 5678", IP_PHONE),
        ("090-0123-4567", NONEXISTENT_NUMBER),
        ("070-0123-4567", NONEXISTENT_NUMBER),
        ("060-0123-4567", NONEXISTENT_NUMBER),
        ("020-0123-4567", NONEXISTENT_NUMBER),
        ("0800-123-4567", NOT_MOBILE),
        ("03-1234-5678", NOT_MOBILE),
        ("0120-123-456", NOT_MOBILE),
        ("0570-123-456", NOT_MOBILE),
        ("06-1234-5678", NOT_MOBILE),
        ("0990-123-456", NOT_MOBILE),
        ("090-1234-567", BAD_LENGTH),
        ("090-1234-56789", BAD_LENGTH),
        ("9012345678", BAD_LENGTH),
        ("+81", BAD_LENGTH),
        ("0", BAD_LENGTH),
        ("090-1234-567a", NOT_A_NUMBER),
        ("tel:09012345678", NOT_A_NUMBER),
        ("+", NOT_A_NUMBER),
        ("090+12345678", NOT_A_NUMBER),
        ("٠٩٠١٢٣٤٥٦٧٨", NOT_A_NUMBER),  # Arabic-Indic digits are digits, but not ours
        ("①②③", NOT_A_NUMBER),
        ("+1 415 555 0100", FOREIGN_NUMBER),
        ("+82 10 1234 5678", FOREIGN_NUMBER),
    ],
)
def test_rejections(raw: str, reason: str) -> None:
    with pytest.raises(NumberError) as caught:
        normalize_msisdn(raw)
    assert caught.value.reason == reason
    assert caught.value.message
    assert str(caught.value) == caught.value.message


def test_ip_phone_message_says_why() -> None:
    with pytest.raises(NumberError) as caught:
        normalize_msisdn("05012345678")
    assert "cannot receive SMS" in caught.value.message


def test_number_error_is_a_value_error() -> None:
    assert issubclass(NumberError, ValueError)


def test_forms() -> None:
    assert national_form("+819012345678") == "09012345678"
    assert smpp_international("+819012345678") == "819012345678"
    with pytest.raises(ValueError):
        national_form("09012345678")
    with pytest.raises(ValueError):
        smpp_international("+8190123456")


# 070/080/090/060 + non-zero digit + seven digits, as the national significant number.
national_significant = st.builds(
    lambda prefix, first, rest: prefix + first + rest,
    st.sampled_from(["70", "80", "90", "60"]),
    st.sampled_from("123456789"),
    st.text(alphabet="0123456789", min_size=7, max_size=7),
)


def spellings(nsn: str) -> list[str]:
    national = "0" + nsn
    hyphenated = f"{national[:3]}-{national[3:7]}-{national[7:]}"
    return [
        national,
        hyphenated,
        hyphenated.replace("-", " "),
        hyphenated.translate(FULL_WIDTH_DIGITS),
        national.translate(FULL_WIDTH_DIGITS),
        "+81" + nsn,
        f"+81 {nsn[:2]}-{nsn[2:6]}-{nsn[6:]}",
        f"+81 (0){nsn[:2]}-{nsn[2:6]}-{nsn[6:]}",
        ("+81" + nsn).translate(FULL_WIDTH_DIGITS),
        "81" + nsn,
    ]


@settings(max_examples=200)
@given(national_significant)
def test_every_spelling_gives_one_canonical_form(nsn: str) -> None:
    canonical = {normalize_msisdn(raw) for raw in spellings(nsn)}
    assert canonical == {"+81" + nsn}
    assert national_form("+81" + nsn) == "0" + nsn
    assert smpp_international("+81" + nsn) == "81" + nsn


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=20),
        st.text(alphabet="0123456789+- ０１２３－", max_size=16),
        national_significant.map(lambda nsn: "0" + nsn),
    ),
    st.booleans(),
)
def test_normalisation_is_idempotent_and_total(raw: str, allow_m2m: bool) -> None:
    try:
        canonical = normalize_msisdn(raw, allow_m2m=allow_m2m)
    except NumberError as error:
        assert error.reason in ALL_REASONS
        assert error.message
        return
    assert CANONICAL.fullmatch(canonical)
    assert normalize_msisdn(canonical, allow_m2m=allow_m2m) == canonical
    assert normalize_msisdn(national_form(canonical), allow_m2m=allow_m2m) == canonical
