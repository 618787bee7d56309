"""Intake validation: a JSON batch from an upstream app to rows to store.

Pure: the HTTP handler passes the decoded body, the account and the time.
Two kinds of error, on purpose:
- the request's *shape* is wrong (unknown field, wrong type, too many items):
  the whole request is refused with the field named, and nothing is written;
- an item's *content* breaks a carrier rule (a 050 number, a character
  outside JIS X 0208, a text too long): that item is rejected with the field
  and the reason, and the valid items of the same batch are stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from carrierd.config import CARRIERS, RCS_CARRIERS, AccountConfig, LinksConfig
from carrierd.domain.gates import optout_list_read_at
from carrierd.domain.links import (
    CodeCharPool,
    LinkedSms,
    LinkMarkupError,
    LinkStyle,
    MintedLinks,
    RandomSource,
    Template,
    mint_links,
    parse_template,
    prepare_linked_sms,
    render,
)
from carrierd.domain.netpolicy import IPNetwork, callback_url_problem
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.rcs_content import RcsContentError, content_to_json, validate_rcs
from carrierd.domain.reasons import Reason
from carrierd.domain.reassign import base_date_problem
from carrierd.domain.sms_text import SmsTextError, prepare_sms
from carrierd.domain.states import State
from carrierd.domain.storable import unstorable

CHANNELS = ("sms", "rcs", "rcs_then_sms")
ITEM_FIELDS = frozenset(
    {
        "to",
        "channel",
        "sms",
        "rcs",
        "client_ref",
        "send_at",
        "carrier",
        "carriers",
        "callback_url",
        "callback_every_change",
        "skip_opted_out",
        "reassigned_check",
    }
)
REASSIGNED_CHECK_FIELDS = frozenset({"base_date"})
MAX_CLIENT_REF_LEN = 128
MAX_CALLBACK_URL_LEN = 2048
# Long enough for any ISO 8601 time with fractions and an offset.
MAX_SEND_AT_LEN = 40


@dataclass(frozen=True)
class ScheduleLimits:
    """How far from `now` a send_at may be (config http.send_at_*)."""

    max_ahead: timedelta = timedelta(days=60)
    past_skew: timedelta = timedelta(minutes=5)


class RequestShapeError(ValueError):
    """The request as a whole is malformed; answered with 400 and nothing stored."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class Rejection:
    index: int
    field: str
    reason: str
    # "invalid_field", or "idempotency_conflict" for a client_ref that
    # another item of the same request uses for other content.
    code: str = "invalid_field"


# What "the same message" means for idempotency: these columns of the
# validated row, each as intake normalized it (the number in E.164, the text
# as it will be sent, +Message content in its canonical JSON, the carrier
# list sorted, send_at as an instant). Spelling a number nationally or in
# E.164, or reordering JSON keys, is the same content; anything that would
# make a different message is not.
CONTENT_COLUMNS: tuple[str, ...] = (
    "channel",
    "msisdn",
    "sms_text",
    "rcs_content",
    "carrier_named",
    "carriers_allowed",
    "callback_url",
    "callback_every_change",
    "send_at",
)


def request_sha256(row: dict[str, Any]) -> bytes:
    """The content hash of a validated intake row (CONTENT_COLUMNS). A body
    with link marks is hashed as the account wrote it (TEMPLATES_KEY): its
    links are minted afresh per request, and a retry is the same content."""
    send_at = row["send_at"]
    templates = row.get(TEMPLATES_KEY, {})
    content = {column: templates.get(column, row[column]) for column in CONTENT_COLUMNS}
    # One instant has many ISO spellings (offsets, fractions): use its
    # microseconds since the epoch.
    content["send_at"] = None if send_at is None else round(send_at.timestamp() * 1_000_000)
    # Skipping opted-out numbers makes another message; hashed only when
    # asked for, so the hashes stored before the field existed still match.
    if row.get("skip_opted_out"):
        content["skip_opted_out"] = True
    # Only when asked for: the hashes of messages without the check (all
    # those stored before it existed) stay what they were.
    if row.get("reassign_base_date") is not None:
        content["reassign_base_date"] = row["reassign_base_date"].isoformat()
    return hashlib.sha256(canonical_json(content).encode("utf-8")).digest()


_encode_json_str = json.encoder.encode_basestring
_encode_json_value = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":")
).encode


