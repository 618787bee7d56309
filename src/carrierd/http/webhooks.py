"""``POST /v1/webhooks/rcs/{bot_id}``: the +Message platform's status and
inbound events of one official account (bot). Each bot's webhook URL at the
platform names the bot; its events are verified with that bot's webhook
secret and can touch only the messages of that bot's account. The bare
``POST /v1/webhooks/rcs`` is the [rcs] bot_id's (configurations from before
accounts had bots of their own). A bot we do not know is 404.

This module only checks and reads the request; what an event does to a
message belongs to the engine, reached through `WebhookSink`. The route
exists only when ApiState.webhook_sink is set (+Message configured).

Answers: 204 once the sink has applied the event; 200 ``{"duplicate":
true}`` for a body already applied (the platform's retry, or a replay
within the timestamp window: the sink keeps a durable key per body, the
SHA-256 of the bot id and its bytes, and applies each once); 401 for a missing or wrong
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
from carrierd.config import RcsBotConfig
from carrierd.http.app import API_STATE, api_error

log = structlog.get_logger("carrierd.http.webhooks")

WEBHOOK_PATH = "/v1/webhooks/rcs"


class WebhookSink(Protocol):
    async def apply_webhook(
        self, event: WebhookEvent, bot: RcsBotConfig, event_key: bytes | None = None
    ) -> bool:
        """Apply one verified event of `bot` to its accounts' messages only,
        once per `event_key`: False (nothing applied) when an event with
        this key was applied before."""


def webhook_event_key(body: bytes, bot_id: str) -> bytes:
    """The durable de-duplication key of a webhook: its signed bytes, as one
    bot's. The body names no bot, so one bot's event must not use up the key
    of the same bytes posted for another (a misrouted post refused for not
    being that bot's would otherwise turn the right one into a duplicate)."""
    return hashlib.sha256(bot_id.encode("utf-8") + b"\0" + body).digest()


async def receive_rcs_webhook(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    sink = state.webhook_sink
    if sink is None:  # build_app adds the route only with a sink
        raise web.HTTPNotFound()
    config = state.config
    bot_id = request.match_info.get("bot_id")
    bot = config.rcs_default_bot() if bot_id is None else config.rcs_bots.get(bot_id)
    if bot is None:
        log.warning("rcs_webhook_unknown_bot", bot_id=bot_id, remote=request.remote)
        if state.metrics is not None:
            state.metrics.webhooks_rejected_total.labels("unknown_bot").inc()
        return api_error(404, "not_found", f"no +Message official account {bot_id!r}", "bot_id")
    body = await request.read()
    secret = bot.webhook_secret
    if not secret:
        log.error("rcs_webhook_without_secret")
        return api_error(503, "not_configured", "webhooks are not configured")
    try:
        event = verify_and_parse_webhook(
            body,
            request.headers,
            secret,
            now=state.clock.now(),
            tolerance_s=config.rcs.webhook_tolerance_s,
        )
    except WebhookRejected as rejected:
        log.warning(
            "rcs_webhook_rejected",
            reason=rejected.reason,
            detail=rejected.detail,
            bot_id=bot.bot_id,
            remote=request.remote,
            body_bytes=len(body),
        )
        if state.metrics is not None:
            state.metrics.webhooks_rejected_total.labels(rejected.reason).inc()
        # The reason is the stable word (bad_signature, stale_timestamp...).
        if rejected.reason in UNAUTHORIZED_REASONS:
            return api_error(401, "webhook_unauthorized", rejected.reason)
        return api_error(400, "malformed_body", rejected.reason, "body")
    if not await sink.apply_webhook(event, bot, webhook_event_key(body, bot.bot_id)):
        log.info("rcs_webhook_duplicate", remote=request.remote, body_bytes=len(body))
        if state.metrics is not None:
            state.metrics.webhooks_rejected_total.labels("duplicate").inc()
        return web.json_response({"duplicate": True}, status=200)
    return web.Response(status=204)
