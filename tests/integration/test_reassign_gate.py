"""The reassigned-number gate (DOMAIN §13, §11) on the engine harness:
real PostgreSQL, the real dispatcher, gate, lifecycle writer and timers, the
reassignment database simulator over HTTP (the real client), the HTTP API
for intake and /v1/billing; the SMS network is the harness's stand-in, and
the clock is fake (lookups take real time, on the simulator's side)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from carrierd.channels.reassign import Lookup, ReassignClient
from carrierd.domain.clock import FakeClock
from carrierd.domain.reassign import Judged, parse_month
from carrierd.engine.reassign_gate import ReassignGate
from carrierd.sim.reassign import ReassignSim, ReassignSimConfig
from carrierd.store.db import Database
from tests.integration.engine_harness import Engine, engine_config, enqueue, make_engine
from tests.integration.test_rcs_leg import serve
from tests.integration.test_reports import reports_api
from tests.metric_samples import counter_values

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 12:00 JST
REASSIGNED = "+819011110001"  # out of service March to May 2025: a history
CLEAN = "+819011110002"  # always in service
GAP = "+819011110003"  # out of service two months: no history
BASE_DATE = "2025-01-10"
# An upper bound for the simulator's real-time work, not a speed claim.
WAIT_S = 20.0


def data() -> dict[str, frozenset[int]]:
    return {
        REASSIGNED: frozenset(parse_month(m) for m in ("2025-03", "2025-04", "2025-05")),
        CLEAN: frozenset(),
        GAP: frozenset(parse_month(m) for m in ("2025-07", "2025-08")),
    }


@dataclass
class Rig:
    engine: Engine
    sim: ReassignSim
    gate: ReassignGate
    session: aiohttp.ClientSession
    sim_url: str

    def new_gate(self, engine: Engine) -> ReassignGate:
        gate = ReassignGate(
            engine.db,
            engine.clock,
            ReassignClient(
                self.session,
                lambda: engine.config.reassign,
                retry_initial_wait_s=0.001,
                retry_max_wait_s=0.005,
                observe_s=lambda s, outcome: engine.metrics.reassign_lookup_seconds.labels(
                    outcome
                ).observe(s),
            ),
            engine.lifecycle,
            config=lambda: engine.config,
            lease_owner=engine.dispatcher.lease_owner,
            metrics=engine.metrics,
        )
        engine.dispatcher.reassign_gate = gate
        return gate

    async def run(self, engine: Engine | None = None) -> None:
        """Claim until nothing is due, every lookup recorded."""
        engine = engine or self.engine
        gate = engine.dispatcher.reassign_gate
        assert gate is not None
        while True:
            await asyncio.wait_for(gate.wait_idle(), WAIT_S)
            if not await engine.cycle():
                break


@contextlib.asynccontextmanager
async def rig(
    dsn: str,
    db: Database,
    *,
    reassign: dict[str, Any] | None = None,
    pacing: bool = False,
    **sim: Any,
) -> AsyncIterator[Rig]:
    clock = FakeClock(T0)
    simulator = ReassignSim(
        ReassignSimConfig(data_month="2026-10", histories=data(), **sim), now=clock.now
    )
    async with serve(simulator.build_app()) as url, aiohttp.ClientSession() as session:
        config = engine_config(
            dsn,
            {
                "engine": {"pacing": pacing},
                "reassign": {
                    "url": url,
                    "token": "sim-reassign-token",
                    "timeout_s": 2.0,
                    "retries": 2,
                    "batch_size": 2,
                    "concurrency": 2,
                    **(reassign or {}),
                },
            },
        )
        engine = await make_engine(config, db, clock)
        the_rig = Rig(engine, simulator, None, session, url)  # type: ignore[arg-type]
        the_rig.gate = the_rig.new_gate(engine)
        try:
            yield the_rig
        finally:
            for gate in {the_rig.gate, engine.dispatcher.reassign_gate}:
                if gate is not None:
                    await gate.stop(0)
            for held in simulator.held:
                if not held.done():
                    held.set_result(None)


async def checked(engine: Engine, to: str, base_date: str = BASE_DATE) -> int:
    (message_id,) = await enqueue(
        engine.db,
        "acme",
        [{"to": to, "sms": {"text": "ご予約の確認"}, "reassigned_check": {"base_date": base_date}}],
        engine.clock.now(),
        engine.config,
    )
    return message_id


async def message(db: Database, message_id: int) -> dict[str, Any]:
    rows = await db.call_raw(
        "SELECT state, reason_code, reassign_verdict, reassign_data_month, lease_owner"
        " FROM messages WHERE id = $1",
        message_id,
    )
    return dict(rows[0])


async def events(db: Database, message_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.call_raw(
        "SELECT kind, detail FROM message_events WHERE message_id = $1 ORDER BY id", message_id
    )
    return [(r["kind"], r["detail"] or {}) for r in rows]


async def check_units(db: Database) -> int:
    rows = await db.call_raw(
        "SELECT coalesce(sum(units), 0) AS n FROM billing_counts WHERE channel = 'reassigned_check'"
    )
    return int(rows[0]["n"])


def submitted_to(engine: Engine) -> list[str]:
    return [s.request.msisdn for s in engine.network.submitted]


def verdicts(engine: Engine) -> dict[str, float]:
    return counter_values(engine.metrics, "carrierd_reassign_verdicts", "verdict")


async def test_every_verdict_decides_its_message_and_is_billed_in_v1_billing(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        engine = r.engine
        async with reports_api(engine.config, db, engine.clock) as (base, http):
            items = [
                {
                    "to": to,
                    "sms": {"text": f"ご予約の確認 {n}"},
                    "reassigned_check": {"base_date": BASE_DATE},
                }
                for n, to in enumerate((REASSIGNED, CLEAN, GAP))
            ]
            items.append({"to": "+819011110009", "sms": {"text": "確認なし"}})
            async with http.post(
                f"{base}/v1/messages",
                json={"messages": items},
                headers={"Authorization": "Bearer acme-token"},
            ) as response:
                assert response.status == 202, await response.text()
                ids = [a["id"] for a in (await response.json())["accepted"]]
            reassigned, clean, gap, unchecked = (int(i) for i in ids)

            await r.run()

            skipped = await message(db, reassigned)
            assert skipped["state"] == "skipped"
            assert skipped["reason_code"] == "reassigned_number"
            assert skipped["reassign_verdict"] == "history"
            kind, detail = (await events(db, reassigned))[-1]
            assert kind == "skipped"
            assert detail["verdict"] == "history"
            assert detail["base_date"] == BASE_DATE and detail["data_month"] == "2026-10"
            for sent in (clean, gap):
                row = await message(db, sent)
                assert row["state"] in ("sending", "submitted")
                assert (row["reassign_verdict"], row["reassign_data_month"]) == (
                    "no_history",
                    "2026-10",
                )
                kinds = [k for k, _ in await events(db, sent)]
                assert kinds[:4] == [
                    "accepted",
                    "claimed",
                    "reassignment_checked",
                    "sending",
                ], kinds
                judged = dict(await events(db, sent))["reassignment_checked"]
                assert judged == {
                    "verdict": "no_history",
                    "base_date": BASE_DATE,
                    "data_month": "2026-10",
                }
            assert (await message(db, unchecked))["state"] in ("sending", "submitted")
            # The skipped message never left; each number asked once.
            assert sorted(submitted_to(engine)) == sorted([CLEAN, GAP, "+819011110009"])
            assert sorted(r.sim.counters.asked) == sorted([REASSIGNED, CLEAN, GAP])

            async with http.get(
                f"{base}/v1/billing",
                params={"month": "2026-11"},
                headers={"Authorization": "Bearer acme-token"},
            ) as response:
                report = await response.json()
            assert report["reassigned_checks"] == 3
            assert verdicts(engine) == {"no_history": 2.0, "history": 1.0}
            billed = counter_values(engine.metrics, "carrierd_billing_units", "channel")
            assert billed["reassigned_check"] == 3.0


@pytest.mark.parametrize(
    ("fault", "reassign", "error"),
    [
        ({"error_share": 1.0}, {}, "server_error"),
        ({"malformed_share": 1.0}, {}, "malformed"),
        ({"latency_ms": 300.0}, {"timeout_s": 0.05}, "timeout"),
    ],
)
async def test_a_lookup_that_keeps_failing_skips_the_message_unbilled(
    dsn: str, db: Database, fault: dict[str, Any], reassign: dict[str, Any], error: str
) -> None:
    async with rig(dsn, db, reassign=reassign, **fault) as r:
        engine = r.engine
        message_id = await checked(engine, CLEAN)
        await r.run()
        row = await message(db, message_id)
        assert (row["state"], row["reason_code"]) == ("skipped", "reassignment_lookup_failed")
        assert row["reassign_verdict"] is None
        kind, detail = (await events(db, message_id))[-1]
        assert kind == "skipped" and detail["error"].startswith(error), detail
        # The first request and `retries` more.
        assert detail["attempts"] == 3
        assert r.sim.counters.requests == 3
        assert submitted_to(engine) == []
        assert await check_units(db) == 0
        assert verdicts(engine) == {"lookup_failed": 1.0}


async def test_a_message_that_passes_is_sent_without_a_second_claim(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        engine = r.engine
        message_id = await checked(engine, CLEAN)
        assert await engine.dispatcher.dispatch_once(engine.clock.now()) == 1
        # The verdict's transaction hands the message to the SMS leg.
        await asyncio.wait_for(r.gate.wait_idle(), WAIT_S)
        await engine.dispatcher.wait_idle()
        assert submitted_to(engine) == [CLEAN]
        assert (await message(db, message_id))["state"] in ("sending", "submitted")
        assert await engine.dispatcher.dispatch_once(engine.clock.now()) == 0


async def test_a_passing_verdict_rides_on_the_legs_move(dsn: str, db: Database) -> None:
    """No row update of its own: the gate's claim, then straight to
    'sending' with the verdict kept and its event logged before the leg's."""
    for statement in (
        "CREATE TABLE row_moves (id bigserial, message_id bigint, src text, dst text)",
        "CREATE FUNCTION log_row_move() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO row_moves (message_id, src, dst)"
        " VALUES (NEW.id, OLD.state, NEW.state); RETURN NEW; END $$",
        "CREATE TRIGGER log_row_move AFTER UPDATE ON messages"
        " FOR EACH ROW EXECUTE FUNCTION log_row_move()",
    ):
        await db.call_raw(statement)
    async with rig(dsn, db) as r:
        engine = r.engine
        message_id = await checked(engine, GAP)
        await r.run()
        moves = await db.call_raw(
            "SELECT src, dst FROM row_moves WHERE message_id = $1 ORDER BY id", message_id
        )
        assert [(m["src"], m["dst"]) for m in moves][:2] == [
            ("queued", "dispatching"),
            ("dispatching", "sending"),
        ], moves
        row = await message(db, message_id)
        assert (row["reassign_verdict"], row["reassign_data_month"]) == ("no_history", "2026-10")
        kinds = [k for k, _ in await events(db, message_id)]
        assert kinds[:4] == ["accepted", "claimed", "reassignment_checked", "sending"], kinds
        assert await check_units(db) == 1


