"""The whole daemon against the four-carrier simulator, killed mid-run.

20,000 messages for 3 accounts and 4 carriers, first carrier guesses wrong
for part of them, SIGKILL in the middle, restart: every message ends final,
the simulator saw no duplicate, and billing equals the parts delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.e2e.daemon_process import DaemonProcess, free_port

MESSAGES = 20_000
ACCOUNTS = ("alpha", "beta", "gamma")
FINAL = ("delivered", "failed", "expired", "cancelled", "skipped", "rejected", "unknown")


def daemon_config(ports: dict[str, int]) -> str:
    lines = ["[engine]", "pacing = false", "lease_s = 3", "claim_batch = 500", ""]
    for account in ACCOUNTS:
        lines += [
            f"[accounts.{account}]",
            f'tokens = ["{account}-token"]',
            'senders = { docomo = "0120111111", au = "0120111111", '
            'softbank = "249200", rakuten = "0120111111" }',
            "",
        ]
    # Deliberately coarse number ranges: the simulator assigns numbers by a
    # hash, so about three first guesses in four are wrong (§4 rerouting).
    prefixes = {"docomo": ["090"], "au": ["080"], "softbank": ["070"], "rakuten": ["060"]}
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'system_id = "demo"',
            'password = "demo"',
            "binds = 2",
            "window = 64",
            "receipt_timeout_s = 30",
            f"number_prefixes = {prefixes[carrier]!r}".replace("'", '"'),
            "",
        ]
    return "\n".join(lines)


def sim_config() -> dict[str, object]:
    return {
        "seed": 7,
        "defaults": {
            "accounts": {"demo": "demo"},
            "receipt_delay_min_s": 0.05,
            "receipt_delay_max_s": 0.5,
            "undeliverable_share": 0.03,
            "receipt_before_response_share": 0.05,
        },
        "carriers": {c: {"port": 0} for c in ("docomo", "au", "softbank", "rakuten")},
    }


async def count_states(db: Database) -> dict[str, int]:
    rows = await db.call_raw("SELECT state, count(*) AS n FROM messages GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


@pytest.mark.slow
async def test_twenty_thousand_messages_survive_a_sigkill(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    sim = SmscSimulator(sim_config_from_mapping(sim_config()))
    ports = await sim.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports))
    daemon = DaemonProcess(config_path, dsn, free_port(), tmp_path / "daemon.log")
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            for batch in range(MESSAGES // 1000):
                account = ACCOUNTS[batch % len(ACCOUNTS)]
                items = []
                for i in range(1000):
                    n = batch * 1000 + i
                    prefix = ("090", "080", "070")[n % 3]
                    text = f"ご注文 {n} を承りました" + ("。" * 80 if n % 10 < 3 else "")
                    items.append({"to": f"{prefix}{10_000_000 + n:08d}", "sms": {"text": text}})
                async with http.post(
                    f"{daemon.base}/v1/messages",
                    json={"messages": items},
                    headers={"Authorization": f"Bearer {account}-token"},
                ) as r:
                    assert r.status == 202
                    assert len((await r.json())["accepted"]) == 1000
        # Kill it while work is in every state.
        for _ in range(600):
            states = await count_states(db)
            if sum(states.get(s, 0) for s in FINAL) >= MESSAGES * 0.3:
                break
            await asyncio.sleep(0.1)
        daemon.kill()
        killed_with = await count_states(db)
        await daemon.start()
        for _ in range(1800):
            states = await count_states(db)
            if sum(states.get(s, 0) for s in FINAL) == MESSAGES:
                break
            # A daemon that stopped by itself will not finish the queue:
            # say so now, with its log, instead of after the whole wait.
            assert daemon.proc is not None and daemon.proc.poll() is None, (
                daemon.log_path.read_text()[-2000:]
            )
            await asyncio.sleep(0.1)
        assert set(states) <= set(FINAL), (killed_with, states)
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()
    assert sim.duplicates() == []
    assert sim.duplicates(include_undelivered=True) == []
    # Every part that reached the handset is billed once (§11), whatever
    # became of its message: an unknown one too (parts in flight when the
    # daemon died), from the move into unknown or as its receipts came.
    delivered_parts = (
        await db.call_raw("SELECT count(*) AS n FROM parts WHERE state = 'delivered'")
    )[0]["n"]
    billed = (
        await db.call_raw(
            "SELECT coalesce(sum(units), 0) AS n FROM billing_counts WHERE channel = 'sms'"
        )
    )[0]["n"]
    units = (await db.call_raw("SELECT sum(sms_units) AS n FROM messages"))[0]["n"]
    assert billed == delivered_parts == units
    assert states.get("delivered", 0) > MESSAGES * 0.8
    rerouted = (
        await db.call_raw("SELECT count(*) AS n FROM message_events WHERE kind = 'rerouted'")
    )[0]["n"]
    assert rerouted > 0
