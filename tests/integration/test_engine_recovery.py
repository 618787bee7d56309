"""Resends under the quiet window (§9) and crash safety, on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from carrierd.channels.types import PartOutcome, SmsRequest
from carrierd.config import Config
from carrierd.domain.clock import FakeClock
from carrierd.engine.leases import RENEWALS_PER_LEASE
from carrierd.store.db import Database
from tests.integration.engine_harness import (
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)

JST_10_00 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
JST_20_45 = datetime(2026, 11, 24, 11, 45, tzinfo=UTC)


def resend_config(dsn: str, *, at_least_once: bool = False) -> Config:
    return engine_config(
        dsn,
        {
            "engine": {"pacing": False, "lease_s": 60},
            "accounts": {
                "acme": {
                    "tokens": ["acme-token"],
                    "at_least_once": at_least_once,
                    "resend": {"max_resends": 2, "interval_s": 600, "quiet_window": "21:00-09:00"},
                }
            },
        },
    )


async def row(db: Database, message_id: int) -> dict[str, object]:
    return (await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]


async def test_failure_receipt_is_resent_after_the_interval(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await engine.cycle()
    await engine.receipt("docomo", engine.network.submitted[-1].smsc_ids[0], "UNDELIV", "001")
    r = await row(db, mid)
    assert r["state"] == "queued" and r["resends_done"] == 1
    assert r["not_before"] == clock.now() + timedelta(seconds=600)
    await engine.cycle()
    assert len(engine.network.submitted) == 1  # not before its time
    clock.advance(600)
    await engine.cycle()
    assert len(engine.network.submitted) == 2
    assert (await row(db, mid))["attempt"] == 2
    await engine.receipt("docomo", engine.network.submitted[-1].smsc_ids[0], "UNDELIV", "001")
    clock.advance(600)
    await engine.cycle()
    await engine.receipt("docomo", engine.network.submitted[-1].smsc_ids[0], "UNDELIV", "001")
    r = await row(db, mid)
    assert r["state"] == "failed" and r["reason_code"] == "resends_exhausted"
    assert len(engine.network.submitted) == 3


async def test_resend_that_would_fall_in_the_quiet_window_ends_as_failed(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(JST_20_45)
    config = resend_config(dsn)
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await engine.cycle()
    clock.advance(5 * 60)  # receipt at 20:50 JST: a resend at 21:00 is inside
    await engine.receipt("docomo", engine.network.submitted[-1].smsc_ids[0], "UNDELIV", "001")
    r = await row(db, mid)
    assert r["state"] == "failed" and r["reason_code"] == "quiet_window"


async def test_resend_just_before_the_quiet_window_is_allowed(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_20_45)
    config = resend_config(dsn)
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await engine.cycle()
    clock.advance(4 * 60 + 59)  # receipt 20:49:59: the resend at 20:59:59 is outside
    await engine.receipt("docomo", engine.network.submitted[-1].smsc_ids[0], "UNDELIV", "001")
    assert (await row(db, mid))["state"] == "queued"


class DiedMidClaim(Exception):
    """The daemon's process ended inside its claim transaction."""


