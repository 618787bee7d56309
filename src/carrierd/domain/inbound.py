"""Replies: the rules of what recipients send us (pure; time passed in).

engine/inbound.py is the one owner that stores SMS MO and +Message replies;
every decision it takes is a function here:

- `read_mo`: a deliver_sm's MO as a segment: its concatenation (a UDH with
  IEI 0x00, 8-bit reference, or 0x08, 16-bit reference; else the SAR TLVs
  sar_msg_ref_num / sar_total_segments / sar_segment_seqnum), the octets of
  its user data header, and the key that tells a repeated delivery.
- `decode_mo`: the text of one message from its parts' octets, by
  data_coding (SMPP 3.4 §5.2.19). Parts are joined as octets (as septets for
  packed GSM 7-bit) before decoding, so a character split between two parts
  (a UTF-16 surrogate pair, a Shift_JIS double byte, an ISO-2022-JP escape
  state) decodes whole. Undecodable octets are never lost: the text is the
  best effort, marked, and the octets are kept as hex.

  - 0x00, SMSC default: per carrier `mo_default_alphabet`, since SMPP
    leaves it to an agreement with the SMSC: `gsm7` (one septet per octet,
    SMPP's usual form; the default), `gsm7_packed`, `shift_jis` (read as
    CP932: Japanese SMSCs that pass handset text on without UCS-2 use it),
    `latin1`;
  - 0x01 IA5: ASCII; 0x03: Latin-1;
  - 0x05 JIS (X 0208) and 0x0A ISO-2022-JP: ISO-2022-JP (ESC $ B / ESC ( B
    switch between JIS X 0208 and ASCII, ESC ( I half-width kana);
  - 0x0D Extended Kanji JIS (X 0212): ISO-2022-JP-1;
  - 0x08 UCS2: UTF-16BE (surrogate pairs allowed);
  - 0xF0-0xFF message class: GSM 7-bit as 0x00 when bit 2 is clear, else
    8-bit data;
  - anything else (binary 0x02/0x04, KS C 5601, pictograms): not text, raw.

- `answer_window_start`, `candidate_accounts`: which account a reply belongs
  to and which of its messages it answers (the SQL takes these bounds).
- `matched_keyword`: an opt-out keyword, compared after NFKC, trimming and
  case folding (ＳＴＯＰ = stop = " STOP ").
- `reassembly_deadline`, `assemble`: when an incomplete message is given up
  on, and what of it is delivered.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.sms_text import decode_gsm7

ESM_CLASS_UDHI = 0x40
IEI_CONCAT_8BIT = 0x00
IEI_CONCAT_16BIT = 0x08

DC_SMSC_DEFAULT = 0x00
DC_IA5 = 0x01
DC_LATIN_1 = 0x03
DC_JIS = 0x05
DC_UCS2 = 0x08
DC_ISO2022JP_MUSIC = 0x0A
DC_EXTENDED_KANJI_JIS = 0x0D

DefaultAlphabet = Literal["gsm7", "gsm7_packed", "shift_jis", "latin1"]
ConcatScheme = Literal["udh8", "udh16", "sar"]
InboundKind = Literal["text", "suggestion_reply", "suggestion_action"]


@dataclass(frozen=True)
class MoPdu:
    """A mobile-originated deliver_sm / data_sm as the SMS channel hands it
    over: the fields that carry the reply, unread."""

    carrier: str
    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes  # or message_payload when that TLV was used
    received_at: datetime
    sar_msg_ref_num: int | None = None
    sar_total_segments: int | None = None
    sar_segment_seqnum: int | None = None


@dataclass(frozen=True)
class Concat:
    reference: int
    total: int
    seq: int
    scheme: ConcatScheme


@dataclass(frozen=True)
class MoSegment:
    """One deliver_sm's part of a reply."""

    carrier: str
    msisdn: str  # canonical +81 when it parses, else as the SMSC wrote it
    to_address: str
    data_coding: int
    udh_octets: int  # user data header octets before `payload` (0: none)
    payload: bytes
    concat: Concat | None  # None: a whole message in one PDU
    received_at: datetime
    # Same bytes, same addresses: the same delivery (inbound_sms_seen).
    mo_key: bytes


@dataclass(frozen=True)
class DecodedText:
    text: str
    undecodable: bool
    raw_hex: str | None  # the octets as sent, when they did not decode


@dataclass(frozen=True)
class PartOctets:
    """What decoding needs of one part."""

    data_coding: int
    udh_octets: int
    payload: bytes


def canonical_sender(address: str) -> str:
    """The sender in canonical +81 form when it is a number we know how to
    read (national or international, with or without '+')."""
    text = address.strip()
    candidates = [text]
    if text.isdigit() and text.startswith("81"):
        candidates.append("+" + text)
    for candidate in candidates:
        try:
            return normalize_msisdn(candidate, allow_m2m=True)
        except NumberError:
            continue
    return text