_SPELLED_KEYS = {
    key: _encode_json_str(key) for key in (*CONTENT_COLUMNS, "skip_opted_out", "reassign_base_date")
}


def canonical_json(content: dict[str, Any]) -> str:
    """json.dumps(content, sort_keys=True, ensure_ascii=False,
    separators=(",", ":")), the spelling every stored request_sha256 was
    made from, byte for byte (a property test holds the two together).
    Spelled out because json.dumps builds an encoder per call, which cost
    more than the hash: intake hashes every message of every batch."""
    fields = []
    for key in sorted(content):
        value = content[key]
        if value is None:
            spelled = "null"
        elif value is True:
            spelled = "true"
        elif value is False:
            spelled = "false"
        elif type(value) is str:
            spelled = _encode_json_str(value)
        else:
            spelled = _encode_json_value(value)
        fields.append(f"{_SPELLED_KEYS.get(key) or _encode_json_str(key)}:{spelled}")
    return "{" + ",".join(fields) + "}"


# Row keys beside the columns: the bodies as written, when they held link
# marks (for request_sha256), and the links minted for the row (stored with
# the message, store/db.py insert_messages).
TEMPLATES_KEY = "templates"
LINKS_KEY = "links"


@dataclass(frozen=True)
class LinkMinting:
    """What intake needs to replace link marks (config [links])."""

    style: LinkStyle
    optout_valid_days: float
    # The CSPRNG, or a pool of it; a test may pass its own.
    random: RandomSource = secrets.token_bytes

    @classmethod
    def from_config(cls, links: LinksConfig) -> LinkMinting | None:
        """Per request: its codes come from a pool of its own."""
        if not links.enabled:
            return None
        return cls(
            LinkStyle(links.domain, links.show_scheme),
            links.optout_valid_days,
            CodeCharPool(secrets.token_bytes),
        )


@dataclass(frozen=True)
class IntakeBatch:
    rows: list[dict[str, Any]]
    row_indexes: list[int]  # request index of each row
    parts: list[int]  # billable SMS parts of each row (1 for +Message only)
    rejected: list[Rejection]