class StallingNetwork(NetworkStandIn):
    """A daemon that dies after marking its messages sending: the submit
    never comes back (the process is gone)."""

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_dead_daemons_messages_are_never_resent_blindly(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    dead = await make_engine(
        config, db, clock, daemon_id="dead", network=StallingNetwork(clock, list(config.carriers))
    )
    [in_flight, claimed_only] = await enqueue(
        db,
        "acme",
        [
            {"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"},
            {"to": "09011113333", "sms": {"text": "y"}, "carrier": "docomo"},
        ],
        clock.now(),
        config,
    )
    # The dead daemon marked the first as sending (its submit "left"), and
    # died in the middle of a claim that held the second: that transaction
    # rolls back with its connection.
    await db.call_raw(
        "UPDATE messages SET not_before = not_before + interval '1 hour' WHERE id = $1",
        claimed_only,
    )
    await dead.dispatcher.dispatch_once(clock.now())
    await db.call_raw(
        "UPDATE messages SET not_before = $2 WHERE id = $1", claimed_only, clock.now()
    )
    with contextlib.suppress(DiedMidClaim):
        async with db.transaction() as tx:
            held = await tx.fetch("claim_due", clock.now(), ["acme"], [10], [0])
            assert [h["id"] for h in held] == [claimed_only]
            raise DiedMidClaim
    for task in list(dead.dispatcher.sms_leg._in_flight):
        task.cancel()
    live = await make_engine(config, db, clock, daemon_id="live")
    clock.advance(61)
    await live.settler.settle_once(clock.now())
    r = await row(db, in_flight)
    assert r["state"] == "unknown" and r["reason_text"] == "daemon stopped with the part in flight"
    assert (await row(db, claimed_only))["state"] == "queued"
    await live.cycle()
    assert [s.request.message_id for s in live.network.submitted] == [claimed_only]


async def test_at_least_once_accounts_get_ambiguous_parts_resent(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn, at_least_once=True)
    dead = await make_engine(
        config, db, clock, daemon_id="dead", network=StallingNetwork(clock, list(config.carriers))
    )
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await dead.dispatcher.dispatch_once(clock.now())
    for task in list(dead.dispatcher.sms_leg._in_flight):
        task.cancel()
    live = await make_engine(config, db, clock, daemon_id="live")
    clock.advance(61)
    await live.settler.settle_once(clock.now())
    assert (await row(db, mid))["state"] == "queued"
    await live.cycle()
    r = await row(db, mid)
    assert r["state"] == "submitted" and r["attempt"] == 2


async def test_a_daemon_restarted_under_its_id_recovers_what_it_held_before(
    dsn: str, db: Database
) -> None:
    """systemd restarts a daemon under the same id: the new process renews
    only the leases it took itself, so what the dead one held runs out and
    is recovered while the restarted daemon keeps renewing."""
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    dead = await make_engine(
        config, db, clock, daemon_id="d1", network=StallingNetwork(clock, list(config.carriers))
    )
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await dead.dispatcher.dispatch_once(clock.now())
    for task in list(dead.dispatcher.sms_leg._in_flight):
        task.cancel()
    assert (await row(db, mid))["state"] == "sending"
    restarted = await make_engine(config, db, clock, daemon_id="d1")
    renew_every_s = config.engine.lease_s / RENEWALS_PER_LEASE
    for _ in range(2 * RENEWALS_PER_LEASE):
        clock.advance(renew_every_s)
        await restarted.dispatcher.leases.renew(clock.now())
        await restarted.settler.settle_once(clock.now())
    r = await row(db, mid)
    assert r["state"] != "sending" and r["lease_owner"] is None, r


class DeadlocksOnce:
    """The database as the dispatcher sees it, aborting its first query the
    way PostgreSQL aborts the loser of a deadlock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.failures = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    async def fetch(self, name: str, *args: object) -> list[dict[str, object]]:
        if self.failures == 0:
            self.failures += 1
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return await self._db.fetch(name, *args)


async def test_the_dispatch_loop_outlives_a_deadlock(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    engine = await make_engine(config, db, clock)
    flaky = DeadlocksOnce(db)
    engine.dispatcher._db = flaky  # type: ignore[assignment]
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    loop = asyncio.ensure_future(engine.dispatcher.run())
    try:
        for _ in range(100):
            if engine.network.submitted or loop.done():
                break
            await asyncio.sleep(0.05)
        assert not loop.done(), loop.exception()
        assert flaky.failures == 1
        assert [s.request.message_id for s in engine.network.submitted] == [mid]
    finally:
        await engine.dispatcher.stop(drain_timeout_s=1.0)
        await loop


async def test_lease_renewal_never_waits_for_a_flush(dsn: str, db: Database) -> None:
    """A recorder flush locks its messages in id order until it commits;
    renewal waiting for them (in whatever order it met them) deadlocked
    against flushes. It renews the rest and leaves those to the next round."""
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    engine = await make_engine(
        config, db, clock, daemon_id="d1", network=StallingNetwork(clock, list(config.carriers))
    )
    ids = await enqueue(
        db,
        "acme",
        [{"to": f"0901111{n:04d}", "sms": {"text": "x"}, "carrier": "docomo"} for n in range(3)],
        clock.now(),
        config,
    )
    await engine.dispatcher.dispatch_once(clock.now())
    for task in list(engine.dispatcher.sms_leg._in_flight):
        task.cancel()
    renew_at = clock.now() + timedelta(minutes=59)
    renewed_until = renew_at + timedelta(seconds=config.engine.lease_s)
    async with db.transaction() as flush:
        await flush.fetch("lock_messages", [ids[1]])
        await asyncio.wait_for(engine.dispatcher.leases.renew(renew_at), 5)
    leases = {i: (await row(db, i))["lease_expires_at"] for i in ids}
    assert leases[ids[0]] == leases[ids[2]] == renewed_until
    assert leases[ids[1]] != renewed_until


async def test_renewal_rewrites_only_leases_close_to_their_end(dsn: str, db: Database) -> None:
    clock = FakeClock(JST_10_00)
    config = resend_config(dsn)
    engine = await make_engine(
        config, db, clock, daemon_id="d1", network=StallingNetwork(clock, list(config.carriers))
    )
    lease_s = config.engine.lease_s
    renew_every_s = lease_s / RENEWALS_PER_LEASE
    [old] = await enqueue(
        db, "acme", [{"to": "09011110001", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    clock.advance(renew_every_s * 0.5 + 1)
    [fresh] = await enqueue(
        db, "acme", [{"to": "09011110002", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    for task in list(engine.dispatcher.sms_leg._in_flight):
        task.cancel()
    fresh_lease = (await row(db, fresh))["lease_expires_at"]
    fresh_version = await row_version(db, fresh)

    await engine.dispatcher.leases.renew(clock.now())

    # The older lease has less than 2.5 renewal periods left: renewed. The
    # fresh one has more: its row is not written at all.
    assert (await row(db, old))["lease_expires_at"] == clock.now() + timedelta(seconds=lease_s)
    assert (await row(db, fresh))["lease_expires_at"] == fresh_lease
    assert await row_version(db, fresh) == fresh_version


async def row_version(db: Database, message_id: int) -> str:
    rows = await db.call_raw("SELECT xmin::text AS v FROM messages WHERE id = $1", message_id)
    return str(rows[0]["v"])


async def test_leases_are_renewed_while_the_claim_loop_waits(dsn: str, db: Database) -> None:
    """The claim loop waits whenever its legs are full (a throttling SMSC,
    a slow +Message platform). Its messages in flight are still this
    process's: their leases must not run out meanwhile, or the timers
    declare their parts lost while they are being sent."""
    clock = FakeClock(JST_10_00)
    config = engine_config(dsn, {"engine": {"pacing": False, "lease_s": 1}})
    engine = await make_engine(
        config, db, clock, daemon_id="d1", network=StallingNetwork(clock, list(config.carriers))
    )
    [message_id] = await enqueue(
        db, "acme", [{"to": "09011110001", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    assert (await row(db, message_id))["state"] == "sending"
    held = asyncio.Event()

    async def waiting_for_room(now: datetime) -> int:
        held.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    engine.dispatcher.dispatch_once = waiting_for_room  # type: ignore[method-assign]
    running = asyncio.ensure_future(engine.dispatcher.run())
    try:
        await asyncio.wait_for(held.wait(), 5)
        clock.advance(0.9)  # the lease (1 s) is nearly over
        lease_until = clock.now() + timedelta(seconds=1)
        for _ in range(100):
            if (await row(db, message_id))["lease_expires_at"] == lease_until:
                break
            await asyncio.sleep(0.05)
        assert (await row(db, message_id))["lease_expires_at"] == lease_until
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        for task in list(engine.dispatcher.sms_leg._in_flight):
            task.cancel()


async def test_stop_waits_for_a_claim_under_way_before_draining(dsn: str, db: Database) -> None:
    """A claim that commits after the SMS leg was drained hands its
    messages to a leg about to be torn down: they stay 'sending' with
    their parts pending. `stop` waits for the claim and its hand-over."""
    clock = FakeClock(JST_10_00)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09011110001", "sms": {"text": "x"}}], clock.now(), config
    )
    inside, go_on = asyncio.Event(), asyncio.Event()
    decide = engine.dispatcher._decide

    async def slow_decide(*args: Any, **kwargs: Any) -> None:
        inside.set()
        await go_on.wait()
        await decide(*args, **kwargs)

    engine.dispatcher._decide = slow_decide  # type: ignore[method-assign]
    claiming = asyncio.ensure_future(engine.dispatcher.dispatch_once(clock.now()))
    await asyncio.wait_for(inside.wait(), 5)
    stopping = asyncio.ensure_future(engine.dispatcher.stop(drain_timeout_s=5))
    await asyncio.sleep(0.2)
    stopped_before_the_claim_ended = stopping.done()
    go_on.set()
    await asyncio.wait_for(asyncio.gather(claiming, stopping), 10)
    assert not stopped_before_the_claim_ended
    assert [s.request.message_id for s in engine.network.submitted] == [message_id]
    assert not engine.dispatcher.sms_leg._in_flight
