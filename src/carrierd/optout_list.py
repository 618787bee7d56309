"""The per-account opt-out lists (DOMAIN §12): the one way numbers are added.

The HTTP API, CSV import, the recipient's opt-out URL and an inbound keyword
reply all add through `add_optouts`, so the cap and the record of how a
number came on the list are enforced in one place. Reading the list, for
the API and its CSV export, and the import's parsing are here too; when a
send reads it is domain/gates.py.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.storable import text_problem
from carrierd.store.db import Database, Row, Transaction

DEFAULT_CAP = 10_000


class OptOutSource(StrEnum):
    """How a number came on the list (stored; shown to API clients)."""

    API = "api"
    CSV = "csv"
    OPTOUT_URL = "optout_url"
    KEYWORD = "keyword"


class OptOutCapExceeded(Exception):
    """Adding the numbers would take the list past its cap; nothing was added."""

    def __init__(self, cap: int, listed: int, adding: int) -> None:
        super().__init__(
            f"the opt-out list holds {listed} of at most {cap} numbers; {adding} more do not fit"
        )
        self.cap = cap
        self.listed = listed
        self.adding = adding


@dataclass(frozen=True)
class AddResult:
    added: int  # numbers new on the list
    already_listed: int  # numbers that were on it before (kept as they were)


async def add_optouts(
    tx: Transaction,
    account_id: str,
    msisdns: Sequence[str],
    source: OptOutSource,
    now: datetime,
    cap: int = DEFAULT_CAP,
) -> AddResult:
    """Add canonical numbers (domain/numbers.py) to one account's list, all
    or none: past the cap, OptOutCapExceeded and nothing is written. Run
    inside the caller's transaction, so that an add is durable together with
    what caused it (a CSV import, a keyword reply being stored)."""
    unique = list(dict.fromkeys(msisdns))
    await tx.execute("optouts_lock_account", account_id)
    new = [r["msisdn"] for r in await tx.fetch("optouts_new_numbers", account_id, unique)]
    if new:
        listed = int(await tx.fetchval("optouts_count", account_id))
        if listed + len(new) > cap:
            raise OptOutCapExceeded(cap, listed, len(new))
        await tx.execute("optouts_insert", account_id, new, now, source.value)
    return AddResult(added=len(new), already_listed=len(unique) - len(new))


async def add_optouts_now(
    db: Database,
    account_id: str,
    msisdns: Sequence[str],
    source: OptOutSource,
    now: datetime,
    cap: int = DEFAULT_CAP,
) -> AddResult:
    """`add_optouts` in a transaction of its own."""

    async def work(tx: Transaction) -> AddResult:
        return await add_optouts(tx, account_id, msisdns, source, now, cap)

    return await db.in_transaction(work)


@dataclass(frozen=True)
class OptOut:
    """One number on a list, with when and how it came there."""

    msisdn: str
    added_at: datetime
    source: OptOutSource

    @classmethod
    def from_row(cls, row: Row) -> OptOut:
        return cls(row["msisdn"], row["added_at"], OptOutSource(row["source"]))


async def find_optout(db: Database, account_id: str, msisdn: str) -> OptOut | None:
    row = await db.fetchrow("optouts_get", account_id, msisdn)
    return None if row is None else OptOut.from_row(row)


async def remove_optout(db: Database, account_id: str, msisdn: str) -> bool:
    """Take a number off the list; False when it was not on it."""
    return await db.fetchrow("optouts_remove", account_id, msisdn) is not None


async def optouts_page(
    db: Database, account_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[OptOut]:
    """Up to `limit` entries in the order they were added, after `after`
    (the (added_at, msisdn) of the previous page's last entry)."""
    after_at, after_msisdn = after if after is not None else (None, None)
    rows = await db.fetch("optouts_page", account_id, after_at, after_msisdn, limit)
    return [OptOut.from_row(r) for r in rows]


# The export's columns; an import reads the first column and ignores the
# rest, so an export imports as it is.
CSV_COLUMNS: tuple[str, ...] = ("msisdn", "added_at", "source")


@dataclass(frozen=True)
class CsvRowError:
    row: int  # 1-based, the header (if any) being row 1
    reason: str


def parse_optout_csv(text: str, *, allow_m2m: bool) -> tuple[list[str], list[CsvRowError]]:
    """The canonical numbers of an import, or every row that is wrong.

    A number per row, in its first column, in any spelling intake takes;
    other columns are ignored. A first row whose first cell holds no digit
    is a header; blank rows are skipped."""
    numbers: list[str] = []
    errors: list[CsvRowError] = []
    try:
        rows = list(csv.reader(text.lstrip("\ufeff").splitlines()))
    except csv.Error as exc:
        return [], [CsvRowError(0, f"not CSV: {exc}")]
    for row_no, row in enumerate(rows, start=1):
        cell = row[0].strip() if row else ""
        if not cell and not any(c.strip() for c in row):
            continue
        if row_no == 1 and not any(ch.isdigit() for ch in cell):
            continue
        problem = text_problem(cell)
        if problem is not None:
            errors.append(CsvRowError(row_no, problem))
            continue
        try:
            numbers.append(normalize_msisdn(cell, allow_m2m=allow_m2m))
        except NumberError as exc:
            errors.append(CsvRowError(row_no, f"{exc.reason}: {exc.message}"))
    return numbers, errors
