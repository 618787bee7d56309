"""A carrier whose SMSC is away (DOMAIN §4), on a fake clock against a real
PostgreSQL: new numbers go to the next carrier in the order instead of
waiting for it; a message waits only when no candidate left is up, and its
history records the wait once when it starts and once when it ends, with
the retries, however long it lasts; /readyz stays ready while a carrier is
up and says which ones are down."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from carrierd.channels.types import PartOutcome, SmsRequest
from carrierd.domain.clock import FakeClock
from carrierd.http.health import carriers_check
from carrierd.store.db import Database
from tests.integration.apiclient import make_config, running_api
from tests.integration.engine_harness import (
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 10:00 JST
AU_SUBSCRIBER = "+819011110001"
DOCOMO_SUBSCRIBER = "+819011110002"


@dataclass
class CarriersAway(NetworkStandIn):
    """The SMSCs of `down` are unreachable: no bind up, nothing submitted."""

    down: set[str] = field(default_factory=set)

    def is_available(self, carrier: str, route: str = "premium") -> bool:
        return carrier not in self.down and super().is_available(carrier, route)

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        if carrier in self.down:
            return [PartOutcome(i + 1, "unsent") for i in range(len(request.parts))]
        return await super().submit(carrier, request)


async def history(db: Database, message_id: int) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in await db.call_raw(
            "SELECT kind, state, carrier, detail FROM message_events"
            " WHERE message_id = $1 ORDER BY id",
            message_id,
        )
    ]


async def state_of(db: Database, message_id: int) -> dict[str, Any]:
    return dict((await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0])


async def test_with_docomo_away_new_numbers_go_to_the_next_carrier(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = CarriersAway(
        clock,
        list(config.carriers),
        {AU_SUBSCRIBER: "au", DOCOMO_SUBSCRIBER: "docomo"},
        down={"docomo"},
    )
    engine = await make_engine(config, db, clock, network=network)
    [on_au, on_docomo] = await enqueue(
        db,
        "acme",
        [{"to": "09011110001", "sms": {"text": "x"}}, {"to": "09011110002", "sms": {"text": "y"}}],
        clock.now(),
        config,
    )

    await engine.cycle()
    # Never seen before and docomo first in the order: au takes it at once.
    row = await state_of(db, on_au)
    assert (row["state"], row["carrier"]) == ("submitted", "au")
    [sending] = [e for e in await history(db, on_au) if e["kind"] == "sending"]
    assert sending["detail"]["carriers_down"] == ["docomo"]

    # The docomo subscriber is refused by the others, then waits for docomo.
    for _ in range(3):
        clock.advance(1)
        await engine.cycle()
    row = await state_of(db, on_docomo)
    assert row["state"] == "queued"
    assert sorted(row["carriers_wrong"]) == ["au", "rakuten", "softbank"]
    [postponed] = [e for e in await history(db, on_docomo) if e["kind"] == "postponed"]
    assert postponed["detail"] == {"why": "no bind up", "carriers": ["docomo"], "route": "premium"}

    network.down.clear()
    clock.advance(1)
    await engine.cycle()
    row = await state_of(db, on_docomo)
    assert (row["state"], row["carrier"]) == ("submitted", "docomo")
    assert [s.carrier for s in network.submitted if s.request.message_id == on_docomo] == ["docomo"]


async def test_sixty_seconds_of_every_carrier_down_add_two_events(dsn: str, db: Database) -> None:
    """One event when the wait starts, one when it ends with the retries:
    not one per claim (61 after 60 s)."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = CarriersAway(clock, list(config.carriers), down=set(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09011110003", "sms": {"text": "x"}}], clock.now(), config
    )
    before = len(await history(db, message_id))

    retries = 0
    for _ in range(61):  # t = 0 .. 60 s, one claim a second
        retries += await engine.cycle()
        clock.advance(1)
    assert (await state_of(db, message_id))["state"] == "queued"
    assert retries == 61
    during = (await history(db, message_id))[before:]
    assert [e["kind"] for e in during] == ["postponed"]

    network.down.clear()
    await engine.cycle()
    events = (await history(db, message_id))[before:]
    assert [e["kind"] for e in events] == ["postponed", "wait_ended", "sending", "submitted"]
    ended = events[1]
    assert ended["state"] == "queued"
    assert ended["detail"] == {"why": "no bind up", "retries": 60, "waited_s": 61}
    row = await state_of(db, message_id)
    assert (row["wait_cause"], row["wait_retries"]) == (None, 0)


async def test_a_wait_whose_cause_changes_ends_and_starts_again(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    network = CarriersAway(clock, list(config.carriers), down=set(config.carriers))
    engine = await make_engine(config, db, clock, network=network)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09011110004", "sms": {"text": "x"}}], clock.now(), config
    )
    for _ in range(3):
        await engine.cycle()
        clock.advance(1)
    # Expired while waiting: the wait ends with it.
    await db.call_raw("UPDATE messages SET expires_at = $2 WHERE id = $1", message_id, clock.now())
    await engine.cycle()
    kinds = [e["kind"] for e in await history(db, message_id)]
    assert kinds[-3:] == ["postponed", "wait_ended", "expired"]


async def test_readyz_stays_ready_while_a_carrier_is_up(dsn: str, db: Database) -> None:
    binds = {"docomo": (0, 2), "au": (2, 2), "softbank": (1, 2), "rakuten": (0, 1)}

    async def readiness() -> dict[str, object]:
        return {"carriers": carriers_check(binds)}

    async with running_api(make_config(dsn), db, FakeClock(T0), readiness=readiness) as (
        base,
        http,
    ):
        resp = await http.get(f"{base}/readyz")
        body = await resp.json()
        assert resp.status == 200, body
        carriers = body["checks"]["carriers"]
        assert carriers["docomo"] == {"status": "down", "binds_up": 0, "binds": 2}
        assert carriers["au"] == {"status": "up", "binds_up": 2, "binds": 2}
        assert carriers["rakuten"]["status"] == "down"

        binds.update(au=(0, 2), softbank=(0, 2))
        resp = await http.get(f"{base}/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["checks"]["carriers"]["ready"] is False
        assert {
            name: c["status"] for name, c in body["checks"]["carriers"].items() if name != "ready"
        } == dict.fromkeys(binds, "down")
