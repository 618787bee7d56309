"""Recipient numbers (DOMAIN §2).

Only Japanese mobile numbers can receive our SMS. Every spelling a sender
may use (national, hyphenated, full-width, E.164) is reduced to one
canonical form, `+81` followed by the 10-digit national significant number,
so that opt-out lists, the au gate and duplicate checks compare like with
like.

Classification of an 11-digit national number `0AB-CDEF-GHJK`:

    070 / 080 / 090 / 060, C != 0   mobile
    020, C != 0                     M2M SIM: only where the account allows it
    050                             IP phone: cannot receive SMS
    0800                            toll-free (an 080 prefix, but C == 0)
    other 0A0, C == 0               does not exist in the numbering plan
    anything else                   not a mobile (landline, 0120, 0570, ...)
"""

from __future__ import annotations

import re

# Reason codes are stable: they are stored and shown to API clients.
EMPTY = "empty"
NOT_A_NUMBER = "not_a_number"
BAD_LENGTH = "bad_length"
FOREIGN_NUMBER = "foreign_number"
NOT_MOBILE = "not_mobile"
NONEXISTENT_NUMBER = "nonexistent_number"
IP_PHONE = "ip_phone"
M2M_NOT_ALLOWED = "m2m_not_allowed"

MOBILE_PREFIXES = frozenset({"060", "070", "080", "090"})
M2M_PREFIX = "020"
IP_PHONE_PREFIX = "050"

_CANONICAL = re.compile(r"\+81[1-9][0-9]{9}")

_ASCII_DIGITS = frozenset("0123456789")
# Already plain (the usual case from applications): nothing to strip.
_PLAIN = re.compile(r"\+?[0-9]+")

# Full-width digits and plus come from Japanese input methods; the dash-like
# characters are what people (and spreadsheets) put between digit groups,
# including the katakana prolonged sound mark that IMEs produce for "-".
# Whitespace of any kind (ideographic space too) is dropped separately.
_SEPARATORS = "-.()\uff0d\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff70\uff08\uff09"
_SPELLING_TABLE = str.maketrans(
    {
        **{chr(0xFF10 + digit): str(digit) for digit in range(10)},
        "\uff0b": "+",
        **dict.fromkeys(_SEPARATORS),
    }
)


class NumberError(ValueError):
    """A recipient that carrierd will not send to.

    `reason` is a stable code (one of the module constants); `message` says
    in English what is wrong and why.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def normalize_msisdn(raw: str, *, allow_m2m: bool = False) -> str:
    """Return the canonical E.164 form (`+819012345678`) or raise NumberError.

    Accepted spellings: `09012345678`, `090-1234-5678`, `090 1234 5678`,
    full-width digits and hyphens, `+819012345678`, `+81 90-1234-5678`,
    `+81 (0)90-...` (the trunk 0 kept by mistake) and the SMPP international
    form `819012345678`.
    """
    national = _to_national(raw)
    _check_national(national, raw, allow_m2m=allow_m2m)
    return "+81" + national[1:]


def national_form(e164: str) -> str:
    """`+819012345678` -> `09012345678`."""
    _require_canonical(e164)
    return "0" + e164[3:]


def smpp_international(e164: str) -> str:
    """`+819012345678` -> `819012345678`, the address for TON=1 NPI=1."""
    _require_canonical(e164)
    return e164[1:]


def _require_canonical(e164: str) -> None:
    if not _CANONICAL.fullmatch(e164):
        raise ValueError(f"{e164!r} is not a canonical number (+81 followed by 10 digits)")


def _to_national(raw: str) -> str:
    """Strip the spelling down to a national digit string starting with 0."""
    if not raw.strip():
        raise NumberError(EMPTY, "the recipient number is empty")
    if _PLAIN.fullmatch(raw):
        compact = raw
    else:
        compact = "".join(c for c in raw.translate(_SPELLING_TABLE) if not c.isspace())
    has_plus = compact.startswith("+")
    digits = compact[1:] if has_plus else compact
    if not digits or not set(digits) <= _ASCII_DIGITS:
        raise NumberError(
            NOT_A_NUMBER,
            f"{raw!r} is not a phone number: only digits, an optional leading '+', "
            "spaces and hyphens are allowed",
        )
    if has_plus:
        if not digits.startswith("81"):
            raise NumberError(
                FOREIGN_NUMBER,
                f"{raw!r} is not a Japanese number (+81): carrierd delivers to Japanese "
                "mobiles only",
            )
        subscriber = digits[2:]
        # "+81 (0)90-..." keeps the national trunk 0; a Japanese national
        # significant number never starts with 0, so dropping it is unambiguous.
        if subscriber.startswith("0"):
            subscriber = subscriber[1:]
        return "0" + subscriber
    if digits.startswith("0"):
        return digits
    # 12 digits starting 81 is the international form without '+', as SMSCs
    # report it; no national number is 12 digits, so it cannot be misread.
    if len(digits) == 12 and digits.startswith("81"):
        return "0" + digits[2:]
    raise NumberError(
        BAD_LENGTH,
        f"{raw!r} has {len(digits)} digits and no leading 0: a Japanese mobile number is "
        "11 digits starting with 0 (09012345678) or +81 followed by 10 digits",
    )


def _check_national(national: str, raw: str, *, allow_m2m: bool) -> None:
    if len(national) < 4:
        raise NumberError(
            BAD_LENGTH, f"{raw!r} is too short: a Japanese mobile number has 11 digits"
        )
    prefix = national[:3]
    if prefix == IP_PHONE_PREFIX:
        raise NumberError(
            IP_PHONE, f"{raw!r} is an 050 IP-phone number: IP phones cannot receive SMS"
        )
    if prefix not in MOBILE_PREFIXES and prefix != M2M_PREFIX:
        raise NumberError(
            NOT_MOBILE,
            f"{raw!r} is not a mobile number: only 070, 080, 090, 060 (and 020 M2M where "
            "allowed) numbers can receive SMS",
        )
    if len(national) != 11:
        raise NumberError(
            BAD_LENGTH,
            f"{raw!r} has {len(national)} digits in national form; {prefix} numbers have 11",
        )
    if national[3] == "0":
        if prefix == "080":
            raise NumberError(
                NOT_MOBILE, f"{raw!r} is an 0800 toll-free number, not a mobile number"
            )
        raise NumberError(
            NONEXISTENT_NUMBER,
            f"{raw!r} does not exist: {prefix} numbers continue with a digit from 1 to 9, "
            f"not {prefix}-0",
        )
    if prefix == M2M_PREFIX and not allow_m2m:
        raise NumberError(
            M2M_NOT_ALLOWED,
            f"{raw!r} is an 020 M2M SIM number and this account is not allowed to send to M2M",
        )
