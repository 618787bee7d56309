"""SMS replies through the SMSC simulator, the real SMPP gateway (two binds
per carrier), the write-behind and PostgreSQL, on a fake clock: concatenated
MO reassembled across binds, out of order, with duplicates and across a
daemon restart; the incomplete timeout; each data_coding; a redelivered
deliver_sm stored once; the message a reply answers; keyword opt-out with
its one confirmation, sent like any other message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from carrierd.channels.sms import SmppGateway
from carrierd.config import Config, parse_config
from carrierd.domain.clock import FakeClock
from carrierd.sim.smsc import SmscSimulator, mo_deliver_pdus, sim_config_from_mapping
from carrierd.store.db import Database
from tests.integration.engine_harness import Engine, enqueue, make_engine

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
WAIT_S = 20.0  # an upper bound for real sockets to settle, not a speed claim
PREFIXES = {"docomo": "090", "au": "080", "softbank": "070"}
# Each carrier's SMSC agrees another meaning of data_coding 0 with us.
ALPHABETS = {"docomo": "gsm7", "au": "gsm7_packed", "softbank": "shift_jis"}
ACME = "0120111111"
GLOBEX = "0120222222"
HANDSET = "+819012345678"


def engine_config(dsn: str, ports: dict[str, int], **acme: Any) -> Config:
    return parse_config(
        {
            "database": {"dsn": dsn},
            "engine": {"pacing": False, "submitted_grace_s": 0},
            "inbound": {"reassembly_timeout_s": 300, "answer_window_s": 7 * 86400},
            "accounts": {
                "acme": {
                    "tokens": ["acme-token"],
                    "senders": dict.fromkeys(PREFIXES, ACME),
                    "inbound_addresses": ["249200"],
                    **acme,
                },
                "globex": {"tokens": ["globex-token"], "senders": dict.fromkeys(PREFIXES, GLOBEX)},
            },
            "carriers": {
                carrier: {
                    "host": "127.0.0.1",
                    "port": ports[carrier],
                    "system_id": "demo",
                    "password": "demo",
                    "binds": 2,
                    "number_prefixes": [prefix],
                    "reconnect_max_backoff_s": 0.2,
                    "mo_default_alphabet": ALPHABETS[carrier],
                }
                for carrier, prefix in PREFIXES.items()
            },
        },
        env={},
    )


@dataclass
class MoRig:
    sim: SmscSimulator
    clock: FakeClock
    db: Database
    ports: dict[str, int]
    dsn: str

    def config(self, **acme: Any) -> Config:
        return engine_config(self.dsn, self.ports, **acme)

    @asynccontextmanager
    async def daemon(self, config: Config) -> AsyncIterator[Engine]:
        """One daemon's engine on the simulator: its binds up, its
        write-behind flushing; stopped (binds closed) on exit."""
        holder: list[SmppGateway] = []

        def gateway(recorder: Any) -> SmppGateway:
            holder.append(SmppGateway(config.carriers, recorder, self.clock))
            return holder[0]

        engine = await make_engine(config, self.db, self.clock, gateway=gateway)
        await holder[0].start()
        flusher = asyncio.ensure_future(engine.recorder.run())
        try:
            await until(lambda: all(h.bound_count == 2 for h in holder[0].health().values()))
            yield engine
        finally:
            await holder[0].stop(2.0)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def delivered(self) -> None:
        """Every MO the simulator queued was answered OK: durable."""
        await until(lambda: self.sim.pending_deliveries() == 0)

    async def replies(self) -> list[dict[str, Any]]:
        return await self.db.call_raw(
            "SELECT id, account_id, carrier, msisdn, to_address, text, in_reply_to, incomplete,"
            " parts_expected, parts_received, data_coding, text_undecodable, raw_hex, keyword"
            " FROM inbound_messages ORDER BY id"
        )


async def until(predicate: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def rig(dsn: str, db: Database) -> AsyncIterator[MoRig]:
    sim = SmscSimulator(
        sim_config_from_mapping(
            {
                "seed": 3,
                "defaults": {
                    "accounts": {"demo": "demo"},
                    "receipt_delay_min_s": 0.0,
                    "receipt_delay_max_s": 0.0,
                    "deliver_retry_delay_s": 0.05,
                },
                "carriers": {
                    c: {"port": 0, "subscriber_prefixes": [p]} for c, p in PREFIXES.items()
                },
            }
        )
    )
    ports = await sim.start()
    try:
        yield MoRig(sim, FakeClock(T0), db, ports, dsn)
    finally:
        await sim.stop()


LONG_REPLY = "はい、参加します。" * 20  # 180 characters: 3 UCS-2 parts


async def test_parts_across_binds_out_of_order_and_twice_make_one_reply(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()):
        parts = mo_deliver_pdus(HANDSET, ACME, LONG_REPLY, reference=200)
        assert len(parts) == 3
        # Each its own flush; two binds take turns, so consecutive parts come
        # on different binds.
        for batch in ([parts[2]], [parts[0]], [parts[2]], [parts[1]], [parts[0]]):
            r.sim.send_mo_pdus("docomo", batch)
            await r.delivered()

        [reply] = await r.replies()
        assert (reply["text"], reply["incomplete"], reply["parts_received"]) == (
            LONG_REPLY,
            False,
            3,
        )
        assert (reply["account_id"], reply["msisdn"], reply["to_address"]) == (
            "acme",
            HANDSET,
            ACME,
        )
        assert await db.call_raw("SELECT * FROM inbound_sms_parts") == []


async def test_udh16_and_sar_parts_are_joined_too(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()):
        r.sim.send_mo_pdus(
            "docomo", mo_deliver_pdus(HANDSET, ACME, LONG_REPLY, concat="udh16", reference=4000)
        )
        r.sim.send_mo_pdus(
            "docomo",
            list(reversed(mo_deliver_pdus(HANDSET, ACME, "SAR" + LONG_REPLY, concat="sar"))),
        )
        await r.delivered()

        assert sorted(row["text"] for row in await r.replies()) == sorted(
            [LONG_REPLY, "SAR" + LONG_REPLY]
        )


async def test_reassembly_survives_a_daemon_restart(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        config = r.config()
        parts = mo_deliver_pdus(HANDSET, ACME, LONG_REPLY, reference=7)
        async with r.daemon(config):
            r.sim.send_mo_pdus("docomo", [parts[0], parts[2]])
            await r.delivered()
            assert await r.replies() == []
        # Another daemon (nothing kept in memory): the last part, and a
        # redelivery of the first, which is no new part.
        async with r.daemon(config) as engine:
            r.sim.send_mo_pdus("docomo", [parts[1]])
            await r.delivered()
            r.sim.send_mo_pdus("docomo", [parts[0]])
            await r.delivered()
            # The late copy started nothing that would time out as a reply.
            r.clock.advance(301)
            await engine.settler.settle_once(r.clock.now())
            [reply] = await r.replies()
            assert (reply["text"], reply["incomplete"]) == (LONG_REPLY, False)


async def test_an_incomplete_message_is_delivered_as_what_came_after_the_timeout(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()) as engine:
        parts = mo_deliver_pdus(HANDSET, ACME, LONG_REPLY, reference=9)
        r.sim.send_mo_pdus("docomo", [parts[0], parts[2]])
        await r.delivered()

        r.clock.advance(299)
        await engine.settler.settle_once(r.clock.now())
        assert await r.replies() == []
        r.clock.advance(1)
        await engine.settler.settle_once(r.clock.now())

        [reply] = await r.replies()
        assert reply["incomplete"]
        assert (reply["parts_expected"], reply["parts_received"]) == (3, 2)
        assert reply["text"] == LONG_REPLY[:67] + LONG_REPLY[134:]
        assert await db.call_raw("SELECT * FROM inbound_sms_reassembly") == []


async def test_each_coding_is_read_by_its_data_coding(dsn: str, db: Database) -> None:
    emoji = "a" * 66 + "😀" + "です"  # the pair straddles the first part's end
    cases = [
        ("docomo", "090", "ucs2", emoji, 134),
        ("docomo", "090", "gsm7", "Reply: YES {10:00} costs 5€ " * 8, None),
        ("au", "080", "gsm7_packed", "Packed reply, see you @ 10:00! " * 8, None),
        ("docomo", "090", "jis", "配信停止をお願いします。" * 10, 60),
        ("softbank", "070", "shift_jis", "はい、参加します。" * 12, 61),
        ("docomo", "090", "latin1", "Café au lait", None),
    ]
    async with rig(dsn, db) as r, r.daemon(r.config()):
        for carrier, prefix, coding, text, part_octets in cases:
            r.sim.send_mo_pdus(
                carrier,
                mo_deliver_pdus(
                    f"{prefix}11112222",
                    ACME,
                    text,
                    coding=coding,  # type: ignore[arg-type]
                    part_octets=part_octets,
                    reference=len(text) % 256,
                ),
            )
            await r.delivered()
        replies = await r.replies()
        assert [(row["text"], row["text_undecodable"]) for row in replies] == [
            (text, False) for *_, text, _ in cases
        ]
        assert [row["data_coding"] for row in replies] == [8, 0, 0, 5, 0, 3]


async def test_undecodable_octets_are_kept(dsn: str, db: Database) -> None:
    [pdu] = mo_deliver_pdus(HANDSET, ACME, "x", coding="ucs2")
    broken = replace(pdu, short_message=b"\x30\x42\xd8\x00")
    async with rig(dsn, db) as r, r.daemon(r.config()):
        r.sim.send_mo_pdus("docomo", [broken])
        await r.delivered()
        [reply] = await r.replies()
        assert (reply["text"], reply["text_undecodable"], reply["raw_hex"]) == (
            "あ\ufffd",
            True,
            "3042d800",
        )


async def test_a_redelivered_deliver_sm_is_one_reply_but_a_later_same_text_is_two(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()):
        [pdu] = mo_deliver_pdus(HANDSET, ACME, "はい")
        for _ in range(2):  # in one flush, then in another
            r.sim.send_mo_pdus("docomo", [pdu, pdu])
            await r.delivered()
        assert len(await r.replies()) == 1
        # The same words after the duplicate window are a new reply.
        r.clock.advance(601)
        r.sim.send_mo_pdus("docomo", [pdu])
        await r.delivered()
        assert len(await r.replies()) == 2


async def test_a_reply_answers_the_accounts_last_message_within_the_window(
    dsn: str, db: Database
) -> None:
    async with rig(dsn, db) as r, r.daemon(r.config()) as engine:
        config = engine.config
        [older] = await enqueue(
            db, "acme", [{"to": HANDSET, "sms": {"text": "一通目"}}], T0, config
        )
        await engine.cycle()
        r.clock.advance(60)
        [latest] = await enqueue(
            db, "acme", [{"to": HANDSET, "sms": {"text": "二通目"}}], T0, config
        )
        [other] = await enqueue(
            db, "globex", [{"to": HANDSET, "sms": {"text": "他社"}}], T0, config
        )
        await engine.cycle()
        assert older < latest < other
        # To acme's sender and to its inbound address: acme's latest; to
        # globex's: globex's; to nobody's: stored, owned by none.
        for to in (ACME, "249200", GLOBEX, "0120999999"):
            r.sim.send_mo_pdus("docomo", mo_deliver_pdus(HANDSET, to, f"返信 {to}"))
        await r.delivered()
        # Eight days on, nothing is answered any more.
        r.clock.advance(8 * 86400)
        r.sim.send_mo_pdus("docomo", mo_deliver_pdus(HANDSET, ACME, "遅い返信"))
        await r.delivered()

        replies = {
            row["text"]: (row["account_id"], row["in_reply_to"]) for row in await r.replies()
        }
        assert replies == {
            f"返信 {ACME}": ("acme", latest),
            "返信 249200": ("acme", latest),
            f"返信 {GLOBEX}": ("globex", other),
            "返信 0120999999": (None, None),
            "遅い返信": ("acme", None),
        }


async def test_a_keyword_opts_out_and_is_confirmed_once(dsn: str, db: Database) -> None:
    async with rig(dsn, db) as r:
        config = r.config(
            keywords=["停止", "STOP", "配信停止"], keyword_reply="配信を停止しました。"
        )
        async with r.daemon(config) as engine:
            r.sim.send_mo_pdus("docomo", mo_deliver_pdus(HANDSET, ACME, " ｓｔｏｐ "))
            await r.delivered()
            r.clock.advance(1)
            r.sim.send_mo_pdus("docomo", mo_deliver_pdus(HANDSET, ACME, "配信停止"))
            r.sim.send_mo_pdus("docomo", mo_deliver_pdus("09011113333", ACME, "停止しないで"))
            await r.delivered()

            replies = await r.replies()
            assert {row["text"]: row["keyword"] for row in replies} == {
                " ｓｔｏｐ ": "STOP",
                "配信停止": "配信停止",
                "停止しないで": None,
            }
            optouts = await db.call_raw("SELECT account_id, msisdn, source FROM optouts")
            assert optouts == [{"account_id": "acme", "msisdn": HANDSET, "source": "keyword"}]
            confirmations = await db.call_raw(
                "SELECT id, msisdn, sms_text, client_ref, state FROM messages"
            )
            assert confirmations == [
                {
                    "id": confirmations[0]["id"],
                    "msisdn": HANDSET,
                    "sms_text": "配信を停止しました。",
                    "client_ref": f"keyword-reply:{replies[0]['id']}",
                    "state": "queued",
                }
            ]
            # A message like any other: it goes to the SMSC and is tracked.
            await engine.cycle()
            await until(lambda: r.sim.counters.carriers["docomo"].accepted >= 1)
            [sent] = await db.call_raw("SELECT state FROM messages")
            assert sent["state"] in ("sending", "submitted", "delivered")
        assert await db.call_raw("SELECT count(*) AS n FROM messages") == [{"n": 1}]


async def test_a_keyword_obeys_the_accounts_own_opt_out_cap(dsn: str, db: Database) -> None:
    """A full list refuses the keyword's number like any other add: the
    reply is stored, nothing is listed, no confirmation goes out."""
    async with rig(dsn, db) as r:
        config = r.config(keywords=["STOP"], keyword_reply="配信を停止しました。", optout_cap=0)
        async with r.daemon(config):
            r.sim.send_mo_pdus("docomo", mo_deliver_pdus(HANDSET, ACME, "STOP"))
            await r.delivered()
            assert [row["text"] for row in await r.replies()] == ["STOP"]
            assert await db.call_raw("SELECT msisdn FROM optouts") == []
            assert await db.call_raw("SELECT id FROM messages") == []
