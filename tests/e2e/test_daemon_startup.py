"""A daemon that cannot start says why in one line and exits non-zero,
instead of a Python traceback: a busy HTTP port, a bad override. One that
starts settles its heap."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from carrierd.daemon import GC_YOUNG_THRESHOLD
from tests.e2e.daemon_process import DaemonProcess, free_port

CONFIG = '[accounts.acme]\ntokens = ["acme-token"]\n'


def run_daemon(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carrierd", "run", "--config", str(config_path)],
        env={**os.environ, "CARRIERD_LOG_LEVEL": "warning", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_http_port_is_one_line_and_a_failed_exit(dsn: str, tmp_path: Path) -> None:
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(CONFIG)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_daemon(config_path, {"CARRIERD_DSN": dsn, "CARRIERD_HTTP_PORT": str(port)})
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"carrierd: cannot listen on 127.0.0.1:{port} "
        "(http.host, http.port from CARRIERD_HTTP_PORT): Address already in use"
    ]


def test_a_bad_log_level_override_stops_run_before_it_starts(tmp_path: Path) -> None:
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(CONFIG)
    done = run_daemon(
        config_path, {"CARRIERD_DSN": "postgresql://unused/db", "CARRIERD_LOG_LEVEL": "verbose"}
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert "daemon.log_level (CARRIERD_LOG_LEVEL): must be one of" in done.stderr


def test_a_running_daemon_leaves_its_startup_heap_out_of_collections(
    dsn: str, tmp_path: Path
) -> None:
    # daemon.settle_heap: without it, every full collection walks the
    # modules and tables startup built, and a batch of messages pushes its
    # rows into the older generations after 700 allocations.
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(CONFIG)
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(
        config_path, dsn, free_port(), log_path, extra_env={"CARRIERD_LOG_LEVEL": "info"}
    )

    async def start_and_stop() -> None:
        await daemon.start()
        assert await daemon.terminate() == 0

    asyncio.run(start_and_stop())
    ready = [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "ready"
    ]
    assert len(ready) == 1, log_path.read_text()[-2000:]
    assert ready[0]["gc_frozen_objects"] > 10_000
    assert ready[0]["gc_thresholds"][0] == GC_YOUNG_THRESHOLD
