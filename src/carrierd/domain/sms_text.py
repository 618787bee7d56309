"""SMS text rules and segmentation (DOMAIN §3).

Pipeline: `normalize_text` (CP932 code points to their JIS twins) ->
charset check (ASCII + JIS X 0208, as ISO-2022-JP carries them) -> length
check (per-route maximum, at most 660 by default, never above 670) -> split
into SMS parts.

Counting is in UTF-16 code units for UCS-2 and in septets for GSM 7-bit,
because that is what fills an SMS. JIS X 0208 text has no surrogate pairs,
so for accepted text one character is one code unit; the splitter still
keeps pairs together so it is safe for any caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from typing import Literal

# Text typed on Windows (and in most web forms fed by it) uses CP932, whose
# Unicode mapping differs from the JIS one for a handful of JIS X 0208 code
# points. ISO-2022-JP only knows the JIS side, so a wave dash typed on
# Windows would be rejected as foreign. Each pair is (CP932 mapping, JIS
# mapping) of one JIS X 0208 character; every target encodes in Python's
# iso2022_jp codec and none is also a source, so normalisation is idempotent
# and one character stays one character (error positions stay valid).
_CP932_TO_JIS: dict[str, str] = {
    "\uff5e": "\u301c",  # 1-33 FULLWIDTH TILDE -> WAVE DASH
    "\u2225": "\u2016",  # 1-34 PARALLEL TO -> DOUBLE VERTICAL LINE
    "\uff0d": "\u2212",  # 1-61 FULLWIDTH HYPHEN-MINUS -> MINUS SIGN
    "\uffe0": "\u00a2",  # 1-81 FULLWIDTH CENT SIGN -> CENT SIGN
    "\uffe1": "\u00a3",  # 1-82 FULLWIDTH POUND SIGN -> POUND SIGN
    "\uffe2": "\u00ac",  # 2-44 FULLWIDTH NOT SIGN -> NOT SIGN
    # 1-29: Apple and some Unix tables map it to EM DASH, CP932 and Python
    # to HORIZONTAL BAR.
    "\u2014": "\u2015",
    # Pasted from web pages and office documents; invisible, so an error
    # naming it would only confuse the sender.
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2011": "\u2010",  # NON-BREAKING HYPHEN -> HYPHEN (1-30)
}
_NORMALIZE_TABLE = str.maketrans(_CP932_TO_JIS)
# Most texts hold none of them: one C-speed search instead of a dict lookup
# per character (translate was a tenth of intake's CPU).
_NEEDS_NORMALIZING = re.compile("[" + re.escape("".join(_CP932_TO_JIS)) + "]")

ABSOLUTE_MAX_CHARS = 670  # 10 concatenated UCS-2 parts of 67
DEFAULT_MAX_CHARS = 660

UCS2_SINGLE_MAX = 70
UCS2_PART_MAX = 67  # 6-byte UDH leaves 134 bytes
GSM7_SINGLE_MAX = 160
GSM7_PART_MAX = 153  # 6-byte UDH leaves 153 septets

_HALF_WIDTH_KANA = range(0xFF61, 0xFFA0)

# GSM 03.38 default alphabet, in septet order (0x00..0x7F). 0x1B is the
# escape to the extension table and is not a character of its own.
_GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_ESCAPE = 0x1B
_GSM7_BASIC_SEPTET: dict[str, int] = {
    char: septet for septet, char in enumerate(_GSM7_BASIC) if septet != _GSM7_ESCAPE
}
# Extension table: sent as ESC + septet, so each costs two septets.
_GSM7_EXTENSION_SEPTET: dict[str, int] = {
    "\x0c": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_GSM7_BY_SEPTET = {septet: char for char, septet in _GSM7_BASIC_SEPTET.items()}
_GSM7_EXTENSION_BY_SEPTET = {septet: char for char, septet in _GSM7_EXTENSION_SEPTET.items()}


class SmsTextError(ValueError):
    """Text that cannot be sent as SMS.

    `reason` is "charset", "too_long" or "empty"; for "charset", `position`
    (1-based, in characters) and `char` name the offending character.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        position: int | None = None,
        char: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.position = position
        self.char = char


