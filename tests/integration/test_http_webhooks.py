"""POST /v1/webhooks/rcs over a real HTTP server, with a sink that records
what it is given (the engine's sink has its own tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from carrierd.channels.rcs import MessageStatusEvent, WebhookEvent, webhook_headers
from carrierd.config import Config, RcsBotConfig
from carrierd.domain.clock import FakeClock
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import make_config, running_api

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
SECRET = "http-webhook-secret"

DELIVERED = {
    "event": "messageStatus",
    "messageContact": {"userContact": "tel:+819012345678"},
    "RCSMessage": {"msgId": "m-1", "status": "delivered", "timestamp": "2026-11-22T03:00:00Z"},
}


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def apply_webhook(
        self, event: WebhookEvent, bot: RcsBotConfig, event_key: bytes | None = None
    ) -> bool:
        self.events.append(event)
        return True


def webhook_config(dsn: str, secret: str = SECRET) -> Config:
    return make_config(dsn, {"rcs": {"bot_id": "carrierd", "webhook_secret": secret}})


def rejected_count(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "carrierd_webhooks_rejected_total", {"reason": reason}
    )
    return value or 0.0


def signed(payload: Any, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"Content-Type": "application/json", **webhook_headers(body, secret, NOW)}


async def test_a_signed_event_reaches_the_sink_and_is_answered_204(dsn: str, db: Database) -> None:
    sink, metrics = RecordingSink(), Metrics()
    async with running_api(
        webhook_config(dsn), db, FakeClock(NOW), webhook_sink=sink, metrics=metrics
    ) as (base, http):
        body, headers = signed(DELIVERED)
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=body, headers=headers)
        assert resp.status == 204
    assert sink.events == [
        MessageStatusEvent(
            message_id="m-1",
            status="delivered",
            at=datetime(2026, 11, 22, 3, 0, tzinfo=UTC),
            msisdn="+819012345678",
        )
    ]


async def test_missing_or_wrong_signature_is_401_counted_and_not_applied(
    dsn: str, db: Database
) -> None:
    sink, metrics = RecordingSink(), Metrics()
    body, _ = signed(DELIVERED)
    _, forged = signed(DELIVERED, secret="someone-elses-secret")
    async with running_api(
        webhook_config(dsn), db, FakeClock(NOW), webhook_sink=sink, metrics=metrics
    ) as (base, http):
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=body)
        assert resp.status == 401
        assert (await resp.json())["error"] == {
            "code": "webhook_unauthorized",
            "message": "missing_signature",
        }
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=body, headers=forged)
        assert resp.status == 401
        assert (await resp.json())["error"] == {
            "code": "webhook_unauthorized",
            "message": "bad_signature",
        }
    assert sink.events == []
    assert rejected_count(metrics, "missing_signature") == 1
    assert rejected_count(metrics, "bad_signature") == 1


async def test_an_unreadable_body_is_400_counted_and_not_applied(dsn: str, db: Database) -> None:
    sink, metrics = RecordingSink(), Metrics()
    not_json = b"{not json"
    headers = webhook_headers(not_json, SECRET, NOW)
    unknown_body, unknown_headers = signed({"event": "somethingNew", "RCSMessage": {}})
    async with running_api(
        webhook_config(dsn), db, FakeClock(NOW), webhook_sink=sink, metrics=metrics
    ) as (base, http):
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=not_json, headers=headers)
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "code": "malformed_body",
            "message": "malformed_json",
            "field": "body",
        }
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=unknown_body, headers=unknown_headers)
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "code": "malformed_body",
            "message": "unknown_shape",
            "field": "body",
        }
    assert sink.events == []
    assert rejected_count(metrics, "malformed_json") == 1
    assert rejected_count(metrics, "unknown_shape") == 1


async def test_without_a_secret_nothing_is_applied_503(dsn: str, db: Database) -> None:
    sink = RecordingSink()
    async with running_api(
        webhook_config(dsn, secret=""), db, FakeClock(NOW), webhook_sink=sink
    ) as (base, http):
        body, headers = signed(DELIVERED)
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=body, headers=headers)
        assert resp.status == 503
        assert "error" in await resp.json()
    assert sink.events == []


async def test_without_a_sink_there_is_no_webhook_route(dsn: str, db: Database) -> None:
    async with running_api(webhook_config(dsn), db, FakeClock(NOW)) as (base, http):
        body, headers = signed(DELIVERED)
        resp = await http.post(f"{base}{WEBHOOK_PATH}", data=body, headers=headers)
        assert resp.status == 404
