"""A send's reply options, validated (DOMAIN §14; rules in domain/replies.py):

    "choices": [{"code": "A", "label": "参加"}, {"code": "B", "label": "不参加"}],
    "auto_reply": {"sms": {"text": "..."}, "rcs": {...},
                   "per_choice": {"A": {"sms": {"text": "..."}}, ...}},
    "reply_valid_s": 86400,
    "reply_valid_until": "2026-12-31T23:59:59+09:00"

A code is one or two Latin letters, written in any case or width (stored
as written, compared as domain/replies.py `normalized_answer`). An
auto-reply content is checked as a message item of POST /v1/messages
(`check_auto_reply`, with the account: 660 characters, +Message limits);
it may use the recipient's `{{variables}}`: then each recipient's own
auto-replies are substituted and checked at registration, and kept with
their message (send_auto_replies), since the variables are not kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from carrierd.config import AccountConfig
from carrierd.domain.replies import (
    CHOICE_CODE,
    MAX_CHOICE_LABEL,
    MAX_CHOICES,
    ReplyRules,
    normalized_answer,
    reply_rules_of,
)
from carrierd.domain.variables import ContentTemplate, compile_content
from carrierd.intake import ItemRejected, RequestShapeError, check_shape, validate_message

REPLY_FIELDS = ("choices", "auto_reply", "reply_valid_s", "reply_valid_until")
AUTO_REPLY_FIELDS = frozenset({"sms", "rcs", "per_choice"})
MAX_REPLY_VALID_S = 90 * 86_400
# A number that passes intake's checks, to validate content before any
# recipient is known.
_PROBE_NUMBER = "+819012345678"


def parse_reply_options(body: Mapping[str, Any]) -> ReplyRules:
    """Structural checks of a send's reply options; raises RequestShapeError."""
    codes: list[str] = []
    raw_choices = body.get("choices")
    if raw_choices is not None:
        if not isinstance(raw_choices, list) or not 1 <= len(raw_choices) <= MAX_CHOICES:
            raise RequestShapeError("choices", f"expected an array of 1 to {MAX_CHOICES} choices")
        for i, choice in enumerate(raw_choices):
            where = f"choices[{i}]"
            if not isinstance(choice, dict) or not set(choice) <= {"code", "label"}:
                raise RequestShapeError(where, 'expected {"code": "A", "label": "..."}')
            code = choice.get("code")
            if not isinstance(code, str) or not CHOICE_CODE.fullmatch(normalized_answer(code)):
                raise RequestShapeError(f"{where}.code", "expected one or two letters A-Z")
            if normalized_answer(code) in codes:
                raise RequestShapeError(f"{where}.code", "the same code is given twice")
            codes.append(normalized_answer(code))
            label = choice.get("label", "")
            if not isinstance(label, str) or len(label) > MAX_CHOICE_LABEL:
                raise RequestShapeError(
                    f"{where}.label", f"expected a string of at most {MAX_CHOICE_LABEL} characters"
                )
    valid_s = body.get("reply_valid_s")
    if valid_s is not None and (
        isinstance(valid_s, bool)
        or not isinstance(valid_s, int)
        or not 1 <= valid_s <= MAX_REPLY_VALID_S
    ):
        raise RequestShapeError(
            "reply_valid_s", f"expected whole seconds, 1 to {MAX_REPLY_VALID_S}"
        )
    until = body.get("reply_valid_until")
    if until is not None:
        try:
            parsed = datetime.fromisoformat(until) if isinstance(until, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise RequestShapeError(
                "reply_valid_until", "expected an ISO 8601 time with its offset"
            )
    auto = body.get("auto_reply")
    if auto is not None:
        if not isinstance(auto, dict):
            raise RequestShapeError("auto_reply", "expected an object")
        for key in auto:
            if key not in AUTO_REPLY_FIELDS:
                raise RequestShapeError(f"auto_reply.{key}", "unknown field")
        per_choice = auto.get("per_choice")
        if per_choice is not None:
            if not codes:
                raise RequestShapeError(
                    "auto_reply.per_choice", "needs the send's `choices` to name its codes"
                )
            if not isinstance(per_choice, dict) or not per_choice:
                raise RequestShapeError("auto_reply.per_choice", "expected an object code: content")
            for code, content in per_choice.items():
                if normalized_answer(code) not in codes:
                    raise RequestShapeError(
                        f"auto_reply.per_choice.{code}", "not a code of the send's choices"
                    )
                _check_content(content, f"auto_reply.per_choice.{code}.")
        if "sms" in auto or "rcs" in auto:
            _check_content(auto, "auto_reply.")
        elif per_choice is None:
            raise RequestShapeError("auto_reply", "expected sms, rcs or per_choice content")
    return reply_rules_of(body)


def _check_content(content: object, prefix: str) -> None:
    if not isinstance(content, dict):
        raise RequestShapeError(prefix.rstrip("."), "expected an object with sms and/or rcs")
    item = {k: content[k] for k in ("sms", "rcs") if k in content}
    unknown = set(content) - {"sms", "rcs", *({"per_choice"} if prefix == "auto_reply." else ())}
    if unknown:
        raise RequestShapeError(prefix + sorted(unknown)[0], "unknown field")
    if not item:
        raise RequestShapeError(prefix.rstrip("."), "expected sms and/or rcs content")
    try:
        check_shape({"messages": [{"to": _PROBE_NUMBER, **item}]}, max_items=1)
    except RequestShapeError as exc:
        raise RequestShapeError(
            prefix + exc.field.removeprefix("messages[0]").lstrip("."), exc.reason
        ) from None
    compile_content(item.get("sms"), item.get("rcs"), prefix=prefix)


def auto_reply_templates(rules: ReplyRules) -> dict[str, ContentTemplate]:
    """The auto-reply contents with their placeholders parsed, by key (""
    for the default content, else the choice code)."""
    auto = rules.auto_reply
    if auto is None:
        return {}
    contents = {"": auto.default, **auto.per_choice}
    return {
        key: compile_content(content.get("sms"), content.get("rcs"), prefix=_prefix(key))
        for key, content in contents.items()
        if content is not None
    }


def _prefix(key: str) -> str:
    return "auto_reply." if key == "" else f"auto_reply.per_choice.{key}."


def recipient_auto_replies(
    templates: Mapping[str, ContentTemplate],
    values: Mapping[str, str],
    account: AccountConfig,
    now: datetime,
    expiry_s: float,
) -> dict[str, dict[str, Any]] | None:
    """A recipient's own auto-reply contents (variables substituted, each
    checked as a message), by key; None when no content has variables (the
    send's contents are used as they are). Raises MissingVariable, or
    ItemRejected with the field renamed under `auto_reply`."""
    if not any(t.variables for t in templates.values()):
        return None
    rendered: dict[str, dict[str, Any]] = {}
    for key, template in templates.items():
        content = template.render(values)
        _validate(content, _prefix(key), account, now, expiry_s)
        rendered[key] = content
    return rendered


def _validate(
    content: Mapping[str, Any], prefix: str, account: AccountConfig, now: datetime, expiry_s: float
) -> None:
    for channel in ("sms", "rcs"):
        if channel not in content:
            continue
        item = {"to": _PROBE_NUMBER, "channel": channel, channel: content[channel]}
        try:
            validate_message(item, account, now, expiry_s=expiry_s)
        except ItemRejected as exc:
            raise ItemRejected(prefix + exc.field, exc.reason) from None


def check_auto_reply(
    rules: ReplyRules, account: AccountConfig, now: datetime, expiry_s: float
) -> None:
    """Each auto-reply content without variables validated as a message of
    the account would be (SMS text limits, +Message content rules); raises
    RequestShapeError naming the field. One with variables is checked per
    recipient, substituted (`recipient_auto_replies`)."""
    for key, template in auto_reply_templates(rules).items():
        if template.variables:
            continue
        try:
            _validate(template.render({}), _prefix(key), account, now, expiry_s)
        except ItemRejected as exc:
            raise RequestShapeError(exc.field, exc.reason) from None
