"""The opt-out list's one way in (DOMAIN §12): cap, first record kept, all or none."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from carrierd.optout_list import OptOutCapExceeded, OptOutSource, add_optouts_now
from carrierd.store.db import Database

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"+8190{start + i:08d}" for i in range(n)]


async def listed(db: Database, account: str) -> dict[str, tuple[datetime, str]]:
    rows = await db.call_raw(
        "SELECT msisdn, added_at, source FROM optouts WHERE account_id = $1", account
    )
    return {r["msisdn"]: (r["added_at"], r["source"]) for r in rows}


async def test_an_add_keeps_the_first_record_and_counts_what_was_new(db: Database) -> None:
    first = await add_optouts_now(db, "acme", numbers(2), OptOutSource.API, NOW)
    assert (first.added, first.already_listed) == (2, 0)
    later = NOW + timedelta(days=1)
    again = await add_optouts_now(
        db, "acme", [*numbers(2), *numbers(1, 5), *numbers(1, 5)], OptOutSource.KEYWORD, later
    )
    assert (again.added, again.already_listed) == (1, 2)
    rows = await listed(db, "acme")
    assert rows[numbers(1)[0]] == (NOW, "api")
    assert rows[numbers(1, 5)[0]] == (later, "keyword")
    assert await listed(db, "other") == {}


async def test_past_the_cap_nothing_is_added(db: Database) -> None:
    await add_optouts_now(db, "acme", numbers(8), OptOutSource.CSV, NOW, cap=10)
    with pytest.raises(OptOutCapExceeded) as refused:
        await add_optouts_now(db, "acme", numbers(3, 100), OptOutSource.API, NOW, cap=10)
    assert (refused.value.listed, refused.value.adding) == (8, 3)
    assert len(await listed(db, "acme")) == 8
    # Numbers already listed do not count against the cap.
    fits = await add_optouts_now(
        db, "acme", [*numbers(8), *numbers(2, 100)], OptOutSource.API, NOW, cap=10
    )
    assert fits.added == 2


async def test_adds_at_once_cannot_pass_the_cap_together(db: Database) -> None:
    results = await asyncio.gather(
        *(
            add_optouts_now(db, "acme", numbers(3, 10 * i), OptOutSource.API, NOW, cap=10)
            for i in range(6)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, OptOutCapExceeded) for r in results) == 3
    assert len(await listed(db, "acme")) == 9
