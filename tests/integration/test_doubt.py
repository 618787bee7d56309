"""`unknown` only where the SMSC never revealed the outcome: known parts
decide after a lease recovery, and receipts for submits whose response was
lost find their part (engine/write_behind.py, domain/receipt_match.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from carrierd.channels.sms import SmppGateway
from carrierd.channels.types import PartOutcome, Receipt, SmsRequest
from carrierd.domain.clock import JST, FakeClock, SystemClock
from carrierd.engine.write_behind import WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database, Row, Transaction
from tests.integration.apiclient import sync_accounts
from tests.integration.engine_harness import (
    Engine,
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)
from tests.integration.test_engine_recovery import StallingNetwork, resend_config, row

T0 = datetime(2026, 11, 24, 1, 0, 30, tzinfo=UTC)  # 10:00:30 JST
TO = "09011112222"
WAIT_S = 10.0  # an upper bound, not a speed claim
RECIPIENT_ADDR = "819011112222"  # a receipt's source_addr: our destination


class BindDropsInFlight(NetworkStandIn):
    """Every part is written and the bind drops before its response: the
    SMSC has it (its receipt comes later), the daemon cannot know."""

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        return [
            PartOutcome(n, "unknown", bind_id=f"{carrier}-1", unknown_cause="bind_lost")
            for n in request.numbers()
        ]


def late_receipt(
    clock: FakeClock, smsc_id: str, text: str | None, stat: str = "DELIVRD"
) -> Receipt:
    submitted = T0.astimezone(JST)
    return Receipt(
        "docomo",
        smsc_id,
        stat,
        "000",
        clock.now(),
        recipient_addr=RECIPIENT_ADDR,
        submit_date=f"{submitted:%y%m%d%H%M}",
        text_start=text,
    )


async def billed(db: Database) -> int:
    rows = await db.call_raw("SELECT coalesce(sum(units), 0) AS n FROM billing_counts")
    return int(rows[0]["n"])


async def sent_through_a_dropped_bind(
    dsn: str, db: Database, texts: list[str]
) -> tuple[Engine, list[int]]:
    clock = FakeClock(T0)
    config = resend_config(dsn)
    engine = await make_engine(
        config, db, clock, network=BindDropsInFlight(clock, list(config.carriers))
    )
    await confirm_docomo(db, clock)
    ids = await enqueue(
        db,
        "acme",
        [{"to": TO, "sms": {"text": text}} for text in texts],
        clock.now(),
        config,
    )
    await engine.cycle()
    for mid in ids:
        r = await row(db, mid)
        assert r["state"] == "unknown", r
        assert r["reason_text"] == (
            "the bind dropped with the part in flight, before its submit_sm_resp"
        )
    return engine, ids


async def test_a_receipt_for_a_part_whose_response_was_lost_settles_it(
    dsn: str, db: Database
) -> None:
    engine, [mid] = await sent_through_a_dropped_bind(dsn, db, ["Your code is 4321"])
    clock = engine.clock
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "a1b2", "Your code is 4321"))
    await engine.recorder.drain()
    assert (await row(db, mid))["state"] == "unknown"  # waits: it may meet its part by id
    clock.advance(3)
    await engine.settler.settle_once(clock.now())

    r = await row(db, mid)
    assert (r["state"], r["sms_units"]) == ("delivered", 1)
    assert await billed(db) == 1
    [part] = await db.call_raw(
        "SELECT state, smsc_message_id FROM parts WHERE message_id = $1", mid
    )
    assert (part["state"], part["smsc_message_id"]) == ("delivered", "a1b2")
    counted = engine.metrics.registry.get_sample_value(
        "carrierd_receipts_correlated_total", {"carrier": "docomo"}
    )
    assert counted == 1.0
    # The same receipt again finds its part by id, and nothing else.
    engine.recorder.receipt(late_receipt(clock, "a1b2", "Your code is 4321"))
    await engine.recorder.drain()
    assert await db.call_raw("SELECT 1 FROM early_receipts") == []


async def test_a_receipt_two_parts_fit_is_left_unmatched_and_counted_once(
    dsn: str, db: Database
) -> None:
    engine, ids = await sent_through_a_dropped_bind(dsn, db, ["Same text", "Same text"])
    clock = engine.clock
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "c3d4", "Same text"))
    await engine.recorder.drain()
    for _ in range(3):
        clock.advance(11)
        await engine.settler.settle_once(clock.now())

    assert [(await row(db, mid))["state"] for mid in ids] == ["unknown", "unknown"]
    assert await billed(db) == 0
    counted = engine.metrics.registry.get_sample_value(
        "carrierd_receipts_ambiguous_total", {"carrier": "docomo"}
    )
    assert counted == 1.0
    # It still waits, should one of them learn its id after all.
    [waiting] = await db.call_raw("SELECT smsc_message_id FROM early_receipts")
    assert waiting["smsc_message_id"] == "c3d4"


async def test_a_receipt_that_contradicts_the_text_is_not_taken(dsn: str, db: Database) -> None:
    engine, [mid] = await sent_through_a_dropped_bind(dsn, db, ["Your code is 4321"])
    clock = engine.clock
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "e5f6", "Your parcel"))
    await engine.recorder.drain()
    clock.advance(3)
    await engine.settler.settle_once(clock.now())
    assert (await row(db, mid))["state"] == "unknown"


async def test_a_dead_daemons_refused_part_is_rerouted_not_unknown(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = resend_config(dsn)
    dead = await make_engine(
        config, db, clock, daemon_id="dead", network=StallingNetwork(clock, list(config.carriers))
    )
    # Carriers confirmed for the numbers: both parts leave at once.
    await db.call_raw(
        "INSERT INTO carrier_learned (msisdn, carrier, learned_at)"
        " SELECT '+81901111' || lpad(n::text, 4, '0'), 'docomo', $1"
        " FROM generate_series(0, 2) AS n",
        clock.now(),
    )
    [refused, unsent, in_flight] = await enqueue(
        db,
        "acme",
        [{"to": f"0901111{n:04d}", "sms": {"text": "あ" * 80}} for n in range(3)],
        clock.now(),
        config,
    )
    await dead.dispatcher.dispatch_once(clock.now())
    for task in list(dead.dispatcher.sms_leg._in_flight):
        task.cancel()
    # What the dead daemon had recorded when it died: a "not our subscriber"
    # answer, parts that never left, and (the third) nothing at all.
    await db.call_raw(
        "UPDATE parts SET state = 'refused', command_status = 11, resp_at = $2"
        " WHERE message_id = $1 AND part_no = 1",
        refused,
        clock.now(),
    )
    await db.call_raw(
        "UPDATE parts SET state = 'unsent' WHERE message_id = $1 AND part_no = 1", unsent
    )
    carrier_before = (await row(db, refused))["carrier"]
    live = await make_engine(config, db, clock, daemon_id="live")
    clock.advance(61)
    await live.settler.settle_once(clock.now())

    r = await row(db, refused)
    assert (r["state"], r["reason_code"]) == ("queued", "wrong_carrier")
    assert carrier_before in r["carriers_wrong"]
    r = await row(db, unsent)
    assert (r["state"], r["reason_code"]) == ("failed", "incomplete_submission")
    r = await row(db, in_flight)
    assert (r["state"], r["reason_text"]) == ("unknown", "daemon stopped with the part in flight")
    await live.cycle()
    assert [s.request.message_id for s in live.network.submitted] == [refused]


async def test_a_dead_daemons_message_none_of_whose_parts_left_is_sent_again(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = resend_config(dsn)
    dead = await make_engine(
        config, db, clock, daemon_id="dead", network=StallingNetwork(clock, list(config.carriers))
    )
    [mid] = await enqueue(
        db, "acme", [{"to": TO, "sms": {"text": "x"}, "carrier": "docomo"}], clock.now(), config
    )
    await dead.dispatcher.dispatch_once(clock.now())
    for task in list(dead.dispatcher.sms_leg._in_flight):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    await db.call_raw("UPDATE parts SET state = 'unsent' WHERE message_id = $1", mid)
    live = await make_engine(config, db, clock, daemon_id="live")
    clock.advance(61)
    await live.settler.settle_once(clock.now())
    assert (await row(db, mid))["state"] == "queued"
    clock.advance(2)
    await live.cycle()
    assert (await row(db, mid))["state"] == "submitted"


# -- against the SMSC simulator, on the real clock --------------------------------------


async def run_against_sim(
    dsn: str, db: Database, sim_faults: dict[str, Any], docomo: dict[str, Any], count: int
) -> tuple[dict[str, int], SmscSimulator, SmppGateway, Engine]:
    """`count` messages to distinct numbers through a docomo SMSC with
    `sim_faults`, until none is open (or an upper bound of time passed)."""
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 3,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.05,
                    "receipt_delay_max_s": 0.3,
                    **sim_faults,
                },
                "carriers": {"docomo": {"port": 0, "subscriber_prefixes": ["090"]}},
            }
        )
    )
    ports = await sim.start()
    clock = SystemClock()
    carrier = {
        "port": ports["docomo"],
        "system_id": "demo",
        "password": "demo",
        "number_prefixes": ["090"],
        **docomo,
    }
    config = engine_config(
        dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}, "carriers": {"docomo": carrier}}
    )
    await sync_accounts(db, config)
    smpp: list[SmppGateway] = []

    def docomo_gateway(recorder: WriteBehind) -> SmppGateway:
        smpp.append(SmppGateway({"docomo": config.carriers["docomo"]}, recorder, clock))
        return smpp[0]

    engine = await make_engine(config, db, clock, daemon_id="t", gateway=docomo_gateway)
    gateway = smpp[0]
    await gateway.start()
    flusher = asyncio.ensure_future(engine.recorder.run())
    states: dict[str, int] = {}
    try:
        await enqueue(
            db,
            "acme",
            [
                {"to": f"090{40_000_000 + n:08d}", "sms": {"text": f"message {n} to you"}}
                for n in range(count)
            ],
            clock.now(),
            config,
        )
        for _ in range(1500):  # an upper bound, not a speed claim
            await engine.dispatcher.dispatch_once(clock.now())
            await engine.settler.settle_once(clock.now())
            rows = await db.call_raw("SELECT state, count(*) AS n FROM messages GROUP BY state")
            states = {r["state"]: r["n"] for r in rows}
            # Receipts still waiting for a match are tried by the settler.
            if (
                not set(states) & {"queued", "sending", "submitted"}
                and sim.pending_deliveries() == 0
                and not await db.call_raw("SELECT 1 FROM early_receipts LIMIT 1")
            ):
                break
            await asyncio.sleep(0.02)
        await engine.dispatcher.wait_idle()
        await engine.recorder.drain()
    finally:
        flusher.cancel()
        await gateway.stop(5.0)
        await sim.stop()
    return states, sim, gateway, engine


async def test_responses_later_than_the_timeout_are_recorded_and_billed(
    dsn: str, db: Database
) -> None:
    # Responses up to 1.4 response timeouts late; one submit in ten is never
    # answered (nor taken): only those may end unknown.
    states, sim, gateway, engine = await run_against_sim(
        dsn,
        db,
        {
            "response_delay_min_s": 0.0,
            "response_delay_max_s": 0.7,
            "missing_response_share": 0.1,
            "missing_response_accepts": False,
        },
        {"response_timeout_s": 0.5},
        40,
    )
    counters = sim.counters.carriers["docomo"]
    never_answered = counters.responses_dropped
    assert counters.accepted + never_answered == 40
    assert states == {"delivered": counters.accepted, "unknown": never_answered}
    assert sum(session.stats.late_answers for session in gateway.pool("docomo").sessions) > 0
    assert await billed(db) == counters.accepted
    unknown = await db.call_raw("SELECT reason_text FROM messages WHERE state = 'unknown'")
    assert {r["reason_text"] for r in unknown} == {"no submit_sm_resp within 0.5 s"}
    # Each delivered part learned its id from its response, late or not:
    # none needed its receipt matched by recipient and text.
    unanswered = await db.call_raw(
        "SELECT 1 FROM parts WHERE state = 'delivered' AND resp_at IS NULL"
    )
    assert unanswered == []
    assert (
        engine.metrics.registry.get_sample_value(
            "carrierd_receipts_correlated_total", {"carrier": "docomo"}
        )
        is None
    )
    assert sim.duplicates(include_undelivered=True) == []


async def test_receipts_of_submits_in_flight_when_the_bind_dropped_settle_them(
    dsn: str, db: Database
) -> None:
    states, sim, _, engine = await run_against_sim(
        dsn,
        db,
        {
            "response_delay_min_s": 0.02,
            "response_delay_max_s": 0.1,
            "disconnect_after_accept_share": 0.1,
        },
        {"reconnect_max_backoff_s": 0.5},
        40,
    )
    counters = sim.counters.carriers["docomo"]
    assert counters.disconnects > 0
    # Submits written behind the one that dropped the bind may never have
    # been read by the SMSC: those alone stay unknown (nothing revealed them).
    assert states.get("delivered") == counters.accepted
    assert states.get("unknown", 0) == 40 - counters.accepted
    assert await billed(db) == counters.accepted
    correlated = engine.metrics.registry.get_sample_value(
        "carrierd_receipts_correlated_total", {"carrier": "docomo"}
    )
    assert correlated is not None and correlated > 0
    assert sim.duplicates(include_undelivered=True) == []


async def test_a_part_the_settlers_sweep_delivers_after_its_attempt_failed_is_billed(
    dsn: str, db: Database
) -> None:
    # A receipt that missed its part's uncommitted response waits in
    # early_receipts; a concurrent flush meanwhile failed the message on its
    # other part. The sweep that delivers the waiting part bills it.
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": TO, "sms": {"text": "あ" * 80}, "carrier": "docomo"}],
        clock.now(),
        config,
    )
    await engine.cycle()
    first, second = engine.network.submitted[-1].smsc_ids
    await engine.receipt("docomo", first, "UNDELIV", "001")
    assert (await row(db, mid))["state"] == "failed"
    await db.call_raw(
        "INSERT INTO early_receipts (carrier, smsc_message_id, stat, received_at)"
        " VALUES ('docomo', $1, 'DELIVRD', $2)",
        second,
        clock.now(),
    )
    await engine.settler.settle_once(clock.now())

    assert (await row(db, mid))["sms_units"] == 1
    assert await billed(db) == 1


class ResponsesTimeOut(NetworkStandIn):
    """Every part's response times out; its late answer comes when the test
    says (`answer`), or never."""

    def __init__(self, clock: FakeClock, carriers: list[str]) -> None:
        super().__init__(clock, carriers)
        self.late: dict[int, asyncio.Future[PartOutcome]] = {}

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        loop = asyncio.get_running_loop()
        outcomes = []
        for n in request.numbers():
            self.late[n] = loop.create_future()
            outcomes.append(
                PartOutcome(
                    n,
                    "unknown",
                    bind_id=f"{carrier}-1",
                    unknown_cause="response_timeout",
                    late=self.late[n],
                )
            )
        return outcomes

    def answer(self, part_no: int, smsc_id: str) -> None:
        self.late[part_no].set_result(
            PartOutcome(part_no, "accepted", smsc_message_id=smsc_id, bind_id="docomo-1")
        )


async def confirm_docomo(db: Database, clock: FakeClock) -> None:
    """docomo confirmed for the recipient: every part leaves at once."""
    await db.call_raw(
        "INSERT INTO carrier_learned (msisdn, carrier, learned_at) VALUES ($1, 'docomo', $2)",
        "+819011112222",
        clock.now(),
    )


async def three_parts_timed_out(dsn: str, db: Database) -> tuple[Engine, ResponsesTimeOut, int]:
    clock = FakeClock(T0)
    config = resend_config(dsn)
    network = ResponsesTimeOut(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    await confirm_docomo(db, clock)
    [mid] = await enqueue(
        db,
        "acme",
        [{"to": TO, "sms": {"text": "あ" * 201}}],  # 3 UCS-2 parts
        clock.now(),
        config,
    )
    await engine.cycle()
    assert (await row(db, mid))["state"] == "unknown"
    return engine, network, mid


async def parts_by_id(db: Database, mid: int) -> dict[int, tuple[str, str | None]]:
    rows = await db.call_raw(
        "SELECT part_no, state, smsc_message_id FROM parts WHERE message_id = $1", mid
    )
    return {r["part_no"]: (r["state"], r["smsc_message_id"]) for r in rows}


async def test_a_receipt_waits_for_a_late_answer_that_may_still_name_its_part(
    dsn: str, db: Database
) -> None:
    """Three parts whose responses timed out; part 2's receipt beats its late
    answer and reads ???? like every part's. A guess made before the answer
    comes takes part 1, and the answer then puts the same id on part 2."""
    engine, network, mid = await three_parts_timed_out(dsn, db)
    clock = engine.clock
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "e5f6", "?" * 20))
    await engine.recorder.drain()
    for _ in range(3):  # first and second looks, while late answers may come
        clock.advance(11)
        await engine.settler.settle_once(clock.now())
    assert all(state == "unknown" for state, _ in (await parts_by_id(db, mid)).values())

    network.answer(2, "e5f6")
    await asyncio.sleep(0)  # the answer's callbacks run
    await engine.recorder.drain()
    await engine.settler.settle_once(clock.now())
    parts = await parts_by_id(db, mid)
    assert parts[2] == ("delivered", "e5f6")
    assert [p for p in (1, 3) if parts[p][1] == "e5f6"] == []
    assert await billed(db) == 1


async def test_a_receipt_takes_a_part_of_its_message_once_no_answer_can_come(
    dsn: str, db: Database
) -> None:
    engine, _, mid = await three_parts_timed_out(dsn, db)
    clock = engine.clock
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "e5f6", "?" * 20))
    await engine.recorder.drain()
    clock.advance(61)  # past the time a late answer is read (6 x 10 s timeout)
    for _ in range(2):
        clock.advance(11)
        await engine.settler.settle_once(clock.now())
    parts = await parts_by_id(db, mid)
    assert parts[1] == ("delivered", "e5f6")
    assert await billed(db) == 1


async def correlated_after_a_part_learned(
    dsn: str, db: Database, part_no: int, smsc_id: str
) -> tuple[int, list[Row]]:
    """Receipt e5f6 waits, the clues chose part 3 for it, and part `part_no`
    learned `smsc_id` from its response before the correlation wrote."""
    engine, _, mid = await three_parts_timed_out(dsn, db)
    engine.recorder.receipt(late_receipt(engine.clock, "e5f6", "?" * 20))
    await engine.recorder.drain()
    await db.call_raw(
        "UPDATE parts SET state = 'accepted', smsc_message_id = $3"
        " WHERE message_id = $1 AND part_no = $2",
        mid,
        part_no,
        smsc_id,
    )

    async def correlate(tx: Transaction) -> list[Row]:
        return await tx.fetch("correlate_receipts", ["docomo"], ["e5f6"], [mid], [1], [3])

    return mid, await db.in_transaction(correlate)


async def test_a_receipt_whose_id_a_part_learned_meanwhile_is_not_given_to_another(
    dsn: str, db: Database
) -> None:
    """Part 1's response with the receipt's id committed first: the id names part 1."""
    mid, settled = await correlated_after_a_part_learned(dsn, db, 1, "e5f6")
    assert settled == []
    assert (await parts_by_id(db, mid))[3] == ("unknown", None)
    assert len(await db.call_raw("SELECT 1 FROM early_receipts")) == 1


async def test_a_receipt_stays_waiting_when_its_chosen_part_learned_another_id(
    dsn: str, db: Database
) -> None:
    """Part 3's own response (another id) committed first: the receipt is
    not part 3's, and must not vanish either."""
    _, settled = await correlated_after_a_part_learned(dsn, db, 3, "a0a0")
    assert settled == []
    [waiting] = await db.call_raw("SELECT smsc_message_id FROM early_receipts")
    assert waiting["smsc_message_id"] == "e5f6"


