"""`carrierd optouts add/show/remove/list/export/import` through the real
HTTP API: the commands a support desk uses when a recipient calls."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from tests.clirun import in_process
from tests.integration.apiclient import make_config, running_api

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
SERVER_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


async def test_the_optouts_commands(
    dsn: str,
    db: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_api(make_config(dsn), db, FakeClock(T0)) as (base, _):
        env = {"CARRIERD_URL": base, "CARRIERD_TOKEN": "acme-token"}

        async def cli(*argv: str) -> tuple[int, str, str]:
            ran = await in_process(capsys, monkeypatch, "optouts", *argv, env=env)
            # The server's log lines share the captured output.
            out = "".join(
                line for line in ran.out.splitlines(keepends=True) if not SERVER_LOG.match(line)
            )
            return ran.code, out, ran.err

        assert await cli("add", "090-1234-5678", "+818012345678") == (
            0,
            "added 2, already listed 0\n",
            "",
        )
        code, out, _ = await cli("show", "09012345678")
        assert code == 0
        assert out.splitlines()[1].split() == ["+819012345678", "2026-12-01T10:00:00+09:00", "api"]
        code, out, _ = await cli("list", "--limit", "1", "--all")
        assert (code, len(out.splitlines())) == (0, 3)
        export = tmp_path / "optouts.csv"
        assert (await cli("export", "-o", str(export)))[0] == 0
        assert export.read_text().startswith("msisdn,added_at,source\n+81")
        assert (await cli("remove", "+819012345678"))[:2] == (0, "+819012345678 removed\n")
        code, _, err = await cli("show", "09012345678")
        assert (code, err.split(":")[0]) == (1, "carrierd optouts")
        assert "404 not_found" in err
        # The export back in: one number was removed meanwhile.
        assert (await cli("import", str(export)))[:2] == (0, "added 1, already listed 1\n")
        wrong = tmp_path / "wrong.csv"
        wrong.write_text("09012345678\n050-1234-5678\nabc\n")
        code, _, err = await cli("import", str(wrong))
        assert code == 1
        assert "row 2: ip_phone" in err and "row 3: not_a_number" in err
        code, _, err = await cli("add", "050-1234-5678")
        assert (code, "400 invalid_field" in err) == (1, True)
