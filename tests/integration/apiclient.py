"""A running intake/status HTTP server on port 0 for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from carrierd.config import Config, parse_config
from carrierd.domain.clock import Clock
from carrierd.http.app import ApiState, build_app
from carrierd.http.limits import start_http_server
from carrierd.store.db import Database

BASE_CONFIG: dict[str, Any] = {
    "accounts": {
        "acme": {"tokens": ["acme-token"], "senders": {"docomo": "0120111111"}},
        "globex": {"tokens": ["globex-token"], "allow_m2m": True},
    },
}


def make_config(dsn: str, extra: Mapping[str, Any] | None = None) -> Config:
    raw = {**BASE_CONFIG, **(extra or {})}
    raw.setdefault("database", {})
    raw["database"] = {**raw["database"], "dsn": dsn}
    raw.setdefault("http", {"port": 0})
    return parse_config(raw, env={})


async def sync_accounts(db: Database, config: Config) -> None:
    """The configured accounts into the database, as the daemon syncs them."""
    await db.sync_accounts(
        (a.account_id, a.allow_m2m, a.max_sms_chars, a.token_sha256)
        for a in config.accounts.values()
    )


@asynccontextmanager
async def running_api(
    config: Config, db: Database, clock: Clock, **state: Any
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """`state`: further ApiState fields (metrics, webhook_sink...)."""
    await sync_accounts(db, config)
    app = build_app(ApiState(config=config, db=db, clock=clock, **state))
    # The daemon's own server construction, connection limits included.
    runner, _ = await start_http_server(
        app, config.http, metrics=state.get("metrics"), host="127.0.0.1", port=0
    )
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield f"http://127.0.0.1:{port}", session
    finally:
        await runner.cleanup()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
