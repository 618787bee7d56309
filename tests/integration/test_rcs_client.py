"""RcsClient against the +Message platform simulator, both on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from carrierd.channels.rcs import (
    UNAUTHORIZED_REASONS,
    BearerAuth,
    InboundEvent,
    MessageStatusEvent,
    OAuth2ClientCredentials,
    RcsClient,
    RcsPlatformConfig,
    RcsPlatformError,
    TypingEvent,
    WebhookEvent,
    WebhookRejected,
    verify_and_parse_webhook,
    webhook_headers,
    webhook_signature,
)
from carrierd.domain.rcs_content import validate_rcs
from carrierd.sim.rcs import RcsPlatformSim, RcsSimConfig

CAPABLE = "+819012345678"
CAPABLE_2 = "+818011112222"
INCAPABLE = "+817012345678"
WEBHOOK_SECRET = "hook-secret-for-tests"
TEXT = validate_rcs({"text": "ご予約を承りました"})
WAIT_S = 10.0  # an upper bound for a webhook to arrive, not a speed claim


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


class WebhookInbox:
    """What the lead's webhook handler does: verify, parse, never apply a reject."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.events: asyncio.Queue[WebhookEvent] = asyncio.Queue()
        self.rejections: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            # The simulator signs with the time of the attempt.
            event = verify_and_parse_webhook(
                body, request.headers, self.secret, now=datetime.now(UTC)
            )
        except WebhookRejected as rejected:
            self.rejections.append(rejected.reason)
            unauthorized = rejected.reason in UNAUTHORIZED_REASONS
            return web.Response(status=401 if unauthorized else 400)
        self.events.put_nowait(event)
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/rcs/webhook", self.handle)
        return app

    async def next_event(self) -> WebhookEvent:
        return await asyncio.wait_for(self.events.get(), WAIT_S)

    async def status(self, message_id: str, status: str) -> MessageStatusEvent:
        """The next status event for `message_id` with `status`, skipping others."""
        while True:
            event = await self.next_event()
            if (
                isinstance(event, MessageStatusEvent)
                and event.message_id == message_id
                and event.status == status
            ):
                return event


class Platform:
    """A running simulator, a webhook inbox, and a client session."""

    def __init__(
        self,
        sim: RcsPlatformSim,
        base_url: str,
        inbox: WebhookInbox,
        session: aiohttp.ClientSession,
    ) -> None:
        self.sim = sim
        self.base_url = base_url
        self.inbox = inbox
        self.session = session

    def client(self, **overrides: Any) -> RcsClient:
        monotonic = overrides.pop("monotonic", None)
        fields: dict[str, Any] = {
            "base_url": self.base_url,
            "bot_id": self.sim.config.bot_id,
            "auth": BearerAuth("sim-token"),
            "webhook_secret": WEBHOOK_SECRET,
            "request_timeout_s": 5.0,
            "max_attempts": 3,
            "retry_initial_wait_s": 0.01,
            "retry_max_wait_s": 0.02,
        }
        fields.update(overrides)
        config = RcsPlatformConfig(**fields)
        if monotonic is None:
            return RcsClient(self.session, config)
        return RcsClient(self.session, config, monotonic=monotonic)

    def oauth(
        self, secret: str = "sim-client-secret", margin_s: float = 30.0
    ) -> OAuth2ClientCredentials:
        return OAuth2ClientCredentials(
            token_url=f"{self.base_url}/oauth2/token",
            client_id="carrierd",
            client_secret=secret,
            refresh_margin_s=margin_s,
        )


PlatformFactory = Callable[..., contextlib.AbstractAsyncContextManager[Platform]]


