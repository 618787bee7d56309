"""The reassigned-number check end to end: the daemon in its own process,
`carrierd sim reassign` in another (loading its data file), the SMSC
simulator on real sockets. A number with a history is never submitted (the
SMSC sees nothing for it), the others are delivered, and /v1/billing and
/metrics count the checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from bench.harness import reassign_sim_process

from carrierd.domain.billing import billing_month
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.e2e.daemon_process import DaemonProcess, free_port

REASSIGNED = "+819055550001"
CLEAN = "+819055550002"
UNCHECKED = "+819055550003"
WAIT_S = 60.0  # an upper bound for real-time work, not a speed claim


def daemon_config(ports: dict[str, int], reassign_port: int) -> str:
    lines = ["[engine]", "pacing = false", ""]
    lines += [
        "[accounts.acme]",
        'tokens = ["acme-token"]',
        'senders = { docomo = "0120111111", au = "0120111111", '
        'softbank = "249200", rakuten = "0120111111" }',
        "",
        "[reassign]",
        f'url = "http://127.0.0.1:{reassign_port}"',
        'token = "e2e-reassign-token"',
        "timeout_s = 2",
        "",
    ]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'system_id = "demo"',
            'password = "demo"',
            "",
        ]
    return "\n".join(lines)


async def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(int(WAIT_S * 20)):
        assert proc.poll() is None, "the simulator exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("the simulator did not listen")


async def test_a_reassigned_number_is_never_submitted(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    data = tmp_path / "reassign.json"
    data.write_text(
        json.dumps(
            {
                "data_month": "2026-10",
                "numbers": {REASSIGNED: ["2025-06", "2025-07", "2025-08"], CLEAN: []},
            }
        )
    )
    reassign_port = free_port()
    sim_proc = reassign_sim_process(
        reassign_port, "e2e-reassign-token", latency_ms=20, data_path=data
    )
    smsc = SmscSimulator(
        sim_config_from_mapping(
            {
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.05,
                    "receipt_delay_max_s": 0.2,
                },
                "carriers": {c: {"port": 0} for c in ("docomo", "au", "softbank", "rakuten")},
            }
        )
    )
    ports = await smsc.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports, reassign_port))
    daemon = DaemonProcess(config_path, dsn, free_port(), tmp_path / "daemon.log")
    try:
        await wait_for_port(reassign_port, sim_proc)
        await daemon.start()
        headers = {"Authorization": "Bearer acme-token"}
        started = datetime.now(UTC)
        check = {"base_date": "2025-01-01"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{daemon.base}/v1/messages",
                json={
                    "messages": [
                        {"to": REASSIGNED, "sms": {"text": "一"}, "reassigned_check": check},
                        {"to": CLEAN, "sms": {"text": "二"}, "reassigned_check": check},
                        {"to": UNCHECKED, "sms": {"text": "三"}},
                    ]
                },
                headers=headers,
            ) as response:
                assert response.status == 202, await response.text()
                ids = [a["id"] for a in (await response.json())["accepted"]]
            states: dict[str, str] = {}
            for _ in range(int(WAIT_S * 10)):
                states = {
                    str(r["id"]): r["state"]
                    for r in await db.call_raw("SELECT id, state FROM messages")
                }
                if all(states.get(i) in ("delivered", "skipped", "failed") for i in ids):
                    break
                await asyncio.sleep(0.1)
            assert [states[i] for i in ids] == ["skipped", "delivered", "delivered"], (
                daemon.log_path.read_text()[-2000:]
            )
            # The checks were billed in the JST month they ran in.
            month = (await db.call_raw("SELECT month FROM billing_counts"))[0]["month"]
            assert month in (billing_month(started), billing_month(datetime.now(UTC)))
            async with http.get(f"{daemon.base}/v1/messages/{ids[0]}", headers=headers) as r:
                status = await r.json()
            assert status["reason"]["code"] == "reassigned_number"
            async with http.get(
                f"{daemon.base}/v1/billing", params={"month": month}, headers=headers
            ) as r:
                billing = await r.json()
            async with http.get(f"{daemon.base}/metrics") as r:
                metrics = await r.text()
        assert billing["reassigned_checks"] == 2
        assert 'carrierd_reassign_verdicts_total{verdict="history"} 1.0' in metrics
        assert 'carrierd_reassign_lookup_seconds_count{outcome="ok"}' in metrics
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        sim_proc.terminate()
        sim_proc.wait(10)
        await smsc.stop()
    # The SMSC never saw the reassigned number; it saw the others once.
    destinations = [destination for destination, _ in smsc.counters.accepted_text_parts]
    assert REASSIGNED not in destinations
    assert sorted(destinations) == sorted([CLEAN, UNCHECKED])
