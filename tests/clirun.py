"""Run `carrierd` command lines in tests: in a process of their own, as a
user runs them, or through `main` in a thread (the same code without the
interpreter's start-up, while the test's event loop serves the API)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

import pytest

from carrierd.__main__ import main


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def carrierd_cli(*argv: str, env: dict[str, str] | None = None) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carrierd",
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def in_process(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    env: dict[str, str],
) -> Ran:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)
