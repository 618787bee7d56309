"""Short links (DOMAIN §12): what they cost and how fast they are served.

1. Intake with 5 links per message against none: messages/s posting
   batches of 1,000 to the daemon (each link minted, rendered, stored),
   due tomorrow so that no dispatcher works beside intake.
2. Redirects/s served by the daemon's link server, each 302 sent only once
   its click is committed (group commit, http/links.py ClickBatcher). The
   load comes from a separate process speaking plain HTTP/1.1 keep-alive on
   many connections (a cheap client, so the measure is the server's); the
   clicks counted in the database are checked against the 302s received.
3. The opt-out browser test, with its screenshots under bench/out/links.

The daemon runs in its own process with no carriers configured, against a
fresh database on the project-local PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import ROOT, daemon_process, free_port, fresh_database, wait_for_port

CONFIG = """
[accounts.bench]
tokens = ["bench-token"]
[engine]
pacing = false
[links]
enabled = true
host = "127.0.0.1"
port = {links_port}
domain = "s.kmc.jp"
csrf_secret = "bench-links-csrf-secret"
# One load generator on one address: no per-address limit applies here.
rate_per_s = 1000000
burst = 1000000
max_connections = 4096
"""

PLAIN = "ご予約ありがとうございます。明日10時にお待ちしております。詳細はWebで。"
FIVE_LINKS = "ご予約ありがとうございます。" + "".join(
    f"{{{{link:https://shop.example.jp/item/{n}?ref=sms}}}}" for n in range(5)
)
# FIVE_LINKS as sent, its links typed out: the same three SMS parts without
# a link to mint or store (--texts as-sent), to tell what the links cost
# from what the longer text costs.
AS_SENT = re.sub(r"\{\{link:[^}]*\}\}", lambda m: f" s.kmc.jp/{'x' * 14} ", FIVE_LINKS)


async def post_messages(
    port: int, text: str, total: int, batch: int, concurrency: int, send_at: str | None = None
) -> float:
    """Messages/s for `total` messages of `text` in batches of `batch`."""
    url = f"http://127.0.0.1:{port}/v1/messages"
    headers = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}
    # Encoded before the clock starts (as aiohttp's json= would): the load
    # generator shares the machine, and its encoding is not intake's work.
    bodies = [
        json.dumps(
            {
                "messages": [
                    {
                        "to": f"090{(b * batch + i) % 90000000 + 10000000:08d}",
                        "sms": {"text": text},
                        **({"send_at": send_at} if send_at else {}),
                    }
                    for i in range(batch)
                ]
            }
        ).encode()
        for b in range(total // batch)
    ]
    accepted = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while bodies:
            body = bodies.pop()
            async with session.post(url, data=body, headers=headers) as response:
                result = await response.json()
                if response.status != 202 or result["rejected"]:
                    raise RuntimeError(f"intake answered {response.status}: {result}")
                accepted += len(result["accepted"])

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted / elapsed


def bench_intake(args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {"none": [], "5 links": []}
    cpu_us: dict[str, list[float]] = {"none": [], "5 links": []}
    pg_cpu_us: dict[str, list[float]] = {"none": [], "5 links": []}
    # Due tomorrow, so that the daemon's CPU and the rate are intake's: with
    # no carrier configured, a dispatcher working beside intake would fail
    # the messages as they came, and fail more of them the slower intake ran.
    send_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    # Alternate, each on a fresh database, so neither gets a warmer one.
    for _round in range(args.rounds):
        plain = AS_SENT if args.texts == "as-sent" else PLAIN
        for label, text in (("none", plain), ("5 links", FIVE_LINKS)):
            if args.texts in ("none", "links") and (args.texts == "none") != (label == "none"):
                for figures in (rates, cpu_us, pg_cpu_us):
                    figures[label].append(float("nan"))
                continue
            port, links_port = free_port(), free_port()
            config = CONFIG.format(links_port=links_port)
            with fresh_database("links_intake") as dsn, daemon_process(config, dsn, port) as proc:
                cpu_before, pg_before = process_cpu_s(proc.pid), postgres_cpu_s()
                rates[label].append(
                    asyncio.run(
                        post_messages(
                            port, text, args.messages, args.batch, args.concurrency, send_at
                        )
                    )
                )
                cpu_us[label].append(
                    (process_cpu_s(proc.pid) - cpu_before) / args.messages * 1_000_000
                )
                pg_cpu_us[label].append((postgres_cpu_s() - pg_before) / args.messages * 1_000_000)
                print(
                    f"links intake: round {_round + 1}, {label}: {rates[label][-1]:,.0f} "
                    f"messages/s, daemon {cpu_us[label][-1]:.0f} us and PostgreSQL "
                    f"{pg_cpu_us[label][-1]:.0f} us CPU per message",
                    flush=True,
                )
    none, linked = max(rates["none"]), max(rates["5 links"])
    if args.texts == "as-sent":
        print("links intake: without links = the same text as sent, its links typed out")
    print(
        f"links intake: {none:,.0f} messages/s without links, {linked:,.0f} messages/s "
        f"with 5 links each = {100 * (1 - linked / none):.1f}% cost "
        f"(best of {args.rounds}, {args.messages} messages in batches of {args.batch}, "
        f"{args.concurrency} concurrent requests)"
    )
    # Each round runs both one after the other: the cost within a round is
    # the steadier figure on a machine whose speed drifts between rounds.
    pair_costs = sorted(
        100 * (1 - linked / none)
        for none, linked in zip(rates["none"], rates["5 links"], strict=True)
        if none == none and linked == linked  # NaN: a side not run
    )
    if pair_costs:
        print(
            f"links intake: median cost {statistics.median(pair_costs):.1f}% over "
            f"{len(pair_costs)} rounds (from {pair_costs[0]:.1f}% to {pair_costs[-1]:.1f}%); "
            f"median CPU per message: daemon {statistics.median(cpu_us['none']):.0f} us "
            f"without links, {statistics.median(cpu_us['5 links']):.0f} us with; PostgreSQL "
            f"{statistics.median(pg_cpu_us['none']):.0f} us without, "
            f"{statistics.median(pg_cpu_us['5 links']):.0f} us with"
        )
    print(
        f"links intake: daemon CPU per message {min(cpu_us['none']):.0f} us without links, "
        f"{min(cpu_us['5 links']):.0f} us with 5 links; PostgreSQL CPU per message "
        f"{min(pg_cpu_us['none']):.0f} us without, {min(pg_cpu_us['5 links']):.0f} us with "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


def _load(port: int, codes: list[str], connections: int, duration_s: float, out: object) -> None:
    """The load generator process: GET random codes on keep-alive
    connections for `duration_s`; puts (302s, other answers) on `out`."""

    requests = [f"GET /{code} HTTP/1.1\r\nHost: s.kmc.jp\r\n\r\n".encode() for code in codes]

    async def one(
        counts: list[int], ready: asyncio.Event, connected: list[int], stop_at: list[float]
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connected[0] += 1
        if connected[0] == connections:
            stop_at[0] = time.monotonic() + duration_s
            ready.set()
        await ready.wait()
        rng = random.Random()
        try:
            while time.monotonic() < stop_at[0]:
                writer.write(rng.choice(requests))
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                counts[0 if head.startswith(b"HTTP/1.1 302") else 1] += 1
        finally:
            writer.close()

    async def main() -> tuple[int, int, float]:
        counts = [0, 0]
        ready = asyncio.Event()
        stop_at = [0.0]
        connected = [0]
        tasks = [one(counts, ready, connected, stop_at) for _ in range(connections)]
        await asyncio.gather(*tasks)
        # Measured from the moment every connection was open to the last answer.
        return counts[0], counts[1], time.monotonic() - (stop_at[0] - duration_s)

    try:
        import uvloop

        result = uvloop.run(main())
    except ImportError:
        result = asyncio.run(main())
    out.put(result)  # type: ignore[attr-defined]


def process_cpu_s(pid: int, with_reaped_children: bool = False) -> float:
    """User + system CPU seconds a process has used (Linux /proc), and with
    `with_reaped_children` those of its children that ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """CPU seconds the project-local PostgreSQL has used: the postmaster and
    every backend and helper process, live or ended (NaN when the bench
    runs against a server of its own, CARRIERD_DSN)."""
    if os.environ.get("CARRIERD_DSN"):
        return float("nan")
    data_dir = Path(os.environ.get("CARRIERD_PGDATA") or ROOT / "var" / "pg") / "data"
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        total = process_cpu_s(postmaster, with_reaped_children=True)
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return float("nan")
    for child in children:
        # One that ended between the listing and the read counts as reaped.
        with contextlib.suppress(OSError, ValueError):
            total += process_cpu_s(int(child))
    return total


