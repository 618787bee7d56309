"""The gauges: read every few seconds from the database and the binds.

Counters and histograms are written where their events happen; gauges are
states, so this loop samples them:

- queue_depth, queue_oldest_age_seconds: open messages per state and account;
- au_gate_held: au numbers inside the spacing after their last receipt;
- bucket_tokens: tokens in each account's rate bucket, projected to now
  (the stored value is as of the last claim, and the refill since then is
  arithmetic: domain.pacing.tokens_at);
- callbacks_pending, callbacks_oldest_pending_age_seconds: the status
  callbacks not yet delivered;
- database_up: whether the database answered this pass's probe (while it
  does not, the other database gauges keep their last values);
- binds, window_in_use, delivers_unanswered, bind_send_rate_per_s: this
  daemon's SMPP binds (sampled first: they matter most while the database
  is away).

The database gauges read the same rows in every daemon on a database:
dashboards take max() across instances, and sum() only the bind gauges.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from carrierd.config import AccountConfig, Config
from carrierd.domain.clock import Clock
from carrierd.domain.pacing import Bucket, tokens_at
from carrierd.loops import supervise
from carrierd.smpp.pool import PoolHealth
from carrierd.store.db import Database
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.ops.gauges")

GAUGE_INTERVAL_S = 10.0
# Reported even when zero, so a carrier whose binds all dropped shows a 0
# "bound" series rather than no series.
BIND_STATES: tuple[str, ...] = ("bound", "throttled", "connecting", "stopped")

BindHealthSource = Callable[[], Mapping[str, PoolHealth]]


async def refresh_queue_gauges(metrics: Metrics, db: Database, now: datetime) -> None:
    """Open messages per state and account (one statement) into queue_depth
    and queue_oldest_age_seconds."""
    metrics.set_queue_gauges(await db.fetch("queue_gauges", now))


async def refresh_callback_gauges(metrics: Metrics, db: Database, now: datetime) -> None:
    row = await db.fetchrow("callback_backlog", now)
    assert row is not None  # an aggregate always has its row
    metrics.callbacks_pending.set(float(row["pending"]))
    metrics.callbacks_oldest_pending_age_seconds.set(float(row["oldest_age_s"]))


async def refresh_au_gate_gauge(
    metrics: Metrics, db: Database, now: datetime, spacing_s: float
) -> None:
    held = await db.fetchval("au_gate_held", now, spacing_s)
    metrics.au_gate_held.set(float(held))


async def bucket_levels(
    db: Database, now: datetime, accounts: Mapping[str, AccountConfig]
) -> dict[str, float]:
    """Tokens at `now` in the bucket of each configured account that has
    one. An account without a bucket row has not sent since it was added:
    its bucket is created (empty) at its first claim."""
    levels: dict[str, float] = {}
    for row in await db.fetch("rate_bucket_levels"):
        account = accounts.get(row["account_id"])
        if account is None:
            continue  # removed from the configuration; its row is inert
        bucket = Bucket(float(row["tokens"]), row["updated_at"])
        levels[account.account_id] = tokens_at(bucket, now, account.rate_per_hour, account.burst)
    return levels


def set_bind_gauges(metrics: Metrics, health: Mapping[str, PoolHealth]) -> None:
    for carrier, pool in health.items():
        states: dict[str, int] = {}
        for bind in pool.binds:
            states[bind.state] = states.get(bind.state, 0) + 1
            metrics.window_in_use.labels(carrier, bind.bind_id).set(bind.in_flight)
            metrics.delivers_unanswered.labels(carrier, bind.bind_id).set(bind.delivers_unanswered)
            metrics.bind_send_rate_per_s.labels(carrier, bind.bind_id).set(
                math.inf if bind.send_rate_per_s is None else bind.send_rate_per_s
            )
        for state in BIND_STATES:
            metrics.binds.labels(carrier, state).set(states.get(state, 0))


class GaugeRefresher:
    """Samples every gauge; `run` does it every `interval_s` seconds."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        *,
        config: Callable[[], Config],
        bind_health: BindHealthSource | None = None,
        interval_s: float = GAUGE_INTERVAL_S,
    ) -> None:
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self._config = config
        self._bind_health = bind_health
        self._interval_s = interval_s
        self._bucket_accounts: set[str] = set()

    async def refresh(self) -> None:
        config = self._config()
        if self._bind_health is not None:
            set_bind_gauges(self._metrics, self._bind_health())
        problem = await self._db.probe()
        self._metrics.database_up.set(1.0 if problem is None else 0.0)
        if problem is not None:
            return
        now = self._clock.now()
        await refresh_queue_gauges(self._metrics, self._db, now)
        await refresh_callback_gauges(self._metrics, self._db, now)
        await refresh_au_gate_gauge(self._metrics, self._db, now, config.engine.au_spacing_s)
        await self._refresh_buckets(config, now)

    async def run(self, stop_event: asyncio.Event) -> None:
        async def step() -> float:
            await self.refresh()
            return self._interval_s

        await supervise("gauges", step, stop_event)

    async def _refresh_buckets(self, config: Config, now: datetime) -> None:
        # Without pacing no bucket is taken from: its stale level would read
        # as "this account is held back".
        levels = await bucket_levels(self._db, now, config.accounts) if config.engine.pacing else {}
        for account_id, tokens in levels.items():
            self._metrics.bucket_tokens.labels(account_id).set(tokens)
        for gone in self._bucket_accounts - levels.keys():
            self._metrics.bucket_tokens.remove(gone)
        self._bucket_accounts = set(levels)
