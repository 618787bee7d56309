"""Carrier guesses against the SMSC simulator (DOMAIN §4): subscribers by
the national allocation, 15% of them ported, no number table configured on
either side. The daemon's first guess is the number's block; a ported
number costs one refused submit per wrong carrier, a multipart message only
its part 1, and no carrier sees a text it will not deliver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from carrierd.channels.sms import SmppGateway
from carrierd.domain.allocation import allocated_carrier
from carrierd.domain.clock import SystemClock
from carrierd.engine.dispatcher import Dispatcher
from carrierd.engine.inbound import Inbound
from carrierd.engine.leases import Leases
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.sms_leg import SmsLeg
from carrierd.engine.timers import Timers
from carrierd.engine.write_behind import WriteBehind
from carrierd.sim.smsc import SmscSimulator, is_ported, sim_config_from_mapping
from carrierd.store.db import Database, Transaction
from tests.integration.apiclient import sync_accounts
from tests.integration.engine_harness import engine_config, enqueue

CARRIERS = ("docomo", "au", "softbank", "rakuten")
MESSAGES = 400
LONG = "お届け日時のご案内です。" * 8  # 96 characters: two parts


def numbers() -> list[str]:
    """New numbers, one per block, over 070, 080 and 090."""
    blocks = [f"0{p}{b:03d}" for p in (90, 80, 70) for b in range(100, 1000)]
    return [f"{blocks[i * 6 % len(blocks)]}{40_000 + i:05d}" for i in range(MESSAGES)]


async def test_first_guesses_by_the_allocation_and_part_one_alone_to_an_unconfirmed_carrier(
    dsn: str, db: Database
) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 7,
                "ported_share": 0.15,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.01,
                    "receipt_delay_max_s": 0.1,
                    "undeliverable_share": 0.0,
                    "expired_share": 0.0,
                },
                "carriers": {c: {"port": 0} for c in CARRIERS},
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
                c: {"port": ports[c], "system_id": "demo", "password": "demo", "window": 32}
                for c in CARRIERS
            },
        },
    )
    await sync_accounts(db, config)
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
    leases = Leases(db, lifecycle, config=lambda: config, lease_owner="guess")
    sms_leg = SmsLeg(gateway, recorder, lifecycle, config=lambda: config, lease_owner="guess")
    dispatcher = Dispatcher(
        db, clock, gateway, sms_leg, lifecycle, leases, config=lambda: config, lease_owner="guess"
    )
    settler = Timers(db, clock, recorder, lifecycle, leases, config=lambda: config)
    await gateway.start()
    flusher = asyncio.ensure_future(recorder.run())
    recipients = numbers()
    try:
        ids = await enqueue(
            db,
            "acme",
            [
                {"to": to, "sms": {"text": f"{LONG}{n}" if n % 2 else f"ご案内 {n}"}}
                for n, to in enumerate(recipients)
            ],
            clock.now(),
            config,
        )
        for _ in range(1500):
            await dispatcher.dispatch_once(clock.now())
            await settler.settle_once(clock.now())
            rows = await db.call_raw(
                "SELECT count(*) AS n FROM messages WHERE state <> 'delivered'"
            )
            if rows[0]["n"] == 0:
                break
            await asyncio.sleep(0.02)
        assert rows[0]["n"] == 0
    finally:
        flusher.cancel()
        await gateway.stop(5.0)
        await sim.stop()

    assert sim.duplicates() == []
    first = {
        r["id"]: (r["first_carrier"], r["carrier"], r["carriers_wrong"])
        for r in await db.call_raw(
            """SELECT m.id, m.carrier, m.carriers_wrong, p.carrier AS first_carrier
               FROM messages m
               JOIN parts p ON p.message_id = m.id AND p.attempt = 1 AND p.part_no = 1"""
        )
    }
    ported = {mid for mid, to in zip(ids, recipients, strict=True) if is_ported(sim.config, to)}
    assert 0.07 < len(ported) / MESSAGES < 0.25
    for mid, to in zip(ids, recipients, strict=True):
        first_carrier, final, wrong = first[mid]
        if mid in ported:
            # Ported: the block's carrier first, refused, then another.
            assert first_carrier == allocated_carrier("+81" + to[1:]) != final
            assert wrong[0] == first_carrier
        elif allocated_carrier("+81" + to[1:]) is not None:
            assert (first_carrier, wrong) == (final, [])
    # Each wrong carrier cost exactly one refused submit: part 1 alone.
    refused = await db.call_raw(
        "SELECT part_no, count(*) AS n FROM parts WHERE state = 'refused' GROUP BY part_no"
    )
    assert {r["part_no"]: r["n"] for r in refused} == {
        1: sum(len(wrong) for _, _, wrong in first.values())
    }
    # The SMSCs agree: what they refused as another carrier's subscriber is
    # exactly those part 1s; none of them accepted a part it could not deliver.
    assert sum(c.not_subscriber for c in sim.counters.carriers.values()) == sum(
        r["n"] for r in refused
    )
    # Two-part messages: the parts after 1 went to the delivering carrier only.
    stray = await db.call_raw(
        """SELECT count(*) AS n FROM parts p JOIN messages m ON m.id = p.message_id
           WHERE p.part_no > 1 AND p.state <> 'unsent' AND p.carrier <> m.carrier"""
    )
    assert stray[0]["n"] == 0
    # A delivery confirms the carrier: the next long message goes whole.
    learned = await db.call_raw("SELECT count(*) AS n FROM carrier_learned")
    assert learned[0]["n"] == MESSAGES


async def test_two_deliveries_to_one_new_number_in_one_flush_learn_it_once(db: Database) -> None:
    """Both are the number's first delivery: PostgreSQL refuses an upsert
    that takes one row twice, and the whole flush failed with it."""
    now = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)

    async def learn(tx: Transaction) -> None:
        await tx.execute(
            "learn_carriers", ["+819012345678", "+819012345678"], ["au", "au"], [now, now]
        )

    await db.in_transaction(learn)
    rows = await db.call_raw("SELECT msisdn, carrier FROM carrier_learned")
    assert [(r["msisdn"], r["carrier"]) for r in rows] == [("+819012345678", "au")]
