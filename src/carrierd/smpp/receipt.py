"""Delivery-receipt text parsing and message-id normalization (pure, never raises).

Receipt text
------------
SMPP 3.4 Appendix B suggests, and most SMSCs send, a short_message like::

    id:0123456789 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531
    stat:DELIVRD err:000 text:Hello

``parse_receipt_text`` reads it tolerantly:

- keys in any order and any case; ``submit date`` may also be ``submit_date`` or
  ``submitdate`` (same for ``done date``); a key counts only at the start of the
  text or after whitespace;
- a key counts only the first time it appears: a later ``id:`` inside ``text:`` is
  part of the text. A value runs to the next counted key;
- dates ``YYMMDDhhmm``, ``YYMMDDhhmmss`` or ``YYYYMMDDhhmmss`` (separators such as
  ``-``, ``:`` and spaces are ignored) become naive datetimes: the caller knows the
  carrier's zone. A date that is not a valid calendar time gives None;
- ``stat`` is upper-cased (DELIVRD, UNDELIV, EXPIRED, ...); ``err`` keeps the raw
  string and ``err_code`` its value: decimal when all digits, hexadecimal with a
  ``0x`` prefix or when it has hex letters, else None;
- bytes are read as UTF-16BE when they look like UCS-2 (some SMSCs encode the
  receipt with the message's data_coding), else UTF-8, else latin-1;
- empty or garbage input gives a ``ReceiptText`` with every field None
  (``is_empty``), never an exception.

Message ids
-----------
The same SMSC message id reaches us twice: in submit_sm_resp, and in the receipt
(receipted_message_id TLV or the ``id:`` text). Some carriers write one in hex and
the other in decimal. ``normalize_message_id(raw, style)`` maps a raw id to the
canonical form used for correlation; ``style`` names the base in which *that raw
id* is written, so a route is configured with two styles, one per source:

=====================================  ==================  ==================
carrier behaviour                      submit_sm_resp id   receipt id
=====================================  ==================  ==================
same opaque string on both sides       ``"as_is"``         ``"as_is"``
hex in submit_sm_resp, decimal receipt ``"hex"``           ``"decimal"``
decimal in submit_sm_resp, hex receipt ``"decimal"``       ``"hex"``
=====================================  ==================  ==================

Canonical form: when the raw id is a number in the declared base (``"hex"`` allows a
``0x`` prefix and either case), the decimal string of its value without leading
zeros ("0" for zero); otherwise, and always for ``"as_is"``, the raw id stripped of
surrounding whitespace and lower-cased (hex ids arrive in either case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final, Literal, TypeAlias

MessageIdStyle: TypeAlias = Literal["as_is", "hex", "decimal"]


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """Fields of an Appendix B receipt text; None where absent or unreadable."""

    message_id: str | None = None
    sub: int | None = None
    dlvrd: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    stat: str | None = None
    err: str | None = None
    text: str | None = None
    err_code: int | None = None

    @property
    def is_empty(self) -> bool:
        """True when nothing receipt-like was found."""
        return all(getattr(self, f.name) is None for f in fields(self))


_KEY_PATTERN: Final = re.compile(
    r"(?<!\S)(id|sub|dlvrd|submit[\s_]*date|done[\s_]*date|stat|err|text)\s*:",
    re.IGNORECASE,
)
_DECIMAL: Final = re.compile(r"[0-9]+")
_HEX: Final = re.compile(r"[0-9a-fA-F]+")
_HEX_LETTER: Final = re.compile(r"[a-fA-F]")
_DATE_SEPARATORS: Final = re.compile(r"[\s\-/:.T]")


def parse_receipt_text(short_message: bytes) -> ReceiptText:
    """Parse a delivery-receipt short_message; see the module docstring for the rules."""
    values = receipt_text_fields(short_message)
    err = values.get("err") or None
    stat = values.get("stat")
    return ReceiptText(
        message_id=values.get("id") or None,
        sub=_decimal_or_none(values.get("sub")),
        dlvrd=_decimal_or_none(values.get("dlvrd")),
        submit_date=_parse_date(values.get("submit date")),
        done_date=_parse_date(values.get("done date")),
        stat=stat.upper() if stat else None,
        err=err,
        text=values.get("text") or None,
        err_code=_parse_err_code(err),
    )


def receipt_text_fields(short_message: bytes) -> dict[str, str]:
    """The raw value of each key of a receipt text (keys in canonical form:
    "id", "sub", "dlvrd", "submit date", "done date", "stat", "err", "text").
    What parse_receipt_text reads further; a caller that needs only the id,
    stat and err (every receipt the daemon receives) skips the dates."""
    text = _bytes_to_text(short_message)
    values: dict[str, str] = {}
    # (key, where the key starts, where its value starts), first occurrence only.
    counted: list[tuple[str, int, int]] = []
    for match in _KEY_PATTERN.finditer(text):
        key = _canonical_key(match.group(1))
        if key in values:
            continue
        values[key] = ""
        counted.append((key, match.start(), match.end()))
    for index, (key, _, value_start) in enumerate(counted):
        value_end = counted[index + 1][1] if index + 1 < len(counted) else len(text)
        values[key] = text[value_start:value_end].strip()
    return values


def normalize_message_id(raw: str, style: MessageIdStyle) -> str:
    """Canonical form of a message id written in ``style``; see the module docstring."""
    cleaned = raw.strip()
    if style == "decimal":
        if _DECIMAL.fullmatch(cleaned):
            return str(int(cleaned))
    elif style == "hex":
        digits = cleaned[2:] if cleaned[:2].lower() == "0x" else cleaned
        if _HEX.fullmatch(digits):
            return str(int(digits, 16))
    return cleaned.lower()


def _bytes_to_text(short_message: bytes) -> str:
    if _looks_like_ucs2(short_message):
        text = short_message.decode("utf-16-be", errors="replace")
    else:
        try:
            text = short_message.decode("utf-8")
        except UnicodeDecodeError:
            text = short_message.decode("latin-1")
    return text.rstrip("\x00")


def _looks_like_ucs2(data: bytes) -> bool:
    # Receipt keys are ASCII, so in UCS-2 most characters have a zero high octet.
    if len(data) < 4 or data[0] != 0:
        return False
    high_octets = data[0::2]
    return high_octets.count(0) * 2 >= len(high_octets)


def _canonical_key(key: str) -> str:
    key = key.lower()
    if key.startswith("submit"):
        return "submit date"
    if key.startswith("done"):
        return "done date"
    return key


def _decimal_or_none(value: str | None) -> int | None:
    if value and _DECIMAL.fullmatch(value):
        return int(value)
    return None


def parse_receipt_date(value: str | None) -> datetime | None:
    """A receipt date as written (``submit date``/``done date`` value), read
    by the rules above; naive, in the SMSC's zone. None when unreadable."""
    return _parse_date(value)


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    digits = _DATE_SEPARATORS.sub("", value)
    if not _DECIMAL.fullmatch(digits):
        return None
    if len(digits) in (10, 12):
        year = 2000 + int(digits[0:2])
        rest = digits[2:]
    elif len(digits) == 14:
        year = int(digits[0:4])
        rest = digits[4:]
    else:
        return None
    try:
        return datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10]) if len(rest) >= 10 else 0,
        )
    except ValueError:
        return None


def _parse_err_code(err: str | None) -> int | None:
    if not err:
        return None
    if _DECIMAL.fullmatch(err):
        return int(err)
    prefixed = err[:2].lower() == "0x"
    digits = err[2:] if prefixed else err
    if _HEX.fullmatch(digits) and (prefixed or _HEX_LETTER.search(digits)):
        return int(digits, 16)
    return None
