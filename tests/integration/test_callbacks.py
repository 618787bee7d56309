"""Durable status callbacks against a real aiohttp receiver on port 0 and a
real PostgreSQL, with the time passed in (FakeClock)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from itertools import pairwise
from typing import Any

import pytest
from aiohttp import web

from carrierd.domain.clock import FakeClock
from carrierd.ops.callbacks import (
    CallbackSender,
    GuardedClient,
    RetryPolicy,
    enqueue_callback,
    verify_callback,
)
from carrierd.store.db import Database, Row
from carrierd.telemetry import Metrics

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
SECRETS = {"acme": "acme-callback-secret", "globex": ""}
LOOPBACK = (ip_network("127.0.0.0/8"),)
PAYLOAD = {"id": "0", "client_ref": "order-1", "state": "delivered", "carrier": "au"}


@dataclass
class Receiver:
    """An upstream application's callback endpoint: answers from a script."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        if status in (301, 302):
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status, text="ok" if status < 300 else "no")


@asynccontextmanager
async def running_receiver(*statuses: int) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses=list(statuses))
    app = web.Application()
    app.add_routes([web.post("/status", receiver.handle)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/status"
    try:
        yield receiver
    finally:
        await runner.cleanup()


async def new_message(db: Database, account_id: str = "acme") -> int:
    await db.call_raw(
        "INSERT INTO accounts (account_id) VALUES ($1) ON CONFLICT DO NOTHING", account_id
    )
    rows = await db.call_raw(
        """
        INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                              not_before, expires_at, accepted_at, updated_at)
        VALUES ($1, 'sms', 'sms', 'submitted', '09012345678', '+819012345678', true,
                $2::timestamptz, $2 + interval '72 hours', $2, $2)
        RETURNING id
        """,
        account_id,
        NOW,
    )
    return int(rows[0]["id"])


async def enqueue(
    db: Database, url: str, account_id: str = "acme", payload: dict[str, Any] | None = None
) -> tuple[int, int]:
    message_id = await new_message(db, account_id)
    async with db.transaction() as tx:
        callback_id = await enqueue_callback(
            tx, message_id, account_id, url, payload or PAYLOAD, NOW
        )
    return message_id, callback_id


async def callback_row(db: Database, callback_id: int) -> Row:
    rows = await db.call_raw("SELECT * FROM status_callbacks WHERE id = $1", callback_id)
    return rows[0]


@asynccontextmanager
async def sender_for(
    db: Database,
    clock: FakeClock,
    *,
    secrets: Callable[[str], str | None] = SECRETS.get,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[tuple[CallbackSender, Metrics]]:
    metrics = Metrics()
    client = GuardedClient()
    try:
        yield (
            CallbackSender(
                db,
                client,
                secrets,
                clock,
                metrics,
                # The receivers of these tests listen on loopback.
                allowed_networks=lambda _account: LOOPBACK,
                policy=policy,
                request_timeout_s=5.0,
                idle_poll_s=0.01,
            ),
            metrics,
        )
    finally:
        await client.close()


def outcome_counts(metrics: Metrics) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "carrierd_callbacks_total":
                counts[sample.labels["outcome"]] = sample.value
    return counts


async def test_delivered_once_after_two_failures_with_a_valid_signature(db: Database) -> None:
    clock = FakeClock(NOW)
    policy = RetryPolicy(base_backoff_s=30, max_backoff_s=3600)
    async with (
        running_receiver(500, 503) as receiver,
        sender_for(db, clock, policy=policy) as (
            sender,
            metrics,
        ),
    ):
        _, callback_id = await enqueue(db, receiver.url)

        assert await sender.run_once(clock.now()) == 1
        row = await callback_row(db, callback_id)
        assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 500")
        assert row["next_attempt_at"] == NOW + timedelta(seconds=30)
        # Not due again before its backoff has passed.
        assert await sender.run_once(clock.now() + timedelta(seconds=29)) == 0

        clock.advance(30)
        assert await sender.run_once(clock.now()) == 1
        row = await callback_row(db, callback_id)
        assert row["next_attempt_at"] == clock.now() + timedelta(seconds=60)

        clock.advance(60)
        assert await sender.run_once(clock.now()) == 1
        row = await callback_row(db, callback_id)
        assert (row["state"], row["attempts"]) == ("sent", 3)
        assert row["finished_at"] == clock.now()

        clock.advance(3600)
        assert await sender.run_once(clock.now()) == 0

    assert len(receiver.requests) == 3
    for attempt, (headers, body) in enumerate(receiver.requests, start=1):
        assert json.loads(body) == PAYLOAD
        assert headers["X-Carrierd-Callback-Id"] == str(callback_id)
        assert headers["X-Carrierd-Attempt"] == str(attempt)
        timestamp = headers["X-Carrierd-Timestamp"]
        # Checked the way a receiver would, without carrierd's own helper.
        expected = hmac.new(
            b"acme-callback-secret", timestamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert headers["X-Carrierd-Signature"] == f"sha256={expected}"
        assert verify_callback("acme-callback-secret", timestamp, body, f"sha256={expected}")
        assert not verify_callback("another-secret", timestamp, body, f"sha256={expected}")
    delivered_at = receiver.requests[-1][0]["X-Carrierd-Timestamp"]
    assert int(delivered_at) == int((NOW + timedelta(seconds=90)).timestamp())
    assert outcome_counts(metrics) == {"retry": 2.0, "sent": 1.0}


async def test_gives_up_after_max_age_with_the_last_attempt_at_the_deadline(
    db: Database,
) -> None:
    clock = FakeClock(NOW)
    async with (
        running_receiver(*[503] * 100) as receiver,
        sender_for(db, clock) as (
            sender,
            metrics,
        ),
    ):
        _, callback_id = await enqueue(db, receiver.url)
        attempt_times = []
        while (row := await callback_row(db, callback_id))["state"] == "pending":
            clock.set(row["next_attempt_at"])
            attempt_times.append(clock.now())
            assert await sender.run_once(clock.now()) == 1

    assert row["state"] == "gave_up"
    assert row["last_error"] == "HTTP 503"
    assert attempt_times[-1] == NOW + timedelta(hours=24)
    gaps = [(b - a).total_seconds() for a, b in pairwise(attempt_times)]
    # Exponential from 30 s, capped at an hour, then the final deadline.
    assert gaps[:8] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert all(gap <= 3600 for gap in gaps)
    assert len(receiver.requests) == row["attempts"] == len(attempt_times)
    assert outcome_counts(metrics) == {"retry": len(attempt_times) - 1.0, "gave_up": 1.0}


async def test_a_sender_that_dies_mid_attempt_loses_nothing(db: Database) -> None:
    clock = FakeClock(NOW)
    async with running_receiver() as receiver, sender_for(db, clock) as (sender, _):
        _, callback_id = await enqueue(db, receiver.url)
        # A daemon claims the row and dies before it records anything.
        lease_until = NOW + timedelta(minutes=5)
        claimed = await db.fetch("claim_status_callbacks", NOW, lease_until, 10)
        assert [r["id"] for r in claimed] == [callback_id]

        # Leased: the other daemons leave it alone until the lease runs out.
        assert await sender.run_once(NOW + timedelta(minutes=4)) == 0
        assert await sender.run_once(lease_until) == 1
        row = await callback_row(db, callback_id)
        assert (row["state"], row["attempts"]) == ("sent", 2)

        # The dead daemon's late result (attempt 1) cannot overwrite it.
        await db.execute(
            "record_status_callback_results",
            [callback_id],
            [1],
            ["pending"],
            [NOW],
            ["HTTP 500"],
            NOW,
        )
        assert (await callback_row(db, callback_id))["state"] == "sent"
    assert len(receiver.requests) == 1


async def test_a_rolled_back_state_change_sends_no_callback(db: Database) -> None:
    message_id = await new_message(db)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with db.transaction() as tx:
            await enqueue_callback(tx, message_id, "acme", "http://127.0.0.1:9/", PAYLOAD, NOW)
            raise Abort
    assert await db.call_raw("SELECT id FROM status_callbacks") == []


async def test_failures_are_recorded_and_retried(db: Database) -> None:
    clock = FakeClock(NOW)
    lookups = {**SECRETS}
    async with (
        running_receiver(302) as receiver,
        sender_for(db, clock, secrets=lookups.get) as (
            sender,
            _,
        ),
    ):
        _, redirected = await enqueue(db, receiver.url)
        _, refused = await enqueue(db, "http://127.0.0.1:1/status")
        _, unsigned = await enqueue(db, receiver.url, account_id="globex")
        _, orphan = await enqueue(db, receiver.url, account_id="initech")
        assert await sender.run_once(NOW) == 4

        # A redirect is not followed (it would carry the signed status away).
        assert (await callback_row(db, redirected))["last_error"] == "HTTP 302"
        refused_row = await callback_row(db, refused)
        assert refused_row["state"] == "pending"
        assert refused_row["last_error"].startswith("Client")
        # An account without a secret gets its callbacks unsigned.
        assert (await callback_row(db, unsigned))["state"] == "sent"
        unsigned_headers = next(
            h for h, _ in receiver.requests if h["X-Carrierd-Callback-Id"] == str(unsigned)
        )
        assert "X-Carrierd-Signature" not in unsigned_headers
        # An account no longer configured is retried (a reload may restore it).
        orphan_row = await callback_row(db, orphan)
        assert (orphan_row["state"], orphan_row["last_error"]) == (
            "pending",
            "account not configured",
        )
        assert len(receiver.requests) == 2


async def test_run_delivers_until_stopped(db: Database) -> None:
    clock = FakeClock(NOW)
    async with running_receiver() as receiver, sender_for(db, clock) as (sender, _):
        ids = [(await enqueue(db, receiver.url))[1] for _ in range(3)]
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        for _ in range(500):
            states = {r["state"] for r in await db.call_raw("SELECT state FROM status_callbacks")}
            if states == {"sent"}:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5.0)
    assert sorted(int(h["X-Carrierd-Callback-Id"]) for h, _ in receiver.requests) == ids


async def test_purging_a_message_takes_its_callbacks(db: Database) -> None:
    message_id, _ = await enqueue(db, "http://127.0.0.1:9/")
    await db.call_raw("DELETE FROM messages WHERE id = $1", message_id)
    assert await db.call_raw("SELECT id FROM status_callbacks") == []


def test_retry_policy_backs_off_exponentially_up_to_the_cap_and_the_deadline() -> None:
    policy = RetryPolicy(base_backoff_s=10, max_backoff_s=100, max_age_s=1000)
    created = NOW
    assert policy.next_attempt_at(1, created, NOW) == NOW + timedelta(seconds=10)
    assert policy.next_attempt_at(2, created, NOW) == NOW + timedelta(seconds=20)
    assert policy.next_attempt_at(5, created, NOW) == NOW + timedelta(seconds=100)
    assert policy.next_attempt_at(500, created, NOW) == NOW + timedelta(seconds=100)
    late = NOW + timedelta(seconds=950)
    assert policy.next_attempt_at(9, created, late) == NOW + timedelta(seconds=1000)
    assert policy.next_attempt_at(10, created, NOW + timedelta(seconds=1000)) is None


def test_sender_refuses_a_lease_shorter_than_its_slowest_batch() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        CallbackSender(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            SECRETS.get,
            FakeClock(NOW),
            Metrics(),
            batch_size=100,
            max_concurrency=10,
            request_timeout_s=10,
            lease_s=60,
        )
