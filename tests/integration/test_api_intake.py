"""Intake and status over a real HTTP server and a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from tests.integration.apiclient import auth, make_config, running_api

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


async def test_accepts_valid_items_rejects_invalid_ones_and_reads_back(
    dsn: str, db: Database
) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        body = {
            "messages": [
                {"to": "090-1234-5678", "sms": {"text": "ご予約ありがとうございます"}},
                {"to": "050-1234-5678", "sms": {"text": "IP phone"}},
                {"to": "09012345678", "sms": {"text": "한"}},
                {"to": "+818012345678", "sms": {"text": "あ" * 71}, "client_ref": "r-1"},
            ]
        }
        resp = await http.post(f"{base}/v1/messages", json=body, headers=auth("acme-token"))
        assert resp.status == 202
        result = await resp.json()
        assert [a["index"] for a in result["accepted"]] == [0, 3]
        assert [a["parts"] for a in result["accepted"]] == [1, 2]
        rejected = {r["index"]: r for r in result["rejected"]}
        assert rejected[1]["field"] == "to" and "ip_phone" in rejected[1]["reason"]
        assert rejected[2]["field"] == "sms.text" and "position 1" in rejected[2]["reason"]

        message_id = result["accepted"][0]["id"]
        resp = await http.get(f"{base}/v1/messages/{message_id}", headers=auth("acme-token"))
        assert resp.status == 200
        view = await resp.json()
        assert view["state"] == "queued"
        assert view["to"] == "+819012345678"
        assert view["history"][0]["event"] == "accepted"

        resp = await http.get(
            f"{base}/v1/messages", params={"client_ref": "r-1"}, headers=auth("acme-token")
        )
        found = await resp.json()
        assert found["messages"][0]["id"] == result["accepted"][1]["id"]


async def test_another_accounts_message_is_not_found(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        resp = await http.post(
            f"{base}/v1/messages",
            headers=auth("acme-token"),
            json={"messages": [{"to": "09012345678", "sms": {"text": "x"}}]},
        )
        message_id = (await resp.json())["accepted"][0]["id"]
        resp = await http.get(f"{base}/v1/messages/{message_id}", headers=auth("globex-token"))
        assert resp.status == 404
        resp = await http.get(f"{base}/v1/messages/{message_id}", headers=auth("nobody"))
        assert resp.status == 401
        resp = await http.get(f"{base}/v1/messages/{message_id}")
        assert resp.status == 401


async def test_client_ref_returns_the_existing_message(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    item = {"to": "09012345678", "sms": {"text": "one"}, "client_ref": "order-77"}
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        ids = []
        for _ in range(2):
            resp = await http.post(
                f"{base}/v1/messages", headers=auth("acme-token"), json={"messages": [item, item]}
            )
            ids += [a["id"] for a in (await resp.json())["accepted"]]
        assert len(set(ids)) == 1
        count = await db.call_raw("SELECT count(*) AS n FROM messages")
        assert count[0]["n"] == 1


async def test_malformed_requests_get_400_naming_the_field_and_write_nothing(
    dsn: str, db: Database
) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        cases = [
            (b"{not json", "body"),
            (
                json.dumps(
                    {
                        "messages": [
                            {"to": "09012345678", "sms": {"text": "a"}},
                            {"to": "09012345678", "colour": "red"},
                        ]
                    }
                ).encode(),
                "messages[1].colour",
            ),
            (json.dumps({"messages": [{"to": 9012345678}]}).encode(), "messages[0].to"),
            (
                json.dumps({"messages": [{"to": "09012345678", "sms": {"text": 5}}]}).encode(),
                "messages[0].sms.text",
            ),
            (json.dumps({"messages": "x"}).encode(), "messages"),
            (json.dumps({"messages": []}).encode(), "messages"),
            (json.dumps([1]).encode(), "body"),
        ]
        for payload, field in cases:
            resp = await http.post(
                f"{base}/v1/messages",
                data=payload,
                headers={**auth("acme-token"), "Content-Type": "application/json"},
            )
            assert resp.status == 400, payload
            assert (await resp.json())["error"]["field"] == field
        count = await db.call_raw("SELECT count(*) AS n FROM messages")
        assert count[0]["n"] == 0


async def test_request_size_limit(dsn: str, db: Database) -> None:
    config = make_config(dsn, {"http": {"port": 0, "max_body_bytes": 2048}})
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        big = {"messages": [{"to": "09012345678", "sms": {"text": "a" * 600}}] * 10}
        resp = await http.post(f"{base}/v1/messages", json=big, headers=auth("acme-token"))
        assert resp.status == 413
        assert (await resp.json())["error"]["field"] == "body"


async def test_scheduled_send_is_stored_as_scheduled(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        resp = await http.post(
            f"{base}/v1/messages",
            headers=auth("acme-token"),
            json={
                "messages": [
                    {
                        "to": "09012345678",
                        "sms": {"text": "later"},
                        "send_at": "2026-11-23T09:00+09:00",
                    },
                    {"to": "09012345678", "sms": {"text": "naive"}, "send_at": "2026-11-23T09:00"},
                ]
            },
        )
        result = await resp.json()
        assert result["rejected"][0]["field"] == "send_at"
        view = await (
            await http.get(
                f"{base}/v1/messages/{result['accepted'][0]['id']}", headers=auth("acme-token")
            )
        ).json()
        assert view["state"] == "scheduled"
        assert view["timestamps"]["send_at"] == "2026-11-23T00:00:00+00:00"


async def test_sql_feed_enqueues_atomically_with_the_callers_transaction(
    dsn: str, db: Database
) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        rows = await db.call_raw(
            "SELECT carrierd_enqueue('acme', '090-1234-5678', 'sms', 'hello', "
            "p_client_ref => 'feed-1') AS id"
        )
        message_id = rows[0]["id"]
        again = await db.call_raw(
            "SELECT carrierd_enqueue('acme', '090-1234-5678', 'sms', 'hello', "
            "p_client_ref => 'feed-1') AS id"
        )
        assert again[0]["id"] == message_id
        bad = await db.call_raw("SELECT carrierd_enqueue('acme', '090', 'fax', 'x') AS id")
        view = await (
            await http.get(f"{base}/v1/messages/{message_id}", headers=auth("acme-token"))
        ).json()
        assert view["state"] == "queued"
        bad_view = await (
            await http.get(f"{base}/v1/messages/{bad[0]['id']}", headers=auth("acme-token"))
        ).json()
        assert bad_view["state"] == "rejected"
        assert "channel" in bad_view["reason"]["text"]
