"""Carrier guesses (DOMAIN §4): new numbers on a simulator where a share of
them ported away from the carrier their block is allocated to.

The daemon and the four-carrier SMSC simulator run in their own processes,
no number table configured on either side: the simulator places each
subscriber by the national allocation, `--ported-share` of them (15%) on
another carrier; the daemon has only what it has built in. Every recipient
is new to it (nothing learned), and `--multipart-share` of the messages are
two parts long.

Prints, for `--messages` messages with pacing off:
  - the share of first guesses that were right (the first attempt went to
    the carrier that delivered),
  - refused submits per message (each costs a round trip to a carrier that
    does not serve the recipient) and parts of text a refusing carrier was
    shown,
  - messages/s from the first request to the last final state;
then, for `--paced-messages` more at the account's 40,000 an hour, how long
they took against the time their count of tokens takes: a reroute that
spent a second token shows as extra time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import aiohttp
import asyncpg

from bench.harness import daemon_process, free_port, fresh_database
from carrierd.domain.allocation import allocated_carrier

CARRIERS = ("docomo", "au", "softbank", "rakuten")
RATE_PER_HOUR = 40_000
# Two UCS-2 parts (71..134 characters) for a multipart message.
LONG_TEXT = "ご予約の確認です。" * 9


def sim_toml(ports: dict[str, int], ported_share: float) -> str:
    lines = [
        "seed = 5",
        f"ported_share = {ported_share}",
        "[defaults]",
        'accounts = { bench = "bench" }',
        "receipt_delay_min_s = 0.2",
        "receipt_delay_max_s = 1.0",
        "undeliverable_share = 0.0",
        "expired_share = 0.0",
    ]
    for carrier, port in ports.items():
        lines += [f"[carriers.{carrier}]", f"port = {port}"]
    return "\n".join(lines) + "\n"


def daemon_toml(ports: dict[str, int], *, paced: bool) -> str:
    lines = [
        "[engine]",
        f"pacing = {'true' if paced else 'false'}",
        "claim_batch = 1000",
        "[database]",
        "pool_max = 20",
        "[accounts.bench]",
        'tokens = ["bench-token"]',
        f"rate_per_hour = {RATE_PER_HOUR}",
        # No burst to speak of: the paced run's time is its tokens' time.
        "burst = 1",
        'senders = { docomo = "0120111111", au = "0120111111", softbank = "249200", '
        'rakuten = "0120111111" }',
    ]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            f"port = {port}",
            'system_id = "bench"',
            'password = "bench"',
            "binds = 2",
            "window = 64",
        ]
    return "\n".join(lines) + "\n"


def blocks() -> list[str]:
    """Every 070/080/090 block of 100,000 numbers (`090-123`)."""
    return [f"0{prefix}{block:03d}" for prefix in (90, 80, 70) for block in range(100, 1000)]


def allocation_coverage() -> str:
    """How many blocks the built-in allocation gives one of our carriers."""
    by_carrier = Counter(allocated_carrier(f"+81{block[1:]}00000") for block in blocks())
    unknown = by_carrier.pop(None, 0)
    total = len(blocks())
    return (
        f"{total - unknown} of {total} blocks of 070/080/090 "
        f"({(total - unknown) / total:.1%}) map to one of the four carriers ("
        + ", ".join(f"{c} {n}" for c, n in sorted(by_carrier.items(), key=str))
        + f"), {unknown} to none"
    )


def new_numbers(count: int, offset: int) -> list[str]:
    """`count` distinct numbers spread over every block, none seen before."""
    all_blocks = blocks()
    return [
        f"{all_blocks[i % len(all_blocks)]}{i // len(all_blocks):05d}"
        for i in range(offset, offset + count)
    ]


async def send_and_wait(
    dsn: str, port: int, numbers: list[str], multipart_share: float, batch: int
) -> float:
    """Post the messages, wait until every one is final; returns seconds."""
    headers = {"Authorization": "Bearer bench-token"}
    every = round(1 / multipart_share) if multipart_share > 0 else 0
    items = [
        {
            "to": number,
            "sms": {"text": f"{LONG_TEXT}{i}" if every and i % every == 0 else f"お知らせ {i}"},
        }
        for i, number in enumerate(numbers)
    ]
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(items), batch):
            async with http.post(
                f"http://127.0.0.1:{port}/v1/messages",
                json={"messages": items[start : start + batch]},
                headers=headers,
            ) as resp:
                assert resp.status == 202, await resp.text()
        open_messages = len(items)
        while open_messages:
            await asyncio.sleep(0.5)
            open_messages = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE final_at IS NULL"
            )
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


async def guess_figures(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    row = await conn.fetchrow(
        """SELECT count(*) AS messages,
                  count(*) FILTER (WHERE m.state = 'delivered') AS delivered,
                  count(*) FILTER (WHERE first.carrier = m.carrier
                                   AND m.state = 'delivered') AS first_right,
                  count(*) FILTER (WHERE m.sms_parts > 1) AS multipart
           FROM messages m
           JOIN parts first ON first.message_id = m.id AND first.attempt = 1
                           AND first.part_no = 1"""
    )
    parts = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE state = 'refused') AS refused,
                  count(*) FILTER (WHERE state = 'refused' AND part_no > 1) AS refused_later,
                  count(*) FILTER (WHERE state <> 'unsent') AS submits
           FROM parts"""
    )
    await conn.close()
    return {**dict(row), **dict(parts)}


