"""Per-recipient variables (domain/variables.py) and the follow-up rule
(domain/follow_up.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.follow_up import decide_follow_up
from carrierd.domain.states import FINAL_STATES, State
from carrierd.domain.variables import (
    MissingVariable,
    TemplateError,
    compile_content,
    parse_template,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_placeholders_are_filled_and_escapes_kept() -> None:
    template = parse_template("{{name}}様 \\{{x}} {{ pt }}点", "sms.text")
    assert template.render({"name": "山田", "pt": "30"}, "sms.text") == "山田様 {{x}} 30点"


def test_a_value_is_never_read_for_placeholders() -> None:
    template = parse_template("{{a}}", "sms.text")
    assert template.render({"a": "{{b}}"}, "sms.text") == "{{b}}"


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_or_empty_variable_names_itself(value: str | None) -> None:
    template = parse_template("{{name}}様", "rcs.card.title")
    values = {} if value is None else {"name": value}
    with pytest.raises(MissingVariable) as caught:
        template.render(values, "rcs.card.title")
    assert (caught.value.name, caught.value.field) == ("name", "rcs.card.title")


@pytest.mark.parametrize("text", ["{{name", "a {{ }} b", "{{a}}{{"])
def test_a_placeholder_that_does_not_close_is_an_error(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(text, "sms.text")


def test_card_titles_and_descriptions_take_variables_and_the_template_is_not_changed() -> None:
    rcs = {
        "carousel": {
            "cards": [
                {"title": "{{a}}", "description": "x"},
                {"title": "t", "description": "{{b}}", "media": {"url": "{{c}}"}},
            ]
        }
    }
    content = compile_content({"text": "{{a}}"}, rcs)
    item = content.render({"a": "1", "b": "2"})
    assert item["rcs"]["carousel"]["cards"][0]["title"] == "1"
    assert item["rcs"]["carousel"]["cards"][1]["description"] == "2"
    # Only titles and descriptions: a media URL is sent as written.
    assert item["rcs"]["carousel"]["cards"][1]["media"]["url"] == "{{c}}"
    assert item["sms"]["text"] == "1"
    assert rcs["carousel"]["cards"][0]["title"] == "{{a}}"
    assert content.variables == {"a", "b"}


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=40))
def test_text_without_braces_is_itself(text: str) -> None:
    assert parse_template(text, "f").render({}, "f") == text


def test_delivered_releases_the_follow_up_after_its_delay() -> None:
    move = decide_follow_up(2, 1, State.DELIVERED, 600, 3600, NOW)
    assert move is not None
    assert (move.src, move.dst) == (State.SCHEDULED, State.SCHEDULED)
    assert move.not_before == NOW + timedelta(seconds=600)
    assert move.expires_at == NOW + timedelta(seconds=4200)
    now_move = decide_follow_up(2, 1, State.DELIVERED, 0, 3600, NOW)
    assert now_move is not None and now_move.dst is State.QUEUED


@pytest.mark.parametrize("state", sorted(FINAL_STATES - {State.DELIVERED, State.UNKNOWN}))
def test_any_other_end_skips_the_follow_up(state: State) -> None:
    move = decide_follow_up(2, 1, state, 0, 3600, NOW)
    assert move is not None and move.dst is State.SKIPPED
    assert move.reason is not None and move.reason.code == "parent_not_delivered"


@pytest.mark.parametrize("state", [State.QUEUED, State.SENDING, State.RCS_SENT, State.UNKNOWN])
def test_nothing_while_the_first_is_not_final(state: State) -> None:
    assert decide_follow_up(2, 1, state, 0, 3600, NOW) is None


def test_recipient_gates_reach_each_message_through_intake() -> None:
    from carrierd import sends

    options = {"carriers": ["au"], "skip_opted_out": True, "reassigned_check": {"base_date": "x"}}
    assert sends.message_options(options) == options
