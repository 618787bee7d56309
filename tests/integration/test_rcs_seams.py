"""Regressions at the seams between the +Message leg and the SMS leg.

- An rcs_then_sms message on a daemon without +Message goes as SMS at once:
  the row's leg must say 'sms' (recorded as a fallback), or the au gate,
  which looks for in-flight SMS by leg, does not see it.
- A signed +Message status webhook naming a message that never went by
  +Message (a plain SMS) is refused: never applied, never billed.
"""

from __future__ import annotations

from typing import Any

from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from tests.integration.engine_harness import engine_config, enqueue, make_engine
from tests.integration.test_rcs_leg import CAPABLE, T0, national, rig, status_payload

AU_NUMBER = "08012345678"


async def _history(db: Database, message_id: int) -> list[dict[str, Any]]:
    return await db.call_raw(
        "SELECT kind, detail FROM message_events WHERE message_id = $1 ORDER BY id",
        message_id,
    )


async def _row(db: Database, message_id: int) -> dict[str, Any]:
    return (await db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]


async def test_rcs_then_sms_without_plus_message_goes_on_the_sms_leg_and_holds_the_au_gate(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    engine = await make_engine(engine_config(dsn, {"engine": {"pacing": False}}), db, clock)
    assert engine.dispatcher.rcs_leg is None

    def item() -> dict[str, Any]:
        return {
            "to": AU_NUMBER,
            "channel": "rcs_then_sms",
            "sms": {"text": "x"},
            "rcs": {"text": "y"},
            "carrier": "au",
        }

    [first] = await enqueue(db, "acme", [item()], clock.now(), engine.config)
    assert (await _row(db, first))["leg"] == "rcs"
    assert await engine.cycle() == 1

    row = await _row(db, first)
    assert row["leg"] == "sms"
    assert row["carrier"] == "au"
    assert row["state"] in ("sending", "submitted")
    assert [s.request.message_id for s in engine.network.submitted] == [first]
    history = await _history(db, first)
    kinds = [e["kind"] for e in history]
    assert "fallback" in kinds and "sending" in kinds
    assert kinds.index("fallback") < kinds.index("sending")
    fallback = history[kinds.index("fallback")]
    assert fallback["detail"]["cause"] == "rcs_not_configured"

    # The next message to the same au number waits for the first one's receipt.
    [second] = await enqueue(db, "acme", [item()], clock.now(), engine.config)
    await engine.cycle()
    held = [e["kind"] for e in await _history(db, second)]
    assert "au_gate_hold" in held
    # Held, never marked sending: only the fallback itself moved its leg.
    assert "fallback" in held and held.index("fallback") < held.index("au_gate_hold")
    assert "sending" not in held
    row = await _row(db, second)
    assert (row["state"], row["leg"]) == ("queued", "sms")
    await engine.cycle()
    assert (await _row(db, second))["state"] == "queued"
    assert [s.request.message_id for s in engine.network.submitted] == [first]


async def test_signed_status_webhook_for_a_message_not_on_the_rcs_leg_is_refused(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        [message_id] = await enqueue(
            db,
            "acme",
            [{"to": national(CAPABLE), "channel": "sms", "sms": {"text": "ご予約を承りました"}}],
            r.clock.now(),
            r.engine.config,
        )
        await r.cycle()
        before = await r.row(message_id)
        assert before["channel"] == "sms" and before["leg"] == "sms"
        assert before["rcs_units"] == 0
        events_before = await r.events(message_id)

        status = await r.post_webhook(status_payload(message_id, "delivered", CAPABLE))
        assert 200 <= status < 300

        after = await r.row(message_id)
        assert after["state"] == before["state"]
        assert after["rcs_units"] == 0
        assert after == before
        [rcs_billed] = await db.call_raw(
            "SELECT coalesce(sum(units), 0) AS units FROM billing_counts"
            " WHERE channel = 'rcs' AND account_id = 'acme'"
        )
        assert rcs_billed["units"] == 0
        assert "rcs" not in await r.billing()
        events = await r.events(message_id)
        assert events == events_before
        assert not [e for e in events if e["kind"] == "rcs_late_delivery"]
        assert not [
            e
            for e in events
            if e["kind"] == "delivered" and (e["detail"] or {}).get("channel") == "rcs"
        ]
        rejected = r.metrics.webhooks_rejected_total.labels("not_on_rcs_leg")
        assert rejected._value.get() == 1
