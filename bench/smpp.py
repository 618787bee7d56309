"""SMPP throughput: submit_sm/s and receipts/s through one bind and through a pool.

The SMSC runs in its own process (the in-test stub, tests/integration/smsc_stub.py,
on uvloop): it answers every submit_sm at once and sends a delivery receipt right
after each answer, so the figures are what our side sustains, not an SMSC's pace.
``--sim`` uses the simulator (src/carrierd/sim/smsc.py) instead, one carrier owning
every number, receipts without delay; ``--smsc host:port`` any other SMSC that
accepts system_id/password bench/bench.

Runs, each on uvloop with ``--messages`` submits (after a warm-up):

- one bind, window 64, ``SmppSession.submit``
- a pool of four binds, window 64 each, ``SmppPool.submit``
- the SMS gateway on that pool of four: one-part UCS-2 ``SmsRequest`` in, PDUs built,
  ``PartOutcome`` out, receipts parsed into ``Receipt`` events

submit_sm/s counts from the first submit to the last submit_sm_resp; receipts/s from
the first submit to the last receipt handed to us.

    python -m bench.smpp [--messages 20000] [--concurrency 512] [--sim | --smsc host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop

from carrierd.channels.sms import SmppGateway
from carrierd.channels.types import InboundSms, Receipt, SmsRequest
from carrierd.config import CarrierConfig
from carrierd.domain.clock import SystemClock
from carrierd.smpp.pdu import DataSm, DeliverSm, SubmitSm
from carrierd.smpp.pool import SmppPool
from carrierd.smpp.session import SmppSession, SubmitResult

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 500


@dataclass
class Figures:
    name: str
    messages: int
    accepted: int
    submit_per_s: float
    receipts: int
    receipts_per_s: float


# The simulator (src/carrierd/sim/smsc.py) as one carrier that owns every number and
# sends receipts without delay. On the standard asyncio loop: its protocol asserts
# asyncio.Transport, which uvloop's transports are not.
SIM_SCRIPT = """
import asyncio
from carrierd.sim.smsc import CarrierSimConfig, SmscSimConfig, run_smsc_sim
carrier = CarrierSimConfig(
    accounts={"bench": "bench"},
    subscriber_prefixes=("0",),
    receipt_delay_min_s=0.0,
    receipt_delay_max_s=0.0,
)
asyncio.run(run_smsc_sim(
    SmscSimConfig(carriers={"docomo": carrier}),
    on_listening=lambda ports: print(f"PORT {ports['docomo']}", flush=True),
))
"""


@contextmanager
def smsc_process(command: list[str]) -> Iterator[tuple[str, int]]:
    """Start an SMSC that prints "PORT <n>" once it listens; stop it afterwards."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:  # log lines may come first
            if line.startswith("PORT "):
                break
        else:
            raise RuntimeError("SMSC exited before it listened")
        yield "127.0.0.1", int(line.split()[1])
    finally:
        process.terminate()
        process.wait(10)


def carrier(host: str, port: int, binds: int) -> CarrierConfig:
    return CarrierConfig(
        name="docomo",
        host=host,
        port=port,
        binds=binds,
        system_id="bench",
        password="bench",
        window=64,
        response_timeout_s=10.0,
    )


def submit_sm(number: int) -> SubmitSm:
    return SubmitSm(
        sequence_number=0,
        source_addr_ton=2,
        source_addr_npi=1,
        source_addr="0120123456",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr=f"8190{number % 90_000_000 + 10_000_000:08d}",
        registered_delivery=1,
        data_coding=8,
        short_message="ご予約ありがとうございます。明日10時にお待ちしております。".encode(
            "utf-16-be"
        ),
    )


class ReceiptCounter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()
        self.last_at_s = 0.0

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target and not self.done.is_set():
            self.last_at_s = time.perf_counter()
            self.done.set()

    def on_deliver(self, pdu: DeliverSm | DataSm, bind_id: str) -> None:
        self.hit()

    def receipt(self, receipt: Receipt) -> None:
        self.hit()

    def inbound(self, message: InboundSms) -> None:
        pass

    def expect(self, more: int) -> None:
        self.target = self.count + more
        self.done.clear()


async def drive(
    submit: Callable[[int], Awaitable[int]],
    receipts: ReceiptCounter,
    messages: int,
    concurrency: int,
) -> tuple[int, float, float]:
    """Run ``messages`` submits with ``concurrency`` workers; (accepted, submit s, receipt s)."""
    receipts.expect(messages)
    numbers = iter(range(messages))
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        for number in numbers:
            outcome = await submit(number)  # not `accepted += await ...`: that loses updates
            accepted += outcome

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    submitted_s = time.perf_counter() - started
    try:
        async with asyncio.timeout(30.0):
            await receipts.done.wait()
        receipts_s = receipts.last_at_s - started
    except TimeoutError:
        receipts_s = float("nan")
    return accepted, submitted_s, receipts_s


