"""Every HTTP request, counted and timed per route, and the access log.

The middleware is the outermost one: it sees the status the client gets,
the error middleware's answers included. Its labels are the route's
template (``/v1/messages/{message_id}``, never the raw path, whose ids
would make a series per message), the method, and the status code.

The access log (``http.access_log = true``; off by default, read on every
request, so SIGHUP switches it) is one ``http_access`` event a request at
info: method, route, path without the query string (which may carry
numbers and client references), status, duration and the peer's address.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from carrierd.http.app import API_STATE, Handler
from carrierd.telemetry import UNMATCHED_ROUTE, http_method_label

log = structlog.get_logger("carrierd.http.access")

# The status recorded for a request whose handler was cancelled (the client
# went away) or raised past every middleware: what aiohttp then answers.
_NO_RESPONSE_STATUS = 500


def route_label(request: web.Request) -> str:
    """The template of the route that matched, or "unmatched"."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started_s = time.monotonic()
    status = _NO_RESPONSE_STATUS
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed_s = time.monotonic() - started_s
        state = request.app[API_STATE]
        route = route_label(request)
        if state.metrics is not None:
            state.metrics.observe_http_request(
                route, http_method_label(request.method), status, elapsed_s
            )
        if state.config.http.access_log:
            log.info(
                "http_access",
                method=request.method,
                route=route,
                path=request.path,
                status=status,
                duration_ms=round(elapsed_s * 1000, 3),
                peer=request.remote,
            )
