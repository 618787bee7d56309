"""Sends through the whole daemon and the SMSC simulator.

- A CSV send with variables is accepted and delivered (3,000 recipients
  here, to keep `make test` short; `bench/sends.py` sends 100,000 the same
  way).
- Follow-ups leave only after their first message was delivered, exactly
  once, across a SIGKILL of the daemon while first messages are being
  delivered and released follow-ups wait for their delay.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.e2e.daemon_process import DaemonProcess, free_port

FINAL = ("delivered", "failed", "expired", "cancelled", "skipped", "rejected", "unknown")
TOKEN = {"Authorization": "Bearer alpha-token"}


def daemon_config(ports: dict[str, int]) -> str:
    lines = ["[engine]", "pacing = false", "lease_s = 3", "claim_batch = 500", ""]
    lines += [
        "[accounts.alpha]",
        'tokens = ["alpha-token"]',
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
            "binds = 2",
            "window = 64",
            "receipt_timeout_s = 30",
            "",
        ]
    return "\n".join(lines)


def sim_config(undeliverable_share: float) -> dict[str, object]:
    return {
        "seed": 11,
        "defaults": {
            "accounts": {"demo": "demo"},
            "receipt_delay_min_s": 0.05,
            "receipt_delay_max_s": 0.5,
            "undeliverable_share": undeliverable_share,
        },
        "carriers": {c: {"port": 0} for c in ("docomo", "au", "softbank", "rakuten")},
    }


def csv_upload(send: dict[str, object], recipients: int) -> aiohttp.FormData:
    lines = ["number,name,no"]
    lines += [f"090{20_000_000 + i:08d},顧客{i},{i}" for i in range(recipients)]
    form = aiohttp.FormData()
    form.add_field("send", json.dumps(send), content_type="application/json")
    form.add_field(
        "recipients", ("\n".join(lines) + "\n").encode(), filename="r.csv", content_type="text/csv"
    )
    return form


async def states(db: Database, follow_up: bool) -> dict[str, int]:
    rows = await db.call_raw(
        "SELECT state, count(*)::int AS n FROM messages "
        "WHERE (after_message_id IS NOT NULL) = $1 GROUP BY state",
        follow_up,
    )
    return {r["state"]: r["n"] for r in rows}


async def wait_all_final(
    db: Database, daemon: DaemonProcess, total: int, waiting_on_unknown: bool = False
) -> dict[str, int]:
    for _ in range(1200):
        rows = await db.call_raw("SELECT state, count(*)::int AS n FROM messages GROUP BY state")
        counts = {r["state"]: r["n"] for r in rows}
        waiting = 0
        if waiting_on_unknown:
            waiting = (
                await db.call_raw(
                    "SELECT count(*)::int AS n FROM messages f "
                    "JOIN messages p ON p.id = f.after_message_id "
                    "WHERE f.state = 'scheduled' AND p.state = 'unknown'"
                )
            )[0]["n"]
        if sum(counts.get(s, 0) for s in FINAL) + waiting == total:
            return counts
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_path.read_text()[
            -2000:
        ]
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all final: {counts}")


@pytest.mark.slow
async def test_csv_send_with_variables_is_delivered(dsn: str, db: Database, tmp_path: Path) -> None:
    recipients = 3000
    sim = SmscSimulator(sim_config_from_mapping(sim_config(0.0)))
    ports = await sim.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports))
    daemon = DaemonProcess(config_path, dsn, free_port(), tmp_path / "daemon.log")
    await daemon.start()
    try:
        send = {"client_ref": "winter-sale", "sms": {"text": "{{name}}様 会員番号{{no}}"}}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{daemon.base}/v1/sends", data=csv_upload(send, recipients), headers=TOKEN
            ) as r:
                assert r.status == 202, await r.text()
                answer = await r.json()
            assert answer["accepted"] == recipients
            await wait_all_final(db, daemon, recipients)
            async with http.get(f"{daemon.base}/v1/sends/{answer['id']}", headers=TOKEN) as r:
                view = await r.json()
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()
    assert view["messages_by_state"] == {"delivered": recipients}
    assert view["billing"]["sms_units"] == recipients
    assert sim.duplicates(include_undelivered=True) == []
    # Each recipient's own text, once.
    texts = {text for (_, text) in sim.counters.handset_text_parts}
    assert {f"顧客{i}様 会員番号{i}" for i in range(recipients)} == texts


@pytest.mark.slow
async def test_follow_ups_after_delivery_only_exactly_once_across_a_sigkill(
    dsn: str, db: Database, tmp_path: Path
) -> None:
    recipients = 300
    sim = SmscSimulator(sim_config_from_mapping(sim_config(0.15)))
    ports = await sim.start()
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(daemon_config(ports))
    daemon = DaemonProcess(config_path, dsn, free_port(), tmp_path / "daemon.log")
    await daemon.start()
    try:
        send = {
            "sms": {"text": "{{name}}様 ご予約を承りました"},
            "follow_up": {"sms": {"text": "{{name}}様 前日のお知らせ"}, "delay_s": 2},
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{daemon.base}/v1/sends", data=csv_upload(send, recipients), headers=TOKEN
            ) as r,
        ):
            assert r.status == 202, await r.text()
        # Kill it once first messages are being delivered and released
        # follow-ups wait for their delay (delivered, not yet gone).
        released_waiting = 0
        for _ in range(600):
            first = await states(db, follow_up=False)
            released = await db.call_raw(
                "SELECT count(*)::int AS n FROM messages WHERE after_message_id IS NOT NULL "
                "AND state = 'scheduled' AND not_before < 'infinity'"
            )
            released_waiting = released[0]["n"]
            if first.get("delivered", 0) >= recipients * 0.3 and released_waiting:
                break
            await asyncio.sleep(0.05)
        daemon.kill()
        assert released_waiting > 0
        await daemon.start()
        # A follow-up whose first message stays unknown (its receipt never
        # came) waits for that answer: it counts as settled here.
        await wait_all_final(db, daemon, 2 * recipients, waiting_on_unknown=True)
        assert await daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        await sim.stop()
    pairs = await db.call_raw(
        "SELECT p.state AS first, f.state AS follow_up, f.reason_code "
        "FROM messages f JOIN messages p ON p.id = f.after_message_id"
    )
    assert len(pairs) == recipients
    for pair in pairs:
        if pair["first"] == "delivered":
            assert pair["follow_up"] not in ("skipped", "scheduled"), pair
        elif pair["first"] == "unknown":
            assert pair["follow_up"] == "scheduled", pair
        else:
            assert pair["follow_up"] == "skipped", pair
            assert pair["reason_code"] == "parent_not_delivered"
    assert any(p["first"] != "delivered" for p in pairs)
    # Nothing reached an SMSC twice; each follow-up that left, left once.
    assert sim.duplicates(include_undelivered=True) == []
    follow_texts = [k for k in sim.counters.accepted_text_parts if "前日のお知らせ" in k[1]]
    left = sum(1 for p in pairs if p["follow_up"] not in ("skipped", "scheduled"))
    assert len(follow_texts) >= sum(1 for p in pairs if p["follow_up"] == "delivered")
    assert len(follow_texts) <= left
