"""A receipt names its part by two ids, each in its own base: the
receipted_message_id TLV in the submit_sm_resp id's base, the text "id:" in
the carrier's receipt base. On the real database, through the named
statements the recorder and the settler run: either id settles the part,
straight away or when the receipt came before the response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from carrierd.channels.sms import SmppGateway, parse_deliver, part_outcomes
from carrierd.channels.types import PartOutcome, Receipt, SmsRequest
from carrierd.domain.clock import FakeClock, SystemClock
from carrierd.engine.write_behind import EARLY_RECEIPT_KEEP_S, WriteBehind
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.smpp.pdu import ESM_CLASS_RECEIPT, DeliverSm
from carrierd.smpp.session import SubmitResult
from carrierd.store.db import QUERIES, Database, Row, Transaction
from tests.integration.apiclient import sync_accounts
from tests.integration.engine_harness import engine_config, enqueue, make_engine

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
# The SMSC answers submit_sm with this id, in hex (message_id_style "hex").
RESPONSE_ID = "1234abcd"
PART_ID = str(0x1234ABCD)


def request(message_id: int) -> SmsRequest:
    return SmsRequest(
        message_id=message_id,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=("こんにちは",),
        expires_at=T0 + timedelta(days=3),
    )


def accepted(message_id: int, response_id: str = RESPONSE_ID) -> PartOutcome:
    [outcome] = part_outcomes(
        request(message_id),
        [SubmitResult("accepted", "docomo-1", message_id=response_id)],
        "hex",
    )
    return outcome


def receipt(tlv: str | None, text_id: str | None, at: datetime) -> Receipt:
    """A receipt as the gateway builds it for a carrier whose responses are
    in hex and whose receipt texts are in decimal."""
    pdu = DeliverSm(
        sequence_number=1,
        source_addr="819012345678",
        destination_addr="0120123456",
        esm_class=ESM_CLASS_RECEIPT,
        receipted_message_id=tlv,
        short_message=(f"id:{text_id} " if text_id else "").encode() + b"stat:DELIVRD err:000",
    )
    parsed = parse_deliver(
        pdu,
        carrier="docomo",
        message_id_style="hex",
        receipt_id_style="decimal",
        received_at=at,
    )
    assert isinstance(parsed, Receipt)
    return parsed


async def new_message(db: Database) -> int:
    await db.call_raw("INSERT INTO accounts (account_id) VALUES ('acme') ON CONFLICT DO NOTHING")
    [row] = await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              sms_text, not_before, expires_at, accepted_at, updated_at)
        VALUES ('acme', 'sms', 'sms', 'sending', '09012345678', '+819012345678', true, 'x',
                $1::timestamptz, $1::timestamptz + interval '3 days', $1, $1)
        RETURNING id
        """,
        T0,
    )
    return int(row["id"])


async def send_part(tx: Transaction, message_id: int, sent_at: datetime) -> None:
    await tx.execute(
        "insert_parts", [message_id], [1], [1], [1], ["docomo"], [1], sent_at, ["pending"]
    )


async def record_response(
    tx: Transaction, message_id: int, outcome: PartOutcome, at: datetime
) -> None:
    await tx.execute(
        "record_part_responses",
        [message_id],
        [1],
        [outcome.part_no],
        [outcome.result],
        [outcome.smsc_message_id],
        [outcome.command_status],
        [outcome.bind_id],
        at,
        [outcome.unknown_cause],
    )


async def record_receipts(tx: Transaction, receipts: Sequence[Receipt]) -> list[Row]:
    """The arrays the recorder passes (engine/write_behind.py)."""
    return await tx.fetch(
        "record_receipts",
        [r.carrier for r in receipts],
        [r.smsc_message_id for r in receipts],
        [r.stat.upper() for r in receipts],
        [r.err for r in receipts],
        [r.received_at for r in receipts],
        [r.alt_smsc_message_id for r in receipts],
        [r.recipient_addr for r in receipts],
        [r.submit_date for r in receipts],
        [r.text_start for r in receipts],
    )


