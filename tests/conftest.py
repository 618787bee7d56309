"""Shared fixtures: a real PostgreSQL, a fresh database per test.

The server is the project-local one (`make test` starts it) unless
CARRIERD_DSN names another. A template database is migrated once per run;
each test that asks for `dsn` gets its own clone (CREATE DATABASE ...
TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from carrierd.store.db import (
    Database,
    create_database_from_template,
    drop_database,
    ensure_template,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = f"carrierd_template_{os.getpid()}"


def _server_dsn() -> str:
    dsn = os.environ.get("CARRIERD_DSN")
    if dsn:
        return dsn
    subprocess.run([str(ROOT / "scripts/localpg.sh"), "start"], check=True)
    return subprocess.run(
        [str(ROOT / "scripts/localpg.sh"), "dsn"], check=True, capture_output=True, text=True
    ).stdout.strip()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    admin = _server_dsn()
    asyncio.run(ensure_template(admin, TEMPLATE, with_database(admin, TEMPLATE)))
    yield admin
    asyncio.run(drop_database(admin, TEMPLATE))


@pytest.fixture
def dsn(pg_server_dsn: str) -> Iterator[str]:
    name = f"carrierd_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database_from_template(pg_server_dsn, name, TEMPLATE))
    yield with_database(pg_server_dsn, name)
    asyncio.run(drop_database(pg_server_dsn, name))


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Database]:
    database = await Database.open(dsn, min_size=1, max_size=4)
    yield database
    await database.close()
