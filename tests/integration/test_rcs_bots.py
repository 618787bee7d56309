"""Two accounts, two +Message official accounts (bots), one platform: the
simulator serves both bots, each with its own token, webhook URL and webhook
secret; our leg and our webhook endpoint run on real sockets against it
(real PostgreSQL, the real dispatcher and settler, a fake clock for our
timers).

Each account's sends, capability checks and revokes go out under its own
bot; a webhook posted for one bot cannot touch the other account's message;
a reply is the account's whose bot it came to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from carrierd.channels.rcs import webhook_headers
from carrierd.domain.clock import FakeClock
from carrierd.engine.rcs_leg import RcsClients, RcsLeg
from carrierd.http.app import ApiState, build_app
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig, SimBot
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.engine_harness import Engine, engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 10:00 JST
WAIT_S = 10.0  # an upper bound for the simulator's real-time steps, not a speed claim

ACME_BOT, GLOBEX_BOT = "acme-bot", "globex-bot"
SECRETS = {ACME_BOT: "acme-webhook-secret", GLOBEX_BOT: "globex-webhook-secret"}
TOKENS = {ACME_BOT: "acme-platform-token", GLOBEX_BOT: "globex-platform-token"}
ACCOUNT_OF = {ACME_BOT: "acme", GLOBEX_BOT: "globex"}

CAPABLE = "+819012350001"
CAPABLE_2 = "+819012350002"
NEVER = "+819012350003"  # capable, never takes delivery
BLOCKED_ACME = "+819012350004"  # blocked acme's official account, not globex's
TEXT = {"text": "ご予約を承りました"}


def national(msisdn: str) -> str:
    return "0" + msisdn.removeprefix("+81")


@dataclass
class Rig:
    engine: Engine
    leg: RcsLeg
    sim: RcsPlatformSim
    clock: FakeClock
    db: Database
    metrics: Metrics
    base_url: str
    session: aiohttp.ClientSession

    async def send(self, account: str, to: str, channel: str = "rcs_then_sms") -> int:
        item: dict[str, Any] = {"to": national(to), "channel": channel, "rcs": TEXT}
        if channel == "rcs_then_sms":
            item["sms"] = {"text": "ご予約を承りました（SMS）"}
        [message_id] = await enqueue(self.db, account, [item], self.clock.now(), self.engine.config)
        return message_id

    async def cycle(self) -> int:
        claimed = await self.engine.cycle()
        await self.leg.wait_idle()
        return claimed

    async def platform_idle(self) -> None:
        await asyncio.wait_for(self.sim.wait_idle(), WAIT_S)

    async def row(self, message_id: int) -> dict[str, Any]:
        return (await self.db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]

    async def events(self, message_id: int) -> list[dict[str, Any]]:
        return await self.db.call_raw(
            "SELECT kind, detail FROM message_events WHERE message_id = $1 ORDER BY id",
            message_id,
        )

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "carrierd_webhooks_rejected_total", {"reason": reason}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def rig(dsn: str, db: Database, **sim: Any) -> AsyncIterator[Rig]:
    clock = FakeClock(T0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def bot(bot_id: str, **extra: Any) -> SimBot:
        return SimBot(
            bot_id=bot_id,
            bearer_token=TOKENS[bot_id],
            webhook_url=f"{base_url}{WEBHOOK_PATH}/{bot_id}",
            webhook_secret=SECRETS[bot_id],
            **extra,
        )

    acme = bot(ACME_BOT)
    sim_config = RcsSimConfig(
        bot_id=acme.bot_id,
        bearer_token=acme.bearer_token,
        webhook_url=acme.webhook_url,
        webhook_secret=acme.webhook_secret,
        blocked_numbers=frozenset({BLOCKED_ACME}),
        more_bots=(bot(GLOBEX_BOT),),
        capable_share=0.0,
        capable_numbers=frozenset({CAPABLE, CAPABLE_2, NEVER, BLOCKED_ACME}),
        never_deliver_numbers=frozenset({NEVER}),
        delivery_delay_min_s=0.0,
        delivery_delay_max_s=0.01,
        webhook_retry_delay_s=0.01,
        **sim,
    )
    platform = RcsPlatformSim(sim_config, clock=clock)
    async with serve(platform.build_app()) as sim_url, aiohttp.ClientSession() as session:
        config = engine_config(
            dsn,
            {
                "engine": {"pacing": False},
                "accounts": {
                    "acme": {
                        "tokens": ["acme-token"],
                        "rcs": {
                            "bot_id": ACME_BOT,
                            "token": TOKENS[ACME_BOT],
                            "webhook_secret": SECRETS[ACME_BOT],
                        },
                    },
                    # SMS only: no official account of its own, none in [rcs].
                    "initech": {"tokens": ["initech-token"]},
                    "globex": {
                        "tokens": ["globex-token"],
                        "rcs": {
                            "bot_id": GLOBEX_BOT,
                            "token": TOKENS[GLOBEX_BOT],
                            "webhook_secret": SECRETS[GLOBEX_BOT],
                        },
                    },
                },
                # No [rcs] bot_id and no [rcs] login: each account brings its own.
                "rcs": {"enabled": True, "base_url": sim_url},
            },
        )
        engine = await make_engine(config, db, clock)
        leg = RcsLeg(
            db,
            clock,
            RcsClients(
                session,
                tune=lambda c: replace(c, retry_initial_wait_s=0.01, retry_max_wait_s=0.02),
            ),
            engine.lifecycle,
            engine.inbound,
            config=lambda: config,
            lease_owner=engine.dispatcher.lease_owner,
            metrics=engine.metrics,
        )
        engine.dispatcher.rcs_leg = leg
        engine.settler.rcs_timers = leg
        api = build_app(ApiState(config, db, clock, metrics=engine.metrics, webhook_sink=leg))
        runner = web.AppRunner(api)
        await runner.setup()
        await web.SockSite(runner, listener).start()
        try:
            yield Rig(engine, leg, platform, clock, db, engine.metrics, base_url, session)
        finally:
            await leg.wait_idle()
            await runner.cleanup()


async def test_each_account_sends_under_its_own_bot(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        acme = await r.send("acme", CAPABLE)
        globex = await r.send("globex", CAPABLE)  # the same handset, the other company
        assert await r.cycle() == 2
        await r.platform_idle()

        assert r.sim.msg_ids_of(ACME_BOT) == {str(acme)}
        assert r.sim.msg_ids_of(GLOBEX_BOT) == {str(globex)}
        assert r.sim.counters.accepted_by_bot == {ACME_BOT: 1, GLOBEX_BOT: 1}
        assert r.sim.counters.wrong_bot_requests == 0
        # Each bot's delivered webhook came to its own URL, signed with its
        # own secret, and settled its own account's message.
        for message_id, bot_id in ((acme, ACME_BOT), (globex, GLOBEX_BOT)):
            row = await r.row(message_id)
            assert (row["state"], row["rcs_units"]) == ("delivered", 1)
            sent = [e for e in await r.events(message_id) if e["kind"] == "rcs_sent"]
            assert sent[0]["detail"]["bot"] == bot_id


async def test_an_account_without_a_bot_sends_no_rcs(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        relay = await r.send("initech", CAPABLE)
        rcs_only = await r.send("initech", CAPABLE_2, channel="rcs")
        await r.cycle()
        row = await r.row(relay)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        assert (await r.events(relay))[-1]["detail"]["cause"] == "no_official_account"
        failed = await r.row(rcs_only)
        assert (failed["state"], failed["reason_code"]) == ("failed", "rcs_no_official_account")
        assert r.sim.counters.capability_checks == 0
        assert not r.sim.counters.accepted_by_bot


async def test_capability_is_asked_and_cached_per_bot(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        # The recipient blocked acme's official account only.
        acme = await r.send("acme", BLOCKED_ACME)
        await r.cycle()
        row = await r.row(acme)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        # acme's "not capable" is not globex's: globex's bot is asked itself.
        globex = await r.send("globex", BLOCKED_ACME, channel="rcs")
        checks = r.sim.counters.capability_checks
        await r.cycle()
        assert r.sim.counters.capability_checks == checks + 1
        assert r.sim.msg_ids_of(GLOBEX_BOT) == {str(globex)}
        cached = await r.db.call_raw(
            "SELECT bot_id, capable FROM rcs_capabilities WHERE msisdn = $1 ORDER BY bot_id",
            BLOCKED_ACME,
        )
        assert [(c["bot_id"], c["capable"]) for c in cached] == [
            (ACME_BOT, False),
            (GLOBEX_BOT, True),
        ]


async def test_a_webhook_of_one_bot_cannot_touch_the_other_accounts_message(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        globex = await r.send("globex", NEVER, channel="rcs")
        await r.cycle()
        await r.platform_idle()
        assert (await r.row(globex))["state"] == "rcs_sent"

        # acme's bot reports globex's message delivered: signed correctly
        # for acme's bot, and refused all the same.
        await r.sim.post_status_as(ACME_BOT, str(globex), "delivered", NEVER)
        await r.platform_idle()
        row = await r.row(globex)
        assert (row["state"], row["rcs_units"]) == ("rcs_sent", 0)
        assert r.rejected("other_bot") == 1
        await r.sim.post_status_as(ACME_BOT, str(globex), "failed", NEVER)
        await r.platform_idle()
        assert (await r.row(globex))["state"] == "rcs_sent"
        assert r.rejected("other_bot") == 2

        # A body for globex's bot signed with acme's secret: refused at the door.
        body = json.dumps(
            {
                "event": "messageStatus",
                "messageContact": {"userContact": NEVER},
                "RCSMessage": {"msgId": str(globex), "status": "delivered"},
            }
        ).encode()
        headers = webhook_headers(body, SECRETS[ACME_BOT], r.clock.now())
        async with r.session.post(
            f"{r.base_url}{WEBHOOK_PATH}/{GLOBEX_BOT}", data=body, headers=headers
        ) as response:
            assert response.status == 401
        # A bot we do not know, and the bare path (no [rcs] bot_id): 404.
        for path in (f"{WEBHOOK_PATH}/someone-bot", WEBHOOK_PATH):
            async with r.session.post(f"{r.base_url}{path}", data=body, headers=headers) as resp:
                assert resp.status == 404
        assert (await r.row(globex))["state"] == "rcs_sent"

        # The same status from globex's own bot settles it.
        await r.sim.post_status_as(GLOBEX_BOT, str(globex), "delivered", NEVER)
        await r.platform_idle()
        row = await r.row(globex)
        assert (row["state"], row["rcs_units"]) == ("delivered", 1)


async def test_revokes_go_through_the_accounts_own_bot(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        globex = await r.send("globex", NEVER)
        await r.cycle()
        await r.platform_idle()
        r.clock.advance(r.engine.config.rcs.fallback_after_s)
        await r.engine.settler.settle_once(r.clock.now())
        # Revoked under globex's bot (through acme's it would be "not found").
        assert r.sim.message_state(str(globex), GLOBEX_BOT) == "cancelled"
        assert r.sim.counters.revoked_msg_ids == {str(globex): 1}
        row = await r.row(globex)
        assert (row["state"], row["leg"]) == ("queued", "sms")


async def test_replies_belong_to_the_account_whose_bot_they_came_to(dsn: str, db: Database) -> None:
    async with rig(dsn, db, inbound_reply_share=1.0, inbound_reply_delay_s=0.0) as r:
        globex = await r.send("globex", CAPABLE_2)
        await r.cycle()
        await r.platform_idle()
        r.clock.advance(5)
        acme = await r.send("acme", CAPABLE_2)
        await r.cycle()
        await r.platform_idle()
        # Unprompted text to globex's bot, although acme sent to the number
        # last: the bot says whose it is.
        await r.sim.post_text_from(CAPABLE_2, GLOBEX_BOT, "globex さん宛て")
        await r.platform_idle()
        # From a number no bot has written to: the bot alone tells the account.
        await r.sim.post_text_from(CAPABLE, ACME_BOT, "初めまして")
        await r.platform_idle()
        [first_contact] = await r.db.call_raw(
            "SELECT account_id, to_address, in_reply_to FROM inbound_messages WHERE msisdn = $1",
            CAPABLE,
        )
        assert dict(first_contact) == {
            "account_id": "acme",
            "to_address": ACME_BOT,
            "in_reply_to": None,
        }
        rows = await r.db.call_raw(
            "SELECT account_id, to_address, in_reply_to, text FROM inbound_messages"
            " WHERE channel = 'rcs' AND msisdn = $1 ORDER BY id",
            CAPABLE_2,
        )
        unprompted = rows[-1]
        assert unprompted["text"] == "globex さん宛て"
        # Its message is inferred among globex's bot's sends, never acme's
        # later one.
        assert (unprompted["account_id"], unprompted["to_address"], unprompted["in_reply_to"]) == (
            "globex",
            GLOBEX_BOT,
            globex,
        )
        # The simulated answers to each message came to its own bot.
        answers = sorted(
            (row["account_id"], row["to_address"], row["in_reply_to"]) for row in rows[:-1]
        )
        assert answers == sorted([("acme", ACME_BOT, acme), ("globex", GLOBEX_BOT, globex)])
