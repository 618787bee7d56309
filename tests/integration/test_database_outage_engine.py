"""The engine across a stopped PostgreSQL, on a fake clock: a cluster of
this module's own is stopped and started under a live pool.

- The recorder refuses receipts it cannot store (the SMSC delivers them
  again) and holds submit responses, ours alone, until the database is back.
- After the outage, the timers renew this daemon's leases before recovering
  any, and give other daemons a grace to renew theirs: every lease ran out
  during the outage, not only a dead daemon's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from carrierd.channels.reassign import ReassignClient
from carrierd.channels.types import PartOutcome, Receipt, SmsRequest
from carrierd.domain.clock import FakeClock
from carrierd.domain.outage import lost_lease_grace_s
from carrierd.engine.reassign_gate import ReassignGate
from carrierd.engine.write_behind import NotDurable
from carrierd.http.links import start_link_server
from carrierd.loops import MAX_BACKOFF_S
from carrierd.sim.reassign import ReassignSim, ReassignSimConfig
from carrierd.store.db import (
    ConnectionBroken,
    Database,
    create_database_from_template,
    ensure_template,
    is_transient_db_error,
)
from carrierd.telemetry import Metrics
from tests.conftest import with_database
from tests.integration.apiclient import sync_accounts
from tests.integration.engine_harness import (
    Engine,
    NetworkStandIn,
    engine_config,
    enqueue,
    make_engine,
)
from tests.integration.test_rcs_leg import serve
from tests.metric_samples import counter_values
from tests.throwaway_pg import ThrowawayCluster, server_bindir

NOW = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
LEASE_S = 10
TEMPLATE = "carrierd_outage_template"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    bindir = server_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql")
    cluster = ThrowawayCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        asyncio.run(ensure_template(cluster.dsn, TEMPLATE, with_database(cluster.dsn, TEMPLATE)))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def outage_dsn(cluster: ThrowawayCluster) -> str:
    if not cluster.is_running():
        await asyncio.to_thread(cluster.start)
    name = f"outage_{uuid.uuid4().hex[:12]}"
    await create_database_from_template(cluster.dsn, name, TEMPLATE)
    return with_database(cluster.dsn, name)


@pytest.fixture
async def outage_db(outage_dsn: str) -> AsyncIterator[Database]:
    db = await Database.open(outage_dsn, min_size=1, max_size=4)
    yield db
    await db.close()


async def _backend_gone(db: Database, backend_pid: int) -> bool:
    """Whether the server ends the backend within two seconds."""
    for _ in range(100):
        alive = await db.call_raw(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", backend_pid
        )
        if alive[0]["n"] == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_connection_asyncpg_lost_track_of_is_discarded(outage_db: Database) -> None:
    """What a restart under load produced: asyncpg's protocol state confused
    on one connection. The connection goes, the work may be tried again."""
    with pytest.raises(ConnectionBroken) as raised:
        async with outage_db._connection() as conn:
            backend_pid = conn.get_server_pid()
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )
    assert is_transient_db_error(raised.value)
    # The pool dropped it, and works on.
    assert await _backend_gone(outage_db, backend_pid)


async def test_a_connection_found_confused_when_given_back_is_a_broken_connection(
    outage_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same confusion met by the pool's reset as it takes the connection
    back (an intake request at a restart): the error is ConnectionBroken,
    which HTTP answers 503, and the pool works on without it."""

    async def reset_confused(self: asyncpg.Connection, **_: object) -> None:
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )

    with pytest.raises(ConnectionBroken) as raised:
        async with outage_db._connection() as conn:
            backend_pid = conn.get_server_pid()
            monkeypatch.setattr(asyncpg.Connection, "reset", reset_confused)
    monkeypatch.undo()
    assert is_transient_db_error(raised.value)
    # The pool dropped it, and works on.
    assert await _backend_gone(outage_db, backend_pid)


