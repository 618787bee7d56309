"""Intake throughput: 100,000 messages posted in batches of 1,000.

Prints accepted messages/s and p50/p99 request latency. The daemon runs in
its own process with no carriers configured (nothing competes with intake),
against a fresh database on the project-local PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from bench.harness import daemon_process, free_port, fresh_database, percentile

CONFIG = """
[accounts.bench]
tokens = ["bench-token"]
[engine]
pacing = false
"""


async def post_all(
    port: int, total: int, batch: int, concurrency: int
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
    args = parser.parse_args()
    port = free_port()
    with fresh_database("intake") as dsn, daemon_process(CONFIG, dsn, port):
        accepted, latencies, elapsed = asyncio.run(
            post_all(port, args.messages, args.batch, args.concurrency)
        )
    print(
        f"intake: {accepted} messages accepted in {elapsed:.2f} s "
        f"= {accepted / elapsed:,.0f} messages/s "
        f"(batches of {args.batch}, {args.concurrency} concurrent requests)"
    )
    print(
        f"intake: request latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
