"""The links minted at intake are stored as minted (DOMAIN §12): each code
with its message, its number in the body, its target URL and, for the
opt-out URL, its expiry; messages with other links, fewer links or only an
opt-out URL in one batch do not borrow each other's. Codes compare byte by
byte (migration 0180), and the links stored before it keep working."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carrierd.config import AccountConfig
from carrierd.domain.links import LinkStyle
from carrierd.intake import LINKS_KEY, LinkMinting, validate_batch
from carrierd.store.db import Database, migrate

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


async def test_each_code_is_stored_with_its_number_target_and_expiry(db: Database) -> None:
    bodies = [
        "{{link:https://a.jp/1}} {{link:https://a.jp/2?x=1&y=2}} {{link:https://a.jp/3}} "
        "{{optout_url}}",
        "{{link:https://b.jp/only}}",
        "停止は{{optout_url}}",
        "{{link:https://c.jp/1}}{{link:https://c.jp/2}}{{link:https://c.jp/3}}"
        "{{link:https://c.jp/4}}{{link:https://c.jp/5}}",
        "no marks",
    ]
    batch = validate_batch(
        {"messages": [{"to": f"0901234500{n}", "sms": {"text": b}} for n, b in enumerate(bodies)]},
        AccountConfig("acme", token_sha256=()),
        NOW,
        max_items=10,
        expiry_s=3600,
        minting=LinkMinting(LinkStyle("s.kmc.jp"), 60.0),
    )
    assert not batch.rejected
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('acme')")
    ids = await db.insert_messages("acme", batch.rows, NOW)
    stored = await db.call_raw(
        "SELECT message_id, msisdn, code, kind, link_no, target_url, expires_at FROM message_links"
    )
    expected = {
        (ids[row_no], row["msisdn"], *link)
        for row_no, row in enumerate(batch.rows)
        for link in row.get(LINKS_KEY) or ()
    }
    assert {tuple(r.values()) for r in stored} == expected
    assert len(expected) == 3 + 1 + 1 + 1 + 5
    by_number = {(r["message_id"], r["link_no"]): r["target_url"] for r in stored}
    assert by_number[(ids[0], 2)] == "https://a.jp/2?x=1&y=2"
    assert by_number[(ids[0], 0)] is None
    assert by_number[(ids[3], 5)] == "https://c.jp/5"
    [optout_expiry] = {r["expires_at"] for r in stored if r["message_id"] == ids[2]}
    assert optout_expiry == NOW + timedelta(days=60)


async def test_links_stored_before_bytewise_codes_survive_the_migration(
    dsn: str, db: Database
) -> None:
    # The table as it was before 0180: codes under the database's collation.
    await db.call_raw('ALTER TABLE message_links ALTER COLUMN code TYPE text COLLATE "default"')
    await db.call_raw("DELETE FROM schema_migrations WHERE version = 180")
    await db.call_raw(
        "INSERT INTO message_links (code, message_id, kind, link_no, target_url, account_id, "
        "msisdn, created_at) VALUES ('OldCode12345Zz', 7, 'link', 1, 'https://a.jp/', 'acme', "
        "'+819012345678', $1)",
        NOW,
    )
    assert await migrate(dsn) == [180]
    [collation] = await db.call_raw(
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_name = 'message_links' AND column_name = 'code'"
    )
    assert collation["collation_name"] == "C"
    followed = await db.fetch("links_follow", ["OldCode12345Zz"], [1], NOW)
    assert [(r["code"], r["target_url"]) for r in followed] == [("OldCode12345Zz", "https://a.jp/")]
    [row] = await db.call_raw("SELECT clicks, first_click_at FROM message_links")
    assert (row["clicks"], row["first_click_at"]) == (1, NOW)
