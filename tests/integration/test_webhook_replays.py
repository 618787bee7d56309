"""Replayed, stale and hostile +Message webhooks against the real webhook
route, the engine's sink and a real PostgreSQL (the +Message leg's rig)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from carrierd.channels.rcs import webhook_headers
from carrierd.engine.inbound import record_webhook_event
from carrierd.ops.retention import WEBHOOK_KEYS_KEEP_DAYS, purge_webhook_keys
from carrierd.store.db import Database
from tests.integration.test_rcs_leg import (
    CAPABLE,
    NEVER,
    T0,
    WEBHOOK_SECRET,
    Rig,
    rig,
    status_payload,
)


async def post(r: Rig, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **headers}
    async with r.session.post(r.webhook_url, data=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def signed_now(r: Rig, payload: Any, skew_s: float = 0.0) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    at = r.clock.now() + timedelta(seconds=skew_s)
    return body, webhook_headers(body, WEBHOOK_SECRET, at)


def duplicates(r: Rig) -> float:
    return float(r.metrics.webhooks_rejected_total.labels("duplicate")._value.get())


async def test_a_replayed_status_is_answered_200_and_applied_once(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(NEVER, channel="rcs")
        await r.cycle()
        await r.platform_idle()
        body, headers = signed_now(r, status_payload(message_id, "delivered", NEVER))
        assert await post(r, body, headers) == (204, None)
        history = await r.events(message_id)
        assert (await r.row(message_id))["state"] == "delivered"
        # The captured request, sent again within the timestamp window.
        r.clock.advance(60)
        assert await post(r, body, headers) == (200, {"duplicate": True})
        assert await r.events(message_id) == history
        assert await r.billing() == {"rcs": 1}
        assert duplicates(r) == 1


async def test_a_reply_without_msgid_is_stored_once_however_often_it_comes(
    dsn: str, db: Database
) -> None:
    reply = {
        "event": "message",
        "messageContact": {"userContact": CAPABLE},
        "RCSMessage": {"textMessage": "はい", "timestamp": "2026-11-24T01:00:05Z"},
    }
    async with rig(dsn, db) as r:
        body, headers = signed_now(r, reply)
        assert await post(r, body, headers) == (204, None)
        assert await post(r, body, headers) == (200, {"duplicate": True})  # replayed
        r.clock.advance(120)
        _, fresh_headers = signed_now(r, reply)  # the platform's retry, signed anew
        assert await post(r, body, fresh_headers) == (200, {"duplicate": True})
        rows = await db.call_raw("SELECT text FROM inbound_messages")
        assert rows == [{"text": "はい"}]
        # Another reply (another time) is another row.
        later = {**reply, "RCSMessage": {**reply["RCSMessage"], "timestamp": "2026-11-24T01:02Z"}}
        assert await post(r, *signed_now(r, later)) == (204, None)
        assert len(await db.call_raw("SELECT id FROM inbound_messages")) == 2
        assert duplicates(r) == 2


@pytest.mark.parametrize(("skew_s", "status"), [(-301, 401), (301, 401), (-299, 204), (299, 204)])
async def test_a_timestamp_outside_the_window_is_refused(
    dsn: str, db: Database, skew_s: float, status: int
) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(NEVER, channel="rcs")
        await r.cycle()
        await r.platform_idle()
        body, headers = signed_now(r, status_payload(message_id, "delivered", NEVER), skew_s)
        answer, _ = await post(r, body, headers)
        assert answer == status
        state = (await r.row(message_id))["state"]
        assert state == ("delivered" if status == 204 else "rcs_sent")
        if status == 401:
            stale = r.metrics.webhooks_rejected_total.labels("stale_timestamp")
            assert stale._value.get() == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "malformed_json", id="100k-deep"),
        pytest.param(b'{"event": ' + b"7" * 5000 + b"}", "malformed_json", id="5000-digits"),
        pytest.param(
            b'{"event": "message", "messageContact": {"userContact": "+819012340001"},'
            b' "RCSMessage": {"textMessage": "a\\u0000b"}}',
            "unknown_shape",
            id="nul-in-text",
        ),
        pytest.param(
            b'{"event": "message", "messageContact": {"userContact": "+819012340001"},'
            b' "RCSMessage": {"msgId": "\\udc00", "textMessage": "x"}}',
            "unknown_shape",
            id="surrogate-msgid",
        ),
    ],
)
async def test_a_hostile_signed_body_is_400_and_stores_nothing(
    dsn: str, db: Database, body: bytes, reason: str
) -> None:
    async with rig(dsn, db) as r:
        headers = webhook_headers(body, WEBHOOK_SECRET, r.clock.now())
        assert await post(r, body, headers) == (
            400,
            {"error": {"code": "malformed_body", "message": reason, "field": "body"}},
        )
        assert await db.call_raw("SELECT id FROM inbound_messages") == []


async def test_webhook_keys_are_purged_after_the_retry_horizon(db: Database) -> None:
    old, recent = bytes(32), bytes([1]) * 32
    async with db.transaction() as tx:
        assert await record_webhook_event(tx, old, T0)
        assert await record_webhook_event(tx, recent, T0 + timedelta(days=3))
        assert not await record_webhook_event(tx, old, T0 + timedelta(days=3))
    assert await purge_webhook_keys(db, T0 + timedelta(days=WEBHOOK_KEYS_KEEP_DAYS, hours=1)) == 1
    rows = await db.call_raw("SELECT event_key FROM webhook_events")
    assert [bytes(r["event_key"]) for r in rows] == [recent]
