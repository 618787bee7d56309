"""Pacing on a fake clock (DOMAIN §5): the account rate, shared by daemons,
and the au spacing rule. Real PostgreSQL, real dispatcher; no sleeping."""

from __future__ import annotations

import itertools
from bisect import bisect_right
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carrierd.domain.clock import FakeClock
from carrierd.engine.timers import AU_GATE_HOLD_KEEP_S
from carrierd.store.db import Database
from tests.integration.engine_harness import engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
RATE_PER_HOUR = 40_000
BURST = 100


async def insert_backlog(db: Database, account: str, count: int, at: datetime) -> None:
    await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              sms_text, sms_encoding, sms_parts, carrier_named, not_before,
                              expires_at, accepted_at, updated_at)
        SELECT $1, 'sms', 'sms', 'queued', '', '+8190' || lpad((10000000 + i)::text, 8, '0'),
               true, 'お知らせ', 'ucs2', 1, 'docomo', $2::timestamptz,
               $2::timestamptz + interval '3 days', $2::timestamptz, $2::timestamptz
        FROM generate_series(1, $3::int) AS i
        """,
        account,
        at,
        count,
    )


def max_in_window(times: list[datetime], window_s: float) -> int:
    ordered = sorted(times)
    best = 0
    for i, start in enumerate(ordered):
        end = bisect_right(ordered, start + timedelta(seconds=window_s))
        best = max(best, end - i)
    return best


async def test_one_hour_at_40000_per_hour_from_a_backlog_of_60000(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(
        dsn,
        {
            "accounts": {
                "acme": {"tokens": ["acme-token"], "rate_per_hour": RATE_PER_HOUR, "burst": BURST}
            }
        },
    )
    engine = await make_engine(config, db, clock)
    await insert_backlog(db, "acme", 60_000, T0)
    step_s = 8.0  # 89 tokens a step: below the burst, so none is lost to the cap
    while clock.now() <= T0 + timedelta(hours=1):
        await engine.cycle()
        clock.advance(step_s)
    times = [s.at for s in engine.network.submitted if s.at <= T0 + timedelta(hours=1)]
    assert abs(len(times) - RATE_PER_HOUR) <= RATE_PER_HOUR * 0.001, len(times)
    for window_s in (1.0, 10.0, 60.0, 600.0):
        allowed = BURST + RATE_PER_HOUR * window_s / 3600 + 1
        assert max_in_window(times, window_s) <= allowed, window_s
    # Oldest first: what went out is exactly the oldest part of the backlog
    # (submits within one claimed batch may interleave across recipients).
    ids = sorted(s.request.message_id for s in engine.network.submitted)
    assert ids == list(range(ids[0], ids[0] + len(ids)))


async def test_two_daemons_on_one_database_hold_the_rate_together(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    rate = 3600
    config = engine_config(
        dsn, {"accounts": {"acme": {"tokens": ["acme-token"], "rate_per_hour": rate, "burst": 20}}}
    )
    first = await make_engine(config, db, clock, daemon_id="d1")
    second = await make_engine(config, db, clock, daemon_id="d2")
    await insert_backlog(db, "acme", 5_000, T0)
    for step in range(600):
        # Take turns going first, so both daemons really compete for tokens.
        for engine in (first, second) if step % 2 else (second, first):
            await engine.cycle()
        clock.advance(1.0)
    times = [s.at for s in (*first.network.submitted, *second.network.submitted)]
    assert first.network.submitted and second.network.submitted
    assert len(times) <= rate * 600 / 3600 + 1
    assert len(times) >= rate * 600 / 3600 * 0.99
    assert max_in_window(times, 10.0) <= 20 + rate * 10 / 3600 + 1


async def test_fair_across_accounts(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "claim_batch": 100}})
    engine = await make_engine(config, db, clock)
    await insert_backlog(db, "acme", 1_000, T0)
    [small] = await enqueue(
        db, "globex", [{"to": "09099998888", "sms": {"text": "x"}, "carrier": "docomo"}], T0, config
    )
    await engine.cycle()
    assert small in {s.request.message_id for s in engine.network.submitted}


_numbers = itertools.count(10_000_000)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(receipt_delays_s=st.lists(st.floats(min_value=0.5, max_value=120.0), min_size=2, max_size=5))
async def test_au_messages_to_one_number_keep_22_seconds_after_the_previous_receipt(
    dsn: str, db: Database, receipt_delays_s: list[float]
) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    number = f"080{next(_numbers):08d}"
    ids = await enqueue(
        db,
        "acme",
        [
            {"to": number, "sms": {"text": f"message {i}"}, "carrier": "au"}
            for i in range(len(receipt_delays_s))
        ],
        clock.now(),
        config,
    )
    submitted_at: dict[int, datetime] = {}
    receipt_at: dict[int, datetime] = {}
    pending: list[tuple[datetime, int, str]] = []
    for _ in range(200):
        before = len(engine.network.submitted)
        await engine.cycle()
        for s in engine.network.submitted[before:]:
            mid = s.request.message_id
            if mid in ids:
                submitted_at[mid] = s.at
                delay = receipt_delays_s[ids.index(mid)]
                pending.append((s.at + timedelta(seconds=delay), mid, s.smsc_ids[0]))
        if len(receipt_at) == len(ids):
            break
        # Jump to the next thing that can happen: a receipt, or a held
        # message's not_before.
        nb = await db.call_raw(
            "SELECT min(not_before) AS t FROM messages WHERE state = 'queued' AND id = ANY($1)", ids
        )
        candidates = [t for t, _, _ in pending]
        if nb[0]["t"] is not None:
            candidates.append(max(nb[0]["t"], clock.now()))
        clock.set(max(clock.now(), min(candidates)))
        for due in [p for p in pending if p[0] <= clock.now()]:
            pending.remove(due)
            await engine.receipt("au", due[2])
            receipt_at[due[1]] = clock.now()
    assert len(receipt_at) == len(ids)
    order = sorted(submitted_at, key=lambda m: submitted_at[m])
    assert order == ids  # first in, first out per recipient
    for previous, following in itertools.pairwise(order):
        # Exactly then: the receipt itself releases the held message, not a
        # later re-check of the gate.
        assert submitted_at[following] == receipt_at[previous] + timedelta(seconds=22)


async def test_a_hold_no_final_receipt_released_is_swept_after_its_recheck(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(
        dsn,
        {"engine": {"pacing": False}, "carriers": {"au": {"port": 1, "receipt_timeout_s": 600}}},
    )
    engine = await make_engine(config, db, clock)
    number = f"080{next(_numbers):08d}"
    [first, held] = await enqueue(
        db,
        "acme",
        [{"to": number, "sms": {"text": f"message {i}"}, "carrier": "au"} for i in range(2)],
        clock.now(),
        config,
    )

    async def holds() -> list[datetime]:
        rows = await db.call_raw(
            "SELECT recheck_at FROM au_gate_waiting WHERE message_id = $1", held
        )
        return [r["recheck_at"] for r in rows]

    await engine.cycle()
    assert [s.request.message_id for s in engine.network.submitted] == [first]
    assert len(await holds()) == 1
    # The first never gets a final receipt: it times out as unknown, and the
    # held one leaves at a re-check of the gate, its hold row left behind.
    for _ in range(40):
        clock.advance(30)
        await engine.settler.settle_once(clock.now())
        await engine.cycle()
        if len(engine.network.submitted) == 2:
            break
    assert engine.network.submitted[1].request.message_id == held
    [recheck_at] = await holds()
    assert recheck_at <= clock.now()

    clock.set(recheck_at + timedelta(seconds=AU_GATE_HOLD_KEEP_S - 1))
    await engine.settler.settle_once(clock.now())
    assert len(await holds()) == 1
    clock.advance(2)
    await engine.settler.settle_once(clock.now())
    assert await holds() == []


async def test_a_refusal_at_au_releases_the_held_message_at_once(dsn: str, db: Database) -> None:
    """A refusal from au is not an arrival (§5 counts from the receipt of an
    SMS that reached the handset): the message held behind a probe that au
    refused ("not our subscriber") goes in the same instant, not after the
    gate's 30 s re-check."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    number = f"080{next(_numbers):08d}"
    engine = await make_engine(config, db, clock, subscribers={"+81" + number[1:]: "softbank"})
    [probe, held] = await enqueue(
        db,
        "acme",
        [{"to": number, "sms": {"text": f"message {i}"}, "carrier": "au"} for i in range(2)],
        clock.now(),
        config,
    )
    await engine.cycle()  # the probe at au, refused; the second held behind it
    rows = await db.call_raw("SELECT not_before FROM messages WHERE id = $1", held)
    assert rows[0]["not_before"] == clock.now()
    for _ in range(4):  # no time passes
        await engine.cycle()
    sent = [(s.request.message_id, s.carrier) for s in engine.network.submitted]
    assert (held, "softbank") in sent, sent
    assert (probe, "softbank") in sent, sent
