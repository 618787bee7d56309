"""Which part a receipt whose id matches none belongs to (domain/receipt_match.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.clock import JST
from carrierd.domain.receipt_match import (
    Candidate,
    ReceiptClues,
    match_receipt,
    part_text,
    sent_at_window,
    text_fits,
)
from carrierd.domain.sms_text import split_ucs2

SENT = datetime(2026, 12, 1, 3, 0, 20, tzinfo=UTC)  # 12:00:20 JST
# Appendix B: minutes, in the SMSC's (Japanese) local time.
SUBMIT_MINUTE = SENT.astimezone(JST).replace(second=0, tzinfo=None)


def clues(text_start: str | None = "Your code", *, submit_date: datetime | None = SUBMIT_MINUTE):
    return ReceiptClues(
        "docomo", "+819012345678", SENT + timedelta(seconds=3), submit_date, text_start
    )


def part(message_id: int, text: str = "Your code is 1234", *, sent_at: datetime = SENT):
    return Candidate(message_id, 1, 1, sent_at, text)


def test_the_one_fitting_part_is_the_receipts() -> None:
    other_text = part(2, "Your parcel arrives")
    long_ago = part(3, sent_at=SENT - timedelta(hours=2))
    match = match_receipt(clues(), [part(1), other_text, long_ago])
    assert match.part == part(1) and match.fitting == 1


def test_two_fitting_parts_are_never_guessed_between() -> None:
    match = match_receipt(clues(), [part(1), part(2)])
    assert match.part is None and match.fitting == 2


def test_without_a_text_two_parts_of_one_message_are_ambiguous() -> None:
    first, second = Candidate(1, 1, 1, SENT, "abc"), Candidate(1, 1, 2, SENT, "def")
    assert match_receipt(clues(None), [first, second]).part is None
    assert match_receipt(clues("def"), [first, second]).part == second


def test_the_submit_date_bounds_when_the_part_was_sent() -> None:
    earliest, latest = sent_at_window(clues())
    minute = SUBMIT_MINUTE.replace(tzinfo=JST)
    assert earliest == minute - timedelta(seconds=600 + 120)
    # The end of the minute and the skew, but never after the receipt came (and its skew).
    assert latest == min(minute + timedelta(seconds=60 + 120), SENT + timedelta(seconds=123))
    assert match_receipt(clues(), [part(1, sent_at=earliest)]).part
    too_early = part(1, sent_at=earliest - timedelta(seconds=1))
    assert match_receipt(clues(), [too_early]).part is None
    received_after_it = part(1, sent_at=latest + timedelta(seconds=1))
    assert match_receipt(clues(), [received_after_it]).part is None
    # Without a submit date, anything before the receipt (and its skew) may be it.
    assert match_receipt(clues(submit_date=None), [part(1, sent_at=SENT - timedelta(hours=5))]).part


def test_question_marks_stand_for_what_the_smsc_could_not_write() -> None:
    assert text_fits("??????????OK", "ご予約ありがとうござOK")
    assert text_fits("??", "ab")
    assert not text_fits("??????????NG", "ご予約ありがとうござOK")
    assert not text_fits("abcdef", "abc")  # longer than the part
    assert text_fits(None, "anything") and text_fits("", "anything")


def test_a_part_text_is_the_text_as_split_at_send() -> None:
    text = "あ" * 70 + "い" * 10
    assert part_text(text, "ucs2", 2, 2) == split_ucs2(text)[1]
    assert part_text(text, "ucs2", 1, 1) == text  # one record: the whole text
    assert part_text(text, "ucs2", 5, 2) == ""


texts = st.text(alphabet="abcあい?", min_size=0, max_size=8)


@given(
    st.lists(st.tuples(texts, st.integers(min_value=-900, max_value=900)), min_size=0, max_size=6),
    texts,
)
def test_a_match_is_the_only_fitting_part_and_a_twin_makes_it_ambiguous(
    parts: list[tuple[str, int]], excerpt: str
) -> None:
    candidates = [
        Candidate(n, 1, 1, SENT + timedelta(seconds=offset_s), text)
        for n, (text, offset_s) in enumerate(parts)
    ]
    receipt = clues(excerpt or None)
    match = match_receipt(receipt, candidates)
    window = sent_at_window(receipt)
    fitting = [
        c
        for c in candidates
        if window[0] <= c.sent_at <= window[1] and text_fits(receipt.text_start, c.text)
    ]
    assert match.fitting == len(fitting)
    assert (match.part is not None) == (len(fitting) == 1)
    if match.part is not None:
        twin = match.part._replace(message_id=10_000)
        assert match_receipt(receipt, [*candidates, twin]).part is None