def _expect(value: object, kind: type | tuple[type, ...], field: str, what: str) -> None:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RequestShapeError(field, f"expected {what}, got a boolean")
    if not isinstance(value, kind):
        raise RequestShapeError(field, f"expected {what}, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def check_shape(body: object, *, max_items: int) -> list[dict[str, Any]]:
    """Structural checks of the whole request; raises RequestShapeError."""
    _expect(body, dict, "body", "a JSON object")
    assert isinstance(body, dict)
    unknown = set(body) - {"messages"}
    if unknown:
        raise RequestShapeError(sorted(unknown)[0], "unknown field")
    if "messages" not in body:
        raise RequestShapeError("messages", "required")
    items = body["messages"]
    _expect(items, list, "messages", "an array")
    if not items:
        raise RequestShapeError("messages", "must hold at least one item")
    if len(items) > max_items:
        raise RequestShapeError(
            "messages", f"at most {max_items} items per request, got {len(items)}"
        )
    for i, item in enumerate(items):
        path = f"messages[{i}]"
        _expect(item, dict, path, "an object")
        for key in item:
            if key not in ITEM_FIELDS:
                raise RequestShapeError(f"{path}.{key}", "unknown field")
        for key in ("to", "channel", "client_ref", "send_at", "carrier", "callback_url"):
            if key in item and item[key] is not None:
                _expect(item[key], str, f"{path}.{key}", "a string")
        for key in ("callback_every_change", "skip_opted_out"):
            if key in item:
                _expect(item[key], bool, f"{path}.{key}", "a boolean")
        if "carriers" in item and item["carriers"] is not None:
            _expect(item["carriers"], list, f"{path}.carriers", "an array of carrier names")
            for j, name in enumerate(item["carriers"]):
                _expect(name, str, f"{path}.carriers[{j}]", "a string")
        if "sms" in item and item["sms"] is not None:
            sms = item["sms"]
            _expect(sms, dict, f"{path}.sms", "an object")
            for key in sms:
                if key != "text":
                    raise RequestShapeError(f"{path}.sms.{key}", "unknown field")
            if "text" in sms:
                _expect(sms["text"], str, f"{path}.sms.text", "a string")
        if "rcs" in item and item["rcs"] is not None:
            _expect(item["rcs"], dict, f"{path}.rcs", "an object")
        if item.get("reassigned_check") is not None:
            check = item["reassigned_check"]
            _expect(check, dict, f"{path}.reassigned_check", "an object")
            for key in check:
                if key not in REASSIGNED_CHECK_FIELDS:
                    raise RequestShapeError(f"{path}.reassigned_check.{key}", "unknown field")
            if "base_date" in check:
                _expect(check["base_date"], str, f"{path}.reassigned_check.base_date", "a string")
    return list(items)


def parse_send_at(text: str) -> datetime:
    # fromisoformat takes any character as the date/time separator and
    # ignores some trailing ones; a time is plain printable ASCII.
    if len(text) > MAX_SEND_AT_LEN or not (text.isascii() and text.isprintable()):
        raise ValueError(f"expected at most {MAX_SEND_AT_LEN} printable ASCII characters")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs a UTC offset, e.g. 2026-12-01T09:00:00+09:00")
    return value


def schedule_problem(send_at: datetime, now: datetime, limits: ScheduleLimits) -> str | None:
    """Why a send at `send_at` cannot be accepted at `now`, or None.

    A time in the past within the clocks' skew means "now"; further back it
    is a mistake (or year 1), and far ahead it is one too (or year 9999,
    which no expiry can be added to).
    """
    try:
        ahead = send_at - now
    except OverflowError:
        return "out of range"
    if ahead < -limits.past_skew:
        return f"in the past (more than {limits.past_skew.total_seconds():g} s before now)"
    if ahead > limits.max_ahead:
        return f"more than {limits.max_ahead.days} days ahead"
    return None


class _ItemRejected(Exception):
    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


def _reassign_base_date(check: dict[str, Any] | None, now: datetime, enabled: bool) -> date | None:
    """DOMAIN §13: the base date of an item's reassigned-number check, or
    None for no check."""
    if check is None:
        return None
    if not enabled:
        raise _ItemRejected(
            "reassigned_check", "the reassigned-number check is not configured ([reassign])"
        )
    field = "reassigned_check.base_date"
    text = check.get("base_date")
    if text is None:
        raise _ItemRejected(
            field, "required (YYYY-MM-DD): the date the number's consent dates from"
        )
    # fromisoformat would also take 20261201 and 2026-W49-2.
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise _ItemRejected(field, f"not a date YYYY-MM-DD: {text[:40]!r}")
    try:
        base_date = date.fromisoformat(text)
    except ValueError as exc:
        raise _ItemRejected(field, f"not a date YYYY-MM-DD: {exc}") from exc
    problem = base_date_problem(base_date, now)
    if problem is not None:
        raise _ItemRejected(field, problem)
    return base_date


def _validate_item(
    item: dict[str, Any],
    account: AccountConfig,
    now: datetime,
    expiry_s: float,
    schedule: ScheduleLimits,
    reassign_enabled: bool,
    minting: LinkMinting | None = None,
) -> tuple[dict[str, Any], int]:
    bad = unstorable(item)
    if bad is not None:
        raise _ItemRejected(*bad)
    if not item.get("to"):
        raise _ItemRejected("to", "required")
    channel = item.get("channel") or "sms"
    if channel not in CHANNELS:
        raise _ItemRejected("channel", f"must be one of {', '.join(CHANNELS)}, not {channel!r}")
    try:
        msisdn = normalize_msisdn(item["to"], allow_m2m=account.allow_m2m)
    except NumberError as exc:
        raise _ItemRejected("to", f"{exc.reason}: {exc.message}") from exc

    # Link marks first (DOMAIN §12): the text is measured as it will be
    # sent, each link LINK_WIDTH characters.
    sms_text = encoding = None
    parts = 1
    sms_template = rcs_template = None
    targets: list[str] = []
    if channel in ("sms", "rcs_then_sms"):
        sms = item.get("sms")
        if not sms or "text" not in sms:
            why = "required" if channel == "sms" else "required: the SMS fallback text (§8)"
            raise _ItemRejected("sms.text", why)
        sms_template = _template_of(sms["text"], "sms.text", targets, minting)
    rcs_item: dict[str, Any] | None = item.get("rcs")
    if channel in ("rcs", "rcs_then_sms") and rcs_item:
        _refuse_marks_outside_text(rcs_item)
        if isinstance(rcs_item.get("text"), str):
            rcs_template = _template_of(rcs_item["text"], "rcs.text", targets, minting)
    send_at = _send_at_of(item, now, schedule)
    # When the message is due to go: an opt-out URL's 60 days start there.
    start = max(now, send_at) if send_at is not None else now
    minted: MintedLinks | None = None
    templates: dict[str, Any] = {}
    sms_body: str | None = item["sms"]["text"] if sms_template is not None else None
    if minting is not None and (targets or _any_optout(sms_template, rcs_template)):
        minted = mint_links(
            targets,
            _any_optout(sms_template, rcs_template),
            minting.style,
            start,
            minting.optout_valid_days,
            minting.random,
        )
        codes = (minted.link_key, minted.link_suffixes, minted.optout_code)
        if sms_template is not None and sms_template.has_marks:
            templates["sms_text"] = sms_body
            linked = _linked_sms(sms_template, minting.style, account)
            sms_text = render(linked.template, *codes, minting.style)
            encoding, parts = linked.encoding, linked.parts
            sms_body = None
        if rcs_template is not None and rcs_template.has_marks:
            templates["rcs_content"] = json.loads(json.dumps(rcs_item, sort_keys=True))
            rcs_item = {**(rcs_item or {}), "text": render(rcs_template, *codes, minting.style)}
    if sms_body is not None:
        try:
            body = prepare_sms(
                sms_body, max_chars=account.max_sms_chars, allow_gsm7=account.allow_gsm7
            )
        except SmsTextError as exc:
            raise _ItemRejected("sms.text", f"{exc.reason}: {exc.message}") from exc
        sms_text, encoding, parts = body.text, body.encoding, len(body.parts)

    rcs_json = None
    if channel in ("rcs", "rcs_then_sms"):
        if not rcs_item:
            raise _ItemRejected("rcs", "required for channel " + channel)
        try:
            rcs_json = content_to_json(validate_rcs(rcs_item))
        except RcsContentError as exc:
            first = exc.violations[0]
            more = f" (and {len(exc.violations) - 1} more)" if len(exc.violations) > 1 else ""
            path = first.path if first.path.startswith("rcs") else f"rcs.{first.path}"
            raise _ItemRejected(path, first.reason + more) from exc
    elif item.get("rcs"):
        raise _ItemRejected("rcs", "only for channels rcs and rcs_then_sms")

    allowed_carriers = RCS_CARRIERS if channel == "rcs" else CARRIERS
    carrier_named = item.get("carrier")
    if carrier_named is not None and carrier_named not in allowed_carriers:
        raise _ItemRejected("carrier", f"unknown or not offering {channel}: {carrier_named!r}")
    carriers = item.get("carriers")
    if carriers is not None:
        if not carriers:
            raise _ItemRejected("carriers", "must name at least one carrier")
        for j, name in enumerate(carriers):
            if name not in CARRIERS:
                raise _ItemRejected(f"carriers[{j}]", f"unknown carrier {name!r}")
        carriers = sorted(set(carriers), key=CARRIERS.index)

    client_ref = item.get("client_ref")
    if client_ref is not None and not 1 <= len(client_ref) <= MAX_CLIENT_REF_LEN:
        raise _ItemRejected("client_ref", f"must be 1 to {MAX_CLIENT_REF_LEN} characters")
    callback_url = item.get("callback_url")
    if callback_url is not None:
        _check_callback_url(callback_url, account.callback_allow_networks)

    reassign_base_date = _reassign_base_date(item.get("reassigned_check"), now, reassign_enabled)
    state = State.SCHEDULED if send_at is not None and send_at > now else State.QUEUED
    skip_opted_out = bool(item.get("skip_opted_out", account.skip_opted_out))
    row = {
        "client_ref": client_ref,
        "channel": channel,
        "state": state.value,
        "recipient_raw": item["to"],
        "msisdn": msisdn,
        "sms_text": sms_text,
        "sms_encoding": encoding,
        "sms_parts": parts if sms_text is not None else None,
        "rcs_content": rcs_json,
        "carrier_named": carrier_named,
        "carriers_allowed": carriers,
        "callback_url": callback_url,
        "callback_every_change": bool(item.get("callback_every_change", False)),
        "send_at": send_at,
        "not_before": start,
        "expires_at": start + timedelta(seconds=expiry_s),
        # DOMAIN §12: when its opt-out list is read; None: as it is stored.
        "skip_opted_out": skip_opted_out,
        "optout_check_at": optout_list_read_at(send_at, now) if skip_opted_out else None,
        "reassign_base_date": reassign_base_date,
    }
    if minted is not None:
        row[TEMPLATES_KEY] = templates
        row[LINKS_KEY] = minted
    return row, parts


def _send_at_of(item: dict[str, Any], now: datetime, schedule: ScheduleLimits) -> datetime | None:
    if not item.get("send_at"):
        return None
    try:
        send_at = parse_send_at(item["send_at"])
    except ValueError as exc:
        raise _ItemRejected("send_at", f"not an ISO 8601 time with offset: {exc}") from exc
    problem = schedule_problem(send_at, now, schedule)
    if problem is not None:
        raise _ItemRejected("send_at", problem)
    return send_at


def _template_of(
    text: str, field: str, targets: list[str], minting: LinkMinting | None
) -> Template:
    try:
        template = parse_template(text, targets)
    except LinkMarkupError as exc:
        raise _ItemRejected(field, str(exc)) from exc
    if template.has_marks and minting is None:
        raise _ItemRejected(
            field, "link marks need the link server: [links] enabled in the configuration"
        )
    return template


def _linked_sms(template: Template, style: LinkStyle, account: AccountConfig) -> LinkedSms:
    try:
        return prepare_linked_sms(
            template, style, max_chars=account.max_sms_chars, allow_gsm7=account.allow_gsm7
        )
    except SmsTextError as exc:
        raise _ItemRejected(
            "sms.text",
            f"{exc.reason}: {exc.message} (in the text as sent, each link 25 characters)",
        ) from exc


def _any_optout(*templates: Template | None) -> bool:
    return any(t is not None and t.has_optout for t in templates)


_MARK_WORDS = ("{{link:", "{{optout_url}}")


def _strings_in(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _strings_in(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _strings_in(inner, f"{path}[{i}]")


def _refuse_marks_outside_text(rcs: dict[str, Any]) -> None:
    """Links are replaced in rcs.text only: a mark anywhere else would go
    out as typed."""
    for path, text in _strings_in(rcs, "rcs"):
        if path != "rcs.text" and any(word in text for word in _MARK_WORDS):
            raise _ItemRejected(path, "link marks are replaced in rcs.text and sms.text only")


# For sends (sends.py), which validate each recipient's message as an item.
ItemRejected = _ItemRejected


def validate_message(
    item: dict[str, Any],
    account: AccountConfig,
    now: datetime,
    *,
    expiry_s: float,
    schedule: ScheduleLimits | None = None,
    reassign_enabled: bool = False,
    minting: LinkMinting | None = None,
) -> tuple[dict[str, Any], int]:
    """One item's content checks (its shape already checked, as by
    check_shape): the row to store and its billable parts; raises
    ItemRejected naming the field. With `minting`, its link marks are
    replaced by links minted for it (stored with `Transaction.insert_links`)."""
    return _validate_item(
        item, account, now, expiry_s, schedule or ScheduleLimits(), reassign_enabled, minting
    )


def _check_callback_url(url: str, allowed: tuple[IPNetwork, ...]) -> None:
    if len(url) > MAX_CALLBACK_URL_LEN:
        raise _ItemRejected("callback_url", f"longer than {MAX_CALLBACK_URL_LEN} characters")
    problem = callback_url_problem(url, allowed)
    if problem is not None:
        raise _ItemRejected("callback_url", problem)


def validate_batch(
    body: object,
    account: AccountConfig,
    now: datetime,
    *,
    max_items: int,
    expiry_s: float,
    schedule: ScheduleLimits | None = None,
    reassign_enabled: bool = False,
    minting: LinkMinting | None = None,
) -> IntakeBatch:
    items = check_shape(body, max_items=max_items)
    rows: list[dict[str, Any]] = []
    indexes: list[int] = []
    parts: list[int] = []
    rejected: list[Rejection] = []
    seen_refs: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            row, n = _validate_item(
                item,
                account,
                now,
                expiry_s,
                schedule or ScheduleLimits(),
                reassign_enabled,
                minting,
            )
        except _ItemRejected as exc:
            rejected.append(Rejection(index, exc.field, exc.reason))
            continue
        row["request_sha256"] = request_sha256(row)
        ref = row["client_ref"]
        if ref is not None and ref in seen_refs:
            # The same reference twice in one batch is one message, if it
            # is the same content.
            first = seen_refs[ref]
            if rows[first]["request_sha256"] != row["request_sha256"]:
                rejected.append(
                    Rejection(
                        index,
                        "client_ref",
                        f"conflict: item {indexes[first]} of this request uses this "
                        "client_ref for other content",
                        "idempotency_conflict",
                    )
                )
                continue
            rows.append(rows[first])
        elif ref is not None:
            seen_refs[ref] = len(rows)
            rows.append(row)
        else:
            rows.append(row)
        indexes.append(index)
        parts.append(n)
    return IntakeBatch(rows=rows, row_indexes=indexes, parts=parts, rejected=rejected)


@dataclass(frozen=True)
class FedMessage:
    """A SQL-feed row as HTTP intake would have stored it."""

    msisdn: str
    sms_text: str | None
    sms_encoding: str | None
    sms_parts: int | None
    rcs_content: dict[str, Any] | None


def validate_fed(
    recipient_raw: str,
    channel: str,
    sms_text: str | None,
    rcs_content: Any,
    account: AccountConfig,
) -> FedMessage | Reason:
    """The checks HTTP intake gives, for a row written by carrierd_enqueue:
    the row as validated, or the reason it is rejected (naming the field)."""
    try:
        msisdn = normalize_msisdn(recipient_raw, allow_m2m=account.allow_m2m)
    except NumberError as exc:
        return Reason("invalid_field", f"to: {exc.reason}: {exc.message}")
    encoding = None
    parts = None
    # The feed's row has its id already and no links table entry: marks
    # would go out as typed (DOMAIN §12 links come through HTTP intake).
    if sms_text and any(word in sms_text for word in _MARK_WORDS):
        return Reason("invalid_field", "sms.text: link marks are taken by HTTP intake only")
    for path, text in _strings_in(rcs_content, "rcs"):
        if any(word in text for word in _MARK_WORDS):
            return Reason("invalid_field", f"{path}: link marks are taken by HTTP intake only")
    if channel in ("sms", "rcs_then_sms"):
        if not sms_text:
            return Reason("invalid_field", "sms.text: required")
        try:
            body = prepare_sms(
                sms_text, max_chars=account.max_sms_chars, allow_gsm7=account.allow_gsm7
            )
        except SmsTextError as exc:
            return Reason("invalid_field", f"sms.text: {exc.reason}: {exc.message}")
        sms_text, encoding, parts = body.text, body.encoding, len(body.parts)
    rcs_json = None
    if channel in ("rcs", "rcs_then_sms"):
        try:
            rcs_json = content_to_json(validate_rcs(rcs_content))
        except RcsContentError as exc:
            first = exc.violations[0]
            return Reason("invalid_field", f"{first.path}: {first.reason}")
    return FedMessage(msisdn, sms_text, encoding, parts, rcs_json)


# Metric label values for rejected fields: the schema's field names, without
# indexes. Anything else a client can make a path say (unknown keys, its
# own spellings) collapses to its nearest known parent, else "other", so one
# request cannot create a series per item.
_SUGGESTION_FIELDS = ("type", "text", "postback", "url", "phone", "reply_validity_s")
_MEDIA_FIELDS = ("url", "content_type", "size_bytes", "height")


def _card_labels(prefix: str) -> list[str]:
    return [
        prefix,
        f"{prefix}.media",
        *(f"{prefix}.media.{f}" for f in _MEDIA_FIELDS),
        f"{prefix}.title",
        f"{prefix}.description",
        f"{prefix}.suggestions",
        *(f"{prefix}.suggestions.{f}" for f in _SUGGESTION_FIELDS),
    ]


FIELD_LABELS: frozenset[str] = frozenset(
    {
        *ITEM_FIELDS,
        "sms.text",
        "reassigned_check.base_date",
        "rcs.text",
        "rcs.chips",
        *(f"rcs.chips.{f}" for f in _SUGGESTION_FIELDS),
        "rcs.carousel",
        *_card_labels("rcs.card"),
        *_card_labels("rcs.carousel.cards"),
    }
)
_INDEX = re.compile(r"\[\d+\]")


def field_label(path: str) -> str:
    """The bounded metric label for a rejected field's path."""
    name = _INDEX.sub("", path)
    while name:
        if name in FIELD_LABELS:
            return name
        name = name.rpartition(".")[0]
    return "other"
