"""Sends through the HTTP API against a real PostgreSQL: variables in SMS
and rich cards, CSV upload with per-row rejections, idempotency, reading a
send, its export, and its cancel."""

from __future__ import annotations

import aiohttp
import pytest

from carrierd.domain.clock import FakeClock
from carrierd.engine.cancel import Canceller
from carrierd.engine.lifecycle import Lifecycle
from carrierd.store.db import Database
from tests.integration.apiclient import auth, make_config, running_api

ACME = auth("acme-token")
NOW = "2026-12-01T00:00:00+00:00"


def clock() -> FakeClock:
    from datetime import datetime

    return FakeClock(datetime.fromisoformat(NOW))


def upload(send: dict[str, object], csv_text: str, charset: str = "utf-8") -> aiohttp.FormData:
    import json

    form = aiohttp.FormData()
    form.add_field("send", json.dumps(send), content_type="application/json")
    form.add_field(
        "recipients",
        csv_text.encode(charset),
        filename="recipients.csv",
        content_type=f"text/csv; charset={charset}",
    )
    return form


async def test_json_send_substitutes_variables_in_sms_and_rich_card(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        send = {
            "channel": "rcs_then_sms",
            "sms": {"text": "{{name}}様、ご予約は{{date}}です"},
            "rcs": {
                "card": {
                    "title": "{{name}}様へ",
                    "description": "ご予約日: {{ date }} \\{{literal}}",
                    "media": {
                        "url": "https://cdn.example.jp/a.png",
                        "content_type": "image/png",
                        "size_bytes": 1000,
                        "height": "medium",
                    },
                }
            },
            "recipients": [
                {"to": "090-1234-5678", "variables": {"name": "山田", "date": "12月3日"}},
                {"to": "09012345679", "variables": {"name": "佐藤"}},
                {"to": "050-1234-5678", "variables": {"name": "x", "date": "y"}},
                {"to": "+819012345670", "variables": {"name": "鈴木", "date": 3}},
            ],
        }
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 202, await r.text()
            answer = await r.json()
    assert answer["accepted"] == 2
    assert answer["rejected"] == 2
    assert answer["rejections"][0] == {
        "row": 1,
        "field": "variables.date",
        "reason": "missing, and used by sms.text",
    }
    assert answer["rejections"][1]["row"] == 2
    assert answer["rejections"][1]["field"] == "to"
    rows = await db.call_raw(
        "SELECT msisdn, sms_text, rcs_content, send_id, send_row FROM messages ORDER BY send_row"
    )
    assert [r["msisdn"] for r in rows] == ["+819012345678", "+819012345670"]
    assert rows[0]["sms_text"] == "山田様、ご予約は12月3日です"
    card = rows[0]["rcs_content"]["card"]
    assert card["title"] == "山田様へ"
    assert card["description"] == "ご予約日: 12月3日 {{literal}}"
    assert rows[1]["sms_text"] == "鈴木様、ご予約は3です"
    assert {r["send_id"] for r in rows} == {int(answer["id"])}
    assert [r["send_row"] for r in rows] == [0, 3]


async def test_limits_are_checked_on_the_substituted_text(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        send = {
            "sms": {"text": "{{a}}" + "あ" * 600},
            "recipients": [
                {"to": "09012345678", "variables": {"a": "い" * 60}},
                {"to": "09012345679", "variables": {"a": "い" * 61}},
                {"to": "09012345670", "variables": {"a": "😀"}},
            ],
        }
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            answer = await r.json()
    assert answer["accepted"] == 1
    assert [(j["row"], j["field"]) for j in answer["rejections"]] == [
        (1, "sms.text"),
        (2, "sms.text"),
    ]
    assert "660" in answer["rejections"][0]["reason"]


async def test_csv_upload_with_per_row_rejections_and_idempotent_retry(
    dsn: str, db: Database
) -> None:
    config = make_config(dsn)
    send = {"client_ref": "campaign-1", "sms": {"text": "{{氏名}}様 ポイント{{pt}}点"}}
    lines = ["電話番号,氏名,pt"]
    for i in range(7_000):
        lines.append(f"090{10_000_000 + i:08d},顧客{i},{i}")
    lines[5] = "05012345678,誰か,1"  # record 6: an IP phone
    lines[7] = "09099999999,,3"  # record 8: an empty variable
    lines[9] = '09088888888,"引用,付き",4,extra'  # record 10: a column too many
    lines[11] = '09077777777,"改行\n入り",5'  # record 12: a quoted line break
    text = "\r\n".join(lines) + "\r\n"
    async with running_api(config, db, clock()) as (base, http):
        async with http.post(f"{base}/v1/sends", data=upload(send, text), headers=ACME) as r:
            assert r.status == 202, await r.text()
            answer = await r.json()
        assert answer["accepted"] == 7_000 - 3
        assert [(j["row"], j["field"]) for j in answer["rejections"]] == [
            (6, "to"),
            (8, "variables.氏名"),
            (10, "recipients"),
        ]
        # The same POST again: the same send, nothing new.
        async with http.post(f"{base}/v1/sends", data=upload(send, text), headers=ACME) as r:
            assert r.status == 202
            again = await r.json()
        assert again["id"] == answer["id"]
        assert again["accepted"] == answer["accepted"]
        # Another content under the reference: a conflict.
        other = {**send, "sms": {"text": "別の本文"}}
        async with http.post(f"{base}/v1/sends", data=upload(other, text), headers=ACME) as r:
            assert r.status == 409
            assert (await r.json())["error"]["code"] == "idempotency_conflict"
        async with http.get(f"{base}/v1/sends/{answer['id']}?limit=2", headers=ACME) as r:
            view = await r.json()
    count = await db.call_raw("SELECT count(*) AS n FROM messages")
    assert count[0]["n"] == 7_000 - 3
    quoted = await db.call_raw("SELECT sms_text FROM messages WHERE msisdn = '+819077777777'")
    assert quoted[0]["sms_text"] == "改行\n入り様 ポイント5点"
    assert view["messages_by_state"] == {"queued": 7_000 - 3}
    assert view["recipients"] == {"read": 7_000, "accepted": 6_997, "rejected": 3}
    assert len(view["messages"]) == 2 and view["next_cursor"]
    assert view["messages"][0]["recipient_index"] == 0


async def test_csv_naming_no_such_variable_is_refused(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        form = upload({"sms": {"text": "{{name}}様"}}, "number,氏名\n09012345678,山田\n")
        async with http.post(f"{base}/v1/sends", data=form, headers=ACME) as r:
            assert r.status == 400
            error = (await r.json())["error"]
    assert error["field"] == "recipients"
    assert "'name'" in error["message"]
    # Refused before the send was made.
    assert (await db.call_raw("SELECT count(*)::int AS n FROM sends"))[0]["n"] == 0


async def test_unclosed_placeholder_is_refused(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        send = {"sms": {"text": "{{name様"}, "recipients": ["09012345678"]}
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 400
            assert (await r.json())["error"]["field"] == "sms.text"


async def test_cancel_a_send_and_export_it(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    fake_clock = clock()
    canceller = Canceller(db, Lifecycle(), fake_clock)
    async with running_api(config, db, fake_clock, canceller=canceller) as (base, http):
        send = {
            "sms": {"text": "お知らせ"},
            "follow_up": {"sms": {"text": "続報"}, "delay_s": 60},
            "recipients": [f"0901234{i:04d}" for i in range(300)],
        }
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            send_id = (await r.json())["id"]
        # One has already gone to an SMSC: the cancel leaves it.
        gone = await db.call_raw(
            "UPDATE messages SET state = 'sending' WHERE send_row = 7 "
            "AND after_message_id IS NULL RETURNING id"
        )
        async with http.post(f"{base}/v1/sends/{send_id}/cancel", headers=ACME) as r:
            assert r.status == 200, await r.text()
            cancelled = await r.json()
        async with http.get(f"{base}/v1/sends/{send_id}", headers=ACME) as r:
            view = await r.json()
        async with http.get(f"{base}/v1/sends/{send_id}/export", headers=ACME) as r:
            assert r.status == 200
            exported = (await r.text()).splitlines()
        async with http.get(f"{base}/v1/sends", headers=ACME) as r:
            listed = await r.json()
    assert cancelled["cancelled"] == 599
    assert cancelled["not_cancelled_by_state"] == {"sending": 1}
    assert view["state"] == "cancelled"
    assert view["messages_by_state"] == {"cancelled": 299, "sending": 1}
    assert view["follow_ups_by_state"] == {"cancelled": 300}
    assert len(exported) == 1 + 600
    assert exported[0].startswith("id,client_ref,channel,msisdn")
    assert str(gone[0]["id"]) in {line.split(",")[0] for line in exported}
    assert [s["id"] for s in listed["sends"]] == [send_id]


@pytest.mark.parametrize("charset", ["shift_jis"])
async def test_csv_in_shift_jis(dsn: str, db: Database, charset: str) -> None:
    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        form = upload({"sms": {"text": "{{名前}}様"}}, "番号,名前\n09012345678,山田\n", charset)
        async with http.post(f"{base}/v1/sends", data=form, headers=ACME) as r:
            assert r.status == 202, await r.text()
    rows = await db.call_raw("SELECT sms_text FROM messages")
    assert rows[0]["sms_text"] == "山田様"


async def test_a_registration_that_died_is_resumed_by_its_retry(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    send = {"client_ref": "resume-1", "sms": {"text": "{{n}}番のお客様"}}
    text = "number,n\n" + "".join(f"090{40_000_000 + i:08d},{i}\n" for i in range(7_000))
    async with running_api(config, db, clock()) as (base, http):
        async with http.post(f"{base}/v1/sends", data=upload(send, text), headers=ACME) as r:
            send_id = (await r.json())["id"]
        # As if the daemon died after its first committed batch of 5,000.
        await db.call_raw("DELETE FROM messages WHERE send_row >= 5000")
        await db.call_raw(
            "UPDATE sends SET state = 'registering', rows_done = 5000, accepted = 5000 "
            "WHERE id = $1",
            int(send_id),
        )
        async with http.post(f"{base}/v1/sends", data=upload(send, text), headers=ACME) as r:
            assert r.status == 202
            resumed = await r.json()
    assert (resumed["id"], resumed["state"], resumed["accepted"]) == (send_id, "registered", 7_000)
    rows = await db.call_raw(
        "SELECT count(*)::int AS n, count(DISTINCT send_row)::int AS distinct_rows FROM messages"
    )
    assert rows[0]["n"] == rows[0]["distinct_rows"] == 7_000


async def test_skip_opted_out_reaches_each_message(dsn: str, db: Database) -> None:
    from carrierd.optout_list import OptOutSource, add_optouts_now

    config = make_config(dsn)
    async with running_api(config, db, clock()) as (base, http):
        await add_optouts_now(
            db, "acme", ["+819012345678"], OptOutSource.API, clock().now(), 10_000
        )
        send = {
            "sms": {"text": "{{n}}番"},
            "skip_opted_out": True,
            "recipients": [
                {"to": "09012345678", "variables": {"n": "1"}},
                {"to": "09012345679", "variables": {"n": "2"}},
            ],
        }
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 202, await r.text()
    rows = await db.call_raw(
        "SELECT msisdn, skip_opted_out, opted_out FROM messages ORDER BY msisdn"
    )
    assert [(r["msisdn"], r["skip_opted_out"], r["opted_out"]) for r in rows] == [
        ("+819012345678", True, True),
        ("+819012345679", True, False),
    ]


async def test_a_send_mints_each_recipients_own_links(dsn: str, db: Database) -> None:
    """Link marks are not variables: each recipient's message gets its own
    short link and opt-out URL, stored with it (DOMAIN §12)."""
    config = make_config(
        dsn,
        {
            "links": {
                "enabled": True,
                "domain": "s.kmc.jp",
                "csrf_secret": "links-test-csrf-secret",
            }
        },
    )
    async with running_api(config, db, clock()) as (base, http):
        send = {
            "channel": "sms",
            "sms": {
                "text": "{{name}}様 詳細{{link:https://shop.example.jp/r?id=7}} 停止{{optout_url}}"
            },
            "recipients": [
                {"to": "09012345678", "variables": {"name": "山田"}},
                {"to": "09012345679", "variables": {"name": "佐藤"}},
            ],
        }
        async with http.post(f"{base}/v1/sends", json=send, headers=ACME) as r:
            assert r.status == 202, await r.text()
            assert (await r.json())["accepted"] == 2
    messages = await db.call_raw("SELECT id, sms_text FROM messages ORDER BY send_row")
    links = await db.call_raw("SELECT code, message_id, kind FROM message_links")
    assert len(links) == 4
    for message in messages:
        own = [link for link in links if link["message_id"] == message["id"]]
        assert sorted(link["kind"] for link in own) == ["link", "optout"]
        for link in own:
            assert f" s.kmc.jp/{link['code']} " in message["sms_text"]
        assert "{{" not in message["sms_text"]
    assert messages[0]["sms_text"].startswith("山田様")
