"""A small SMSC for the SMPP session tests and the bench, built on our codec.

Not the simulator (src/carrierd/sim/smsc.py): it knows one account, keeps everything
it sees in lists the tests read, and its behaviour is a set of knobs the tests flip
while it runs:

    stub = StubSmsc()
    await stub.start()                          # 127.0.0.1, port 0 -> stub.port
    stub.behaviour.response_delay_s = 0.05
    stub.behaviour.submit_status = lambda pdu, index: 0x58 if index == 3 else 0
    ...
    assert stub.max_outstanding <= 4
    await stub.stop()

Run on its own (the bench starts it in another process):

    python -m tests.integration.smsc_stub --receipts tlv --id-style hex
    # prints "PORT <n>" on stdout, serves until SIGTERM or SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from carrierd.smpp.pdu import (
    ESM_CLASS_RECEIPT,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandStatus,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    Framer,
    GenericNack,
    MalformedPdu,
    MessageState,
    Pdu,
    StreamBroken,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnknownPdu,
    encode,
    is_response,
)

ReceiptMode = Literal["none", "tlv", "text"]

_STATES = {
    "DELIVRD": MessageState.DELIVERED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "EXPIRED": MessageState.EXPIRED,
    "REJECTD": MessageState.REJECTED,
}


@dataclass
class StubBehaviour:
    """Knobs; change them at any time, they apply to the next PDU."""

    answer_submits: bool = True
    response_delay_s: float = 0.0
    # (pdu, 0-based index over all submits received) -> command_status to answer
    submit_status: Callable[[SubmitSm, int], int] = lambda pdu, index: 0
    # (pdu, index) -> raw frame to send instead of a proper submit_sm_resp
    raw_submit_response: Callable[[SubmitSm, int], bytes | None] = lambda pdu, index: None
    message_id_style: Literal["decimal", "hex"] = "decimal"
    receipts: ReceiptMode = "none"
    receipt_stat: str = "DELIVRD"
    receipt_before_response: bool = False
    answer_enquire_link: bool = True
    bind_status: int = 0
    # Accept the bind, then drop the connection at once (an SMSC over its bind limit).
    drop_after_bind: bool = False
    # Abort the connection on receiving the Nth submit (1-based, counted over the
    # stub's life), without answering it.
    disconnect_on_submit: int | None = None


@dataclass
class StubConnection:
    stub: StubSmsc
    transport: asyncio.Transport | None = None
    framer: Framer = field(default_factory=Framer)
    bound_as: str | None = None
    outstanding: int = 0
    submits_received: int = 0
    last_sequence: int = 0

    def next_sequence(self) -> int:
        self.last_sequence = self.last_sequence % 0x7FFFFFFF + 1
        return self.last_sequence

    def send(self, pdu: Pdu) -> None:
        self.send_raw(encode(pdu))

    def send_raw(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)


class _StubProtocol(asyncio.Protocol):
    def __init__(self, stub: StubSmsc) -> None:
        self.connection = StubConnection(stub)
        self.stub = stub

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport.
        self.connection.transport = cast(asyncio.Transport, transport)
        self.stub.connections.append(self.connection)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.transport = None
        self.stub.disconnects += 1

    def data_received(self, data: bytes) -> None:
        self.connection.framer.feed(data)
        while self.connection.transport is not None:
            try:
                event = self.connection.framer.next_event()
            except StreamBroken:
                self.connection.transport.abort()
                return
            if event is None:
                return
            self.stub.handle(self.connection, event)


class StubSmsc:
    def __init__(self, behaviour: StubBehaviour | None = None) -> None:
        self.behaviour = behaviour or StubBehaviour()
        self.port = 0
        self._server: asyncio.Server | None = None
        self.connections: list[StubConnection] = []
        self.binds: list[BindTransceiver | BindTransmitter | BindReceiver] = []
        self.submits: list[SubmitSm] = []
        self.client_responses: list[Pdu] = []  # deliver_sm_resp, generic_nack, ...
        self.unreadable: list[MalformedPdu | UnknownPdu] = []
        self.enquire_links = 0
        self.unbinds = 0
        self.disconnects = 0
        self.max_outstanding = 0
        self.receipts_sent = 0
        self._last_message_id = 0

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _StubProtocol(self), host, port, ssl=ssl_context
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- test helpers ---------------------------------------------------------------------

    @property
    def bound_connections(self) -> list[StubConnection]:
        return [c for c in self.connections if c.transport is not None and c.bound_as]

    def drop_connections(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()

    def send_to_clients(self, pdu_or_frame: Pdu | bytes) -> None:
        frame = pdu_or_frame if isinstance(pdu_or_frame, bytes) else encode(pdu_or_frame)
        for connection in self.bound_connections:
            connection.send_raw(frame)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        # Polls: predicates read client-side state too, which the stub cannot signal.
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    # -- protocol ---------------------------------------------------------------------------

    def handle(self, connection: StubConnection, event: Pdu | MalformedPdu) -> None:
        if isinstance(event, MalformedPdu | UnknownPdu):
            self.unreadable.append(event)
            if not is_response(event.command_id):
                status = (
                    event.nack_status
                    if isinstance(event, MalformedPdu)
                    else CommandStatus.ESME_RINVCMDID
                )
                connection.send(
                    GenericNack(sequence_number=event.sequence_number, command_status=status)
                )
        elif is_response(event.command_id):
            self.client_responses.append(event)
        elif isinstance(event, BindTransceiver | BindTransmitter | BindReceiver):
            self._bind(connection, event)
        elif isinstance(event, SubmitSm):
            self._submit(connection, event)
        elif isinstance(event, EnquireLink):
            self.enquire_links += 1
            if self.behaviour.answer_enquire_link:
                connection.send(EnquireLinkResp(sequence_number=event.sequence_number))
        elif isinstance(event, Unbind):
            self.unbinds += 1
            connection.send(UnbindResp(sequence_number=event.sequence_number))
            if connection.transport is not None:
                connection.transport.close()
        else:
            connection.send(
                GenericNack(
                    sequence_number=event.sequence_number,
                    command_status=CommandStatus.ESME_RINVCMDID,
                )
            )

    def _bind(
        self, connection: StubConnection, pdu: BindTransceiver | BindTransmitter | BindReceiver
    ) -> None:
        self.binds.append(pdu)
        status = self.behaviour.bind_status
        response_class: type[BindTransceiverResp | BindTransmitterResp | BindReceiverResp]
        if isinstance(pdu, BindTransceiver):
            response_class = BindTransceiverResp
        elif isinstance(pdu, BindTransmitter):
            response_class = BindTransmitterResp
        else:
            response_class = BindReceiverResp
        response = response_class(
            sequence_number=pdu.sequence_number,
            command_status=status,
            system_id="stub" if status == 0 else "",
        )
        if status == 0:
            connection.bound_as = type(pdu).__name__
        connection.send(response)
        if self.behaviour.drop_after_bind and connection.transport is not None:
            connection.transport.close()

    def _submit(self, connection: StubConnection, pdu: SubmitSm) -> None:
        index = len(self.submits)
        self.submits.append(pdu)
        behaviour = self.behaviour
        if behaviour.disconnect_on_submit == index + 1 and connection.transport is not None:
            connection.transport.abort()
            return
        connection.submits_received += 1
        connection.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, connection.outstanding)
        if not behaviour.answer_submits:
            return
        raw = behaviour.raw_submit_response(pdu, index)
        status = behaviour.submit_status(pdu, index)
        message_id = ""
        if raw is None and status == 0:
            self._last_message_id += 1
            message_id = self.format_message_id(self._last_message_id)
        response = raw or encode(
            SubmitSmResp(
                sequence_number=pdu.sequence_number,
                command_status=status,
                message_id=message_id,
            )
        )
        if behaviour.response_delay_s > 0:
            asyncio.get_running_loop().call_later(
                behaviour.response_delay_s, self._answer, connection, pdu, response, message_id
            )
        else:
            self._answer(connection, pdu, response, message_id)

    def _answer(
        self, connection: StubConnection, pdu: SubmitSm, response: bytes, message_id: str
    ) -> None:
        connection.outstanding -= 1
        wants_receipt = message_id and self.behaviour.receipts != "none" and pdu.registered_delivery
        if wants_receipt and self.behaviour.receipt_before_response:
            self._send_receipt(connection, pdu, message_id)
        connection.send_raw(response)
        if wants_receipt and not self.behaviour.receipt_before_response:
            self._send_receipt(connection, pdu, message_id)

    def format_message_id(self, number: int) -> str:
        return f"{number:x}" if self.behaviour.message_id_style == "hex" else str(number)

    def _send_receipt(self, submitted_on: StubConnection, pdu: SubmitSm, message_id: str) -> None:
        # Receipts go back on a connection that can receive: the submitting one when
        # it is a transceiver, else a bound receiver.
        target = submitted_on if submitted_on.bound_as == "BindTransceiver" else None
        if target is None:
            target = next((c for c in self.bound_connections if c.bound_as == "BindReceiver"), None)
        if target is None:
            return
        stat = self.behaviour.receipt_stat
        stamp = time.strftime("%y%m%d%H%M", time.gmtime())
        text = (
            f"id:{message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{stamp} done date:{stamp} stat:{stat} err:000 text:"
        )
        tlv = self.behaviour.receipts == "tlv"
        target.send(
            DeliverSm(
                sequence_number=target.next_sequence(),
                source_addr_ton=pdu.dest_addr_ton,
                source_addr_npi=pdu.dest_addr_npi,
                source_addr=pdu.destination_addr,
                dest_addr_ton=pdu.source_addr_ton,
                dest_addr_npi=pdu.source_addr_npi,
                destination_addr=pdu.source_addr,
                esm_class=ESM_CLASS_RECEIPT,
                short_message=text.encode("ascii"),
                receipted_message_id=message_id if tlv else None,
                message_state=_STATES.get(stat, MessageState.UNKNOWN) if tlv else None,
            )
        )
        self.receipts_sent += 1


async def _serve(receipts: ReceiptMode, id_style: Literal["decimal", "hex"], port: int) -> None:
    stub = StubSmsc(StubBehaviour(receipts=receipts, message_id_style=id_style))
    await stub.start(port=port)
    print(f"PORT {stub.port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await stub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--receipts", choices=("none", "tlv", "text"), default="tlv")
    parser.add_argument("--id-style", choices=("decimal", "hex"), default="decimal")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_serve(args.receipts, args.id_style, args.port))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve(args.receipts, args.id_style, args.port))


if __name__ == "__main__":
    main()
