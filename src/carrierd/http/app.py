"""The daemon's HTTP server: intake, status, health.

Handlers only move JSON and rows: validation is in intake.py, SQL in the
store. Every request is authenticated by a bearer token that maps to one
account; an account sees only its own messages (another account's id is a
404, not a 403, so ids cannot be probed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from carrierd.config import AccountConfig, Config
from carrierd.domain.clock import Clock
from carrierd.intake import RequestShapeError, validate_batch
from carrierd.store.db import Database, Row
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.http.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiState:
    """What the handlers need; `config` is swapped on reload."""

    config: Config
    db: Database
    clock: Clock
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None
    metrics: Metrics | None = None
    extra_routes: list[web.RouteDef] = field(default_factory=list)


API_STATE: web.AppKey[ApiState] = web.AppKey("api_state", ApiState)


def json_error(status: int, field: str | None, reason: str) -> web.Response:
    body: dict[str, Any] = {"error": reason}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def authenticate(request: web.Request) -> AccountConfig:
    state = request.app[API_STATE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "missing bearer token"}),
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )
    account = state.config.account_for_token(token.strip())
    if account is None:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unknown token"}),
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return account


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_view(row: Row, events: list[Row], parts: list[Row]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "client_ref": row["client_ref"],
        "channel": row["channel"],
        "leg": row["leg"],
        "state": row["state"],
        "reason": (
            {"code": row["reason_code"], "text": row["reason_text"]}
            if row["reason_code"] or row["reason_text"]
            else None
        ),
        "to": row["msisdn"] or row["recipient_raw"],
        "carrier": row["carrier"],
        "carriers_wrong": list(row["carriers_wrong"] or []),
        "parts": row["sms_parts"],
        "attempt": row["attempt"],
        "billing": {"sms_units": row["sms_units"], "rcs_units": row["rcs_units"]},
        "timestamps": {
            "accepted_at": _iso(row["accepted_at"]),
            "send_at": _iso(row["send_at"]),
            "submitted_at": _iso(row["submitted_at"]),
            "rcs_sent_at": _iso(row["rcs_sent_at"]),
            "final_at": _iso(row["final_at"]),
            "expires_at": _iso(row["expires_at"]),
            "updated_at": _iso(row["updated_at"]),
        },
        "history": [
            {
                "at": _iso(e["at"]),
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
                "sent_at": _iso(p["sent_at"]),
                "receipt_at": _iso(p["receipt_at"]),
            }
            for p in parts
        ],
    }


async def post_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    try:
        body = await request.json(loads=json.loads)
    except web.HTTPRequestEntityTooLarge:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return json_error(400, "body", f"malformed JSON: {exc}")
    now = state.clock.now()
    try:
        batch = validate_batch(
            body,
            account,
            now,
            max_items=state.config.http.max_batch_items,
            expiry_s=state.config.engine.message_expiry_s,
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
        for field, count in Counter(r.field for r in batch.rejected).items():
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
    return int(text) if text.isdigit() and len(text) < 19 else None


async def get_message(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    message_id = _parse_id(request.match_info["message_id"])
    view = (
        None if message_id is None else await _load_message(state, account.account_id, message_id)
    )
    if view is None:
        return json_error(404, None, "no such message")
    return web.json_response(view)


async def find_messages(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request)
    client_ref = request.query.get("client_ref")
    if not client_ref:
        return json_error(400, "client_ref", "required query parameter")
    message_id = await state.db.fetchval(
        "get_message_by_client_ref", account.account_id, client_ref
    )
    if message_id is None:
        return json_error(404, None, "no message with this client_ref")
    view = await _load_message(state, account.account_id, message_id)
    return web.json_response({"messages": [view] if view else []})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    checks: dict[str, Any] = {"database": await state.db.ping()}
    if state.readiness is not None:
        checks.update(await state.readiness())
    ready = all(v is True or (isinstance(v, dict) and v.get("ready")) for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[API_STATE].config.http.max_body_bytes
        return json_error(413, "body", f"request body larger than {limit} bytes")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http_handler_failed", path=request.path)
        return json_error(500, None, "internal error")


def build_app(state: ApiState) -> web.Application:
    app = web.Application(
        client_max_size=state.config.http.max_body_bytes, middlewares=[error_middleware]
    )
    app[API_STATE] = state
    app.add_routes(
        [
            web.post("/v1/messages", post_messages),
            web.get("/v1/messages", find_messages),
            web.get("/v1/messages/{message_id}", get_message),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            *state.extra_routes,
        ]
    )
    return app
