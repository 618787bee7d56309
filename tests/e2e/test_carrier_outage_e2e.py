"""The whole daemon with docomo's SMSC unreachable (nothing listens on its
port) and the other three simulated: it is ready for intake and says docomo
is down; a new au subscriber, docomo first in the order, is delivered by au
at once; a docomo subscriber, refused by the others, waits for docomo with
one history event however long it waits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.e2e.daemon_process import DaemonProcess, free_port

AU_NUMBER = "080-1111-0001"
DOCOMO_NUMBER = "090-1111-0002"
WAIT_S = 30.0  # an upper bound for things to happen, not a speed claim
AUTH = {"Authorization": "Bearer acme-token"}


def daemon_config(ports: dict[str, int]) -> str:
    lines = [
        "[engine]",
        "pacing = false",
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
            "reconnect_max_backoff_s = 1",
            "",
        ]
    return "\n".join(lines)


async def message(http: aiohttp.ClientSession, base: str, message_id: str) -> Any:
    async with http.get(f"{base}/v1/messages/{message_id}", headers=AUTH) as r:
        assert r.status == 200
        return await r.json()


async def until(what: str, check: Any) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        found = await check()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.1)


async def test_docomo_unreachable_holds_back_only_docomo_subscribers(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "defaults": {"accounts": {"demo": "demo"}},
                "carriers": {
                    "docomo": {"port": 0, "subscriber_prefixes": ["090"]},
                    "au": {"port": 0, "subscriber_prefixes": ["080"]},
                    "softbank": {"port": 0, "subscriber_prefixes": ["070"]},
                    "rakuten": {"port": 0, "subscriber_prefixes": ["060"]},
                },
            }
        )
    )
    ports = await sim.start()
    # docomo's SMSC is away: its port has nobody listening.
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config({**ports, "docomo": free_port()}))
    daemon = DaemonProcess(config_path, dsn, free_port(), tmp_path / "daemon.log")
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> Any:
                async with http.get(f"{daemon.base}/readyz") as r:
                    body = await r.json()
                    return body if r.status == 200 else None

            body = await until("ready", ready)
            carriers = body["checks"]["carriers"]
            assert carriers["docomo"]["status"] == "down"
            assert all(carriers[c]["status"] == "up" for c in ("au", "softbank", "rakuten"))

            async with http.post(
                f"{daemon.base}/v1/messages",
                json={
                    "messages": [
                        {"to": AU_NUMBER, "sms": {"text": "au"}},
                        {"to": DOCOMO_NUMBER, "sms": {"text": "docomo"}},
                    ]
                },
                headers=AUTH,
            ) as r:
                assert r.status == 202
                on_au, on_docomo = (a["id"] for a in (await r.json())["accepted"])

            async def delivered() -> Any:
                status = await message(http, daemon.base, on_au)
                return status if status["state"] == "delivered" else None

            status = await until("delivered on au", delivered)
            assert status["carrier"] == "au"
            [sending] = [e for e in status["history"] if e["event"] == "sending"]
            assert sending["detail"]["carriers_down"] == ["docomo"]

            async def waiting() -> Any:
                status = await message(http, daemon.base, on_docomo)
                kinds = [e["event"] for e in status["history"]]
                return status if "postponed" in kinds else None

            await until("waiting for docomo", waiting)
            await asyncio.sleep(3.0)  # three more claims of it, at least
            status = await message(http, daemon.base, on_docomo)
            assert status["state"] == "queued"
            kinds = [e["event"] for e in status["history"]]
            assert kinds.count("postponed") == 1 and "wait_ended" not in kinds
            assert kinds.count("rerouted") == 3
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()
