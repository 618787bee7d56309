"""Frames written in one loop iteration leave in one transport write.

A receipt flush answers hundreds of deliver_sm at once, and an SMSC answers
a window of submits at once: a socket write per PDU was the largest single
cost of both sides under load. Used by the client sessions and the SMSC
simulator alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class CoalescingWriter:
    """Buffers frames until the end of the loop iteration (`later`), or
    writes at once after whatever is buffered (`now`): order is kept.

    `target` returns the transport to write to, or None when the connection
    can take no more (closed, closing): what is buffered is then dropped,
    as the transport's own buffer would be.
    """

    __slots__ = ("_scheduled", "_target", "_unsent")

    def __init__(self, target: Callable[[], asyncio.WriteTransport | None]) -> None:
        self._target = target
        self._unsent = bytearray()
        self._scheduled = False

    def later(self, frame: bytes) -> None:
        self._unsent += frame
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def now(self, frames: bytes | bytearray) -> None:
        if self._unsent:
            self._unsent += frames
            self.flush()
            return
        transport = self._target()
        if transport is not None:
            transport.write(frames)

    def flush(self) -> None:
        self._scheduled = False
        if self._unsent:
            transport = self._target()
            if transport is not None:
                transport.write(bytes(self._unsent))
            self._unsent.clear()

    def discard(self) -> None:
        """Drop what is buffered (the connection is being aborted)."""
        self._unsent.clear()
