"""The engine's decisions on a fake clock, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from carrierd.channels.types import Receipt
from carrierd.domain.clock import FakeClock
from carrierd.engine.dispatcher import RECEIPT_BACKLOG_MAX_WAIT_S
from carrierd.store.db import Database
from tests.integration.engine_harness import engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 10:00 JST


async def state_of(db: Database, message_id: int) -> dict[str, object]:
    rows = await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id)
    return rows[0]


async def test_message_is_submitted_then_delivered_and_billed(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [single, multi] = await enqueue(
        db,
        "acme",
        [
            {"to": "09011112222", "sms": {"text": "こんにちは"}, "carrier": "docomo"},
            {"to": "09011113333", "sms": {"text": "あ" * 140}, "carrier": "docomo"},
        ],
        clock.now(),
        config,
    )
    assert await engine.cycle() == 2
    assert (await state_of(db, single))["state"] == "submitted"
    sub = {s.request.message_id: s for s in engine.network.submitted}
    assert len(sub[multi].smsc_ids) == 3
    clock.advance(5)
    await engine.receipt("docomo", sub[single].smsc_ids[0])
    await engine.receipt("docomo", sub[multi].smsc_ids[0])
    assert (await state_of(db, multi))["state"] == "submitted"
    for smsc_id in sub[multi].smsc_ids[1:]:
        await engine.receipt("docomo", smsc_id)
    for mid, units in ((single, 1), (multi, 3)):
        row = await state_of(db, mid)
        assert row["state"] == "delivered" and row["sms_units"] == units
    billing = await db.call_raw("SELECT month, units FROM billing_counts WHERE account_id='acme'")
    assert billing == [{"month": "2026-11", "units": 4}]


async def test_receipt_before_response_still_finds_its_part(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    # The receipt for the id the SMSC will give arrives before the response.
    engine.network.next_ids_from(700_000)
    engine.recorder.receipt(Receipt("docomo", "700000", "DELIVRD", None, clock.now()))
    await engine.recorder.drain()
    await engine.cycle()
    row = await state_of(db, mid)
    assert row["state"] == "delivered" and row["sms_units"] == 1


async def test_rerouting_walks_every_carrier_and_learns_the_right_one(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock, subscribers={"+819044445555": "rakuten"})
    [mid] = await enqueue(
        db, "acme", [{"to": "09044445555", "sms": {"text": "x"}}], clock.now(), config
    )
    for _ in range(4):
        await engine.cycle()
    row = await state_of(db, mid)
    assert row["state"] == "submitted" and row["carrier"] == "rakuten"
    # First the carrier of the number's block (090-444: au), then the
    # default order.
    assert row["carriers_wrong"] == ["au", "docomo", "softbank"]
    history = await db.call_raw(
        "SELECT kind, carrier FROM message_events WHERE message_id=$1 ORDER BY id", mid
    )
    assert [h["kind"] for h in history].count("rerouted") == 3
    await engine.receipt("rakuten", engine.network.submitted[-1].smsc_ids[0])
    learned = await db.call_raw("SELECT carrier FROM carrier_learned")
    assert learned == [{"carrier": "rakuten"}]
    # The next message to the number goes straight to the learned carrier.
    [second] = await enqueue(
        db, "acme", [{"to": "09044445555", "sms": {"text": "y"}}], clock.now(), config
    )
    await engine.cycle()
    second_row = await state_of(db, second)
    assert second_row["carrier"] == "rakuten" and second_row["carriers_wrong"] == []


async def test_no_carrier_left_fails_and_restriction_skips(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(
        config,
        db,
        clock,
        subscribers={"+819044445555": "nowhere", "+819011112222": "docomo"},
    )
    [lost, skipped] = await enqueue(
        db,
        "acme",
        [
            {"to": "09044445555", "sms": {"text": "x"}},
            {
                "to": "09011112222",
                "sms": {"text": "x"},
                "carrier": "docomo",
                "carriers": ["au", "softbank"],
            },
        ],
        clock.now(),
        config,
    )
    for _ in range(5):
        await engine.cycle()
    assert (await state_of(db, lost))["state"] == "failed"
    assert (await state_of(db, lost))["reason_code"] == "no_carrier_left"
    row = await state_of(db, skipped)
    # Skipped only once every allowed carrier said "not our subscriber".
    assert row["state"] == "skipped" and row["sms_units"] == 0
    assert sorted(row["carriers_wrong"]) == ["au", "softbank"]
    assert row["reason_code"] == "not_in_carrier_restriction"


async def test_a_restricted_send_tries_its_carriers_before_skipping(dsn: str, db: Database) -> None:
    """DOMAIN §4: an au subscriber never seen before, restricted to au, is
    delivered by au, although the first guess for an unknown number is
    docomo (the restriction is not checked against a guess)."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock, subscribers={"+819077778888": "au"})
    [message] = await enqueue(
        db,
        "acme",
        [{"to": "09077778888", "sms": {"text": "x"}, "carriers": ["au"]}],
        clock.now(),
        config,
    )
    await engine.cycle()
    [submitted] = engine.network.submitted
    assert submitted.carrier == "au"
    await engine.receipt("au", submitted.smsc_ids[0])
    row = await state_of(db, message)
    assert row["state"] == "delivered" and row["carrier"] == "au"


