"""Which opt-out list a send obeys (DOMAIN §12), through the real HTTP
intake, PostgreSQL and the engine on a fake clock: an immediate send obeys
the list as it is when registered; a scheduled send the list as it is 15
minutes before send_at (at registration when that is closer); a SQL-feed
row the same, read when it is claimed. A skipped message ends `skipped`
(opted_out): final, never submitted, not billed, in the status, the search,
the export and its callback."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from carrierd.channels.sms import SmppGateway
from carrierd.domain.clock import FakeClock, SystemClock
from carrierd.engine.write_behind import WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import QUERIES, Database
from tests.integration.apiclient import auth, running_api
from tests.integration.engine_harness import Engine, engine_config, make_engine

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
ACME = auth("acme-token")
CALLBACK = "https://callbacks.example.com/carrierd"


async def send(
    http: aiohttp.ClientSession, base: str, items: list[dict[str, Any]], token: str = "acme-token"
) -> list[str]:
    body = {"messages": [{"sms": {"text": "ご予約の確認です。"}, **item} for item in items]}
    async with http.post(f"{base}/v1/messages", json=body, headers=auth(token)) as resp:
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
    assert not answer["rejected"], answer
    return [a["id"] for a in answer["accepted"]]


async def opt_out(http: aiohttp.ClientSession, base: str, *numbers: str) -> None:
    async with http.post(
        f"{base}/v1/optouts", json={"numbers": list(numbers)}, headers=ACME
    ) as resp:
        assert resp.status == 200, await resp.text()


async def view(http: aiohttp.ClientSession, base: str, message_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/messages/{message_id}", headers=ACME) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def states(
    http: aiohttp.ClientSession, base: str, ids: dict[str, str]
) -> dict[str, tuple[str, str | None]]:
    found = {}
    for name, message_id in ids.items():
        doc = await view(http, base, message_id)
        found[name] = (doc["state"], doc["reason"] and doc["reason"]["code"])
    return found


def submitted_to(engine: Engine) -> list[str]:
    return sorted(s.request.msisdn for s in engine.network.submitted)


async def settle_at(engine: Engine, at: datetime) -> None:
    """A settler pass and a claim at `at`, and whatever left delivered."""
    engine.clock.set(at)
    await engine.settler.settle_once(at)
    await engine.cycle()
    for sent in engine.network.submitted:
        for smsc_id in sent.smsc_ids:
            await engine.receipt(sent.carrier, smsc_id)


async def test_a_scheduled_send_obeys_the_list_of_15_minutes_before(dsn: str, db: Database) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    send_at = T0 + timedelta(hours=1)
    check_at = send_at - timedelta(minutes=15)
    async with running_api(config, db, clock) as (base, http):
        recipients = {
            "twenty_before": "09012340001",
            "at_fifteen": "09012340002",
            "ten_before": "09012340003",
            "never": "09012340004",
            "not_asked": "09012340005",
        }
        ids = dict(
            zip(
                recipients,
                await send(
                    http,
                    base,
                    [
                        {
                            "to": to,
                            "send_at": send_at.isoformat(),
                            "skip_opted_out": name != "not_asked",
                            "callback_url": CALLBACK,
                        }
                        for name, to in recipients.items()
                    ],
                ),
                strict=True,
            )
        )
        await settle_at(engine, check_at - timedelta(minutes=5))
        await opt_out(http, base, recipients["twenty_before"], recipients["not_asked"])
        await settle_at(engine, check_at)
        # Added at the check's very instant: on the list it reads.
        await opt_out(http, base, recipients["at_fifteen"])
        await settle_at(engine, check_at + timedelta(seconds=1))
        # The check is made: scheduled -> skipped, long before send_at.
        assert (await states(http, base, ids)) == {
            "twenty_before": ("skipped", "opted_out"),
            "at_fifteen": ("skipped", "opted_out"),
            "ten_before": ("scheduled", None),
            "never": ("scheduled", None),
            "not_asked": ("scheduled", None),
        }
        await settle_at(engine, send_at - timedelta(minutes=10))
        await opt_out(http, base, recipients["ten_before"])
        await settle_at(engine, send_at)
        assert submitted_to(engine) == sorted(
            "+81" + recipients[n][1:] for n in ("ten_before", "never", "not_asked")
        )
        skipped = await view(http, base, ids["twenty_before"])
        assert skipped["status"] == 3
        assert skipped["billing"] == {"sms_units": 0, "rcs_units": 0}
        assert [e["event"] for e in skipped["history"]] == ["accepted", "skipped"]
        assert skipped["history"][1]["at"] == (check_at + timedelta(seconds=1)).isoformat()
        assert skipped["sms_parts"] == []

        # The search and the delivery-log export show the skips.
        async with http.get(f"{base}/v1/messages?state=skipped", headers=ACME) as resp:
            found = (await resp.json())["messages"]
        assert sorted(m["id"] for m in found) == sorted([ids["twenty_before"], ids["at_fifteen"]])
        params = {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
        async with http.get(f"{base}/v1/messages/export", params=params, headers=ACME) as resp:
            rows = {r["id"]: r for r in csv.DictReader(io.StringIO(await resp.text()))}
        assert (rows[ids["at_fifteen"]]["state"], rows[ids["at_fifteen"]]["reason_code"]) == (
            "skipped",
            "opted_out",
        )
    # Its callback, written with the change (final states are always sent).
    callbacks = await db.call_raw(
        "SELECT payload FROM status_callbacks WHERE message_id = $1", int(ids["twenty_before"])
    )
    assert len(callbacks) == 1
    payload = callbacks[0]["payload"]
    assert (payload["state"], payload["reason"]["code"], payload["status"]) == (
        "skipped",
        "opted_out",
        3,
    )
    # The three sent are billed a unit each; nothing for the skipped.
    billed = await db.call_raw("SELECT coalesce(sum(units), 0)::int AS n FROM billing_counts")
    assert billed[0]["n"] == 3


async def test_a_check_run_late_still_reads_the_list_of_its_due_time(
    dsn: str, db: Database
) -> None:
    """The settler was away over the check's time: the list is read as of
    that time, not of when the check finally runs."""
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    send_at = T0 + timedelta(hours=1)
    async with running_api(config, db, clock) as (base, http):
        ids = await send(
            http,
            base,
            [
                {"to": to, "send_at": send_at.isoformat(), "skip_opted_out": True}
                for to in ("09012340011", "09012340012")
            ],
        )
        clock.set(send_at - timedelta(minutes=20))
        await opt_out(http, base, "09012340011")
        clock.set(send_at - timedelta(minutes=5))
        await opt_out(http, base, "09012340012")
        # No pass since registration; the check and the send fall due together.
        await settle_at(engine, send_at + timedelta(seconds=1))
        assert [(await view(http, base, i))["state"] for i in ids] == ["skipped", "delivered"]


async def test_a_send_less_than_15_minutes_away_obeys_the_list_at_registration(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    async with running_api(config, db, clock) as (base, http):
        await opt_out(http, base, "09012340021", "09012340023")
        soon = (T0 + timedelta(minutes=10)).isoformat()
        exactly = (T0 + timedelta(minutes=15)).isoformat()
        ids = await send(
            http,
            base,
            [
                {"to": "09012340021", "send_at": soon, "skip_opted_out": True},
                {"to": "09012340022", "send_at": soon, "skip_opted_out": True},
                {"to": "09012340023", "send_at": soon},  # did not ask
                {"to": "09012340024", "send_at": exactly, "skip_opted_out": True},
            ],
        )
        # After registration: too late for these sends.
        await opt_out(http, base, "09012340022", "09012340024")
        await settle_at(engine, T0 + timedelta(minutes=5))
        assert (await view(http, base, ids[0]))["state"] == "scheduled"
        await settle_at(engine, T0 + timedelta(minutes=15, seconds=1))
        assert [(await view(http, base, i))["state"] for i in ids] == [
            "skipped",
            "delivered",
            "delivered",
            "delivered",
        ]
        assert (await view(http, base, ids[0]))["reason"]["code"] == "opted_out"


async def test_an_immediate_send_obeys_the_list_at_registration_on_either_channel(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(T0)
    config = engine_config(
        dsn,
        {
            "engine": {"pacing": False},
            "accounts": {"globex": {"tokens": ["globex-token"], "skip_opted_out": True}},
        },
    )
    engine = await make_engine(config, db, clock)
    async with running_api(config, db, clock) as (base, http):
        await opt_out(http, base, "09012340031", "09012340033")
        async with http.post(
            f"{base}/v1/optouts", json={"number": "09012340034"}, headers=auth("globex-token")
        ) as resp:
            assert resp.status == 200
        ids = await send(
            http,
            base,
            [
                {"to": "09012340031", "skip_opted_out": True},
                {"to": "09012340032", "skip_opted_out": True},
                # +Message, here with no +Message leg at all: the gate comes
                # before the legs split.
                {
                    "to": "09012340033",
                    "channel": "rcs_then_sms",
                    "rcs": {"text": "ご案内"},
                    "skip_opted_out": True,
                },
            ],
        )
        # The account's default: skip, unless the send says otherwise.
        globex = await send(
            http,
            base,
            [{"to": "09012340034"}, {"to": "09012340034", "skip_opted_out": False}],
            token="globex-token",
        )
        await opt_out(http, base, "09012340032")  # after registration
        await settle_at(engine, T0 + timedelta(seconds=1))
        assert [(await view(http, base, i))["state"] for i in ids] == [
            "skipped",
            "delivered",
            "skipped",
        ]
        rows = await db.call_raw(
            "SELECT state, reason_code FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id",
            [int(i) for i in globex],
        )
        assert [(r["state"], r["reason_code"]) for r in rows] == [
            ("skipped", "opted_out"),
            ("delivered", None),
        ]
        assert submitted_to(engine) == ["+819012340032", "+819012340034"]


async def test_the_sql_feed_asks_for_it_and_is_checked_when_claimed(dsn: str, db: Database) -> None:
    # carrierd_enqueue stamps the database's time.
    clock = FakeClock(datetime.now(UTC))
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    async with running_api(config, db, clock) as (base, http):
        await opt_out(http, base, "09012340041")
        ids = [
            (
                await db.call_raw(
                    "SELECT carrierd_enqueue('acme', '090-1234-0041', 'sms', 'ご案内',"
                    " p_skip_opted_out => true) AS id"
                )
            )[0]["id"],
            # The old call, as applications wrote it: the account's default.
            (
                await db.call_raw(
                    "SELECT carrierd_enqueue('acme', '090-1234-0041', 'sms', 'ご案内') AS id"
                )
            )[0]["id"],
            (
                await db.call_raw(
                    "SELECT carrierd_enqueue('acme', '090-1234-0042', 'sms', 'ご案内',"
                    " NULL, NULL, NULL, NULL, NULL, true) AS id"
                )
            )[0]["id"],
        ]
        # Added after the enqueue, before the claim: a fed row obeys the
        # list as it was when it was fed, as an immediate send does.
        engine.clock.set(datetime.now(UTC) + timedelta(seconds=1))
        await opt_out(http, base, "09012340042")
        await settle_at(engine, datetime.now(UTC) + timedelta(seconds=2))
        assert [(await view(http, base, str(i)))["state"] for i in ids] == [
            "skipped",
            "delivered",
            "delivered",
        ]
        assert submitted_to(engine) == ["+819012340041", "+819012340042"]


async def test_a_scheduled_fed_row_obeys_the_list_of_15_minutes_before(
    dsn: str, db: Database
) -> None:
    clock = FakeClock(datetime.now(UTC))
    config = engine_config(dsn, {"engine": {"pacing": False}})
    engine = await make_engine(config, db, clock)
    async with running_api(config, db, clock) as (base, http):
        ids = {}
        for number in ("09012340051", "09012340052", "09012340053"):
            rows = await db.call_raw(
                f"SELECT carrierd_enqueue('acme', '{number}', 'sms', 'ご案内',"
                " p_send_at => clock_timestamp() + interval '30 minutes',"
                " p_skip_opted_out => true) AS id"
            )
            ids[number] = rows[0]["id"]
        fed_at = (await db.call_raw("SELECT max(accepted_at) AS t FROM messages"))[0]["t"]
        send_at = fed_at + timedelta(minutes=30)
        # 20 minutes before: on the list it obeys; 10 minutes before: not yet.
        clock.set(send_at - timedelta(minutes=20))
        await opt_out(http, base, "09012340051")
        clock.set(send_at - timedelta(minutes=10))
        await opt_out(http, base, "09012340052")
        await settle_at(engine, send_at + timedelta(seconds=1))
        assert {n: (await view(http, base, str(i)))["state"] for n, i in ids.items()} == {
            "09012340051": "skipped",
            "09012340052": "delivered",
            "09012340053": "delivered",
        }
        assert submitted_to(engine) == ["+819012340052", "+819012340053"]


async def test_a_skipped_message_never_reaches_the_smsc(dsn: str, db: Database) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 3,
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
    }
    config = engine_config(dsn, {"engine": {"pacing": False}, "carriers": {"docomo": docomo}})
    gateways: list[SmppGateway] = []

    def docomo_only(write_behind: WriteBehind) -> SmppGateway:
        gateways.append(SmppGateway({"docomo": config.carriers["docomo"]}, write_behind, clock))
        return gateways[0]

    engine = await make_engine(config, db, clock, gateway=docomo_only)
    await gateways[0].start()
    flusher = asyncio.ensure_future(engine.recorder.run())
    try:
        async with running_api(config, db, clock) as (base, http):
            await opt_out(http, base, "09012340051")
            listed, clear = await send(
                http,
                base,
                [
                    {"to": "09012340051", "skip_opted_out": True},
                    {"to": "09012340052", "skip_opted_out": True},
                ],
            )
            for _ in range(250):
                await engine.dispatcher.dispatch_once(clock.now())
                await engine.settler.settle_once(clock.now())
                if (await view(http, base, clear))["state"] == "delivered":
                    break
                await asyncio.sleep(0.02)
            await engine.dispatcher.wait_idle()
            await engine.recorder.drain()
            skipped = await view(http, base, listed)
            delivered = await view(http, base, clear)
    finally:
        flusher.cancel()
        await gateways[0].stop(5.0)
        await sim.stop()
    assert (skipped["state"], skipped["reason"]["code"]) == ("skipped", "opted_out")
    assert delivered["state"] == "delivered"
    assert sim.counters.carriers["docomo"].submits == 1
    assert [key for key in sim.counters.accepted_text_parts] == [
        key for key in sim.counters.accepted_text_parts if "9012340052" in str(key)
    ]
    billed = await db.call_raw("SELECT coalesce(sum(units), 0)::int AS n FROM billing_counts")
    assert billed[0]["n"] == 1


async def test_the_due_checks_are_found_by_their_partial_index(db: Database) -> None:
    """Timers are rows (DESIGN principle 4): the settler's search for due
    opt-out checks reads the few pending ones, not 100,000 messages."""
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('a')")
    await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              sms_text, not_before, expires_at, accepted_at, updated_at,
                              skip_opted_out, optout_check_at)
        SELECT 'a', 'sms', 'sms', CASE WHEN i % 100 = 0 THEN 'scheduled' ELSE 'delivered' END,
               '09012345678', '+819012345678', true, 'x', $1::timestamptz,
               $1::timestamptz + interval '3 days', $1::timestamptz, $1::timestamptz, true,
               CASE WHEN i % 100 = 0 THEN $1::timestamptz + make_interval(secs => i) END
        FROM generate_series(1, 100000) AS i
        """,
        T0,
    )
    await db.call_raw("ANALYZE messages")
    rows = await db.call_raw(
        "EXPLAIN (FORMAT JSON) " + QUERIES["due_optout_checks"], T0 + timedelta(hours=1), 1000
    )
    raw = rows[0]["QUERY PLAN"]
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    scans = [n for n in nodes(plan) if n.get("Relation Name") == "messages"]
    assert [n.get("Index Name") for n in scans] == ["messages_optout_check_due"], scans
