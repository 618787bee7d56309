"""Subscriber groups (KMC §3.4.7) through the HTTP API and the +Message
simulator: fetched from the platform page by page, listed, exported as
CSV, used as a send's recipients, and refused for sending above 250,000."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from carrierd.domain.clock import FakeClock
from carrierd.engine.inbound import Inbound
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.rcs_leg import RcsClients, RcsLeg
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig, SimBot
from carrierd.store.db import Database
from tests.integration.apiclient import auth, make_config, running_api

NOW = datetime.fromisoformat("2026-12-01T00:00:00+00:00")
ACME = auth("acme-token")
GLOBEX = auth("globex-token")


@contextlib.asynccontextmanager
async def rig(
    dsn: str, db: Database, subscribers: frozenset[str]
) -> AsyncIterator[tuple[str, aiohttp.ClientSession, RcsPlatformSim]]:
    platform = RcsPlatformSim(
        RcsSimConfig(
            bot_id="acme-bot",
            bearer_token="acme-bot-token",
            subscribers=subscribers,
            more_bots=(
                SimBot(
                    bot_id="globex-bot", bearer_token="globex-bot-token", allows_subscriptions=False
                ),
            ),
        )
    )
    runner = web.AppRunner(platform.build_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    def rcs(bot: str, allows: bool) -> dict[str, Any]:
        return {
            "bot_id": bot,
            "token": f"{bot}-token",
            "webhook_secret": "s",
            "subscriptions": allows,
        }

    config = make_config(
        dsn,
        {
            "accounts": {
                "acme": {"tokens": ["acme-token"], "rcs": rcs("acme-bot", True)},
                # Its official account says it allows them; the platform
                # does not.
                "globex": {"tokens": ["globex-token"], "rcs": rcs("globex-bot", True)},
                "initech": {"tokens": ["initech-token"]},
            },
            "rcs": {"enabled": True, "base_url": sim_url},
        },
    )
    clock = FakeClock(NOW)
    try:
        async with aiohttp.ClientSession() as platform_session:
            leg = RcsLeg(
                db,
                clock,
                RcsClients(platform_session),
                Lifecycle(),
                Inbound(db, config=lambda: config),
                config=lambda: config,
                lease_owner="test",
            )
            async with running_api(config, db, clock, subscribers=leg) as (base, http):
                yield base, http, platform
    finally:
        await runner.cleanup()


def numbers(n: int, start: int = 0) -> frozenset[str]:
    return frozenset(f"+8190{30_000_000 + i:08d}" for i in range(start, start + n))


async def test_fetch_list_export_and_send_to_a_group(dsn: str, db: Database) -> None:
    async with rig(dsn, db, numbers(25_000)) as (base, http, platform):
        async with http.post(f"{base}/v1/groups", json={"name": "会員"}, headers=ACME) as r:
            assert r.status == 201, await r.text()
            group = await r.json()
        assert group["size"] == 25_000
        # Fetched again after handsets came and went: the group is replaced.
        platform.unsubscribe("acme-bot", sorted(numbers(25_000))[:10])
        platform.subscribe("acme-bot", ["090-9999-0000", "not a number"])
        async with http.post(f"{base}/v1/groups", json={"name": "会員"}, headers=ACME) as r:
            again = await r.json()
        assert (again["id"], again["size"], again["numbers_refused"]) == (
            group["id"],
            25_000 - 10 + 1,
            1,
        )
        async with http.get(f"{base}/v1/groups", headers=ACME) as r:
            listed = (await r.json())["groups"]
        assert [(g["name"], g["size"]) for g in listed] == [("会員", 24_991)]
        async with http.get(f"{base}/v1/groups/{group['id']}/export", headers=ACME) as r:
            assert r.status == 200
            lines = (await r.text()).splitlines()
        assert lines[0] == "number" and len(lines) == 1 + 24_991
        assert "+819099990000" in lines
        # Another account sees none of it.
        async with http.get(f"{base}/v1/groups/{group['id']}/export", headers=GLOBEX) as r:
            assert r.status == 404
        send = {"sms": {"text": "会員様へのお知らせ"}, "group_id": group["id"]}
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 202, await r.text()
            answer = await r.json()
        assert answer["accepted"] == 24_991
    sent = await db.call_raw("SELECT count(DISTINCT msisdn)::int AS n FROM messages")
    assert sent[0]["n"] == 24_991


async def test_a_group_over_250000_is_refused_for_sending(dsn: str, db: Database) -> None:
    async with rig(dsn, db, numbers(250_001)) as (base, http, _):
        async with http.post(f"{base}/v1/groups", json={"name": "all"}, headers=ACME) as r:
            group = await r.json()
        assert group["size"] == 250_001
        send = {"sms": {"text": "お知らせ"}, "group_id": group["id"]}
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 422
            error = (await r.json())["error"]
    assert error["code"] == "group_too_large"
    assert "250001" in error["message"] and "250000" in error["message"]
    assert (await db.call_raw("SELECT count(*)::int AS n FROM messages"))[0]["n"] == 0


async def test_only_an_official_account_that_allows_subscriptions(dsn: str, db: Database) -> None:
    async with rig(dsn, db, numbers(3)) as (base, http, _):
        async with http.post(f"{base}/v1/groups", json={"name": "x"}, headers=GLOBEX) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "subscriptions_not_allowed"
        initech = auth("initech-token")
        async with http.post(f"{base}/v1/groups", json={"name": "x"}, headers=initech) as r:
            assert r.status == 403
        send = {"sms": {"text": "{{name}}様"}, "group_id": "1"}
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 400
            assert (await r.json())["error"]["field"] == "group_id"
