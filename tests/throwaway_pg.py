"""A PostgreSQL cluster of a test's own, to stop and restart at will.

Built like scripts/localpg.sh builds the project-local one: the Debian
server binaries, a Unix socket only, and the `postgres` system user when
the tests run as root (the server refuses to run as root). The cluster
lives in a fresh directory under the system temporary directory, whose
ancestors the `postgres` user can traverse (pytest's own tmp_path is 0700).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

ShutdownMode = Literal["smart", "fast", "immediate"]


def server_bindir() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            return bindir
    return None


class ThrowawayCluster:
    def __init__(self, bindir: Path) -> None:
        self._bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="carrierd-outage-pg-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_path = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True)

    def init(self) -> None:
        self._run("mkdir", "-p", str(self.data_dir), str(self.socket_dir))
        self._run(
            str(self._bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        conf = self.data_dir / "postgresql.conf"
        # Test-only settings: nothing here must survive an OS crash, and a
        # small server starts and recovers quickly.
        extra = (
            "\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "max_connections = 60\n"
            "shared_buffers = 32MB\n"
            "fsync = off\n"
            "full_page_writes = off\n"
        )
        self._run("sh", "-c", f"cat >> {conf} <<'CONF'{extra}CONF\n")

    def start(self) -> None:
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "start",
        )

    def is_running(self) -> bool:
        status = self._run(
            str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "status", check=False
        )
        return status.returncode == 0

    def stop(self, mode: ShutdownMode = "fast") -> None:
        self._run(str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self, mode: ShutdownMode) -> None:
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )

    def destroy(self) -> None:
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            "immediate",
            "stop",
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
