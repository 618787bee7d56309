"""Defects that sat on the seams between the engine's old state writers,
each reproduced against the real database (and, for the SMPP path, the
simulator): a payload-concatenated message, a late receipt after
`unknown`, and receipts the write-behind could not store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from carrierd.channels.sms import SmppGateway
from carrierd.channels.types import PartOutcome, Receipt, SmsRequest
from carrierd.domain.clock import JST, FakeClock, SystemClock
from carrierd.domain.lifecycle import Event, Note
from carrierd.domain.sms_text import split_ucs2
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.write_behind import NotDurable, WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database, Transaction
from tests.integration.engine_harness import (
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
# 134 characters of JIS X 0208 text: two UCS-2 parts, two billable units (§3).
TWO_PARTS = "あ" * 134


async def message(db: Database, message_id: int) -> dict[str, object]:
    return (await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]


async def sms_billed(db: Database) -> int:
    rows = await db.call_raw(
        "SELECT coalesce(sum(units), 0)::int AS n FROM billing_counts WHERE channel = 'sms'"
    )
    return int(rows[0]["n"])


async def test_a_payload_message_is_one_record_billed_its_units(dsn: str, db: Database) -> None:
    """concat = "payload": one submit_sm, one SMSC id, one receipt. It used
    to be stored as two parts sharing the id; the one receipt settled one of
    them, and the message stayed 'submitted', billed 1 unit instead of 2."""
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 7,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.0,
                    "receipt_delay_max_s": 0.05,
                    "undeliverable_share": 0.0,
                    "expired_share": 0.0,
                },
                "carriers": {"docomo": {"port": 0, "subscriber_prefixes": ["090"]}},
            }
        )
    )
    ports = await sim.start()
    clock = SystemClock()
    docomo = {
        "port": ports["docomo"],
        "system_id": "demo",
        "password": "demo",
        "number_prefixes": ["090"],
        "concat": "payload",
    }
    config = engine_config(
        dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}, "carriers": {"docomo": docomo}}
    )
    gateways: list[SmppGateway] = []

    def docomo_only(write_behind: WriteBehind) -> SmppGateway:
        gateways.append(SmppGateway({"docomo": config.carriers["docomo"]}, write_behind, clock))
        return gateways[0]

    engine = await make_engine(config, db, clock, gateway=docomo_only)
    await gateways[0].start()
    flusher = asyncio.ensure_future(engine.recorder.run())
    try:
        [message_id] = await enqueue(
            db, "acme", [{"to": "09030000001", "sms": {"text": TWO_PARTS}}], clock.now(), config
        )
        for _ in range(250):
            await engine.dispatcher.dispatch_once(clock.now())
            await engine.settler.settle_once(clock.now())
            if (await message(db, message_id))["state"] == "delivered":
                break
            await asyncio.sleep(0.02)
        await engine.dispatcher.wait_idle()
        await engine.recorder.drain()
    finally:
        flusher.cancel()
        await gateways[0].stop(5.0)
        await sim.stop()
    row = await message(db, message_id)
    assert (row["state"], row["sms_parts"], row["sms_units"]) == ("delivered", 2, 2)
    parts = await db.call_raw(
        "SELECT part_no, part_total, units, state FROM parts WHERE message_id = $1", message_id
    )
    assert [dict(p) for p in parts] == [
        {"part_no": 1, "part_total": 1, "units": 2, "state": "delivered"}
    ]
    assert await sms_billed(db) == 2


async def test_a_late_receipt_after_unknown_settles_the_message_and_its_billing(
    dsn: str, db: Database
) -> None:
    """No receipt before the timeout: unknown, and nothing delivered to
    bill. The DELIVRD that comes later used to mark the part and bill a unit
    while the message stayed 'unknown'; the truth wins now: the message is
    delivered (late), and the part that reached the handset is billed once."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}})
    engine = await make_engine(config, db, clock)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340001", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.cycle()
    [submitted] = engine.network.submitted
    assert (await message(db, message_id))["state"] == "submitted"
    clock.advance(73 * 3600)
    await engine.settler.settle_once(clock.now())
    row = await message(db, message_id)
    assert (row["state"], row["sms_units"]) == ("unknown", 0)
    assert await sms_billed(db) == 0

    await engine.receipt(submitted.carrier, submitted.smsc_ids[0], "DELIVRD")

    row = await message(db, message_id)
    assert (row["state"], row["sms_units"], row["reason_code"]) == ("delivered", 1, None)
    assert await sms_billed(db) == 1
    events = await db.call_raw(
        "SELECT kind, state, detail FROM message_events WHERE message_id = $1 ORDER BY id",
        message_id,
    )
    kinds = [e["kind"] for e in events]
    assert kinds[-3:] == ["receipt_timeout", "delivered", "part_delivered_late"]
    assert events[-2]["detail"]["late"] is True