async def test_the_receipts_of_one_recipient_are_looked_at_together(dsn: str, db: Database) -> None:
    """One is due for a look, the other came a moment ago: both are read, so
    that a receipt whose text names its part is never left out while the
    others take parts in part order."""
    engine, _ = await sent_through_a_dropped_bind(dsn, db, ["あ" * 201])
    clock = engine.clock
    engine.recorder.receipt(late_receipt(clock, "b0b0", "?" * 20))
    await engine.recorder.drain()
    clock.advance(5)
    engine.recorder.receipt(late_receipt(clock, "b1b1", "?" * 20))
    await engine.recorder.drain()

    async def looked_at(tx: Transaction) -> list[Row]:
        now = clock.now()
        return await tx.fetch("early_receipts_to_correlate", now - timedelta(seconds=2), now, 500)

    assert sorted(r["smsc_message_id"] for r in await db.in_transaction(looked_at)) == [
        "b0b0",
        "b1b1",
    ]


async def until(
    done: Callable[[], bool], step: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Polls `done` (after `step`, if given) until it holds; WAIT_S bounds it."""
    async with asyncio.timeout(WAIT_S):
        while not done():
            if step is not None:
                await step()
            await asyncio.sleep(0.01)


async def test_a_late_accepted_part_one_releases_the_other_parts(dsn: str, db: Database) -> None:
    """Part 1 goes alone to a carrier not yet confirmed; its response
    timed out and came late with "accepted": the other parts leave, where
    the timeout alone failed the message as an incomplete submission."""
    clock = FakeClock(T0)
    config = resend_config(dsn)
    network = ResponsesTimeOut(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    [mid] = await enqueue(
        db, "acme", [{"to": TO, "sms": {"text": "あ" * 201}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    await until(lambda: 1 in network.late)
    assert set(network.late) == {1}  # part 1 alone, its answer awaited
    network.answer(1, "f1f1")
    await until(lambda: set(network.late) == {1, 2, 3}, engine.recorder.drain)
    parts = await parts_by_id(db, mid)
    assert parts[1][1] == "f1f1"
