"""Replies to the sender: `GET /v1/inbound` over real HTTP (filters, cursor
pages), the signed push to the account's inbound_callback_url (in order per
number, retried after the receiver fails, picked up by another sender), and
a +Message chip tap on an opt-out keyword through the +Message simulator
(one confirmation, sent as +Message)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web

from carrierd.config import Config
from carrierd.domain.clock import FakeClock
from carrierd.engine.inbound import Inbound, NewInbound
from carrierd.http.app import ApiState, build_app
from carrierd.ops.callbacks import (
    CALLBACK_ID_HEADER,
    INBOUND_OUTBOX,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackSender,
    GuardedClient,
    verify_callback,
)
from carrierd.ops.retention import purge_replies
from carrierd.store.db import QUERIES, Database
from carrierd.telemetry import Metrics
from tests.integration.engine_harness import engine_config, enqueue, make_engine
from tests.integration.test_rcs_leg import CAPABLE, T0, national, plan_nodes, rig, serve

A = "+819011110001"
B = "+819011110002"
SECRET = "acme-callback-secret"


def acme(**extra: Any) -> dict[str, Any]:
    return {
        "engine": {"pacing": False},
        "accounts": {
            "acme": {
                "tokens": ["acme-token"],
                "api_tokens": [{"token": "finance-token", "scopes": ["reports"]}],
                "senders": {"docomo": "0120111111"},
                "callback_secret": SECRET,
                "callback_allow_networks": ["127.0.0.0/8"],
                **extra,
            },
            "globex": {"tokens": ["globex-token"]},
        },
    }


def sms_reply(msisdn: str, text: str, clock: FakeClock, to: str = "0120111111") -> NewInbound:
    return NewInbound(
        channel="sms",
        candidates=("acme",) if to == "0120111111" else ("globex",),
        msisdn=msisdn,
        to_address=to,
        received_at=clock.now(),
        text=text,
        carrier="docomo",
    )


async def store(db: Database, inbound: Inbound, reply: NewInbound, clock: FakeClock) -> int:
    async def work(tx: Any) -> int:
        stored = await inbound.record(tx, reply, clock.now())
        assert stored is not None
        return stored.id

    return await db.in_transaction(work)


@asynccontextmanager
async def api(config: Config, db: Database, clock: FakeClock) -> AsyncIterator[Any]:
    async with (
        serve(build_app(ApiState(config, db, clock))) as url,
        aiohttp.ClientSession() as session,
    ):

        async def get(query: str, token: str = "acme-token") -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{url}/v1/inbound{query}", headers=headers) as response:
                return response.status, await response.json()

        yield get


async def test_replies_are_listed_filtered_and_paged(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, acme())
    engine = await make_engine(config, db, clock)
    [answered] = await enqueue(db, "acme", [{"to": A, "sms": {"text": "ご予約"}}], T0, config)
    await engine.cycle()
    # As the write-behind leaves a message the SMSC accepted during its
    # receipt grace (drain settled it here): answered all the same.
    await db.call_raw("UPDATE messages SET state = 'sending', submitted_at = NULL")
    ids: list[int] = []
    for n in range(7):
        clock.advance(60)
        ids.append(
            await store(db, engine.inbound, sms_reply(A if n % 2 else B, f"r{n}", clock), clock)
        )
    await store(db, engine.inbound, sms_reply(A, "他社宛", clock, to="0120999999"), clock)
    # A send's replies (the sends feature fills send_id).
    await db.call_raw("UPDATE inbound_messages SET send_id = 42 WHERE id = $1", ids[2])
    async with api(config, db, clock) as get:
        status, body = await get("")
        assert status == 200
        assert [r["text"] for r in body["inbound"]] == [f"r{n}" for n in reversed(range(7))]
        assert body["next_cursor"] is None
        first = body["inbound"][-1]
        assert (first["channel"], first["from"], first["to"], first["kind"]) == (
            "sms",
            B,
            "0120111111",
            "text",
        )

        # Pages of 3, newest first, none repeated; a reply arriving while
        # the client pages does not shift them.
        seen: list[str] = []
        cursor = ""
        while True:
            status, page = await get(f"?limit=3{cursor}")
            assert status == 200
            seen += [r["text"] for r in page["inbound"]]
            if page["next_cursor"] is None:
                break
            if len(seen) == 3:
                clock.advance(1)
                await store(db, engine.inbound, sms_reply(B, "late", clock), clock)
            cursor = f"&cursor={page['next_cursor']}"
        assert seen == [f"r{n}" for n in reversed(range(7))]

        status, body = await get(f"?from={national(A)}")
        assert [r["text"] for r in body["inbound"]] == ["r5", "r3", "r1"]
        since = (T0 + timedelta(minutes=3)).isoformat()
        until = (T0 + timedelta(minutes=5)).isoformat()
        status, body = await get(f"?since={since}&until={until}".replace("+", "%2B"))
        assert [r["text"] for r in body["inbound"]] == ["r3", "r2"]
        status, body = await get(f"?answers={answered}")
        assert [r["text"] for r in body["inbound"]] == ["r5", "r3", "r1"]
        assert {r["answers_message_id"] for r in body["inbound"]} == {str(answered)}
        status, body = await get("?send=42")
        assert [(r["text"], r["send_id"]) for r in body["inbound"]] == [("r2", "42")]

        status, body = await get("", token="finance-token")
        assert (status, body["error"]["code"]) == (403, "scope_required")
        status, body = await get("", token="globex-token")
        assert [r["text"] for r in body["inbound"]] == ["他社宛"]
        for query, field in [
            ("?from=050-1234-5678", "from"),
            ("?answers=x", "answers"),
            ("?limit=0", "limit"),
            ("?cursor=zz", "cursor"),
            ("?since=yesterday", "since"),
            ("?to=1", "to"),
        ]:
            status, body = await get(query)
            assert (status, body["error"]["code"], body["error"]["field"]) == (
                400,
                "invalid_field",
                field,
            )


class Receiver:
    """The account's inbound endpoint: fails the first `failures` pushes
    about number A, records every push it takes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.taken: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if json.loads(body)["from"] == A and self.failures > 0:
            self.failures -= 1
            return web.Response(status=503)
        self.taken.append((dict(request.headers), body))
        return web.Response(status=204)

    def texts(self, msisdn: str) -> list[str]:
        payloads = [json.loads(body) for _, body in self.taken]
        return [p["text"] for p in payloads if p["from"] == msisdn]