@pytest.fixture
async def platform() -> AsyncIterator[PlatformFactory]:
    """`async with platform(**sim_config) as p:` starts inbox + simulator."""
    async with aiohttp.ClientSession() as session:

        @contextlib.asynccontextmanager
        async def start(**overrides: Any) -> AsyncIterator[Platform]:
            inbox = WebhookInbox(WEBHOOK_SECRET)
            async with serve(inbox.app()) as inbox_url:
                fields: dict[str, Any] = {
                    "capable_numbers": frozenset({CAPABLE, CAPABLE_2}),
                    "incapable_numbers": frozenset({INCAPABLE}),
                    "delivery_delay_min_s": 0.0,
                    "delivery_delay_max_s": 0.02,
                    "webhook_url": f"{inbox_url}/rcs/webhook",
                    "webhook_secret": WEBHOOK_SECRET,
                    "webhook_retry_delay_s": 0.01,
                    "seed": 7,
                }
                fields.update(overrides)
                sim = RcsPlatformSim(RcsSimConfig(**fields))
                async with serve(sim.build_app()) as base_url:
                    yield Platform(sim, base_url, inbox, session)

        yield start


async def wait_for_state(sim: RcsPlatformSim, message_id: str, state: str) -> None:
    await asyncio.wait_for(sim.wait_for_state(message_id, state), WAIT_S)


# -- capability ------------------------------------------------------------------


async def test_capability_yes_and_no(platform: PlatformFactory) -> None:
    async with platform() as p:
        client = p.client()
        capable = await client.capability(CAPABLE)
        assert capable.capable
        assert "richcard" in capable.features
        assert (await client.capability(INCAPABLE)).capable is False
        assert p.sim.counters.capability_checks == 2


async def test_capability_on_a_misconfigured_bot_raises(platform: PlatformFactory) -> None:
    async with platform() as p:
        with pytest.raises(RcsPlatformError) as caught:
            await p.client(bot_id="someone-else").capability(CAPABLE)
        assert caught.value.reason == "forbidden"
        assert caught.value.http_status == 403


# -- send ---------------------------------------------------------------------------


async def test_send_then_sent_and_delivered_webhooks(platform: PlatformFactory) -> None:
    async with platform() as p:
        outcome = await p.client().send("m-1", CAPABLE, TEXT)
        assert outcome.kind == "accepted"
        assert not outcome.already_existed
        assert outcome.attempts == 1

        sent = await p.inbox.next_event()
        delivered = await p.inbox.next_event()
        assert sent == MessageStatusEvent("m-1", "sent", sent.at, CAPABLE, None)
        assert isinstance(delivered, MessageStatusEvent)
        assert (delivered.message_id, delivered.status, delivered.msisdn) == (
            "m-1",
            "delivered",
            CAPABLE,
        )
        assert delivered.at is not None and delivered.at.tzinfo is not None
        assert p.sim.counters.accepted_by_msg_id == {"m-1": 1}
        assert p.sim.counters.delivered_by_recipient == {CAPABLE: 1}
        assert p.inbox.rejections == []


async def test_rich_card_reaches_the_platform_in_maap_form(platform: PlatformFactory) -> None:
    card = validate_rcs(
        {
            "card": {
                "media": {
                    "url": "https://cdn.example.jp/a.jpg",
                    "content_type": "image/jpeg",
                    "size_bytes": 2048,
                },
                "title": "春のキャンペーン",
                "suggestions": [{"type": "reply", "text": "参加", "postback": "join"}],
            }
        }
    )
    async with platform(inbound_reply_share=1.0, inbound_reply_delay_s=0.0) as p:
        assert (await p.client().send("card-1", CAPABLE, card)).kind == "accepted"
        await p.inbox.status("card-1", "delivered")
        reply = await p.inbox.next_event()
        assert isinstance(reply, InboundEvent)
        # The simulated recipient tapped the card's reply suggestion.
        assert reply == InboundEvent(
            msisdn=CAPABLE,
            kind="suggestion_reply",
            text="参加",
            postback="join",
            message_id=reply.message_id,
            in_reply_to="card-1",
            at=reply.at,
        )