async def fetch_codes(dsn: str) -> tuple[list[str], int]:
    conn = await asyncpg.connect(dsn)
    try:
        codes = [
            r["code"]
            for r in await conn.fetch("SELECT code FROM message_links WHERE kind = 'link'")
        ]
        clicks = int(await conn.fetchval("SELECT coalesce(sum(clicks), 0) FROM message_links"))
        return codes, clicks
    finally:
        await conn.close()


def bench_redirects(args: argparse.Namespace) -> None:
    port, links_port = free_port(), free_port()
    config = CONFIG.format(links_port=links_port)
    with fresh_database("links_redirects") as dsn, daemon_process(config, dsn, port) as proc:
        wait_for_port(links_port, proc)
        # 10,000 recipients with 5 links each: 50,000 codes to click on,
        # scheduled for tomorrow so that no dispatcher works beside the
        # link server (there is no carrier to send them to anyway).
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        asyncio.run(post_messages(port, FIVE_LINKS, 10_000, 1000, 4, send_at=tomorrow))
        codes, _ = asyncio.run(fetch_codes(dsn))
        out: multiprocessing.Queue[tuple[int, int, float]] = multiprocessing.Queue()
        loader = multiprocessing.Process(
            target=_load, args=(links_port, codes, args.connections, args.seconds, out)
        )
        cpu_before = process_cpu_s(proc.pid)
        loader.start()
        redirects, others, elapsed = out.get()
        daemon_cpu_s = process_cpu_s(proc.pid) - cpu_before
        loader.join()
        _, clicks = asyncio.run(fetch_codes(dsn))
    print(
        f"links redirects: {redirects:,} redirects in {elapsed:.1f} s = "
        f"{redirects / elapsed:,.0f} redirects/s, each click committed before its 302 "
        f"({args.connections} keep-alive connections over {len(codes):,} codes; "
        f"{others} other answers)"
    )
    durable = "all" if clicks == redirects else f"{clicks:,} of {redirects:,}"
    print(f"links redirects: clicks counted in the database: {durable}")
    # The machine is shared (load generator, PostgreSQL, whatever else
    # runs): what one core of the daemon serves says more than the wall.
    print(
        f"links redirects: the daemon used {daemon_cpu_s:.1f} CPU-s = "
        f"{redirects / max(daemon_cpu_s, 1e-9):,.0f} redirects per daemon CPU-second; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


def bench_browser() -> None:
    out = ROOT / "bench" / "out" / "links"
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/e2e/test_optout_browser.py",
        ],
        cwd=ROOT,
        env={**os.environ, "CARRIERD_SCREENSHOT_DIR": str(out)},
        capture_output=True,
        text=True,
    )
    last = (result.stdout.strip().splitlines() or ["no output"])[-1]
    shots = sorted(p.name for p in Path(out).glob("*.png"))
    print(f"links browser: {last}; screenshots in {out.relative_to(ROOT)}: {', '.join(shots)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("intake", "redirects", "browser"))
    parser.add_argument("--texts", choices=("both", "none", "links", "as-sent"), default="both")
    args = parser.parse_args()
    if args.only in (None, "redirects"):
        bench_redirects(args)
    if args.only in (None, "intake"):
        bench_intake(args)
    if args.only in (None, "browser"):
        bench_browser()


if __name__ == "__main__":
    main()