def counted(result: SubmitResult) -> int:
    return 1 if result.outcome == "accepted" else 0


async def bench_session(host: str, port: int, messages: int, concurrency: int) -> Figures:
    receipts = ReceiptCounter()
    session = SmppSession(carrier(host, port, 1), "bench-1", receipts.on_deliver)
    await session.start()
    try:
        if session.health != "bound":
            raise RuntimeError(f"could not bind to {host}:{port}")

        async def submit(number: int) -> int:
            return counted(await session.submit(submit_sm(number)))

        await drive(submit, receipts, WARM_UP, concurrency)
        accepted, submit_s, receipt_s = await drive(submit, receipts, messages, concurrency)
    finally:
        await session.stop(drain_timeout_s=5.0)
    return _figures("one bind, window 64", messages, accepted, submit_s, receipts, receipt_s)


async def bench_pool(host: str, port: int, messages: int, concurrency: int) -> Figures:
    receipts = ReceiptCounter()
    pool = SmppPool(carrier(host, port, 4), receipts.on_deliver)
    await pool.start()
    try:
        if pool.health().bound_count != 4:
            raise RuntimeError(f"could not bind four times to {host}:{port}")

        async def submit(number: int) -> int:
            return counted(await pool.submit(submit_sm(number)))

        await drive(submit, receipts, WARM_UP, concurrency)
        accepted, submit_s, receipt_s = await drive(submit, receipts, messages, concurrency)
    finally:
        await pool.stop(drain_timeout_s=5.0)
    return _figures("pool of 4 binds, window 64", messages, accepted, submit_s, receipts, receipt_s)


async def bench_gateway(host: str, port: int, messages: int, concurrency: int) -> Figures:
    receipts = ReceiptCounter()
    gateway = SmppGateway({"docomo": carrier(host, port, 4)}, receipts, SystemClock())
    await gateway.start()
    expires_at = datetime.now(UTC) + timedelta(hours=72)
    message_ids = itertools.count(1)
    try:

        async def submit(number: int) -> int:
            request = SmsRequest(
                message_id=next(message_ids),
                attempt=1,
                account_id="bench",
                msisdn=f"+8190{number % 90_000_000 + 10_000_000:08d}",
                source_addr="0120123456",
                encoding="ucs2",
                parts=("ご予約ありがとうございます。明日10時にお待ちしております。",),
                expires_at=expires_at,
            )
            [outcome] = await gateway.submit("docomo", request)
            return 1 if outcome.result == "accepted" else 0

        await drive(submit, receipts, WARM_UP, concurrency)
        accepted, submit_s, receipt_s = await drive(submit, receipts, messages, concurrency)
    finally:
        await gateway.stop(drain_timeout_s=5.0)
    return _figures("SMS gateway, pool of 4", messages, accepted, submit_s, receipts, receipt_s)


def _figures(
    name: str,
    messages: int,
    accepted: int,
    submit_s: float,
    receipts: ReceiptCounter,
    receipt_s: float,
) -> Figures:
    received = min(messages, receipts.count - WARM_UP)
    return Figures(name, messages, accepted, messages / submit_s, received, messages / receipt_s)


async def run_all(host: str, port: int, messages: int, concurrency: int) -> list[Figures]:
    return [
        await bench_session(host, port, messages, concurrency),
        await bench_pool(host, port, messages, concurrency),
        await bench_gateway(host, port, messages, concurrency),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=512)
    target_group = parser.add_mutually_exclusive_group()
    target_group.add_argument("--sim", action="store_true", help="use carrierd.sim.smsc")
    target_group.add_argument("--smsc", help="host:port of an SMSC to use instead of the stub")
    args = parser.parse_args()

    def run(host: str, port: int) -> list[Figures]:
        return uvloop.run(run_all(host, port, args.messages, args.concurrency))

    if args.smsc:
        host, _, port_text = args.smsc.rpartition(":")
        results = run(host, int(port_text))
        target = args.smsc
    elif args.sim:
        with smsc_process([sys.executable, "-c", SIM_SCRIPT]) as (host, port):
            results = run(host, port)
        target = "carrierd.sim.smsc in its own process (asyncio), receipts without delay"
    else:
        stub = [sys.executable, "-m", "tests.integration.smsc_stub", "--receipts", "tlv"]
        with smsc_process(stub) as (host, port):
            results = run(host, port)
        target = "the test stub SMSC in its own process (uvloop), receipts with TLVs"
    print(f"SMPP: {args.messages} messages per run, {args.concurrency} concurrent submitters")
    print(f"SMSC: {target}")
    for figures in results:
        print(
            f"  {figures.name:<28} {figures.submit_per_s:>9,.0f} submit_sm/s"
            f"  {figures.receipts_per_s:>9,.0f} receipts/s"
            f"  (accepted {figures.accepted}/{figures.messages},"
            f" receipts {figures.receipts}/{figures.messages})"
        )
    failed = any(f.accepted != f.messages or f.receipts != f.messages for f in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