async def test_a_checked_message_spends_one_token_and_a_skipped_one_none(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db, pacing=True) as r:
        engine = r.engine
        # A full bucket; the fake clock stands still, so nothing refills it.
        await db.call_raw(
            "INSERT INTO rate_buckets (account_id, tokens, updated_at) VALUES ('acme', 10, $1)",
            T0,
        )
        sent = await checked(engine, CLEAN)
        skipped = await checked(engine, REASSIGNED)
        await r.run()
        assert (await message(db, sent))["state"] in ("sending", "submitted")
        assert (await message(db, skipped))["state"] == "skipped"
        assert submitted_to(engine) == [CLEAN]
        rows = await db.call_raw("SELECT tokens FROM rate_buckets WHERE account_id = 'acme'")
        assert rows[0]["tokens"] == 9.0


async def test_a_failed_request_is_asked_again(dsn: str, db: Database) -> None:
    async with rig(dsn, db, fail_next_requests=2) as r:
        engine = r.engine
        message_id = await checked(engine, CLEAN)
        await r.run()
        assert (await message(db, message_id))["reassign_verdict"] == "no_history"
        assert r.sim.counters.requests == 3
        assert submitted_to(engine) == [CLEAN]
        assert await check_units(db) == 1


async def test_an_old_base_date_is_checked_from_two_years_back(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        # Out of service Oct-Dec 2024: a history since 2019, but two years
        # before 20 November 2026 only November and December count.
        r.sim.config.histories["+819011110004"] = frozenset(
            parse_month(m) for m in ("2024-10", "2024-11", "2024-12")
        )
        message_id = await checked(r.engine, "+819011110004", base_date="2019-01-01")
        await r.run()
        assert (await message(db, message_id))["reassign_verdict"] == "no_history"
        judged = dict(await events(db, message_id))["reassignment_checked"]
        assert judged["base_date"] == "2019-01-01"
        assert judged["checked_from"] == "2024-11-20"
        assert date.fromisoformat(judged["checked_from"]) == date(2024, 11, 20)


async def test_lookups_are_batched_and_never_hold_other_messages(dsn: str, db: Database) -> None:
    async with rig(dsn, db, reassign={"batch_size": 3, "concurrency": 2}) as r:
        engine = r.engine
        r.sim.hold_answers = True
        numbers = [f"+8190222{n:05d}" for n in range(6)]
        for number in numbers:
            await checked(engine, number)
        await enqueue(
            db, "acme", [{"to": "+819033330000", "sms": {"text": "急ぎ"}}], T0, engine.config
        )
        await engine.cycle()
        # Two lookups of three numbers in flight, unanswered; the message
        # without the check was sent meanwhile.
        await asyncio.wait_for(r.sim.wait_held(2), WAIT_S)
        assert r.sim.counters.requests == 2 and r.sim.counters.lookups == 6
        assert submitted_to(engine) == ["+819033330000"]
        r.sim.release(0)
        r.sim.release(1)
        await r.run()
        assert sorted(submitted_to(engine)) == sorted([*numbers, "+819033330000"])


async def test_lookups_go_on_while_verdicts_wait_and_those_waiting_are_recorded_together(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db, reassign={"batch_size": 1, "concurrency": 2}) as r:
        engine = r.engine
        recorded: list[int] = []
        send_judged = engine.dispatcher.send_judged

        async def counting(record: Any, judged: Any, now: datetime) -> None:
            recorded.append(len(judged))
            await send_judged(record, judged, now)

        engine.dispatcher.send_judged = counting  # type: ignore[method-assign]
        r.sim.hold_answers = True
        numbers = [f"+8190444{n:05d}" for n in range(6)]
        ids = [await checked(engine, number) for number in numbers]
        await engine.cycle()
        await asyncio.wait_for(r.sim.wait_held(2), WAIT_S)
        # The verdicts cannot be recorded while another transaction holds
        # the rows; the next lookups are asked all the same, up to two
        # rounds of batches (RECORDING_ROUNDS) waiting to be recorded.
        blocker = await asyncpg.connect(dsn)
        try:
            locking = blocker.transaction()
            await locking.start()
            await blocker.execute("SELECT 1 FROM messages WHERE id = ANY($1) FOR UPDATE", ids)
            r.sim.hold_answers = False
            r.sim.release(0)
            r.sim.release(1)
            for _ in range(int(WAIT_S / 0.01)):
                if r.sim.counters.requests == 4:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert r.sim.counters.requests == 4
            assert [(await message(db, i))["reassign_verdict"] for i in ids] == [None] * 6
            await locking.rollback()
        finally:
            await blocker.close()
        await r.run()
        assert sorted(submitted_to(engine)) == sorted(numbers)
        # Six lookups, their verdicts in fewer transactions: those that
        # waited went together.
        assert sum(recorded) == 6 and len(recorded) <= 4, recorded


async def test_a_daemon_killed_mid_lookup_leaves_the_message_to_be_looked_up_again(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        first = r.engine
        r.sim.hold_answers = True
        message_id = await checked(first, CLEAN)
        await first.cycle()
        await asyncio.wait_for(r.sim.wait_held(1), WAIT_S)
        # The daemon dies with the lookup in flight: nothing recorded.
        await r.gate.stop(0)
        row = await message(db, message_id)
        assert row["state"] == "dispatching" and row["reassign_verdict"] is None
        # Its lease runs out; any daemon's timers queue the message again.
        first.clock.advance(first.config.engine.lease_s + 1)
        await first.settler.settle_once(first.clock.now())
        assert (await message(db, message_id))["state"] == "queued"

        r.sim.hold_answers = False
        second = await make_engine(first.config, db, first.clock, daemon_id="d2")
        r.new_gate(second)
        await r.run(second)
        assert (await message(db, message_id))["reassign_verdict"] == "no_history"
        assert r.sim.counters.asked == [CLEAN, CLEAN]
        kinds = [k for k, _ in await events(db, message_id)]
        assert kinds[:5] == [
            "accepted",
            "claimed",
            "lease_recovered",
            "claimed",
            "reassignment_checked",
        ], kinds
        assert submitted_to(second) == [CLEAN]
        assert await check_units(db) == 1


async def test_a_lookup_that_outlived_its_lease_decides_nothing(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        first = r.engine
        r.sim.hold_answers = True
        message_id = await checked(first, CLEAN)
        await first.cycle()
        await asyncio.wait_for(r.sim.wait_held(1), WAIT_S)  # asked while the number was clean
        # The first daemon stalls past its lease; the second takes over.
        first.clock.advance(first.config.engine.lease_s + 1)
        await first.settler.settle_once(first.clock.now())
        r.sim.config.histories[CLEAN] = frozenset(
            parse_month(m) for m in ("2026-01", "2026-02", "2026-03")
        )
        second = await make_engine(first.config, db, first.clock, daemon_id="d2")
        second_gate = r.new_gate(second)
        await second.cycle()
        await asyncio.wait_for(r.sim.wait_held(2), WAIT_S)  # asked again: now with a history
        assert (await message(db, message_id))["lease_owner"] == second.dispatcher.lease_owner

        # The stale answer comes first: the message is the second daemon's.
        r.sim.release(0)
        await asyncio.wait_for(r.gate.wait_idle(), WAIT_S)
        row = await message(db, message_id)
        assert (row["state"], row["reassign_verdict"]) == ("dispatching", None)
        r.sim.release(1)
        await asyncio.wait_for(second_gate.wait_idle(), WAIT_S)
        row = await message(db, message_id)
        assert (row["state"], row["reason_code"]) == ("skipped", "reassigned_number")
        assert submitted_to(first) == [] and submitted_to(second) == []
        assert await check_units(db) == 1


async def test_a_full_gate_leaves_the_rest_queued_a_second_longer(dsn: str, db: Database) -> None:
    async with rig(dsn, db, reassign={"batch_size": 1, "concurrency": 1}) as r:
        engine = r.engine
        r.sim.hold_answers = True
        held_max = r.gate.room()
        numbers = [f"+8190444{n:05d}" for n in range(held_max + 2)]
        ids = [await checked(engine, number) for number in numbers]
        await engine.cycle()
        states = [(await message(db, i))["state"] for i in ids]
        assert states.count("dispatching") == held_max and states.count("queued") == 2
        waiting = await db.call_raw(
            "SELECT not_before, wait_cause FROM messages WHERE state = 'queued'"
        )
        assert {(w["not_before"], w["wait_cause"]) for w in waiting} == {
            (T0.replace(second=1), "reassigned-number check backlog")
        }
        # One lookup at a time (concurrency 1): the first is held.
        await asyncio.wait_for(r.sim.wait_held(1), WAIT_S)
        r.sim.hold_answers = False
        r.sim.release(0)
        await r.run()
        engine.clock.advance(1)
        await r.run()
        assert sorted(submitted_to(engine)) == sorted(numbers)
        assert await check_units(db) == len(numbers)


async def test_a_daemon_without_the_service_skips_what_asks_for_the_check(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        engine = r.engine
        message_id = await checked(engine, CLEAN)
        engine.dispatcher.reassign_gate = None
        await engine.cycle()
        row = await message(db, message_id)
        assert (row["state"], row["reason_code"]) == ("skipped", "reassignment_lookup_failed")
        assert submitted_to(engine) == [] and r.sim.counters.requests == 0
        assert await check_units(db) == 0


async def test_the_client_reads_a_whole_answer_that_comes_in_pieces(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        numbers = [f"+8190666{n:05d}" for n in range(1000)]
        body = json.dumps(
            {"results": [r.sim.verdict_of(n, date(2025, 1, 1)) for n in numbers]}
        ).encode()

        async def slow_service(request: web.Request) -> web.StreamResponse:
            # The simulator's answer, as a slow network delivers it.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for start in range(0, len(body), 8192):
                await response.write(body[start : start + 8192])
                await asyncio.sleep(0.005)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/lookups", slow_service)
        async with serve(app) as url:
            config = replace(r.engine.config.reassign, url=url)
            client = ReassignClient(r.session, lambda: config)
            outcomes = await client.lookup([Lookup(n, date(2025, 1, 1)) for n in numbers])
        assert len(outcomes) == 1000
        assert all(isinstance(o, Judged) for o in outcomes), outcomes[:1]


async def test_the_simulator_keeps_only_the_last_numbers_asked(
    dsn: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left running beside `make run`, it must not grow with every lookup.
    monkeypatch.setattr("carrierd.sim.reassign.ASKED_KEPT", 3)
    async with rig(dsn, db) as r:
        client = ReassignClient(r.session, lambda: r.engine.config.reassign)
        first = [f"+8190777{n:05d}" for n in range(2)]
        then = [f"+8190778{n:05d}" for n in range(3)]
        for numbers in (first, then, first):
            outcomes = await client.lookup([Lookup(n, date(2025, 1, 1)) for n in numbers])
            assert all(isinstance(o, Judged) for o in outcomes)
        assert (r.sim.counters.requests, r.sim.counters.lookups) == (3, 7)
        assert r.sim.counters.asked == [then[2], *first]
