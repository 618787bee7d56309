"""The gauge refresher against a real PostgreSQL (queue gauges have their
own test in test_reports.py)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg

from carrierd.channels.types import InboundSms
from carrierd.config import Config
from carrierd.daemon import _CountingEvents, bind_counts
from carrierd.domain.clock import FakeClock
from carrierd.ops.gauges import GaugeRefresher, set_bind_gauges
from carrierd.smpp.pool import BindHealth, PoolHealth
from carrierd.smpp.session import SessionStats
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import make_config
from tests.integration.test_callbacks import new_message

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
SPACING_S = 22.0


async def synced(dsn: str, db: Database, extra_accounts: tuple[str, ...] = ()) -> Config:
    config = make_config(dsn, {"engine": {"au_spacing_s": SPACING_S}})
    await db.sync_accounts(
        [
            *(
                (a.account_id, a.allow_m2m, a.max_sms_chars, a.token_sha256)
                for a in config.accounts.values()
            ),
            *((name, False, 670, []) for name in extra_accounts),
        ]
    )
    return config


def bucket_samples(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["account"]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "carrierd_bucket_tokens"
    }


async def test_au_gate_held_counts_numbers_inside_the_spacing(dsn: str, db: Database) -> None:
    config = await synced(dsn, db)
    ages_s = {"+819000000001": 60.0, "+819000000002": SPACING_S, "+819000000003": 21.0}
    ages_s |= {"+819000000004": 0.0, "+819000000005": -5.0}  # a later daemon's clock
    for msisdn, age_s in ages_s.items():
        await db.call_raw(
            "INSERT INTO au_gate (msisdn, last_final_at) VALUES ($1, $2)",
            msisdn,
            NOW - timedelta(seconds=age_s),
        )
    metrics = Metrics()
    await GaugeRefresher(db, FakeClock(NOW), metrics, config=lambda: config).refresh()
    assert metrics.registry.get_sample_value("carrierd_au_gate_held") == 3


async def test_bucket_tokens_project_the_refill_to_now(dsn: str, db: Database) -> None:
    config = await synced(dsn, db, extra_accounts=("retired",))
    acme = config.accounts["acme"]
    # 0.9 s at the default 40,000/h refills 10 tokens.
    assert acme.rate_per_hour == 40_000.0 and acme.burst == 100
    for account_id, tokens, updated_at in [
        ("acme", 2.5, NOW - timedelta(seconds=0.9)),
        ("retired", 7.0, NOW),
    ]:
        await db.call_raw(
            "INSERT INTO rate_buckets (account_id, tokens, updated_at) VALUES ($1, $2, $3)",
            account_id,
            tokens,
            updated_at,
        )
    clock = FakeClock(NOW)
    metrics = Metrics()
    current = config
    refresher = GaugeRefresher(db, clock, metrics, config=lambda: current)

    await refresher.refresh()
    # globex has no bucket yet (it has sent nothing); "retired" is no longer
    # configured: neither gets a series.
    assert bucket_samples(metrics) == {"acme": 12.5}

    clock.advance(3600)
    await refresher.refresh()
    assert bucket_samples(metrics) == {"acme": 100.0}

    current = replace(config, engine=replace(config.engine, pacing=False))
    await refresher.refresh()
    assert bucket_samples(metrics) == {}


def bind(
    bind_id: str, state: str, in_flight: int, send_rate_per_s: float | None = None
) -> BindHealth:
    return BindHealth(
        bind_id=bind_id,
        state=state,  # type: ignore[arg-type]
        links={"transceiver": state == "bound"},
        in_flight=in_flight,
        queued=0,
        stats=SessionStats(),
        delivers_unanswered=in_flight // 2,
        send_rate_per_s=send_rate_per_s,
    )


def test_bind_gauges_report_every_state_per_carrier() -> None:
    metrics = Metrics()
    pool = PoolHealth(
        "docomo",
        (bind("d1", "bound", 4), bind("d2", "connecting", 0), bind("d3", "throttled", 1, 4.5)),
    )
    set_bind_gauges(metrics, {"docomo": pool})
    value = metrics.registry.get_sample_value
    assert value("carrierd_binds", {"carrier": "docomo", "state": "bound"}) == 1
    assert value("carrierd_binds", {"carrier": "docomo", "state": "connecting"}) == 1
    assert value("carrierd_binds", {"carrier": "docomo", "state": "throttled"}) == 1
    assert value("carrierd_window_in_use", {"carrier": "docomo", "bind": "d1"}) == 4
    assert value("carrierd_delivers_unanswered", {"carrier": "docomo", "bind": "d1"}) == 2
    # A throttled bind shows the rate it backed off to; a bind without a limit, +Inf.
    assert value("carrierd_bind_send_rate_per_s", {"carrier": "docomo", "bind": "d3"}) == 4.5
    assert value("carrierd_bind_send_rate_per_s", {"carrier": "docomo", "bind": "d1"}) == math.inf


async def test_the_loop_keeps_sampling_until_stopped(dsn: str, db: Database) -> None:
    config = await synced(dsn, db)
    metrics = Metrics()
    refresher = GaugeRefresher(db, FakeClock(NOW), metrics, config=lambda: config, interval_s=0.0)
    stop = asyncio.Event()
    task = asyncio.ensure_future(refresher.run(stop))
    await db.call_raw(
        "INSERT INTO au_gate (msisdn, last_final_at) VALUES ('+819000000001', $1)", NOW
    )
    for _ in range(1000):
        if metrics.registry.get_sample_value("carrierd_au_gate_held") == 1:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert metrics.registry.get_sample_value("carrierd_au_gate_held") == 1


async def test_callback_backlog_and_database_up(dsn: str, db: Database, pg_server_dsn: str) -> None:
    config = await synced(dsn, db)
    ids = [await new_message(db), await new_message(db)]
    for message_id, state, created_s_ago in zip(
        ids + ids[:1], ("pending", "pending", "sent"), (30.0, 5.0, 600.0), strict=True
    ):
        await db.call_raw(
            "INSERT INTO status_callbacks (message_id, account_id, url, payload, "
            "next_attempt_at, created_at, state) VALUES ($1, 'acme', 'https://x.example/', "
            "'{}', $2, $2, $3)",
            message_id,
            NOW - timedelta(seconds=created_s_ago),
            state,
        )
    metrics = Metrics()
    refresher = GaugeRefresher(db, FakeClock(NOW), metrics, config=lambda: config)
    await refresher.refresh()
    value = metrics.registry.get_sample_value
    assert value("carrierd_callbacks_pending") == 2
    assert value("carrierd_callbacks_oldest_pending_age_seconds") == 30.0
    assert value("carrierd_database_up") == 1

    # The database refuses every connection: the probe says so, and the
    # refresh does not fail on the queries after it.
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await refresher.refresh()
        assert value("carrierd_database_up") == 0
        assert value("carrierd_callbacks_pending") == 2  # the last value read
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    await refresher.refresh()
    assert value("carrierd_database_up") == 1


def test_bind_reconnects_and_failures_are_summed_per_carrier() -> None:
    metrics = Metrics()
    first = replace(bind("d1", "bound", 0), stats=SessionStats(binds=3, reconnects=2))
    second = replace(bind("d2", "connecting", 0), stats=SessionStats(bind_failures=5))
    pools = {"docomo": PoolHealth("docomo", (first, second))}
    metrics.count_binds_from(lambda: bind_counts(pools))
    value = metrics.registry.get_sample_value
    assert value("carrierd_bind_reconnects_total", {"carrier": "docomo"}) == 2
    assert value("carrierd_bind_failures_total", {"carrier": "docomo"}) == 5


def test_mo_received_counts_each_inbound_sms() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.inbound_seen: list[InboundSms] = []

        def inbound(self, message: InboundSms) -> None:
            self.inbound_seen.append(message)

    metrics = Metrics()
    recorder = Recorder()
    events = _CountingEvents(recorder, metrics)  # type: ignore[arg-type]
    mo = InboundSms("au", "819012345678", "0120111111", 0, 8, "はい".encode("utf-16-be"), NOW)
    events.inbound(mo)
    events.inbound(mo)
    assert recorder.inbound_seen == [mo, mo]
    assert metrics.registry.get_sample_value("carrierd_mo_received_total", {"channel": "sms"}) == 2
