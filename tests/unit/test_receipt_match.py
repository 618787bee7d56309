"""Which part a receipt whose id matches none belongs to (domain/receipt_match.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.clock import JST
from carrierd.domain.receipt_match import (
    Candidate,
    Match,
    ReceiptClues,
    match_receipt,
    match_receipts,
    part_text,
    sent_at_window,
    text_fits,
)
from carrierd.domain.sms_text import split_ucs2

SENT = datetime(2026, 12, 1, 3, 0, 20, tzinfo=UTC)  # 12:00:20 JST
# Appendix B: minutes, in the SMSC's (Japanese) local time.
SUBMIT_MINUTE = SENT.astimezone(JST).replace(second=0, tzinfo=None)


def clues(
    text_start: str | None = "Your code",
    *,
    submit_date: datetime | None = SUBMIT_MINUTE,
    second_look: bool = True,
) -> ReceiptClues:
    return ReceiptClues(
        "docomo", "+819012345678", SENT + timedelta(seconds=3), submit_date, text_start, second_look
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


def test_without_a_text_a_part_of_the_one_fitting_message_is_taken() -> None:
    first, second = Candidate(1, 1, 1, SENT, "abc"), Candidate(1, 1, 2, SENT, "def")
    assert match_receipt(clues(None), [first, second]).part == first
    assert match_receipt(clues("def"), [first, second]).part == second
    other_attempt = Candidate(1, 2, 1, SENT, "abc")
    assert match_receipt(clues(None), [first, other_attempt]).part is None


def ascii_excerpt(text: str) -> str:
    """What an ASCII-only SMSC writes in a receipt's text: field."""
    return text[:20].encode("ascii", errors="replace").decode("ascii")


def test_a_receipt_that_fits_several_parts_waits_for_the_receipts_that_fit_one() -> None:
    """Part 1's receipt shows its number, the others only ????: taking part
    1 for the first receipt of the message would leave part 1's own receipt
    nowhere to go."""
    texts = ("お知らせ 239 " + "あ" * 30, "い" * 40)
    parts = [Candidate(7, 1, n, SENT, t) for n, t in enumerate(texts, start=1)]
    vague = clues(ascii_excerpt(texts[1]), second_look=False)
    specific = clues(ascii_excerpt(texts[0]), second_look=False)
    first_look = match_receipts([(vague, parts), (specific, parts)])
    assert first_look[0] == Match(None, 0)  # waits, and is not counted ambiguous
    assert first_look[1].part == parts[0]
    [second] = match_receipts([(vague._replace(second_look=True), parts[1:])])
    assert second.part == parts[1]


def test_a_short_excerpt_is_the_short_last_part_of_its_message() -> None:
    """Appendix B writes the first 20 characters: 18 question marks are a
    part of 18 characters, not the start of a longer one."""
    texts = ("あ" * 67, "い" * 67, "う" * 18)
    parts = [Candidate(7, 1, n, SENT, t) for n, t in enumerate(texts, start=1)]
    [last] = match_receipts([(clues(ascii_excerpt(texts[2]), second_look=False), parts)])
    assert last.part == parts[2]
    [middle] = match_receipts([(clues(ascii_excerpt(texts[1]), second_look=True), parts[1:])])
    assert middle.part == parts[1]


def test_receipts_of_one_message_take_its_parts_one_each() -> None:
    """A Japanese text reads ???? in an ASCII receipt: nothing tells the
    parts of one message apart, but the message is certain."""
    parts = [Candidate(7, 1, n, SENT, kana * 30) for n, kana in ((1, "あ"), (2, "い"), (3, "う"))]
    unwritable = clues("?" * 20)
    matches = match_receipts([(unwritable, parts), (unwritable, parts)])
    assert [m.part.part_no if m.part else None for m in matches] == [1, 2]
    # The most constrained receipt chooses first.
    matches = match_receipts([(unwritable, parts), (unwritable, parts[:1])])
    assert [m.part.part_no if m.part else None for m in matches] == [2, 1]


def test_more_receipts_than_parts_or_two_messages_match_nothing() -> None:
    parts = [Candidate(7, 1, n, SENT, "?") for n in (1, 2)]
    three = match_receipts([(clues(None), parts)] * 3)
    assert all(m.part is None and m.fitting >= 2 for m in three)
    two_messages = [parts[0], Candidate(8, 1, 1, SENT, "?")]
    [alone] = match_receipts([(clues(None), two_messages)])
    assert alone.part is None and alone.fitting == 2
    # Two receipts for one single part: one of them is someone else's.
    twins = match_receipts([(clues(None), parts[:1])] * 2)
    assert all(m.part is None for m in twins)


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


def test_parts_of_one_message_are_not_guessed_while_an_answer_may_name_them() -> None:
    parts = [Candidate(7, 1, n, SENT, "あ" * 67) for n in (1, 2)]
    waiting = [parts[0], parts[1]._replace(answer_may_come=True)]
    unwritable = clues("?" * 20, second_look=True)
    assert match_receipts([(unwritable, waiting)]) == [Match(None, 0)]
    [guess] = match_receipts([(unwritable, parts)])
    assert guess.part == parts[0]


def test_a_receipt_does_not_take_a_part_whose_answer_may_still_come() -> None:
    """It fits that part alone: most likely it beat its own response, which
    names the part of its id for certain."""
    [part] = [Candidate(7, 1, 1, SENT, "Your code is 4321", answer_may_come=True)]
    assert match_receipts([(clues("Your code is 4321"), [part])]) == [Match(None, 0)]
    [later] = match_receipts([(clues("Your code is 4321"), [part._replace(answer_may_come=False)])])
    assert later.part is not None


def test_a_receipt_that_shows_nothing_leaves_the_part_that_would_show_its_number() -> None:
    """Part 1 starts with a visible number that its own receipt shows; a
    receipt of ???? is one of the other parts' (a restart left all three in
    doubt, and part 1's receipt may come a moment later)."""
    texts = ("お知らせ 239 " + "あ" * 60, "い" * 67, "う" * 67)
    parts = [Candidate(7, 1, n, SENT, t) for n, t in enumerate(texts, start=1)]
    [vague] = match_receipts([(clues("?" * 20, second_look=True), parts)])
    assert vague.part == parts[1]
    specific, vague = match_receipts(
        [
            (clues(ascii_excerpt(texts[0]), second_look=True), parts),
            (clues("?" * 20, second_look=True), parts),
        ]
    )
    assert (specific.part, vague.part) == (parts[0], parts[1])
