"""Every metric the shipped dashboard graphs moves in a short scripted day.

The real daemon runs in-process (its HTTP server, engine, settler, gauges)
against the SMSC simulator and the +Message simulator, on a fresh database.
The scenario makes each graphed event happen at least once:

- docomo traffic, its receipts answered late while the database stalls
  (delivers_unanswered) and a scripted UNDELIV number whose account allows
  one system resend;
- a number the daemon's prefix table gives to docomo but the simulator
  gives to softbank: "not our subscriber", rerouted;
- a burst to rakuten above its SMSC's rate: ESME_RTHROTTLED answers;
- au traffic with slow responses (window_in_use), two messages to one
  number (the au gate);
- +Message: one delivered, one fallback for a handset that is not capable,
  one fallback after the deadline for a handset that never takes delivery,
  one +Message-only send to such a handset that expires (discard request);
- a scheduled send that expires before it leaves (the clock jumps an hour);
- an item refused at intake, a webhook with a bad signature, status
  callbacks to a test receiver, a short link clicked.

/metrics is scraped at the start and every SCRAPE_EVERY_S: each counter and
histogram must have grown, each gauge must have read non-zero at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from carrierd.config import CARRIERS, Config, parse_config
from carrierd.daemon import Daemon
from carrierd.http.webhooks import WEBHOOK_PATH
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig
from carrierd.sim.smsc import SmscSimulator, sim_config_from_mapping
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.e2e.daemon_process import free_port
from tests.grafana_dashboard import dashboard_metric_names, load_dashboard
from tests.integration.test_rcs_leg import serve

WAIT_S = 20.0  # an upper bound for the scenario's real-time work, not a speed claim
SCRAPE_EVERY_S = 0.2
STALL_ATTEMPTS = 5
WEBHOOK_SECRET = "dashboard-webhook-secret"
FINAL = ("delivered", "failed", "expired", "cancelled", "skipped", "rejected", "unknown")

DOCOMO_LOAD = [f"0902000{n:04d}" for n in range(20)]
UNDELIVERABLE = "09090000001"  # the simulator fails every part to 0909...
WRONG_GUESS = "07011110001"  # the daemon says docomo (0701), the simulator softbank
RAKUTEN_BURST = [f"0705000{n:04d}" for n in range(6)]
AU_NUMBERS = ["08030000001", "08030000001", "08030000002"]
RCS_DELIVERED = "09011110001"
RCS_NOT_CAPABLE = "09011110002"
RCS_NEVER_FALLBACK = "09011110003"
RCS_NEVER_EXPIRES = "09011110004"
SCHEDULED = "09033330001"
LINKED = "09044440001"  # a short link, clicked once


class JumpingClock:
    """Real time, plus whatever the test has jumped: the daemon's sleeps and
    the simulators' delays stay real while validity can run out at once."""

    def __init__(self) -> None:
        self._offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def jump(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)


def smsc_config() -> dict[str, object]:
    return {
        "seed": 3,
        "defaults": {
            "accounts": {"demo": "demo"},
            "receipt_delay_min_s": 0.2,
            "receipt_delay_max_s": 0.4,
        },
        "carriers": {
            "docomo": {
                "port": 0,
                "subscriber_prefixes": ["090"],
                "undeliverable_prefixes": ["0909"],
                "response_delay_min_s": 0.01,
                "response_delay_max_s": 0.05,
            },
            # Slow answers keep au submits in the window across gauge refreshes.
            "au": {
                "port": 0,
                "subscriber_prefixes": ["080"],
                "response_delay_min_s": 0.5,
                "response_delay_max_s": 0.5,
            },
            "softbank": {"port": 0, "subscriber_prefixes": ["070"]},
            "rakuten": {"port": 0, "subscriber_prefixes": ["0705"], "throttle_rate_per_s": 2.0},
        },
    }


def daemon_config(dsn: str, http_port: int, smsc_ports: dict[str, int], rcs_url: str) -> Config:
    prefixes = {"docomo": ["090", "0701"], "au": ["080"], "softbank": ["070"], "rakuten": ["0705"]}
    return parse_config(
        {
            "database": {"dsn": dsn, "pool_min": 1, "pool_max": 6},
            "http": {"host": "127.0.0.1", "port": http_port},
            "engine": {"lease_s": 5, "au_spacing_s": 2.0, "message_expiry_s": 60},
            "links": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": 0,
                "domain": "s.kmc.jp",
                "csrf_secret": "dashboard-links-csrf-secret",
                "secure_cookies": False,
            },
            "accounts": {
                "acme": {
                    "tokens": ["acme-token"],
                    "senders": {
                        "docomo": "0120111111",
                        "au": "0120111111",
                        "softbank": "249200",
                        "rakuten": "0120111111",
                    },
                    "resend": {"max_resends": 1, "interval_s": 1.0},
                    # The callback receiver listens on loopback.
                    "callback_allow_networks": ["127.0.0.0/8"],
                }
            },
            "carriers": {
                name: {
                    "host": "127.0.0.1",
                    "port": smsc_ports[name],
                    "system_id": "demo",
                    "password": "demo",
                    "window": 16,
                    "throttle_pause_s": 0.2,
                    "number_prefixes": prefixes[name],
                }
                for name in CARRIERS
            },
            "rcs": {
                "enabled": True,
                "base_url": rcs_url,
                "bot_id": "carrierd",
                "token": "sim-token",
                "webhook_secret": WEBHOOK_SECRET,
                "fallback_after_s": 1.0,
                "expiry_s": 60.0,
            },
        },
        env={},
    )