async def test_receipt_timeout_settles_unknown_and_scheduled_waits(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [sb, later] = await enqueue(
        db,
        "acme",
        [
            {"to": "09011112222", "sms": {"text": "x"}, "carrier": "softbank"},
            {"to": "09011113333", "sms": {"text": "x"}, "send_at": "2026-11-24T12:00:00+09:00"},
        ],
        clock.now(),
        config,
    )
    await engine.cycle()
    assert (await state_of(db, later))["state"] == "scheduled"
    clock.advance(3599)
    await engine.settler.settle_once(clock.now())
    assert (await state_of(db, sb))["state"] == "submitted"
    clock.advance(2)  # SoftBank: 1 h receipt timeout (§9)
    await engine.settler.settle_once(clock.now())
    row = await state_of(db, sb)
    assert row["state"] == "unknown" and row["reason_code"] == "receipt_timeout"
    assert row["sms_units"] == 0
    clock.set(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))
    await engine.settler.settle_once(clock.now())
    await engine.cycle()
    assert (await state_of(db, later))["state"] == "submitted"


async def test_sql_feed_row_is_validated_at_claim(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    good = (
        await db.call_raw("SELECT carrierd_enqueue('acme', '090-1111-2222', 'sms', 'ok') AS id")
    )[0]["id"]
    bad = (
        await db.call_raw("SELECT carrierd_enqueue('acme', '050-1111-2222', 'sms', 'ok') AS id")
    )[0]["id"]
    await db.call_raw("UPDATE messages SET not_before = $1", clock.now())
    await engine.cycle()
    assert (await state_of(db, good))["state"] == "submitted"
    row = await state_of(db, bad)
    assert row["state"] == "rejected" and "ip_phone" in row["reason_text"]


async def test_only_deliveries_that_teach_the_resolver_something_are_learned(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(
        dsn,
        {
            "engine": {"pacing": False},
            "carriers": {
                "docomo": {"port": 1, "number_prefixes": ["090"]},
                "au": {"port": 1, "number_prefixes": ["080"]},
            },
        },
    )
    engine = await make_engine(config, db, clock)

    async def learned() -> dict[str, tuple[str, datetime]]:
        rows = await db.call_raw("SELECT msisdn, carrier, learned_at FROM carrier_learned")
        return {r["msisdn"]: (r["carrier"], r["learned_at"]) for r in rows}

    async def send_and_deliver(items: list[dict[str, object]]) -> None:
        await enqueue(db, "acme", items, clock.now(), config)
        engine.network.submitted.clear()
        await engine.cycle()
        for s in engine.network.submitted:
            for smsc_id in s.smsc_ids:
                await engine.receipt(s.carrier, smsc_id)

    await send_and_deliver(
        [
            # The number range says docomo: the delivery confirms it, and
            # the number's multipart messages then go whole.
            {"to": "09011112222", "sms": {"text": "x"}},
            # Named docomo against an au range: the resolver must learn it.
            {"to": "08033334444", "sms": {"text": "x"}, "carrier": "docomo"},
        ]
    )
    first = await learned()
    assert {m: c for m, (c, _) in first.items()} == {
        "+819011112222": "docomo",
        "+818033334444": "docomo",
    }

    clock.advance(60)
    # Learned docomo, delivered by docomo again: the row stays as it was.
    await send_and_deliver([{"to": "08033334444", "sms": {"text": "y"}}])
    assert engine.network.submitted[0].carrier == "docomo"
    assert await learned() == first


async def test_dispatcher_holds_claims_while_receipts_are_backlogged_but_not_for_long(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db, "acme", [{"to": "09011112222", "sms": {"text": "x"}}], clock.now(), config
    )
    engine.network.backlogged = True  # and it stays so
    loop_task = asyncio.ensure_future(engine.dispatcher.run())
    started_s = time.monotonic()
    try:
        await asyncio.sleep(RECEIPT_BACKLOG_MAX_WAIT_S / 2)  # many claim turns of the loop
        assert engine.network.submitted == []
        assert (await state_of(db, mid))["state"] == "queued"
        # New messages still flow, a claim at least every max wait.
        async with asyncio.timeout(5):
            while not engine.network.submitted:  # noqa: ASYNC110 - the stand-in has no event
                await asyncio.sleep(0.01)
        assert time.monotonic() - started_s >= RECEIPT_BACKLOG_MAX_WAIT_S
    finally:
        await engine.dispatcher.stop(drain_timeout_s=1.0)
        await loop_task
    assert engine.network.submitted[0].request.message_id == mid
