"""The daemon's HTTP server: shared state, authentication, errors, and the
one route table.

Every route the daemon serves is listed in `build_app`, so this function is
the whole HTTP surface; the handlers live beside it (messages, reports,
webhooks, health). Handlers only move JSON and rows: validation is in
intake.py and domain/, SQL in the store. Every account route is
authenticated by a bearer token that maps to one account and a set of
scopes (a request outside them is a 403 naming the scope); an account sees
only its own messages (another account's id is a 404, not a 403, so ids
cannot be probed).

Every error, whoever raises it (a handler, aiohttp's router for an unknown
path or method, the body limit, the database), is answered in one shape:

    {"error": {"code": "invalid_field", "message": "...", "field": "..."}}

`code` is one of ERROR_CODES and stable: clients branch on it, while
`message` is for people and may change. `field` names the offending field
or query parameter when there is one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from carrierd.config import AccountConfig, Config
from carrierd.domain.clock import Clock
from carrierd.store.db import Database, describe_db_error, is_transient_db_error
from carrierd.telemetry import Metrics

if TYPE_CHECKING:
    from carrierd.http.groups import SubscriberSource
    from carrierd.http.messages import MessageCanceller
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
    # The engine's cancel (engine/cancel.py); without it a cancel is a 503.
    canceller: MessageCanceller | None = None
    # The +Message platform's subscriber lists (engine/rcs_leg.py); without
    # it a subscriber group cannot be fetched (503).
    subscribers: SubscriberSource | None = None
    export_page_rows: int = EXPORT_PAGE_ROWS


API_STATE: web.AppKey[ApiState] = web.AppKey("api_state", ApiState)


# The machine-readable error codes: part of the API, never rename one.
ERROR_CODES: frozenset[str] = frozenset(
    {
        "invalid_field",  # 400: a field or query parameter is wrong (`field` names it)
        "malformed_body",  # 400: the body is not JSON we can read
        "missing_token",  # 401
        "unknown_token",  # 401
        "webhook_unauthorized",  # 401: a +Message webhook's signature or time is wrong
        "scope_required",  # 403: the token lacks the scope the route needs
        "not_found",  # 404: no such path, or no such message of this account
        "method_not_allowed",  # 405
        "request_timeout",  # 408: the body did not arrive in time
        "idempotency_conflict",  # 409: client_ref already names other content
        "not_cancellable",  # 409: the message is past the point a cancel can stop it
        "optout_list_full",  # 409: the opt-out list would pass the account's cap
        "body_too_large",  # 413
        "unsupported_media_type",  # 415
        "nothing_accepted",  # 422: every item of a batch was rejected
        "group_too_large",  # 422: a subscriber group larger than a send takes
        "subscriptions_not_allowed",  # 403: the official account takes no subscriptions
        "platform_error",  # 502: the +Message platform did not give what was asked
        "internal_error",  # 500
        "revoke_failed",  # 502: the +Message platform did not answer a revoke
        "database_unavailable",  # 503 with Retry-After
        "not_configured",  # 503: the feature the route needs is not configured
    }
)

# The code for an error raised as a bare aiohttp exception (its router,
# its body limit): the status says all there is to say.
_CODE_FOR_STATUS: dict[int, str] = {
    400: "invalid_field",
    401: "missing_token",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    503: "not_configured",
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def api_error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """An error response in the one shape (`extra`: keys beside "error")."""
    body = error_body(code, message, field)
    if extra:
        body.update(extra)
    return web.json_response(body, status=status, headers=headers)


def json_error(status: int, field: str | None, reason: str) -> web.Response:
    """A 400-class error about one field (or none): `invalid_field`, or the
    status's own code."""
    code = "invalid_field" if status == 400 else _CODE_FOR_STATUS.get(status, "internal_error")
    if status == 404:
        code = "not_found"
    return api_error(status, code, reason, field)