async def test_retry_after_5xx_does_not_send_twice(platform: PlatformFactory) -> None:
    # The platform stores the message, then a proxy loses its answer (502).
    async with platform(transient_5xx_share=1.0, transient_after_accept=True) as p:
        outcome = await p.client().send("m-5xx", CAPABLE, TEXT)
        assert outcome.kind == "accepted"
        assert outcome.already_existed
        assert outcome.attempts == 2
        await p.inbox.status("m-5xx", "delivered")
        await p.sim.wait_idle()
        counters = p.sim.counters
        assert counters.posts_by_msg_id == {"m-5xx": 2}
        assert counters.accepted_by_msg_id == {"m-5xx": 1}
        assert counters.accepted_by_recipient == {CAPABLE: 1}
        assert counters.delivered_by_msg_id == {"m-5xx": 1}


async def test_retry_after_5xx_before_accept_sends_once(platform: PlatformFactory) -> None:
    async with platform(transient_5xx_share=1.0, transient_after_accept=False) as p:
        outcome = await p.client().send("m-503", CAPABLE, TEXT)
        assert (outcome.kind, outcome.already_existed, outcome.attempts) == ("accepted", False, 2)
        assert p.sim.counters.accepted_by_msg_id == {"m-503": 1}


async def test_resend_after_a_restart_is_accepted_not_duplicated(platform: PlatformFactory) -> None:
    async with platform() as p:
        assert (await p.client().send("m-again", CAPABLE, TEXT)).kind == "accepted"
        # A second daemon picks the row up again after the first one died.
        again = await p.client().send("m-again", CAPABLE, TEXT)
        assert (again.kind, again.already_existed, again.http_status) == ("accepted", True, 409)
        await p.inbox.status("m-again", "delivered")
        await p.sim.wait_idle()
        assert p.sim.counters.accepted_by_msg_id == {"m-again": 1}
        assert p.sim.counters.delivered_by_recipient == {CAPABLE: 1}


async def test_capacity_exceeded_is_its_own_outcome_and_not_retried(
    platform: PlatformFactory,
) -> None:
    async with platform(capacity_numbers=frozenset({CAPABLE_2})) as p:
        outcome = await p.client().send("m-cap", CAPABLE_2, TEXT)
        assert (outcome.kind, outcome.reason, outcome.http_status) == (
            "capacity_exceeded",
            "capacity_exceeded",
            429,
        )
        assert outcome.detail is not None and "CAPACITY_EXCEEDED" in outcome.detail
        assert p.sim.counters.posts_by_msg_id == {"m-cap": 1}
        assert p.sim.counters.accepted_by_msg_id == {}


async def test_send_to_an_incapable_handset(platform: PlatformFactory) -> None:
    async with platform() as p:
        outcome = await p.client().send("m-no", INCAPABLE, TEXT)
        assert (outcome.kind, outcome.reason, outcome.http_status) == (
            "not_capable",
            "not_capable",
            404,
        )


async def test_4xx_is_rejected_with_reason_and_platform_text(platform: PlatformFactory) -> None:
    async with platform() as p:
        outcome = await p.client(auth=BearerAuth("wrong")).send("m-401", CAPABLE, TEXT)
        assert (outcome.kind, outcome.reason, outcome.http_status) == (
            "rejected",
            "unauthorized",
            401,
        )
        assert outcome.detail == "UNAUTHORIZED: missing or expired token"
        assert outcome.attempts == 1


async def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        config = RcsPlatformConfig(
            base_url=f"http://127.0.0.1:{closed_port}",
            bot_id="b",
            auth=BearerAuth("t"),
            webhook_secret="s",
            max_attempts=3,
            retry_initial_wait_s=0.001,
            retry_max_wait_s=0.002,
        )
        client = RcsClient(session, config)
        outcome = await client.send("m-down", CAPABLE, TEXT)
        assert (outcome.kind, outcome.reason, outcome.attempts) == ("error", "connection_error", 3)
        revoke = await client.revoke("m-down")
        assert (revoke.kind, revoke.reason, revoke.attempts) == ("error", "connection_error", 3)
        with pytest.raises(RcsPlatformError) as caught:
            await client.capability(CAPABLE)
        assert caught.value.reason == "connection_error"


# -- revoke ----------------------------------------------------------------------------


