"""Intake and status of messages.

- ``POST /v1/messages``: a batch; each item is accepted or rejected on its
  own (202 with both lists, 422 when nothing was accepted).
- ``GET /v1/messages/{id}``: the status document, its history and its SMS
  parts.
- ``GET /v1/messages?client_ref=...``: the same, found by the account's
  own reference.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web

from carrierd.domain.status import iso_instant, status_document
from carrierd.domain.storable import INT_MAX, text_problem
from carrierd.http.app import API_STATE, ApiState, authenticate, json_error
from carrierd.intake import (
    MAX_CLIENT_REF_LEN,
    RequestShapeError,
    ScheduleLimits,
    field_label,
    validate_batch,
)
from carrierd.store.db import Row

log = structlog.get_logger("carrierd.http.messages")

# Message ids are bigint: anything longer cannot be one and must not reach
# the database as an out-of-range parameter.
_MAX_ID_DIGITS = 18
_ASCII_DIGITS = frozenset("0123456789")
# Any integer literal longer than this is out of every range intake takes;
# reading it as such (rather than letting int() refuse past 4,300 digits)
# lets the item holding it be rejected on its own.
_MAX_INT_DIGITS = 20


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


def message_view(row: Row, events: list[Row], parts: list[Row]) -> dict[str, Any]:
    """The API's view: the status document plus history and SMS parts."""
    return {
        **status_document(row),
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


async def post_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    try:
        body = parse_json_body(await request.read())
    except BodyError as exc:
        return json_error(400, "body", str(exc))
    now = state.clock.now()
    http_config = state.config.http
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
        )
    except RequestShapeError as exc:
        return json_error(400, exc.field, exc.reason)
    ids = await state.db.insert_messages(account.account_id, batch.rows, now)
    accepted = [
        {"index": index, "id": str(ids[row_no]), "parts": batch.parts[row_no]}
        for row_no, index in enumerate(batch.row_indexes)
    ]
    rejected = [{"index": r.index, "field": r.field, "reason": r.reason} for r in batch.rejected]
    if state.metrics is not None:
        # One counter update per label set, not per item of a 10,000-item batch.
        for channel, count in Counter(row["channel"] for row in batch.rows).items():
            state.metrics.messages_accepted_total.labels(account.account_id, channel).inc(count)
        for field, count in Counter(field_label(r.field) for r in batch.rejected).items():
            state.metrics.messages_rejected_total.labels(field).inc(count)
    log.info("intake", account=account.account_id, accepted=len(accepted), rejected=len(rejected))
    status = 202 if accepted else 422
    return web.json_response({"accepted": accepted, "rejected": rejected}, status=status)


async def _load_message(state: ApiState, account_id: str, message_id: int) -> dict[str, Any] | None:
    row = await state.db.get_message(account_id, message_id)
    if row is None:
        return None
    events = await state.db.fetch("get_message_events", message_id)
    parts = await state.db.fetch("get_message_parts", message_id)
    return message_view(row, events, parts)


def _parse_id(text: str) -> int | None:
    # str.isdigit() and int() also take '²' and '١'; an id is ASCII digits.
    if not text or len(text) > _MAX_ID_DIGITS or not set(text) <= _ASCII_DIGITS:
        return None
    return int(text)


async def get_message(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    message_id = _parse_id(request.match_info["message_id"])
    if message_id is None:
        return json_error(400, "message_id", f"must be 1 to {_MAX_ID_DIGITS} digits 0-9")
    view = await _load_message(state, account.account_id, message_id)
    if view is None:
        return json_error(404, None, "no such message")
    return web.json_response(view)


async def find_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    client_ref = request.query.get("client_ref")
    if not client_ref:
        return json_error(400, "client_ref", "required query parameter")
    problem = text_problem(client_ref)
    if problem is None and len(client_ref) > MAX_CLIENT_REF_LEN:
        problem = f"longer than {MAX_CLIENT_REF_LEN} characters"
    if problem is not None:
        return json_error(400, "client_ref", problem)
    message_id = await state.db.fetchval(
        "get_message_by_client_ref", account.account_id, client_ref
    )
    if message_id is None:
        return json_error(404, None, "no message with this client_ref")
    view = await _load_message(state, account.account_id, message_id)
    return web.json_response({"messages": [view] if view else []})
