"""The whole daemon through PostgreSQL restarts and an outage, mid-traffic.

A cluster of this module's own is restarted `-m fast`, then `-m immediate`,
then stopped for longer than a lease while messages keep coming and
receipts keep arriving. The daemon must stay up the whole time and resume
by itself; intake answers 503 with Retry-After while the database is away;
/readyz names the database and recovers; deliver_sm is answered with a
transient error until its receipt is durable. In the end every accepted
message is final (delivered), none was submitted twice, every receipt was
acknowledged exactly when it was stored, and billing equals the delivered
parts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import migrate
from tests.e2e.daemon_process import DaemonProcess, free_port
from tests.throwaway_pg import ThrowawayCluster, server_bindir

ROOT = Path(__file__).resolve().parents[2]
CARRIERS = ("docomo", "au", "softbank", "rakuten")
FINAL = ("delivered", "failed", "expired", "cancelled", "skipped", "rejected", "unknown")
BATCH = 20
LEASE_S = 4
# Longer than a lease and than the daemon's longest backoff between tries.
OUTAGE_S = 7.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    bindir = server_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql")
    cluster = ThrowawayCluster(bindir)
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()


def daemon_config(ports: dict[str, int]) -> str:
    lines = [
        "[engine]",
        "pacing = false",
        f"lease_s = {LEASE_S}",
        "claim_batch = 200",
        "",
        "[accounts.acme]",
        'tokens = ["acme-token"]',
        'senders = { docomo = "0120111111", au = "0120111111", '
        'softbank = "249200", rakuten = "0120111111" }',
        "",
    ]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'system_id = "demo"',
            'password = "demo"',
            "binds = 1",
            "window = 100",
            *(['number_prefixes = ["090"]'] if carrier == "docomo" else []),
            "",
        ]
    return "\n".join(lines)


async def query(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


class Producer:
    """An upstream application: posts batches with client_refs and, like a
    well-behaved client, posts a refused batch again after Retry-After."""

    def __init__(self, base: str) -> None:
        self._base = base
        self.accepted_refs: set[str] = set()
        self.statuses: list[int] = []
        self.unavailable: list[tuple[dict[str, str], Any]] = []
        self._next = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while not self._stop.is_set():
                items = []
                for _ in range(BATCH):
                    n = self._next
                    self._next += 1
                    items.append(
                        {
                            "to": f"090{20_000_000 + n:08d}",
                            "sms": {"text": f"ご予約 {n} を承りました"},
                            "client_ref": f"ref-{n}",
                        }
                    )
                await self._post_until_accepted(http, items)
                await asyncio.sleep(0.1)

    async def _post_until_accepted(
        self, http: aiohttp.ClientSession, items: list[dict[str, Any]]
    ) -> None:
        while True:
            try:
                async with http.post(
                    f"{self._base}/v1/messages",
                    json={"messages": items},
                    headers={"Authorization": "Bearer acme-token"},
                ) as r:
                    self.statuses.append(r.status)
                    body = await r.json()
                    if r.status == 202:
                        assert len(body["accepted"]) == len(items), body
                        self.accepted_refs.update(i["client_ref"] for i in items)
                        return
                    assert r.status == 503, (r.status, body)
                    self.unavailable.append((dict(r.headers), body))
                    retry_after_s = float(r.headers["Retry-After"])
            except aiohttp.ClientConnectionError:
                # The answer was lost: the same client_refs make a retry safe.
                retry_after_s = 0.2
            # Capped: the test need not wait the whole advice.
            await asyncio.sleep(min(retry_after_s, 0.3))


@contextlib.asynccontextmanager
async def running_daemon(
    cluster: ThrowawayCluster, tmp_path: Path, sim: SmscSimulator
) -> AsyncIterator[DaemonProcess]:
    ports = await sim.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports))
    daemon = DaemonProcess(config_path, cluster.dsn, free_port(), tmp_path / "daemon.log")
    try:
        await daemon.start()
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as r:
        return r.status, await r.json()


async def wait_until_ready(http: aiohttp.ClientSession, daemon: DaemonProcess) -> Any:
    for _ in range(300):
        status, body = await get_json(http, f"{daemon.base}/readyz")
        if status == 200:
            return body
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon_log(daemon)
        await asyncio.sleep(0.1)
    raise AssertionError(f"never ready again: {body}")


def daemon_log(daemon: DaemonProcess) -> str:
    return daemon.log_path.read_text()[-3000:]


async def run_migrate(dsn: str, wait_s: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carrierd",
        "migrate",
        "--config",
        str(ROOT / "conf/carrierd.toml"),
        "--wait-s",
        str(wait_s),
        env={**os.environ, "CARRIERD_DSN": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_migrate_waits_for_the_database(cluster: ThrowawayCluster) -> None:
    """`carrierd migrate --wait-s` started before the server: it waits, then
    migrates; with too short a wait it says why it gives up."""
    if cluster.is_running():
        await asyncio.to_thread(cluster.stop, "fast")
    impatient = await run_migrate(cluster.dsn, 0.3)
    output, _ = await asyncio.wait_for(impatient.communicate(), 60)
    assert impatient.returncode == 1
    assert b"database unreachable after 0.3 s" in output

    migrate_cli = await run_migrate(cluster.dsn, 60)
    await asyncio.sleep(1.0)
    assert migrate_cli.returncode is None  # still waiting, not failed
    await asyncio.to_thread(cluster.start)
    output, _ = await asyncio.wait_for(migrate_cli.communicate(), 60)
    assert migrate_cli.returncode == 0, output.decode()
    assert b"migrations applied" in output
    versions = await query(cluster.dsn, "SELECT count(*) AS n FROM schema_migrations")
    assert versions[0]["n"] > 0


async def test_daemon_waits_for_the_database_at_startup(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    """Started while the database is down, the daemon waits (telling systemd
    so, and extending its start timeout) instead of exiting."""
    if not cluster.is_running():
        await asyncio.to_thread(cluster.start)
    await migrate(cluster.dsn)
    await asyncio.to_thread(cluster.stop, "fast")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    sim = SmscSimulator(sim_config_from_mapping({"carriers": {c: {"port": 0} for c in CARRIERS}}))
    ports = await sim.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports))
    daemon = DaemonProcess(
        config_path,
        cluster.dsn,
        free_port(),
        tmp_path / "daemon.log",
        extra_env={"NOTIFY_SOCKET": str(notify_path)},
    )

    async def database_back_later() -> list[str]:
        # Back once the daemon says it waits (a loaded machine may take a
        # while to start it; the bound is not a speed claim).
        seen: list[str] = []
        async with asyncio.timeout(60.0):
            while not any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in seen):
                await asyncio.sleep(0.1)
                seen += read_notifications(notify)
        await asyncio.sleep(0.5)  # a little longer: it keeps waiting, not exiting
        seen += read_notifications(notify)
        await asyncio.to_thread(cluster.start)
        return seen

    try:
        _, seen_while_down = await asyncio.gather(daemon.start(), database_back_later())
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in seen_while_down)
        assert any(
            line.startswith("STATUS=waiting for the database") for line in seen_while_down
        ), seen_while_down
        assert "READY=1" not in seen_while_down
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, daemon)
        assert "READY=1" in read_notifications(notify)
        assert await daemon.terminate() == 0
    finally:
        notify.close()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()


def read_notifications(sock: socket.socket) -> list[str]:
    seen: list[str] = []
    while True:
        try:
            seen += sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            return seen


async def test_daemon_rides_out_restarts_and_an_outage(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.05,
                    "receipt_delay_max_s": 0.4,
                    # Slow answers: submits are in flight whenever the
                    # database goes away, so their responses must be held.
                    "response_delay_min_s": 0.1,
                    "response_delay_max_s": 0.5,
                    "deliver_retry_delay_s": 0.3,
                    # Receipts refused during the outage are delivered again
                    # until they are stored: none may be given up.
                    "deliver_max_attempts": 1000,
                },
                "carriers": {
                    **{c: {"port": 0} for c in CARRIERS},
                    "docomo": {"port": 0, "subscriber_prefixes": ["090"]},
                },
            }
        )
    )
    dsn = cluster.dsn
    if not cluster.is_running():
        await asyncio.to_thread(cluster.start)
    await migrate(dsn)
    async with running_daemon(cluster, tmp_path, sim) as daemon, aiohttp.ClientSession() as http:
        producer = Producer(daemon.base)
        producing = asyncio.ensure_future(producer.run())
        try:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.restart, "fast")
            await wait_until_ready(http, daemon)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.restart, "immediate")
            await wait_until_ready(http, daemon)
            await asyncio.sleep(1.5)

            await asyncio.to_thread(cluster.stop, "fast")
            await asyncio.sleep(1.0)
            acknowledged_at_start = sum(
                c.deliveries_acknowledged for c in sim.counters.carriers.values()
            )
            nacked_at_start = sum(c.deliveries_nacked for c in sim.counters.carriers.values())

            status, ready = await get_json(http, f"{daemon.base}/readyz")
            assert status == 503
            assert ready["ready"] is False
            assert ready["checks"]["database"].startswith("unreachable: "), ready
            status, alive = await get_json(http, f"{daemon.base}/healthz")
            assert status == 200, alive
            async with http.post(
                f"{daemon.base}/v1/messages",
                json={"messages": [{"to": "09011112222", "sms": {"text": "x"}}]},
                headers={"Authorization": "Bearer acme-token"},
            ) as r:
                assert r.status == 503
                assert int(r.headers["Retry-After"]) >= 1
                assert r.content_type == "application/json"
                assert (await r.json())["error"]["code"] == "database_unavailable"
            status, body = await get_json(
                http, f"{daemon.base}/v1/messages/1", headers={"Authorization": "Bearer acme-token"}
            )
            assert status == 503, body

            await asyncio.sleep(OUTAGE_S - 1.0)
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon_log(daemon)
            # Receipts kept coming; none was acknowledged while nothing could
            # store it, and the SMSC was told to deliver them again.
            assert (
                sum(c.deliveries_acknowledged for c in sim.counters.carriers.values())
                == acknowledged_at_start
            )
            assert (
                sum(c.deliveries_nacked for c in sim.counters.carriers.values()) > nacked_at_start
            )
            await asyncio.to_thread(cluster.start)
            ready = await wait_until_ready(http, daemon)
            assert ready["checks"]["database"] is True
            await asyncio.sleep(1.0)
        finally:
            producer.stop()
            await producing
        assert 503 in producer.statuses
        headers, body = producer.unavailable[0]
        assert "Retry-After" in headers and body["error"]["code"] == "database_unavailable"

        accepted = len(producer.accepted_refs)
        for _ in range(600):
            rows = await query(
                dsn,
                "SELECT state, count(*) AS n FROM messages"
                " WHERE client_ref IS NOT NULL GROUP BY state",
            )
            states = {r["state"]: r["n"] for r in rows}
            if sum(states.get(s, 0) for s in FINAL) == accepted and sim.pending_deliveries() == 0:
                break
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon_log(daemon)
            await asyncio.sleep(0.1)
        refs = {
            r["client_ref"]
            for r in await query(
                dsn, "SELECT client_ref FROM messages WHERE client_ref IS NOT NULL"
            )
        }
        assert refs == producer.accepted_refs
        # Every message delivered: none lost, none left 'unknown' by the outage.
        why = await query(
            dsn,
            "SELECT state, reason_code, count(*) AS n FROM messages"
            " WHERE state <> 'delivered' GROUP BY 1, 2",
        )
        assert states == {"delivered": accepted}, ([dict(r) for r in why], daemon_log(daemon))
        assert sim.pending_deliveries() == 0
        counters = sim.counters.carriers.values()
        assert sum(c.deliveries_abandoned for c in counters) == 0
        assert sim.duplicates(include_undelivered=True) == []
        billed = (
            await query(
                dsn, "SELECT coalesce(sum(units), 0) AS n FROM billing_counts WHERE channel = 'sms'"
            )
        )[0]["n"]
        delivered_parts = (
            await query(dsn, "SELECT count(*) AS n FROM parts WHERE state = 'delivered'")
        )[0]["n"]
        assert billed == delivered_parts == accepted
        assert "side_task_died" not in daemon.log_path.read_text()
        assert await daemon.terminate() == 0, daemon_log(daemon)
