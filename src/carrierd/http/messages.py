"""Intake, status, search and cancel of messages.

- ``POST /v1/messages``: a batch; each item is accepted or rejected on its
  own (202 with both lists, 422 when nothing was accepted, 409 when nothing
  was accepted and an item's client_ref names other content).
- ``GET /v1/messages/{id}``: the status document, its history and its SMS
  parts.
- ``GET /v1/messages``: the account's messages, newest first, filtered by
  state, to, since/until (accepted_at), client_ref, channel and carrier, a
  page at a time (``next_cursor``).
- ``POST /v1/messages/{id}/cancel``: domain/cancel.py says what it may stop.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from aiohttp import web

from carrierd.click_log import ClickLog, click_log
from carrierd.config import CARRIERS
from carrierd.domain.cancel import CancelOutcome
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.states import State
from carrierd.domain.status import iso_instant, status_document
from carrierd.domain.storable import INT_MAX, text_problem
from carrierd.http.app import (
    API_STATE,
    ApiState,
    api_error,
    authenticate,
    error_body,
    json_error,
    require_json_body,
)
from carrierd.http.reports import parse_instant
from carrierd.intake import (
    CHANNELS,
    MAX_CLIENT_REF_LEN,
    LinkMinting,
    RequestShapeError,
    ScheduleLimits,
    field_label,
    validate_batch,
)
from carrierd.store.db import LinkCodeTaken, Row

log = structlog.get_logger("carrierd.http.messages")

# Message ids are bigint: anything longer cannot be one and must not reach
# the database as an out-of-range parameter.
_MAX_ID_DIGITS = 18
_ASCII_DIGITS = frozenset("0123456789")
# Any integer literal longer than this is out of every range intake takes;
# reading it as such (rather than letting int() refuse past 4,300 digits)
# lets the item holding it be rejected on its own.
_MAX_INT_DIGITS = 20
LINK_MINT_TRIES = 3


class BodyError(ValueError):
    """The body is not a JSON document we can read."""


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    return int(text) if digits <= _MAX_INT_DIGITS else INT_MAX + 1


def parse_json_body(body: bytes) -> Any:
    """Decode a request body; raises BodyError saying why not."""
    try:
        return json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise BodyError("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"malformed JSON: {exc}") from None


def message_view(
    row: Row,
    events: list[Row],
    parts: list[Row],
    clicks: ClickLog | None = None,
) -> dict[str, Any]:
    """The API's view: the status document plus history, SMS parts and the
    click log (DOMAIN §12: first click per short link; +Message: opened)."""
    return {
        **status_document(row),
        **(clicks or ClickLog({}, {})).view(row["id"]),
        "history": [
            {
                "at": iso_instant(e["at"]),
                "event": e["kind"],
                "state": e["state"],
                "carrier": e["carrier"],
                "detail": e["detail"],
            }
            for e in events
        ],
        "sms_parts": [
            {
                "attempt": p["attempt"],
                "part": p["part_no"],
                "of": p["part_total"],
                "carrier": p["carrier"],
                "smsc_message_id": p["smsc_message_id"],
                "state": p["state"],
                "command_status": p["command_status"],
                "receipt": {"stat": p["receipt_stat"], "err": p["receipt_err"]}
                if p["receipt_stat"]
                else None,
                "sent_at": iso_instant(p["sent_at"]),
                "receipt_at": iso_instant(p["receipt_at"]),
            }
            for p in parts
        ],
    }


class MessageCanceller(Protocol):
    async def cancel(self, account_id: str, message_id: int) -> CancelOutcome:
        """Cancel the account's message if it can still be stopped."""

    async def cancel_many(
        self, account_id: str, message_ids: Sequence[int]
    ) -> Counter[tuple[str, str | None]]:
        """Cancel many (a send's); how many came to each (result, state)."""