# Series whose name alone would pass on another label's account.
LABELLED: tuple[tuple[str, str, str], ...] = (
    ("carrierd_billing_units_total", "channel", "sms"),
    ("carrierd_billing_units_total", "channel", "rcs"),
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(exposition: str) -> Samples:
    """Series name -> the labels and value of each of its samples."""
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total(found: Samples, name: str, label: tuple[str, str] | None = None) -> float:
    return sum(
        value
        for labels, value in found.get(name, [])
        if label is None or labels.get(label[0]) == label[1]
    )


def gauge_names() -> set[str]:
    return {f.name for f in Metrics().registry.collect() if f.type == "gauge"}


class Scraper:
    """Scrapes /metrics now and then; keeps the first and every gauge seen non-zero."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url
        self.nonzero_gauges: set[str] = set()
        self._gauges = gauge_names()

    async def scrape(self) -> Samples:
        async with self._http.get(self._url) as resp:
            assert resp.status == 200
            found = samples(await resp.text())
        for name in self._gauges & found.keys():
            if any(value != 0 for _, value in found[name]):
                self.nonzero_gauges.add(name)
        return found

    async def run(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(SCRAPE_EVERY_S)


def not_moved(
    names: set[str], first: Samples, last: Samples, nonzero_gauges: set[str]
) -> list[str]:
    gauges = gauge_names()
    missing = []
    for name in sorted(names):
        if name in gauges:
            if name not in nonzero_gauges:
                missing.append(name)
        elif total(last, name) <= total(first, name):
            missing.append(name)
    for name, key, value in LABELLED:
        if total(last, name, (key, value)) <= total(first, name, (key, value)):
            missing.append(f'{name}{{{key}="{value}"}}')
    return missing


@contextlib.asynccontextmanager
async def callback_receiver() -> AsyncIterator[tuple[str, list[object]]]:
    received: list[object] = []

    async def record(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", record)
    async with serve(app) as url:
        yield f"{url}/status", received


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], db: Database) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not await check():  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.1)
    except TimeoutError:
        states = await db.call_raw("SELECT msisdn, channel, leg, state FROM messages ORDER BY id")
        raise AssertionError(f"{what} did not happen; messages: {states}") from None


async def states_by_number(db: Database) -> dict[str, list[str]]:
    rows = await db.call_raw("SELECT msisdn, state FROM messages ORDER BY id")
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault("0" + row["msisdn"][3:], []).append(row["state"])
    return found


async def stall_receipt_writes(dsn: str, seconds: float) -> None:
    """Hold off every write to messages and parts, as a slow database would:
    receipts arriving meanwhile stay unanswered until they are durable."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(STALL_ATTEMPTS):
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE messages, parts IN EXCLUSIVE MODE")
                    await asyncio.sleep(seconds)
                return
            except asyncpg.DeadlockDetectedError:
                # A daemon transaction wrote parts between our two locks and
                # then wanted messages (its foreign key check): PostgreSQL
                # chose us to give way. Take both locks again.
                continue
        raise AssertionError(f"no stall after {STALL_ATTEMPTS} deadlocks")
    finally:
        await conn.close()


async def test_every_dashboard_metric_moves(dsn: str, db: Database) -> None:
    dashboard_names = dashboard_metric_names(load_dashboard())
    clock = JumpingClock()
    smsc = SmscSimulator(sim_config_from_mapping(smsc_config()), clock=clock)
    smsc_ports = await smsc.start()
    http_port = free_port()
    rcs_sim = RcsPlatformSim(
        RcsSimConfig(
            capable_share=0.0,
            capable_numbers=frozenset({RCS_DELIVERED, RCS_NEVER_FALLBACK, RCS_NEVER_EXPIRES}),
            never_deliver_numbers=frozenset({RCS_NEVER_FALLBACK, RCS_NEVER_EXPIRES}),
            delivery_delay_min_s=0.05,
            delivery_delay_max_s=0.1,
            webhook_url=f"http://127.0.0.1:{http_port}{WEBHOOK_PATH}",
            webhook_secret=WEBHOOK_SECRET,
            webhook_retry_delay_s=0.05,
        ),
        clock=clock,
    )
    scraper_task: asyncio.Task[None] | None = None
    async with (
        serve(rcs_sim.build_app()) as rcs_url,
        callback_receiver() as (callback_url, callbacks),
        aiohttp.ClientSession() as http,
    ):
        daemon = Daemon(
            daemon_config(dsn, http_port, smsc_ports, rcs_url),
            clock=clock,
            drain_timeout_s=2.0,
            gauge_interval_s=0.1,
        )
        await daemon.start()
        try:
            base = f"http://127.0.0.1:{daemon.http_port}"
            scraper = Scraper(http, f"{base}/metrics")
            first = await scraper.scrape()
            scraper_task = asyncio.create_task(scraper.run())

            def sms(to: str, **extra: object) -> dict[str, object]:
                return {"to": to, "sms": {"text": f"ご注文 {to} を承りました"}, **extra}

            items: list[dict[str, object]] = [
                sms(to, callback_url=callback_url) for to in DOCOMO_LOAD[:2]
            ]
            items += [sms(to) for to in DOCOMO_LOAD[2:]]
            items += [sms(UNDELIVERABLE), sms(WRONG_GUESS)]
            items += [sms(to) for to in RAKUTEN_BURST + AU_NUMBERS]
            rcs = {"text": "+Message のお知らせ"}
            items += [
                {"to": RCS_DELIVERED, "channel": "rcs", "rcs": rcs},
                {**sms(RCS_NOT_CAPABLE), "channel": "rcs_then_sms", "rcs": rcs},
                {**sms(RCS_NEVER_FALLBACK), "channel": "rcs_then_sms", "rcs": rcs},
                {"to": RCS_NEVER_EXPIRES, "channel": "rcs", "rcs": rcs},
                sms(SCHEDULED, send_at=(clock.now() + timedelta(hours=1)).isoformat()),
                {"to": LINKED, "sms": {"text": "詳細は{{link:https://example.com/item}}"}},
                {"to": "12345", "sms": {"text": "not a mobile number"}},
            ]
            async with http.post(
                f"{base}/v1/messages",
                json={"messages": items},
                headers={"Authorization": "Bearer acme-token"},
            ) as resp:
                body = await resp.json()
            assert len(body["accepted"]) == len(items) - 1, body
            assert len(body["rejected"]) == 1, body
            async with http.post(
                f"{base}{WEBHOOK_PATH}", data=b"{}", headers={"X-Signature": "forged"}
            ) as resp:
                assert resp.status >= 400
            [link] = await db.call_raw("SELECT code FROM message_links WHERE kind = 'link'")
            assert daemon.link_server is not None
            async with http.get(
                f"http://127.0.0.1:{daemon.link_server.port}/{link['code']}",
                allow_redirects=False,
            ) as resp:
                assert resp.status == 302

            # The docomo load is with the SMSC: its receipts now meet a stalled database.
            docomo = smsc.counters.carriers["docomo"]

            async def load_accepted() -> bool:
                return docomo.accepted >= len(DOCOMO_LOAD)

            await wait_until("the docomo load", load_accepted, db)
            await stall_receipt_writes(dsn, 1.0)

            async def settled() -> bool:
                states = await states_by_number(db)
                open_numbers = {
                    number
                    for number, seen in states.items()
                    if any(state not in FINAL for state in seen)
                }
                return open_numbers <= {SCHEDULED, RCS_NEVER_EXPIRES} and bool(callbacks)

            await wait_until("everything but the expiries settling", settled, db)
            # An hour and more later: the scheduled send's validity ended
            # before it left, and so did the undelivered +Message.
            clock.jump(3600 + 120)

            async def expired() -> bool:
                states = await states_by_number(db)
                return states[SCHEDULED] == ["expired"] and states[RCS_NEVER_EXPIRES] == ["expired"]

            await wait_until("the expiries", expired, db)
            await asyncio.sleep(3 * SCRAPE_EVERY_S)  # one more gauge refresh
            last = await scraper.scrape()
        finally:
            if scraper_task is not None:
                scraper_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper_task
            await daemon.stop()
            await smsc.stop()

    # The scenario happened as scripted (told by the simulators and the
    # final states, not by the metrics under test).
    states = await states_by_number(db)
    assert states.pop(UNDELIVERABLE) == ["failed"]
    assert states.pop(SCHEDULED) == ["expired"]
    assert states.pop(RCS_NEVER_EXPIRES) == ["expired"]
    assert {state for seen in states.values() for state in seen} == {"delivered"}
    counters = smsc.counters.carriers
    assert counters["docomo"].not_subscriber >= 1  # the wrong first guess
    assert counters["docomo"].receipts_by_stat["UNDELIV"] == 2  # sent, then resent once
    assert counters["rakuten"].throttled >= 1
    assert counters["softbank"].accepted == 1
    assert rcs_sim.counters.delivered_by_recipient.total() == 1

    missing = not_moved(dashboard_names, first, last, scraper.nonzero_gauges)
    assert not missing, f"dashboard metrics that did not move in the scenario: {missing}"
