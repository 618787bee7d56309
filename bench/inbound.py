"""Replies stored by their one owner (engine/inbound.py): single-part SMS
replies and 3-part concatenated ones (each part in a flush of its own, in
shuffled order, as they come over several binds), written the way the
write-behind writes them (one transaction per flush of `--batch` MO PDUs).

Prints replies/s and deliver_sm/s for both, against a fresh database on the
project-local PostgreSQL. Half the replies answer an earlier message, so the
answered-message lookup runs against a populated messages table.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

from bench.harness import fresh_database
from carrierd.config import parse_config
from carrierd.domain.inbound import MoPdu
from carrierd.engine.inbound import Inbound
from carrierd.store.db import Database

T0 = datetime(2026, 12, 1, tzinfo=UTC)
ADDRESS = "0120111111"


def number(n: int) -> str:
    return f"8190{n % 90_000_000 + 10_000_000:08d}"


def single(n: int) -> MoPdu:
    return MoPdu("docomo", number(n), ADDRESS, 0, 8, f"はい {n}".encode("utf-16-be"), T0)


def parts_of(n: int) -> list[MoPdu]:
    body = ("参加します。" * 12).encode("utf-16-be")  # 144 octets: 3 parts
    chunks = [body[i : i + 67] for i in range(0, len(body), 67)]
    return [
        MoPdu(
            "docomo",
            number(n),
            ADDRESS,
            0x40,
            8,
            bytes([5, 0, 3, n % 256, len(chunks), seq]) + chunk,
            T0,
        )
        for seq, chunk in enumerate(chunks, start=1)
    ]


async def run(dsn: str, replies: int, batch: int) -> None:
    config = parse_config(
        {
            "database": {"dsn": dsn},
            "accounts": {"bench": {"tokens": ["t"], "inbound_addresses": [ADDRESS]}},
        },
        env={},
    )
    db = await Database.open(dsn, min_size=1, max_size=4)
    try:
        await db.sync_accounts([("bench", False, 660, config.accounts["bench"].token_sha256)])
        # Earlier messages to half the numbers, sent a day ago.
        await db.call_raw(
            """
            INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn,
                                  validated, sms_text, not_before, expires_at, submitted_at,
                                  accepted_at, updated_at)
            SELECT 'bench', 'sms', 'sms', 'delivered', 'x',
                   '+8190' || lpad((i % 90000000 + 10000000)::text, 8, '0'), true, 'x',
                   $1::timestamptz, $1::timestamptz, $1::timestamptz, $1::timestamptz,
                   $1::timestamptz
            FROM generate_series(0, $2 - 1, 2) AS i
            """,
            T0 - timedelta(days=1),
            replies,
        )
        await db.call_raw("ANALYZE messages")
        inbound = Inbound(db, config=lambda: config)

        async def flush(pdus: list[MoPdu]) -> None:
            await db.in_transaction(lambda tx: inbound.store_sms(tx, pdus, T0))

        started = time.perf_counter()
        singles = [single(n) for n in range(replies)]
        for i in range(0, len(singles), batch):
            await flush(singles[i : i + batch])
        elapsed = time.perf_counter() - started
        rate = replies / elapsed
        print(f"single-part replies: {rate:,.0f} replies/s ({replies} in {elapsed:.1f} s)")

        concatenated = replies // 3
        pdus = [pdu for n in range(replies, replies + concatenated) for pdu in parts_of(n)]
        random.Random(7).shuffle(pdus)
        started = time.perf_counter()
        for i in range(0, len(pdus), batch):
            await flush(pdus[i : i + batch])
        elapsed = time.perf_counter() - started
        stored = await db.call_raw(
            "SELECT count(*) AS n FROM inbound_messages WHERE parts_expected = 3"
        )
        assert stored[0]["n"] == concatenated, stored
        print(
            f"3-part replies, parts shuffled: {concatenated / elapsed:,.0f} replies/s,"
            f" {len(pdus) / elapsed:,.0f} deliver_sm/s ({concatenated} in {elapsed:.1f} s)"
        )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replies", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with fresh_database("inbound") as dsn:
        asyncio.run(run(dsn, args.replies, args.batch))


if __name__ == "__main__":
    main()
