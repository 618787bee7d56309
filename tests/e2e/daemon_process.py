"""Run the real daemon as a child process, as systemd would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    def __init__(
        self,
        config_path: Path,
        dsn: str,
        port: int,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.dsn = dsn
        self.port = port
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        env = {
            **os.environ,
            "CARRIERD_DSN": self.dsn,
            "CARRIERD_HTTP_PORT": str(self.port),
            "CARRIERD_LOG_LEVEL": "warning",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        # Popen returns at once; the loop below polls, never blocks on the child.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "carrierd", "run", "--config", str(self.config_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                    )
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("daemon did not come up")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(int(timeout_s * 10)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("daemon did not stop on SIGTERM")
