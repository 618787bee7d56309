"""A throttling SMSC: does the daemon find its pace, or hammer it?

The SMSC simulator (in this process, on its own thread, so that its counters
can be read) accepts `--accept-per-s` submits a second on each bind and
answers the rest ESME_RTHROTTLED. The daemon (its own process) has one
carrier with `--binds` binds, each configured for up to `--ceiling-per-s`
submits a second, far above what the SMSC takes; pacing is off, so nothing
but the binds' own rate holds the messages back. `--messages` are queued at
once, more than the SMSC can take in `--duration-s`: the binds stay busy
all along.

Prints, from the SMSC's side: submits received, throttled answers, accepted
submits a second over the run after `--warmup-s` against the SMSC's limit;
from the database: history events per message (`postponed` above all); and
the daemon's send rate gauge per bind at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import asyncpg

from bench.harness import daemon_process, free_port, fresh_database
from carrierd.sim.smsc import CarrierSimCounters, SmscSimulator, sim_config_from_mapping

CARRIER = "docomo"
PREFIX = "090"


def daemon_toml(port: int, binds: int, window: int, ceiling_per_s: float) -> str:
    return "\n".join(
        [
            "[engine]",
            "pacing = false",
            "[accounts.bench]",
            'tokens = ["bench-token"]',
            'senders = { docomo = "0120111111" }',
            f"[carriers.{CARRIER}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'system_id = "bench"',
            'password = "bench"',
            f"binds = {binds}",
            f"window = {window}",
            f"submit_rate_per_s = {ceiling_per_s}",
            f'number_prefixes = ["{PREFIX}"]',
        ]
    )


@dataclass
class SimThread:
    """The simulator on a loop of its own: the daemon's start-up blocks this one."""

    simulator: SmscSimulator
    loop: asyncio.AbstractEventLoop
    port: int

    @property
    def counters(self) -> CarrierSimCounters:
        return self.simulator.counters.carriers[CARRIER]


@contextlib.contextmanager
def simulator_thread(accept_per_s: float) -> Iterator[SimThread]:
    simulator = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 5,
                "defaults": {
                    "accounts": {"bench": "bench"},
                    "receipt_delay_min_s": 0.1,
                    "receipt_delay_max_s": 0.5,
                    "throttle_accept_per_s": accept_per_s,
                },
                "carriers": {CARRIER: {"port": 0, "subscriber_prefixes": [PREFIX]}},
            }
        )
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    ports: dict[str, int] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        ports.update(loop.run_until_complete(simulator.start()))
        started.set()
        loop.run_forever()
        loop.run_until_complete(simulator.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="smsc-sim", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield SimThread(simulator, loop, ports[CARRIER])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def snapshot(counters: CarrierSimCounters) -> tuple[int, int, int]:
    return counters.submits, counters.throttled, counters.accepted


async def send_rate_gauges(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("carrierd_bind_send_rate_per_s{"):
            labels, value = line.rsplit(" ", 1)
            gauges[labels.split('bind="', 1)[1].split('"', 1)[0]] = float(value)
    return gauges


async def run(dsn: str, http_port: int, sim: SimThread, args: argparse.Namespace) -> None:
    headers = {"Authorization": "Bearer bench-token"}
    items = [
        {"to": f"{PREFIX}{20_000_000 + n:08d}", "sms": {"text": f"ご予約番号 {n}"}}
        for n in range(args.messages)
    ]
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.post(
            f"http://127.0.0.1:{http_port}/v1/messages", json={"messages": items}, headers=headers
        ) as resp:
            assert resp.status == 202, await resp.text()
        await asyncio.sleep(max(0.0, started + args.warmup_s - time.perf_counter()))
        at_warm = snapshot(sim.counters)
        warm_at = time.perf_counter()
        await asyncio.sleep(max(0.0, started + args.duration_s - time.perf_counter()))
        at_end = snapshot(sim.counters)
        end_at = time.perf_counter()
        gauges = await send_rate_gauges(http, http_port)
    conn = await asyncpg.connect(dsn)
    events = await conn.fetch(
        "SELECT kind, count(*) AS n, count(DISTINCT message_id) AS messages "
        "FROM message_events GROUP BY kind ORDER BY min(id)"
    )
    most = await conn.fetchrow(
        "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM message_events "
        "WHERE kind = 'postponed' GROUP BY message_id) x"
    )
    states = await conn.fetch("SELECT state, count(*) AS n FROM messages GROUP BY state")
    await conn.close()

    limit_per_s = args.accept_per_s * args.binds
    submits, throttled, accepted = at_end
    window_s = end_at - warm_at
    accepted_per_s = (at_end[2] - at_warm[2]) / window_s
    print(
        f"throttle: SMSC accepts {args.accept_per_s:g}/s per bind x {args.binds} binds "
        f"= {limit_per_s:g}/s; binds of window {args.window}, "
        + (f"up to {args.ceiling_per_s:g}/s each; " if args.ceiling_per_s else "no rate limit; ")
        + f"{args.messages} messages queued at once, {args.duration_s:g} s run"
    )
    print(
        f"throttle: submits sent {submits}, throttled answers {throttled}, accepted {accepted} "
        f"({throttled / max(accepted, 1):.2f} throttled per accepted)"
    )
    print(
        f"throttle: accepted {accepted_per_s:.2f}/s from {args.warmup_s:g} s to the end "
        f"= {accepted_per_s / limit_per_s:.0%} of the SMSC's limit; "
        f"throttled {(at_end[1] - at_warm[1]) / window_s:.2f}/s"
    )
    print(
        "throttle: history events per message: "
        + ", ".join(f"{r['kind']} {r['n'] / args.messages:.2f}" for r in events)
        + f"; most postponed events on one message: {most['n'] or 0}"
    )
    print("throttle: states " + ", ".join(f"{r['state']}={r['n']}" for r in states))
    print(
        "throttle: send rate gauge at the end: "
        + (", ".join(f"{bind} {rate:.2f}/s" for bind, rate in sorted(gauges.items())) or "none")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--binds", type=int, default=2)
    parser.add_argument("--accept-per-s", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument(
        "--ceiling-per-s",
        type=float,
        default=0.0,
        help="the binds' submit_rate_per_s (0, the default configuration: no limit)",
    )
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=15.0)
    args = parser.parse_args()
    with simulator_thread(args.accept_per_s) as sim, fresh_database("throttle") as dsn:
        http_port = free_port()
        with daemon_process(
            daemon_toml(sim.port, args.binds, args.window, args.ceiling_per_s), dsn, http_port
        ):
            asyncio.run(run(dsn, http_port, sim, args))


if __name__ == "__main__":
    main()