@dataclass(frozen=True)
class SmsBody:
    text: str  # normalised
    chars: int
    encoding: Literal["ucs2", "gsm7"]
    parts: tuple[str, ...]
    billable_units: int


# Characters the whole-text fast path of check_charset must not let through:
# controls (other than LF), CR (allowed only before LF), half-width katakana
# (the iso2022_jp codec would accept none of them, but be explicit).
_NEEDS_SCAN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\r\uff61-\uff9f]")


def normalize_text(text: str) -> str:
    """Map CP932 variants to the JIS code point of the same character."""
    if _NEEDS_NORMALIZING.search(text) is None:
        return text
    return text.translate(_NORMALIZE_TABLE)


def check_charset(text: str) -> None:
    """Raise SmsTextError for the first character SMS cannot carry.

    Allowed: ASCII printable, line breaks (LF, CR LF) and whatever Python's
    iso2022_jp codec encodes (ASCII, JIS X 0201 Roman and JIS X 0208).
    Expects normalised text.
    """
    # Intake checks every message: most texts pass, so try the whole text
    # at C speed first and scan character by character only to name a culprit.
    if _NEEDS_SCAN.search(text) is None:
        try:
            text.encode("iso2022_jp")
            return
        except UnicodeEncodeError:
            pass
    for index, char in enumerate(text):
        position = index + 1
        code_point = ord(char)
        if char == "\n":
            continue
        if char == "\r":
            if text[index + 1 : index + 2] == "\n":
                continue
            raise SmsTextError(
                "charset",
                f"carriage return (U+000D) at position {position} is not followed by a line "
                "feed: line breaks must be LF or CR LF",
                position=position,
                char=char,
            )
        if code_point < 0x20 or 0x7F <= code_point < 0xA0:
            raise SmsTextError(
                "charset",
                f"control character U+{code_point:04X} at position {position} cannot be sent",
                position=position,
                char=char,
            )
        if code_point in _HALF_WIDTH_KANA:
            raise SmsTextError(
                "charset",
                f"half-width katakana {char!r} (U+{code_point:04X}) at position {position} is "
                "outside the domestic character set (JIS X 0208): use full-width katakana",
                position=position,
                char=char,
            )
        try:
            char.encode("iso2022_jp")
        except UnicodeEncodeError:
            raise SmsTextError(
                "charset",
                f"character {char!r} (U+{code_point:04X}) at position {position} is outside "
                "the domestic character set (JIS X 0208)",
                position=position,
                char=char,
            ) from None


def billable_units(chars: int) -> int:
    """Billable messages for a UCS-2 text of `chars` characters (§3 table)."""
    if chars < 1:
        raise ValueError(f"a message has at least 1 character, got {chars}")
    if chars <= UCS2_SINGLE_MAX:
        return 1
    return ceil(chars / UCS2_PART_MAX)


def split_ucs2(
    text: str, single_max: int = UCS2_SINGLE_MAX, part_max: int = UCS2_PART_MAX
) -> list[str]:
    """Split into parts measured in UTF-16 code units, never inside a character."""
    if len(text.encode("utf-16-le")) == 2 * len(text):
        # Only BMP characters: one code unit each, so plain slicing is exact.
        if len(text) <= single_max:
            return [text] if text else []
        return [text[i : i + part_max] for i in range(0, len(text), part_max)]
    return _split(text, _utf16_units, single_max, part_max)


def split_gsm7(
    text: str, single_max: int = GSM7_SINGLE_MAX, part_max: int = GSM7_PART_MAX
) -> list[str]:
    """Split into parts measured in septets, never between ESC and its character."""
    return _split(text, gsm7_septets_of, single_max, part_max)


