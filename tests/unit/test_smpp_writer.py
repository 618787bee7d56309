"""CoalescingWriter: one transport write per loop iteration, order kept."""

from __future__ import annotations

import asyncio

from carrierd.smpp.writer import CoalescingWriter


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray) -> None:
        self.writes.append(bytes(data))


async def test_frames_of_one_iteration_leave_in_one_write_in_order() -> None:
    transport = RecordingTransport()
    writer = CoalescingWriter(lambda: transport)  # type: ignore[arg-type, return-value]
    writer.later(b"a")
    writer.later(b"b")
    assert transport.writes == []  # not before the end of the iteration
    await asyncio.sleep(0)
    assert transport.writes == [b"ab"]

    writer.later(b"c")
    writer.now(b"d")  # after what is buffered, at once
    assert transport.writes == [b"ab", b"cd"]
    await asyncio.sleep(0)
    assert transport.writes == [b"ab", b"cd"]  # nothing left for the scheduled flush

    writer.now(b"e")
    assert transport.writes == [b"ab", b"cd", b"e"]


async def test_a_closed_target_or_discard_drops_what_is_buffered() -> None:
    transport = RecordingTransport()
    open_ = True
    writer = CoalescingWriter(lambda: transport if open_ else None)  # type: ignore[arg-type, return-value]
    writer.later(b"lost")
    open_ = False
    await asyncio.sleep(0)
    open_ = True
    writer.later(b"dropped")
    writer.discard()
    await asyncio.sleep(0)
    writer.now(b"kept")
    assert transport.writes == [b"kept"]
