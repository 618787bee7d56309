"""The daemon started as systemd starts it: READY=1 on NOTIFY_SOCKET,
SIGHUP reloads without dropping binds, SIGTERM drains and leaves nothing
half-sent; /metrics agrees with the database during traffic."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.e2e.daemon_process import DaemonProcess, free_port


def config_text(ports: dict[str, int], rate_per_hour: int) -> str:
    lines = [
        "[engine]",
        "lease_s = 5",
        "",
        "[accounts.acme]",
        'tokens = ["acme-token"]',
        f"rate_per_hour = {rate_per_hour}",
        "burst = 50",
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
            "",
        ]
    return "\n".join(lines)


def read_notifications(sock: socket.socket) -> list[str]:
    seen: list[str] = []
    while True:
        try:
            seen += sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            return seen


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_systemd_lifecycle_and_metrics(dsn: str, db: Database, tmp_path: Path) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.05,
                    "receipt_delay_max_s": 0.3,
                },
                "carriers": {c: {"port": 0} for c in ("docomo", "au", "softbank", "rakuten")},
            }
        )
    )
    ports = await sim.start()
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(config_text(ports, 40_000))
    daemon = DaemonProcess(
        config_path,
        dsn,
        free_port(),
        tmp_path / "daemon.log",
        extra_env={"NOTIFY_SOCKET": str(notify_path)},
    )
    try:
        await daemon.start()
        await asyncio.sleep(0.2)
        assert "READY=1" in read_notifications(notify)
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer acme-token"}
            items = [
                {"to": f"090{20_000_000 + i:08d}", "sms": {"text": f"通知 {i}"}}
                for i in range(2_000)
            ]
            async with http.post(
                f"{daemon.base}/v1/messages", json={"messages": items}, headers=headers
            ) as resp:
                assert resp.status == 202
            # The daemon wires the cancel to its engine: a scheduled message
            # is cancelled through the lifecycle writer.
            send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            later = {"to": "09011112222", "sms": {"text": "予約"}, "send_at": send_at}
            async with http.post(
                f"{daemon.base}/v1/messages", json={"messages": [later]}, headers=headers
            ) as resp:
                [scheduled] = (await resp.json())["accepted"]
            async with http.post(
                f"{daemon.base}/v1/messages/{scheduled['id']}/cancel", headers=headers
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "cancelled"
            async with http.get(f"{daemon.base}/v1/openapi.json") as resp:
                assert resp.status == 200
                assert (await resp.json())["openapi"].startswith("3.1")
            async with http.get(f"{daemon.base}/metrics") as resp:
                exposition = await resp.text()
            count = (await db.call_raw("SELECT count(*) AS n FROM messages"))[0]["n"]
            assert metric_sum(exposition, "carrierd_messages_accepted_total") == count
            # Reload with a new rate: binds stay up, the daemon keeps serving.
            config_path.write_text(config_text(ports, 20_000))
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            seen = read_notifications(notify)
            assert "RELOADING=1" in seen and "READY=1" in seen
            async with http.get(f"{daemon.base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{daemon.base}/metrics") as resp:
                exposition = await resp.text()
            submitted = (await db.call_raw("SELECT count(*) AS n FROM parts"))[0]["n"]
            assert metric_sum(exposition, "carrierd_parts_submitted_total") <= submitted
        assert await daemon.terminate() == 0
        assert "STOPPING=1" in read_notifications(notify)
        half_sent = await db.call_raw(
            "SELECT count(*) AS n FROM messages WHERE state IN ('dispatching', 'sending')"
        )
        assert half_sent[0]["n"] == 0
        pending_parts = await db.call_raw("SELECT count(*) AS n FROM parts WHERE state = 'pending'")
        assert pending_parts[0]["n"] == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        notify.close()
        await sim.stop()