async def test_pushes_are_signed_retried_and_in_order_per_number(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    receiver = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/replies", receiver.handle)
    async with serve(app) as url:
        config = engine_config(dsn, acme(inbound_callback_url=f"{url}/replies"))
        engine = await make_engine(config, db, clock)
        for msisdn, text in [(A, "a1"), (B, "b1"), (A, "a2"), (A, "a3"), (B, "b2")]:
            clock.advance(1)
            await store(db, engine.inbound, sms_reply(msisdn, text, clock), clock)

        client = GuardedClient()

        def sender() -> CallbackSender:
            return CallbackSender(
                db,
                client,
                lambda account_id: config.accounts[account_id].callback_secret,
                clock,
                Metrics(),
                allowed_networks=lambda account_id: (
                    config.accounts[account_id].callback_allow_networks
                ),
                outbox=INBOUND_OUTBOX,
            )

        try:
            first = sender()
            # a1 fails; b1 goes; a2 and a3 wait behind a1, b2 behind b1.
            await first.run_once(clock.now())
            await first.run_once(clock.now())
            assert (receiver.texts(A), receiver.texts(B)) == ([], ["b1", "b2"])
            # A restarted daemon's sender: the failed push is due after its
            # backoff, fails again, then goes, and the others follow it.
            again = sender()
            clock.advance(31)
            await again.run_once(clock.now())
            assert receiver.texts(A) == []
            clock.advance(61)
            for _ in range(3):
                await again.run_once(clock.now())
            assert receiver.texts(A) == ["a1", "a2", "a3"]
        finally:
            await client.close()

    headers, body = receiver.taken[-1]
    assert verify_callback(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert (payload["type"], payload["account_id"], payload["channel"]) == (
        "inbound",
        "acme",
        "sms",
    )
    assert headers[CALLBACK_ID_HEADER]
    states = await db.call_raw("SELECT state, attempts FROM inbound_callbacks ORDER BY id")
    assert [s["state"] for s in states] == ["sent"] * 5
    assert states[0]["attempts"] == 3


async def test_a_chip_tap_on_the_keyword_opts_out_and_is_confirmed_once(
    dsn: str, db: Database
) -> None:
    extra = acme(keywords=["停止", "STOP", "配信停止"], keyword_reply="配信を停止しました。")
    chips = {
        "text": "ご案内",
        "chips": [{"type": "reply", "text": "配信を止める", "postback": "stop"}],
    }
    async with rig(
        dsn, db, config_extra=extra, inbound_reply_share=1.0, inbound_reply_delay_s=0.0
    ) as r:
        for _ in range(2):
            await enqueue(
                db,
                "acme",
                [{"to": national(CAPABLE), "channel": "rcs", "rcs": chips}],
                r.clock.now(),
                r.engine.config,
            )
            await r.cycle()
            await r.platform_idle()
            r.clock.advance(60)

        # (The simulated handset also answers the confirmation itself.)
        taps = await db.call_raw(
            "SELECT id, kind, text, postback, keyword FROM inbound_messages"
            " WHERE kind = 'suggestion_reply' ORDER BY id"
        )
        assert [(t["kind"], t["postback"], t["keyword"]) for t in taps] == [
            ("suggestion_reply", "stop", "STOP"),
            ("suggestion_reply", "stop", "STOP"),
        ]
        assert await db.call_raw("SELECT msisdn, source FROM optouts") == [
            {"msisdn": CAPABLE, "source": "keyword"}
        ]
        [confirmation] = await db.call_raw(
            "SELECT channel, rcs_content, client_ref FROM messages WHERE client_ref IS NOT NULL"
        )
        assert confirmation["channel"] == "rcs"
        assert confirmation["client_ref"] == f"keyword-reply:{taps[0]['id']}"
        assert "配信を停止しました。" in json.dumps(confirmation["rcs_content"], ensure_ascii=False)


async def test_the_answered_message_is_found_by_index(db: Database) -> None:
    # Every reply looks up the account's last message to its number: on
    # three months of history that must not read the whole table.
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('a')")
    await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              sms_text, not_before, expires_at, submitted_at, rcs_sent_at,
                              accepted_at, updated_at)
        SELECT 'a', 'sms', 'sms', CASE WHEN i % 50 = 0 THEN 'sending' ELSE 'delivered' END,
               'x', '+8190' || lpad((i % 20000)::text, 8, '0'), true, 'x',
               $1::timestamptz, $1::timestamptz, $1::timestamptz + make_interval(secs => i),
               CASE WHEN i % 7 = 0 THEN $1::timestamptz END, $1::timestamptz, $1::timestamptz
        FROM generate_series(1, 50000) AS i
        """,
        T0,
    )
    await db.call_raw("ANALYZE messages")
    rows = await db.call_raw(
        "EXPLAIN (FORMAT JSON) " + QUERIES["inbound_answered"],
        None,
        "+819000000123",
        ["a"],
        T0 - timedelta(days=7),
    )
    raw = rows[0]["QUERY PLAN"]
    nodes = list(plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert scans
    assert not any(n["Node Type"] == "Seq Scan" for n in scans), scans


async def test_replies_and_their_pushes_go_with_retention(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, acme(inbound_callback_url="https://hooks.example.jp/r"))
    engine = await make_engine(config, db, clock)
    await store(db, engine.inbound, sms_reply(A, "old", clock), clock)
    clock.advance(86400 * 50)
    await store(db, engine.inbound, sms_reply(A, "recent", clock), clock)

    assert await purge_replies(db, T0 + timedelta(days=100, hours=1), batch_rows=1) == 1
    assert await db.call_raw("SELECT text FROM inbound_messages") == [{"text": "recent"}]
    assert len(await db.call_raw("SELECT id FROM inbound_callbacks")) == 1
