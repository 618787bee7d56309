"""Hostile HTTP clients against the daemon's own server construction (a real
server on port 0, raw sockets where a well-behaved client library would not
misbehave, a real PostgreSQL).

Deadlines here are short so the tests end soon; every wait on the server
is bounded by WAIT_S, a liveness bound and not a speed claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from carrierd.domain.clock import FakeClock
from carrierd.http.app import ApiState, build_app
from carrierd.http.limits import ConnectionGuard, start_http_server
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import auth, make_config, running_api, sync_accounts

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
WAIT_S = 10.0
GOOD = {"to": "090-1234-5678", "sms": {"text": "ご予約ありがとうございます"}}


@asynccontextmanager
async def server(
    dsn: str, db: Database, http: dict[str, Any] | None = None
) -> AsyncIterator[tuple[str, int, ConnectionGuard, Metrics]]:
    config = make_config(dsn, {"http": {"port": 0, **(http or {})}})
    await sync_accounts(db, config)
    metrics = Metrics()
    app = build_app(ApiState(config=config, db=db, clock=FakeClock(NOW), metrics=metrics))
    runner, guard = await start_http_server(
        app, config.http, metrics=metrics, host="127.0.0.1", port=0
    )
    port = int(runner.addresses[0][1])
    try:
        yield f"http://127.0.0.1:{port}", port, guard, metrics
    finally:
        await runner.cleanup()


async def post_raw(base: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/messages",
            data=body,
            headers={**auth("acme-token"), "Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def message_count(db: Database) -> int:
    return int((await db.call_raw("SELECT count(*) AS n FROM messages"))[0]["n"])


# -- inputs that reached PostgreSQL (or Python's limits) and failed a whole batch -------

ITEM_CASES = [
    pytest.param('{"client_ref": "a\\u0000b"}', "client_ref", "NUL", id="nul-client-ref"),
    pytest.param('{"client_ref": "a\\ud800b"}', "client_ref", "surrogate", id="surrogate-ref"),
    pytest.param(
        '{"callback_url": "https://example.com/\\u0000x"}', "callback_url", "NUL", id="nul-url"
    ),
    pytest.param('{"send_at": "0001-01-01T00:00:00+09:00"}', "send_at", "", id="year-1"),
    pytest.param('{"send_at": "9999-12-31T23:59:59+09:00"}', "send_at", "", id="year-9999"),
    pytest.param('{"send_at": "1900-01-01T00:00:00+09:00"}', "send_at", "past", id="year-1900"),
    pytest.param('{"send_at": "2999-01-01T00:00:00+09:00"}', "send_at", "ahead", id="year-2999"),
    pytest.param(
        '{"send_at": "2026-11-23\\u000009:00:00+09:00"}', "send_at", "", id="nul-in-send-at"
    ),
    pytest.param(
        '{"send_at": "2026-11-23T09:00:00+09:00\\u0000"}', "send_at", "", id="nul-after-send-at"
    ),
    pytest.param(
        '{"channel": "rcs", "sms": null, "rcs": {"card": {"media": {"url": "https://e.jp/a.png",'
        ' "content_type": "image/png", "size_bytes": ' + "9" * 5000 + "}}}}",
        "rcs.card.media.size_bytes",
        "out of range",
        id="5000-digit-number",
    ),
    pytest.param(
        '{"channel": "rcs", "sms": null, "rcs": {"text": "x", "chips": [{"type": "reply",'
        ' "text": "y", "postback": "z", "reply_validity_s": NaN}]}}',
        "rcs.chips[0].reply_validity_s",
        "finite",
        id="nan",
    ),
    pytest.param(
        '{"channel": "rcs", "sms": null, "rcs": {"text": "x", "chips": '
        + "[" * 40
        + "]" * 40
        + "}}",
        # Item, rcs and chips are 3 of the 16 levels an item may nest; the
        # 17th container is the one refused.
        "rcs.chips" + "[0]" * 14,
        "nested deeper",
        id="deep-inside-an-item",
    ),
    pytest.param(
        '{"callback_url": "http://127.0.0.1:8080/hook"}', "callback_url", "public", id="loopback"
    ),
    pytest.param('{"callback_url": "http://0x7f.1/hook"}', "callback_url", "public", id="0x7f.1"),
    pytest.param(
        '{"callback_url": "http://169.254.169.254/latest"}', "callback_url", "public", id="metadata"
    ),
    pytest.param('{"callback_url": "http://[::1]/hook"}', "callback_url", "public", id="ipv6-lo"),
    pytest.param('{"callback_url": "ftp://example.com/x"}', "callback_url", "http", id="ftp"),
]


@pytest.mark.parametrize(("override", "field", "words"), ITEM_CASES)
async def test_a_hostile_item_is_rejected_alone_naming_its_field(
    dsn: str, db: Database, override: str, field: str, words: str
) -> None:
    # The hostile item sits between two good ones, as raw JSON text: some of
    # these cannot be produced by json.dumps from Python values.
    good = json.dumps(GOOD, ensure_ascii=False)
    bad = good[:-1] + ", " + override[1:]
    body = f'{{"messages": [{good}, {bad}, {good}]}}'.encode()
    async with server(dsn, db) as (base, _, _, _):
        status, result = await post_raw(base, body)
    assert status == 202, result
    assert [a["index"] for a in result["accepted"]] == [0, 2]
    [rejected] = result["rejected"]
    assert (rejected["index"], rejected["field"]) == (1, field), rejected
    assert words in rejected["reason"], rejected
    assert await message_count(db) == 2


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="100k-deep"),
        pytest.param(b'{"messages": [' + b"1" * 5000 + b"]}", id="5000-digit-number"),
    ],
)
async def test_an_unreadable_body_is_400_naming_the_body(
    dsn: str, db: Database, body: bytes
) -> None:
    async with server(dsn, db) as (base, _, _, _):
        status, result = await post_raw(base, body)
    assert status == 400, result
    assert result["error"]["field"] in ("body", "messages[0]"), result
    assert await message_count(db) == 0


async def test_an_account_may_allow_callbacks_into_a_private_network(
    dsn: str, db: Database
) -> None:
    item = {**GOOD, "callback_url": "http://10.1.2.3:8080/hook"}
    body = json.dumps({"messages": [item]}).encode()
    async with server(dsn, db) as (base, _, _, _):
        status, result = await post_raw(base, body)
        assert (status, result["rejected"][0]["field"]) == (422, "callback_url")
    extra = {
        "accounts": {"acme": {"tokens": ["acme-token"], "callback_allow_networks": ["10.0.0.0/8"]}}
    }
    config = make_config(dsn, extra)
    async with running_api(config, db, FakeClock(NOW)) as (base, _):
        status, result = await post_raw(base, body)
        assert status == 202, result


async def test_schedules_near_now_are_accepted_within_the_limits(dsn: str, db: Database) -> None:
    items = [
        {**GOOD, "send_at": "2026-11-22T11:58:00+09:00"},  # 2 min ago: clock skew, sent now
        {**GOOD, "send_at": "2027-01-20T12:00:00+09:00"},  # 59 days ahead
        {**GOOD, "send_at": "2026-11-22T11:50:00+09:00"},  # 10 min ago
        {**GOOD, "send_at": "2027-01-22T12:00:00+09:00"},  # 61 days ahead
    ]
    async with server(dsn, db) as (base, _, _, _):
        status, result = await post_raw(base, json.dumps({"messages": items}).encode())
    assert status == 202
    assert [a["index"] for a in result["accepted"]] == [0, 1]
    assert [(r["index"], r["field"]) for r in result["rejected"]] == [
        (2, "send_at"),
        (3, "send_at"),
    ]


@pytest.mark.parametrize("message_id", ["²", "١", "1²", "12345678901234567890", "-1", "0x1"])
async def test_a_message_id_that_is_not_ascii_digits_is_400(
    dsn: str, db: Database, message_id: str
) -> None:
    async with server(dsn, db) as (base, _, _, _):
        # A message 1 exists: '١' (Arabic-Indic one) must not find it.
        status, _ = await post_raw(base, json.dumps({"messages": [GOOD]}).encode())
        assert status == 202
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/v1/messages/{message_id}", headers=auth("acme-token")) as resp,
        ):
            assert resp.status == 400
            assert (await resp.json())["error"]["field"] == "message_id"


@pytest.mark.parametrize("client_ref", ["a\x00b", "x" * 129])
async def test_a_client_ref_query_that_cannot_be_stored_is_400(
    dsn: str, db: Database, client_ref: str
) -> None:
    async with (
        server(dsn, db) as (base, _, _, _),
        aiohttp.ClientSession() as http,
        http.get(
            f"{base}/v1/messages", params={"client_ref": client_ref}, headers=auth("acme-token")
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["field"] == "client_ref"


async def test_rejections_make_one_metric_series_per_schema_field(dsn: str, db: Database) -> None:
    def card(j: int) -> dict[str, Any]:
        suggestion = {"type": "url", "text": "t", "postback": "p", "url": "not a url"}
        return {"title": f"card {j}", "suggestions": [suggestion] * (1 + j % 4)}

    items = [
        {
            "to": "090-1234-5678",
            "channel": "rcs",
            "rcs": {"carousel": {"cards": [{"title": "ok"}] * (i % 9) + [card(i)]}},
        }
        for i in range(1000)
    ]
    items.append({**GOOD, "rcs": {"x\x00y": 1}, "channel": "rcs"})
    async with server(dsn, db) as (base, _, _, metrics):
        status, result = await post_raw(base, json.dumps({"messages": items}).encode())
        assert status == 422
        assert len({r["field"] for r in result["rejected"]}) > 1  # the response keeps the paths
    labels = {
        sample.labels["field"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "carrierd_messages_rejected_total"
    }
    assert labels == {"rcs.carousel.cards.suggestions.url", "rcs"}


# -- slow, idle and too many connections -------------------------------------------------


async def until_closed(reader: asyncio.StreamReader) -> bytes | None:
    """What the server sent before it closed the connection, or None if it
    kept it open for WAIT_S."""
    received = b""
    try:
        async with asyncio.timeout(WAIT_S):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return received


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await until_closed(reader) is not None


async def healthz(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
        return resp.status


async def test_slowloris_headers_are_cut_off_and_others_are_served(dsn: str, db: Database) -> None:
    async with server(dsn, db, {"header_timeout_s": 0.5}) as (base, port, guard, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            # A header line now and then: always busy, never done.
            with contextlib.suppress(ConnectionError):
                for i in range(int(WAIT_S / 0.1)):
                    await asyncio.sleep(0.1)
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())
                    await writer.drain()

        trickling = asyncio.ensure_future(trickle())
        try:
            assert await closed_by_server(reader)
        finally:
            trickling.cancel()
            writer.close()
        assert await healthz(base) == 200
        assert closed_count(metrics, "header_timeout") == 1
        assert guard.open_connections <= 1


async def test_an_idle_connection_is_closed(dsn: str, db: Database) -> None:
    async with server(dsn, db, {"idle_timeout_s": 0.3}) as (_, port, guard, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader)
        writer.close()
        assert closed_count(metrics, "idle_timeout") == 1
        assert guard.open_connections == 0


async def test_a_slow_body_gets_408_and_the_connection_closes(dsn: str, db: Database) -> None:
    async with server(dsn, db, {"body_timeout_s": 0.5}) as (_, port, _, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-token\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"messages": ['
        )
        await writer.drain()
        async with asyncio.timeout(WAIT_S):
            status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert await closed_by_server(reader)
        writer.close()
        assert closed_count(metrics, "body_timeout") == 1
    assert await message_count(db) == 0


async def test_over_the_connection_limit_waiting_ones_make_room_and_requests_still_work(
    dsn: str, db: Database
) -> None:
    limit = 3
    async with server(dsn, db, {"max_connections": limit}) as (base, port, guard, metrics):
        # 10 connections that would each hold a descriptor for a minute.
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for _, writer in slow:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
        closed = await asyncio.gather(*(closed_by_server(r) for r, _ in slow[:-limit]))
        assert all(closed)
        assert guard.open_connections <= limit
        # A client in earnest displaces the longest-waiting one and is served.
        assert await healthz(base) == 200
        assert guard.open_connections <= limit
        assert closed_count(metrics, "displaced") >= 10 - limit + 1
        for _, writer in slow:
            writer.close()


async def test_at_the_limit_with_every_connection_busy_a_new_one_is_closed(
    dsn: str, db: Database
) -> None:
    limits = {"max_connections": 2, "body_timeout_s": 1.0}
    async with server(dsn, db, limits) as (base, port, _, metrics):
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in busy:
            # A complete head, half a body: the server is reading, not waiting.
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
        await asyncio.sleep(0.1)  # let the server start both requests
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await until_closed(reader) == b""  # closed without an answer
        writer.close()
        assert closed_count(metrics, "over_limit") == 1
        # The busy ones end with their body deadline; then there is room again.
        for r, _ in busy:
            assert await closed_by_server(r)
        assert await healthz(base) == 200
        for _, w in busy:
            w.close()


def closed_count(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "carrierd_http_connections_closed_total", {"reason": reason}
    )
    return value or 0.0
