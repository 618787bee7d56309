"""A 100,000-recipient send with variables, from POST to all final,
against the same messages posted as a plain batch (POST /v1/messages,
1,000 a request, the text substituted by the client).

Each run has a fresh database, a fresh daemon and the four-carrier SMSC
simulator in its own process; pacing is off. The send is one request: a
CSV upload (number, name, points) streamed to the daemon. Prints, for each
way, the time until the daemon answered the POST(s) and until every
message was final, and the send's time as a share of the batch's
(target: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import aiohttp
import asyncpg

from bench.e2e import CARRIERS, daemon_toml, final_by_metrics, sim_toml
from bench.guess import new_numbers
from bench.harness import daemon_process, free_port, fresh_database

HEADERS = {"Authorization": "Bearer bench-token"}
TEMPLATE = "{{name}}様 ご利用ありがとうございます。今月のポイントは{{points}}点です"


def text_for(i: int) -> str:
    return f"会員{i}様 ご利用ありがとうございます。今月のポイントは{i % 997}点です"


async def wait_final(http: aiohttp.ClientSession, port: int, dsn: str, total: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            if await final_by_metrics(http, port) >= total:
                done = await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE final_at IS NOT NULL"
                )
                if done >= total:
                    return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def as_batch(port: int, dsn: str, numbers: list[str], batch: int) -> tuple[float, float]:
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        sem = asyncio.Semaphore(4)

        async def post(b: int) -> None:
            items = [
                {"to": numbers[i], "sms": {"text": text_for(i)}}
                for i in range(b * batch, min(len(numbers), (b + 1) * batch))
            ]
            async with (
                sem,
                http.post(f"{base}/v1/messages", json={"messages": items}, headers=HEADERS) as r,
            ):
                assert r.status == 202, await r.text()

        await asyncio.gather(*(post(b) for b in range(-(-len(numbers) // batch))))
        accepted_s = time.perf_counter() - started
        await wait_final(http, port, dsn, len(numbers))
    return accepted_s, time.perf_counter() - started


async def as_send(port: int, dsn: str, numbers: list[str]) -> tuple[float, float]:
    base = f"http://127.0.0.1:{port}"
    lines = ["number,name,points"]
    lines += [f"{n},会員{i},{i % 997}" for i, n in enumerate(numbers)]
    csv_bytes = ("\n".join(lines) + "\n").encode()
    form = aiohttp.FormData()
    form.add_field("send", json.dumps({"sms": {"text": TEMPLATE}}), content_type="application/json")
    form.add_field("recipients", csv_bytes, filename="r.csv", content_type="text/csv")
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        async with http.post(f"{base}/v1/sends", data=form, headers=HEADERS) as r:
            assert r.status == 202, await r.text()
            answer = await r.json()
        assert answer["accepted"] == len(numbers), answer["rejections"][:3]
        accepted_s = time.perf_counter() - started
        await wait_final(http, port, dsn, len(numbers))
    return accepted_s, time.perf_counter() - started


def run_one(way: str, ports: dict[str, int], numbers: list[str]) -> tuple[float, float]:
    port = free_port()
    with (
        fresh_database(f"sends_{way}") as dsn,
        daemon_process(daemon_toml(ports, 2, 64), dsn, port, f"bench-{way}"),
    ):
        if way == "batch":
            return asyncio.run(as_batch(port, dsn, numbers, 1000))
        return asyncio.run(as_send(port, dsn, numbers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    ports = {carrier: free_port() for carrier in CARRIERS}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(sim_toml(ports))
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
        numbers = new_numbers(args.recipients, 0)
        figures = {way: run_one(way, ports, numbers) for way in ("batch", "send")}
    finally:
        sim.terminate()
        sim.wait(10)
        os.unlink(sim_config)
    n = args.recipients
    for way, (accepted_s, final_s) in figures.items():
        print(
            f"sends: {way:>5}: {n} messages accepted in {accepted_s:.1f} s, all final after "
            f"{final_s:.1f} s = {n / final_s:,.0f} messages/s"
        )
    ratio = figures["send"][1] / figures["batch"][1]
    print(f"sends: the send took {ratio:.0%} of the batch's time to all final (target <= 110%)")


if __name__ == "__main__":
    main()
