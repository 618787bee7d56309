"""Replies to a send through the HTTP API, the SMSC simulator (real SMPP
binds, MO deliver_sm) and PostgreSQL on a fake clock: the survey choice of
each reply (Ａ = A = a, a two-letter code, unmatched kept), the tally and
the replies list of GET /v1/sends; the auto-reply once per recipient and
choice, within the reply validity only (just inside, just outside), once
under concurrent answers; a +Message chip tap matched by its postback."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from carrierd.engine.inbound import NewInbound
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.sim.smsc import mo_deliver_pdus
from carrierd.store.db import Database
from tests.integration.apiclient import auth, running_api
from tests.integration.test_inbound_sms import ACME, rig, until
from tests.integration.test_rcs_leg import CAPABLE, national
from tests.integration.test_rcs_leg import T0 as T0_RCS
from tests.integration.test_rcs_leg import rig as rcs_rig

ACME_AUTH = auth("acme-token")
H1, H2, H3, H4, H5 = (f"+8190111100{n:02d}" for n in range(1, 6))

SURVEY: dict[str, Any] = {
    "sms": {"text": "忘年会に参加されますか？ A: 参加 B: 不参加 AB: 未定 とご返信ください"},
    "choices": [
        {"code": "A", "label": "参加"},
        {"code": "b", "label": "不参加"},
        {"code": "AB", "label": "未定"},
    ],
    "auto_reply": {
        "sms": {"text": "ご返信ありがとうございます。"},
        "per_choice": {
            "A": {"sms": {"text": "ご参加ありがとうございます。"}},
            "B": {"sms": {"text": "承知しました。"}},
        },
    },
    "reply_valid_s": 3600,
}


def auto_replies(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((r["msisdn"], r["client_ref"].split(":", 2)[2], r["sms_text"]) for r in rows)


async def test_survey_tally_replies_and_auto_reply_once_within_validity(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()) as engine:
        config = engine.config
        async with running_api(config, db, r.clock) as (base, http):
            body = {**SURVEY, "recipients": [H1, H2, H3, H4, H5]}
            async with http.post(f"{base}/v1/sends", json=body, headers=ACME_AUTH) as resp:
                assert resp.status == 202, await resp.text()
                send_id = (await resp.json())["id"]
            await engine.cycle()
            await until(lambda: r.sim.counters.carriers["docomo"].accepted >= 5)
            [sent] = await db.call_raw(
                "SELECT max(submitted_at) AS at FROM messages WHERE send_id = $1", int(send_id)
            )
            assert sent["at"] is not None

            async def answer(msisdn: str, text: str) -> None:
                r.sim.send_mo_pdus("docomo", mo_deliver_pdus(msisdn, ACME, text))
                await r.delivered()

            r.clock.advance(10)
            await answer(H1, "Ａ")  # full-width: choice A, its reply
            await answer(H1, " a ")  # A again: no second reply for A
            # Its auto-reply leaves: what H1 says next answers it, and
            # still counts for the send.
            await engine.cycle()
            await until(lambda: r.sim.counters.carriers["docomo"].accepted >= 6)
            await answer(H1, "b")  # B: a reply for B (per choice)
            await answer(H2, "ａｂ")  # the two-letter code
            await answer(H3, "はい、参加します")  # unmatched: the default reply
            await answer(H3, "よろしく")  # unmatched again: none
            # Exactly at the end of the validity: still answered.
            r.clock.set(sent["at"] + timedelta(seconds=3600))
            await answer(H4, "A")
            # Just after it: the choice counts, no auto-reply.
            r.clock.advance(0.001)
            await answer(H5, "B")

            rows = await db.call_raw(
                "SELECT msisdn, client_ref, sms_text FROM messages"
                " WHERE client_ref LIKE 'auto-reply:%'"
            )
            assert auto_replies(rows) == sorted(
                [
                    (H1, f"{H1}:A", "ご参加ありがとうございます。"),
                    (H1, f"{H1}:B", "承知しました。"),
                    # AB has no content of its own: the default one.
                    (H2, H2, "ご返信ありがとうございます。"),
                    (H3, H3, "ご返信ありがとうございます。"),
                    (H4, f"{H4}:A", "ご参加ありがとうございます。"),
                ]
            )
            assert {r["client_ref"].split(":")[1] for r in rows} == {send_id}
            [b] = await db.call_raw(
                "SELECT m.client_ref FROM inbound_messages i JOIN messages m"
                " ON m.id = i.in_reply_to WHERE i.text = 'b'"
            )
            assert b["client_ref"] == f"auto-reply:{send_id}:{H1}:A"

            async with http.get(f"{base}/v1/sends/{send_id}", headers=ACME_AUTH) as resp:
                view = await resp.json()
            # One answer per recipient, their latest matched: H1 counts for B.
            assert view["survey"] == {
                "choices": [
                    {"code": "A", "label": "参加", "count": 1},
                    {"code": "B", "label": "不参加", "count": 2},
                    {"code": "AB", "label": "未定", "count": 1},
                ],
                "answered": 4,
                "unmatched": {"replies": 2, "repliers": 1},
            }
            assert view["replies"] == {"replies": 8, "repliers": 5}

            seen: list[tuple[str, str | None, str | None]] = []
            cursor = ""
            while True:
                url = f"{base}/v1/sends/{send_id}/replies?limit=4{cursor}"
                async with http.get(url, headers=ACME_AUTH) as resp:
                    assert resp.status == 200
                    page = await resp.json()
                seen += [(p["from"], p["text"], p["choice"]) for p in page["replies"]]
                assert all(p["send_id"] == send_id for p in page["replies"])
                if page["next_cursor"] is None:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            assert (
                seen
                == [
                    (H1, "Ａ", "A"),
                    (H1, " a ", "A"),
                    (H1, "b", "B"),
                    (H2, "ａｂ", "AB"),
                    (H3, "はい、参加します", None),
                    (H3, "よろしく", None),
                    (H4, "A", "A"),
                    (H5, "B", "B"),
                ][: len(seen)]
            )
            assert len(seen) == 8

            async with http.get(f"{base}/v1/sends/999/replies", headers=ACME_AUTH) as resp:
                assert resp.status == 404


async def test_concurrent_answers_get_one_auto_reply(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()) as engine:
        config = engine.config
        async with running_api(config, db, r.clock) as (base, http):
            # The auto-reply takes the recipient's variables, substituted
            # and checked at registration.
            body = {
                "sms": {"text": "ご意見を"},
                "auto_reply": {"sms": {"text": "{{name}}様 受付"}},
                "recipients": [
                    {"to": H1, "variables": {"name": "山田"}},
                    {"to": H2},
                    {"to": H3, "variables": {"name": "長" * 700}},
                ],
            }
            async with http.post(f"{base}/v1/sends", json=body, headers=ACME_AUTH) as resp:
                assert resp.status == 202, await resp.text()
                answer = await resp.json()
            assert [(j["row"], j["field"]) for j in answer["rejections"]] == [
                (1, "variables.name"),
                (2, "auto_reply.sms.text"),
            ]
            await engine.cycle()
            await until(lambda: r.sim.counters.carriers["docomo"].accepted >= 1)

        def reply(text: str) -> NewInbound:
            return NewInbound(
                channel="sms",
                candidates=("acme",),
                msisdn=H1,
                to_address=ACME,
                received_at=r.clock.now(),
                text=text,
                carrier="docomo",
            )

        both = asyncio.Event()
        arrived = 0

        async def store(text: str) -> None:
            async def work(tx: Any) -> None:
                nonlocal arrived
                await engine.inbound.record(tx, reply(text), r.clock.now())
                arrived += 1
                if arrived == 2:
                    both.set()
                # Hold the transaction open until the other one has
                # inserted too (or is waiting on this one's key).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(both.wait(), 0.5)

            await db.in_transaction(work)

        await asyncio.gather(store("一つ目"), store("二つ目"))
        rows = await db.call_raw(
            "SELECT sms_text FROM messages WHERE client_ref LIKE 'auto-reply:%'"
        )
        assert rows == [{"sms_text": "山田様 受付"}]
        assert len(await db.call_raw("SELECT id FROM inbound_messages")) == 2


async def test_a_chip_tap_answers_the_survey_by_its_postback(dsn: str, db: Database) -> None:
    async with rcs_rig(dsn, db, inbound_reply_share=1.0, inbound_reply_delay_s=0.0) as r:
        base = r.webhook_url.removesuffix(WEBHOOK_PATH)
        send = {
            "channel": "rcs",
            "rcs": {
                "text": "ご来店日をお選びください",
                "chips": [
                    # The send's validity has passed when the tap comes;
                    # the chip's own validity has not.
                    {"type": "reply", "text": "土曜", "postback": "ａ", "reply_validity_s": 60},
                    {"type": "reply", "text": "日曜", "postback": "B"},
                ],
            },
            "choices": [{"code": "A", "label": "土曜"}, {"code": "B", "label": "日曜"}],
            "auto_reply": {
                "per_choice": {"A": {"rcs": {"text": "土曜にお待ちしています"}}},
            },
            "reply_valid_until": (T0_RCS - timedelta(seconds=1)).isoformat(),
            "recipients": [national(CAPABLE)],
        }
        async with r.session.post(f"{base}/v1/sends", json=send, headers=ACME_AUTH) as resp:
            assert resp.status == 202, await resp.text()
            send_id = (await resp.json())["id"]
        await r.cycle()
        await r.platform_idle()
        [tap] = await db.call_raw(
            "SELECT kind, postback, choice, send_id FROM inbound_messages"
            " WHERE kind = 'suggestion_reply'"
        )
        assert (tap["postback"], tap["choice"], str(tap["send_id"])) == ("ａ", "A", send_id)
        [auto] = await db.call_raw(
            "SELECT channel, rcs_content, client_ref FROM messages"
            " WHERE client_ref LIKE 'auto-reply:%'"
        )
        assert auto["client_ref"] == f"auto-reply:{send_id}:{CAPABLE}:A"
        assert (auto["channel"], auto["rcs_content"]["text"]) == ("rcs", "土曜にお待ちしています")
        async with r.session.get(f"{base}/v1/sends/{send_id}", headers=ACME_AUTH) as resp:
            survey = (await resp.json())["survey"]
        assert [c["count"] for c in survey["choices"]] == [1, 0]
