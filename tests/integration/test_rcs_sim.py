"""The +Message platform simulator on its own, spoken to over raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from carrierd.sim.rcs import RCS_SIM_KEY, RcsPlatformSim, RcsSimConfig, build_app, run_rcs_sim

CAPABLE = "+819012345678"
AUTH = {"Authorization": "Bearer sim-token"}
WAIT_S = 10.0  # an upper bound, not a speed claim


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running(sim: RcsPlatformSim) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with serve(sim.build_app()) as base, aiohttp.ClientSession() as session:
        yield f"{base}/bot/v1/{sim.config.bot_id}", session


def text_message(msg_id: str, to: str = CAPABLE, **extra: Any) -> dict[str, Any]:
    return {
        "RCSMessage": {"msgId": msg_id, "textMessage": "こんにちは", **extra},
        "messageContact": {"userContact": to},
    }


class Receiver:
    """A webhook receiver that can be told to fail its first requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.payloads: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.signatures: list[tuple[bytes, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=503)
        body = await request.read()
        self.signatures.append(
            (
                request.headers.get("X-Signature-Timestamp", "").encode() + b"." + body,
                request.headers.get("X-Signature", ""),
            )
        )
        self.payloads.put_nowait(json.loads(body))
        return web.Response(status=200)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.payloads.get(), WAIT_S)


# -- capability --------------------------------------------------------------------


def test_about_a_fifth_of_numbers_are_capable_and_stably_so() -> None:
    sim = RcsPlatformSim(RcsSimConfig())
    numbers = [f"+8190{n:08d}" for n in range(10_000_000, 10_004_000)]
    capable = [number for number in numbers if sim.is_capable(number)]
    assert 0.17 < len(capable) / len(numbers) < 0.23
    # A stable hash: another simulator (another seed, another run) agrees.
    other = RcsPlatformSim(RcsSimConfig(seed=99))
    assert [number for number in numbers if other.is_capable(number)] == capable


def test_explicit_lists_override_the_hash_in_any_spelling() -> None:
    sim = RcsPlatformSim(
        RcsSimConfig(
            capable_share=0.0,
            capable_numbers=frozenset({"090-1234-5678"}),
            incapable_numbers=frozenset({"+818011112222"}),
        )
    )
    assert sim.is_capable("+819012345678")
    assert not sim.is_capable("08011112222")
    assert not RcsPlatformSim(
        RcsSimConfig(capable_share=1.0, incapable_numbers=frozenset({CAPABLE}))
    ).is_capable("09012345678")


async def test_capability_endpoint() -> None:
    sim = RcsPlatformSim(RcsSimConfig(capable_numbers=frozenset({CAPABLE}), capable_share=0.0))
    async with running(sim) as (bot, session):
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": CAPABLE}, headers=AUTH
        ) as response:
            assert response.status == 200
            assert (await response.json())["capabilities"] == list(sim.config.features)
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": "+817000000001"}, headers=AUTH
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "NOT_CAPABLE"
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": CAPABLE}
        ) as response:
            assert response.status == 401


# -- send, de-duplication ---------------------------------------------------------------


async def test_msg_id_deduplication_and_counters() -> None:
    sim = RcsPlatformSim(
        RcsSimConfig(
            capable_numbers=frozenset({CAPABLE}),
            delivery_delay_min_s=0.0,
            delivery_delay_max_s=0.0,
        )
    )
    async with running(sim) as (bot, session):
        for expected in (201, 409, 409):
            async with session.post(
                f"{bot}/messages", json=text_message("x-1"), headers=AUTH
            ) as response:
                assert response.status == expected
        async with session.post(f"{bot}/messages", json=text_message("x-2"), headers=AUTH) as r:
            assert r.status == 201
        await sim.wait_idle()
    counters = sim.counters
    assert counters.posts_by_msg_id == {"x-1": 3, "x-2": 1}
    assert counters.accepted_by_msg_id == {"x-1": 1, "x-2": 1}
    assert counters.duplicates_by_msg_id == {"x-1": 2}
    assert counters.accepted_by_recipient == {CAPABLE: 2}
    assert counters.delivered_by_msg_id == {"x-1": 1, "x-2": 1}
    assert counters.delivered_by_recipient == {CAPABLE: 2}


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"RCSMessage": {"textMessage": "x"}, "messageContact": {"userContact": CAPABLE}},
        {"RCSMessage": {"msgId": "a"}, "messageContact": {"userContact": CAPABLE}},
        {"RCSMessage": {"msgId": "a", "textMessage": "x"}},
    ],
)
async def test_malformed_sends_are_400(body: object) -> None:
    sim = RcsPlatformSim(RcsSimConfig(capable_share=1.0))
    async with (
        running(sim) as (bot, session),
        session.post(f"{bot}/messages", json=body, headers=AUTH) as response,
    ):
        assert response.status == 400
    assert sim.counters.accepted_by_msg_id == {}


