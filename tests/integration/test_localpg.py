"""The project-local PostgreSQL (scripts/localpg.sh) lets in only its owner.

It holds message bodies and API token hashes: another local user must not
reach its socket, and a connection without the generated password is
refused. A cluster made by an older checkout (trust, open socket directory)
is converted by `start`. Each test runs its own throwaway cluster.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCALPG = ROOT / "scripts/localpg.sh"


class LocalPg:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "CARRIERD_PGDATA": str(data_dir)}

    def run(self, *args: str) -> str:
        return subprocess.run(
            [str(LOCALPG), *args], env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def hba(self) -> Path:
        return self.data_dir / "data/pg_hba.conf"

    def as_server_user(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True)


@pytest.fixture
def localpg(tmp_path: Path) -> Iterator[LocalPg]:
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser is needed to run PostgreSQL as root")
    cluster = LocalPg(tmp_path / "pg")
    cluster.run("start")
    try:
        yield cluster
    finally:
        cluster.run("stop", "immediate")


def without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"{parts.username}@{parts.hostname or ''}").geturl()


def psql() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    assert found, "the PostgreSQL client is installed with the server binaries"
    return str(found[-1])


async def test_the_dsn_carries_a_password_kept_in_an_owner_only_file(localpg: LocalPg) -> None:
    dsn = localpg.run("dsn")
    password = (localpg.data_dir / "password").read_text()
    assert urlsplit(dsn).password == password and len(password) >= 32
    assert stat.S_IMODE((localpg.data_dir / "password").stat().st_mode) == 0o600
    assert parse_qs(urlsplit(dsn).query)["host"] == [str(localpg.socket_dir)]
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT current_user") == "postgres"
    await conn.close()


async def test_a_connection_without_the_password_is_refused(localpg: LocalPg) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(without_password(localpg.run("dsn")))


def test_the_socket_directory_is_the_server_users_alone(localpg: LocalPg) -> None:
    mode = localpg.socket_dir.stat().st_mode
    assert stat.S_IMODE(mode) == 0o700
    server_uid = (localpg.data_dir / "data").stat().st_uid
    assert localpg.socket_dir.stat().st_uid == server_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_os_user_is_refused_even_with_the_password(localpg: LocalPg) -> None:
    dsn = localpg.run("dsn")
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", psql(), dsn, "-Atc", "SELECT 1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stdout
    assert "Permission denied" in result.stderr


async def test_start_converts_a_running_cluster_of_an_older_checkout(localpg: LocalPg) -> None:
    # What an older checkout left: trust for every local connection, a
    # world-writable socket directory, no password file.
    localpg.as_server_user(
        "sh", "-c", f"echo 'local all all trust' > {localpg.hba} && chmod 0777 {localpg.socket_dir}"
    )
    (localpg.data_dir / "password").unlink()
    (localpg.data_dir / "password.applied").unlink()
    bindir = Path(psql()).parent
    localpg.as_server_user(str(bindir / "pg_ctl"), "-D", str(localpg.data_dir / "data"), "reload")
    open_dsn = f"postgresql://postgres@/postgres?host={localpg.socket_dir}"
    conn = await asyncpg.connect(open_dsn)  # the hole being closed
    await conn.close()

    localpg.run("start")

    assert "trust" not in localpg.hba.read_text()
    assert stat.S_IMODE(localpg.socket_dir.stat().st_mode) == 0o700
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(open_dsn)
    conn = await asyncpg.connect(localpg.run("dsn"))
    await conn.close()