async def part_state(db: Database, message_id: int) -> tuple[str, str | None]:
    [row] = await db.call_raw(
        "SELECT state, receipt_stat FROM parts WHERE message_id = $1", message_id
    )
    return row["state"], row["receipt_stat"]


# Each receipt has one id that matches the part and one that does not.
TLV_MATCHES = (RESPONSE_ID.upper(), "99999")
TEXT_MATCHES = ("ffff", PART_ID)


@pytest.mark.parametrize(("tlv", "text_id"), [TLV_MATCHES, TEXT_MATCHES])
async def test_a_receipt_whose_tlv_or_text_id_matches_settles_its_part(
    db: Database, tlv: str, text_id: str
) -> None:
    mid = await new_message(db)
    async with db.transaction() as tx:
        await send_part(tx, mid, T0)
        await record_response(tx, mid, accepted(mid), T0)
    dlr = receipt(tlv, text_id, T0 + timedelta(seconds=5))
    assert dlr.alt_smsc_message_id is not None  # two candidates, one of them the part's

    async with db.transaction() as tx:
        changed = await record_receipts(tx, [dlr])

    assert [(r["message_id"], r["state"]) for r in changed] == [(mid, "delivered")]
    assert await part_state(db, mid) == ("delivered", "DELIVRD")
    assert await db.call_raw("SELECT * FROM early_receipts") == []


@pytest.mark.parametrize(("tlv", "text_id"), [TLV_MATCHES, TEXT_MATCHES])
async def test_a_receipt_before_its_response_waits_with_both_ids_and_meets_its_part(
    db: Database, tlv: str, text_id: str
) -> None:
    mid = await new_message(db)
    async with db.transaction() as tx:
        await send_part(tx, mid, T0)
    dlr = receipt(tlv, text_id, T0 + timedelta(seconds=1))

    async with db.transaction() as tx:
        waiting = await record_receipts(tx, [dlr])
    assert [r["state"] for r in waiting] == ["early"]
    [early] = await db.call_raw("SELECT smsc_message_id, alt_smsc_message_id FROM early_receipts")
    assert (early["smsc_message_id"], early["alt_smsc_message_id"]) == (
        dlr.smsc_message_id,
        dlr.alt_smsc_message_id,
    )

    async with db.transaction() as tx:
        await record_response(tx, mid, accepted(mid), T0 + timedelta(seconds=2))
        changed = await tx.fetch("apply_early_receipts")

    assert [(r["message_id"], r["state"]) for r in changed] == [(mid, "delivered")]
    assert await part_state(db, mid) == ("delivered", "DELIVRD")
    assert await db.call_raw("SELECT * FROM early_receipts") == []


async def test_the_newest_part_with_either_id_takes_the_receipt(db: Database) -> None:
    # SMSCs recycle ids: an older part holds the text's id, a newer one the TLV's.
    older, newer = await new_message(db), await new_message(db)
    async with db.transaction() as tx:
        await send_part(tx, older, T0)
        await record_response(tx, older, accepted(older, "3039"), T0)  # 12345 in decimal
        await send_part(tx, newer, T0 + timedelta(minutes=1))
        await record_response(tx, newer, accepted(newer), T0 + timedelta(minutes=1))

    async with db.transaction() as tx:
        changed = await record_receipts(
            tx, [receipt(RESPONSE_ID, "12345", T0 + timedelta(hours=1))]
        )

    assert [r["message_id"] for r in changed] == [newer]
    assert await part_state(db, older) == ("accepted", None)


