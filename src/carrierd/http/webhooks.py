"""``POST /v1/webhooks/rcs``: the +Message platform's status and inbound
events.

This module only checks and reads the request; what an event does to a
message belongs to the engine, reached through `WebhookSink`. The route
exists only when ApiState.webhook_sink is set (+Message configured).

Answers: 204 once the sink has applied the event; 200 ``{"duplicate":
true}`` for a body already applied (the platform's retry, or a replay
within the timestamp window: the sink keeps a durable key per body, the
SHA-256 of its bytes, and applies each once); 401 for a missing or wrong
signature or a timestamp outside the window and 400 for a body we cannot
read (both logged ``rcs_webhook_rejected``, counted, never applied); 503
when no webhook secret is configured, since an unverifiable webhook must
not be applied. A sink failure (the database) is a 500, and the platform
sends the event again later.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import structlog
from aiohttp import web

from carrierd.channels.rcs import (
    UNAUTHORIZED_REASONS,
    WebhookEvent,
    WebhookRejected,
    verify_and_parse_webhook,
)
from carrierd.http.app import API_STATE, api_error

log = structlog.get_logger("carrierd.http.webhooks")

WEBHOOK_PATH = "/v1/webhooks/rcs"


class WebhookSink(Protocol):
    async def apply_webhook(self, event: WebhookEvent, event_key: bytes | None = None) -> bool:
        """Apply one verified event, once per `event_key`: False (nothing
        applied) when an event with this key was applied before."""


def webhook_event_key(body: bytes) -> bytes:
    """The durable de-duplication key of a webhook: its signed bytes."""
    return hashlib.sha256(body).digest()


async def receive_rcs_webhook(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    sink = state.webhook_sink
    if sink is None:  # build_app adds the route only with a sink
        raise web.HTTPNotFound()
    body = await request.read()
    secret = state.config.rcs.webhook_secret
    if not secret:
        log.error("rcs_webhook_without_secret")
        return api_error(503, "not_configured", "webhooks are not configured")
    try:
        event = verify_and_parse_webhook(
            body,
            request.headers,
            secret,
            now=state.clock.now(),
            tolerance_s=state.config.rcs.webhook_tolerance_s,
        )
    except WebhookRejected as rejected:
        log.warning(
            "rcs_webhook_rejected",
            reason=rejected.reason,
            detail=rejected.detail,
            remote=request.remote,
            body_bytes=len(body),
        )
        if state.metrics is not None:
            state.metrics.webhooks_rejected_total.labels(rejected.reason).inc()
        # The reason is the stable word (bad_signature, stale_timestamp...).
        if rejected.reason in UNAUTHORIZED_REASONS:
            return api_error(401, "webhook_unauthorized", rejected.reason)
        return api_error(400, "malformed_body", rejected.reason, "body")
    if not await sink.apply_webhook(event, webhook_event_key(body)):
        log.info("rcs_webhook_duplicate", remote=request.remote, body_bytes=len(body))
        if state.metrics is not None:
            state.metrics.webhooks_rejected_total.labels("duplicate").inc()
        return web.json_response({"duplicate": True}, status=200)
    return web.Response(status=204)
