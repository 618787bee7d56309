"""The grace for a receipt: a message whose parts were all accepted stays
'sending' for engine.submitted_grace_s, and a receipt in that time settles it
straight to its final state (one row update instead of two)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carrierd.channels.types import Receipt
from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from tests.integration.engine_harness import Engine, engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 10:00 JST
GRACE_S = 3.0


async def message(db: Database, message_id: int) -> dict[str, object]:
    return (await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]


async def event_kinds(db: Database, message_id: int) -> list[str]:
    rows = await db.call_raw(
        "SELECT kind FROM message_events WHERE message_id = $1 ORDER BY id", message_id
    )
    return [r["kind"] for r in rows]


async def engine_with_one_message(
    dsn: str, db: Database, *, subscribers: dict[str, str] | None = None
) -> tuple[Engine, FakeClock, int]:
    clock = FakeClock(T0)
    config = engine_config(
        dsn, {"engine": {"pacing": False, "submitted_grace_s": GRACE_S, "lease_s": 60}}
    )
    engine = await make_engine(config, db, clock, subscribers=subscribers)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "こんにちは"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    return engine, clock, mid


async def send_and_record_responses(engine: Engine) -> None:
    """A dispatch pass whose responses are written, without draining the grace."""
    await engine.dispatcher.dispatch_once(engine.clock.now())
    await engine.dispatcher.wait_idle()
    await engine.recorder.flush_once()


async def test_receipt_within_the_grace_settles_sending_straight_to_delivered(
    dsn: str, db: Database
) -> None:
    engine, clock, mid = await engine_with_one_message(dsn, db)
    await send_and_record_responses(engine)
    responded_at = clock.now()
    row = await message(db, mid)
    assert row["state"] == "sending"
    assert engine.recorder.awaiting_receipt == 1
    [part] = await db.call_raw("SELECT state FROM parts WHERE message_id = $1", mid)
    assert part["state"] == "accepted"  # the response itself is durable at once

    clock.advance(GRACE_S - 0.5)
    smsc_id = engine.network.submitted[0].smsc_ids[0]
    # Flushed, not drained: draining would settle the grace itself.
    engine.recorder.receipt(Receipt("docomo", smsc_id, "DELIVRD", None, clock.now()))
    await engine.recorder.flush_once()
    row = await message(db, mid)
    assert row["state"] == "delivered" and row["sms_units"] == 1
    # Accepted at its response, although it never showed 'submitted'.
    assert row["submitted_at"] == responded_at
    assert await event_kinds(db, mid) == ["accepted", "sending", "delivered"]
    assert engine.recorder.awaiting_receipt == 0

    # The grace ending later writes nothing more.
    clock.advance(GRACE_S)
    await engine.recorder.flush_once()
    assert await event_kinds(db, mid) == ["accepted", "sending", "delivered"]


async def test_no_receipt_within_the_grace_marks_submitted_when_it_ends(
    dsn: str, db: Database
) -> None:
    engine, clock, mid = await engine_with_one_message(dsn, db)
    await send_and_record_responses(engine)
    responded_at = clock.now()

    clock.advance(GRACE_S - 0.001)
    await engine.recorder.flush_once()
    assert (await message(db, mid))["state"] == "sending"

    clock.advance(0.001)
    await engine.recorder.flush_once()
    row = await message(db, mid)
    assert row["state"] == "submitted"
    assert row["submitted_at"] == responded_at
    timeout_s = engine.config.carriers["docomo"].receipt_timeout_s
    assert row["receipt_deadline"] == clock.now() + timedelta(seconds=timeout_s)
    assert engine.recorder.awaiting_receipt == 0

    await engine.receipt("docomo", engine.network.submitted[0].smsc_ids[0])
    assert (await message(db, mid))["state"] == "delivered"
    assert await event_kinds(db, mid) == ["accepted", "sending", "submitted", "delivered"]


async def test_a_refusal_is_decided_at_once_whatever_the_grace(dsn: str, db: Database) -> None:
    # docomo answers "not our subscriber": the reroute must not wait.
    engine, _clock, mid = await engine_with_one_message(
        dsn, db, subscribers={"+819011112222": "au"}
    )
    await send_and_record_responses(engine)
    row = await message(db, mid)
    assert row["state"] == "queued" and row["carriers_wrong"] == ["docomo"]
    assert engine.recorder.awaiting_receipt == 0


async def test_drain_settles_every_message_still_in_its_grace(dsn: str, db: Database) -> None:
    engine, _clock, mid = await engine_with_one_message(dsn, db)
    await send_and_record_responses(engine)
    assert (await message(db, mid))["state"] == "sending"
    await engine.recorder.drain()  # shutdown
    assert (await message(db, mid))["state"] == "submitted"
    assert engine.recorder.awaiting_receipt == 0


async def test_a_daemon_lost_during_the_grace_is_settled_by_lease_recovery(
    dsn: str, db: Database
) -> None:
    engine, clock, mid = await engine_with_one_message(dsn, db)
    await send_and_record_responses(engine)
    # The daemon dies here: what it kept in memory is gone; its lease is not.
    survivor = await make_engine(engine.config, db, clock, daemon_id="d2")
    clock.advance(engine.config.engine.lease_s - 1)
    await survivor.settler.settle_once(clock.now())
    assert (await message(db, mid))["state"] == "sending"

    clock.advance(2)
    await survivor.settler.settle_once(clock.now())
    row = await message(db, mid)
    assert row["state"] == "submitted"  # every part was accepted: not "unknown"
    await survivor.receipt("docomo", engine.network.submitted[0].smsc_ids[0])
    row = await message(db, mid)
    assert row["state"] == "delivered" and row["sms_units"] == 1
