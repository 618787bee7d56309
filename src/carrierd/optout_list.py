"""The per-account opt-out lists (DOMAIN §12): the one way numbers are added.

The HTTP API, CSV import, the recipient's opt-out URL and an inbound keyword
reply all add through `add_optouts`, so the cap and the record of how a
number came on the list are enforced in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from carrierd.store.db import Database, Transaction

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
