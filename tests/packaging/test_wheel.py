"""A wheel built from the source tree installs and runs from /.

The wheel is built the way an operator builds it (pip, PEP 517, the build
backend pyproject.toml names), installed without dependencies into a
throwaway virtualenv that borrows the test environment's dependencies, and
run with the working directory at / and no PYTHONPATH: the package data
(the named statements and the migrations) and the installed files (the
README the units' Documentation= names, the systemd files) must come from
the wheel, not from the source tree.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from carrierd.store.db import drop_database
from tests.conftest import with_database

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "src", "systemd", "conf")
INSTALLED_FILES = (
    "share/doc/carrierd/README.md",
    "share/carrierd/systemd/carrierd.service",
    "share/carrierd/systemd/carrierd@.service",
    "share/carrierd/systemd/carrierd.sysusers",
    "share/carrierd/systemd/carrierd.tmpfiles",
    "share/carrierd/conf/carrierd.example.toml",
    "share/carrierd/prometheus/carrierd.rules.yml",
)
# The example configuration's secrets, as the environment file would give them.
SECRETS = {
    "CARRIERD_RCS_CLIENT_SECRET": "client-secret",
    "CARRIERD_RCS_WEBHOOK_SECRET": "webhook-secret",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    tree.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy(source, tree / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "No matching distribution found for setuptools" in (
        result.stdout + result.stderr
    ):
        pytest.skip("the build backend (setuptools>=68) is not available from any package index")
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("carrierd-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    venv = wheel.parent.parent / "venv"
    # Without the caller's PYTHONPATH (scripts/test-lowest.sh puts src on
    # it): pip would find the source tree's carrierd there, call the wheel
    # installed already and install nothing.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The dependencies are the test environment's (the wheel installs with
    # --no-deps): a path line in a .pth file adds that directory alone, so an
    # editable carrierd there stays out of sight.
    purelib = Path(
        subprocess.run(
            [
                str(venv / "bin/python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=clean,
        ).stdout.strip()
    )
    (purelib / "_carrierd_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin/python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=clean,
    )
    return venv


def run_from_root(venv: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CARRIERD_"))}
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        cwd="/",
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_holds_every_sql_file_and_the_installed_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src"
    for sql in package.rglob("*.sql"):
        assert sql.relative_to(package).as_posix() in names, sql
    assert "carrierd/py.typed" in names
    data = {name.split(".data/data/", 1)[1] for name in names if ".data/data/" in name}
    assert set(INSTALLED_FILES) <= data


def test_the_installed_command_runs_from_root(venv: Path) -> None:
    result = run_from_root(venv, "carrierd", "--help")
    assert result.returncode == 0, result.stderr
    assert "check-config" in result.stdout
    located = run_from_root(
        venv, "python", "-c", "import carrierd.store.db as d; print(d.__file__)"
    )
    assert located.stdout.strip().startswith(str(venv)), located.stdout + located.stderr
    for relative in INSTALLED_FILES:
        assert (venv / relative).is_file(), relative
    example = venv / "share/carrierd/conf/carrierd.example.toml"
    checked = run_from_root(
        venv,
        "carrierd",
        "check-config",
        str(example),
        CARRIERD_DSN="postgresql://carrierd@db.invalid/carrierd",
        **SECRETS,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def empty_database(pg_server_dsn: str) -> Iterator[str]:
    name = f"carrierd_wheel_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(pg_server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    yield with_database(pg_server_dsn, name)
    asyncio.run(drop_database(pg_server_dsn, name))


def test_the_installed_migrations_build_a_database(venv: Path, empty_database: str) -> None:
    example = venv / "share/carrierd/conf/carrierd.example.toml"
    result = run_from_root(
        venv,
        "carrierd",
        "migrate",
        "--config",
        str(example),
        CARRIERD_DSN=empty_database,
        **SECRETS,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    async def applied() -> int:
        conn = await asyncpg.connect(empty_database)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM schema_migrations"))
        finally:
            await conn.close()

    in_source = len(list((ROOT / "src/carrierd/store/schema").glob("[0-9]*_*.sql")))
    assert asyncio.run(applied()) == in_source