async def test_transient_errors_hit_only_the_first_attempt() -> None:
    sim = RcsPlatformSim(
        RcsSimConfig(capable_share=1.0, transient_5xx_share=1.0, transient_after_accept=True)
    )
    async with running(sim) as (bot, session):
        statuses = []
        for _ in range(3):
            async with session.post(f"{bot}/messages", json=text_message("t-1"), headers=AUTH) as r:
                statuses.append(r.status)
    assert statuses == [502, 409, 409]
    assert sim.counters.accepted_by_msg_id == {"t-1": 1}
    assert sim.counters.transient_errors == 1


async def capacity_rejected_ids(seed: int, count: int = 60) -> set[str]:
    sim = RcsPlatformSim(RcsSimConfig(capable_share=1.0, capacity_share=0.3, seed=seed))
    rejected = set()
    async with running(sim) as (bot, session):
        for i in range(count):
            async with session.post(
                f"{bot}/messages", json=text_message(f"c-{i}"), headers=AUTH
            ) as response:
                assert response.status in (201, 429)
                if response.status == 429:
                    assert (await response.json())["error"]["code"] == "CAPACITY_EXCEEDED"
                    rejected.add(f"c-{i}")
    assert sim.counters.capacity_rejections == len(rejected)
    assert set(sim.counters.accepted_by_msg_id) == {f"c-{i}" for i in range(count)} - rejected
    return rejected


async def test_capacity_by_share_follows_the_seed() -> None:
    first = await capacity_rejected_ids(seed=1)
    assert 5 < len(first) < 35
    assert await capacity_rejected_ids(seed=1) == first
    assert await capacity_rejected_ids(seed=2) != first


# -- revoke --------------------------------------------------------------------------------


async def test_revoke_states() -> None:
    sim = RcsPlatformSim(
        RcsSimConfig(capable_share=1.0, never_deliver_share=1.0, post_sent_status=False)
    )
    async with running(sim) as (bot, session):
        for msg_id in ("r-1", "r-2"):
            async with session.post(f"{bot}/messages", json=text_message(msg_id), headers=AUTH):
                pass
        await sim.deliver_now("r-2")

        async def revoke(msg_id: str, body: object) -> int:
            async with session.put(
                f"{bot}/messages/{msg_id}/status", json=body, headers=AUTH
            ) as response:
                return response.status

        cancelled = {"RCSMessage": {"status": "cancelled"}}
        assert await revoke("r-1", {"RCSMessage": {"status": "displayed"}}) == 400
        assert await revoke("r-1", cancelled) == 204
        assert await revoke("r-1", {"status": "cancelled"}) == 204  # bare form, idempotent
        assert await revoke("r-2", cancelled) == 409
        assert await revoke("nope", cancelled) == 404
    assert sim.message_state("r-1") == "cancelled"
    assert sim.counters.revoked_msg_ids == {"r-1": 1}
    assert sim.counters.revoke_requests == 4
    assert sim.counters.delivered_by_msg_id == {"r-2": 1}


async def test_a_revoked_message_is_never_delivered() -> None:
    sim = RcsPlatformSim(
        RcsSimConfig(capable_share=1.0, delivery_delay_min_s=0.2, delivery_delay_max_s=0.2)
    )
    async with running(sim) as (bot, session):
        async with session.post(f"{bot}/messages", json=text_message("v-1"), headers=AUTH):
            pass
        async with session.put(
            f"{bot}/messages/v-1/status", json={"RCSMessage": {"status": "cancelled"}}, headers=AUTH
        ) as response:
            assert response.status == 204
        await sim.wait_idle()
    assert sim.counters.delivered_by_msg_id == {}
    assert sim.message_state("v-1") == "cancelled"


# -- webhooks ---------------------------------------------------------------------------------


