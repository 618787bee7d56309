"""Cancelling a +Message already with the platform: revoke first, over real
HTTP to the +Message simulator, then cancelled unless it was delivered."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from carrierd.domain.rcs_flow import SEND_RETRY_S
from carrierd.engine.rcs_leg import RcsClients
from carrierd.store.db import Database
from tests.integration.test_api_surface import api, assert_error, call
from tests.integration.test_rcs_leg import CAPABLE, NEVER, NEVER_2, T0, WAIT_S, rig


async def test_cancel_of_rcs_sent_revokes_then_cancels(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        message_id = await r.send(NEVER)
        await r.cycle()
        assert (await r.row(message_id))["state"] == "rcs_sent"
        async with api(db, r.engine.config, r.clock, r.engine.lifecycle, r.leg.revoke) as (
            base,
            http,
            _,
        ):
            status, view, _ = await call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
        assert status == 200, view
        assert (view["state"], view["status"]) == ("cancelled", 3)
        assert r.sim.counters.revoked_msg_ids == {str(message_id): 1}
        event = (await r.events(message_id))[-1]
        assert (event["kind"], event["detail"]["revoke"]["answer"]) == ("cancelled", "revoked")
        # Its fallback never comes: nothing is sent by SMS.
        r.clock.advance(3600)
        await r.settle()
        await r.cycle()
        assert r.engine.network.submitted == []


async def test_cancel_of_rcs_the_platform_delivered_is_409(dsn: str, db: Database) -> None:
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
        async with api(db, r.engine.config, r.clock, r.engine.lifecycle, r.leg.revoke) as (
            base,
            http,
            _,
        ):
            status, body, _ = await call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
        assert status == 409, body
        assert_error(body, "not_cancellable")
        assert body["state"] == "rcs_sent"
        assert "delivered" in body["error"]["message"]
        assert (await r.row(message_id))["state"] == "rcs_sent"


async def test_cancel_of_a_send_retried_after_a_lost_answer_revokes_it(
    dsn: str, db: Database
) -> None:
    # The platform stores the message but its answer is lost, and this
    # daemon's client does not ask again: the message is queued for a retry
    # while the platform holds it.
    async with rig(
        dsn,
        db,
        transient_5xx_share=1.0,
        transient_after_accept=True,
        delivery_delay_min_s=30.0,
        delivery_delay_max_s=30.0,
    ) as r:
        once = r.make_leg(RcsClients(r.session, tune=lambda c: replace(c, max_attempts=1)))
        r.engine.dispatcher.rcs_leg = once
        message_id = await r.send(CAPABLE, channel="rcs")
        await r.engine.cycle()
        await once.wait_idle()
        row = await r.row(message_id)
        assert (row["state"], row["leg"]) == ("queued", "rcs")
        assert r.sim.counters.accepted_by_msg_id == {str(message_id): 1}
        async with api(db, r.engine.config, r.clock, r.engine.lifecycle, once.revoke) as (
            base,
            http,
            _,
        ):
            status, view, _ = await call(http, "POST", f"{base}/v1/messages/{message_id}/cancel")
        assert status == 200, view
        assert view["state"] == "cancelled"
        assert r.sim.counters.revoked_msg_ids == {str(message_id): 1}
        # The retry never comes.
        r.clock.advance(SEND_RETRY_S + 60)
        await r.engine.cycle()
        await once.wait_idle()
        assert r.sim.counters.accepted_by_msg_id == {str(message_id): 1}
        assert (await r.row(message_id))["not_before"] >= T0 + timedelta(seconds=SEND_RETRY_S)


async def test_cancel_of_a_send_revokes_its_rcs_sent_messages_first(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        async with api(db, r.engine.config, r.clock, r.engine.lifecycle, r.leg.revoke) as (
            base,
            http,
            _,
        ):
            send = {
                "channel": "rcs_then_sms",
                "rcs": {"text": "{{name}}様 ご予約を承りました"},
                "sms": {"text": "{{name}}様 ご予約を承りました（SMS）"},
                "recipients": [
                    {"to": "0" + NEVER.removeprefix("+81"), "variables": {"name": "山田"}},
                    {"to": "0" + NEVER_2.removeprefix("+81"), "variables": {"name": "佐藤"}},
                ],
            }
            status, answer, _ = await call(http, "POST", f"{base}/v1/sends", json=send)
            assert status == 202, answer
            await r.cycle()
            rows = await db.call_raw("SELECT id, state FROM messages ORDER BY id")
            assert [row["state"] for row in rows] == ["rcs_sent", "rcs_sent"]
            status, cancelled, _ = await call(
                http, "POST", f"{base}/v1/sends/{answer['id']}/cancel"
            )
        assert status == 200, cancelled
        assert cancelled["cancelled"] == 2
        assert r.sim.counters.revoked_msg_ids == {str(row["id"]): 1 for row in rows}
        for row in rows:
            event = (await r.events(row["id"]))[-1]
            assert (event["kind"], event["detail"]["revoke"]["answer"]) == ("cancelled", "revoked")
