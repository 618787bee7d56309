"""Sends (案件, DOMAIN §14): one content to many recipients, validated.

A send is what a Japanese A2P user registers in a portal: a content (the
same fields as a message of POST /v1/messages: channel, SMS text, +Message
content, the SMS fallback text) with per-recipient variables
(domain/variables.py), options every message of the send takes (send_at,
carriers, callbacks, skip_opted_out, reassigned_check), an optional
follow-up (連続配信), and its recipients, streamed by the HTTP layer.

Each recipient becomes a message item validated by intake.py exactly as an
item of POST /v1/messages would be, after its variables are substituted:
limits (660 characters, a card title's 200) hold for the text the
recipient gets. A recipient that fails is rejected on its own (row, field,
reason); the others are registered.

Pure: the HTTP layer passes the decoded spec, the account and the time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carrierd.config import AccountConfig
from carrierd.domain.replies import ReplyRules
from carrierd.domain.variables import ContentTemplate, MissingVariable, compile_content
from carrierd.intake import (
    ITEM_FIELDS,
    ItemRejected,
    LinkMinting,
    RequestShapeError,
    ScheduleLimits,
    check_shape,
    validate_message,
)
from carrierd.send_replies import (
    REPLY_FIELDS,
    auto_reply_templates,
    parse_reply_options,
    recipient_auto_replies,
)

# DOMAIN §14 / KMC: at most this many recipients in one send's request.
MAX_RECIPIENTS = 100_000
# KMC §3.4.7: a subscriber group larger than this is refused for sending.
MAX_GROUP_RECIPIENTS = 250_000
MAX_FOLLOW_UP_DELAY_S = 30 * 86_400

# The options every message of a send takes, as the item fields of
# POST /v1/messages they become.
_OPTION_FIELDS = ("send_at", "carrier", "carriers", "callback_url", "callback_every_change")
# Recipient gates that other parts of carrierd add to message items
# (skip_opted_out: bool; reassigned_check: {"base_date": "YYYY-MM-DD"}). A
# send accepts them and hands them to each message's item, and this is the
# one place that does: they reach a message as soon as intake.ITEM_FIELDS
# knows them (until then intake would not read them).
PASS_THROUGH_FIELDS = ("skip_opted_out", "reassigned_check")
SEND_FIELDS = frozenset(
    {
        "client_ref",
        "channel",
        "sms",
        "rcs",
        *_OPTION_FIELDS,
        *PASS_THROUGH_FIELDS,
        "follow_up",
        "recipients",
        "group_id",
        # Survey choices and the auto-reply (send_replies.py).
        *REPLY_FIELDS,
    }
)
FOLLOW_UP_FIELDS = frozenset({"channel", "sms", "rcs", "delay_s"})
_BASE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_CLIENT_REF_LEN = 128


@dataclass(frozen=True)
class RowRejection:
    row: int
    field: str
    reason: str


@dataclass(frozen=True)
class Recipient:
    """One recipient as read: its ordinal in the send (0-based, what a
    resumed registration skips by), the row a client sees (JSON index, CSV
    record number), the number as written and its variables."""

    ordinal: int
    row: int
    to: str
    variables: Mapping[str, str]
    # Found while reading it (a malformed row): rejected as it is.
    problem: RowRejection | None = None


@dataclass(frozen=True)
class FollowUp:
    channel: str
    content: ContentTemplate
    delay_s: int


@dataclass(frozen=True)
class SendSpec:
    """A validated send, recipients aside."""

    client_ref: str | None
    channel: str
    content: ContentTemplate
    options: Mapping[str, Any]
    follow_up: FollowUp | None
    group_id: int | None
    # The spec as posted (recipients aside), stored with the send.
    document: Mapping[str, Any]
    request_sha256: bytes
    replies: ReplyRules = field(default_factory=ReplyRules)
    # The auto-reply contents, parsed (send_replies.auto_reply_templates).
    auto_replies: Mapping[str, ContentTemplate] = field(default_factory=dict)

    @property
    def variables(self) -> frozenset[str]:
        names = set(self.content.variables)
        if self.follow_up is not None:
            names |= self.follow_up.content.variables
        for template in self.auto_replies.values():
            names |= template.variables
        return frozenset(names)


def _fail(field: str, reason: str) -> RequestShapeError:
    return RequestShapeError(field, reason)


def _check_item_shape(item: dict[str, Any], prefix: str) -> None:
    """check_shape's checks of one message item, its path renamed."""
    try:
        check_shape({"messages": [item]}, max_items=1)
    except RequestShapeError as exc:
        field = exc.field.removeprefix("messages[0]").lstrip(".")
        raise _fail(prefix + field, exc.reason) from None


