"""Shared bench plumbing: a fresh database and a daemon in its own process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from carrierd.store.db import migrate

ROOT = Path(__file__).resolve().parent.parent


def server_dsn() -> str:
    dsn = os.environ.get("CARRIERD_DSN")
    if dsn:
        return dsn
    subprocess.run([str(ROOT / "scripts/localpg.sh"), "start"], check=True)
    out = subprocess.run(
        [str(ROOT / "scripts/localpg.sh"), "dsn"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextmanager
def fresh_database(prefix: str, admin_dsn: str | None = None) -> Iterator[str]:
    """A migrated database of its own on `admin_dsn`'s server (default: the
    project-local one), dropped afterwards."""
    admin = admin_dsn or server_dsn()
    name = f"carrierd_bench_{prefix}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await migrate(with_database(admin, name))
        # The WAL of the run before checkpointed now, not in the middle of
        # this one: runs compared with each other start alike.
        await conn.execute("CHECKPOINT")
        await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(create())
    try:
        yield with_database(admin, name)
    finally:
        # BENCH_KEEP_DB=1 leaves the database behind, to query after a run.
        if not os.environ.get("BENCH_KEEP_DB"):
            asyncio.run(drop())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def daemon_process(
    config_text: str,
    dsn: str,
    port: int,
    daemon_id: str | None = None,
    log_path: Path | None = None,
    start_timeout_s: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon in its own process, its output on ours or appended to `log_path`."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config_text)
        path = f.name
    env = {
        **os.environ,
        "CARRIERD_DSN": dsn,
        "CARRIERD_HTTP_PORT": str(port),
        "CARRIERD_LOG_LEVEL": "warning",
        **({"CARRIERD_DAEMON_ID": daemon_id} if daemon_id else {}),
    }
    # BENCH_PROFILE=<file>: the daemon runs under cProfile, stats to <file>.
    profile = os.environ.get("BENCH_PROFILE")
    cmd = [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else [])]
    cmd += ["-m", "carrierd", "run", "--config", path]
    log = log_path.open("ab") if log_path is not None else None
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    try:
        wait_for_port(port, proc, start_timeout_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(path)
        if log is not None:
            log.close()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("daemon did not open its HTTP port")


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def reassign_sim_process(
    port: int,
    token: str,
    latency_ms: float,
    error_share: float = 0.0,
    log_path: Path | None = None,
    data_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`carrierd sim reassign` in its own process (DOMAIN §13's service),
    its errors on ours or appended to `log_path`; its number histories from
    `data_path` when given."""
    cmd = [
        sys.executable,
        "-m",
        "carrierd",
        "sim",
        "reassign",
        "--reassign-port",
        str(port),
        "--reassign-token",
        token,
        "--reassign-latency-ms",
        f"{latency_ms:g}",
        "--reassign-error-share",
        f"{error_share:g}",
        "--log-level",
        "warning",
        *(["--reassign-data", str(data_path)] if data_path is not None else []),
    ]
    if log_path is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