class CommitAnswerLost:
    """A TCP proxy to the cluster's Unix socket that, once armed, forwards a
    client's COMMIT to the server and then cuts the connection before the
    server's answer comes back: a restart at the worst moment, on demand."""

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self.armed = False
        self.cut = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(self._socket_path)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()
                if self.armed and b"COMMIT;\x00" in data:
                    self.armed = False
                    await asyncio.sleep(0.3)  # the server commits meanwhile
                    self.cut += 1
                    cut.set()
                    return

        async def downstream() -> None:
            while not cut.is_set() and (data := await server_r.read(65536)):
                if cut.is_set():
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()


async def test_a_claim_whose_commit_answer_was_lost_is_sent_once(
    cluster: ThrowawayCluster, outage_dsn: str
) -> None:
    database = urlsplit(outage_dsn).path.lstrip("/")
    proxy = CommitAnswerLost(f"{cluster.socket_dir}/.s.PGSQL.5432")
    port = await proxy.start()
    db = await Database.open(
        f"postgresql://postgres@127.0.0.1:{port}/{database}", min_size=1, max_size=2
    )
    try:
        clock = FakeClock(NOW)
        config = engine_config(outage_dsn, {"engine": {"lease_s": LEASE_S, "pacing": False}})
        engine = await make_engine(config, db, clock, daemon_id="mine")
        [mid] = await enqueue(
            db, "acme", [{"to": "09011112222", "sms": {"text": "x"}}], clock.now(), config
        )
        proxy.armed = True
        assert await engine.dispatcher.dispatch_once(clock.now()) == 1
        assert proxy.cut == 1
        await engine.dispatcher.wait_idle()
        await engine.recorder.drain()
        assert [s.request.message_id for s in engine.network.submitted] == [mid]
        assert await state_of(db, mid) == "submitted"
        # Nothing of it is claimed again.
        assert await engine.dispatcher.dispatch_once(clock.now()) == 0
        assert len(engine.network.submitted) == 1
    finally:
        await db.close()
        await proxy.stop()


async def test_a_verdict_whose_commit_answer_was_lost_is_sent_once(
    cluster: ThrowawayCluster, outage_dsn: str
) -> None:
    """The gate's verdict hands the message to the SMS leg in its own
    transaction: when that COMMIT's answer is lost, the message it marked
    'sending' is still submitted, once, and looked up once."""
    database = urlsplit(outage_dsn).path.lstrip("/")
    proxy = CommitAnswerLost(f"{cluster.socket_dir}/.s.PGSQL.5432")
    port = await proxy.start()
    db = await Database.open(
        f"postgresql://postgres@127.0.0.1:{port}/{database}", min_size=1, max_size=2
    )
    sim = ReassignSim(ReassignSimConfig(data_month="2026-10"), now=lambda: NOW)
    sim.hold_answers = True
    try:
        async with serve(sim.build_app()) as url, aiohttp.ClientSession() as session:
            clock = FakeClock(NOW)
            config = engine_config(
                outage_dsn,
                {
                    "engine": {"lease_s": LEASE_S, "pacing": False},
                    "reassign": {"url": url, "token": "sim-reassign-token"},
                },
            )
            engine = await make_engine(config, db, clock, daemon_id="mine")
            gate = ReassignGate(
                db,
                clock,
                ReassignClient(session, lambda: config.reassign),
                engine.lifecycle,
                config=lambda: config,
                lease_owner=engine.dispatcher.lease_owner,
            )
            engine.dispatcher.reassign_gate = gate
            [mid] = await enqueue(
                db,
                "acme",
                [
                    {
                        "to": "09011112222",
                        "sms": {"text": "x"},
                        "reassigned_check": {"base_date": "2025-01-10"},
                    }
                ],
                clock.now(),
                config,
            )
            assert await engine.dispatcher.dispatch_once(clock.now()) == 1
            await asyncio.wait_for(sim.wait_held(1), 5)
            proxy.armed = True  # the next COMMIT is the verdict's
            sim.release(0)
            await asyncio.wait_for(gate.wait_idle(), 10)
            assert proxy.cut == 1
            await engine.dispatcher.wait_idle()
            await engine.recorder.drain()
            assert [s.request.message_id for s in engine.network.submitted] == [mid]
            assert await state_of(db, mid) == "submitted"
            assert await engine.dispatcher.dispatch_once(clock.now()) == 0
            assert len(engine.network.submitted) == 1
            assert sim.counters.requests == 1
            await gate.stop(0)
    finally:
        await db.close()
        await proxy.stop()


