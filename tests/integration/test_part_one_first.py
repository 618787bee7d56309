"""A multipart message to a carrier not yet confirmed for the recipient
sends part 1 alone, the rest only once its acceptance is durable; a crash
at any point of that neither loses the message's outcome nor sends a part
twice. A reroute spends no second token of the account's rate. Fake clock,
real PostgreSQL, the carriers' network stood in for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from carrierd.channels.types import PartOutcome, SmsRequest
from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database, Row, Transaction
from tests.integration.engine_harness import (
    Engine,
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
LEASE_S = 30
THREE_PARTS = "い" * 150


class NeverAnswers(NetworkStandIn):
    """Submits of the chosen parts reach the wire and are never answered:
    the daemon dies waiting."""

    def __init__(self, clock: FakeClock, carriers: list[str], *, stall_from_part: int) -> None:
        super().__init__(clock, carriers)
        self.stall_from_part = stall_from_part
        self.stalled: list[SmsRequest] = []

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        if request.numbers()[0] >= self.stall_from_part:
            self.stalled.append(request)
            await asyncio.Event().wait()
        return await super().submit(carrier, request)


async def parts_of(db: Database, message_id: int) -> list[tuple[int, str, str | None]]:
    rows = await db.call_raw(
        "SELECT part_no, state, unknown_cause FROM parts WHERE message_id = $1 ORDER BY part_no",
        message_id,
    )
    return [(r["part_no"], r["state"], r["unknown_cause"]) for r in rows]


async def message(db: Database, message_id: int) -> dict[str, Any]:
    rows = await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id)
    return dict(rows[0])


async def die(engine: Engine) -> None:
    for task in list(engine.dispatcher.sms_leg._in_flight):
        task.cancel()
    await asyncio.sleep(0)


async def recover(dsn: str, db: Database, clock: FakeClock) -> Engine:
    """Another daemon, once the dead one's lease ran out."""
    config = engine_config(dsn, {"engine": {"pacing": False, "lease_s": LEASE_S}})
    survivor = await make_engine(config, db, clock, daemon_id="survivor")
    clock.advance(LEASE_S + 10)
    await survivor.settler.settle_once(clock.now())
    await survivor.cycle()
    return survivor


