"""The links minted at intake are stored as minted (DOMAIN §12): each code
with its message, its number in the body, its target URL and, for the
opt-out URL, its expiry; messages with other links, fewer links or only an
opt-out URL in one batch do not borrow each other's, and messages with the
same targets share them right. The links stored one row per code before
migration 0190 keep working, clicks and all, and no new code can equal one
of them. A batch's recipients share one stored set of target URLs, which
goes with the last message that names it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carrierd.config import AccountConfig
from carrierd.domain.links import LinkStyle, MintedLinks
from carrierd.intake import LINKS_KEY, IntakeBatch, LinkMinting, validate_batch
from carrierd.ops.retention import purge_expired
from carrierd.store.db import Database, LinkCodeTaken, migrate

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


async def _stored(db: Database, bodies: list[str]) -> tuple[IntakeBatch, dict[int, int]]:
    """`bodies` validated as intake does, one recipient each, and stored."""
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
    return batch, await db.insert_messages("acme", batch.rows, NOW)


async def test_each_code_is_stored_with_its_number_target_and_expiry(db: Database) -> None:
    bodies = [
        "{{link:https://a.jp/1}} {{link:https://a.jp/2?x=1&y=2}} {{link:https://a.jp/3}} "
        "{{optout_url}}",
        "{{link:https://b.jp/only}}",
        "停止は{{optout_url}}",
        "{{link:https://c.jp/1}}{{link:https://c.jp/2}}{{link:https://c.jp/3}}"
        "{{link:https://c.jp/4}}{{link:https://c.jp/5}}",
        "no marks",
        # Another body with the second's target: the batch sends that set once.
        "また {{link:https://b.jp/only}}",
    ]
    batch, ids = await _stored(db, bodies)
    stored = await db.call_raw(
        "SELECT message_id, msisdn, code, kind, link_no, target_url, expires_at FROM message_links"
    )
    expected = {
        (ids[row_no], row["msisdn"], *link)
        for row_no, row in enumerate(batch.rows)
        for link in row.get(LINKS_KEY) or ()
    }
    assert {tuple(r.values()) for r in stored} == expected
    assert len(expected) == 3 + 1 + 1 + 1 + 5 + 1
    by_number = {(r["message_id"], r["link_no"]): r["target_url"] for r in stored}
    assert by_number[(ids[0], 2)] == "https://a.jp/2?x=1&y=2"
    assert by_number[(ids[0], 0)] is None
    assert by_number[(ids[3], 5)] == "https://c.jp/5"
    assert by_number[(ids[5], 1)] == by_number[(ids[1], 1)] == "https://b.jp/only"
    [optout_expiry] = {r["expires_at"] for r in stored if r["message_id"] == ids[2]}
    assert optout_expiry == NOW + timedelta(days=60)


async def test_a_set_of_target_urls_is_stored_once_and_goes_with_its_last_message(
    db: Database,
) -> None:
    campaign = "{{link:https://a.jp/1}} {{link:https://a.jp/2}}"
    bodies = [campaign, campaign, campaign, "{{link:https://b.jp/}}", "{{optout_url}}"]
    batch, ids = await _stored(db, bodies)

    async def sets() -> dict[tuple[str, ...], int]:
        rows = await db.call_raw("SELECT target_urls, links_left FROM link_targets")
        return {tuple(r["target_urls"]): r["links_left"] for r in rows}

    assert await sets() == {("https://a.jp/1", "https://a.jp/2"): 3, ("https://b.jp/",): 1}
    codes = [row[LINKS_KEY].link_codes[1] for row in batch.rows[:3]]

    async def end(*row_nos: int) -> None:
        for row_no in row_nos:
            await db.call_raw(
                "UPDATE messages SET state = 'delivered', final_at = $2 WHERE id = $1",
                ids[row_no],
                NOW,
            )

    # Retention 101 days on: two of the campaign's three messages go.
    await end(0, 1)
    assert await purge_expired(db, NOW + timedelta(days=101)) == 2
    assert await sets() == {("https://a.jp/1", "https://a.jp/2"): 1, ("https://b.jp/",): 1}
    followed = await db.fetch("links_follow", sorted(codes), [1, 1, 1], NOW)
    assert [(r["code"], r["target_url"]) for r in followed] == [(codes[2], "https://a.jp/2")]
    # The last of them: its set goes with it; the other set stays.
    await end(2, 4)
    assert await purge_expired(db, NOW + timedelta(days=101)) == 2
    assert await sets() == {("https://b.jp/",): 1}


async def test_a_set_counted_short_does_not_stop_retention(db: Database) -> None:
    campaign = "{{link:https://a.jp/1}}"
    _, ids = await _stored(db, [campaign, campaign])
    await db.call_raw("UPDATE link_targets SET links_left = 1")
    await db.call_raw("UPDATE messages SET state = 'delivered', final_at = $1", NOW)
    assert await purge_expired(db, NOW + timedelta(days=101)) == len(ids) == 2
    assert await db.call_raw("SELECT 1 FROM link_targets") == []


async def test_links_with_their_urls_on_the_row_keep_working(db: Database) -> None:
    """Rows written between 0190 and 0210 hold their target URLs themselves."""
    _, ids = await _stored(db, ["a message"])
    [message_id] = ids.values()
    await db.call_raw(
        "INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, target_urls,"
        " account_id, msisdn, created_at) VALUES ('RowUrls12345', 'ab', $1, 'link', 1,"
        " '{https://a.jp/1,https://a.jp/2}', 'acme', '+819012345000', $2)",
        message_id,
        NOW,
    )
    followed = await db.fetch("links_follow", ["RowUrls12345a", "RowUrls12345b"], [1, 1], NOW)
    assert sorted((r["code"], r["target_url"]) for r in followed) == [
        ("RowUrls12345a", "https://a.jp/1"),
        ("RowUrls12345b", "https://a.jp/2"),
    ]
    viewed = await db.fetch("links_of_messages", [message_id])
    assert [(r["link_no"], r["target_url"], r["clicks"]) for r in viewed] == [
        (1, "https://a.jp/1", 1),
        (2, "https://a.jp/2", 1),
    ]
    await db.call_raw(
        "UPDATE messages SET state = 'delivered', final_at = $2 WHERE id = $1", message_id, NOW
    )
    assert await purge_expired(db, NOW + timedelta(days=101)) == 1
    assert await db.call_raw("SELECT 1 FROM link_sets") == []
    assert await db.call_raw("SELECT 1 FROM link_clicks") == []


async def _as_before_link_sets(db: Database) -> None:
    """The database as it was before 0190: one row per code (and so before
    0210's sets of target URLs)."""
    await db.call_raw("DROP VIEW message_links")
    await db.call_raw("DROP TABLE link_clicks, link_sets, link_targets")
    await db.call_raw(
        'CREATE TABLE message_links (code text COLLATE "C" PRIMARY KEY,'
        " message_id bigint NOT NULL, kind text NOT NULL, link_no smallint NOT NULL,"
        " target_url text, account_id text NOT NULL,"
        " msisdn text NOT NULL, created_at timestamptz NOT NULL, expires_at timestamptz,"
        " clicks integer NOT NULL DEFAULT 0, first_click_at timestamptz,"
        " last_click_at timestamptz, confirmed_at timestamptz)"
    )
    await db.call_raw("DELETE FROM schema_migrations WHERE version IN (190, 210)")


async def test_links_stored_one_per_row_survive_the_migration(dsn: str, db: Database) -> None:
    await _as_before_link_sets(db)
    await db.call_raw(
        "INSERT INTO message_links (code, message_id, kind, link_no, target_url, account_id,"
        " msisdn, created_at, expires_at, clicks, first_click_at, last_click_at) VALUES"
        " ('OldCode12345Zz', 7, 'link', 3, 'https://a.jp/', 'acme', '+819012345678', $1,"
        "  NULL, 2, $1, $2),"
        " ('OldOptOut1234A', 7, 'optout', 0, NULL, 'acme', '+819012345678', $1, $3, 0, NULL,"
        "  NULL)",
        NOW,
        NOW + timedelta(hours=1),
        NOW + timedelta(days=60),
    )
    assert await migrate(dsn) == [190, 210]
    by_kind = {r["kind"]: r for r in await db.fetch("links_of_messages", [7])}
    assert (by_kind["optout"]["link_no"], by_kind["optout"]["clicks"]) == (0, 0)
    assert (by_kind["link"]["link_no"], by_kind["link"]["target_url"]) == (3, "https://a.jp/")
    assert (by_kind["link"]["clicks"], by_kind["link"]["first_click_at"]) == (2, NOW)
    later = NOW + timedelta(hours=2)
    followed = await db.fetch("links_follow", ["OldCode12345Zz", "OldOptOut1234A"], [1, 1], later)
    assert {(r["code"], r["kind"], r["target_url"]) for r in followed} == {
        ("OldCode12345Zz", "link", "https://a.jp/"),
        ("OldOptOut1234A", "optout", None),
    }
    [row] = await db.call_raw(
        "SELECT clicks, first_click_at, last_click_at FROM message_links"
        " WHERE code = 'OldCode12345Zz'"
    )
    assert (row["clicks"], row["first_click_at"], row["last_click_at"]) == (3, NOW, later)
    async with db.transaction() as tx:
        target = await tx.fetchrow("links_optout_target", "OldOptOut1234A")
        assert target is not None and target["msisdn"] == "+819012345678"


async def test_a_code_equal_to_a_whole_code_key_is_minted_again(dsn: str, db: Database) -> None:
    await _as_before_link_sets(db)
    await db.call_raw(
        "INSERT INTO message_links (code, message_id, kind, link_no, target_url, account_id,"
        " msisdn, created_at) VALUES ('OldCode12345Zz', 7, 'link', 1, 'https://a.jp/', 'acme',"
        " '+819012345678', $1)",
        NOW,
    )
    assert await migrate(dsn) == [190, 210]
    # The old code again, as a new key and suffix ("Z" + "z").
    with pytest.raises(LinkCodeTaken):
        async with db.transaction() as tx:
            await tx.insert_links("acme", [_row(_minted("OldCode12345Z", "qz"))], [8], NOW)
    async with db.transaction() as tx:
        await tx.insert_links("acme", [_row(_minted("OldCode12345Z", "qy"))], [8], NOW)
    followed = await db.fetch("links_follow", ["OldCode12345Zq", "OldCode12345Zz"], [1, 1], NOW)
    assert {(r["code"], r["target_url"]) for r in followed} == {
        ("OldCode12345Zq", "https://n.jp/1"),
        ("OldCode12345Zz", "https://a.jp/"),
    }


def _row(links: MintedLinks) -> dict[str, object]:
    return {"msisdn": "+819012345678", LINKS_KEY: links}


def _minted(key: str, suffixes: str) -> MintedLinks:
    targets = tuple(f"https://n.jp/{n}" for n in range(1, len(suffixes) + 1))
    return MintedLinks(key, suffixes, targets, None, None)