async def test_a_receipt_no_part_ever_takes_is_dropped_once_and_returned(db: Database) -> None:
    stale = receipt("abc", "777", T0)
    fresh = receipt("def", None, T0 + timedelta(minutes=30))
    async with db.transaction() as tx:
        await record_receipts(tx, [stale, fresh])

    async with db.transaction() as tx:
        dropped = await tx.fetch("expire_stale_early_receipts", T0 + timedelta(minutes=10))
    async with db.transaction() as tx:
        again = await tx.fetch("expire_stale_early_receipts", T0 + timedelta(minutes=10))

    assert [dict(r) for r in dropped] == [
        {
            "carrier": "docomo",
            "smsc_message_id": str(0xABC),
            "alt_smsc_message_id": "777",
            "stat": "DELIVRD",
            "received_at": T0,
        }
    ]
    assert again == []
    [left] = await db.call_raw("SELECT smsc_message_id, alt_smsc_message_id FROM early_receipts")
    assert (left["smsc_message_id"], left["alt_smsc_message_id"]) == (str(0xDEF), None)


async def test_receipt_lookups_probe_the_smsc_id_index_once_per_id(db: Database) -> None:
    await db.call_raw(
        """
        INSERT INTO parts (message_id, attempt, part_no, part_total, carrier, smsc_message_id,
                           state, sent_at)
        SELECT i, 1, 1, 1, (ARRAY['docomo','au'])[1 + i % 2], i::text,
               CASE WHEN i % 10 = 0 THEN 'accepted' ELSE 'delivered' END,
               $1::timestamptz + make_interval(secs => i)
        FROM generate_series(1, 100000) AS i
        """,
        T0,
    )
    await db.call_raw(
        "INSERT INTO early_receipts (carrier, smsc_message_id, alt_smsc_message_id, stat,"
        " received_at) SELECT 'docomo', 'x' || i, i::text, 'DELIVRD', $1"
        " FROM generate_series(1, 50) AS i",
        T0,
    )
    await db.call_raw("ANALYZE parts")
    await db.call_raw("ANALYZE early_receipts")
    batch = [receipt(f"{n:x}", str(n + 7), T0) for n in range(1000, 1200)]
    record_plan = await db.call_raw(
        "EXPLAIN (FORMAT JSON) " + QUERIES["record_receipts"],
        [r.carrier for r in batch],
        [r.smsc_message_id for r in batch],
        [r.stat for r in batch],
        [r.err for r in batch],
        [r.received_at for r in batch],
        [r.alt_smsc_message_id for r in batch],
        [r.recipient_addr for r in batch],
        [r.submit_date for r in batch],
        [r.text_start for r in batch],
    )
    apply_plan = await db.call_raw("EXPLAIN (FORMAT JSON) " + QUERIES["apply_early_receipts"])

    for plan in (record_plan, apply_plan):
        lookups = [
            n
            for n in _plan_nodes(_plan(plan))
            if n.get("Relation Name") == "parts" and "Scan" in n["Node Type"]
        ]
        # Both candidates' probes; the part's own update goes by primary key.
        by_smsc_id = [n for n in lookups if n.get("Index Name") == "parts_by_smsc_id"]
        assert len(by_smsc_id) == 2, lookups
        assert all(n.get("Index Name") in ("parts_by_smsc_id", "parts_pkey") for n in lookups)
        assert all("Backward" in n.get("Scan Direction", "Backward") for n in by_smsc_id)