class ApiError(Exception):
    """Raised by a helper deep in a handler (authentication, scopes): the
    middleware answers it in the one shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def response(self) -> web.Response:
        return api_error(self.status, self.code, self.message, self.field, headers=self.headers)


def authenticate(request: web.Request, scope: str) -> AccountConfig:
    """The account of the request's bearer token, which must hold `scope`
    (config.SCOPES); raises 401 or 403."""
    state = request.app[API_STATE]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_token", "missing bearer token", headers=challenge)
    access = state.config.access_for_token(token.strip())
    if access is None:
        raise ApiError(401, "unknown_token", "unknown token", headers=challenge)
    account, scopes = access
    if scope not in scopes and "admin" not in scopes:
        raise ApiError(
            403,
            "scope_required",
            f"this token lacks the {scope!r} scope (it has: {', '.join(sorted(scopes))})",
            "scope",
        )
    return account


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[API_STATE].config.http.max_body_bytes
        return api_error(413, "body_too_large", f"request body larger than {limit} bytes", "body")
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _as_api_error(request, exc)
    except Exception as exc:
        if is_transient_db_error(exc):
            # Nothing was stored (a statement that failed did not commit),
            # and the same request succeeds once the database is back: tell
            # the client to come back, not that we are broken.
            log.warning("http_database_unavailable", path=request.path, error=repr(exc))
            return database_unavailable(exc)
        log.exception("http_handler_failed", path=request.path)
        return api_error(500, "internal_error", "internal error")
    return response


def _as_api_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own error (plain text "404: Not Found") in the one shape."""
    code = _CODE_FOR_STATUS.get(exc.status, "internal_error" if exc.status >= 500 else "not_found")
    if exc.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif exc.status == 404:
        message = f"no route {request.path}"
    else:
        message = exc.reason
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
    return api_error(exc.status, code, message, headers=headers)


def database_unavailable(exc: BaseException) -> web.Response:
    """503 with Retry-After: the database is away, the request may be repeated."""
    return api_error(
        503,
        "database_unavailable",
        f"database unavailable: {describe_db_error(exc)}",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def require_json_body(request: web.Request) -> web.Response | None:
    """415 unless a body is declared JSON (application/json or */*+json);
    a request that names no type is read as JSON."""
    if "Content-Type" not in request.headers:
        return None
    mime = request.content_type
    if mime == "application/json" or mime.endswith("+json"):
        return None
    return api_error(
        415, "unsupported_media_type", f"expected application/json, got {mime}", "Content-Type"
    )


def build_app(state: ApiState) -> web.Application:
    """The application with every route of the daemon."""
    # The handler modules import API_STATE and authenticate from this one;
    # importing them here, at build time, keeps the table in this module
    # without an import cycle.
    from carrierd.http import (
        groups,
        health,
        inbound,
        messages,
        observe,
        openapi,
        optouts,
        reports,
        sends,
        webhooks,
    )

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
        web.post("/v1/messages/{message_id}/cancel", messages.cancel_message),
        web.get("/v1/billing", reports.get_billing),
        web.post("/v1/optouts", optouts.add_numbers),
        web.get("/v1/optouts", optouts.list_numbers),
        # Plain paths resolve before /v1/optouts/{number} (as for messages).
        web.get("/v1/optouts/export", optouts.export_numbers),
        web.post("/v1/optouts/import", optouts.import_numbers),
        web.get("/v1/optouts/{number}", optouts.get_number),
        web.delete("/v1/optouts/{number}", optouts.delete_number),
        web.get("/v1/inbound", inbound.find_inbound),
        web.post("/v1/sends", sends.post_send),
        web.get("/v1/sends", sends.list_sends),
        web.get("/v1/sends/{send_id}", sends.get_send),
        web.get("/v1/sends/{send_id}/export", sends.export_send),
        web.get("/v1/sends/{send_id}/replies", sends.send_replies),
        web.post("/v1/sends/{send_id}/cancel", sends.cancel_send),
        web.post("/v1/groups", groups.fetch_group),
        web.get("/v1/groups", groups.list_groups),
        web.get("/v1/groups/{group_id}/export", groups.export_group),
        web.get("/healthz", health.healthz),
        web.get("/readyz", health.readyz),
        web.get(openapi.OPENAPI_PATH, openapi.serve_openapi),
    ]
    if state.metrics is not None:
        routes.append(web.get("/metrics", health.serve_metrics))
    if state.webhook_sink is not None:
        routes.append(web.post(webhooks.WEBHOOK_PATH, webhooks.receive_rcs_webhook))
        routes.append(web.post(webhooks.WEBHOOK_PATH + "/{bot_id}", webhooks.receive_rcs_webhook))
    app.add_routes(routes)
    return app
