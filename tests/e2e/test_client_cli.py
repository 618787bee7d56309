"""The client commands against the real daemon: `carrierd token new` makes
the token the daemon's configuration accepts, and send, status, messages
and billing read and write through its HTTP API. The first commands run as
a user runs them (a process of their own); the rest through `main` in a
thread, which is the same code without the interpreter's start-up."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import carrierd
from carrierd.__main__ import main
from carrierd.store.db import Database
from tests.clirun import Ran, carrierd_cli, in_process
from tests.e2e.daemon_process import DaemonProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
JST_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00")


@dataclass
class Running:
    env: dict[str, str]
    token: str


@pytest.fixture
async def daemon(
    dsn: str, db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Running]:
    capsys.readouterr()
    made = Ran(main(["token", "new", "--json"]), *capsys.readouterr())
    assert made.code == 0, made.err
    minted = json.loads(made.out)
    # The daemon knows only the digest `token new` printed.
    config_path = tmp_path / "carrierd.toml"
    config_path.write_text(
        "[accounts.acme]\n"
        f'token_sha256 = ["{minted["token_sha256"]}"]\n'
        'senders = { docomo = "0120111111" }\n'
    )
    port = free_port()
    process = DaemonProcess(config_path, dsn, port, tmp_path / "daemon.log")
    await process.start()
    try:
        yield Running(
            {"CARRIERD_URL": process.base, "CARRIERD_TOKEN": minted["token"]}, minted["token"]
        )
    finally:
        await process.terminate()


async def test_token_new_prints_a_token_and_its_digest() -> None:
    made = await carrierd_cli("token", "new", "--json")
    minted = json.loads(made.out)
    assert len(minted["token"]) >= 40
    assert hashlib.sha256(minted["token"].encode()).hexdigest() == minted["token_sha256"]
    human = await carrierd_cli("token", "new", "--account", "acme")
    token = re.search(r"^token\s+(\S+)$", human.out, re.MULTILINE)
    digest = re.search(r"^token_sha256\s+([0-9a-f]{64})$", human.out, re.MULTILINE)
    assert token and digest and token.group(1) != minted["token"]
    assert hashlib.sha256(token.group(1).encode()).hexdigest() == digest.group(1)
    assert f'token_sha256 = ["{digest.group(1)}"]' in human.out
    assert "[accounts.acme]" in human.out


async def test_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ran = await carrierd_cli("--version")
    assert ran.code == 0
    assert ran.out.strip() == f"carrierd {carrierd.__version__}"
    assert carrierd.__version__ == pyproject["project"]["version"]


async def test_send_status_find_bill_and_refusals_through_the_daemon(
    daemon: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cli(*argv: str, env: dict[str, str] = daemon.env) -> Ran:
        return await in_process(capsys, monkeypatch, *argv, env=env)

    sent = await carrierd_cli(
        "send",
        "--to",
        "090-1234-5678",
        "--to",
        "080-1111-2222",
        "--text",
        "ご予約ありがとうございます。",
        "--client-ref",
        "order-7",
        env=daemon.env,
    )
    assert sent.code == 0, sent.err
    assert sent.out.splitlines()[0] == "accepted 2, rejected 0"
    rows = [line.split() for line in sent.out.splitlines()[1:]]
    assert rows[0] == ["INDEX", "ID", "PARTS"]
    first_id, second_id = rows[1][1], rows[2][1]

    status = await cli("status", first_id)
    assert status.code == 0, status.err
    lines = status.out.splitlines()
    assert re.match(rf"^id\s+{first_id}$", lines[0])
    assert any(re.match(r"^to\s+\+819012345678$", line) for line in lines)
    assert any(re.match(r"^client_ref\s+order-7-1$", line) for line in lines)
    accepted = next(line for line in lines if line.startswith("accepted_at"))
    assert JST_INSTANT.search(accepted), accepted
    assert "history" in lines
    as_json = await cli("status", first_id, "--json")
    document = json.loads(as_json.out)
    assert document["id"] == first_id and document["client_ref"] == "order-7-1"
    assert document["to"] == "+819012345678"

    found = await cli("messages", "--client-ref", "order-7-2")
    assert found.code == 0, found.err
    header, row = found.out.splitlines()
    assert header.split()[:5] == ["ID", "STATE", "CHANNEL", "TO", "CARRIER"]
    assert row.split()[0] == second_id and "+818011112222" in row and "order-7-2" in row
    # The ACCEPTED column starts where its header does: aligned columns.
    assert JST_INSTANT.match(row[header.index("ACCEPTED") :])

    billing = await cli("billing", "--month", "2026-11", "--json")
    assert json.loads(billing.out) == {
        "account": "acme",
        "month": "2026-11",
        "sms_units": 0,
        "rcs_units": 0,
        "reassigned_checks": 0,
        "sms_units_by_route": {},
    }
    human = await cli("billing", "--month", "2026-11")
    assert re.search(r"^month\s+2026-11$", human.out, re.MULTILINE)

    # Cancel, and find it by state, through the daemon's real routes.
    next_week = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    later = await cli(
        "send", "--to", "090-3333-4444", "--text", "来週のご案内", "--send-at", next_week
    )
    assert later.code == 0, later.err
    later_id = later.out.splitlines()[2].split()[1]
    cancelled = await cli("cancel", later_id, "--json")
    assert cancelled.code == 0, cancelled.err
    assert json.loads(cancelled.out)["state"] == "cancelled"
    again = await cli("cancel", later_id)
    assert again.code == 1 and " 409 " in again.err
    by_state = await cli("messages", "--state", "cancelled", "--json")
    assert [m["id"] for m in json.loads(by_state.out)["messages"]] == [later_id]

    # Refusals: one line on stderr and exit status 1.
    rejected = await cli("send", "--to", "12", "--text", "hello")
    assert rejected.code == 1
    assert rejected.out.splitlines()[0] == "accepted 0, rejected 1"
    assert "bad_length" in rejected.out

    bad_month = await cli("billing", "--month", "2026-13")
    assert bad_month.code == 1
    assert bad_month.err.splitlines() == [
        "carrierd billing: 400 invalid_field: expected YYYY-MM (a JST calendar month),"
        " got '2026-13' (field month)"
    ]

    unknown = await cli("status", "999999")
    assert (unknown.code, unknown.out) == (1, "")
    assert unknown.err.startswith("carrierd status: 404 not_found:")

    wrong_token = await cli("status", "1", env={**daemon.env, "CARRIERD_TOKEN": "not-a-token"})
    assert wrong_token.code == 1 and " 401 " in wrong_token.err
    # --token wins over the environment.
    by_flag = await cli(
        "status",
        "999999",
        "--token",
        daemon.token,
        env={**daemon.env, "CARRIERD_TOKEN": "not-a-token"},
    )
    assert " 404 " in by_flag.err


async def test_without_a_token_or_a_daemon() -> None:
    no_token = await carrierd_cli("status", "1", env={"CARRIERD_TOKEN": ""})
    assert no_token.code == 2
    assert "pass --token or set CARRIERD_TOKEN" in no_token.err
    nobody = await carrierd_cli(
        "status", "1", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t"
    )
    assert nobody.code == 1
    assert nobody.err.startswith("carrierd status: cannot reach http://127.0.0.1:")
    assert "Traceback" not in nobody.err
