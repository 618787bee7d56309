"""Intake throughput: 100,000 messages posted in batches of 1,000.

Prints accepted messages/s and p50/p99 request latency. The daemon runs in
its own process with no carriers configured (nothing competes with intake),
against a fresh database on the project-local PostgreSQL.

`--optout-list N`: every message asks to skip opted-out numbers (DOMAIN
§12) against a list of N numbers loaded first, none of them a recipient,
so each insert also reads the list: what that read costs at registration.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from bench.e2e import load_optout_list
from bench.harness import daemon_process, free_port, fresh_database, percentile

CONFIG = """
[accounts.bench]
tokens = ["bench-token"]
[engine]
pacing = false
"""


async def post_all(
    port: int, total: int, batch: int, concurrency: int, skip_opted_out: bool = False
) -> tuple[int, list[float], float]:
    url = f"http://127.0.0.1:{port}/v1/messages"
    headers = {"Authorization": "Bearer bench-token"}
    texts = [
        "ご予約ありがとうございます。明日10時にお待ちしております。",
        "認証コード: 123456",
        "あ" * 120,
    ]
    batches = [
        {
            "messages": [
                {
                    "to": f"090{(b * batch + i) % 90000000 + 10000000:08d}",
                    "sms": {"text": texts[i % len(texts)]},
                    **({"skip_opted_out": True} if skip_opted_out else {}),
                }
                for i in range(batch)
            ]
        }
        for b in range(total // batch)
    ]
    latencies: list[float] = []
    accepted = 0
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for body in batches:
        queue.put_nowait(body)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                result = await resp.json()
                if resp.status != 202:
                    raise RuntimeError(f"intake answered {resp.status}: {result}")
            latencies.append(time.perf_counter() - started)
            accepted += len(result["accepted"])

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, sorted(latencies), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--optout-list",
        type=int,
        default=0,
        help="every message skips opted-out numbers, against a list of this many",
    )
    args = parser.parse_args()
    port = free_port()
    with fresh_database("intake") as dsn, daemon_process(CONFIG, dsn, port):
        if args.optout_list:
            # 080 numbers: the recipients are 090 ones.
            listed = [f"080{10_000_000 + n:08d}" for n in range(args.optout_list)]
            asyncio.run(load_optout_list(port, listed))
        accepted, latencies, elapsed = asyncio.run(
            post_all(port, args.messages, args.batch, args.concurrency, args.optout_list > 0)
        )
    variant = f" skipping opted-out numbers ({args.optout_list:,}-number list)"
    print(
        f"intake: {accepted} messages{variant if args.optout_list else ''} accepted in "
        f"{elapsed:.2f} s "
        f"= {accepted / elapsed:,.0f} messages/s "
        f"(batches of {args.batch}, {args.concurrency} concurrent requests)"
    )
    print(
        f"intake: request latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
