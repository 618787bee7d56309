"""The links minted at intake are stored as minted (DOMAIN §12): each code
with its message, its number in the body, its target URL and, for the
opt-out URL, its expiry; messages with other links, fewer links or only an
opt-out URL in one batch do not borrow each other's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carrierd.config import AccountConfig
from carrierd.domain.links import LinkStyle
from carrierd.intake import LINKS_KEY, LinkMinting, validate_batch
from carrierd.store.db import Database

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