async def test_revoke_pending_vs_already_delivered_vs_unknown(platform: PlatformFactory) -> None:
    async with platform(never_deliver_numbers=frozenset({CAPABLE_2})) as p:
        client = p.client()
        assert (await client.send("m-stuck", CAPABLE_2, TEXT)).kind == "accepted"
        assert (await client.send("m-done", CAPABLE, TEXT)).kind == "accepted"
        await p.inbox.status("m-done", "delivered")

        revoked = await client.revoke("m-stuck")
        assert (revoked.kind, revoked.http_status) == ("revoked", 204)
        cancelled = await p.inbox.status("m-stuck", "cancelled")
        assert cancelled.msisdn == CAPABLE_2
        # Revoking twice (a settler retry after a crash) is still success.
        assert (await client.revoke("m-stuck")).kind == "revoked"

        late = await client.revoke("m-done")
        assert (late.kind, late.reason, late.http_status) == (
            "already_delivered",
            "already_delivered",
            409,
        )
        assert (await client.revoke("never-sent")).kind == "not_found"
        assert p.sim.counters.revoked_msg_ids == {"m-stuck": 1}
        assert p.sim.counters.delivered_by_recipient == {CAPABLE: 1}


async def test_revoke_racing_a_committed_delivery_already_delivered(
    platform: PlatformFactory,
) -> None:
    async with platform(
        post_sent_status=False,
        delivery_delay_min_s=0.3,
        delivery_delay_max_s=0.3,
        commit_before_delivery_s=0.3,
        revoke_race="already_delivered",
    ) as p:
        client = p.client()
        await client.send("m-race", CAPABLE, TEXT)
        await wait_for_state(p.sim, "m-race", "committed")
        assert (await client.revoke("m-race")).kind == "already_delivered"
        await p.inbox.status("m-race", "delivered")
        assert p.sim.counters.late_deliveries == 0


async def test_revoke_racing_a_committed_delivery_accept_cancel(
    platform: PlatformFactory,
) -> None:
    # The platform says "cancelled" and delivers anyway: the engine must keep
    # the later delivered receipt (and must not count this twice).
    async with platform(
        post_sent_status=False,
        delivery_delay_min_s=0.3,
        delivery_delay_max_s=0.3,
        commit_before_delivery_s=0.3,
        revoke_race="accept_cancel",
    ) as p:
        client = p.client()
        await client.send("m-race", CAPABLE, TEXT)
        await wait_for_state(p.sim, "m-race", "committed")
        assert (await client.revoke("m-race")).kind == "revoked"
        first = await p.inbox.next_event()
        second = await p.inbox.next_event()
        assert [first.status, second.status] == ["cancelled", "delivered"]  # type: ignore[union-attr]
        assert p.sim.counters.late_deliveries == 1
        assert p.sim.counters.delivered_by_msg_id == {"m-race": 1}


# -- OAuth2 ------------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def test_oauth2_token_is_cached_and_refreshed_on_401(platform: PlatformFactory) -> None:
    async with platform(bearer_token=None) as p:
        client = p.client(auth=p.oauth())
        assert (await client.capability(CAPABLE)).capable
        assert (await client.send("m-o1", CAPABLE, TEXT)).kind == "accepted"
        assert p.sim.counters.tokens_issued == 1

        p.sim.expire_tokens()
        outcome = await client.send("m-o2", CAPABLE, TEXT)
        assert outcome.kind == "accepted"
        assert outcome.attempts == 1  # the refresh is inside the attempt
        assert p.sim.counters.tokens_issued == 2
        assert p.sim.counters.unauthorized == 1
        assert p.sim.counters.accepted_by_msg_id == {"m-o1": 1, "m-o2": 1}


async def test_oauth2_token_refreshed_shortly_before_expiry(platform: PlatformFactory) -> None:
    clock = FakeMonotonic()
    async with platform(bearer_token=None, token_lifetime_s=3600) as p:
        client = p.client(auth=p.oauth(margin_s=60.0), monotonic=clock)
        await client.capability(CAPABLE)
        clock.now_s += 3600 - 61
        await client.capability(CAPABLE)
        assert p.sim.counters.tokens_issued == 1
        clock.now_s += 2  # inside the margin: fetch before the platform refuses
        await client.capability(CAPABLE)
        assert p.sim.counters.tokens_issued == 2
        assert p.sim.counters.unauthorized == 0


