"""A daemon that cannot start says why in one line and exits non-zero,
instead of a Python traceback: a busy HTTP port, a bad override."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