class StallingNetwork(NetworkStandIn):
    """Submits that have left and whose response has not come yet."""

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def stop_submits(engine: Engine) -> None:
    for task in list(engine.dispatcher.sms_leg._in_flight):
        task.cancel()


async def state_of(db: Database, message_id: int) -> Any:
    rows = await db.call_raw("SELECT state FROM messages WHERE id = $1", message_id)
    return rows[0]["state"]


async def test_receipts_are_refused_and_responses_held_while_the_database_is_away(
    cluster: ThrowawayCluster, outage_dsn: str, outage_db: Database
) -> None:
    db = outage_db
    clock = FakeClock(NOW)
    config = engine_config(outage_dsn, {"engine": {"lease_s": LEASE_S, "pacing": False}})
    engine = await make_engine(config, db, clock, daemon_id="mine")
    [first, second] = await enqueue(
        db,
        "acme",
        [
            {"to": "09011112222", "sms": {"text": "x"}, "carrier": "docomo"},
            {"to": "09011113333", "sms": {"text": "y"}, "carrier": "docomo"},
        ],
        clock.now(),
        config,
    )
    await engine.cycle()  # both submitted and recorded
    first_id, second_id = (s.smsc_ids[0] for s in engine.network.submitted)
    await asyncio.to_thread(cluster.stop, "fast")

    # A receipt arrives: it cannot be stored, so its deliver_sm must not be
    # acknowledged (the future fails and the SMSC is told to try again).
    pending = engine.recorder.receipt(Receipt("docomo", first_id, "DELIVRD", "000", clock.now()))
    assert pending is not None
    await engine.recorder.flush_once()
    with pytest.raises(NotDurable):
        await pending
    assert engine.recorder.backlog == 0

    await asyncio.to_thread(cluster.start)
    # The SMSC delivers it again; now it is durable and acknowledged.
    again = engine.recorder.receipt(Receipt("docomo", first_id, "DELIVRD", "000", clock.now()))
    assert again is not None
    await engine.recorder.flush_once()
    await again
    assert await state_of(db, first) == "delivered"
    assert await state_of(db, second) == "submitted"
    assert second_id


async def test_responses_that_came_during_the_outage_are_written_after_it(
    cluster: ThrowawayCluster, outage_dsn: str, outage_db: Database
) -> None:
    db = outage_db
    clock = FakeClock(NOW)
    config = engine_config(outage_dsn, {"engine": {"lease_s": LEASE_S, "pacing": False}})
    gate = asyncio.Event()

    class AnswersAfterTheGate(NetworkStandIn):
        async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
            await gate.wait()
            return await super().submit(carrier, request)

    engine = await make_engine(
        config, db, clock, daemon_id="mine", network=AnswersAfterTheGate(clock, ["docomo"])
    )
    [mid] = await enqueue(
        db, "acme", [{"to": "09011112222", "sms": {"text": "x"}}], clock.now(), config
    )
    await engine.dispatcher.dispatch_once(clock.now())
    await asyncio.to_thread(cluster.stop, "immediate")
    gate.set()  # the SMSC answers while the database is away
    await engine.dispatcher.wait_idle()
    await engine.recorder.flush_once()
    assert engine.recorder.backlog == 1  # held, not dropped

    await asyncio.to_thread(cluster.start)
    await engine.recorder.flush_once()
    assert engine.recorder.backlog == 0
    rows = await db.call_raw("SELECT state, smsc_message_id FROM parts WHERE message_id = $1", mid)
    assert [r["state"] for r in rows] == ["accepted"]
    assert rows[0]["smsc_message_id"] == engine.network.submitted[0].smsc_ids[0]


