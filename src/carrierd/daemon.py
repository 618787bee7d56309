"""Composition root and lifecycle: the one module that starts and stops things.

Phases, in order (and reversed on the way down):
  1. config and logging
  2. database pool; accounts synced into the database
  3. carrier side: SMPP pools, +Message client (when configured)
  4. workers: dispatcher, settler, write-behind flushers
  5. HTTP server (intake, status, webhooks, metrics): last up, so nothing is
     accepted before the daemon can work on it; first down on drain.

SIGTERM/SIGINT start a graceful drain bounded by `drain_timeout_s`; a second
signal exits at once. SIGHUP reloads accounts, rates and routes without
dropping binds. A side task that dies stops the daemon (fail loudly, and
systemd restarts us) rather than leaving a half-working process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from carrierd.api import ApiState, build_app
from carrierd.config import Config, ConfigError, load_config
from carrierd.domain.clock import Clock, SystemClock
from carrierd.store.db import Database

log = structlog.get_logger("carrierd.daemon")


@dataclass
class Component:
    """Something with a lifecycle: start returns when it is up."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


@dataclass
class Daemon:
    config: Config
    clock: Clock = field(default_factory=SystemClock)
    drain_timeout_s: float = 30.0
    db: Database | None = None
    http_runner: web.AppRunner | None = None
    http_port: int | None = None
    _components: list[Component] = field(default_factory=list)
    _side_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _signals_seen: int = 0

    async def start(self) -> None:
        config = self.config
        log.info("starting", daemon_id=config.daemon_id)
        self.db = await Database.open(
            config.database.dsn,
            min_size=config.database.pool_min,
            max_size=config.database.pool_max,
        )
        await self._sync_accounts()
        api_state = ApiState(config=config, db=self.db, clock=self.clock)
        self._api_state = api_state
        for component in self._components:
            log.info("component_starting", component=component.name)
            await component.start()
        app = build_app(api_state)
        self.http_runner = web.AppRunner(app, access_log=None)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, config.http.host, config.http.port)
        await site.start()
        self.http_port = int(self.http_runner.addresses[0][1])
        log.info("ready", http=f"{config.http.host}:{self.http_port}")

    async def _sync_accounts(self) -> None:
        assert self.db is not None
        await self.db.sync_accounts(
            (a.account_id, a.allow_m2m, a.max_sms_chars, a.token_sha256)
            for a in self.config.accounts.values()
        )

    def add_side_task(self, name: str, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._side_task_done)
        self._side_tasks.append(task)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        log.error("side_task_died", task=task.get_name(), error=repr(exc))
        self._exit_code = 1
        self._stopping.set()

    async def reload(self) -> None:
        path = self.config.source_path
        if path is None:
            return
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload_refused", problems=exc.problems)
            return
        self.config = new
        self._api_state.config = new
        await self._sync_accounts()
        log.info("reloaded", accounts=len(new.accounts))

    async def stop(self) -> None:
        log.info("draining")
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        for component in reversed(self._components):
            try:
                await asyncio.wait_for(component.stop(), self.drain_timeout_s)
            except TimeoutError:
                log.error("component_stop_timeout", component=component.name)
        for task in self._side_tasks:
            task.cancel()
        for task in self._side_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.db is not None:
            await self.db.close()
        log.info("stopped")

    def request_stop(self) -> None:
        self._signals_seen += 1
        if self._signals_seen > 1:
            log.warning("second_signal_exit_now")
            sys.exit(1)
        self._stopping.set()

    async def run_until_stopped(self) -> int:
        self._exit_code = 0
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
        return self._exit_code


def run(config_path: Path, **overrides: Any) -> int:
    from carrierd.telemetry import configure_logging

    config = load_config(config_path)
    configure_logging(config.log_level)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        runner = asyncio.run

    async def main() -> int:
        daemon = Daemon(config, **overrides)
        return await daemon.run_until_stopped()

    return int(runner(main()))