def _plan(rows: list[Row]) -> dict[str, Any]:
    raw = rows[0]["QUERY PLAN"]
    document = json.loads(raw) if isinstance(raw, str) else raw
    return dict(document[0]["Plan"])


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_the_settler_logs_and_counts_each_unmatched_receipt_once(
    dsn: str, db: Database
) -> None:
    config = engine_config(dsn)
    clock = FakeClock(T0)
    engine = await make_engine(config, db, clock)
    metrics, settler = engine.metrics, engine.settler
    async with db.transaction() as tx:
        await record_receipts(tx, [receipt("abc", "777", T0)])

    with capture_logs() as logs:
        await settler.settle_once(T0 + timedelta(seconds=EARLY_RECEIPT_KEEP_S - 1))
        kept = [e for e in logs if e["event"] == "receipt_unmatched"]
        await settler.settle_once(T0 + timedelta(seconds=EARLY_RECEIPT_KEEP_S + 1))
        await settler.settle_once(T0 + timedelta(seconds=EARLY_RECEIPT_KEEP_S + 2))

    assert kept == []
    [event] = [e for e in logs if e["event"] == "receipt_unmatched"]
    assert {k: event[k] for k in ("carrier", "smsc_message_id", "alt_smsc_message_id", "stat")} == {
        "carrier": "docomo",
        "smsc_message_id": str(0xABC),
        "alt_smsc_message_id": "777",
        "stat": "DELIVRD",
    }
    assert event["waited_s"] == EARLY_RECEIPT_KEEP_S + 1
    counted = metrics.registry.get_sample_value(
        "carrierd_receipts_unmatched_total", {"carrier": "docomo"}
    )
    assert counted == 1.0


@pytest.mark.parametrize("tlv_format", ["", "decimal"])
async def test_messages_settle_through_the_simulator_whatever_base_its_tlv_uses(
    dsn: str, db: Database, tlv_format: str
) -> None:
    # The SMSC answers in hex and writes its receipt text in decimal; its
    # receipted_message_id follows SMPP 3.4 (the response's hex, "") or
    # the text (decimal). Half the receipts beat their response.
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 5,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.0,
                    "receipt_delay_max_s": 0.05,
                    "receipt_before_response_share": 0.5,
                    "submit_resp_id_format": "hex",
                    "receipt_id_format": "decimal",
                    "receipt_tlv_id_format": tlv_format,
                },
                "carriers": {"docomo": {"port": 0, "subscriber_prefixes": ["090"]}},
            }
        )
    )
    ports = await sim.start()
    clock = SystemClock()
    docomo = {
        "port": ports["docomo"],
        "system_id": "demo",
        "password": "demo",
        "number_prefixes": ["090"],
        "message_id_style": "hex",
        "receipt_id_style": "decimal",
    }
    config = engine_config(
        dsn, {"engine": {"pacing": False, "submitted_grace_s": 0}, "carriers": {"docomo": docomo}}
    )
    await sync_accounts(db, config)
    # docomo alone: the harness's other carriers have no SMSC to bind to.
    smpp: list[SmppGateway] = []

    def docomo_gateway(recorder: WriteBehind) -> SmppGateway:
        smpp.append(
            SmppGateway(
                {"docomo": config.carriers["docomo"]},
                recorder,
                clock,
                receipt_message_id_styles={"docomo": config.carriers["docomo"].receipt_id_style},
            )
        )
        return smpp[0]

    engine = await make_engine(config, db, clock, daemon_id="t", gateway=docomo_gateway)
    recorder, dispatcher, settler = engine.recorder, engine.dispatcher, engine.settler
    gateway = smpp[0]
    await gateway.start()
    flusher = asyncio.ensure_future(recorder.run())
    try:
        await enqueue(
            db,
            "acme",
            [{"to": f"090{30_000_000 + n:08d}", "sms": {"text": f"n{n}"}} for n in range(20)],
            clock.now(),
            config,
        )
        for _ in range(250):
            await dispatcher.dispatch_once(clock.now())
            await settler.settle_once(clock.now())
            rows = await db.call_raw("SELECT state, count(*) AS n FROM messages GROUP BY state")
            states = {r["state"]: r["n"] for r in rows}
            if states == {"delivered": 20}:
                break
            await asyncio.sleep(0.02)
        await dispatcher.wait_idle()
        await recorder.drain()
    finally:
        flusher.cancel()
        await gateway.stop(5.0)
        await sim.stop()
    assert states == {"delivered": 20}
    assert sim.counters.carriers["docomo"].accepted == 20