async def test_after_an_outage_own_leases_are_renewed_and_others_get_a_grace(
    cluster: ThrowawayCluster, outage_dsn: str, outage_db: Database
) -> None:
    db = outage_db
    clock = FakeClock(NOW)
    config = engine_config(outage_dsn, {"engine": {"lease_s": LEASE_S, "pacing": False}})
    mine = await make_engine(
        config, db, clock, daemon_id="mine", network=StallingNetwork(clock, ["docomo"])
    )
    other = await make_engine(
        config, db, clock, daemon_id="other", network=StallingNetwork(clock, ["docomo"])
    )
    try:
        [ours] = await enqueue(
            db, "acme", [{"to": "09011112222", "sms": {"text": "x"}}], clock.now(), config
        )
        await mine.dispatcher.dispatch_once(clock.now())
        [theirs] = await enqueue(
            db, "acme", [{"to": "09011113333", "sms": {"text": "y"}}], clock.now(), config
        )
        await other.dispatcher.dispatch_once(clock.now())
        assert await state_of(db, ours) == await state_of(db, theirs) == "sending"

        await asyncio.to_thread(cluster.stop, "fast")
        with pytest.raises(Exception) as raised:
            await mine.settler.settle_step()
        assert is_transient_db_error(raised.value)
        clock.advance(LEASE_S + 5)  # every lease ran out meanwhile
        await asyncio.to_thread(cluster.start)

        # Back: our lease is renewed first, theirs is not taken yet.
        await mine.settler.settle_step()
        assert await state_of(db, ours) == "sending"
        assert await state_of(db, theirs) == "sending"

        # The other daemon never renewed within the grace: it is dead.
        clock.advance(lost_lease_grace_s(LEASE_S, MAX_BACKOFF_S))
        await mine.dispatcher.leases.renew(clock.now())  # our dispatcher keeps renewing
        await mine.settler.settle_step()
        assert await state_of(db, ours) == "sending"
        assert await state_of(db, theirs) == "unknown"
    finally:
        stop_submits(mine)
        stop_submits(other)


async def test_the_link_server_shows_a_page_while_the_database_is_away(
    cluster: ThrowawayCluster, outage_dsn: str, outage_db: Database
) -> None:
    # A click cannot be logged, so it is not redirected: the recipient gets
    # a page saying to try again, the operator a count, and the server
    # redirects again once the database is back, by itself.
    db = outage_db
    clock = FakeClock(NOW)
    config = engine_config(
        outage_dsn,
        {"links": {"enabled": True, "domain": "s.kmc.jp", "csrf_secret": "outage-csrf-secret"}},
    )
    await sync_accounts(db, config)
    [message_id] = await enqueue(
        db, "acme", [{"to": "09011112222", "sms": {"text": "x"}}], clock.now(), config
    )
    await db.call_raw(
        "INSERT INTO link_sets (key, suffixes, message_id, kind, first_link_no, target_urls,"
        " account_id, msisdn, created_at)"
        " VALUES ('AbCdEfGhIjKlM', 'x', $1, 'link', 1, ARRAY['https://a.jp/'], 'acme',"
        " '+819011112222', $2)",
        message_id,
        clock.now(),
    )
    metrics = Metrics()
    server = await start_link_server(
        config.links, db, clock, metrics=metrics, host="127.0.0.1", port=0
    )
    url = f"http://127.0.0.1:{server.port}/AbCdEfGhIjKlMx"

    async def answer(http: aiohttp.ClientSession) -> tuple[int, str, str | None]:
        async with http.get(url, allow_redirects=False) as response:
            return response.status, await response.text(), response.headers.get("Retry-After")

    try:
        async with aiohttp.ClientSession() as http:
            assert (await answer(http))[0] == 302
            await asyncio.to_thread(cluster.stop, "fast")
            status, page, retry_after = await answer(http)
            assert (status, retry_after) == (503, "5")
            assert "一時的にご利用いただけません" in page and "Traceback" not in page
            await asyncio.to_thread(cluster.start)
            for _ in range(50):  # the pool's dead connections go first
                if (await answer(http))[0] == 302:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the link server did not redirect again after the outage")
    finally:
        await server.stop()
    counted = counter_values(metrics, "carrierd_link_answers", "answer")
    assert counted["redirect"] == 2 and counted["unavailable"] >= 1
    [row] = await db.call_raw("SELECT clicks FROM link_clicks WHERE code = 'AbCdEfGhIjKlMx'")
    assert row["clicks"] == 2  # the refused click was not counted
