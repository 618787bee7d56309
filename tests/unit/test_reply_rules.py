"""domain/replies.py and send_replies.py: survey choice matching, the reply
validity and the auto-reply decision, the options' validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carrierd.domain.replies import (
    auto_reply_for,
    match_choice,
    reply_deadline,
    reply_rules_of,
    suggestion_validity_s,
)
from carrierd.domain.variables import TemplateError
from carrierd.intake import RequestShapeError
from carrierd.send_replies import parse_reply_options

T0 = datetime(2026, 12, 1, tzinfo=UTC)
CODES = ("A", "B", "AB")


@pytest.mark.parametrize(
    ("text", "postback", "choice"),
    [
        ("A", None, "A"),
        ("a", None, "A"),
        ("Ａ", None, "A"),
        ("ａ", None, "A"),
        ("　ｂ \n", None, "B"),
        ("ab", None, "AB"),
        ("Ａｂ", None, "AB"),
        ("A.", None, None),
        ("はい", None, None),
        ("C", None, None),
        (None, "b", "B"),
        ("土曜", "Ａ", "A"),
        (None, "other", None),
        (None, None, None),
    ],
)
def test_a_reply_matches_a_code_whatever_its_case_and_width(
    text: str | None, postback: str | None, choice: str | None
) -> None:
    assert match_choice(CODES, text, postback) == choice


def test_validity_is_inclusive_and_a_suggestions_own_wins() -> None:
    r = reply_rules_of({"reply_valid_s": 60, "reply_valid_until": "2026-12-01T00:00:30+00:00"})
    assert reply_deadline(r, T0) == T0 + timedelta(seconds=30)
    assert reply_deadline(r, T0, suggestion_validity_s=600) == T0 + timedelta(seconds=600)
    assert reply_deadline(reply_rules_of({}), T0) is None


def test_the_auto_reply_per_choice_then_the_default_within_validity() -> None:
    r = reply_rules_of(
        {
            "choices": [{"code": "a"}, {"code": "B"}],
            "auto_reply": {
                "sms": {"text": "default"},
                "per_choice": {"ａ": {"sms": {"text": "for A"}}},
            },
            "reply_valid_s": 60,
        }
    )

    def decide(choice: str | None, after_s: float) -> tuple[str, str] | None:
        d = auto_reply_for(
            r,
            send_id=7,
            msisdn="+819012345678",
            choice=choice,
            sent_at=T0,
            now=T0 + timedelta(seconds=after_s),
        )
        return None if d is None else (d.client_ref, d.content["sms"]["text"])

    assert decide("A", 60) == ("auto-reply:7:+819012345678:A", "for A")
    assert decide("B", 0) == ("auto-reply:7:+819012345678", "default")
    assert decide(None, 1) == ("auto-reply:7:+819012345678", "default")
    assert decide("A", 60.001) is None
    no_auto = reply_rules_of({"choices": [{"code": "A"}]})
    assert auto_reply_for(no_auto, send_id=1, msisdn="x", choice="A", sent_at=T0, now=T0) is None


def test_a_suggestions_validity_is_found_by_postback() -> None:
    content = {
        "card": {"title": "t", "suggestions": [{"postback": "x", "reply_validity_s": 30}]},
        "chips": [{"postback": "y"}],
    }
    assert suggestion_validity_s(content, "x") == 30
    assert suggestion_validity_s(content, "y") is None
    assert suggestion_validity_s(None, "x") is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"choices": [{"code": "ABC"}]}, "choices[0].code"),
        ({"choices": [{"code": "1"}]}, "choices[0].code"),
        ({"choices": [{"code": "A"}, {"code": "ａ"}]}, "choices[1].code"),
        ({"choices": []}, "choices"),
        ({"reply_valid_s": 0}, "reply_valid_s"),
        ({"reply_valid_until": "2026-12-01T00:00:00"}, "reply_valid_until"),
        ({"auto_reply": {}}, "auto_reply"),
        ({"auto_reply": {"per_choice": {"A": {"sms": {"text": "x"}}}}}, "auto_reply.per_choice"),
        (
            {
                "choices": [{"code": "A"}],
                "auto_reply": {"per_choice": {"C": {"sms": {"text": "x"}}}},
            },
            "auto_reply.per_choice.C",
        ),
        ({"auto_reply": {"sms": {"text": "{{name"}}}, "auto_reply.sms.text"),
        ({"auto_reply": {"mail": {}}}, "auto_reply.mail"),
    ],
)
def test_bad_reply_options_are_refused_naming_the_field(
    spec: dict[str, object], field: str
) -> None:
    with pytest.raises((RequestShapeError, TemplateError)) as caught:
        parse_reply_options(spec)
    assert caught.value.field == field
