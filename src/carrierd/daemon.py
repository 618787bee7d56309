"""Composition root and lifecycle: the one module that starts and stops things.

Phases, in order (and reversed on the way down):
  1. config and logging
  2. database pool; accounts synced into the database
  3. carrier side: SMPP pools, +Message client (when configured)
  4. workers: dispatcher, settler, write-behind flushers
  5. HTTP server (intake, status, webhooks, metrics): last up, so nothing is
     accepted before the daemon can work on it; first down on drain.

SIGTERM/SIGINT start a graceful drain bounded by `drain_timeout_s`; a second
signal exits at once. SIGHUP reloads accounts, rates, routes and the link
server's limits without dropping binds (config.py `reloaded`). A side task
that dies stops the daemon (fail loudly, and systemd restarts us) rather
than leaving a half-working process.

The database being away is never a reason to exit, at startup or later:
phase 2 waits for it (telling systemd so, and extending its start timeout
while it waits), every loop waits it out under `carrierd.loops`, intake
answers 503, and /readyz says why the daemon is not ready. Exiting would
only make systemd restart every daemon into the same outage and drop the
binds, and with them the receipts the SMSCs are holding for us.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from carrierd.channels.reassign import ReassignClient
from carrierd.channels.sms import SmppGateway
from carrierd.channels.types import InboundSms, Receipt
from carrierd.config import Config, ConfigError, load_config, reloaded
from carrierd.domain.clock import Clock, SystemClock
from carrierd.domain.netpolicy import IPNetwork
from carrierd.engine.cancel import Canceller
from carrierd.engine.dispatcher import Dispatcher
from carrierd.engine.inbound import Inbound
from carrierd.engine.leases import Leases, lease_owner_for
from carrierd.engine.lifecycle import Lifecycle
from carrierd.engine.rcs_leg import RcsClients, RcsLeg
from carrierd.engine.reassign_gate import ReassignGate
from carrierd.engine.send_replies import SendReplies
from carrierd.engine.sms_leg import Planned, SmsLeg, counts_by_carrier
from carrierd.engine.timers import Timers
from carrierd.engine.write_behind import WriteBehind
from carrierd.http.app import ApiState, build_app
from carrierd.http.health import carriers_check
from carrierd.http.limits import start_http_server
from carrierd.http.links import LinkServer, start_link_server
from carrierd.loops import StopRequested, until_database_answers
from carrierd.ops.callbacks import INBOUND_OUTBOX, CallbackSender, GuardedClient
from carrierd.ops.gauges import GaugeRefresher
from carrierd.ops.retention import run_retention
from carrierd.ops.sdnotify import SystemdNotifier
from carrierd.optout_list import DEFAULT_CAP
from carrierd.smpp.pool import PoolHealth
from carrierd.store.db import Database, describe_db_error
from carrierd.telemetry import Metrics, SubmitMetrics, receipt_stat_label

log = structlog.get_logger("carrierd.daemon")


class StartupError(Exception):
    """The daemon cannot start for a reason its operator must fix (one line
    saying what, no traceback)."""


# While waiting for the database at startup, systemd's start timeout is
# extended to the next try plus this much.
START_WAIT_MARGIN_S = 30.0

# The young generation's size before the garbage collector looks at it
# (CPython's default is 700; settle_heap says why ours is larger).
GC_YOUNG_THRESHOLD = 100_000


def settle_heap() -> None:
    """Once the daemon is up, in a process of its own (`run`).

    What startup built (modules, configuration, routing tables) lives as
    long as the process: frozen, it is left out of every later collection,
    where a full collection walked all of it and held the loop for tens of
    milliseconds. And the young generation waits for 100,000 objects, not
    700: the count is of objects made less those freed, and a batch of
    1,000 messages holds some 70 containers per message while it is
    validated, stored and sent. At 700, and still at 10,000, every batch
    set off collections that walked its live rows (a fifth of a second of
    collecting per 10,000 messages sent) and promoted them to the older
    generations; at 100,000 a batch is freed before the count gets there.
    Objects still go the moment their last reference does; only reference
    cycles wait for a collection, and at most 100,000 of them."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


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
    link_server: LinkServer | None = None
    _components: list[Component] = field(default_factory=list)
    _side_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _signals_seen: int = 0
    metrics: Metrics = field(default_factory=Metrics)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    gauge_interval_s: float = 10.0
    # Set by `run`: the daemon is the process, and may settle its heap.
    owns_process: bool = False

    async def start(self) -> None:
        config = self.config
        # Which keys came from the environment or credentials (never values).
        log.info("starting", daemon_id=config.daemon_id, overridden=sorted(config.overridden))
        self.db = await until_database_answers(
            "startup", self._open_database, stop=self._stopping, on_wait=self._waiting_at_start
        )
        self._build_engine(self.db)
        self._build_operations(self.db)
        api_state = ApiState(
            config=config,
            db=self.db,
            clock=self.clock,
            readiness=self._readiness,
            metrics=self.metrics,
            webhook_sink=self._rcs_leg,
            canceller=Canceller(
                self.db,
                self.lifecycle,
                self.clock,
                revoke=self._rcs_leg.revoke if self._rcs_leg is not None else None,
            ),
            subscribers=self._rcs_leg,
        )
        self._api_state = api_state
        for component in self._components:
            log.info("component_starting", component=component.name)
            await component.start()
        app = build_app(api_state)
        try:
            self.http_runner, _ = await start_http_server(
                app, config.http, metrics=self.metrics, access_log=None
            )
        except OSError as exc:
            where = f"{config.http.host}:{config.http.port}"
            port_from = config.overridden.get("http.port")
            keys = f"http.host, http.port{f' from {port_from}' if port_from else ''}"
            raise StartupError(f"cannot listen on {where} ({keys}): {_listen_error(exc)}") from exc
        self.http_port = int(self.http_runner.addresses[0][1])
        if config.links.enabled:
            # The public link server (DOMAIN §12): its own listener, facing
            # the internet through a TLS proxy, with nothing of the API.
            try:
                self.link_server = await start_link_server(
                    config.links,
                    self.db,
                    self.clock,
                    optout_cap=self._optout_cap,
                    metrics=self.metrics,
                )
            except OSError as exc:
                where = f"{config.links.host}:{config.links.port}"
                raise StartupError(
                    f"cannot listen on {where} (links.host, links.port): {_listen_error(exc)}"
                ) from exc
            log.info("links_ready", links=f"{config.links.host}:{self.link_server.port}")
        if self.owns_process:
            settle_heap()
        log.info(
            "ready",
            http=f"{config.http.host}:{self.http_port}",
            gc_frozen_objects=gc.get_freeze_count(),
            gc_thresholds=list(gc.get_threshold()),
        )
        self.notifier.ready(status=f"serving on {config.http.host}:{self.http_port}")

    def _build_engine(self, db: Database) -> None:
        """Phases 3 and 4: carrier side, then the workers that use it."""
        config = lambda: self.config  # noqa: E731 - read on every use: SIGHUP swaps it
        lifecycle = Lifecycle(self.metrics)
        inbound = Inbound(db, config=config, hooks=[SendReplies(db, config=config)])
        write_behind = WriteBehind(
            db,
            self.clock,
            lifecycle,
            inbound,
            accounts=lambda: self.config.accounts,
            carriers=lambda: self.config.carriers,
            au_spacing_s=lambda: self.config.engine.au_spacing_s,
            submitted_grace_s=lambda: self.config.engine.submitted_grace_s,
            metrics=self.metrics,
        )
        gateway = SmppGateway(
            self.config.carriers,
            _CountingEvents(write_behind, self.metrics),
            self.clock,
            receipt_message_id_styles={
                name: c.receipt_id_style for name, c in self.config.carriers.items()
            },
            submit_observers={
                route.pool_name: SubmitMetrics(self.metrics, route.pool_name)
                for carrier in self.config.carriers.values()
                for route in carrier.all_routes()
            },
        )
        self.metrics.count_binds_from(lambda: bind_counts(gateway.health()))
        lease_owner = lease_owner_for(self.config.daemon_id)
        leases = Leases(db, lifecycle, config=config, lease_owner=lease_owner)
        sms_leg = SmsLeg(
            gateway,
            write_behind,
            lifecycle,
            config=config,
            lease_owner=lease_owner,
            on_submitted=self._on_submitted,
        )
        dispatcher = Dispatcher(
            db,
            self.clock,
            gateway,
            sms_leg,
            lifecycle,
            leases,
            config=config,
            lease_owner=lease_owner,
            metrics=self.metrics,
        )
        timers = Timers(
            db, self.clock, write_behind, lifecycle, leases, config=config, metrics=self.metrics
        )
        timers.inbound_timers = inbound
        self.inbound = inbound
        self._rcs_session: aiohttp.ClientSession | None = None
        self._rcs_leg: RcsLeg | None = None
        if self.config.rcs.enabled:
            # +Message: the dispatcher hands it rows whose leg is 'rcs'; the
            # timers run its fallback and expiry; the platform posts its
            # webhooks to our HTTP server.
            self._rcs_session = aiohttp.ClientSession()
            leg = RcsLeg(
                db,
                self.clock,
                RcsClients(self._rcs_session),
                lifecycle,
                inbound,
                config=config,
                lease_owner=lease_owner,
                metrics=self.metrics,
            )
            dispatcher.rcs_leg = leg
            timers.rcs_timers = leg
            self._rcs_leg = leg
        self._reassign_session: aiohttp.ClientSession | None = None
        if self.config.reassign.enabled:
            # §13: the dispatcher hands the gate the messages to look up first.
            self._reassign_session = aiohttp.ClientSession()
            dispatcher.reassign_gate = ReassignGate(
                db,
                self.clock,
                ReassignClient(
                    self._reassign_session,
                    lambda: self.config.reassign,
                    observe_s=lambda s, outcome: self.metrics.reassign_lookup_seconds.labels(
                        outcome
                    ).observe(s),
                ),
                lifecycle,
                config=config,
                lease_owner=lease_owner,
                metrics=self.metrics,
            )
        self.lifecycle = lifecycle
        self.recorder, self.gateway, self.dispatcher, self.settler = (
            write_behind,
            gateway,
            dispatcher,
            timers,
        )
        recorder, settler = write_behind, timers

        async def start_carriers() -> None:
            await gateway.start()

        async def stop_carriers() -> None:
            await gateway.stop(self.drain_timeout_s)
            await recorder.drain()
            if self._rcs_session is not None:
                await self._rcs_session.close()
            if self._reassign_session is not None:
                await self._reassign_session.close()

        async def start_workers() -> None:
            self.add_side_task("recorder", recorder.run())
            self.add_side_task("dispatcher", dispatcher.run())
            self.add_side_task("settler", settler.run())

        async def stop_workers() -> None:
            # Stop claiming and let in-flight submits get their responses;
            # what was claimed but not handed over goes back to the queue.
            settler.stop()
            await dispatcher.stop_claiming(self.drain_timeout_s)
            if dispatcher.reassign_gate is not None:
                # Lookups under way record their verdicts and hand what passed
                # to its leg (so before the legs stop); the messages still
                # waiting for one go back to the queue with the other claims.
                await dispatcher.reassign_gate.stop(self.drain_timeout_s)
            if dispatcher.rcs_leg is not None:
                # Its sends run in the background: let them finish before the
                # dispatcher gives unfinished claims back to the queue.
                await dispatcher.rcs_leg.stop(self.drain_timeout_s)
            await dispatcher.stop(self.drain_timeout_s)
            await recorder.drain()

        self._components[:0] = [
            Component("carriers", start_carriers, stop_carriers),
            Component("workers", start_workers, stop_workers),
        ]

    def _build_operations(self, db: Database) -> None:
        """Status callbacks, retention, gauges and the systemd watchdog."""
        self._ops_stop = asyncio.Event()
        self._http_client: GuardedClient | None = None

        def secret_for(account_id: str) -> str | None:
            account = self.config.accounts.get(account_id)
            return account.callback_secret if account is not None else None

        def networks_for(account_id: str) -> tuple[IPNetwork, ...]:
            account = self.config.accounts.get(account_id)
            return account.callback_allow_networks if account is not None else ()

        async def start_operations() -> None:
            self._http_client = GuardedClient()
            sender = CallbackSender(
                db,
                self._http_client,
                secret_for,
                self.clock,
                self.metrics,
                allowed_networks=networks_for,
            )
            self.add_side_task("callbacks", sender.run(self._ops_stop))
            # Replies pushed to inbound_callback_url: the same sender on the
            # inbound outbox (in order per number).
            inbound_sender = CallbackSender(
                db,
                self._http_client,
                secret_for,
                self.clock,
                self.metrics,
                allowed_networks=networks_for,
                outbox=INBOUND_OUTBOX,
            )
            self.add_side_task("inbound_callbacks", inbound_sender.run(self._ops_stop))
            self.add_side_task(
                "retention",
                run_retention(
                    db,
                    self.clock,
                    self._ops_stop,
                    au_spacing_s=lambda: self.config.engine.au_spacing_s,
                ),
            )
            gauges = GaugeRefresher(
                db,
                self.clock,
                self.metrics,
                config=lambda: self.config,
                bind_health=self.gateway.health,
                interval_s=self.gauge_interval_s,
            )
            self.add_side_task("gauges", gauges.run(self._ops_stop))
            self.add_side_task("watchdog", self.notifier.run_watchdog(self._ops_stop))

        async def stop_operations() -> None:
            self._ops_stop.set()
            if self._http_client is not None:
                await self._http_client.close()

        self._components.append(Component("operations", start_operations, stop_operations))

    def _optout_cap(self, account_id: str) -> int:
        """The account's opt-out list cap as configured now (reloads apply)."""
        account = self.config.accounts.get(account_id)
        return account.optout_cap if account is not None else DEFAULT_CAP

    def _on_submitted(self, planned: Sequence[Planned], now: datetime) -> None:
        for p in planned:
            if p.attempt == 1:
                self.metrics.intake_to_submit_seconds.observe(
                    max(0.0, (now - p.message.accepted_at).total_seconds())
                )
        for carrier, parts in counts_by_carrier(planned).items():
            self.metrics.parts_submitted_total.labels(carrier).inc(parts)

    async def _readiness(self) -> dict[str, Any]:
        health = self.gateway.health()
        return {
            "carriers": carriers_check(
                {name: (h.bound_count, len(h.binds)) for name, h in health.items()}
            )
        }

    async def _open_database(self) -> Database:
        """The pool, with the accounts synced: intake needs them in place."""
        database = self.config.database
        db = await Database.open(
            database.dsn, min_size=database.pool_min, max_size=database.pool_max
        )
        try:
            await self._sync_accounts(db)
        except BaseException:
            await db.close()
            raise
        return db

    def _waiting_at_start(self, error: BaseException, retry_in_s: float) -> None:
        # systemd would kill a start that takes longer than TimeoutStartSec;
        # waiting for the database is progress, so the timeout is pushed
        # past the next try.
        extend_us = int((retry_in_s + START_WAIT_MARGIN_S) * 1_000_000)
        self.notifier.notify(
            f"STATUS=waiting for the database: {describe_db_error(error)}",
            f"EXTEND_TIMEOUT_USEC={extend_us}",
        )

    async def _sync_accounts(self, db: Database | None = None) -> None:
        db = db or self.db
        assert db is not None
        await db.sync_accounts(
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
        if exc is None:
            # Some side tasks have nothing to do in some set-ups (no watchdog
            # without WATCHDOG_USEC); finishing is not dying.
            log.info("side_task_finished", task=task.get_name())
            return
        log.error("side_task_died", task=task.get_name(), error=repr(exc))
        self._exit_code = 1
        self._stopping.set()

    async def reload(self) -> None:
        path = self.config.source_path
        if path is None:
            return
        try:
            new, waiting = reloaded(self.config, load_config(path))
        except ConfigError as exc:
            log.error("reload_refused", problems=exc.problems)
            return
        if waiting:
            log.warning("reload_needs_restart", keys=waiting)
        self.notifier.reloading()
        # Accounts, rates and routes are read through `self.config` on every
        # use, so swapping it is the reload; binds stay up (carrier
        # connection settings take effect at the next restart).
        self.config = new
        self._api_state.config = new
        if self.link_server is not None:
            self.link_server.apply(new.links)
        try:
            await until_database_answers("reload", self._sync_accounts, stop=self._stopping)
        except StopRequested:
            return
        self.notifier.ready(status="reloaded")
        log.info("reloaded", accounts=len(new.accounts))

    async def stop(self) -> None:
        log.info("draining")
        self.notifier.stopping()
        self._stopping.set()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        if self.link_server is not None:
            await self.link_server.stop()
        for component in reversed(self._components):
            try:
                await asyncio.wait_for(component.stop(), self.drain_timeout_s * 2)
            except TimeoutError:
                log.error("component_stop_timeout", component=component.name)
            except Exception:
                # Stopping during a database outage: what could not be
                # written is recovered through leases and timers, like after
                # a kill; the other components still get their stop.
                log.exception("component_stop_failed", component=component.name)
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
            with contextlib.suppress(StopRequested):
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
        daemon = Daemon(config, owns_process=True, **overrides)
        try:
            return await daemon.run_until_stopped()
        except StartupError as exc:
            print(f"carrierd: {exc}", file=sys.stderr, flush=True)
            return 1

    return int(runner(main()))


def _listen_error(exc: OSError) -> str:
    # asyncio's strerror repeats the address; the errno's text is enough (a
    # name that does not resolve has a negative errno).
    errno = exc.errno or 0
    return os.strerror(errno) if errno > 0 else (exc.strerror or str(exc))


def bind_counts(health: Mapping[str, PoolHealth]) -> dict[str, tuple[int, int]]:
    """Per carrier: (binds re-established after a loss, failed bind attempts)."""
    return {
        carrier: (
            sum(bind.stats.reconnects for bind in pool.binds),
            sum(bind.stats.bind_failures for bind in pool.binds),
        )
        for carrier, pool in health.items()
    }


class _CountingEvents:
    """Counts receipts for metrics on their way to the recorder."""

    def __init__(self, recorder: WriteBehind, metrics: Metrics) -> None:
        self._recorder = recorder
        self._metrics = metrics
        # labels() looks its child up under a lock on every call: a few
        # (carrier, stat) pairs exist, so keep them.
        self._receipt_counters: dict[tuple[str, str], Any] = {}
        self._mo_received = metrics.mo_received_total.labels("sms")

    def receipt(self, receipt: Receipt) -> Awaitable[None] | None:
        key = (receipt.carrier, receipt_stat_label(receipt.stat))
        counter = self._receipt_counters.get(key)
        if counter is None:
            counter = self._receipt_counters[key] = self._metrics.receipts_total.labels(*key)
        counter.inc()
        return self._recorder.receipt(receipt)

    def inbound(self, message: InboundSms) -> Awaitable[None] | None:
        self._mo_received.inc()
        return self._recorder.inbound(message)