def parse_send_spec(body: object) -> SendSpec:
    """The structural checks of a send; raises RequestShapeError (400,
    nothing stored) or TemplateError (a placeholder that does not close)."""
    if not isinstance(body, dict):
        raise _fail("body", "expected a JSON object")
    for key in body:
        if key not in SEND_FIELDS:
            raise _fail(key, "unknown field")
    client_ref = body.get("client_ref")
    if client_ref is not None and (
        not isinstance(client_ref, str) or not 1 <= len(client_ref) <= MAX_CLIENT_REF_LEN
    ):
        raise _fail("client_ref", f"must be a string of 1 to {MAX_CLIENT_REF_LEN} characters")
    channel = body.get("channel") or "sms"
    item = {k: body[k] for k in ("channel", "sms", "rcs", *_OPTION_FIELDS) if k in body}
    _check_item_shape(item, "")
    content = compile_content(body.get("sms"), body.get("rcs"))
    options = {k: body[k] for k in _OPTION_FIELDS if body.get(k) is not None}
    if "skip_opted_out" in body and not isinstance(body["skip_opted_out"], bool):
        raise _fail("skip_opted_out", "expected a boolean")
    if "reassigned_check" in body and body["reassigned_check"] is not None:
        check = body["reassigned_check"]
        if not isinstance(check, dict) or set(check) != {"base_date"}:
            raise _fail("reassigned_check", 'expected {"base_date": "YYYY-MM-DD"}')
        if not isinstance(check["base_date"], str) or not _BASE_DATE.match(check["base_date"]):
            raise _fail("reassigned_check.base_date", "expected a date YYYY-MM-DD")
    for key in PASS_THROUGH_FIELDS:
        if body.get(key) is not None:
            options[key] = body[key]

    follow_up = None
    if body.get("follow_up") is not None:
        raw = body["follow_up"]
        if not isinstance(raw, dict):
            raise _fail("follow_up", "expected an object")
        for key in raw:
            if key not in FOLLOW_UP_FIELDS:
                raise _fail(f"follow_up.{key}", "unknown field")
        delay = raw.get("delay_s", 0)
        if isinstance(delay, bool) or not isinstance(delay, int):
            raise _fail("follow_up.delay_s", "expected an integer number of seconds")
        if not 0 <= delay <= MAX_FOLLOW_UP_DELAY_S:
            raise _fail("follow_up.delay_s", f"must be 0 to {MAX_FOLLOW_UP_DELAY_S}")
        follow_item = {k: raw[k] for k in ("channel", "sms", "rcs") if k in raw}
        _check_item_shape(follow_item, "follow_up.")
        follow_up = FollowUp(
            raw.get("channel") or channel,
            compile_content(raw.get("sms"), raw.get("rcs"), prefix="follow_up."),
            delay,
        )

    group_id = None
    if body.get("group_id") is not None:
        text = body["group_id"]
        if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 18:
            raise _fail("group_id", "expected a group id (a string of digits)")
        group_id = int(text)
        if "recipients" in body:
            raise _fail("group_id", "a send takes recipients or a group_id, not both")
    replies = parse_reply_options(body)
    document = {k: v for k, v in body.items() if k != "recipients"}
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return SendSpec(
        client_ref=client_ref,
        channel=channel,
        content=content,
        options=options,
        follow_up=follow_up,
        group_id=group_id,
        document=document,
        request_sha256=hashlib.sha256(canonical.encode("utf-8")).digest(),
        replies=replies,
        auto_replies=auto_reply_templates(replies),
    )


@dataclass(frozen=True)
class RecipientRows:
    """What one recipient registers: its message row, and its follow-up's;
    its own auto-reply contents when they use variables."""

    message: dict[str, Any]
    follow_up: dict[str, Any] | None
    auto_replies: dict[str, dict[str, Any]] | None = None


def recipient_rows(
    spec: SendSpec,
    recipient: Recipient,
    account: AccountConfig,
    now: datetime,
    *,
    expiry_s: float,
    schedule: ScheduleLimits,
    reassign_enabled: bool = False,
    minting: LinkMinting | None = None,
) -> RecipientRows | RowRejection:
    """The rows of one recipient, or why it is rejected (naming the field:
    `to`, `variables.<name>` for a variable it lacks, or the content field
    whose substituted text breaks a rule)."""
    if recipient.problem is not None:
        return recipient.problem
    try:
        item = {
            "to": recipient.to,
            "channel": spec.channel,
            **spec.content.render(recipient.variables),
            **message_options(spec.options),
        }
        message, _ = validate_message(
            item,
            account,
            now,
            expiry_s=expiry_s,
            schedule=schedule,
            reassign_enabled=reassign_enabled,
            minting=minting,
        )
        follow_row = None
        if spec.follow_up is not None:
            follow_item = {
                "to": recipient.to,
                "channel": spec.follow_up.channel,
                **spec.follow_up.content.render(recipient.variables),
                **message_options(
                    {k: v for k, v in spec.options.items() if k not in ("send_at", "carrier")}
                ),
            }
            try:
                follow_row, _ = validate_message(
                    follow_item,
                    account,
                    now,
                    expiry_s=expiry_s,
                    schedule=schedule,
                    reassign_enabled=reassign_enabled,
                    minting=minting,
                )
            except ItemRejected as exc:
                return RowRejection(recipient.row, f"follow_up.{exc.field}", exc.reason)
        auto_replies = recipient_auto_replies(
            spec.auto_replies, recipient.variables, account, now, expiry_s
        )
    except MissingVariable as exc:
        return RowRejection(
            recipient.row, f"variables.{exc.name}", f"missing, and used by {exc.field}"
        )
    except ItemRejected as exc:
        return RowRejection(recipient.row, exc.field, exc.reason)
    message["send_row"] = recipient.ordinal
    if follow_row is not None:
        follow_row["send_row"] = recipient.ordinal
    return RecipientRows(message, follow_row, auto_replies)


def message_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The send's options as a message item's fields; a pass-through field
    only once intake reads it (see PASS_THROUGH_FIELDS)."""
    return {
        key: value
        for key, value in options.items()
        if key not in PASS_THROUGH_FIELDS or key in ITEM_FIELDS
    }


def variables_of(raw: object, row: int) -> Mapping[str, str] | RowRejection:
    """A JSON recipient's `variables`: strings, or numbers written as text."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return RowRejection(row, "variables", "expected an object of name: value")
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            values[name] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = str(value)
        else:
            return RowRejection(row, f"variables.{name}", "expected a string or a number")
    return values