async def post_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "send")
    wrong_type = require_json_body(request)
    if wrong_type is not None:
        return wrong_type
    try:
        body = parse_json_body(await request.read())
    except BodyError as exc:
        return json_error(400, "body", str(exc))
    now = state.clock.now()
    http_config = state.config.http
    # A link code already in use fails the whole insert: mint again (each
    # try is as unlikely as the first to meet a taken code).
    for tries_left in reversed(range(LINK_MINT_TRIES)):
        try:
            batch = validate_batch(
                body,
                account,
                now,
                max_items=http_config.max_batch_items,
                expiry_s=state.config.engine.message_expiry_s,
                schedule=ScheduleLimits(
                    max_ahead=timedelta(days=http_config.send_at_max_ahead_days),
                    past_skew=timedelta(seconds=http_config.send_at_past_skew_s),
                ),
                reassign_enabled=state.config.reassign.enabled,
                minting=LinkMinting.from_config(state.config.links),
            )
        except RequestShapeError as exc:
            return json_error(400, exc.field, exc.reason)
        conflicts: dict[int, int] = {}
        try:
            ids = await state.db.insert_messages(account.account_id, batch.rows, now, conflicts)
        except LinkCodeTaken:
            if not tries_left:
                raise
            log.warning("link_code_taken", account=account.account_id)
            continue
        break
    accepted = [
        {"index": index, "id": str(ids[row_no]), "parts": batch.parts[row_no]}
        for row_no, index in enumerate(batch.row_indexes)
        if row_no in ids
    ]
    rejected: list[dict[str, Any]] = [
        {"index": r.index, "field": r.field, "reason": r.reason, "code": r.code}
        for r in batch.rejected
    ]
    for row_no, existing_id in conflicts.items():
        rejected.append(
            {
                "index": batch.row_indexes[row_no],
                "field": "client_ref",
                "reason": f"conflict: message {existing_id} already has this client_ref "
                "with other content",
                "code": "idempotency_conflict",
                "message_id": str(existing_id),
            }
        )
    rejected.sort(key=lambda r: int(r["index"]))
    if state.metrics is not None:
        # One counter update per label set, not per item of a 10,000-item batch.
        for channel, count in Counter(row["channel"] for row in batch.rows).items():
            state.metrics.messages_accepted_total.labels(account.account_id, channel).inc(count)
        for field, count in Counter(field_label(r.field) for r in batch.rejected).items():
            state.metrics.messages_rejected_total.labels(field).inc(count)
    log.info("intake", account=account.account_id, accepted=len(accepted), rejected=len(rejected))
    answer: dict[str, Any] = {"accepted": accepted, "rejected": rejected}
    if accepted:
        return web.json_response(answer, status=202)
    # Nothing stored: an error in the one shape, the items beside it.
    conflict = next((r for r in rejected if r["code"] == "idempotency_conflict"), None)
    if conflict is not None:
        error = error_body(
            "idempotency_conflict",
            f"messages[{conflict['index']}].client_ref: {conflict['reason']}",
            f"messages[{conflict['index']}].client_ref",
        )
        return web.json_response({**error, **answer}, status=409)
    first = rejected[0]
    error = error_body(
        "nothing_accepted",
        f"every item was rejected; messages[{first['index']}].{first['field']}: {first['reason']}",
        f"messages[{first['index']}].{first['field']}",
    )
    return web.json_response({**error, **answer}, status=422)


async def _load_message(state: ApiState, account_id: str, message_id: int) -> dict[str, Any] | None:
    row = await state.db.get_message(account_id, message_id)
    if row is None:
        return None
    events = await state.db.fetch("get_message_events", message_id)
    parts = await state.db.fetch("get_message_parts", message_id)
    clicks = await click_log(state.db, [message_id])
    return message_view(row, events, parts, clicks)


def _parse_id(text: str) -> int | None:
    # str.isdigit() and int() also take '²' and '١'; an id is ASCII digits.
    if not text or len(text) > _MAX_ID_DIGITS or not set(text) <= _ASCII_DIGITS:
        return None
    return int(text)


async def get_message(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    message_id = _parse_id(request.match_info["message_id"])
    if message_id is None:
        return json_error(400, "message_id", f"must be 1 to {_MAX_ID_DIGITS} digits 0-9")
    view = await _load_message(state, account.account_id, message_id)
    if view is None:
        return json_error(404, None, "no such message")
    return web.json_response(view)


# A page of GET /v1/messages: at most this many messages.
SEARCH_DEFAULT_LIMIT = 50
SEARCH_MAX_LIMIT = 500
_SEARCH_PARAMS = frozenset(
    {"state", "to", "since", "until", "client_ref", "channel", "carrier", "limit", "cursor"}
)
_STATE_VALUES = tuple(s.value for s in State)


class _BadParam(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def encode_cursor(accepted_at: datetime, message_id: int) -> str:
    """An opaque cursor: the (accepted_at, id) key of the last message shown."""
    micros = round(accepted_at.timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}.{message_id}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, int]:
    if len(text) > 64:
        raise ValueError("too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this API gave") from None
    micros_text, _, id_text = raw.partition(".")
    for part in (micros_text, id_text):
        if not part or len(part) > _MAX_ID_DIGITS or not set(part) <= _ASCII_DIGITS:
            raise ValueError("not a cursor this API gave")
    try:
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros_text))
    except OverflowError:
        raise ValueError("not a cursor this API gave") from None
    return at, int(id_text)


def _instant_param(field: str, text: str) -> datetime:
    if len(text) > 40:
        raise _BadParam(field, "expected an ISO 8601 date-time with offset")
    try:
        at = parse_instant(text)
        at.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _BadParam(field, str(exc)) from None
    return at


