"""The daemon's HTTP server: shared state, authentication, errors, and the
one route table.

Every route the daemon serves is listed in `build_app`, so this function is
the whole HTTP surface; the handlers live beside it (messages, reports,
webhooks, health). Handlers only move JSON and rows: validation is in
intake.py and domain/, SQL in the store. Every account route is
authenticated by a bearer token that maps to one account; an account sees
only its own messages (another account's id is a 404, not a 403, so ids
cannot be probed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from carrierd.config import AccountConfig, Config
from carrierd.domain.clock import Clock
from carrierd.store.db import Database, describe_db_error, is_transient_db_error
from carrierd.telemetry import Metrics

if TYPE_CHECKING:
    from carrierd.http.webhooks import WebhookSink

log = structlog.get_logger("carrierd.http.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Readiness = Callable[[], Awaitable[dict[str, Any]]]

# What a client is told to wait before repeating a request refused because
# the database is away: restarts take seconds, longer outages are retried.
DATABASE_RETRY_AFTER_S = 5

# One page of the CSV export is what an export holds in memory at once.
EXPORT_PAGE_ROWS = 2000


@dataclass
class ApiState:
    """What the handlers need; `config` is swapped on reload.

    Optional parts switch their routes on: /metrics with `metrics`, the
    +Message webhook with `webhook_sink`.
    """

    config: Config
    db: Database
    clock: Clock
    readiness: Readiness | None = None
    metrics: Metrics | None = None
    webhook_sink: WebhookSink | None = None
    export_page_rows: int = EXPORT_PAGE_ROWS


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[API_STATE].config.http.max_body_bytes
        return json_error(413, "body", f"request body larger than {limit} bytes")
    except web.HTTPException:
        raise
    except Exception as exc:
        if is_transient_db_error(exc):
            # Nothing was stored (a statement that failed did not commit),
            # and the same request succeeds once the database is back: tell
            # the client to come back, not that we are broken.
            log.warning("http_database_unavailable", path=request.path, error=repr(exc))
            return database_unavailable(exc)
        log.exception("http_handler_failed", path=request.path)
        return json_error(500, None, "internal error")


def database_unavailable(exc: BaseException) -> web.Response:
    """503 with Retry-After: the database is away, the request may be repeated."""
    response = web.json_response(
        {"error": "database unavailable", "detail": describe_db_error(exc)}, status=503
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


def build_app(state: ApiState) -> web.Application:
    """The application with every route of the daemon."""
    # The handler modules import API_STATE and authenticate from this one;
    # importing them here, at build time, keeps the table in this module
    # without an import cycle.
    from carrierd.http import health, messages, observe, reports, webhooks

    app = web.Application(
        client_max_size=state.config.http.max_body_bytes,
        middlewares=[observe.observe_requests, error_middleware],
    )
    app[API_STATE] = state
    routes = [
        web.post("/v1/messages", messages.post_messages),
        web.get("/v1/messages", messages.find_messages),
        # Beside /v1/messages/{message_id}: aiohttp (>= 3.10) resolves a
        # plain path before a variable one, whatever the order here.
        web.get("/v1/messages/export", reports.export_messages),
        web.get("/v1/messages/{message_id}", messages.get_message),
        web.get("/v1/billing", reports.get_billing),
        web.get("/healthz", health.healthz),
        web.get("/readyz", health.readyz),
    ]
    if state.metrics is not None:
        routes.append(web.get("/metrics", health.serve_metrics))
    if state.webhook_sink is not None:
        routes.append(web.post(webhooks.WEBHOOK_PATH, webhooks.receive_rcs_webhook))
    app.add_routes(routes)
    return app
