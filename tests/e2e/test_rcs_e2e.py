"""A +Message campaign with SMS fallback, end to end on a fake clock.

MESSAGES rcs_then_sms messages to distinct numbers go through the real
dispatcher, RcsLeg and settler, against real PostgreSQL, the +Message
platform simulator (about 20% of handsets capable, a quarter of those never
taking delivery) and the engine harness's SMS network stand-in. The fake
clock passes the 10-minute fallback. Every recipient must be reached exactly
once, by +Message (the simulator's counters) or by SMS (the stand-in), and
the billing counts must match §11: one +Message unit per +Message delivered
within 72 h, one SMS unit per SMS part delivered.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from carrierd.channels.types import Receipt
from carrierd.domain.clock import FakeClock
from carrierd.engine.rcs_leg import RcsClients, RcsLeg
from carrierd.http.app import ApiState, build_app
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig
from carrierd.store.db import Database
from tests.integration.engine_harness import Engine, engine_config, enqueue, make_engine
from tests.integration.test_rcs_leg import serve

MESSAGES = 10_000
T0 = datetime(2026, 11, 30, 14, 50, tzinfo=UTC)  # 23:50 JST
WEBHOOK_SECRET = "e2e-webhook-secret"
WAIT_S = 60.0  # an upper bound for the simulator's real-time work, not a speed claim


async def run_until_idle(engine: Engine, leg: RcsLeg) -> None:
    while await engine.cycle():
        await leg.wait_idle()
    await leg.wait_idle()


async def deliver_new_sms(engine: Engine, seen: set[str]) -> None:
    """Every SMS part handed over so far reaches the handset (DELIVRD)."""
    for submitted in engine.network.submitted:
        for smsc_id in submitted.smsc_ids:
            if smsc_id not in seen:
                seen.add(smsc_id)
                engine.recorder.receipt(
                    Receipt(submitted.carrier, smsc_id, "DELIVRD", None, engine.clock.now())
                )
    await engine.recorder.drain()


async def test_each_recipient_is_reached_exactly_once_and_billed_right(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    sim = RcsPlatformSim(
        RcsSimConfig(
            capable_share=0.2,
            never_deliver_share=0.25,
            delivery_delay_min_s=0.0,
            delivery_delay_max_s=0.02,
            webhook_url=f"http://127.0.0.1:{listener.getsockname()[1]}{WEBHOOK_PATH}",
            webhook_secret=WEBHOOK_SECRET,
            webhook_retry_delay_s=0.01,
            seed=11,
        ),
        clock=clock,
    )
    async with serve(sim.build_app()) as sim_url, aiohttp.ClientSession() as session:
        config = engine_config(
            dsn,
            {
                "engine": {"pacing": False},
                "rcs": {
                    "enabled": True,
                    "base_url": sim_url,
                    "bot_id": sim.config.bot_id,
                    "token": "sim-token",
                    "webhook_secret": WEBHOOK_SECRET,
                },
            },
        )
        engine = await make_engine(config, db, clock)
        metrics = engine.metrics
        leg = RcsLeg(
            db,
            clock,
            RcsClients(session),
            engine.lifecycle,
            engine.inbound,
            config=lambda: config,
            lease_owner=engine.dispatcher.lease_owner,
            metrics=metrics,
        )
        engine.dispatcher.rcs_leg = leg
        engine.settler.rcs_timers = leg
        runner = web.AppRunner(build_app(ApiState(config, db, clock, webhook_sink=leg)))
        await runner.setup()
        await web.SockSite(runner, listener).start()
        try:
            numbers = [f"0901{n:07d}" for n in range(MESSAGES)]
            for start in range(0, MESSAGES, 500):
                await enqueue(
                    db,
                    "acme",
                    [
                        {
                            "to": number,
                            "channel": "rcs_then_sms",
                            "rcs": {"text": "春のキャンペーンのお知らせ"},
                            "sms": {"text": "春のキャンペーンのお知らせ https://ex.jp/c"},
                        }
                        for number in numbers[start : start + 500]
                    ],
                    clock.now(),
                    config,
                )

            # Capability, sends, not-capable numbers straight to SMS.
            await run_until_idle(engine, leg)
            await asyncio.wait_for(sim.wait_idle(), WAIT_S)
            sms_seen: set[str] = set()
            await deliver_new_sms(engine, sms_seen)
            # Ten minutes on: the +Message nobody took goes out as SMS.
            clock.advance(601)
            while await engine.settler.settle_once(clock.now()):
                pass
            await run_until_idle(engine, leg)
            await deliver_new_sms(engine, sms_seen)
            await asyncio.wait_for(sim.wait_idle(), WAIT_S)
        finally:
            await leg.wait_idle()
            await runner.cleanup()

    counters = sim.counters
    by_sms = Counter(s.request.msisdn for s in engine.network.submitted)
    by_rcs = counters.delivered_by_recipient
    everyone = {"+81" + n[1:] for n in numbers}
    reached = {m: by_rcs[m] + by_sms[m] for m in everyone}
    assert set(reached.values()) == {1}, Counter(reached.values())
    assert set(by_sms) | set(by_rcs) == everyone

    capable = sum(1 for m in everyone if sim.is_capable(m))
    assert 0.15 * MESSAGES < capable < 0.25 * MESSAGES
    never = capable - len(by_rcs)
    assert never > 0 and len(by_rcs) > 0
    assert counters.revoked_msg_ids.total() == never
    assert counters.late_deliveries == 0
    assert max(counters.accepted_by_msg_id.values()) == 1

    states = await db.call_raw(
        "SELECT state, leg, count(*)::int AS n, sum(rcs_units)::int AS rcs,"
        " sum(sms_units)::int AS sms FROM messages GROUP BY state, leg ORDER BY leg"
    )
    assert states == [
        {"state": "delivered", "leg": "rcs", "n": len(by_rcs), "rcs": len(by_rcs), "sms": 0},
        {
            "state": "delivered",
            "leg": "sms",
            "n": MESSAGES - len(by_rcs),
            "rcs": 0,
            "sms": sum(len(s.smsc_ids) for s in engine.network.submitted),
        },
    ]
    billing = await db.call_raw(
        "SELECT month, channel, units FROM billing_counts ORDER BY month, channel"
    )
    # The campaign starts at 23:50 JST on 30 November; the fallback SMS leave
    # ten minutes later, on 1 December in JST (still November in UTC).
    assert billing == [
        {"month": "2026-11", "channel": "rcs", "units": len(by_rcs)},
        {"month": "2026-11", "channel": "sms", "units": MESSAGES - capable},
        {"month": "2026-12", "channel": "sms", "units": never},
    ]
    fallbacks = metrics.fallbacks_total
    assert fallbacks.labels("not_capable")._value.get() == MESSAGES - capable
    assert fallbacks.labels("not_delivered_in_time")._value.get() == never