async def test_oauth2_concurrent_requests_share_one_token(platform: PlatformFactory) -> None:
    async with platform(bearer_token=None) as p:
        client = p.client(auth=p.oauth())
        results = await asyncio.gather(*(client.capability(CAPABLE) for _ in range(20)))
        assert all(result.capable for result in results)
        assert p.sim.counters.tokens_issued == 1


async def test_oauth2_bad_credentials_reject_without_retry(platform: PlatformFactory) -> None:
    async with platform(bearer_token=None) as p:
        client = p.client(auth=p.oauth(secret="wrong"))
        outcome = await client.send("m-bad", CAPABLE, TEXT)
        assert (outcome.kind, outcome.reason, outcome.http_status) == (
            "rejected",
            "auth_failed",
            401,
        )
        assert outcome.attempts == 1
        assert p.sim.counters.posts_by_msg_id == {}


# -- webhooks ------------------------------------------------------------------------------


SIGNED_AT = datetime(2025, 4, 1, 3, 0, tzinfo=UTC)
SIGNED_TS = {"X-Signature-Timestamp": str(int(SIGNED_AT.timestamp()))}


def signed(payload: object, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = str(int(SIGNED_AT.timestamp()))
    # Signed here by hand, as the platform documents it, not by our helper.
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return body, {"X-Signature-Timestamp": timestamp, "X-Signature": mac.hexdigest()}


STATUS = {
    "event": "messageStatus",
    "messageContact": {"userContact": "tel:+819012345678"},
    "RCSMessage": {
        "msgId": "m-1",
        "status": "failed",
        "timestamp": "2025-04-01T03:00:00.123Z",
        "failureReason": "USER_BLOCKED",
    },
}


def test_webhook_signature_verified_over_raw_bytes() -> None:
    body, headers = signed(STATUS)
    event = verify_and_parse_webhook(body, headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert isinstance(event, MessageStatusEvent)
    assert (event.message_id, event.status, event.msisdn, event.error) == (
        "m-1",
        "failed",
        "+819012345678",
        "USER_BLOCKED",
    )
    assert event.at is not None and event.at.isoformat() == "2025-04-01T03:00:00.123000+00:00"
    # Header name case and a sha256= prefix do not matter.
    timestamp = headers["X-Signature-Timestamp"]
    lower = {
        "x-signature-timestamp": timestamp,
        "x-signature": "sha256=" + webhook_signature(body, WEBHOOK_SECRET, timestamp),
    }
    assert verify_and_parse_webhook(body, lower, WEBHOOK_SECRET, now=SIGNED_AT) == event


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b'{"event": "isTyping"}', {}, "missing_signature"),
        (b'{"event": "isTyping"}', {"X-Signature": "", **SIGNED_TS}, "missing_signature"),
        (b'{"event": "isTyping"}', {"X-Signature": "00" * 32}, "missing_timestamp"),
        (b'{"event": "isTyping"}', {"X-Signature": "00" * 32, **SIGNED_TS}, "bad_signature"),
        (b'{"event": "isTyping"}', {"X-Signature": "ｘ", **SIGNED_TS}, "bad_signature"),
        (
            b'{"event": "isTyping"}',
            {"X-Signature": "00" * 32, "X-Signature-Timestamp": "１７"},
            "missing_timestamp",
        ),
    ],
)
def test_forged_or_unsigned_webhooks_rejected(
    body: bytes, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_and_parse_webhook(body, headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert caught.value.reason == reason


def test_webhook_signed_with_another_secret_rejected() -> None:
    body, headers = signed(STATUS, secret="someone-elses-secret")
    with pytest.raises(WebhookRejected) as caught:
        verify_and_parse_webhook(body, headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert caught.value.reason == "bad_signature"


def test_tampered_body_rejected() -> None:
    body, headers = signed(STATUS)
    tampered = body.replace(b"failed", b"delivered")
    with pytest.raises(WebhookRejected) as caught:
        verify_and_parse_webhook(tampered, headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        ([1, 2], "unknown_shape"),
        ({"event": "alias", "RCSMessage": {}}, "unknown_shape"),
        ({**STATUS, "RCSMessage": {"msgId": "m", "status": "read"}}, "unknown_shape"),
        ({**STATUS, "RCSMessage": {"status": "delivered"}}, "unknown_shape"),
        (
            {**STATUS, "RCSMessage": {"msgId": "m", "status": "sent", "timestamp": "x"}},
            "unknown_shape",
        ),
        ({"event": "message", "RCSMessage": {"textMessage": "hi"}}, "unknown_shape"),
        (
            {"event": "response", "messageContact": {"userContact": "+81"}, "RCSMessage": {}},
            "unknown_shape",
        ),
    ],
)
def test_malformed_or_unknown_webhooks_rejected(payload: object, reason: str) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = webhook_headers(body, WEBHOOK_SECRET, SIGNED_AT)
    with pytest.raises(WebhookRejected) as caught:
        verify_and_parse_webhook(body, headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert caught.value.reason == reason


def test_inbound_text_action_and_typing_events() -> None:
    contact = {"userContact": "+819012345678"}
    text, text_headers = signed(
        {
            "event": "message",
            "messageContact": contact,
            "RCSMessage": {"msgId": "mo-1", "textMessage": "A", "inReplyTo": "m-1"},
        }
    )
    assert verify_and_parse_webhook(
        text, text_headers, WEBHOOK_SECRET, now=SIGNED_AT
    ) == InboundEvent(
        msisdn="+819012345678",
        kind="text",
        text="A",
        postback=None,
        message_id="mo-1",
        in_reply_to="m-1",
    )
    action, action_headers = signed(
        {
            "event": "response",
            "messageContact": contact,
            "RCSMessage": {
                "msgId": "mo-2",
                "suggestedResponse": {
                    "response": {"action": {"displayText": "詳細", "postback": {"data": "info"}}}
                },
            },
        }
    )
    event = verify_and_parse_webhook(action, action_headers, WEBHOOK_SECRET, now=SIGNED_AT)
    assert isinstance(event, InboundEvent)
    assert (event.kind, event.text, event.postback, event.in_reply_to) == (
        "suggestion_action",
        "詳細",
        "info",
        None,
    )
    typing, typing_headers = signed(
        {"event": "isTyping", "messageContact": contact, "RCSMessage": {"isTyping": "active"}}
    )
    assert verify_and_parse_webhook(
        typing, typing_headers, WEBHOOK_SECRET, now=SIGNED_AT
    ) == TypingEvent(msisdn="+819012345678", active=True)


async def test_simulator_with_the_wrong_secret_is_refused(platform: PlatformFactory) -> None:
    async with platform(webhook_secret="forger", webhook_attempts=2) as p:
        assert (await p.client().send("m-forged", CAPABLE, TEXT)).kind == "accepted"
        await p.sim.wait_idle()
        assert p.inbox.events.empty()
        assert p.inbox.rejections == ["bad_signature"] * 4  # sent + delivered, 2 tries each
        assert p.sim.counters.webhooks_abandoned == 2


def test_config_refuses_an_empty_webhook_secret() -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        RcsPlatformConfig(base_url="http://x", bot_id="b", auth=BearerAuth("t"), webhook_secret="")


def test_secrets_stay_out_of_reprs() -> None:
    config = RcsPlatformConfig(
        base_url="http://x",
        bot_id="b",
        auth=OAuth2ClientCredentials(token_url="http://x/t", client_id="c", client_secret="S3CRET"),
        webhook_secret="H00K",
    )
    assert "S3CRET" not in repr(config)
    assert "H00K" not in repr(config)
    assert "T0KEN" not in repr(BearerAuth("T0KEN"))
