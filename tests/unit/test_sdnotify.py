"""sd_notify over a real AF_UNIX datagram socket bound by the test, and the
unit file that relies on it."""

from __future__ import annotations

import asyncio
import configparser
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from carrierd.daemon import Daemon
from carrierd.ops.sdnotify import SystemdNotifier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_everything_is_a_no_op_without_notify_socket() -> None:
    notifier = SystemdNotifier(env={"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s() is None


def test_messages_reach_a_filesystem_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert notifier.ready("accepting on 127.0.0.1:8080")
    assert sock.recv(4096) == b"READY=1\nSTATUS=accepting on 127.0.0.1:8080"
    assert notifier.status("draining")
    assert sock.recv(4096) == b"STATUS=draining"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=") and reloading[1].split("=")[1].isdigit()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"carrierd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = SystemdNotifier(env={"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"


def test_a_missing_socket_is_reported_not_raised() -> None:
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": "/nonexistent/carrierd/notify"})
    assert notifier.enabled
    assert notifier.ready() is False


def test_watchdog_interval_is_half_the_timeout_and_for_us_only() -> None:
    socket_env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert SystemdNotifier(env={**socket_env}).watchdog_interval_s() is None
    assert SystemdNotifier(
        env={**socket_env, "WATCHDOG_USEC": "30000000"}
    ).watchdog_interval_s() == pytest.approx(15.0)
    assert SystemdNotifier(
        env={**socket_env, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    ).watchdog_interval_s() == pytest.approx(15.0)
    assert (
        SystemdNotifier(
            env={**socket_env, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        ).watchdog_interval_s()
        is None
    )
    assert (
        SystemdNotifier(env={**socket_env, "WATCHDOG_USEC": "soon"}).watchdog_interval_s() is None
    )


async def test_run_watchdog_pings_until_stopped(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    # 20 ms timeout: pings every 10 ms.
    notifier = SystemdNotifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    loop = asyncio.get_running_loop()
    for _ in range(3):
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 2.0) == b"WATCHDOG=1"
    stop.set()
    await asyncio.wait_for(task, 2.0)


async def test_run_watchdog_returns_at_once_without_a_watchdog() -> None:
    await asyncio.wait_for(SystemdNotifier(env={}).run_watchdog(asyncio.Event()), 1.0)


def test_unit_file_waits_for_ready_and_outlasts_the_drain() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd/carrierd.service")
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] == "carrierd"
    assert " migrate " in service["ExecStartPre"]
    assert service["ExecStartPre"].endswith("--config /etc/carrierd/carrierd.toml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    drain_timeout_s = Daemon.__dataclass_fields__["drain_timeout_s"].default
    assert isinstance(drain_timeout_s, float)
    assert float(service["TimeoutStopSec"]) > drain_timeout_s
    assert float(service["WatchdogSec"]) > 0
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[hardening] == "yes"
    assert service["ProtectSystem"] == "strict"
