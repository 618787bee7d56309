"""Interoperability: our SmppSession against an SMSC built on smpp.twisted3 / smpp.pdu3.

The Twisted server runs in its own process (its reactor and our asyncio loop do not
share a thread) and reports what it decoded as JSON lines on stdout. It binds us as
a transceiver, answers submit_sm with its own message ids, sends a delivery receipt
for each, sends enquire_link on its own timer and answers our unbind: every PDU
crosses between two codecs that were written independently.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from carrierd.channels.sms import build_submit_pdus, parse_deliver
from carrierd.channels.types import Receipt, SmsRequest
from carrierd.config import CarrierConfig
from carrierd.smpp.pdu import DataSm, DeliverSm
from carrierd.smpp.session import SmppSession

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0  # an upper bound for things to happen, not a speed claim
SERVER_ENQUIRE_LINK_S = 0.3
# smpp.pdu3 prints to stdout itself (a stray debug print in smpp_time.parse).
EVENT_MARK = "EVENT "


def serve_twisted() -> None:
    """The Twisted SMSC (runs in the child process)."""
    from smpp.pdu import operations, pdu_types
    from smpp.twisted.config import SMPPServerConfig
    from smpp.twisted.protocol import DataHandlerResponse
    from smpp.twisted.server import IAuthenticatedSMPP, SMPPServerFactory
    from twisted.cred import checkers, credentials, error, portal
    from twisted.internet import defer
    from twisted.internet import reactor as global_reactor
    from zope.interface import implementer  # type: ignore[import-untyped]

    # Twisted types its reactor as a module; the methods live on the installed object.
    reactor: Any = global_reactor

    def report(**event: Any) -> None:
        print(EVENT_MARK + json.dumps(event, default=str), flush=True)

    @implementer(portal.IRealm)
    class Realm:
        def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
            return (IAuthenticatedSMPP, avatar_id, lambda: None)

    @implementer(checkers.ICredentialsChecker)
    class Checker:
        credentialInterfaces = (credentials.IUsernamePassword,)

        def requestAvatarId(self, creds: Any) -> Any:
            if (creds.username, creds.password) == ("carrierd", "secret"):
                return defer.succeed(creds.username)
            return defer.fail(error.UnauthorizedLogin())

    submitted = 0

    def send_receipt(smpp: Any, pdu: Any, message_id: str) -> None:
        receipt = operations.DeliverSM(
            source_addr=pdu.params["destination_addr"],
            destination_addr=pdu.params["source_addr"],
            esm_class=pdu_types.EsmClass(
                pdu_types.EsmClassMode.DEFAULT, pdu_types.EsmClassType.SMSC_DELIVERY_RECEIPT
            ),
            receipted_message_id=message_id,
            message_state=pdu_types.MessageState.DELIVERED,
            short_message=f"id:{message_id} sub:001 dlvrd:001 stat:DELIVRD err:000".encode(),
        )
        answered = smpp.sendDataRequest(receipt)
        answered.addCallback(
            lambda result: report(event="deliver_sm_resp", status=result.response.status.name)
        )
        answered.addErrback(lambda failure: report(event="deliver_sm_error", error=str(failure)))

    def on_message(system_id: str, smpp: Any, pdu: Any) -> Any:
        nonlocal submitted
        if pdu.id != pdu_types.CommandId.submit_sm:
            return pdu_types.CommandStatus.ESME_RINVCMDID
        submitted += 1
        message_id = f"tw{submitted:04d}"
        params = pdu.params
        report(
            event="submit_sm",
            system_id=system_id,
            source_addr=params["source_addr"].decode(),
            source_addr_ton=params["source_addr_ton"].name,
            destination_addr=params["destination_addr"].decode(),
            dest_addr_ton=params["dest_addr_ton"].name,
            udhi=any(f.name == "UDHI_INDICATOR_SET" for f in params["esm_class"].gsmFeatures),
            data_coding=repr(params["data_coding"]),
            registered_delivery=params["registered_delivery"].receipt.name,
            validity_period=params["validity_period"],
            short_message=params["short_message"].hex(),
        )
        reactor.callLater(0.01, send_receipt, smpp, pdu, message_id)
        return DataHandlerResponse(status=pdu_types.CommandStatus.ESME_ROK, message_id=message_id)

    config = SMPPServerConfig(
        msgHandler=on_message,
        systems={"carrierd": {"max_bindings": 2}},
        enquireLinkTimerSecs=SERVER_ENQUIRE_LINK_S,
    )
    realm: Any = Realm()
    checker: Any = Checker()
    factory = SMPPServerFactory(config, auth_portal=portal.Portal(realm, [checker]))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    report(event="listening", port=port.getHost().port)
    reactor.run()


@dataclass
class TwistedSmsc:
    process: asyncio.subprocess.Process
    port: int
    events: list[dict[str, Any]] = field(default_factory=list)

    async def wait_for_events(self, kind: str, count: int) -> list[dict[str, Any]]:
        assert self.process.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while len(matching := [e for e in self.events if e["event"] == kind]) < count:
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"Twisted SMSC exited; events so far: {self.events}")
                if line.startswith(EVENT_MARK.encode()):
                    self.events.append(json.loads(line[len(EVENT_MARK) :]))
        return matching


@pytest.fixture
async def twisted_smsc(tmp_path: Path) -> AsyncIterator[TwistedSmsc]:
    stderr_path = tmp_path / "twisted-smsc.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from tests.integration.test_smpp_interop import serve_twisted; serve_twisted()",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        smsc = TwistedSmsc(process, port=0)
        try:
            [listening] = await smsc.wait_for_events("listening", 1)
        except AssertionError:
            raise AssertionError(stderr_path.read_text()) from None
        smsc.port = int(listening["port"])
        yield smsc
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def test_session_binds_submits_and_takes_receipts_from_twisted_smsc(
    twisted_smsc: TwistedSmsc,
) -> None:
    config = CarrierConfig(
        name="docomo",
        port=twisted_smsc.port,
        system_id="carrierd",
        password="secret",
        response_timeout_s=2.0,
        enquire_link_interval_s=0.2,
        reconnect_max_backoff_s=0.5,
    )
    delivered: list[DeliverSm | DataSm] = []
    session = SmppSession(config, "docomo-1", lambda pdu, bind_id: delivered.append(pdu))
    request = SmsRequest(
        message_id=7,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=("お" * 67, "知らせ"),
        expires_at=datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC),
    )
    pdus = build_submit_pdus(request, config)
    await session.start()
    try:
        assert session.health == "bound"

        results = await session.submit_all(pdus)

        assert [(r.outcome, r.message_id) for r in results] == [
            ("accepted", "tw0001"),
            ("accepted", "tw0002"),
        ]
        # Their decoder read what our encoder wrote.
        submits = await twisted_smsc.wait_for_events("submit_sm", 2)
        assert [bytes.fromhex(s["short_message"]) for s in submits] == [
            p.short_message for p in pdus
        ]
        first = submits[0]
        assert (first["system_id"], first["source_addr"], first["destination_addr"]) == (
            "carrierd",
            "0120123456",
            "819012345678",
        )
        assert (first["source_addr_ton"], first["dest_addr_ton"]) == ("NATIONAL", "INTERNATIONAL")
        assert first["udhi"] is True
        assert "UCS2" in first["data_coding"]
        assert first["registered_delivery"] == "SMSC_DELIVERY_RECEIPT_REQUESTED"
        assert first["validity_period"].startswith("2031-02-03 04:05:06")

        # Our decoder read their receipts; they read our deliver_sm_resp.
        answers = await twisted_smsc.wait_for_events("deliver_sm_resp", 2)
        assert [a["status"] for a in answers] == ["ESME_ROK", "ESME_ROK"]
        receipts = [
            parse_deliver(
                pdu,
                carrier="docomo",
                message_id_style="as_is",
                receipt_id_style="as_is",
                received_at=datetime.now(UTC),
            )
            for pdu in delivered
        ]
        assert [(r.smsc_message_id, r.stat) for r in receipts if isinstance(r, Receipt)] == [
            ("tw0001", "DELIVRD"),
            ("tw0002", "DELIVRD"),
        ]

        # Idle for a while: their enquire_link and ours are answered both ways.
        await asyncio.sleep(SERVER_ENQUIRE_LINK_S * 3)
        assert session.health == "bound"
        assert session.stats.dead_peers == 0
        assert session.stats.binds == 1
        assert (await session.submit(pdus[1])).outcome == "accepted"
    finally:
        await session.stop(drain_timeout_s=2.0)
    assert session.stats.binds == 1
    assert twisted_smsc.process.returncode is None  # still serving after our unbind


async def test_twisted_smsc_refuses_a_wrong_password(twisted_smsc: TwistedSmsc) -> None:
    config = CarrierConfig(
        name="docomo",
        port=twisted_smsc.port,
        system_id="carrierd",
        password="wrong",
        response_timeout_s=2.0,
        reconnect_max_backoff_s=5.0,
    )
    session = SmppSession(config, "docomo-1", lambda pdu, bind_id: None)
    await session.start()
    try:
        assert session.health == "connecting"
        assert session.stats.binds == 0
        assert (await session.submit(build_submit_pdus(_one_part(), config)[0])).outcome == (
            "unsent"
        )
    finally:
        await session.stop(drain_timeout_s=0.1)


def _one_part() -> SmsRequest:
    return SmsRequest(
        message_id=1,
        attempt=1,
        account_id="acme",
        msisdn="+819012345678",
        source_addr="0120123456",
        encoding="ucs2",
        parts=("テスト",),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
