"""Follow-ups (§14) released by the lifecycle writer, in the transaction
that ends their first message: a send registered through the API, its
first messages moved by the one writer."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from carrierd.domain.clock import FakeClock
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.states import State
from carrierd.engine.lifecycle import Lifecycle
from carrierd.store.db import Database, Transaction
from tests.integration.apiclient import auth, make_config, running_api

NOW = datetime.fromisoformat("2026-12-01T00:00:00+00:00")


async def register(dsn: str, db: Database, delay_s: int, recipients: int = 3) -> list[dict]:
    send = {
        "sms": {"text": "{{n}}番 ご予約を承りました"},
        "follow_up": {"sms": {"text": "{{n}}番 前日のお知らせ"}, "delay_s": delay_s},
        "recipients": [
            {"to": f"0901234{i:04d}", "variables": {"n": str(i)}} for i in range(recipients)
        ],
    }
    async with running_api(make_config(dsn), db, FakeClock(NOW)) as (base, http):
        answer = await http.post(f"{base}/v1/sends", json=send, headers=auth("acme-token"))
        assert answer.status == 202, await answer.text()
    rows = await db.call_raw(
        "SELECT p.id AS first, f.id AS follow_up, f.state, f.not_before, f.sms_text "
        "FROM messages f JOIN messages p ON p.id = f.after_message_id ORDER BY p.send_row"
    )
    return [dict(r) for r in rows]


def to_final(message_id: int, final: State) -> list[list[Move]]:
    return [
        [Move(message_id, State.QUEUED, State.SENDING, Event.SENDING)],
        [Move(message_id, State.SENDING, State.SUBMITTED, Event.SUBMITTED)],
        [Move(message_id, State.SUBMITTED, final, Event(final.value))],
    ]


async def apply(db: Database, moves: list[Move], at: datetime) -> None:
    async def work(tx: Transaction) -> None:
        await Lifecycle().apply(tx, moves, at)

    await db.in_transaction(work)


async def follow_up_of(db: Database, first: int) -> dict:
    rows = await db.call_raw(
        "SELECT state, reason_code, not_before, expires_at FROM messages "
        "WHERE after_message_id = $1",
        first,
    )
    return dict(rows[0])


async def test_a_follow_up_waits_then_leaves_after_delivery_with_its_delay(
    dsn: str, db: Database
) -> None:
    pairs = await register(dsn, db, delay_s=600)
    assert [p["state"] for p in pairs] == ["scheduled"] * 3
    assert pairs[1]["sms_text"] == "1番 前日のお知らせ"
    delivered_at = NOW + timedelta(minutes=5)
    first = pairs[0]["first"]
    for step in to_final(first, State.DELIVERED):
        await apply(db, step, delivered_at)
    released = await follow_up_of(db, first)
    assert released["state"] == "scheduled"
    assert released["not_before"] == delivered_at + timedelta(seconds=600)
    assert released["expires_at"] > released["not_before"]
    # The others still wait: no timer takes them.
    # (asyncpg reads 'infinity' as datetime.max)
    assert (await follow_up_of(db, pairs[1]["first"]))["not_before"] == datetime.max


async def test_no_delay_queues_the_follow_up_at_once(dsn: str, db: Database) -> None:
    pairs = await register(dsn, db, delay_s=0, recipients=1)
    for step in to_final(pairs[0]["first"], State.DELIVERED):
        await apply(db, step, NOW)
    assert (await follow_up_of(db, pairs[0]["first"]))["state"] == "queued"


@pytest.mark.parametrize("final", [State.FAILED, State.EXPIRED])
async def test_a_first_message_not_delivered_skips_its_follow_up(
    dsn: str, db: Database, final: State
) -> None:
    pairs = await register(dsn, db, delay_s=0, recipients=1)
    for step in to_final(pairs[0]["first"], final):
        await apply(db, step, NOW)
    skipped = await follow_up_of(db, pairs[0]["first"])
    assert (skipped["state"], skipped["reason_code"]) == ("skipped", "parent_not_delivered")


async def test_an_unknown_outcome_waits_for_the_late_answer(dsn: str, db: Database) -> None:
    pairs = await register(dsn, db, delay_s=0, recipients=2)
    for pair, late in zip(pairs, (State.DELIVERED, State.FAILED), strict=True):
        first = pair["first"]
        for step in to_final(first, State.UNKNOWN):
            await apply(db, step, NOW)
        waiting = await follow_up_of(db, first)
        assert waiting["state"] == "scheduled"
        # Should the answer never come, the follow-up ends with its validity.
        assert waiting["expires_at"] < NOW + timedelta(days=30)
        await apply(db, [Move(first, State.UNKNOWN, late, Event(late.value))], NOW)
    assert (await follow_up_of(db, pairs[0]["first"]))["state"] == "queued"
    assert (await follow_up_of(db, pairs[1]["first"]))["state"] == "skipped"


async def test_a_cancelled_first_message_skips_its_follow_up(dsn: str, db: Database) -> None:
    pairs = await register(dsn, db, delay_s=0, recipients=1)
    first = pairs[0]["first"]
    await apply(db, [Move(first, State.QUEUED, State.CANCELLED, Event.CANCELLED)], NOW)
    assert (await follow_up_of(db, first))["state"] == "skipped"


async def test_the_release_commits_or_rolls_back_with_the_delivery(dsn: str, db: Database) -> None:
    pairs = await register(dsn, db, delay_s=0, recipients=1)
    first = pairs[0]["first"]
    for step in to_final(first, State.DELIVERED)[:2]:
        await apply(db, step, NOW)

    class Crash(Exception):
        pass

    async def work(tx: Transaction) -> None:
        await Lifecycle().apply(
            tx, [Move(first, State.SUBMITTED, State.DELIVERED, Event.DELIVERED)], NOW
        )
        raise Crash

    with pytest.raises(Crash):
        await db.in_transaction(work)
    assert (await follow_up_of(db, first))["state"] == "scheduled"
    # The delivery again (the receipt redelivered after the crash): once.
    await apply(db, [Move(first, State.SUBMITTED, State.DELIVERED, Event.DELIVERED)], NOW)
    await apply(db, [Move(first, State.SUBMITTED, State.DELIVERED, Event.DELIVERED)], NOW)
    assert (await follow_up_of(db, first))["state"] == "queued"
    events = await db.call_raw(
        "SELECT count(*)::int AS n FROM message_events e JOIN messages f ON f.id = e.message_id "
        "WHERE f.after_message_id = $1 AND e.kind = 'follow_up_released'",
        first,
    )
    assert events[0]["n"] == 1