def run_daemon(
    ports: dict[str, int], numbers: list[str], args: argparse.Namespace, *, paced: bool
) -> tuple[float, dict[str, float]]:
    http_port = free_port()
    with (
        fresh_database("guess") as dsn,
        daemon_process(daemon_toml(ports, paced=paced), dsn, http_port, "bench-guess"),
    ):
        elapsed = asyncio.run(
            send_and_wait(dsn, http_port, numbers, args.multipart_share, args.batch)
        )
        return elapsed, asyncio.run(guess_figures(dsn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--paced-messages", type=int, default=300)
    parser.add_argument("--ported-share", type=float, default=0.15)
    parser.add_argument("--multipart-share", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    ports = {carrier: free_port() for carrier in CARRIERS}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(sim_toml(ports, args.ported_share))
        sim_config = f.name
    sim = subprocess.Popen(
        [
            *(sys.executable, "-m", "carrierd", "sim", "smsc"),
            *("--config", sim_config, "--log-level", "warning"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        print(f"guess: built-in allocation: {allocation_coverage()}")
        total = args.messages
        elapsed, f = run_daemon(ports, new_numbers(total, 0), args, paced=False)
        print(
            f"guess: {total} new numbers, {args.ported_share:.0%} ported, "
            f"{f['multipart']} of them two parts: {f['delivered']} delivered"
        )
        print(
            f"guess: first guess right {f['first_right'] / total:.1%}; "
            f"refused submits per message {f['refused'] / total:.3f} "
            f"({f['refused_later']} of them parts after part 1: text a refusing carrier saw); "
            f"submits per message {f['submits'] / total:.3f}"
        )
        print(f"guess: {total / elapsed:,.0f} messages/s end to end ({elapsed:.1f} s)")
        if args.paced_messages:
            paced = args.paced_messages
            elapsed, f = run_daemon(ports, new_numbers(paced, total), args, paced=True)
            tokens_s = paced * 3600 / RATE_PER_HOUR
            print(
                f"guess: {paced} new numbers at {RATE_PER_HOUR:,}/h took {elapsed:.1f} s "
                f"({tokens_s:.1f} s is one token per message; "
                f"{f['refused']} refused submits)"
            )
    finally:
        sim.terminate()
        sim.wait(10)
        os.unlink(sim_config)


if __name__ == "__main__":
    main()
