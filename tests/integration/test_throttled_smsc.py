"""A throttling SMSC is not hammered: the engine's claim loop, the bind pool
and the sessions against the SMSC simulator answering ESME_RTHROTTLED above
a rate per bind, with a real PostgreSQL.

Judged by counts, never by speed: throttled answers per accepted submit once
the binds have found the SMSC's pace, and history events per message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from carrierd.channels.sms import SmppGateway
from carrierd.domain.clock import SystemClock
from carrierd.engine.dispatcher import Dispatcher
from carrierd.engine.inbound import Inbound
from carrierd.engine.leases import Leases
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.sms_leg import SmsLeg
from carrierd.engine.timers import Timers
from carrierd.engine.write_behind import WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.integration.apiclient import sync_accounts
from tests.integration.engine_harness import engine_config, enqueue

MESSAGES = 400
BINDS = 2
ACCEPT_PER_S = 40.0  # per bind, at the SMSC
WINDOW = 64  # far more than the SMSC takes in a pause: a full window is a hammering
# Once this many were accepted the binds have left their first burst behind.
SETTLED_AFTER = 120
WAIT_S = 60.0  # an upper bound for a loaded machine, not a speed claim


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - polls the database and the binds
            await asyncio.sleep(0.05)


def items(numbers: list[str]) -> list[dict[str, object]]:
    return [{"to": number, "sms": {"text": f"予約 {number[-4:]}"}} for number in numbers]


async def test_a_throttling_smsc_gets_the_pace_it_accepts(dsn: str, db: Database) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 3,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.01,
                    "receipt_delay_max_s": 0.1,
                    "throttle_accept_per_s": ACCEPT_PER_S,
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
                    "binds": BINDS,
                    "window": WINDOW,
                    "number_prefixes": ["090"],
                    # No submit_rate_per_s: the default, no configured limit.
                    "throttle_pause_s": 0.2,
                }
            },
        },
    )
    await sync_accounts(db, config)
    lifecycle = Lifecycle()
    inbound = Inbound(db, config=lambda: config)
    recorder = WriteBehind(
        db,
        clock,
        lifecycle,
        inbound,
        accounts=lambda: config.accounts,
        carriers=lambda: config.carriers,
        au_spacing_s=lambda: 22.0,
    )
    gateway = SmppGateway({"docomo": config.carriers["docomo"]}, recorder, clock)
    leases = Leases(db, lifecycle, config=lambda: config, lease_owner="throttled")
    sms_leg = SmsLeg(gateway, recorder, lifecycle, config=lambda: config, lease_owner="throttled")
    dispatcher = Dispatcher(
        db,
        clock,
        gateway,
        sms_leg,
        lifecycle,
        leases,
        config=lambda: config,
        lease_owner="throttled",
    )
    settler = Timers(db, clock, recorder, lifecycle, leases, config=lambda: config)
    counters = sim.counters.carriers["docomo"]
    throttle_health_seen: list[float | None] = []

    async def delivered() -> bool:
        for bind in gateway.health()["docomo"].binds:
            if bind.state == "throttled":
                throttle_health_seen.append(bind.send_rate_per_s)
        rows = await db.call_raw("SELECT count(*) AS n FROM messages WHERE state = 'delivered'")
        return bool(rows[0]["n"] == MESSAGES)

    async def settled() -> bool:
        return counters.accepted >= SETTLED_AFTER

    await gateway.start()
    tasks = [
        asyncio.ensure_future(recorder.run()),
        asyncio.ensure_future(dispatcher.run()),
        asyncio.ensure_future(settler.run()),
    ]
    try:
        numbers = [f"090{20_000_000 + n:08d}" for n in range(MESSAGES)]
        half = MESSAGES // 2
        await enqueue(db, "acme", items(numbers[:half]), clock.now(), config)
        await wait_until(settled)
        throttled_before, accepted_before = counters.throttled, counters.accepted
        # Claimed while the binds are throttled: they must still take them.
        await enqueue(db, "acme", items(numbers[half:]), clock.now(), config)
        await wait_until(delivered)
    finally:
        settler.stop()
        await dispatcher.stop(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gateway.stop(1.0)
        await sim.stop()

    assert sim.duplicates() == []
    # With a fixed pause and a full window after it, most submits came back
    # throttled (several per accepted one); at the SMSC's pace, few do.
    throttled = counters.throttled - throttled_before
    accepted = counters.accepted - accepted_before
    assert counters.accepted == MESSAGES
    assert throttled <= 0.5 * accepted, (throttled, accepted)
    # A message waits for a throttled bind without a history event per try:
    # nothing was postponed, and no message has more than its own life's events
    # (accepted, sending, submitted, delivered).
    events = await db.call_raw(
        """SELECT count(*) FILTER (WHERE kind = 'postponed') AS postponed,
                  max(n) AS most
           FROM message_events e
           JOIN (SELECT message_id, count(*) AS n FROM message_events GROUP BY message_id) c
             USING (message_id)"""
    )
    assert events[0]["postponed"] == 0
    assert events[0]["most"] <= 4
    # The bind's health said so, with the rate it backed off to.
    assert throttle_health_seen
    assert all(rate is not None and rate >= 5.0 for rate in throttle_health_seen)
