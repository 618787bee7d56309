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
  Appendix B's excerpt is the first `RECEIPT_TEXT_CHARS` (20) characters,
  so a shorter one is usually a whole, shorter part: between the parts of
  one message, its length picks the last part even when every character
  reads `?` (only there: SMSCs that write fewer characters exist).

The candidates are the carrier's parts to that recipient whose SMSC id was
never learned: `unknown` ones, and `pending` ones still waiting for their
response. Exactly one fitting candidate is the receipt's part. Fitting
candidates of two messages (or two attempts): the receipt stays unmatched,
never a guess. Pending candidates count for that too, which is what keeps a
receipt that merely beat its own response from being given to an older
unknown part with the same text.

Fitting candidates that are all parts of one attempt name the message for
certain even when nothing says which part: the parts of a message leave
together, and a Japanese text reads `????` in an ASCII receipt. Such a
receipt waits for a second look, so that the receipts of the same message
whose text does tell their part (part 1 often carries a visible number)
take theirs first; on the second look the rest take that attempt's parts in
part order, one part each, as long as they are no more than its parts, the
parts whose start would show in an ASCII receipt last. The receipts of one
recipient are looked at together.

No receipt takes a part that may still hear its submit_sm_resp (pending,
or timed out so recently that a late answer is still awaited): the answer
names the part of its id for certain, the receipt then meets it by id, and
a guess made first could put that id on a second part, or lose the receipt
to a part that learned another id meanwhile.
Which of those parts a receipt lands on changes neither the message's
outcome nor its billing (§11: a unit per delivered part), only which part's
row shows which receipt.
"""

from __future__ import annotations

from collections import defaultdict
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
RECEIPT_TEXT_CHARS = 20


class ReceiptClues(NamedTuple):
    """What an unmatched receipt says about its part."""

    carrier: str
    msisdn: str  # canonical +81 form of the receipt's source_addr
    received_at: datetime
    submit_date: datetime | None  # naive, the SMSC's local time
    text_start: str | None
    # Looked at before and left waiting: it may now share one message's parts.
    second_look: bool = False


class Candidate(NamedTuple):
    """A part whose SMSC id was never learned."""

    message_id: int
    attempt: int
    part_no: int
    sent_at: datetime
    text: str  # the text of this part as it was sent
    # Its submit_sm_resp may still come (pending, or timed out a moment
    # ago): that answer, not a guess, says which receipt is its.
    answer_may_come: bool = False


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


def excerpt_is_whole(text_start: str | None, part_text: str) -> bool:
    """Whether an Appendix B excerpt has the length this part's would have."""
    if not text_start:
        return True
    written = part_text.strip()[:RECEIPT_TEXT_CHARS].rstrip()
    return len(written) == len(text_start)


def shows_in_ascii(part_text: str) -> bool:
    """Whether the excerpt of this part an ASCII-only SMSC writes has a
    character other than `?` and spaces: something that tells the part."""
    excerpt = part_text.strip()[:RECEIPT_TEXT_CHARS]
    return any(char.isascii() and char.isprintable() and char not in " ?" for char in excerpt)


def fits(clues: ReceiptClues, part: Candidate, window: tuple[datetime, datetime]) -> bool:
    earliest, latest = window
    return earliest <= part.sent_at <= latest and text_fits(clues.text_start, part.text)


def match_receipt(clues: ReceiptClues, candidates: Sequence[Candidate]) -> Match:
    """The part of a receipt that comes alone (see `match_receipts`)."""
    return match_receipts([(clues, candidates)])[0]


def match_receipts(
    receipts: Sequence[tuple[ReceiptClues, Sequence[Candidate]]],
    *,
    zone: tzinfo = JST,
    skew_s: float = CLOCK_SKEW_S,
    max_hold_s: float = MAX_HOLD_S,
    max_age_s: float = MAX_RECEIPT_AGE_S,
) -> list[Match]:
    """The part of each receipt of a batch, given each receipt's candidates
    (see the module docstring): a receipt matches when its fitting parts
    all belong to one attempt and that attempt's receipts in the batch can
    each take a part of their own; otherwise it matches nothing, and
    `fitting` > 1 marks it ambiguous."""
    fitting: list[dict[tuple[int, int, int], Candidate]] = []
    for clues, candidates in receipts:
        window = sent_at_window(
            clues, zone=zone, skew_s=skew_s, max_hold_s=max_hold_s, max_age_s=max_age_s
        )
        fitting.append(
            {(c.message_id, c.attempt, c.part_no): c for c in candidates if fits(clues, c, window)}
        )
    matches = [Match(None, len(f)) for f in fitting]
    by_attempt: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, parts in enumerate(fitting):
        attempts = {(message_id, attempt) for message_id, attempt, _ in parts}
        if len(attempts) != 1:
            continue
        if len(parts) > 1:
            # Parts of one message: those the excerpt's length fits, if any.
            text_start = receipts[index][0].text_start
            whole = {k: c for k, c in parts.items() if excerpt_is_whole(text_start, c.text)}
            if whole:
                parts = fitting[index] = whole
        if any(c.answer_may_come for c in parts.values()):
            matches[index] = Match(None, 0)  # not ambiguous: the answer may settle it
            continue
        if len(parts) > 1 and not receipts[index][0].second_look:
            matches[index] = Match(None, 0)  # not ambiguous: wait for the second look
            continue
        by_attempt[attempts.pop()].append(index)
    for indexes in by_attempt.values():
        # The most constrained receipt chooses first, each the lowest part
        # still free; a receipt left without one makes the lot ambiguous
        # (more receipts than parts: one of them is another message's).
        taken: set[tuple[int, int, int]] = set()
        chosen: dict[int, Candidate] = {}
        for index in sorted(indexes, key=lambda i: (len(fitting[i]), receipts[i][0].received_at)):
            # Parts whose start an ASCII receipt would show (a number, a
            # name) last: their own receipt, likely still to come, says so.
            free = sorted(
                (key for key in fitting[index] if key not in taken),
                key=lambda key: (shows_in_ascii(fitting[index][key].text), key),
            )
            if not free:
                break
            taken.add(free[0])
            chosen[index] = fitting[index][free[0]]
        if len(chosen) < len(indexes):
            for index in indexes:
                matches[index] = Match(None, max(2, len(fitting[index])))
            continue
        for index, part in chosen.items():
            matches[index] = Match(part, len(fitting[index]))
    return matches


def part_text(sms_text: str, encoding: str, part_no: int, part_total: int) -> str:
    """The text one part record carried: the whole text for a single record
    (one part, or one message_payload submit), else the part as split at send."""
    if part_total <= 1:
        return sms_text
    parts = split_gsm7(sms_text) if encoding == "gsm7" else split_ucs2(sms_text)
    return parts[part_no - 1] if 0 < part_no <= len(parts) else ""