def read_mo(pdu: MoPdu) -> MoSegment:
    """The segment a deliver_sm carries. A UDH whose length points past the
    message is not a header: the octets are kept whole as text."""
    body = pdu.short_message
    concat: Concat | None = None
    udh_octets = 0
    if pdu.esm_class & ESM_CLASS_UDHI and body and 1 + body[0] <= len(body):
        udh_octets = 1 + body[0]
        concat = _udh_concat(body[1:udh_octets])
    payload = body[udh_octets:]
    if concat is None and pdu.sar_msg_ref_num is not None:
        total, seq = pdu.sar_total_segments, pdu.sar_segment_seqnum
        if total is not None and seq is not None and 1 <= seq <= total:
            concat = Concat(pdu.sar_msg_ref_num, total, seq, "sar")
    if concat is not None and concat.total == 1:
        concat = None  # one part of one: a whole message
    msisdn = canonical_sender(pdu.source_addr)
    return MoSegment(
        carrier=pdu.carrier,
        msisdn=msisdn,
        to_address=pdu.destination_addr,
        data_coding=pdu.data_coding,
        udh_octets=udh_octets,
        payload=payload,
        concat=concat,
        received_at=pdu.received_at,
        mo_key=mo_key(pdu, msisdn),
    )


def mo_key(pdu: MoPdu, msisdn: str) -> bytes:
    """SHA-256 of everything that makes a deliver_sm this MO: a redelivery
    has the same, whatever bind or daemon it comes to."""
    digest = hashlib.sha256()
    for field in (pdu.carrier, msisdn, pdu.destination_addr):
        digest.update(field.encode("utf-8") + b"\0")
    sar = (pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum)
    digest.update(f"{pdu.esm_class}:{pdu.data_coding}:{sar}\0".encode("ascii"))
    digest.update(pdu.short_message)
    return digest.digest()


def _udh_concat(header: bytes) -> Concat | None:
    concat: Concat | None = None
    pos = 0
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        data = header[pos + 2 : pos + 2 + length]
        if len(data) < length:
            break
        found: Concat | None = None
        if iei == IEI_CONCAT_8BIT and length == 3:
            found = Concat(data[0], data[1], data[2], "udh8")
        elif iei == IEI_CONCAT_16BIT and length == 4:
            found = Concat((data[0] << 8) | data[1], data[2], data[3], "udh16")
        # A part number of 0 or past the total is no concatenation we can
        # join (3GPP 23.040: ignore the IE).
        if found is not None and 1 <= found.seq <= found.total:
            concat = found
        pos += 2 + length
    return concat


# ---------------------------------------------------------------------------
# Decoding


def decode_mo(parts: Sequence[PartOctets], default_alphabet: DefaultAlphabet) -> DecodedText:
    """The text of one message from its parts in order (pure, never raises).
    The first part's data_coding is the message's."""
    if not parts:
        return DecodedText("", False, None)
    coding = parts[0].data_coding
    octets = b"".join(p.payload for p in parts)
    charset = _charset(coding, default_alphabet)
    if charset == "gsm7_packed":
        septets = b"".join(unpack_gsm7(p.payload, p.udh_octets) for p in parts)
        return _gsm7(septets, octets)
    if charset == "gsm7":
        return _gsm7(octets, octets)
    if charset is None:
        return DecodedText("", True, octets.hex())
    try:
        return DecodedText(octets.decode(charset), False, None)
    except UnicodeDecodeError:
        return DecodedText(octets.decode(charset, errors="replace"), True, octets.hex())


def _charset(coding: int, default_alphabet: DefaultAlphabet) -> str | None:
    if coding & 0xF0 == 0xF0:
        # GSM message class coding: bit 2 set means 8-bit data.
        if coding & 0x04:
            return None
        coding = DC_SMSC_DEFAULT
    if coding == DC_SMSC_DEFAULT:
        return {
            "gsm7": "gsm7",
            "gsm7_packed": "gsm7_packed",
            "shift_jis": "cp932",
            "latin1": "latin-1",
        }[default_alphabet]
    return {
        DC_IA5: "ascii",
        DC_LATIN_1: "latin-1",
        DC_JIS: "iso2022_jp_ext",
        DC_ISO2022JP_MUSIC: "iso2022_jp_ext",
        DC_EXTENDED_KANJI_JIS: "iso2022_jp_1",
        DC_UCS2: "utf-16-be",
    }.get(coding)


def _gsm7(septets: bytes, octets: bytes) -> DecodedText:
    try:
        return DecodedText(decode_gsm7(septets), False, None)
    except ValueError:
        pass
    chars: list[str] = []
    escaped = False
    for septet in septets:
        if not escaped and septet == 0x1B:
            escaped = True
            continue
        try:
            chars.append(decode_gsm7(bytes((0x1B, septet)) if escaped else bytes((septet,))))
        except ValueError:
            chars.append("\ufffd")
        escaped = False
    return DecodedText("".join(chars), True, octets.hex())


