"""Which part a receipt belongs to when its SMSC id matches none (DOMAIN §10, §11).

A receipt names its part by the SMSC message id of the part's submit_sm_resp.
When that response was lost (the bind dropped with the submit in flight, the
daemon died, the answer never came), the SMSC has usually taken the part all
the same and sends its receipt; the id then matches no part. The receipt
still says enough to find it:

- the carrier: the SMSC that sent it;
- the recipient: a receipt's source_addr is the handset we sent to;
- the submit time: Appendix B "submit date", to the minute, in the SMSC's
  local time (JST for the Japanese carriers). A part is marked pending
  (`sent_at`) before it leaves and leaves within `MAX_HOLD_S` (queued behind
  a full window or a throttling pause at most that long), so it was marked
  between the submit minute less that hold and the end of the minute, give
  or take `CLOCK_SKEW_S` between our clock and the SMSC's;
- the text: Appendix B "text", the first characters of the part, with `?`
  where the SMSC could not write a character (Japanese text in an ASCII
  receipt). A `?` stands for any character; any other must be equal.

The candidates are the carrier's parts to that recipient whose SMSC id was
never learned: `unknown` ones, and `pending` ones still waiting for their
response. Exactly one fitting candidate is the receipt's part. Two or more
fit: the receipt stays unmatched, never a guess. Pending candidates count
for that too, which is what keeps a receipt that merely beat its own
response from being given to an older unknown part with the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, tzinfo
from typing import NamedTuple

from carrierd.domain.clock import JST
from carrierd.domain.sms_text import split_gsm7, split_ucs2

CLOCK_SKEW_S = 120.0
MAX_HOLD_S = 600.0
SUBMIT_DATE_RESOLUTION_S = 60.0
# Without a submit date, a part sent this long before its receipt is still a
# candidate: the longest a carrier keeps a message (receipt timeout, §9).
MAX_RECEIPT_AGE_S = 72 * 3600.0
UNWRITABLE = "?"


class ReceiptClues(NamedTuple):
    """What an unmatched receipt says about its part."""

    carrier: str
    msisdn: str  # canonical +81 form of the receipt's source_addr
    received_at: datetime
    submit_date: datetime | None  # naive, the SMSC's local time
    text_start: str | None


class Candidate(NamedTuple):
    """A part whose SMSC id was never learned."""

    message_id: int
    attempt: int
    part_no: int
    sent_at: datetime
    text: str  # the text of this part as it was sent


class Match(NamedTuple):
    part: Candidate | None  # the receipt's part: the one candidate that fits
    fitting: int  # how many fit (2 or more: ambiguous, part is None)


def sent_at_window(
    clues: ReceiptClues,
    *,
    zone: tzinfo = JST,
    skew_s: float = CLOCK_SKEW_S,
    max_hold_s: float = MAX_HOLD_S,
    max_age_s: float = MAX_RECEIPT_AGE_S,
) -> tuple[datetime, datetime]:
    """(earliest, latest) `sent_at` of a part the receipt may be for."""
    earliest = clues.received_at - timedelta(seconds=max_age_s)
    latest = clues.received_at + timedelta(seconds=skew_s)
    if clues.submit_date is not None:
        submitted = clues.submit_date.replace(tzinfo=zone)
        earliest = max(earliest, submitted - timedelta(seconds=max_hold_s + skew_s))
        latest = min(latest, submitted + timedelta(seconds=SUBMIT_DATE_RESOLUTION_S + skew_s))
    return earliest, latest


def text_fits(text_start: str | None, part_text: str) -> bool:
    """Whether a receipt's text excerpt can be the start of `part_text`
    (no excerpt: nothing to contradict)."""
    if not text_start:
        return True
    # Receipt values are read stripped: compare from the first visible character.
    sent = part_text.lstrip()
    if len(text_start) > len(sent):
        return False
    return all(wrote in (UNWRITABLE, char) for wrote, char in zip(text_start, sent, strict=False))


def fits(clues: ReceiptClues, part: Candidate, window: tuple[datetime, datetime]) -> bool:
    earliest, latest = window
    return earliest <= part.sent_at <= latest and text_fits(clues.text_start, part.text)


def match_receipt(
    clues: ReceiptClues,
    candidates: Sequence[Candidate],
    *,
    zone: tzinfo = JST,
    skew_s: float = CLOCK_SKEW_S,
    max_hold_s: float = MAX_HOLD_S,
    max_age_s: float = MAX_RECEIPT_AGE_S,
) -> Match:
    """The receipt's part among `candidates` (the carrier's parts to the
    receipt's recipient without an SMSC id); see the module docstring."""
    window = sent_at_window(
        clues, zone=zone, skew_s=skew_s, max_hold_s=max_hold_s, max_age_s=max_age_s
    )
    fitting = {
        (c.message_id, c.attempt, c.part_no): c for c in candidates if fits(clues, c, window)
    }
    if len(fitting) == 1:
        return Match(next(iter(fitting.values())), 1)
    return Match(None, len(fitting))


def part_text(sms_text: str, encoding: str, part_no: int, part_total: int) -> str:
    """The text one part record carried: the whole text for a single record
    (one part, or one message_payload submit), else the part as split at send."""
    if part_total <= 1:
        return sms_text
    parts = split_gsm7(sms_text) if encoding == "gsm7" else split_ucs2(sms_text)
    return parts[part_no - 1] if 0 < part_no <= len(parts) else ""