async def test_an_unknown_message_bills_the_parts_that_reached_the_handset(
    dsn: str, db: Database
) -> None:
    """Part 1 delivered, part 2 never receipted: the receipt timeout makes
    the message unknown, and part 1, which reached the handset, is billed
    then (§11); part 2's late receipt bills part 2, and nothing twice."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}})
    engine = await make_engine(config, db, clock)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340002", "sms": {"text": "あ" * 100}}], clock.now(), config
    )
    await engine.cycle()
    [submitted] = engine.network.submitted
    assert len(submitted.smsc_ids) == 2
    await engine.receipt(submitted.carrier, submitted.smsc_ids[0], "DELIVRD")
    assert (await message(db, message_id))["state"] == "submitted"
    clock.advance(73 * 3600)
    await engine.settler.settle_once(clock.now())
    row = await message(db, message_id)
    assert (row["state"], row["sms_units"]) == ("unknown", 1)
    assert await sms_billed(db) == 1

    await engine.receipt(submitted.carrier, submitted.smsc_ids[1], "DELIVRD")

    row = await message(db, message_id)
    assert (row["state"], row["sms_units"]) == ("delivered", 2)
    assert await sms_billed(db) == 2


class FirstPartAnsweredFirst(NetworkStandIn):
    """Part 1's submit_sm_resp comes at once, the others' are still on the
    wire when the submit call returns (the test hands them in later)."""

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        return (await super().submit(carrier, request))[:1]


async def test_parts_still_waiting_when_their_attempt_failed_are_billed_when_delivered(
    dsn: str, db: Database
) -> None:
    """Part 1 fails while parts 2 and 3 wait for their response: the
    message fails at once. Those two used to stay pending forever; when their
    answers never came (the daemon died), their receipts found nothing and
    two delivered parts went unbilled."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}})
    network = FirstPartAnsweredFirst(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    # A carrier confirmed for the number: every part leaves at once.
    await db.call_raw(
        "INSERT INTO carrier_learned (msisdn, carrier, learned_at) VALUES ($1, 'docomo', $2)",
        "+819012340003",
        clock.now(),
    )
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340003", "sms": {"text": "い" * 150}}], clock.now(), config
    )
    await engine.cycle()
    [submitted] = network.submitted
    first, *rest = submitted.smsc_ids
    assert len(rest) == 2
    await engine.receipt(submitted.carrier, first, "UNDELIV", "001")
    assert (await message(db, message_id))["state"] == "failed"

    # The daemon dies before parts 2 and 3 are answered; the SMSC had them,
    # and their receipts come with ids no part carries (Appendix B clues).
    submit_date = clock.now().astimezone(JST).strftime("%y%m%d%H%M")
    for smsc_id, text in zip(rest, split_ucs2("い" * 150)[1:], strict=True):
        engine.recorder.receipt(
            Receipt(
                submitted.carrier,
                f"lost-{smsc_id}",
                "DELIVRD",
                "000",
                clock.now(),
                recipient_addr="819012340003",
                submit_date=submit_date,
                text_start=text[:20].encode("ascii", errors="replace").decode(),
            )
        )
    await engine.recorder.drain()
    clock.advance(3)
    await engine.settler.settle_once(clock.now())

    row = await message(db, message_id)
    assert (row["state"], row["sms_units"]) == ("failed", 2)
    assert await sms_billed(db) == 2