def is_gsm7(text: str) -> bool:
    """True if every character is in the GSM 03.38 default or extension table."""
    return all(c in _GSM7_BASIC_SEPTET or c in _GSM7_EXTENSION_SEPTET for c in text)


def gsm7_septets_of(char: str) -> int:
    if char in _GSM7_BASIC_SEPTET:
        return 1
    if char in _GSM7_EXTENSION_SEPTET:
        return 2
    raise ValueError(f"{char!r} (U+{ord(char):04X}) is not in the GSM 7-bit alphabet")


def encode_ucs2(part: str) -> bytes:
    """UTF-16 big-endian, as data_coding 0x08 expects."""
    return part.encode("utf-16-be")


def decode_ucs2(data: bytes) -> str:
    return data.decode("utf-16-be")


def encode_gsm7(part: str) -> bytes:
    """Unpacked septets, one per byte (the SMPP default-alphabet form)."""
    out = bytearray()
    for char in part:
        septet = _GSM7_BASIC_SEPTET.get(char)
        if septet is not None:
            out.append(septet)
            continue
        septet = _GSM7_EXTENSION_SEPTET.get(char)
        if septet is None:
            raise ValueError(f"{char!r} (U+{ord(char):04X}) is not in the GSM 7-bit alphabet")
        out += bytes((_GSM7_ESCAPE, septet))
    return bytes(out)


def decode_gsm7(data: bytes) -> str:
    """Inverse of `encode_gsm7`; unknown escapes and septets raise ValueError."""
    chars: list[str] = []
    escaped = False
    for septet in data:
        table = _GSM7_EXTENSION_BY_SEPTET if escaped else _GSM7_BY_SEPTET
        if not escaped and septet == _GSM7_ESCAPE:
            escaped = True
            continue
        char = table.get(septet)
        if char is None:
            raise ValueError(f"septet 0x{septet:02X} is not in the GSM 7-bit alphabet")
        chars.append(char)
        escaped = False
    if escaped:
        raise ValueError("GSM 7-bit data ends with a dangling escape")
    return "".join(chars)


def prepare_sms(
    text: str, *, max_chars: int = DEFAULT_MAX_CHARS, allow_gsm7: bool = False
) -> SmsBody:
    """Validate and split a message body, or raise SmsTextError.

    `max_chars` is the route's limit; a configured value above 670 is a
    configuration bug and raises plain ValueError.
    """
    if not 1 <= max_chars <= ABSOLUTE_MAX_CHARS:
        raise ValueError(
            f"max_chars must be between 1 and {ABSOLUTE_MAX_CHARS} (10 SMS parts), got {max_chars}"
        )
    normalised = normalize_text(text)
    # A body of only blanks is almost always a template that failed to fill.
    if not normalised.strip():
        raise SmsTextError("empty", "the message text is empty")
    check_charset(normalised)
    chars = len(normalised)
    if chars > max_chars:
        raise SmsTextError(
            "too_long",
            f"the message has {chars} characters; this route allows at most {max_chars}",
        )
    if allow_gsm7 and is_gsm7(normalised):
        gsm_parts = tuple(split_gsm7(normalised))
        return SmsBody(normalised, chars, "gsm7", gsm_parts, len(gsm_parts))
    ucs2_parts = tuple(split_ucs2(normalised))
    return SmsBody(normalised, chars, "ucs2", ucs2_parts, len(ucs2_parts))


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _split(
    text: str,
    width_of: Callable[[str], int],
    single_max: int,
    part_max: int,
) -> list[str]:
    if part_max < 2 or single_max < part_max:
        # A width-2 unit (surrogate pair, escape pair) must fit in one part.
        raise ValueError(f"bad part sizes single_max={single_max} part_max={part_max}")
    widths = [width_of(char) for char in text]
    if sum(widths) <= single_max:
        return [text] if text else []
    parts: list[str] = []
    start = 0
    used = 0
    for index, width in enumerate(widths):
        if used + width > part_max:
            parts.append(text[start:index])
            start = index
            used = 0
        used += width
    parts.append(text[start:])
    return parts
