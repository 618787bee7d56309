"""systemd notifications (sd_notify) over NOTIFY_SOCKET.

The protocol is newline-separated ``KEY=value`` assignments in one
AF_UNIX datagram; a socket name starting with "@" is in the abstract
namespace. Without NOTIFY_SOCKET (not started by systemd, or tests) every
call is a no-op, so the daemon needs no "am I under systemd" branches.

A notification that cannot be delivered is logged and dropped: losing a
READY=1 makes systemd time the start out, which is visible; raising would
take the daemon down over a status message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("carrierd.ops.sdnotify")


class SystemdNotifier:
    """Reads the environment once; opens a socket only per message sent."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = self._socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval_s = self._parse_watchdog(env)

    @staticmethod
    def _socket_address(name: str) -> str | None:
        if not name:
            return None
        if name.startswith("@"):
            return "\0" + name[1:]
        return name

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> float | None:
        usec_text = env.get("WATCHDOG_USEC", "")
        if not usec_text:
            return None
        # WATCHDOG_PID names the process the watchdog is meant for; a child
        # that inherited the environment must not ping on its parent's behalf.
        pid_text = env.get("WATCHDOG_PID", "")
        if pid_text and pid_text != str(os.getpid()):
            return None
        try:
            usec = int(usec_text)
        except ValueError:
            return None
        if usec <= 0:
            return None
        # Ping at half the timeout so one late tick does not get us killed.
        return usec / 2 / 1_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """How often to call watchdog(), or None when no watchdog is set."""
        if self._address is None:
            return None
        return self._watchdog_interval_s

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines; True if the datagram left."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=repr(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def reloading(self) -> bool:
        # systemd pairs RELOADING=1 with the monotonic time to tell this
        # reload from an earlier one; READY=1 ends it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self, stop_event: asyncio.Event) -> None:
        """Ping the watchdog until `stop_event` is set. Because the pings
        come from the event loop, a loop blocked for longer than WatchdogSec
        gets the daemon restarted, which is the point."""
        interval_s = self.watchdog_interval_s()
        if interval_s is None:
            return
        while not stop_event.is_set():
            self.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), interval_s)