class SmscAway(NetworkStandIn):
    """Every SMSC unreachable until `back` is set."""

    back: bool = False

    def is_available(self, carrier: str, route: str = "premium") -> bool:
        return self.back and super().is_available(carrier, route)


async def test_a_message_waiting_for_a_bind_logs_the_wait_once(dsn: str, db: Database) -> None:
    """With the SMSC away, every claim postponed every message again, each
    time with a history event: 290,525 of them in a 20 s SMSC outage."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = SmscAway(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config
    )
    for _ in range(5):
        await engine.cycle()
        clock.advance(1.5)
    network.back = True
    await engine.cycle()

    assert (await message(db, message_id))["state"] in ("sending", "submitted")
    events = await db.call_raw(
        "SELECT kind FROM message_events WHERE message_id = $1 ORDER BY id", message_id
    )
    assert [e["kind"] for e in events].count("postponed") == 1


async def test_receipts_a_failed_flush_could_not_store_are_refused_not_acknowledged(
    dsn: str, db: Database
) -> None:
    """A flush that fails (here: the database refuses the connection, as
    during a PostgreSQL restart) used to drop its receipts and answer their
    deliver_sm OK: lost for good. Now each receipt's future fails, so the
    session answers ESME_RX_T_APPN and the SMSC delivers it again; the
    submit responses, which exist only here, are kept for the next flush."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340002", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.cycle()
    [submitted] = engine.network.submitted
    write_behind = engine.recorder
    real_in_transaction = db.in_transaction
    failures = {"left": 1}

    async def database_restarting(work, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        return await real_in_transaction(work, **kwargs)

    db.in_transaction = database_restarting  # type: ignore[method-assign]
    try:
        pending = write_behind.receipt(
            Receipt(submitted.carrier, submitted.smsc_ids[0], "DELIVRD", None, clock.now())
        )
        assert pending is not None
        await write_behind.flush_once()
        assert pending.done()
        assert isinstance(pending.exception(), NotDurable)
        assert (await message(db, message_id))["state"] != "delivered"
        # The SMSC delivers it again; this time it is stored and acknowledged.
        again = write_behind.receipt(
            Receipt(submitted.carrier, submitted.smsc_ids[0], "DELIVRD", None, clock.now())
        )
        assert again is not None
        await write_behind.drain()
        assert again.done() and again.exception() is None
    finally:
        db.in_transaction = real_in_transaction  # type: ignore[method-assign]
    assert (await message(db, message_id))["state"] == "delivered"


async def test_two_changes_for_one_message_in_one_write_are_refused_unwritten(
    dsn: str, db: Database
) -> None:
    """PostgreSQL applies one of two rows an UPDATE ... FROM joins to one
    message, without saying which: the units on the message and the units
    billed would come from different changes."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {})
    await make_engine(config, db, clock)  # registers the accounts
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config
    )
    lifecycle = Lifecycle()
    notes = [
        Note(message_id, None, Event.PART_DELIVERED_LATE, sms_units=units, billed_at=T0)
        for units in (1, 2)
    ]

    async def write(tx: Transaction) -> None:
        await lifecycle.note(tx, notes, T0)

    with pytest.raises(ValueError, match=str(message_id)):
        await db.in_transaction(write)
    assert (await message(db, message_id))["sms_units"] == 0
    assert await sms_billed(db) == 0

    async def write_one(tx: Transaction) -> None:
        await lifecycle.note(tx, notes[1:], T0)

    await db.in_transaction(write_one)
    assert (await message(db, message_id))["sms_units"] == await sms_billed(db) == 2


class SubmitsHang(NetworkStandIn):
    """A bind that takes the submit and never answers while the test runs."""

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_claim_this_daemon_holds_nowhere_is_queued_again_not_kept_forever(
    dsn: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim committed and then lost in memory stayed 'sending' for as
    long as the daemon lived: its lease was renewed with every other."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}})
    engine = await make_engine(config, db, clock)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config
    )
    with monkeypatch.context() as patched:
        patched.setattr(engine.dispatcher.sms_leg, "hand_over", lambda ours, now: None)
        await engine.cycle()
    assert (await message(db, message_id))["state"] == "sending"

    clock.advance(10)
    assert await engine.dispatcher.release_orphans(clock.now()) == 1
    await engine.recorder.drain()
    requeued = await message(db, message_id)
    assert requeued["state"] == "queued"
    clock.advance(max(0.0, (requeued["not_before"] - clock.now()).total_seconds()))
    await engine.cycle()
    assert (await message(db, message_id))["state"] in ("submitted", "delivered")
    assert [s.request.message_id for s in engine.network.submitted] == [message_id]


async def test_a_claim_being_submitted_is_not_given_back(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock, network=SubmitsHang(clock, list(config.carriers)))
    await enqueue(db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config)
    await engine.dispatcher.dispatch_once(clock.now())
    clock.advance(10)
    assert await engine.dispatcher.release_orphans(clock.now()) == 0


class FirstSubmitWaits(NetworkStandIn):
    """The first submit is answered when the test says; later ones hang."""

    def __init__(self, clock: FakeClock, carriers: list[str]) -> None:
        super().__init__(clock, carriers)
        self.answer_first = asyncio.Event()
        self.calls = 0

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        self.calls += 1
        if self.calls == 1:
            await self.answer_first.wait()
            return await super().submit(carrier, request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_message_handed_over_again_stays_held_when_its_first_submit_ends(
    dsn: str, db: Database
) -> None:
    """A message claimed again (a reroute) while the task of its previous
    hand-over is still finishing: that task's end must not take the new
    hand-over's hold with it, or the orphan release records the parts in
    flight unsent and the message is sent twice."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = FirstSubmitWaits(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config
    )
    leg = engine.dispatcher.sms_leg
    handed: list[Any] = []
    hand_over = leg.hand_over

    def keep(ours: Any, now: datetime) -> None:
        handed.extend(ours)
        hand_over(ours, now)

    leg.hand_over = keep  # type: ignore[method-assign]
    await engine.dispatcher.dispatch_once(clock.now())
    [planned] = handed
    leg.hand_over(handed, clock.now())  # the same message handed over again
    network.answer_first.set()
    for _ in range(100):
        if network.calls == 2 and len(leg._in_flight) == 1:
            break
        await asyncio.sleep(0.01)
    assert network.calls == 2 and len(leg._in_flight) == 1
    await engine.recorder.drain()  # the first submit's outcome is written
    claim = (message_id, planned.attempt, planned.carrier, [1])
    assert leg.give_back_unheld([claim]) == []
    for task in list(leg._in_flight):
        task.cancel()


async def test_a_claim_written_while_the_orphans_are_read_is_no_orphan(
    dsn: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orphan release reads this process's unanswered claims, then asks
    what it holds. A submit whose outcome was written in between shows
    pending in what was read and is held by nobody any more: it was held
    before the read, so it must not be given back."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = FirstSubmitWaits(clock, list(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    await enqueue(db, "acme", [{"to": "09012340004", "sms": {"text": "x"}}], clock.now(), config)
    await engine.dispatcher.dispatch_once(clock.now())
    clock.advance(10)
    fetch = db.fetch

    async def fetch_then_answer(name: str, *args: Any) -> list[Any]:
        rows = await fetch(name, *args)
        if name == "own_claims_unanswered":
            assert rows, "the claim is unanswered when read"
            network.answer_first.set()
            await engine.dispatcher.wait_idle()
            await engine.recorder.drain()
        return rows

    monkeypatch.setattr(db, "fetch", fetch_then_answer)
    assert await engine.dispatcher.release_orphans(clock.now()) == 0
