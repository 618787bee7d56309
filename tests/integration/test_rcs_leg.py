"""The +Message leg on a fake clock: real PostgreSQL, the real dispatcher and
settler, the +Message platform simulator and our webhook endpoint (the real
API app with the leg as its webhook sink) on real sockets. SMS goes to the engine
harness's network stand-in.

The simulator's delivery delays are real (a few ms): tests wait for them
with `sim.wait_idle()` / `sim.wait_for_state()`, bounded by WAIT_S, and
move the fake clock for every timer of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from carrierd.channels.rcs import (
    TIMESTAMP_HEADER,
    webhook_headers,
)
from carrierd.domain.clock import FakeClock
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.rcs_flow import SEND_RETRY_S
from carrierd.domain.states import State
from carrierd.engine.rcs_leg import (
    DELIVERED_GRACE_S,
    RcsClients,
    RcsLeg,
)
from carrierd.http.app import ApiState, build_app
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig
from carrierd.store.db import QUERIES, Database
from carrierd.store.rows import ClaimedMessage
from carrierd.telemetry import Metrics
from tests.integration.engine_harness import Engine, engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 10:00 JST
WEBHOOK_SECRET = "rcs-leg-webhook-secret"
WAIT_S = 10.0  # an upper bound for the simulator's real-time steps, not a speed claim

CAPABLE = "+819012340001"
CAPABLE_2 = "+819012340002"
INCAPABLE = "+819012340003"
INCAPABLE_2 = "+819012340004"
NEVER = "+819012340005"  # capable, never takes delivery (app removed, §8)
NEVER_2 = "+819012340006"
CAPACITY = "+819012340007"  # the platform answers 429 for it
TEXT = {"text": "ご予約を承りました"}


def national(msisdn: str) -> str:
    return "0" + msisdn.removeprefix("+81")


@dataclass
class Rig:
    engine: Engine
    leg: RcsLeg
    sim: RcsPlatformSim
    clock: FakeClock
    db: Database
    metrics: Metrics
    webhook_url: str
    session: aiohttp.ClientSession
    make_leg: Callable[[RcsClients], RcsLeg]

    async def send(self, to: str, channel: str = "rcs_then_sms", **extra: Any) -> int:
        item: dict[str, Any] = {"to": national(to), "channel": channel, "rcs": TEXT, **extra}
        if channel == "rcs_then_sms":
            item.setdefault("sms", {"text": "ご予約を承りました（SMS）"})
        [message_id] = await enqueue(self.db, "acme", [item], self.clock.now(), self.engine.config)
        return message_id

    async def cycle(self) -> int:
        """One dispatch pass with every +Message request answered and recorded."""
        claimed = await self.engine.cycle()
        await self.leg.wait_idle()
        return claimed

    async def settle(self) -> int:
        return await self.engine.settler.settle_once(self.clock.now())

    async def platform_idle(self) -> None:
        """Every simulated delivery made and its webhook answered by us."""
        await asyncio.wait_for(self.sim.wait_idle(), WAIT_S)

    async def row(self, message_id: int) -> dict[str, Any]:
        return (await self.db.call_raw("SELECT * FROM messages WHERE id = $1", message_id))[0]

    async def events(self, message_id: int) -> list[dict[str, Any]]:
        return await self.db.call_raw(
            "SELECT kind, state, detail FROM message_events WHERE message_id = $1 ORDER BY id",
            message_id,
        )

    async def billing(self) -> dict[str, int]:
        rows = await self.db.call_raw(
            "SELECT channel, month, units FROM billing_counts WHERE account_id = 'acme'"
        )
        assert {r["month"] for r in rows} <= {"2026-11"}
        return {r["channel"]: r["units"] for r in rows}

    def sms_sent_to(self, message_id: int) -> int:
        return sum(1 for s in self.engine.network.submitted if s.request.message_id == message_id)

    async def post_webhook(
        self, payload: object, *, signature: str | None = "sign", raw: bytes | None = None
    ) -> int:
        body = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        signed = webhook_headers(body, WEBHOOK_SECRET, self.clock.now())
        if signature == "sign":
            headers.update(signed)
        elif signature is not None:
            headers[TIMESTAMP_HEADER] = signed[TIMESTAMP_HEADER]
            headers["X-Signature"] = signature
        async with self.session.post(self.webhook_url, data=body, headers=headers) as response:
            return response.status


def status_payload(message_id: int, status: str, to: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "messageStatus",
        "messageContact": {"userContact": to},
        "RCSMessage": {
            "msgId": str(message_id),
            "status": status,
            "timestamp": "2026-11-24T01:00:05Z",
            **extra,
        },
    }


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def rig(
    dsn: str, db: Database, config_extra: dict[str, Any] | None = None, **sim: Any
) -> AsyncIterator[Rig]:
    clock = FakeClock(T0)
    # Our webhook socket is bound first: the simulator needs its URL, and
    # our leg needs the simulator's.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    webhook_url = f"http://127.0.0.1:{listener.getsockname()[1]}{WEBHOOK_PATH}"
    sim_config = RcsSimConfig(
        **{
            "capable_share": 0.0,
            "capable_numbers": frozenset({CAPABLE, CAPABLE_2, NEVER, NEVER_2, CAPACITY}),
            "never_deliver_numbers": frozenset({NEVER, NEVER_2}),
            "capacity_numbers": frozenset({CAPACITY}),
            "delivery_delay_min_s": 0.0,
            "delivery_delay_max_s": 0.01,
            "webhook_url": webhook_url,
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_retry_delay_s": 0.01,
            **sim,
        }
    )
    platform = RcsPlatformSim(sim_config, clock=clock)
    async with serve(platform.build_app()) as sim_url, aiohttp.ClientSession() as session:
        config = engine_config(
            dsn,
            {
                "engine": {"pacing": False},
                "rcs": {
                    "enabled": True,
                    "base_url": sim_url,
                    "bot_id": sim_config.bot_id,
                    "token": "sim-token",
                    "webhook_secret": WEBHOOK_SECRET,
                },
                **(config_extra or {}),
            },
        )
        engine = await make_engine(config, db, clock)
        metrics = engine.metrics

        def make_leg(clients: RcsClients) -> RcsLeg:
            return RcsLeg(
                db,
                clock,
                clients,
                engine.lifecycle,
                engine.inbound,
                config=lambda: config,
                lease_owner=engine.dispatcher.lease_owner,
                metrics=metrics,
            )

        leg = make_leg(
            RcsClients(
                session,
                tune=lambda c: replace(c, retry_initial_wait_s=0.01, retry_max_wait_s=0.02),
            )
        )
        engine.dispatcher.rcs_leg = leg
        engine.settler.rcs_timers = leg
        api = build_app(ApiState(config, db, clock, metrics=metrics, webhook_sink=leg))
        runner = web.AppRunner(api)
        await runner.setup()
        await web.SockSite(runner, listener).start()
        try:
            yield Rig(engine, leg, platform, clock, db, metrics, webhook_url, session, make_leg)
        finally:
            await leg.wait_idle()
            await runner.cleanup()


# -- capability ----------------------------------------------------------------------


async def test_not_capable_goes_to_the_sms_leg_at_once(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        fallback = await r.send(INCAPABLE)
        rcs_only = await r.send(INCAPABLE_2, channel="rcs")
        assert await r.cycle() == 2
        row = await r.row(fallback)
        assert (row["state"], row["leg"], row["not_before"]) == ("queued", "sms", T0)
        events = await r.events(fallback)
        assert events[-1]["kind"] == "fallback"
        assert events[-1]["detail"]["cause"] == "not_capable"
        failed = await r.row(rcs_only)
        assert (failed["state"], failed["reason_code"]) == ("failed", "rcs_not_capable")
        assert r.sim.counters.accepted_by_msg_id == {}

        # The SMS leg is an ordinary SMS from here: carrier, pacing, receipts.
        assert await r.cycle() == 1
        assert r.sms_sent_to(fallback) == 1
        [sms] = r.engine.network.submitted
        await r.engine.receipt(sms.carrier, sms.smsc_ids[0])
        done = await r.row(fallback)
        assert (done["state"], done["sms_units"], done["rcs_units"]) == ("delivered", 1, 0)
        assert await r.billing() == {"sms": 1}
        assert r.metrics.fallbacks_total.labels("not_capable")._value.get() == 1


async def test_capability_answers_are_cached_for_their_ttl(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        await r.send(INCAPABLE)
        await r.send(INCAPABLE)  # same number, same batch: asked once
        await r.cycle()
        assert r.sim.counters.capability_checks == 1
        r.clock.advance(3600)
        await r.send(INCAPABLE)
        await r.cycle()
        assert r.sim.counters.capability_checks == 1
        r.clock.advance(24 * 3600)  # capability_ttl_s (default 24 h) has passed
        await r.send(INCAPABLE)
        await r.cycle()
        assert r.sim.counters.capability_checks == 2


async def test_carrier_restriction_without_a_plus_message_carrier(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        to_sms = await r.send(CAPABLE, carriers=["rakuten"])
        skipped = await r.send(CAPABLE_2, channel="rcs", carriers=["rakuten"])
        await r.cycle()
        assert (await r.events(to_sms))[-1]["detail"]["cause"] == "carrier_restriction"
        row = await r.row(skipped)
        assert (row["state"], row["reason_code"]) == ("skipped", "not_in_carrier_restriction")
        assert r.sim.counters.capability_checks == 0


# -- delivery ------------------------------------------------------------------------


async def test_delivered_in_time_is_billed_one_rcs_unit(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(CAPABLE, channel="rcs_then_sms")
        await r.cycle()
        await r.platform_idle()
        row = await r.row(message_id)
        assert (row["state"], row["leg"], row["rcs_units"]) == ("delivered", "rcs", 1)
        assert row["rcs_sent_at"] == T0
        assert await r.billing() == {"rcs": 1}
        # The platform repeats the webhook: nothing changes.
        assert await r.post_webhook(status_payload(message_id, "delivered", CAPABLE)) == 204
        assert await r.post_webhook(status_payload(message_id, "displayed", CAPABLE)) == 204
        assert await r.billing() == {"rcs": 1}
        # The fallback time passes: no revoke, no SMS.
        r.clock.advance(601)
        await r.settle()
        await r.cycle()
        assert r.sim.counters.revoke_requests == 0
        assert r.engine.network.submitted == []
        kinds = [e["kind"] for e in await r.events(message_id)]
        assert kinds == ["accepted", "claimed", "rcs_sent", "delivered"]


async def test_status_webhook_that_beats_the_send_is_applied_with_it(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db, delivery_delay_min_s=5.0, delivery_delay_max_s=5.0) as r:
        message_id = await r.send(CAPABLE)
        # A claim hands +Message rows to the leg 'dispatching' under a lease.
        async with db.transaction() as tx:
            claimed = [
                ClaimedMessage.from_row(c)
                for c in await tx.fetch("claim_due", r.clock.now(), ["acme"], [10], [0])
            ]
            await r.engine.lifecycle.apply(
                tx,
                [
                    Move(
                        c.id,
                        State.QUEUED,
                        State.DISPATCHING,
                        Event.CLAIMED,
                        lease_owner="d1",
                        lease_until=r.clock.now() + timedelta(seconds=60),
                    )
                    for c in claimed
                ],
                r.clock.now(),
            )
        # The platform reports delivery before our send is recorded.
        assert await r.post_webhook(status_payload(message_id, "delivered", CAPABLE)) == 204
        assert (await r.row(message_id))["state"] == "dispatching"
        await r.leg.dispatch(claimed, r.clock.now())
        await r.leg.wait_idle()
        row = await r.row(message_id)
        assert (row["state"], row["rcs_units"]) == ("delivered", 1)
        assert (await r.events(message_id))[-1]["detail"]["early"] is True
        assert await db.call_raw("SELECT * FROM rcs_early_statuses") == []
        assert await r.billing() == {"rcs": 1}


# -- fallback at 10 minutes ------------------------------------------------------------


async def test_fallback_after_ten_minutes_revokes_then_queues_the_sms_leg(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(NEVER)
        await r.cycle()
        row = await r.row(message_id)
        assert row["state"] == "rcs_sent"
        assert row["fallback_at"] == T0 + timedelta(minutes=10)
        r.clock.advance(599)
        await r.settle()
        assert (await r.row(message_id))["state"] == "rcs_sent"
        assert r.sim.counters.revoke_requests == 0
        r.clock.advance(1)
        await r.settle()
        row = await r.row(message_id)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        assert r.sim.counters.revoked_msg_ids == {str(message_id): 1}
        fallback = (await r.events(message_id))[-1]
        assert fallback["kind"] == "fallback"
        assert fallback["detail"]["cause"] == "not_delivered_in_time"
        assert fallback["detail"]["revoke"]["answer"] == "revoked"

        await r.cycle()
        assert r.sms_sent_to(message_id) == 1
        [sms] = r.engine.network.submitted
        await r.engine.receipt(sms.carrier, sms.smsc_ids[0])
        await r.platform_idle()
        row = await r.row(message_id)
        assert (row["state"], row["sms_units"], row["rcs_units"]) == ("delivered", 1, 0)
        assert r.sim.counters.delivered_by_recipient == {}
        assert await r.billing() == {"sms": 1}


async def test_revoke_refused_as_already_delivered_sends_no_sms(dsn: str, db: Database) -> None:
    # The platform has committed to the delivery when the revoke lands.
    async with rig(
        dsn,
        db,
        delivery_delay_min_s=30.0,
        delivery_delay_max_s=30.0,
        commit_before_delivery_s=30.0,
        revoke_race="already_delivered",
    ) as r:
        message_id = await r.send(CAPABLE)
        await r.cycle()
        await asyncio.wait_for(r.sim.wait_for_state(str(message_id), "committed"), WAIT_S)
        r.clock.advance(600)
        await r.settle()
        row = await r.row(message_id)
        assert row["state"] == "rcs_sent"
        refused = (await r.events(message_id))[-1]
        assert refused["kind"] == "rcs_revoke_refused"
        assert refused["detail"]["revoke"]["answer"] == "already_delivered"
        await r.sim.deliver_now(str(message_id))  # its delivered webhook is answered by us
        row = await r.row(message_id)
        assert (row["state"], row["rcs_units"]) == ("delivered", 1)
        r.clock.advance(DELIVERED_GRACE_S)
        await r.settle()
        await r.cycle()
        assert r.engine.network.submitted == []
        assert await r.billing() == {"rcs": 1}


async def test_already_delivered_without_a_webhook_counts_as_delivered(
    dsn: str, db: Database
) -> None:
    async with rig(
        dsn,
        db,
        delivery_delay_min_s=30.0,
        delivery_delay_max_s=30.0,
        commit_before_delivery_s=30.0,
        revoke_race="already_delivered",
    ) as r:
        message_id = await r.send(CAPABLE)
        await r.cycle()
        await asyncio.wait_for(r.sim.wait_for_state(str(message_id), "committed"), WAIT_S)
        r.clock.advance(600)
        await r.settle()
        r.clock.advance(DELIVERED_GRACE_S - 1)
        await r.settle()
        assert (await r.row(message_id))["state"] == "rcs_sent"
        r.clock.advance(1)
        await r.settle()
        row = await r.row(message_id)
        assert (row["state"], row["rcs_units"]) == ("delivered", 1)
        assert (await r.events(message_id))[-1]["detail"]["assumed"] is True
        assert r.sim.counters.revoke_requests == 1  # not asked again
        await r.cycle()
        assert r.engine.network.submitted == []
        assert await r.billing() == {"rcs": 1}


async def test_delivery_after_a_successful_revoke_is_recorded_and_billed(
    dsn: str, db: Database
) -> None:
    # accept_cancel: the platform answers the revoke with success and
    # delivers anyway (§9's old apps). The SMS leg has started by then.
    async with rig(
        dsn,
        db,
        delivery_delay_min_s=30.0,
        delivery_delay_max_s=30.0,
        commit_before_delivery_s=30.0,
        revoke_race="accept_cancel",
    ) as r:
        message_id = await r.send(CAPABLE)
        await r.cycle()
        await asyncio.wait_for(r.sim.wait_for_state(str(message_id), "committed"), WAIT_S)
        r.clock.advance(600)
        await r.settle()
        assert (await r.row(message_id))["leg"] == "sms"
        await r.sim.deliver_now(str(message_id))
        await r.sim.deliver_now(str(message_id))  # a repeat changes nothing
        payload = status_payload(message_id, "delivered", CAPABLE)
        assert await r.post_webhook(payload) == 204
        row = await r.row(message_id)
        assert (row["state"], row["leg"], row["rcs_units"]) == ("queued", "sms", 1)
        late = [e for e in await r.events(message_id) if e["kind"] == "rcs_late_delivery"]
        assert len(late) == 1 and late[0]["detail"]["billed"] is True
        assert await r.billing() == {"rcs": 1}
        # Nothing is sent because of it; the SMS leg goes on as it was.
        await r.cycle()
        assert r.sms_sent_to(message_id) == 1


# -- capacity, errors, failures ---------------------------------------------------------


async def test_capacity_exceeded_sends_sms_at_once(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        fallback = await r.send(CAPACITY)
        rcs_only = await r.send(CAPACITY, channel="rcs")
        await r.cycle()
        row = await r.row(fallback)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        event = (await r.events(fallback))[-1]
        assert (event["kind"], event["detail"]["cause"]) == ("fallback", "capacity_exceeded")
        assert event["detail"]["http_status"] == 429
        failed = await r.row(rcs_only)
        assert (failed["state"], failed["reason_code"]) == ("failed", "rcs_capacity_exceeded")
        await r.cycle()
        assert r.sms_sent_to(fallback) == 1
        assert r.sim.counters.capacity_rejections == 2


async def test_send_error_retries_then_falls_back_through_a_revoke(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        # A daemon that cannot reach the platform (connection refused).
        dead = RcsClients(
            r.session, tune=lambda c: replace(c, base_url="http://127.0.0.1:1", max_attempts=1)
        )
        cut_off = r.make_leg(dead)
        r.engine.dispatcher.rcs_leg = cut_off
        message_id = await r.send(CAPABLE)
        await r.engine.cycle()
        await cut_off.wait_idle()
        row = await r.row(message_id)
        assert (row["state"], row["leg"]) == ("queued", "rcs")
        assert row["not_before"] == T0 + timedelta(seconds=SEND_RETRY_S)
        assert (await r.events(message_id))[-1]["kind"] == "rcs_retry"

        # Still unreachable when the fallback delay has passed: the message
        # goes through rcs_sent so that a revoke comes before any SMS.
        r.clock.advance(600)
        await r.engine.cycle()
        await cut_off.wait_idle()
        row = await r.row(message_id)
        assert (row["state"], row["fallback_at"]) == ("rcs_sent", r.clock.now())
        # Another daemon, which reaches the platform, settles the timer.
        await r.settle()
        row = await r.row(message_id)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        assert (await r.events(message_id))[-1]["detail"]["revoke"]["answer"] == "not_found"
        await r.cycle()
        assert r.sms_sent_to(message_id) == 1


async def test_lost_send_answer_is_retried_under_the_same_msg_id(dsn: str, db: Database) -> None:
    # The platform stores the message but its answer is lost (502): the
    # client's own retry gets 409 "already exists" = accepted, sent once.
    async with rig(dsn, db, transient_5xx_share=1.0, transient_after_accept=True) as r:
        message_id = await r.send(CAPABLE)
        await r.cycle()
        await r.platform_idle()
        assert (await r.row(message_id))["state"] == "delivered"
        assert r.sim.counters.accepted_by_msg_id == {str(message_id): 1}
        assert r.sim.counters.posts_by_msg_id == {str(message_id): 2}


async def test_failed_webhook_falls_back_or_fails(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        fallback = await r.send(NEVER)
        rcs_only = await r.send(NEVER_2, channel="rcs")
        await r.cycle()
        for message_id, to in ((fallback, NEVER), (rcs_only, NEVER_2)):
            payload = status_payload(message_id, "failed", to, failureReason="app uninstalled")
            assert await r.post_webhook(payload) == 204
        row = await r.row(fallback)
        assert (row["state"], row["leg"]) == ("queued", "sms")
        event = (await r.events(fallback))[-1]
        assert event["detail"] == {"cause": "rcs_failed", "platform": "app uninstalled"}
        row = await r.row(rcs_only)
        assert (row["state"], row["reason_code"]) == ("failed", "rcs_failed")
        assert "app uninstalled" in row["reason_text"]
        await r.cycle()
        assert r.sms_sent_to(fallback) == 1 and r.sms_sent_to(rcs_only) == 0
        assert r.sim.counters.revoke_requests == 0


# -- 72-hour expiry -------------------------------------------------------------------


async def test_72_hour_expiry_sends_a_discard_and_records_its_answer(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r:
        r.clock.advance(3600)  # queued an hour before it left: 72 h count from the send
        message_id = await r.send(NEVER, channel="rcs")
        sent_at = r.clock.now()
        await r.cycle()
        row = await r.row(message_id)
        assert (row["state"], row["fallback_at"]) == ("rcs_sent", None)
        assert row["expires_at"] == sent_at + timedelta(hours=72)
        r.clock.advance(72 * 3600 - 1)
        await r.settle()
        assert (await r.row(message_id))["state"] == "rcs_sent"
        r.clock.advance(1)
        await r.settle()
        row = await r.row(message_id)
        assert (row["state"], row["reason_code"], row["rcs_units"]) == (
            "expired",
            "rcs_discarded",
            0,
        )
        event = (await r.events(message_id))[-1]
        assert event["kind"] == "expired"
        assert event["detail"]["discard"] == {"answer": "revoked", "http_status": 204}
        assert r.sim.counters.revoked_msg_ids == {str(message_id): 1}
        assert r.metrics.discards_total.labels("revoked")._value.get() == 1
        assert await r.billing() == {}


async def test_delivery_after_the_discard_is_recorded_not_billed(dsn: str, db: Database) -> None:
    async with rig(
        dsn,
        db,
        delivery_delay_min_s=30.0,
        delivery_delay_max_s=30.0,
        commit_before_delivery_s=30.0,
        revoke_race="accept_cancel",
    ) as r:
        message_id = await r.send(CAPABLE, channel="rcs")
        await r.cycle()
        await asyncio.wait_for(r.sim.wait_for_state(str(message_id), "committed"), WAIT_S)
        r.clock.advance(72 * 3600)
        await r.settle()
        assert (await r.row(message_id))["state"] == "expired"
        r.clock.advance(60)  # the old app delivers past the 72 h
        await r.sim.deliver_now(str(message_id))
        row = await r.row(message_id)
        assert (row["state"], row["rcs_units"]) == ("expired", 0)
        late = [e for e in await r.events(message_id) if e["kind"] == "rcs_late_delivery"]
        assert len(late) == 1 and late[0]["detail"]["billed"] is False
        assert r.sim.counters.late_deliveries == 1
        assert await r.billing() == {}


# -- webhooks --------------------------------------------------------------------------


async def test_forged_webhooks_are_rejected_and_change_nothing(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(NEVER)
        await r.cycle()
        await r.platform_idle()
        before = await r.row(message_id)
        payload = status_payload(message_id, "delivered", NEVER)
        assert await r.post_webhook(payload, signature=None) == 401
        assert await r.post_webhook(payload, signature="0" * 64) == 401
        body = json.dumps(payload, ensure_ascii=False).encode()
        forged = webhook_headers(body, "someone-elses-secret", r.clock.now())["X-Signature"]
        assert await r.post_webhook(payload, signature=forged) == 401
        assert await r.post_webhook(None, raw=b"{not json") == 400
        assert await r.post_webhook({"event": "messageStatus", "RCSMessage": {}}) == 400
        assert await r.row(message_id) == before
        assert await r.billing() == {}
        rejected = r.metrics.webhooks_rejected_total
        assert rejected.labels("missing_signature")._value.get() == 1
        assert rejected.labels("bad_signature")._value.get() == 2
        assert rejected.labels("malformed_json")._value.get() == 1
        assert rejected.labels("unknown_shape")._value.get() == 1


async def test_replies_are_stored_once_for_the_account_of_the_message(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db, inbound_reply_share=1.0, inbound_reply_delay_s=0.0) as r:
        [message_id] = await enqueue(
            db,
            "acme",
            [
                {
                    "to": national(CAPABLE),
                    "channel": "rcs",
                    "rcs": {
                        "text": "ご来店はいつですか",
                        "chips": [{"type": "reply", "text": "明日", "postback": "tomorrow"}],
                    },
                }
            ],
            r.clock.now(),
            r.engine.config,
        )
        await r.cycle()
        await r.platform_idle()
        inbound = await db.call_raw("SELECT * FROM inbound_messages")
        assert len(inbound) == 1
        reply = inbound[0]
        assert (reply["account_id"], reply["channel"], reply["msisdn"]) == ("acme", "rcs", CAPABLE)
        assert (reply["text"], reply["postback"], reply["in_reply_to"]) == (
            "明日",
            "tomorrow",
            message_id,
        )
        # The same reply again (the platform retries), then a text reply that
        # names no message, then typing: one more row, owned by the account.
        repeat = {
            "event": "response",
            "messageContact": {"userContact": CAPABLE},
            "RCSMessage": {
                "msgId": reply["raw"]["msgId"],
                "inReplyTo": str(message_id),
                "suggestedResponse": {
                    "response": {"reply": {"displayText": "明日", "postback": {"data": "tomorrow"}}}
                },
            },
        }
        assert await r.post_webhook(repeat) == 200  # a duplicate: nothing stored
        text = {
            "event": "message",
            "messageContact": {"userContact": CAPABLE},
            "RCSMessage": {"msgId": "mo-text-1", "textMessage": "ありがとう"},
        }
        assert await r.post_webhook(text) == 204
        typing = {
            "event": "isTyping",
            "messageContact": {"userContact": CAPABLE},
            "RCSMessage": {"isTyping": "active"},
        }
        assert await r.post_webhook(typing) == 204
        rows = await db.call_raw(
            "SELECT account_id, text, in_reply_to FROM inbound_messages ORDER BY id"
        )
        assert rows == [
            {"account_id": "acme", "text": "明日", "in_reply_to": message_id},
            {"account_id": "acme", "text": "ありがとう", "in_reply_to": message_id},
        ]


# -- query plans ------------------------------------------------------------------------


async def test_timer_claims_use_their_indexes(db: Database) -> None:
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('a')")
    # Mostly final rows, as in production, and a few hundred waiting on +Message.
    await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              rcs_content, not_before, fallback_at, expires_at, rcs_sent_at,
                              accepted_at, updated_at)
        SELECT 'a', 'rcs_then_sms', 'rcs',
               CASE WHEN i % 100 = 0 THEN 'rcs_sent' ELSE 'delivered' END,
               '09012345678', '+819012345678', true, '{"text": "x"}',
               $1::timestamptz, $1::timestamptz + make_interval(secs => i),
               $1::timestamptz + interval '3 days', $1::timestamptz, $1::timestamptz,
               $1::timestamptz
        FROM generate_series(1, 50000) AS i
        """,
        T0,
    )
    await db.call_raw("ANALYZE messages")
    later = T0 + timedelta(minutes=10)
    for name, index in (
        ("rcs_claim_fallback_due", "messages_fallback_due"),
        ("rcs_claim_expiry_due", "messages_expiry_due"),
    ):
        rows = await db.call_raw("EXPLAIN (FORMAT JSON) " + QUERIES[name], later, 500, later)
        raw = rows[0]["QUERY PLAN"]
        nodes = list(plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))
        scans = [n for n in nodes if n.get("Relation Name") == "messages"]
        assert any(n.get("Index Name") == index for n in scans), (name, scans)
        assert not any(n["Node Type"] == "Seq Scan" for n in scans), (name, scans)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)
