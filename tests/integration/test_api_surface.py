"""The integrator's surface over real HTTP and PostgreSQL: one error shape,
idempotency conflicts, cancel (and its race with a dispatcher's claim),
search with cursor pages, status numbers and token scopes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from carrierd.config import Config, parse_config
from carrierd.domain.clock import FakeClock
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.states import State
from carrierd.engine.cancel import Canceller, Revoke
from carrierd.engine.lifecycle import Lifecycle
from carrierd.http.app import ApiState, build_app
from carrierd.http.limits import start_http_server
from carrierd.store.db import Database, Transaction
from tests.integration.apiclient import BASE_CONFIG, auth, sync_accounts
from tests.integration.engine_harness import engine_config, make_engine

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
SMS = {"text": "ご予約ありがとうございます"}
WAIT_S = 10.0  # a bound for a wait on PostgreSQL, not a speed claim


@asynccontextmanager
async def api(
    db: Database,
    config: Config,
    clock: FakeClock,
    lifecycle: Lifecycle | None = None,
    revoke: Revoke | None = None,
) -> AsyncIterator[tuple[str, aiohttp.ClientSession, ApiState]]:
    """The real app and server, with the engine's cancel, and its ApiState
    (a test swaps `config` as a SIGHUP does)."""
    await sync_accounts(db, config)
    state = ApiState(
        config, db, clock, canceller=Canceller(db, lifecycle or Lifecycle(), clock, revoke=revoke)
    )
    runner, _ = await start_http_server(build_app(state), config.http, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession() as http:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", http, state
    finally:
        await runner.cleanup()


def config_with(dsn: str, accounts: dict[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = {
        "accounts": accounts or BASE_CONFIG["accounts"],
        "database": {"dsn": dsn},
        "http": {"port": 0},
    }
    return parse_config(raw, env={})


async def post(
    http: aiohttp.ClientSession, base: str, items: list[dict[str, Any]], token: str = "acme-token"
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{base}/v1/messages", json={"messages": items}, headers=auth(token)
    ) as resp:
        return resp.status, await resp.json()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str = "acme-token", **kw: Any
) -> tuple[int, Any, Any]:
    async with http.request(
        method, url, headers={**auth(token), **kw.pop("headers", {})}, **kw
    ) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r.headers


def assert_error(body: Any, code: str, field: str | None = None) -> None:
    assert set(body["error"]) <= {"code", "message", "field"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    if field is not None:
        assert body["error"]["field"] == field, body


# -- one error shape -----------------------------------------------------------------


async def test_every_error_is_json_with_a_stable_code(dsn: str, db: Database) -> None:
    async with api(db, config_with(dsn), FakeClock(NOW)) as (base, http, _):
        status, body, _ = await call(http, "GET", f"{base}/v1/nothing-here")
        assert status == 404
        assert_error(body, "not_found")
        status, body, headers = await call(http, "DELETE", f"{base}/v1/messages")
        assert status == 405
        assert_error(body, "method_not_allowed")
        assert "POST" in headers["Allow"]
        status, body, _ = await call(
            http,
            "POST",
            f"{base}/v1/messages",
            data=b"to=090",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 415
        assert_error(body, "unsupported_media_type", "Content-Type")
        status, body, _ = await call(http, "GET", f"{base}/v1/messages/1", token="nope")
        assert status == 401
        assert_error(body, "unknown_token")
        async with http.get(f"{base}/v1/messages/1") as resp:
            assert resp.status == 401
            assert_error(await resp.json(), "missing_token")
        status, body, _ = await call(http, "GET", f"{base}/v1/messages/1")
        assert status == 404
        assert_error(body, "not_found")
        status, body, _ = await call(http, "GET", f"{base}/v1/messages/x1")
        assert status == 400
        assert_error(body, "invalid_field", "message_id")
        status, body, _ = await call(
            http,
            "POST",
            f"{base}/v1/messages",
            data=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert status == 400
        assert_error(body, "invalid_field", "body")
        status, body = await post(http, base, [{"to": "050-1234-5678", "sms": SMS}])
        assert status == 422
        assert_error(body, "nothing_accepted", "messages[0].to")
        assert body["rejected"][0]["field"] == "to"


# -- idempotency ---------------------------------------------------------------------


async def test_same_client_ref_same_content_is_the_message_other_content_is_409(
    dsn: str, db: Database
) -> None:
    async with api(db, config_with(dsn), FakeClock(NOW)) as (base, http, _):
        item = {"to": "090-1234-5678", "sms": SMS, "client_ref": "order-1"}
        status, first = await post(http, base, [item])
        assert status == 202
        message_id = first["accepted"][0]["id"]
        # The same content spelled otherwise (E.164 number) is a retry.
        status, again = await post(http, base, [{**item, "to": "+819012345678"}])
        assert (status, again["accepted"][0]["id"]) == (202, message_id)

        status, body = await post(http, base, [{**item, "sms": {"text": "別の本文"}}])
        assert status == 409
        assert_error(body, "idempotency_conflict", "messages[0].client_ref")
        assert body["rejected"] == [
            {
                "index": 0,
                "field": "client_ref",
                "reason": body["rejected"][0]["reason"],
                "code": "idempotency_conflict",
                "message_id": message_id,
            }
        ]
        # In a batch, the conflicting item is rejected on its own.
        other = {"to": "090-1111-2222", "sms": SMS, "client_ref": "order-2"}
        status, body = await post(http, base, [other, {**item, "to": "090-9999-8888"}])
        assert status == 202
        assert [a["index"] for a in body["accepted"]] == [0]
        assert body["rejected"][0]["code"] == "idempotency_conflict"
        # Two items of one request with one reference and two contents.
        twice = {"to": "090-3333-4444", "sms": SMS, "client_ref": "order-3"}
        status, body = await post(http, base, [twice, {**twice, "sms": {"text": "違う"}}])
        assert status == 202
        assert [a["index"] for a in body["accepted"]] == [0]
        assert body["rejected"][0]["index"] == 1
        assert body["rejected"][0]["code"] == "idempotency_conflict"
        rows = await db.call_raw("SELECT count(*) AS n FROM messages WHERE request_sha256 IS NULL")
        assert rows[0]["n"] == 0  # the hash is stored with every HTTP message


# -- cancel --------------------------------------------------------------------------


async def test_cancel_scheduled_and_queued_fires_the_callback(dsn: str, db: Database) -> None:
    clock = FakeClock(NOW)
    async with api(db, config_with(dsn), clock) as (base, http, _):
        later = (NOW + timedelta(hours=1)).isoformat()
        status, body = await post(
            http,
            base,
            [
                {"to": "090-1234-5678", "sms": SMS, "send_at": later},
                {"to": "090-1234-5679", "sms": SMS, "callback_url": "https://example.com/cb"},
            ],
        )
        scheduled, queued = (a["id"] for a in body["accepted"])
        for message_id in (scheduled, queued):
            status, view, _ = await call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
            assert status == 200, view
            assert (view["state"], view["status"]) == ("cancelled", 3)
            assert view["reason"]["code"] == "cancelled_by_sender"
            assert view["history"][-1]["event"] == "cancelled"
            assert view["timestamps"]["final_at"] is not None
            # A second cancel finds it final.
            status, body, _ = await call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
            assert status == 409
            assert_error(body, "not_cancellable")
            assert body["state"] == "cancelled"
        callbacks = await db.call_raw("SELECT message_id, payload FROM status_callbacks")
        assert [(str(c["message_id"]), c["payload"]["state"]) for c in callbacks] == [
            (queued, "cancelled")
        ]
        assert callbacks[0]["payload"]["status"] == 3
        status, body, _ = await call(http, "POST", f"{base}/v1/messages/999/cancel")
        assert status == 404
        # Another account's message is not found either.
        status, body, _ = await call(
            http, "POST", f"{base}/v1/messages/{scheduled}/cancel", token="globex-token"
        )
        assert status == 404


async def test_cancel_after_the_dispatcher_sent_it_is_409_and_before_sends_nothing(
    dsn: str, db: Database
) -> None:
    config = engine_config(dsn, {"engine": {"pacing": False}})
    clock = FakeClock(NOW)
    engine = await make_engine(config, db, clock)
    async with api(db, config, clock, engine.lifecycle) as (base, http, _):
        status, body = await post(
            http, base, [{"to": "090-1234-5678", "sms": SMS}, {"to": "090-1234-5679", "sms": SMS}]
        )
        sent, kept = (int(a["id"]) for a in body["accepted"])
        status, _, _ = await call(http, "POST", f"{base}/v1/messages/{kept}/cancel")
        assert status == 200
        assert await engine.cycle() == 1
        assert {s.request.message_id for s in engine.network.submitted} == {sent}
        status, body, _ = await call(http, "POST", f"{base}/v1/messages/{sent}/cancel")
        assert status == 409
        assert_error(body, "not_cancellable")
        assert body["state"] in ("sending", "submitted")
        assert "SMSC" in body["error"]["message"]


async def test_a_cancel_racing_a_claim_waits_for_it_and_is_refused(dsn: str, db: Database) -> None:
    clock = FakeClock(NOW)
    lifecycle = Lifecycle()
    async with api(db, config_with(dsn), clock, lifecycle) as (base, http, _):
        status, body = await post(http, base, [{"to": "090-1234-5678", "sms": SMS}])
        message_id = int(body["accepted"][0]["id"])
        claimed = asyncio.Event()
        release = asyncio.Event()

        async def claim(tx: Transaction) -> None:
            # The dispatcher's own claim statement: the row is locked until
            # this transaction, which marks it sending, commits.
            rows = await tx.fetch("claim_due", NOW, ["acme"], [10], [0])
            assert [r["id"] for r in rows] == [message_id]
            claimed.set()
            await release.wait()
            move = Move(
                message_id,
                State.QUEUED,
                State.SENDING,
                Event.SENDING,
                lease_owner="d1",
                lease_until=NOW + timedelta(seconds=60),
            )
            assert len(await lifecycle.apply(tx, [move], NOW)) == 1

        claiming = asyncio.create_task(db.in_transaction(claim))
        await asyncio.wait_for(claimed.wait(), WAIT_S)
        cancelling = asyncio.create_task(
            call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
        )
        # The cancel's move waits on the claim's row lock.
        async with asyncio.timeout(WAIT_S):
            while True:
                waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                if await db.call_raw(waiting):
                    break
                await asyncio.sleep(0.01)
        release.set()
        await claiming
        status, body, _ = await cancelling
        assert status == 409, body
        assert body["state"] == "sending"
        events = await db.call_raw(
            "SELECT kind FROM message_events WHERE message_id = $1 ORDER BY id", message_id
        )
        assert [e["kind"] for e in events] == ["accepted", "sending"]


# -- search --------------------------------------------------------------------------


async def test_search_filters_and_pages_stay_stable_under_inserts(dsn: str, db: Database) -> None:
    clock = FakeClock(NOW)
    async with api(db, config_with(dsn), clock) as (base, http, _):
        ids: list[str] = []
        for i in range(5):
            item: dict[str, Any] = {"to": f"090-1234-000{i}", "sms": SMS, "client_ref": f"r{i}"}
            _, body = await post(http, base, [item])
            ids.append(body["accepted"][0]["id"])
            clock.advance(60)
        await call(http, "POST", f"{base}/v1/messages/{ids[1]}/cancel")
        url = f"{base}/v1/messages"

        status, body, _ = await call(http, "GET", url)
        assert status == 200
        assert [m["id"] for m in body["messages"]] == ids[::-1]  # newest first
        assert body["next_cursor"] is None
        for params, expected in (
            ({"state": "cancelled"}, [ids[1]]),
            ({"state": "queued,cancelled"}, ids[::-1]),
            ({"to": "09012340003"}, [ids[3]]),
            ({"to": "+819012340003"}, [ids[3]]),
            ({"client_ref": "r2"}, [ids[2]]),
            ({"client_ref": "none"}, []),
            ({"channel": "rcs"}, []),
            ({"carrier": "au"}, []),
            (
                {
                    "since": (NOW + timedelta(seconds=60)).isoformat(),
                    "until": (NOW + timedelta(seconds=180)).isoformat(),
                },
                [ids[2], ids[1]],
            ),
        ):
            status, body, _ = await call(http, "GET", url, params=params)
            assert status == 200, body
            assert [m["id"] for m in body["messages"]] == expected, params
        status, body, _ = await call(http, "GET", url, params={"state": "cancelled"})
        assert [(m["state"], m["status"]) for m in body["messages"]] == [("cancelled", 3)]

        seen: list[str] = []
        cursor: str | None = None
        inserted = False
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            status, body, _ = await call(http, "GET", url, params=params)
            assert status == 200
            seen += [m["id"] for m in body["messages"]]
            if not inserted:
                # A message accepted between two pages does not shift them.
                await post(http, base, [{"to": "090-5555-0000", "sms": SMS}])
                inserted = True
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]

        for params, field in (
            ({"state": "lost"}, "state"),
            ({"to": "050-1234-5678"}, "to"),
            ({"since": "yesterday"}, "since"),
            ({"limit": "0"}, "limit"),
            ({"limit": "501"}, "limit"),
            ({"cursor": "bm9wZQ"}, "cursor"),
            ({"channel": "fax"}, "channel"),
            ({"colour": "red"}, "colour"),
        ):
            status, body, _ = await call(http, "GET", url, params=params)
            assert status == 400, params
            assert_error(body, "invalid_field", field)


# -- scopes --------------------------------------------------------------------------


async def test_tokens_act_within_their_scopes_and_reload_without_restart(
    dsn: str, db: Database
) -> None:
    accounts = {
        "acme": {
            "tokens": ["acme-token"],
            "api_tokens": [
                {"name": "ops", "token": "manager-token", "role": "manager"},
                {"token": "viewer-token", "role": "general_user"},
                {"token": "finance-token", "scopes": ["reports"]},
            ],
        }
    }
    clock = FakeClock(NOW)
    async with api(db, config_with(dsn, accounts), clock) as (base, http, state):
        item = {"to": "090-1234-5678", "sms": SMS}
        status, body = await post(http, base, [item], token="viewer-token")
        assert status == 403
        assert_error(body, "scope_required", "scope")
        assert "'send'" in body["error"]["message"]
        status, body = await post(http, base, [item], token="manager-token")
        assert status == 202
        message_id = body["accepted"][0]["id"]
        status, _, _ = await call(http, "GET", f"{base}/v1/messages/{message_id}", "viewer-token")
        assert status == 200
        status, body, _ = await call(http, "GET", f"{base}/v1/billing", "manager-token")
        assert status == 403
        assert "'reports'" in body["error"]["message"]
        status, _, _ = await call(http, "GET", f"{base}/v1/billing", "finance-token")
        assert status == 200
        status, body, _ = await call(
            http, "GET", f"{base}/v1/messages/{message_id}", "finance-token"
        )
        assert (status, body["error"]["code"]) == (403, "scope_required")
        status, _, _ = await call(http, "GET", f"{base}/v1/billing", "acme-token")
        assert status == 200  # a plain token holds every scope

        # SIGHUP swaps the config: the manager's token rotated, the viewer's
        # promoted.
        accounts["acme"]["api_tokens"] = [
            {"token": "manager-token-2", "role": "manager"},
            {"token": "viewer-token", "role": "senior_manager"},
        ]
        state.config = config_with(dsn, accounts)
        status, body = await post(http, base, [item], token="manager-token")
        assert status == 401
        status, _ = await post(http, base, [item], token="manager-token-2")
        assert status == 202
        status, _, _ = await call(http, "GET", f"{base}/v1/billing", "viewer-token")
        assert status == 200
