"""Routes (DOMAIN §6) end to end: real sockets to two SMSC simulators of one
carrier, its premium connection and an ordinary route through another SMSC.
An account on the "lite" plan reaches SoftBank over the ordinary route's
binds with that route's sender; a premium account over the premium binds
with its fixed short code. The status document, the history, the export
and the billing counts say which route carried each message."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from carrierd.channels.sms import SmppGateway
from carrierd.config import Config, parse_config
from carrierd.domain.billing import billing_month
from carrierd.domain.clock import SystemClock
from carrierd.engine.write_behind import WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from tests.integration.apiclient import auth, running_api
from tests.integration.engine_harness import enqueue, make_engine

SOFTBANK_NUMBERS = ("07011110001", "07011110002")
DOCOMO_NUMBER = "09011110003"


def routes_config(dsn: str, ports: Mapping[str, int]) -> Config:
    def smsc(port: int, system_id: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": port,
            "system_id": system_id,
            "password": system_id,
            "reconnect_max_backoff_s": 0.5,
        }

    raw: dict[str, Any] = {
        "database": {"dsn": dsn},
        "http": {"port": 0},
        "engine": {"pacing": False, "submitted_grace_s": 0},
        "accounts": {
            "acme": {
                "tokens": ["acme-token"],
                "senders": {"docomo": "0120111111", "softbank": "249200"},
            },
            "lite": {
                "tokens": ["lite-token"],
                "plan": "lite",
                "senders": {"docomo": "0120222222", "softbank": "251000"},
            },
        },
        "carriers": {
            "docomo": {**smsc(ports["docomo"], "direct"), "number_prefixes": ["090"]},
            "softbank": {
                **smsc(ports["softbank"], "direct"),
                "number_prefixes": ["070"],
                "routes": {
                    "ordinary": {
                        **smsc(ports["softbank_ordinary"], "agg"),
                        "sender": "CARRIERD",
                        # The aggregator writes its ids in decimal.
                        "message_id_style": "decimal",
                        "receipt_id_style": "decimal",
                    }
                },
            },
        },
    }
    return parse_config(raw, env={})


async def test_a_lite_account_reaches_softbank_over_its_ordinary_route(
    dsn: str, db: Database
) -> None:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 5,
                "defaults": {"receipt_delay_min_s": 0.01, "receipt_delay_max_s": 0.05},
                "carriers": {
                    "docomo": {
                        "port": 0,
                        "accounts": {"direct": "direct"},
                        "subscriber_prefixes": ["090"],
                    },
                    "softbank": {
                        "port": 0,
                        "accounts": {"direct": "direct"},
                        "subscriber_prefixes": ["070"],
                    },
                    # Another SMSC reaching SoftBank's subscribers.
                    "softbank_ordinary": {
                        "port": 0,
                        "accounts": {"agg": "agg"},
                        "serves": "softbank",
                        "smsc_system_id": "aggregator",
                        "submit_resp_id_format": "decimal",
                        "receipt_id_format": "decimal",
                    },
                },
            }
        )
    )
    ports = await sim.start()
    clock = SystemClock()
    config = routes_config(dsn, ports)
    gateways: list[SmppGateway] = []

    def gateway(recorder: WriteBehind) -> SmppGateway:
        gateways.append(SmppGateway(config.carriers, recorder, clock))
        return gateways[0]

    engine = await make_engine(config, db, clock, daemon_id="routes", gateway=gateway)  # type: ignore[arg-type]
    smpp = gateways[0]
    await smpp.start()
    flusher = asyncio.ensure_future(engine.recorder.run())
    try:
        now = clock.now()
        lite_ids = await enqueue(
            db,
            "lite",
            [{"to": n, "sms": {"text": f"ご予約 {n} を承りました。"}} for n in SOFTBANK_NUMBERS]
            + [{"to": DOCOMO_NUMBER, "sms": {"text": "docomo は premium"}}],
            now,
            config,
        )
        [acme_id] = await enqueue(
            db, "acme", [{"to": SOFTBANK_NUMBERS[0], "sms": {"text": "premium で"}}], now, config
        )
        ids = [*lite_ids, acme_id]
        states: dict[int, str] = {}
        for _ in range(500):  # an upper bound, not a speed claim
            await engine.dispatcher.dispatch_once(clock.now())
            await engine.settler.settle_once(clock.now())
            rows = await db.call_raw(
                "SELECT id, state FROM messages WHERE id = ANY($1::bigint[])", ids
            )
            states = {r["id"]: r["state"] for r in rows}
            if all(state == "delivered" for state in states.values()):
                break
            await asyncio.sleep(0.02)
        await engine.dispatcher.wait_idle()
        await engine.recorder.drain()
    finally:
        flusher.cancel()
        await smpp.stop(5.0)
        await sim.stop()
    assert states == dict.fromkeys(ids, "delivered")

    # Each SMSC saw the senders of its route: the ordinary route's own for the
    # lite account, the account's fixed numbers on the premium binds.
    counters = sim.counters.carriers
    assert counters["softbank_ordinary"].accepted_by_sender == {"CARRIERD": 2}
    assert counters["softbank"].accepted_by_sender == {"249200": 1}
    assert counters["docomo"].accepted_by_sender == {"0120222222": 1}
    # The receipts of the ordinary SMSC settled the parts it took, and only those.
    parts = await db.call_raw(
        "SELECT message_id, bind_id, smsc_message_id FROM parts WHERE message_id = ANY($1)", ids
    )
    bind_of = {p["message_id"]: p["bind_id"] for p in parts}
    assert [bind_of[i] for i in lite_ids[:2]] == ["softbank-ordinary-1"] * 2
    assert bind_of[acme_id] == "softbank-1" and bind_of[lite_ids[2]] == "docomo-1"
    assert all(
        p["smsc_message_id"].startswith("ordinary:") == (p["message_id"] in lite_ids[:2])
        for p in parts
    )

    expected_route = {lite_ids[0]: "ordinary", lite_ids[1]: "ordinary"}
    async with running_api(config, db, clock) as (base, http):
        for message_id, token in [(i, "lite-token") for i in lite_ids] + [(acme_id, "acme-token")]:
            response = await http.get(f"{base}/v1/messages/{message_id}", headers=auth(token))
            document = await response.json()
            route = expected_route.get(message_id, "premium")
            assert (document["route"], document["state"]) == (route, "delivered")
            sending = [e for e in document["history"] if e["event"] == "sending"]
            assert [e["detail"]["route"] for e in sending] == [route]

        month = billing_month(clock.now())
        response = await http.get(
            f"{base}/v1/billing", params={"month": month}, headers=auth("lite-token")
        )
        billing = await response.json()
        assert billing["sms_units"] == 3
        assert billing["sms_units_by_route"] == {"ordinary": 2, "premium": 1}
        response = await http.get(
            f"{base}/v1/billing", params={"month": month}, headers=auth("acme-token")
        )
        assert (await response.json())["sms_units_by_route"] == {"premium": 1}

        response = await http.get(
            f"{base}/v1/messages/export",
            params={
                "from": (now - timedelta(minutes=1)).isoformat(),
                "to": (now + timedelta(minutes=10)).isoformat(),
            },
            headers=auth("lite-token"),
        )
        exported = list(csv.DictReader(io.StringIO(await response.text())))
        assert {int(r["id"]): r["route"] for r in exported} == {
            lite_ids[0]: "ordinary",
            lite_ids[1]: "ordinary",
            lite_ids[2]: "premium",
        }