def _search_filters(request: web.Request, allow_m2m: bool) -> dict[str, Any]:
    query = request.query
    for key in query:
        if key not in _SEARCH_PARAMS:
            raise _BadParam(
                key, f"unknown query parameter (one of {', '.join(sorted(_SEARCH_PARAMS))})"
            )
    for key in _SEARCH_PARAMS:
        if len(query.getall(key, [])) > 1 and key != "state":
            raise _BadParam(key, "given more than once")
        value = query.get(key)
        if value is not None:
            problem = text_problem(value)
            if problem is not None:
                raise _BadParam(key, problem)
    states: list[str] | None = None
    if "state" in query:
        states = [s for v in query.getall("state") for s in v.split(",")]
        for name in states:
            if name not in _STATE_VALUES:
                raise _BadParam(
                    "state", f"unknown state {name!r} (one of {', '.join(_STATE_VALUES)})"
                )
    msisdn = None
    if "to" in query:
        try:
            msisdn = normalize_msisdn(query["to"], allow_m2m=allow_m2m)
        except NumberError as exc:
            raise _BadParam("to", f"{exc.reason}: {exc.message}") from None
    since = _instant_param("since", query["since"]) if "since" in query else None
    until = _instant_param("until", query["until"]) if "until" in query else None
    client_ref = query.get("client_ref")
    if client_ref is not None and not 1 <= len(client_ref) <= MAX_CLIENT_REF_LEN:
        raise _BadParam("client_ref", f"must be 1 to {MAX_CLIENT_REF_LEN} characters")
    channel = query.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise _BadParam("channel", f"must be one of {', '.join(CHANNELS)}")
    carrier = query.get("carrier")
    if carrier is not None and carrier not in CARRIERS:
        raise _BadParam("carrier", f"must be one of {', '.join(CARRIERS)}")
    limit = SEARCH_DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not text or len(text) > 4 or not set(text) <= _ASCII_DIGITS:
            raise _BadParam("limit", f"must be 1 to {SEARCH_MAX_LIMIT}")
        limit = int(text)
        if not 1 <= limit <= SEARCH_MAX_LIMIT:
            raise _BadParam("limit", f"must be 1 to {SEARCH_MAX_LIMIT}")
    after_at = after_id = None
    if "cursor" in query:
        try:
            after_at, after_id = decode_cursor(query["cursor"])
        except ValueError as exc:
            raise _BadParam("cursor", str(exc)) from None
    return {
        "states": states,
        "msisdn": msisdn,
        "since": since,
        "until": until,
        "client_ref": client_ref,
        "channel": channel,
        "carrier": carrier,
        "after_at": after_at,
        "after_id": after_id,
        "limit": limit,
    }


async def find_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    try:
        f = _search_filters(request, account.allow_m2m)
    except _BadParam as exc:
        return json_error(400, exc.field, exc.reason)
    rows = await state.db.fetch(
        "search_messages",
        account.account_id,
        f["states"],
        f["msisdn"],
        f["since"],
        f["until"],
        f["client_ref"],
        f["channel"],
        f["carrier"],
        f["after_at"],
        f["after_id"],
        f["limit"] + 1,
    )
    page = rows[: f["limit"]]
    next_cursor = (
        encode_cursor(page[-1]["accepted_at"], page[-1]["id"]) if len(rows) > f["limit"] else None
    )
    return web.json_response(
        {"messages": [status_document(r) for r in page], "next_cursor": next_cursor}
    )


async def cancel_message(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "send")
    message_id = _parse_id(request.match_info["message_id"])
    if message_id is None:
        return json_error(400, "message_id", f"must be 1 to {_MAX_ID_DIGITS} digits 0-9")
    if state.canceller is None:
        return api_error(503, "not_configured", "cancel is not available on this daemon")
    outcome = await state.canceller.cancel(account.account_id, message_id)
    if outcome.result == "not_found":
        return json_error(404, None, "no such message")
    retry = {"Retry-After": str(CANCEL_RETRY_AFTER_S)} if outcome.retry else None
    current = outcome.state.value if outcome.state is not None else None
    if outcome.result == "refused":
        return api_error(
            409,
            "not_cancellable",
            f"cannot cancel a message in state {current}: {outcome.reason}",
            headers=retry,
            extra={"state": current},
        )
    if outcome.result == "revoke_failed":
        return api_error(
            502, "revoke_failed", outcome.reason, headers=retry, extra={"state": current}
        )
    if outcome.result == "not_configured":
        return api_error(
            503, "not_configured", outcome.reason, headers=retry, extra={"state": current}
        )
    view = await _load_message(state, account.account_id, message_id)
    return web.json_response(view)


# A cancel refused for a passing reason (a daemon holds the message, the
# platform did not answer) may succeed this much later.
CANCEL_RETRY_AFTER_S = 5