async def test_webhooks_are_signed_and_retried_while_the_receiver_is_down() -> None:
    receiver = Receiver(fail_first=2)
    async with serve(receiver.app()) as hook_base:
        sim = RcsPlatformSim(
            RcsSimConfig(
                capable_share=1.0,
                delivery_delay_min_s=0.0,
                delivery_delay_max_s=0.0,
                webhook_url=f"{hook_base}/hook",
                webhook_secret="s3",
                webhook_retry_delay_s=0.01,
                displayed_share=1.0,
            )
        )
        async with running(sim) as (bot, session):
            async with session.post(f"{bot}/messages", json=text_message("w-1"), headers=AUTH):
                pass
            statuses = [(await receiver.next())["RCSMessage"]["status"] for _ in range(3)]
            await sim.wait_idle()
    assert statuses == ["sent", "delivered", "displayed"]
    assert sim.counters.webhook_attempt_failures == 2
    assert sim.counters.webhooks_delivered == 3
    # Each attempt is signed over "<timestamp>.<body>".
    for signed, signature in receiver.signatures:
        assert signed[:1].isdigit()
        assert signature == hmac.new(b"s3", signed, hashlib.sha256).hexdigest()


async def test_inbound_text_reply_when_the_message_has_no_reply_suggestion() -> None:
    receiver = Receiver()
    async with serve(receiver.app()) as hook_base:
        sim = RcsPlatformSim(
            RcsSimConfig(
                capable_share=1.0,
                delivery_delay_min_s=0.0,
                delivery_delay_max_s=0.0,
                post_sent_status=False,
                webhook_url=f"{hook_base}/hook",
                inbound_reply_share=1.0,
                inbound_reply_delay_s=0.0,
            )
        )
        async with running(sim) as (bot, session):
            async with session.post(f"{bot}/messages", json=text_message("i-1"), headers=AUTH):
                pass
            delivered = await receiver.next()
            inbound = await receiver.next()
    assert delivered["RCSMessage"]["status"] == "delivered"
    assert inbound["event"] == "message"
    assert inbound["RCSMessage"]["textMessage"] == "はい"
    assert inbound["RCSMessage"]["inReplyTo"] == "i-1"
    assert inbound["messageContact"] == {"userContact": CAPABLE}


# -- OAuth2 token endpoint ------------------------------------------------------------------------


async def test_token_endpoint() -> None:
    sim = RcsPlatformSim(RcsSimConfig(bearer_token=None, capable_share=1.0, token_lifetime_s=60))
    async with running(sim) as (bot, session):
        base = bot.split("/bot/")[0]
        good = base64.b64encode(b"carrierd:sim-client-secret").decode()
        async with session.post(
            f"{base}/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {good}"},
        ) as response:
            assert response.status == 200
            token = await response.json()
        assert token["token_type"] == "Bearer"
        assert token["expires_in"] == 60
        async with session.post(
            f"{base}/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "carrierd",
                "client_secret": "wrong",
            },
        ) as response:
            assert response.status == 401
        async with session.post(
            f"{base}/oauth2/token", data={"grant_type": "password"}
        ) as response:
            assert response.status == 400
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": CAPABLE}, headers=bearer
        ) as response:
            assert response.status == 200
        # The static token is off in this configuration.
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": CAPABLE}, headers=AUTH
        ) as response:
            assert response.status == 401
        sim.expire_tokens()
        async with session.get(
            f"{bot}/contactCapabilities", params={"userContact": CAPABLE}, headers=bearer
        ) as response:
            assert response.status == 401
    assert sim.counters.tokens_issued == 1


# -- wiring ---------------------------------------------------------------------------------


async def test_build_app_exposes_the_simulator() -> None:
    app = build_app(RcsSimConfig(capable_share=1.0))
    async with (
        serve(app) as base,
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/bot/v1/carrierd/messages", json=text_message("b-1"), headers=AUTH
        ) as response,
    ):
        assert response.status == 201
    assert app[RCS_SIM_KEY].counters.accepted_by_msg_id == {"b-1": 1}


async def test_run_rcs_sim_serves_until_cancelled() -> None:
    listening: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_rcs_sim(
            RcsSimConfig(capable_share=1.0), "127.0.0.1", 0, on_listening=listening.set_result
        )
    )
    try:
        [base] = await asyncio.wait_for(listening, WAIT_S)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{base}/bot/v1/carrierd/contactCapabilities",
                params={"userContact": CAPABLE},
                headers=AUTH,
            ) as response,
        ):
            assert response.status == 200
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="capable_share"):
        RcsSimConfig(capable_share=1.5)
    with pytest.raises(ValueError, match="delivery_delay"):
        RcsSimConfig(delivery_delay_min_s=2.0, delivery_delay_max_s=1.0)
