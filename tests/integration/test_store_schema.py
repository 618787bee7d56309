"""The migrations produce the schema the code expects, and the claim query
uses its index."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from carrierd.store.db import QUERIES, Database, list_migrations, migrate

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


async def test_every_named_statement_prepares_against_the_migrated_schema(dsn: str) -> None:
    # PREPARE resolves every table, column, type and function a statement
    # names: a statement the schema cannot serve fails here, not in traffic.
    conn = await asyncpg.connect(dsn)
    try:
        for name, sql in QUERIES.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
                pytest.fail(f"queries.sql {name}: {exc}")
    finally:
        await conn.close()


async def test_migrations_are_recorded_and_idempotent(dsn: str) -> None:
    assert await migrate(dsn) == []
    conn = await asyncpg.connect(dsn)
    try:
        versions = [
            r["version"]
            for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        ]
    finally:
        await conn.close()
    assert versions == [m.version for m in list_migrations()]


async def test_two_daemons_migrating_at_once_apply_each_migration_once(
    pg_server_dsn: str,
) -> None:
    from tests.conftest import with_database

    name = "carrierd_migrate_race"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        target = with_database(pg_server_dsn, name)
        first, second = await asyncio.gather(migrate(target), migrate(target))
        assert sorted(first + second) == [m.version for m in list_migrations()]
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_claim_query_uses_its_index_on_100k_rows(db: Database) -> None:
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('a'), ('b'), ('c')")
    # Mostly final rows (as in production) plus a queued backlog.
    await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              sms_text, not_before, expires_at, accepted_at, updated_at)
        SELECT (ARRAY['a','b','c'])[1 + i % 3], 'sms', 'sms',
               CASE WHEN i % 10 = 0 THEN 'queued' ELSE 'delivered' END,
               '09012345678', '+819012345678', true, 'x',
               $1::timestamptz + make_interval(secs => i), $1::timestamptz + interval '3 days',
               $1::timestamptz, $1::timestamptz
        FROM generate_series(1, 100000) AS i
        """,
        NOW,
    )
    await db.call_raw("ANALYZE messages")
    plan_rows = await db.call_raw(
        "EXPLAIN (FORMAT JSON) " + QUERIES["claim_due"],
        NOW + timedelta(hours=1),
        ["a", "b", "c"],
        [100, 100, 100],
        [10, 10, 10],
    )
    nodes = list(_plan_nodes(_plan(plan_rows)))
    scans_of_messages = [n for n in nodes if _is_scan_of_messages(n)]
    assert scans_of_messages, nodes
    assert {n.get("Index Name") for n in scans_of_messages} <= {
        "messages_claimable",
        "messages_claimable_sent_before",
        "messages_pkey",
    }, scans_of_messages
    assert any(n.get("Index Name") == "messages_claimable" for n in scans_of_messages)
    due_rows = await db.call_raw(
        "EXPLAIN (FORMAT JSON) " + QUERIES["due_accounts"], NOW + timedelta(hours=1), 500
    )
    due_nodes = list(_plan_nodes(_plan(due_rows)))
    assert any(n.get("Index Name") == "messages_claimable" for n in due_nodes), due_nodes
    assert not any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "messages" for n in due_nodes
    ), due_nodes


def _plan(rows: list[dict[str, Any]]) -> dict[str, Any]:
    raw = rows[0]["QUERY PLAN"]
    document = json.loads(raw) if isinstance(raw, str) else raw
    return dict(document[0]["Plan"])


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def _is_scan_of_messages(node: dict[str, Any]) -> bool:
    return "Scan" in node["Node Type"] and node.get("Relation Name") == "messages"


@pytest.mark.parametrize(
    ("name", "table", "args"),
    [
        ("learned_carriers", "carrier_learned", "ARRAY['+819012345678']"),
        ("au_gate_state", "au_gate", "ARRAY['+819012345678'], ARRAY[1]::bigint[]"),
        (
            "rcs_cached_capabilities",
            "rcs_capabilities",
            "ARRAY['+819012345678'], now(), 'bot'",
        ),
    ],
)
async def test_per_number_lookups_probe_even_in_a_plan_made_on_an_empty_table(
    dsn: str, name: str, table: str, args: str
) -> None:
    # asyncpg keeps each statement prepared, and PostgreSQL its generic plan
    # until the table is next analyzed: on a new database the plan is made
    # while the table is empty, and a scan chosen then goes on scanning the
    # table as it grows (a daemon's first minutes; every bench run).
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE probe AS {QUERIES[name]}")
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE probe({args})")
    finally:
        await conn.close()
    nodes = list(_plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == table]
    assert scans and all(n["Node Type"] == "Index Scan" for n in scans), (name, nodes)


async def test_batch_statements_probe_by_key_when_statistics_call_a_state_rare(
    dsn: str,
) -> None:
    # Analyzed while nothing was dispatching or sending (a delivery log of
    # final messages), then thousands in flight: a plan through the partial
    # indexes on state reads all of them on every call.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO accounts (account_id) VALUES ('a')")
        insert = (
            "INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn,"
            " validated, sms_text, not_before, expires_at, accepted_at, updated_at,"
            " carrier, lease_owner, lease_expires_at)"
            " SELECT 'a', 'sms', 'sms', $1, '09012345678', '+8190' || lpad(i::text, 8, '0'),"
            " true, 'x', $2, $2, $2, $2, 'au', 'd1', $2"
            " FROM generate_series($3::int, $4::int) AS i"
        )
        await conn.execute(insert, "delivered", NOW, 1, 20_000)
        await conn.execute("ANALYZE messages")
        await conn.execute(insert, "dispatching", NOW, 20_001, 22_000)
        await conn.execute(insert, "sending", NOW, 22_001, 24_000)
        ids = "'{20001,20002,20003}'::bigint[]"
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for name, args, index in (
            ("reassign_lock_held", f"{ids}, 'd1'", "messages_pkey"),
            ("au_gate_state", f"ARRAY['+819000020001'], {ids}", "messages_open_by_msisdn"),
        ):
            await conn.execute(f"PREPARE {name} AS {QUERIES[name]}")
            async with conn.transaction():
                raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({args})")
            nodes = list(_plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]))
            scans = [n for n in nodes if n.get("Relation Name") == "messages"]
            assert scans and all(n.get("Index Name") == index for n in scans), (name, scans)
            key = "id" if index == "messages_pkey" else "msisdn"
            assert all(key in n.get("Index Cond", "") for n in scans), (name, scans)
    finally:
        await conn.close()
