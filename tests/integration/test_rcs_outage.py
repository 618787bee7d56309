"""A +Message platform that stays unreachable: the message is claimed and
asked again every SEND_RETRY_S, and its history records the wait once when
it starts and once when it ends (with the retries), not two events per
retry (claimed, rcs_retry)."""

from __future__ import annotations

from dataclasses import replace

from carrierd.domain.rcs_flow import SEND_RETRY_S
from carrierd.engine.rcs_leg import RcsClients
from carrierd.store.db import Database
from tests.integration.test_rcs_leg import CAPABLE, rig


async def test_retries_against_an_unreachable_platform_log_one_wait(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        dead = RcsClients(
            r.session, tune=lambda c: replace(c, base_url="http://127.0.0.1:1", max_attempts=1)
        )
        cut_off = r.make_leg(dead)
        r.engine.dispatcher.rcs_leg = cut_off
        message_id = await r.send(CAPABLE, channel="rcs")
        for _ in range(10):
            await r.engine.cycle()
            await cut_off.wait_idle()
            r.clock.advance(SEND_RETRY_S)
        kinds = [e["kind"] for e in await r.events(message_id)]
        assert kinds == ["accepted", "claimed", "rcs_retry"]
        row = await r.row(message_id)
        assert (row["state"], row["wait_retries"]) == ("queued", 9)

        # The platform is back: the wait ends before the send.
        r.engine.dispatcher.rcs_leg = r.leg
        await r.cycle()
        events = await r.events(message_id)
        assert [e["kind"] for e in events][3:5] == ["wait_ended", "rcs_sent"]
        ended = events[3]["detail"]
        assert (ended["why"], ended["retries"]) == ("+Message platform error", 9)
