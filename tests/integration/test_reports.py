"""Billing, delivery-log export, retention and queue gauges over a real
HTTP server and a real PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from yarl import URL

from carrierd.config import Config
from carrierd.domain.billing import billing_month
from carrierd.domain.clock import JST, Clock, FakeClock
from carrierd.http.app import ApiState, build_app
from carrierd.http.reports import BILLING_COLUMNS, EXPORT_COLUMNS, month_bounds, recompute_billing
from carrierd.ops.callbacks import enqueue_callback
from carrierd.ops.gauges import refresh_queue_gauges
from carrierd.ops.retention import purge_au_gate, purge_expired
from carrierd.store.db import QUERIES, Database, migrate
from carrierd.telemetry import Metrics
from tests.integration.apiclient import auth, make_config, sync_accounts

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


async def synced_config(dsn: str, db: Database) -> Config:
    """The test accounts, present in the database as the daemon puts them."""
    config = make_config(dsn)
    await sync_accounts(db, config)
    return config


@asynccontextmanager
async def reports_api(
    config: Config, db: Database, clock: Clock, *, export_page_rows: int = 3
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    state = ApiState(config=config, db=db, clock=clock, export_page_rows=export_page_rows)
    runner = web.AppRunner(build_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", session
    finally:
        await runner.cleanup()


async def insert_message(
    db: Database,
    account_id: str,
    *,
    accepted_at: datetime,
    state: str = "delivered",
    final_at: datetime | None = None,
    channel: str = "sms",
    msisdn: str = "+819012345678",
    carrier: str | None = "docomo",
    sms_parts: int | None = 1,
    sms_units: int = 0,
    rcs_units: int = 0,
    client_ref: str | None = None,
    send_at: datetime | None = None,
    reason_code: str | None = None,
    reason_text: str | None = None,
) -> int:
    rows = await db.call_raw(
        """
        INSERT INTO messages (
            account_id, client_ref, channel, leg, state, reason_code, reason_text,
            recipient_raw, msisdn, validated, sms_parts, carrier, send_at, not_before,
            expires_at, accepted_at, submitted_at, final_at, updated_at, sms_units, rcs_units)
        VALUES ($1, $2, $3::text, CASE WHEN $3 = 'sms' THEN 'sms' ELSE 'rcs' END, $4, $5, $6,
                $7, $7, true, $8, $9, $10::timestamptz, coalesce($10, $11::timestamptz),
                $11 + interval '72 hours', $11,
                CASE WHEN $12::timestamptz IS NULL THEN NULL ELSE $11 + interval '1 second' END,
                $12, coalesce($12, $11), $13, $14)
        RETURNING id
        """,
        account_id,
        client_ref,
        channel,
        state,
        reason_code,
        reason_text,
        msisdn,
        sms_parts,
        carrier,
        send_at,
        accepted_at,
        final_at,
        sms_units,
        rcs_units,
    )
    return int(rows[0]["id"])


async def count_billing(
    db: Database, account_id: str, at: datetime, channel: str, units: int, route: str = ""
) -> None:
    """What the engine does when it records a delivery (DOMAIN §11): SMS
    units by the route that carried them (DOMAIN §6)."""
    await db.call_raw(
        """
        INSERT INTO billing_counts (account_id, month, channel, units, route)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (account_id, month, channel, route)
        DO UPDATE SET units = billing_counts.units + EXCLUDED.units
        """,
        account_id,
        billing_month(at),
        channel,
        units,
        route or ("premium" if channel == "sms" else ""),
    )


# -- billing -------------------------------------------------------------------------


async def test_billing_report_matches_the_messages(dsn: str, db: Database) -> None:
    config = await synced_config(dsn, db)
    # Deliveries around the JST month boundary: 2026-10-31 15:00 UTC is
    # 2026-11-01 00:00 JST, so the first two bill to October, the rest to
    # November, whatever the UTC month says.
    deliveries: list[tuple[str, datetime, int, int]] = [
        ("sms", datetime(2026, 10, 31, 14, 59, tzinfo=UTC), 3, 0),
        ("rcs", datetime(2026, 10, 31, 14, 0, tzinfo=UTC), 0, 1),
        ("sms", datetime(2026, 10, 31, 15, 0, tzinfo=UTC), 2, 0),
        ("sms", datetime(2026, 11, 10, 1, 0, tzinfo=UTC), 10, 0),
        ("rcs", datetime(2026, 11, 11, 1, 0, tzinfo=UTC), 0, 1),
        ("rcs_then_sms", datetime(2026, 11, 12, 1, 0, tzinfo=UTC), 1, 0),
        ("sms", datetime(2026, 11, 30, 14, 59, tzinfo=UTC), 1, 0),
        ("sms", datetime(2026, 11, 30, 15, 0, tzinfo=UTC), 4, 0),  # December in JST
    ]
    for channel, final_at, sms_units, rcs_units in deliveries:
        await insert_message(
            db,
            "acme",
            channel=channel,
            accepted_at=final_at - timedelta(minutes=5),
            final_at=final_at,
            sms_units=sms_units,
            rcs_units=rcs_units,
        )
        if sms_units:
            await count_billing(db, "acme", final_at, "sms", sms_units)
        if rcs_units:
            await count_billing(db, "acme", final_at, "rcs", rcs_units)
    # Failed and unknown messages bill nothing.
    await insert_message(
        db,
        "acme",
        state="failed",
        accepted_at=datetime(2026, 11, 5, tzinfo=UTC),
        final_at=datetime(2026, 11, 5, 0, 1, tzinfo=UTC),
    )
    await count_billing(db, "acme", datetime(2026, 11, 3, tzinfo=UTC), "reassigned_check", 7)
    await insert_message(
        db,
        "globex",
        accepted_at=datetime(2026, 11, 3, tzinfo=UTC),
        final_at=datetime(2026, 11, 3, 0, 1, tzinfo=UTC),
        sms_units=5,
    )
    # globex sends over two routes (DOMAIN §6).
    await count_billing(db, "globex", datetime(2026, 11, 3, 0, 1, tzinfo=UTC), "sms", 3)
    await count_billing(
        db, "globex", datetime(2026, 11, 3, 0, 1, tzinfo=UTC), "sms", 2, route="ordinary"
    )

    expected: dict[str, Counter[str]] = {}
    for _, final_at, sms_units, rcs_units in deliveries:
        month = final_at.astimezone(JST).strftime("%Y-%m")
        expected.setdefault(month, Counter()).update(sms=sms_units, rcs=rcs_units)
    assert expected["2026-10"] == Counter(sms=3, rcs=1)
    assert expected["2026-11"] == Counter(sms=2 + 10 + 1 + 1, rcs=1)

    async with reports_api(config, db, FakeClock(NOW)) as (base, http):
        for month in ("2026-10", "2026-11", "2026-12"):
            response = await http.get(
                f"{base}/v1/billing", params={"month": month}, headers=auth("acme-token")
            )
            assert response.status == 200
            report = await response.json()
            recomputed = await recompute_billing(db, "acme", month)
            assert report["account"] == "acme" and report["month"] == month
            assert report["sms_units"] == recomputed.sms_units == expected[month]["sms"]
            assert report["rcs_units"] == recomputed.rcs_units == expected[month]["rcs"]
            assert report["reassigned_checks"] == (7 if month == "2026-11" else 0)

        # No month: the current JST month (NOW is 2026-11-22 12:00 JST).
        response = await http.get(f"{base}/v1/billing", headers=auth("acme-token"))
        assert (await response.json())["month"] == "2026-11"

        # Another account sees only its own counts.
        response = await http.get(
            f"{base}/v1/billing", params={"month": "2026-11"}, headers=auth("globex-token")
        )
        assert await response.json() == {
            "account": "globex",
            "month": "2026-11",
            "sms_units": 5,
            "sms_units_by_route": {"ordinary": 2, "premium": 3},
            "rcs_units": 0,
            "reassigned_checks": 0,
        }

        for request in (
            {"params": {"month": "2026-11", "format": "csv"}, "headers": auth("acme-token")},
            {
                "params": {"month": "2026-11"},
                "headers": {**auth("acme-token"), "Accept": "text/csv"},
            },
        ):
            response = await http.get(f"{base}/v1/billing", **request)  # type: ignore[arg-type]
            assert response.status == 200
            assert response.content_type == "text/csv"
            rows = list(csv.reader(io.StringIO(await response.text())))
            # A line per route: SMS units on their route's, the rest on "".
            assert rows == [
                list(BILLING_COLUMNS),
                ["acme", "2026-11", "", "0", "1", "7"],
                ["acme", "2026-11", "premium", str(expected["2026-11"]["sms"]), "0", "0"],
            ]

        for bad in ("2026-13", "2026-1", "november", "2026-11-01"):
            response = await http.get(
                f"{base}/v1/billing", params={"month": bad}, headers=auth("acme-token")
            )
            assert response.status == 400
            assert (await response.json())["error"]["field"] == "month"
        response = await http.get(
            f"{base}/v1/billing",
            params={"month": "2026-11", "format": "xml"},
            headers=auth("acme-token"),
        )
        assert response.status == 400 and (await response.json())["error"]["field"] == "format"
        response = await http.get(f"{base}/v1/billing", params={"month": "2026-11"})
        assert response.status == 401


def test_month_bounds_are_jst_midnights() -> None:
    start, end = month_bounds("2026-12")
    assert start == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert end == datetime(2026, 12, 31, 15, tzinfo=UTC)


# -- export --------------------------------------------------------------------------


async def test_export_streams_the_accounts_delivery_log_in_pages(dsn: str, db: Database) -> None:
    config = await synced_config(dsn, db)
    start = datetime(2026, 10, 1, tzinfo=JST)
    batch_at = start + timedelta(days=3)
    expected: list[tuple[datetime, int]] = []
    # Seven messages of one intake batch share an accepted_at: pages of 3
    # must neither skip nor repeat any of them.
    for n in range(7):
        expected.append(
            (
                batch_at,
                await insert_message(
                    db,
                    "acme",
                    accepted_at=batch_at,
                    final_at=batch_at + timedelta(seconds=30),
                    client_ref=f"batch-{n}",
                    sms_units=1,
                    msisdn=f"+8190000000{n:02d}",
                ),
            )
        )
    expected.append(
        (
            start,
            await insert_message(
                db,
                "acme",
                accepted_at=start,  # `from` itself is included
                state="failed",
                final_at=start + timedelta(minutes=1),
                reason_code="absent_subscriber",
                reason_text='端末の電源が切れています, "圏外"',
                client_ref="first",
            ),
        )
    )
    expected.append(
        (
            start + timedelta(days=20),
            await insert_message(
                db,
                "acme",
                accepted_at=start + timedelta(days=20),
                state="queued",
                channel="rcs_then_sms",
                carrier=None,
                sms_parts=None,
            ),
        )
    )
    # Outside [from, to), and another account's message inside it.
    await insert_message(db, "acme", accepted_at=start - timedelta(seconds=1))
    await insert_message(db, "acme", accepted_at=start + timedelta(days=31))
    globex_id = await insert_message(db, "globex", accepted_at=start + timedelta(days=2))

    end = start + timedelta(days=31)
    async with reports_api(config, db, FakeClock(NOW), export_page_rows=3) as (base, http):
        response = await http.get(
            f"{base}/v1/messages/export",
            params={"from": start.isoformat(), "to": end.isoformat()},
            headers=auth("acme-token"),
        )
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(await response.text())))

        ordered = [message_id for _, message_id in sorted(expected)]
        assert [int(r["id"]) for r in rows] == ordered
        assert list(rows[0]) == list(EXPORT_COLUMNS)
        first = rows[0]
        assert first["client_ref"] == "first"
        assert first["state"] == "failed"
        assert first["reason_code"] == "absent_subscriber"
        assert first["reason_text"] == '端末の電源が切れています, "圏外"'
        assert datetime.fromisoformat(first["accepted_at"]) == start
        assert datetime.fromisoformat(first["final_at"]) == start + timedelta(minutes=1)
        batch_rows = [r for r in rows if r["client_ref"].startswith("batch-")]
        assert [r["msisdn"] for r in batch_rows] == [f"+8190000000{n:02d}" for n in range(7)]
        assert all(r["sms_units"] == "1" and r["carrier"] == "docomo" for r in batch_rows)
        queued = rows[-1]
        assert queued["state"] == "queued" and queued["final_at"] == ""
        assert queued["sms_parts"] == "" and queued["carrier"] == ""

        # An unencoded "+09:00" arrives as " 09:00" and still parses.
        raw = URL(
            f"{base}/v1/messages/export?from={start.isoformat()}&to={end.isoformat()}",
            encoded=True,
        )
        response = await http.get(raw, headers=auth("acme-token"))
        assert response.status == 200
        assert len(list(csv.DictReader(io.StringIO(await response.text())))) == len(ordered)

        # The other account exports only its own message.
        response = await http.get(
            f"{base}/v1/messages/export",
            params={"from": start.isoformat(), "to": end.isoformat()},
            headers=auth("globex-token"),
        )
        globex_rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert [int(r["id"]) for r in globex_rows] == [globex_id]


async def test_export_refuses_bad_ranges(dsn: str, db: Database) -> None:
    config = await synced_config(dsn, db)
    start = datetime(2026, 10, 1, tzinfo=JST)
    cases: list[tuple[dict[str, str], str]] = [
        ({"to": start.isoformat()}, "from"),
        ({"from": start.isoformat()}, "to"),
        ({"from": "2026-10-01T00:00:00", "to": start.isoformat()}, "from"),
        ({"from": "yesterday", "to": start.isoformat()}, "from"),
        ({"from": start.isoformat(), "to": (start - timedelta(days=1)).isoformat()}, "to"),
        ({"from": start.isoformat(), "to": (start + timedelta(days=94)).isoformat()}, "to"),
    ]
    async with reports_api(config, db, FakeClock(NOW)) as (base, http):
        for params, field in cases:
            response = await http.get(
                f"{base}/v1/messages/export", params=params, headers=auth("acme-token")
            )
            assert response.status == 400, params
            assert (await response.json())["error"]["field"] == field, params
        response = await http.get(
            f"{base}/v1/messages/export",
            params={"from": start.isoformat(), "to": (start + timedelta(days=93)).isoformat()},
            headers=auth("acme-token"),
        )
        assert response.status == 200
        assert (await response.text()).splitlines() == [",".join(EXPORT_COLUMNS)]
        response = await http.get(
            f"{base}/v1/messages/export",
            params={"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()},
        )
        assert response.status == 401


# -- retention -----------------------------------------------------------------------


async def test_purge_deletes_old_final_messages_and_keeps_three_months(
    dsn: str, db: Database
) -> None:
    await synced_config(dsn, db)
    old_ids = []
    for days in (101, 150, 200, 365, 400):
        final_at = NOW - timedelta(days=days)
        message_id = await insert_message(
            db, "acme", accepted_at=final_at - timedelta(hours=1), final_at=final_at
        )
        await db.call_raw(
            "INSERT INTO parts (message_id, attempt, part_no, part_total, carrier, state, sent_at)"
            " VALUES ($1, 1, 1, 1, 'docomo', 'delivered', $2)",
            message_id,
            final_at,
        )
        await db.call_raw(
            "INSERT INTO message_events (message_id, at, kind, state) VALUES ($1, $2, 'x', 'y')",
            message_id,
            final_at,
        )
        async with db.transaction() as tx:
            await enqueue_callback(
                tx, message_id, "acme", "http://127.0.0.1:9/", {"a": 1}, final_at
            )
        # A send's auto-reply with the recipient's variables substituted.
        await db.call_raw(
            "INSERT INTO send_auto_replies (message_id, contents)"
            """ VALUES ($1, '{"": {"sms": "山田様 受付"}}')""",
            message_id,
        )
        old_ids.append(message_id)
    three_months_ago = NOW - timedelta(days=92)
    kept = {
        await insert_message(db, "acme", accepted_at=three_months_ago, final_at=three_months_ago),
        await insert_message(
            db, "globex", accepted_at=NOW - timedelta(days=99), final_at=NOW - timedelta(days=99)
        ),
        # Old but not final (a stuck scheduled send): never purged.
        await insert_message(db, "acme", state="scheduled", accepted_at=NOW - timedelta(days=300)),
        await insert_message(db, "acme", accepted_at=NOW - timedelta(hours=1), final_at=NOW),
    }

    assert await purge_expired(db, NOW, batch_rows=2) == len(old_ids)
    remaining = {r["id"] for r in await db.call_raw("SELECT id FROM messages")}
    assert remaining == kept
    for table in ("parts", "message_events", "status_callbacks", "send_auto_replies"):
        rows = await db.call_raw(
            f"SELECT count(*) AS n FROM {table} WHERE message_id = ANY($1::bigint[])", old_ids
        )
        assert rows[0]["n"] == 0, table
    assert await purge_expired(db, NOW) == 0


async def test_auto_replies_retention_left_behind_are_deleted_by_migration(
    dsn: str, db: Database
) -> None:
    await synced_config(dsn, db)
    kept = await insert_message(db, "acme", accepted_at=NOW, final_at=NOW)
    await db.call_raw("DELETE FROM schema_migrations WHERE version = 200")
    await db.call_raw(
        "INSERT INTO send_auto_replies (message_id, contents)"
        """ SELECT id, '{"": {"sms": "山田様 受付"}}' FROM unnest($1::bigint[]) AS id""",
        [kept, kept + 1000, kept + 1001],  # two of messages purged before
    )
    assert await migrate(dsn) == [200]
    rows = await db.call_raw("SELECT message_id FROM send_auto_replies")
    assert [r["message_id"] for r in rows] == [kept]


async def test_retention_forgets_au_numbers_whose_spacing_ran_out(db: Database) -> None:
    """An au gate row holds the next SMS for 22 s after a final receipt
    (§5); an hour past that it can go, and nothing sooner."""
    spacing_s = 22.0
    recent = {"08011110001": NOW - timedelta(seconds=10), "08011110002": NOW - timedelta(hours=1)}
    stale = {f"0801112{n:04d}": NOW - timedelta(hours=2, minutes=n) for n in range(5)}
    for msisdn, last_final_at in {**recent, **stale}.items():
        await db.call_raw(
            "INSERT INTO au_gate (msisdn, last_final_at) VALUES ($1, $2)", msisdn, last_final_at
        )

    assert await purge_au_gate(db, NOW, spacing_s, batch_rows=2) == len(stale)
    rows = await db.call_raw("SELECT msisdn FROM au_gate")
    assert {r["msisdn"] for r in rows} == set(recent)
    assert await purge_au_gate(db, NOW, spacing_s) == 0


# -- queue gauges --------------------------------------------------------------------


def _samples(metrics: Metrics, name: str) -> dict[tuple[str, str], float]:
    values: dict[tuple[str, str], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                values[(sample.labels["state"], sample.labels["account"])] = sample.value
    return values


async def test_queue_gauges_count_open_messages(dsn: str, db: Database) -> None:
    await synced_config(dsn, db)
    for minutes in (5, 30, 1):
        await insert_message(
            db, "acme", state="queued", accepted_at=NOW - timedelta(minutes=minutes)
        )
    await insert_message(db, "acme", state="submitted", accepted_at=NOW - timedelta(seconds=40))
    await insert_message(db, "globex", state="queued", accepted_at=NOW - timedelta(seconds=10))
    # A send scheduled for tomorrow has not waited at all yet; one whose
    # time came an hour ago has waited since then, not since acceptance.
    await insert_message(
        db,
        "acme",
        state="scheduled",
        accepted_at=NOW - timedelta(days=2),
        send_at=NOW + timedelta(days=1),
    )
    await insert_message(
        db,
        "globex",
        state="queued",
        accepted_at=NOW - timedelta(days=2),
        send_at=NOW - timedelta(hours=1),
    )
    await insert_message(db, "acme", accepted_at=NOW - timedelta(days=1), final_at=NOW)

    metrics = Metrics()
    await refresh_queue_gauges(metrics, db, NOW)
    assert _samples(metrics, "carrierd_queue_depth") == {
        ("queued", "acme"): 3,
        ("submitted", "acme"): 1,
        ("scheduled", "acme"): 1,
        ("queued", "globex"): 2,
    }
    assert _samples(metrics, "carrierd_queue_oldest_age_seconds") == {
        ("queued", "acme"): 30 * 60,
        ("submitted", "acme"): 40,
        ("scheduled", "acme"): 0,
        ("queued", "globex"): 3600,
    }

    await db.call_raw(
        "UPDATE messages SET state = 'cancelled', final_at = $1 WHERE state = 'scheduled'", NOW
    )
    await refresh_queue_gauges(metrics, db, NOW)
    assert _samples(metrics, "carrierd_queue_depth")[("scheduled", "acme")] == 0


async def test_report_statements_use_their_indexes(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    # A fresh test database is tiny; forbid the sequential scan to see which
    # index the planner can use at production size.
    await conn.execute("SET enable_seqscan = off")

    async def plan(sql: str, *args: Any) -> str:
        return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))

    try:
        assert "messages_open_by_state" in await plan(QUERIES["queue_gauges"], NOW)
        export_plan = await plan(
            QUERIES["export_messages_page"], "acme", NOW - timedelta(days=1), NOW, NOW, 0, 100
        )
        assert "messages_by_account_time_id" in export_plan
        assert "messages_final_at" in await plan(QUERIES["purge_final_messages"], NOW, 100)
    finally:
        await conn.close()
