"""An SMPP implementation we did not write talks to our SMSC simulator.

smpp.twisted3 (the Twisted ESME of the Jasmin/Mozes lineage, with smpp.pdu3
as its codec) binds, submits, queries and takes a delivery receipt. Twisted's
reactor cannot share the asyncio loop, so the client runs as a subprocess
that prints what it saw as JSON while the simulator serves in this loop.

The client protocol is driven through a small ClientFactory of our own:
smpp.twisted.client imports pyOpenSSL at module level, which the test
environment does not install and which plain TCP does not need.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from carrierd.sim.smsc import CarrierSimConfig, SmscSimConfig, SmscSimulator

WAIT_S = 60.0  # an upper bound for a Python subprocess, not a speed claim

_TWISTED_ESME = r"""
import json
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory

from smpp.pdu.operations import QuerySM, SubmitSM
from smpp.pdu.pdu_types import (
    AddrNpi,
    AddrTon,
    CommandId,
    DataCoding,
    DataCodingDefault,
    DataCodingScheme,
    EsmClass,
    EsmClassMode,
    EsmClassType,
    RegisteredDelivery,
    RegisteredDeliveryReceipt,
)
from smpp.twisted.config import SMPPClientConfig
from smpp.twisted.protocol import SMPPClientProtocol


class Factory(ClientFactory):
    protocol = SMPPClientProtocol

    def __init__(self, config):
        self.config = config
        self.connected = defer.Deferred()

    def getConfig(self):
        return self.config

    def buildProtocol(self, addr):
        smpp = ClientFactory.buildProtocol(self, addr)
        reactor.callLater(0, self.connected.callback, smpp)
        return smpp

    def clientConnectionFailed(self, connector, reason):
        self.connected.errback(reason)


def text(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if hasattr(value, "name"):
        return value.name
    return None if value is None else str(value)


@defer.inlineCallbacks
def bind(host, port, password, on_data):
    config = SMPPClientConfig(
        host=host, port=port, username="demo", password=password, enquireLinkTimerSecs=30
    )
    factory = Factory(config)
    reactor.connectTCP(host, port, factory)
    smpp = yield factory.connected
    yield smpp.bindAsTransceiver(on_data)
    return smpp


@defer.inlineCallbacks
def scenario(host, port):
    result = {}
    try:
        yield bind(host, port, "wrong", lambda smpp, pdu: None)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status", None)
        result["bad_password"] = text(status) or repr(exc)

    receipt = defer.Deferred()

    def on_data(smpp, pdu):
        if pdu.id == CommandId.deliver_sm and not receipt.called:
            receipt.callback(pdu)

    smpp = yield bind(host, port, "demo", on_data)
    submitted = yield smpp.sendDataRequest(
        SubmitSM(
            source_addr_ton=AddrTon.ALPHANUMERIC,
            source_addr="CARRIERD",
            dest_addr_ton=AddrTon.INTERNATIONAL,
            dest_addr_npi=AddrNpi.ISDN,
            destination_addr="819012345678",
            esm_class=EsmClass(EsmClassMode.DEFAULT, EsmClassType.DEFAULT),
            registered_delivery=RegisteredDelivery(
                RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED
            ),
            data_coding=DataCoding(DataCodingScheme.DEFAULT, DataCodingDefault.UCS2),
            short_message="こんにちは".encode("utf-16-be"),
        )
    )
    result["submit_status"] = text(submitted.response.status)
    result["message_id"] = text(submitted.response.params["message_id"])
    delivered = yield receipt
    params = delivered.params
    result["receipt"] = {
        "esm_class_type": text(params["esm_class"].type),
        "source_addr": text(params["source_addr"]),
        "destination_addr": text(params["destination_addr"]),
        "receipted_message_id": text(params.get("receipted_message_id")),
        "message_state": text(params.get("message_state")),
        "short_message": text(params["short_message"]),
    }
    queried = yield smpp.sendRequest(
        QuerySM(
            message_id=result["message_id"],
            source_addr_ton=AddrTon.ALPHANUMERIC,
            source_addr_npi=AddrNpi.UNKNOWN,
            source_addr="CARRIERD",
        ),
        10,
    )
    result["query_state"] = text(queried.response.params["message_state"])
    yield smpp.unbindAndDisconnect()
    result["unbound"] = True
    return result


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    outcome = {}

    def done(value):
        outcome["value"] = value

    def failed(failure):
        outcome["error"] = failure.getTraceback()

    deferred = scenario(host, port)
    deferred.addCallbacks(done, failed)
    deferred.addBoth(lambda _: reactor.stop())
    reactor.callLater(30, lambda: reactor.running and reactor.stop())
    reactor.run()
    print(json.dumps(outcome))


main()
"""


async def run_twisted_esme(port: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TWISTED_ESME,
        "127.0.0.1",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, stderr.decode(errors="replace")
    lines = stdout.decode().strip().splitlines()
    assert lines, stderr.decode(errors="replace")
    outcome: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in outcome, outcome["error"]
    assert "value" in outcome, f"timed out; stderr:\n{stderr.decode(errors='replace')}"
    value: dict[str, Any] = outcome["value"]
    return value


async def test_twisted_esme_binds_submits_queries_and_gets_a_receipt() -> None:
    config = SmscSimConfig(
        carriers={
            "docomo": CarrierSimConfig(
                subscriber_prefixes=("0",),
                receipt_delay_min_s=0.0,
                receipt_delay_max_s=0.0,
                submit_resp_id_format="hex",
                receipt_id_format="hex",
            )
        }
    )
    sim = SmscSimulator(config)
    ports = await sim.start()
    try:
        result = await run_twisted_esme(ports["docomo"])
    finally:
        await sim.stop()

    assert result["bad_password"] == "ESME_RINVPASWD"
    assert result["submit_status"] == "ESME_ROK"
    message_id = result["message_id"]
    receipt = result["receipt"]
    assert receipt["esm_class_type"] == "SMSC_DELIVERY_RECEIPT"
    assert receipt["source_addr"] == "819012345678"
    assert receipt["destination_addr"] == "CARRIERD"
    assert receipt["receipted_message_id"] == message_id
    assert receipt["message_state"] == "DELIVERED"
    assert receipt["short_message"].startswith(f"id:{message_id} sub:001 dlvrd:001")
    assert "stat:DELIVRD err:000" in receipt["short_message"]
    assert result["query_state"] == "DELIVERED"
    assert result["unbound"] is True

    counters = sim.counters.carriers["docomo"]
    assert (counters.binds, counters.bind_failures) == (1, 1)
    assert (counters.accepted, counters.receipts_sent, counters.deliveries_acknowledged) == (
        1,
        1,
        1,
    )
    assert sim.counters.handset_text_parts == {("+819012345678", "こんにちは"): 1}
