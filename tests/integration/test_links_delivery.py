"""What leaves carrierd carries the links minted at intake (DOMAIN §12):
the parts the SMSC simulator receives over real SMPP hold each recipient's
own 25-character links, as many parts as intake counted; a +Message opened
on the handset (the platform's "displayed") shows as opened_at."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from carrierd.channels.sms import SmppGateway
from carrierd.domain.clock import SystemClock
from carrierd.domain.links import LINK_WIDTH, LinkStyle
from carrierd.domain.sms_text import split_ucs2
from carrierd.engine.dispatcher import Dispatcher
from carrierd.engine.inbound import Inbound
from carrierd.engine.leases import Leases
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.sms_leg import SmsLeg
from carrierd.engine.timers import Timers
from carrierd.engine.write_behind import WriteBehind
from carrierd.intake import LinkMinting, validate_batch
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.integration.apiclient import auth, sync_accounts
from tests.integration.engine_harness import engine_config
from tests.integration.test_rcs_leg import CAPABLE, rig

STYLE = LinkStyle("s.kmc.jp")
LINK = re.compile(r" s\.kmc\.jp/[A-Za-z0-9]{14} ")
WAIT_S = 20.0  # a bound for real sockets, not a speed claim


async def test_the_smsc_receives_each_recipients_own_links(dsn: str, db: Database) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 3,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.01,
                    "receipt_delay_max_s": 0.05,
                },
                "carriers": {"docomo": {"port": 0, "subscriber_prefixes": ["090"]}},
            }
        )
    )
    ports = await sim.start()
    clock = SystemClock()
    config = engine_config(
        dsn,
        {
            "engine": {"pacing": False},
            "carriers": {
                "docomo": {
                    "host": "127.0.0.1",
                    "port": ports["docomo"],
                    "system_id": "demo",
                    "password": "demo",
                    "number_prefixes": ["090"],
                }
            },
        },
    )
    await sync_accounts(db, config)
    # 60 characters and three links: 135 as sent, three parts of 67.
    body = (
        "ご案内{{link:https://ex.jp/1}}"
        + "あ" * 54
        + "{{link:https://ex.jp/2}}停止は{{optout_url}}"
    )
    now = clock.now()
    batch = validate_batch(
        {"messages": [{"to": f"0901234000{n}", "sms": {"text": body}} for n in range(3)]},
        config.accounts["acme"],
        now,
        max_items=10,
        expiry_s=3600,
        minting=LinkMinting(STYLE, 60.0),
    )
    assert not batch.rejected and batch.parts == [3, 3, 3]
    ids = await db.insert_messages("acme", batch.rows, now)
    lifecycle = Lifecycle()
    recorder = WriteBehind(
        db,
        clock,
        lifecycle,
        Inbound(db, config=lambda: config),
        accounts=lambda: config.accounts,
        carriers=lambda: config.carriers,
        au_spacing_s=lambda: 22.0,
    )
    gateway = SmppGateway(config.carriers, recorder, clock)
    leases = Leases(db, lifecycle, config=lambda: config, lease_owner="links")
    sms_leg = SmsLeg(gateway, recorder, lifecycle, config=lambda: config, lease_owner="links")
    dispatcher = Dispatcher(
        db, clock, gateway, sms_leg, lifecycle, leases, config=lambda: config, lease_owner="links"
    )
    settler = Timers(db, clock, recorder, lifecycle, leases, config=lambda: config)
    await gateway.start()
    flusher = asyncio.ensure_future(recorder.run())
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                await dispatcher.dispatch_once(clock.now())
                await settler.settle_once(clock.now())
                rows = await db.call_raw("SELECT state FROM messages")
                if all(r["state"] == "delivered" for r in rows):
                    break
                await asyncio.sleep(0.02)
        await dispatcher.wait_idle()
        await recorder.drain()
    finally:
        flusher.cancel()
        await gateway.stop(5.0)
        await sim.stop()
    received: dict[str, list[str]] = {}
    for (destination, text), _count in sim.counters.accepted_text_parts.items():
        received.setdefault(destination, []).append(text)
    assert len(received) == 3
    codes_seen: set[str] = set()
    for row_no, message_id in ids.items():
        [stored] = await db.call_raw(
            "SELECT msisdn, sms_text, sms_parts FROM messages WHERE id = $1", message_id
        )
        parts = received[stored["msisdn"]]
        assert len(parts) == stored["sms_parts"] == 3
        # Parts arrive in any order; each is a piece of the text as stored.
        assert sorted(parts) == sorted(split_ucs2(stored["sms_text"]))
        links = LINK.findall(stored["sms_text"])
        assert len(links) == 3 and all(len(link) == LINK_WIDTH for link in links)
        minted = {link.code for link in batch.rows[row_no]["links"]}
        assert {link.strip().rsplit("/", 1)[1] for link in links} == minted
        codes_seen |= minted
    assert len(codes_seen) == 9  # every recipient its own links


async def test_a_displayed_message_shows_when_it_was_opened(dsn: str, db: Database) -> None:
    async with rig(dsn, db, displayed_share=1.0) as r:
        message_id = await r.send(CAPABLE, channel="rcs")
        await r.cycle()
        await r.platform_idle()
        [open_row] = await db.call_raw(
            "SELECT opened_at FROM message_opens WHERE message_id = $1", message_id
        )
        assert open_row["opened_at"] is not None
        api = r.webhook_url.split("/v1/")[0]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{api}/v1/messages/{message_id}", headers=auth("acme-token")) as response,
        ):
            view = await response.json()
        assert view["opened_at"] == open_row["opened_at"].isoformat()
        # A record, not a state: the message is simply delivered.
        assert view["state"] == "delivered"
        assert "opened" not in {e["event"] for e in view["history"]}


async def test_a_message_never_displayed_has_no_open_time(dsn: str, db: Database) -> None:
    async with rig(dsn, db, displayed_share=0.0) as r:
        message_id = await r.send(CAPABLE, channel="rcs")
        await r.cycle()
        await r.platform_idle()
        assert (
            await db.call_raw("SELECT 1 FROM message_opens WHERE message_id = $1", message_id) == []
        )