async def test_the_other_parts_leave_only_once_part_one_is_accepted(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db, "acme", [{"to": "09012345678", "sms": {"text": THREE_PARTS}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    for _ in range(3):
        await asyncio.sleep(0)
    # Part 1 answered, its outcome not yet written: the others wait unsent.
    assert [(n, s) for n, s, _ in await parts_of(db, mid)] == [
        (1, "pending"),
        (2, "unsent"),
        (3, "unsent"),
    ]
    [probe] = engine.network.submitted
    assert probe.request.numbers() == (1,) and len(probe.smsc_ids) == 1
    # Waiting for the write-behind holds no bind window: it does not count
    # against the submits a dispatcher keeps under way.
    assert engine.dispatcher.in_flight == 0
    await engine.dispatcher.wait_idle()
    await engine.recorder.drain()
    assert [(n, s) for n, s, _ in await parts_of(db, mid)] == [
        (1, "accepted"),
        (2, "accepted"),
        (3, "accepted"),
    ]
    assert len(probe.smsc_ids) == 3  # the rest followed, to the same carrier


async def test_a_crash_after_part_one_was_accepted_sends_nothing_twice(
    dsn: str, db: Database
) -> None:
    """Part 1's acceptance is written, and with it the other parts become
    'pending'; the daemon dies before they are answered (left or not, nobody
    knows). The message ends unknown; nothing is sent again."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "lease_s": LEASE_S}})
    network = NeverAnswers(clock, list(config.carriers), stall_from_part=2)
    dead = await make_engine(config, db, clock, daemon_id="dead", network=network)
    [mid] = await enqueue(
        db, "acme", [{"to": "09012345678", "sms": {"text": THREE_PARTS}}], clock.now(), config
    )
    await dead.dispatcher.dispatch_once(clock.now())
    while not network.stalled:
        await dead.recorder.flush_once()
        await asyncio.sleep(0)
    assert [(n, s) for n, s, _ in await parts_of(db, mid)] == [
        (1, "accepted"),
        (2, "pending"),
        (3, "pending"),
    ]
    await die(dead)

    survivor = await recover(dsn, db, clock)
    assert [(n, cause) for n, _, cause in await parts_of(db, mid)] == [
        (1, None),
        (2, "daemon_stopped"),
        (3, "daemon_stopped"),
    ]
    # Every part takes the message's outcome: unknown (part 1's receipt
    # still settles it).
    assert (await message(db, mid))["state"] == "unknown"
    assert survivor.network.submitted == []
    [probe] = network.submitted
    assert len(probe.smsc_ids) == 1  # part 1, once


async def test_a_crash_before_part_one_was_answered_never_sends_the_rest(
    dsn: str, db: Database
) -> None:
    """The daemon dies with part 1 on the wire: it may have reached the
    handset, the others certainly did not. Nothing is sent again, and the
    message fails as incomplete rather than waiting forever."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "lease_s": LEASE_S}})
    network = NeverAnswers(clock, list(config.carriers), stall_from_part=1)
    dead = await make_engine(config, db, clock, daemon_id="dead", network=network)
    [mid] = await enqueue(
        db, "acme", [{"to": "09012345678", "sms": {"text": THREE_PARTS}}], clock.now(), config
    )
    await dead.dispatcher.dispatch_once(clock.now())
    for _ in range(3):
        await asyncio.sleep(0)
    await die(dead)
    [stalled] = network.stalled
    assert stalled.numbers() == (1,)

    survivor = await recover(dsn, db, clock)
    assert await parts_of(db, mid) == [
        (1, "unknown", "daemon_stopped"),
        (2, "unsent", None),
        (3, "unsent", None),
    ]
    row = await message(db, mid)
    assert (row["state"], row["reason_code"]) == ("failed", "incomplete_submission")
    assert survivor.network.submitted == []


async def test_a_reroute_spends_no_second_token_of_the_account_rate(dsn: str, db: Database) -> None:
    """40,000 messages an hour counts messages: a message the guessed carrier
    refused goes to the next one at once, without waiting for a token, while
    a new message still waits for one."""
    clock = FakeClock(T0)
    config = engine_config(
        dsn,
        {
            "accounts": {
                "acme": {
                    "tokens": ["acme-token"],
                    "rate_per_hour": 3600,  # one token a second
                    "burst": 1,
                    "senders": {"docomo": "0120111111", "au": "0120111111"},
                }
            },
        },
    )
    # 090-123 is au's block; this subscriber ported to rakuten.
    engine = await make_engine(config, db, clock, subscribers={"+819012345678": "rakuten"})
    [ported] = await enqueue(
        db, "acme", [{"to": "09012345678", "sms": {"text": "x"}}], clock.now(), config
    )
    assert await engine.cycle() == 0  # a bucket starts empty
    clock.advance(1)  # one token now
    assert await engine.cycle() == 1  # to au, refused
    [waiting] = await enqueue(
        db, "acme", [{"to": "09011112222", "sms": {"text": "y"}}], clock.now(), config
    )
    for _ in range(4):  # no time passes: no token
        await engine.cycle()
    row = await message(db, ported)
    # Refused by its block's carrier and the default order's first two, then
    # taken by rakuten: all in the instant of the one token it spent.
    assert row["carriers_wrong"] == ["au", "docomo", "softbank"]
    assert (row["carrier"], row["state"]) == ("rakuten", "submitted")
    assert (await message(db, waiting))["state"] == "queued"
    clock.advance(1)
    await engine.cycle()
    assert (await message(db, waiting))["state"] == "submitted"
    assert clock.now() == T0 + timedelta(seconds=2)  # the reroute took no time


async def test_parts_released_by_a_commit_whose_answer_was_lost_still_leave(
    dsn: str, db: Database
) -> None:
    """The flush that released parts 2 and 3 committed, and its answer was
    lost (a server restart): part 1's outcome is written again, and the
    release must say yes again, or the parts stay pending, never sent."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db, "acme", [{"to": "09012345678", "sms": {"text": THREE_PARTS}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    await engine.dispatcher.wait_idle()
    await engine.recorder.drain()

    async def release_again(tx: Transaction) -> list[Row]:
        return await tx.fetch("release_parts_after_part_one", [mid], [1], clock.now())

    await db.call_raw(
        "UPDATE parts SET state = 'pending' WHERE message_id = $1 AND part_no > 1", mid
    )
    assert [(r["message_id"], r["attempt"]) for r in await db.in_transaction(release_again)] == [
        (mid, 1)
    ]