def unpack_gsm7(payload: bytes, udh_octets: int = 0) -> bytes:
    """Septets of packed GSM 7-bit user data (3GPP 23.038 §6.1.2.1), one per
    octet. After a UDH of `udh_octets`, fill bits align the first septet to
    a septet boundary of the whole user data. When the bits left over are a
    whole septet of zero, that is padding (the sender had 7 spare bits), not
    '@': an '@' at the very end of such a part is the one thing lost."""
    fill_bits = (7 - (udh_octets * 8) % 7) % 7 if udh_octets else 0
    total_bits = len(payload) * 8 - fill_bits
    if total_bits <= 0:
        return b""
    value = int.from_bytes(payload, "little") >> fill_bits
    count = total_bits // 7
    septets = bytes((value >> (7 * i)) & 0x7F for i in range(count))
    if total_bits % 7 == 0 and septets and septets[-1] == 0:
        septets = septets[:-1]
    return septets


def pack_gsm7(septets: bytes, udh_octets: int = 0) -> bytes:
    """Inverse of `unpack_gsm7` (the simulator and tests send packed MO)."""
    fill_bits = (7 - (udh_octets * 8) % 7) % 7 if udh_octets else 0
    value = 0
    for i, septet in enumerate(septets):
        value |= (septet & 0x7F) << (7 * i)
    value <<= fill_bits
    bits = len(septets) * 7 + fill_bits
    return value.to_bytes((bits + 7) // 8, "little")


# ---------------------------------------------------------------------------
# Reassembly


@dataclass(frozen=True)
class Assembled:
    parts: tuple[PartOctets, ...]  # in part order, the missing left out
    complete: bool
    received: int
    expected: int


def reassembly_deadline(first_at: datetime, timeout_s: float) -> datetime:
    return first_at + timedelta(seconds=timeout_s)


def assemble(total: int, parts: Mapping[int, PartOctets]) -> Assembled:
    """A concatenated message from the parts that came (by part number)."""
    present = tuple(parts[seq] for seq in sorted(parts) if 1 <= seq <= total)
    return Assembled(present, len(present) == total, len(present), total)


# ---------------------------------------------------------------------------
# Ownership, answers, keywords


def candidate_accounts(
    to_address: str, addresses: Iterable[tuple[str, Iterable[str]]]
) -> tuple[str, ...]:
    """The accounts an SMS to `to_address` may be for: those with it among
    their inbound addresses or senders (`addresses`: account id and its
    addresses). Several share it on a shared route: the one whose message
    the reply answers owns it."""
    return tuple(sorted(account for account, theirs in addresses if to_address in set(theirs)))


def answer_window_start(now: datetime, window_s: float) -> datetime:
    """A reply answers a message sent at or after this time."""
    return now - timedelta(seconds=window_s)


def owning_account(answered_account: str | None, candidates: Sequence[str]) -> str | None:
    """The account of the answered message; with none, the one candidate
    when there is exactly one (the address or bot says whose it is)."""
    if answered_account is not None:
        return answered_account
    return candidates[0] if len(candidates) == 1 else None


def normalize_keyword(text: str) -> str:
    """Width-, case- and space-insensitive form (ＳＴＯＰ, Stop, " stop ")."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def matched_keyword(candidates: Iterable[str | None], keywords: Iterable[str]) -> str | None:
    """The configured keyword one of `candidates` (a reply's text, a tap's
    postback) is, as configured; None when none is."""
    wanted = {normalize_keyword(k): k for k in keywords}
    for candidate in candidates:
        if candidate is None:
            continue
        keyword = wanted.get(normalize_keyword(candidate))
        if keyword is not None:
            return keyword
    return None


def keyword_confirmation(newly_listed: bool, reply_text: str) -> str | None:
    """The confirmation to send after a keyword: only when the number came
    on the list by it (a repeated keyword while listed is not answered
    again), and only when the account has one."""
    return reply_text if newly_listed and reply_text else None


def inbound_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored reply as GET /v1/inbound and the inbound push show it."""
    received_at: datetime = row["received_at"]
    return {
        "id": str(row["id"]),
        "channel": row["channel"],
        "kind": row["kind"],
        "from": row["msisdn"],
        "to": row["to_address"],
        "carrier": row["carrier"],
        "text": row["text"],
        "postback": row["postback"],
        "received_at": received_at.isoformat(),
        "answers_message_id": None if row["in_reply_to"] is None else str(row["in_reply_to"]),
        "send_id": None if row["send_id"] is None else str(row["send_id"]),
        "incomplete": row["incomplete"],
        "parts_expected": row["parts_expected"],
        "parts_received": row["parts_received"],
        "data_coding": row["data_coding"],
        "text_undecodable": row["text_undecodable"],
        "raw_hex": row["raw_hex"],
        "keyword": row["keyword"],
    }
