"""`carrierd sim rcs`: a +Message platform that behaves like the real one.

It serves the MaaP chatbot API that `channels/rcs.py` talks to (capability
check, send with msgId de-duplication, revoke, an OAuth2 token endpoint) and
posts signed status webhooks back (X-Signature-Timestamp: unix seconds of
the attempt; X-Signature: hex HMAC-SHA256 of timestamp "." body), with the
awkward parts of the real thing
under configuration: most handsets cannot take +Message, some capable ones
never take delivery, the platform runs out of capacity, answers 5xx after it
has already accepted a message, and delivers a message it had committed to
even while a revoke is being answered.

It deliberately shares no code with the client (only `domain/`): an error in
the client's reading of the protocol must not be mirrored here.

Per-message decisions (delay, capacity, 5xx, replies) hash the seed with the
msgId, and per-handset ones (capable, never delivers) hash the number, so a
run is reproducible whatever order the requests arrive in.

Several official accounts (bots) share one platform, as companies do: each
has its own login (static token, or an OAuth2 client whose tokens serve that
bot only), its own webhook URL and secret, and its own messages (a msgId
names a message of one bot; a revoke through another bot finds nothing).
Recipients may block one bot (`SimBot.blocked_numbers`): that bot finds them
not capable, the others do not.

Subscriptions (サブスクライブ, KMC §3.4.7): an official account that
allows them (`SimBot.allows_subscriptions`) keeps the numbers subscribed
to it (`subscribe` / `unsubscribe`, as handsets do), and lists them a page
at a time, in a stable order, with an opaque page token:

    GET {base}/bot/v1/{botId}/subscribers?pageSize=N[&pageToken=T]
        200 {"subscribers": ["+81...", ...], "nextPageToken": "..." | absent}
        403 SUBSCRIPTIONS_NOT_ALLOWED for a bot that does not allow them

Counters (`RcsPlatformSim.counters`) let tests prove exactly-once: sends
accepted per msgId, per recipient and per bot, deliveries, revokes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import unquote_plus

import aiohttp
import structlog
from aiohttp import web

from carrierd.domain.clock import Clock, SystemClock
from carrierd.domain.numbers import NumberError, normalize_msisdn

_log = structlog.get_logger(__name__)

RevokeRace: TypeAlias = Literal["already_delivered", "accept_cancel"]
_MessageState: TypeAlias = Literal["pending", "committed", "delivered", "cancelled"]


@dataclass(frozen=True, kw_only=True)
class SimBot:
    """One official account on the platform, beside the one RcsSimConfig's
    own fields describe."""

    bot_id: str
    bearer_token: str | None = field(default=None, repr=False)
    oauth_client_id: str = ""
    oauth_client_secret: str = field(default="", repr=False)
    webhook_url: str | None = None
    webhook_secret: str = field(default="sim-webhook-secret", repr=False)
    # Recipients who blocked this official account: not capable for it.
    blocked_numbers: frozenset[str] = frozenset()
    allows_subscriptions: bool = True
    subscribers: frozenset[str] = frozenset()


# The largest page of subscribers the platform gives (pageSize above it is
# cut to it).
MAX_SUBSCRIBER_PAGE = 10_000


@dataclass(frozen=True, kw_only=True)
class RcsSimConfig:
    # The first bot: its id, login and webhook (more_bots adds others).
    bot_id: str = "carrierd"
    # Auth: the static token, and any token issued by /oauth2/token.
    bearer_token: str | None = "sim-token"
    oauth_client_id: str = "carrierd"
    oauth_client_secret: str = field(default="sim-client-secret", repr=False)
    token_lifetime_s: int = 3600

    # Capability: explicit lists win; otherwise a stable hash of the number
    # makes `capable_share` of handsets capable (DOMAIN §1: about 20%).
    capable_share: float = 0.2
    capable_numbers: frozenset[str] = frozenset()
    incapable_numbers: frozenset[str] = frozenset()
    features: tuple[str, ...] = ("richcard", "richcardCarousel", "suggestedChips")

    # Delivery.
    delivery_delay_min_s: float = 0.5
    delivery_delay_max_s: float = 5.0
    # Capable handsets that never take delivery (app removed, moved to an
    # MVNO, switched off for good): the §8 fallback and §9 discard paths.
    never_deliver_share: float = 0.0
    never_deliver_numbers: frozenset[str] = frozenset()
    # How long before the delivery the platform is committed to it; a revoke
    # landing in that window meets `revoke_race`: "already_delivered" answers
    # 409, "accept_cancel" answers success and delivers anyway (the late
    # delivery old handset apps produced, §9).
    commit_before_delivery_s: float = 0.0
    revoke_race: RevokeRace = "already_delivered"
    post_sent_status: bool = True
    displayed_share: float = 0.0

    # Failures.
    capacity_share: float = 0.0
    capacity_numbers: frozenset[str] = frozenset()
    # Share of msgIds whose first POST answers 503; with
    # `transient_after_accept` the message was stored all the same (a lost
    # answer), which is what a client retry must survive without sending twice.
    transient_5xx_share: float = 0.0
    transient_after_accept: bool = True

    # Webhooks.
    webhook_url: str | None = None
    webhook_secret: str = field(default="sim-webhook-secret", repr=False)
    signature_header: str = "X-Signature"
    timestamp_header: str = "X-Signature-Timestamp"
    webhook_attempts: int = 4
    webhook_retry_delay_s: float = 0.5
    webhook_timeout_s: float = 5.0
    # Recipients who blocked the first bot (SimBot.blocked_numbers for others).
    blocked_numbers: frozenset[str] = frozenset()
    # The first bot's subscriptions (SimBot's for others).
    allows_subscriptions: bool = True
    subscribers: frozenset[str] = frozenset()
    more_bots: tuple[SimBot, ...] = ()

    # Simulated answers from recipients after delivery: a tap on the first
    # reply suggestion of the message, or a short text if it has none.
    inbound_reply_share: float = 0.0
    inbound_reply_delay_s: float = 1.0
    inbound_reply_text: str = "はい"

    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "capable_share",
            "never_deliver_share",
            "displayed_share",
            "capacity_share",
            "transient_5xx_share",
            "inbound_reply_share",
        ):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {share}")
        if not 0 <= self.delivery_delay_min_s <= self.delivery_delay_max_s:
            raise ValueError("need 0 <= delivery_delay_min_s <= delivery_delay_max_s")
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        ids = [bot.bot_id for bot in self.bots()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"bot ids must differ, got {ids}")

    def bots(self) -> tuple[SimBot, ...]:
        first = SimBot(
            bot_id=self.bot_id,
            bearer_token=self.bearer_token,
            oauth_client_id=self.oauth_client_id,
            oauth_client_secret=self.oauth_client_secret,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            blocked_numbers=self.blocked_numbers,
            allows_subscriptions=self.allows_subscriptions,
            subscribers=self.subscribers,
        )
        return (first, *self.more_bots)


@dataclass
class RcsSimCounters:
    capability_checks: int = 0
    posts_by_msg_id: Counter[str] = field(default_factory=Counter)
    accepted_by_msg_id: Counter[str] = field(default_factory=Counter)
    accepted_by_recipient: Counter[str] = field(default_factory=Counter)
    duplicates_by_msg_id: Counter[str] = field(default_factory=Counter)
    not_capable_rejections: int = 0
    capacity_rejections: int = 0
    transient_errors: int = 0
    delivered_by_msg_id: Counter[str] = field(default_factory=Counter)
    delivered_by_recipient: Counter[str] = field(default_factory=Counter)
    # Delivered although a revoke had been answered with success.
    late_deliveries: int = 0
    revoke_requests: int = 0
    revoked_msg_ids: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    unauthorized: int = 0
    webhooks_delivered: int = 0
    webhook_attempt_failures: int = 0
    webhooks_abandoned: int = 0
    inbound_sent: int = 0
    accepted_by_bot: Counter[str] = field(default_factory=Counter)
    # Sends refused because the request named a bot its token is not for.
    wrong_bot_requests: int = 0


@dataclass
class _SimMessage:
    bot: SimBot
    msg_id: str
    recipient: str
    rcs_message: Mapping[str, Any]
    state: _MessageState = "pending"
    cancel_accepted: bool = False
    task: asyncio.Task[None] | None = None


class RcsPlatformSim:
    """Simulated operator platform; `build_app()` serves it."""

    def __init__(
        self,
        config: RcsSimConfig,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.counters = RcsSimCounters()
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._monotonic = monotonic
        self._capable = frozenset(_canonical(n) for n in config.capable_numbers)
        self._incapable = frozenset(_canonical(n) for n in config.incapable_numbers)
        self._never = frozenset(_canonical(n) for n in config.never_deliver_numbers)
        self._capacity = frozenset(_canonical(n) for n in config.capacity_numbers)
        self._bots = {bot.bot_id: bot for bot in config.bots()}
        self._blocked = {
            bot.bot_id: frozenset(_canonical(n) for n in bot.blocked_numbers)
            for bot in config.bots()
        }
        # Our msgIds are unique per bot, not across bots.
        self._messages: dict[tuple[str, str], _SimMessage] = {}
        # Issued token -> (the OAuth2 client it was issued to, expiry).
        self._tokens: dict[str, tuple[str, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbound_serial = 0
        self._webhook_session: aiohttp.ClientSession | None = None
        self._state_waiters: list[tuple[str, str, str, asyncio.Future[None]]] = []
        self._subscribers: dict[str, set[str]] = {
            bot.bot_id: {_canonical(n) for n in bot.subscribers} for bot in config.bots()
        }
        # Each bot's subscribers in page order, made again after a change.
        self._subscriber_order: dict[str, list[str]] = {}

    # -- public helpers for tests and the CLI -----------------------------------

    def build_app(self) -> web.Application:
        app = web.Application()
        app[RCS_SIM_KEY] = self
        bot = "/bot/v1/{bot_id}"
        app.router.add_get(f"{bot}/contactCapabilities", self._handle_capability)
        app.router.add_post(f"{bot}/messages", self._handle_send)
        app.router.add_put(f"{bot}/messages/{{msg_id}}/status", self._handle_status)
        app.router.add_get(f"{bot}/subscribers", self._handle_subscribers)
        app.router.add_post("/oauth2/token", self._handle_token)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    def subscribe(self, bot_id: str, numbers: Iterable[str]) -> None:
        """Handsets subscribe to the official account `bot_id`."""
        self._subscribers[bot_id].update(_canonical(n) for n in numbers)
        self._subscriber_order.pop(bot_id, None)

    def unsubscribe(self, bot_id: str, numbers: Iterable[str]) -> None:
        self._subscribers[bot_id].difference_update(_canonical(n) for n in numbers)
        self._subscriber_order.pop(bot_id, None)

    def is_capable(self, msisdn: str, bot_id: str | None = None) -> bool:
        number = _canonical(msisdn)
        if number in self._blocked.get(bot_id or self.config.bot_id, frozenset()):
            return False
        if number in self._capable:
            return True
        if number in self._incapable:
            return False
        return _unit("capable", number) < self.config.capable_share

    def message_state(self, msg_id: str, bot_id: str | None = None) -> str | None:
        message = self._messages.get((bot_id or self.config.bot_id, msg_id))
        return message.state if message is not None else None

    def msg_ids_of(self, bot_id: str) -> set[str]:
        """The msgIds the platform accepted under `bot_id`."""
        return {msg_id for (bot, msg_id) in self._messages if bot == bot_id}

    async def wait_for_state(self, msg_id: str, state: str, bot_id: str | None = None) -> None:
        """Return once `msg_id` is (or becomes) `state`: pending, committed,
        delivered or cancelled."""
        bot_id = bot_id or self.config.bot_id
        if self.message_state(msg_id, bot_id) == state:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (bot_id, msg_id, state, waiter)
        self._state_waiters.append(entry)
        try:
            await waiter
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)

    def _set_state(self, message: _SimMessage, state: _MessageState) -> None:
        message.state = state
        for bot_id, msg_id, wanted, waiter in self._state_waiters:
            if (
                (bot_id, msg_id) == (message.bot.bot_id, message.msg_id)
                and wanted == state
                and (not waiter.done())
            ):
                waiter.set_result(None)

    def expire_tokens(self) -> None:
        """Drop every issued token, as a platform restart or key rotation does."""
        self._tokens.clear()

    async def deliver_now(self, msg_id: str, bot_id: str | None = None) -> None:
        """Deliver a pending message at once (tests of the revoke race)."""
        await self._deliver(self._messages[(bot_id or self.config.bot_id, msg_id)])

    async def post_status_as(self, bot_id: str, msg_id: str, status: str, recipient: str) -> None:
        """Post a status webhook as `bot_id` naming any msgId, sent by that
        bot or not: a platform fault, or a bot's stolen secret, that the
        receiver must contain to the bot's own messages."""
        bot = self._bots[bot_id]
        message = _SimMessage(bot, msg_id, _canonical(recipient), {})
        await self._post_status(message, status)

    async def post_text_from(self, recipient: str, bot_id: str, text: str) -> None:
        """A recipient writes to official account `bot_id` unprompted (no
        inReplyTo): only the bot it came to can tell whose it is."""
        self._inbound_serial += 1
        self.counters.inbound_sent += 1
        await self._post_webhook(
            self._bots[bot_id],
            {
                "event": "message",
                "messageContact": {"userContact": _canonical(recipient)},
                "RCSMessage": {
                    "msgId": f"mo-{self.config.seed}-{self._inbound_serial}",
                    "timestamp": self._timestamp(),
                    "textMessage": text,
                },
            },
        )

    async def wait_idle(self) -> None:
        """Wait for every scheduled delivery and webhook to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- lifecycle --------------------------------------------------------------

    async def _lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        self._webhook_session = aiohttp.ClientSession()
        try:
            yield
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._webhook_session.close()
            self._webhook_session = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A crash here would otherwise vanish: nobody awaits these tasks.
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("rcs_sim_task_failed", error=repr(exc), exc_info=exc)

    # -- handlers ---------------------------------------------------------------

    def _check_request(self, request: web.Request) -> SimBot | web.Response:
        """The bot the request is for, or the refusal: each bot takes its
        own static token and the tokens issued to its own OAuth2 client."""
        bot = self._bots.get(request.match_info["bot_id"])
        if bot is None:
            # 403, not 404: a 404 on send means "not capable" to clients.
            return _error(403, "UNKNOWN_BOT", f"no bot {request.match_info['bot_id']!r}")
        header = request.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        if _token_matches(token, bot.bearer_token):
            return bot
        client_id, expires_at = self._tokens.get(token, ("", 0.0))
        issued = bool(client_id) and self._monotonic() < expires_at
        if issued and client_id == bot.oauth_client_id:
            return bot
        if issued or any(
            _token_matches(token, other.bearer_token) for other in self._bots.values()
        ):
            # A good login of another official account.
            self.counters.wrong_bot_requests += 1
            return _error(403, "FORBIDDEN", f"token is not for bot {bot.bot_id!r}")
        self.counters.unauthorized += 1
        return _error(401, "UNAUTHORIZED", "missing or expired token")
        return bot

    async def _handle_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = _basic_credentials(request.headers.get("Authorization", ""))
        if client_id is None:
            client_id = _form_str(form.get("client_id"))
            client_secret = _form_str(form.get("client_secret"))
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        client = next(
            (
                bot
                for bot in self._bots.values()
                if bot.oauth_client_id and bot.oauth_client_id == client_id
            ),
            None,
        )
        if client is None or not hmac.compare_digest(
            (client_secret or "").encode(), client.oauth_client_secret.encode()
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.counters.tokens_issued += 1
        token = hashlib.sha256(
            f"{self.config.seed}:token:{self.counters.tokens_issued}:{self._monotonic()}".encode()
        ).hexdigest()
        self._tokens[token] = (
            client.oauth_client_id,
            self._monotonic() + self.config.token_lifetime_s,
        )
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.config.token_lifetime_s,
            }
        )

    async def _handle_capability(self, request: web.Request) -> web.Response:
        bot = self._check_request(request)
        if isinstance(bot, web.Response):
            return bot
        self.counters.capability_checks += 1
        user = request.query.get("userContact")
        if not user:
            return _error(400, "BAD_REQUEST", "userContact is required")
        if not self.is_capable(user, bot.bot_id):
            return _error(404, "NOT_CAPABLE", "contact cannot receive chatbot messages")
        return web.json_response({"capabilities": list(self.config.features)})

    async def _handle_subscribers(self, request: web.Request) -> web.Response:
        bot = self._check_request(request)
        if isinstance(bot, web.Response):
            return bot
        if not bot.allows_subscriptions:
            return _error(
                403, "SUBSCRIPTIONS_NOT_ALLOWED", f"bot {bot.bot_id!r} takes no subscriptions"
            )
        try:
            size = int(request.query.get("pageSize", "1000"))
            start = int(base64.urlsafe_b64decode(request.query.get("pageToken") or "MA=="))
        except ValueError:
            return _error(400, "BAD_REQUEST", "pageSize and pageToken must be ones we gave")
        if size < 1 or start < 0:
            return _error(400, "BAD_REQUEST", "pageSize must be at least 1")
        order = self._subscriber_order.get(bot.bot_id)
        if order is None:
            order = self._subscriber_order[bot.bot_id] = sorted(self._subscribers[bot.bot_id])
        end = start + min(size, MAX_SUBSCRIBER_PAGE)
        body: dict[str, object] = {"subscribers": order[start:end]}
        if end < len(order):
            body["nextPageToken"] = base64.urlsafe_b64encode(str(end).encode()).decode()
        return web.json_response(body)

    async def _handle_send(self, request: web.Request) -> web.Response:
        bot = self._check_request(request)
        if isinstance(bot, web.Response):
            return bot
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", "body is not JSON")
        parsed = _parse_send(body)
        if isinstance(parsed, str):
            return _error(400, "BAD_REQUEST", parsed)
        msg_id, recipient, rcs_message = parsed
        counters = self.counters
        counters.posts_by_msg_id[msg_id] += 1
        first_post = counters.posts_by_msg_id[msg_id] == 1
        if (bot.bot_id, msg_id) in self._messages:
            counters.duplicates_by_msg_id[msg_id] += 1
            return _error(409, "ALREADY_EXISTS", f"msgId {msg_id} already exists")
        if not self.is_capable(recipient, bot.bot_id):
            counters.not_capable_rejections += 1
            return _error(404, "NOT_CAPABLE", "contact cannot receive chatbot messages")
        if recipient in self._capacity or self._chance(
            "capacity", msg_id, self.config.capacity_share
        ):
            counters.capacity_rejections += 1
            return _error(429, "CAPACITY_EXCEEDED", "carrier capacity exceeded")
        transient = first_post and self._chance(
            "transient", msg_id, self.config.transient_5xx_share
        )
        if transient and not self.config.transient_after_accept:
            counters.transient_errors += 1
            return _error(503, "UNAVAILABLE", "try again")
        message = _SimMessage(bot, msg_id, recipient, rcs_message)
        self._messages[(bot.bot_id, msg_id)] = message
        counters.accepted_by_msg_id[msg_id] += 1
        counters.accepted_by_recipient[recipient] += 1
        counters.accepted_by_bot[bot.bot_id] += 1
        message.task = self._spawn(self._run_message(message))
        if transient:
            counters.transient_errors += 1
            return _error(502, "BAD_GATEWAY", "upstream answer lost")
        return web.json_response({"RCSMessage": {"msgId": msg_id, "status": "pending"}}, status=201)

    async def _handle_status(self, request: web.Request) -> web.Response:
        bot = self._check_request(request)
        if isinstance(bot, web.Response):
            return bot
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "BAD_REQUEST", "body is not JSON")
        if _requested_status(body) != "cancelled":
            return _error(400, "BAD_REQUEST", "only status 'cancelled' can be set")
        self.counters.revoke_requests += 1
        message = self._messages.get((bot.bot_id, request.match_info["msg_id"]))
        if message is None:
            return _error(404, "NOT_FOUND", "unknown msgId")
        if message.state == "delivered" or (
            message.state == "committed" and self.config.revoke_race == "already_delivered"
        ):
            return _error(409, "ALREADY_DELIVERED", "message already delivered")
        if message.state == "cancelled" or message.cancel_accepted:
            return web.Response(status=204)
        if message.state == "committed":
            # accept_cancel: answer success although delivery goes ahead.
            message.cancel_accepted = True
        else:
            # The delivery task sees the state after its sleep and stops;
            # cancelling it could cut a "sent" webhook in half.
            self._set_state(message, "cancelled")
        self.counters.revoked_msg_ids[message.msg_id] += 1
        self._spawn(self._post_status(message, "cancelled"))
        return web.Response(status=204)

    # -- message life -----------------------------------------------------------

    async def _run_message(self, message: _SimMessage) -> None:
        if self.config.post_sent_status:
            await self._post_status(message, "sent")
        if message.recipient in self._never or (
            _unit("never", message.recipient) < self.config.never_deliver_share
        ):
            return
        config = self.config
        spread_s = config.delivery_delay_max_s - config.delivery_delay_min_s
        delay_s = config.delivery_delay_min_s + spread_s * self._unit("delay", message.msg_id)
        commit_s = min(config.commit_before_delivery_s, delay_s)
        await self._sleep(delay_s - commit_s)
        if message.state != "pending":
            return
        self._set_state(message, "committed")
        await self._sleep(commit_s)
        await self._deliver(message)

    async def _deliver(self, message: _SimMessage) -> None:
        if message.state in ("delivered", "cancelled"):
            return
        self._set_state(message, "delivered")
        self.counters.delivered_by_msg_id[message.msg_id] += 1
        self.counters.delivered_by_recipient[message.recipient] += 1
        if message.cancel_accepted:
            self.counters.late_deliveries += 1
        await self._post_status(message, "delivered")
        if self._chance("displayed", message.msg_id, self.config.displayed_share):
            await self._post_status(message, "displayed")
        if self._chance("reply", message.msg_id, self.config.inbound_reply_share):
            await self._sleep(self.config.inbound_reply_delay_s)
            await self._post_inbound_reply(message)

    async def _post_status(self, message: _SimMessage, status: str) -> None:
        await self._post_webhook(
            message.bot,
            {
                "event": "messageStatus",
                "messageContact": {"userContact": message.recipient},
                "RCSMessage": {
                    "msgId": message.msg_id,
                    "status": status,
                    "timestamp": self._timestamp(),
                },
            },
        )

    async def _post_inbound_reply(self, message: _SimMessage) -> None:
        self._inbound_serial += 1
        inbound_id = f"mo-{self.config.seed}-{self._inbound_serial}"
        reply = _first_reply_suggestion(message.rcs_message)
        rcs: dict[str, object] = {
            "msgId": inbound_id,
            "timestamp": self._timestamp(),
            "inReplyTo": message.msg_id,
        }
        if reply is not None:
            event = "response"
            rcs["suggestedResponse"] = {"response": {"reply": reply}}
        else:
            event = "message"
            rcs["textMessage"] = self.config.inbound_reply_text
        self.counters.inbound_sent += 1
        await self._post_webhook(
            message.bot,
            {
                "event": event,
                "messageContact": {"userContact": message.recipient},
                "RCSMessage": rcs,
            },
        )

    async def _post_webhook(self, bot: SimBot, payload: Mapping[str, object]) -> None:
        """To the bot's own webhook URL, signed with the bot's own secret."""
        config = self.config
        session = self._webhook_session
        if bot.webhook_url is None or session is None:
            return
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        timeout = aiohttp.ClientTimeout(total=config.webhook_timeout_s)
        for attempt in range(1, config.webhook_attempts + 1):
            # Each attempt is signed when it is sent: a retry is as fresh as
            # the first try, and its body (the receiver's key) is the same.
            headers = {"Content-Type": "application/json", **self._signature_headers(bot, body)}
            try:
                async with session.post(
                    bot.webhook_url, data=body, headers=headers, timeout=timeout
                ) as response:
                    if 200 <= response.status < 300:
                        self.counters.webhooks_delivered += 1
                        return
                    problem = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = repr(exc)
            self.counters.webhook_attempt_failures += 1
            _log.info("rcs_sim_webhook_failed", attempt=attempt, problem=problem)
            if attempt < config.webhook_attempts:
                await self._sleep(config.webhook_retry_delay_s * attempt)
        self.counters.webhooks_abandoned += 1
        _log.warning("rcs_sim_webhook_abandoned", webhook_event=payload.get("event"))

    def _signature_headers(self, bot: SimBot, body: bytes) -> dict[str, str]:
        config = self.config
        timestamp = str(int(self._clock.now().timestamp()))
        signed = timestamp.encode("ascii") + b"." + body
        signature = hmac.new(bot.webhook_secret.encode(), signed, hashlib.sha256).hexdigest()
        return {config.timestamp_header: timestamp, config.signature_header: signature}

    # -- randomness -------------------------------------------------------------

    def _unit(self, purpose: str, key: str) -> float:
        return _unit(f"{self.config.seed}:{purpose}", key)

    def _chance(self, purpose: str, key: str, share: float) -> bool:
        return share > 0.0 and self._unit(purpose, key) < share

    def _timestamp(self) -> str:
        return self._clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


RCS_SIM_KEY = web.AppKey("rcs_sim", RcsPlatformSim)


def build_app(config: RcsSimConfig) -> web.Application:
    """The simulator as an aiohttp app; `app[RCS_SIM_KEY]` reads its counters."""
    return RcsPlatformSim(config).build_app()


async def run_rcs_sim(
    config: RcsSimConfig,
    host: str,
    port: int,
    *,
    on_listening: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve until cancelled. `on_listening` gets the bound base URLs (port 0
    picks a free port, so this is how a caller learns it)."""
    app = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        urls = [_base_url(address) for address in runner.addresses]
        _log.info("rcs_sim_listening", urls=urls, bots=[bot.bot_id for bot in config.bots()])
        if on_listening is not None:
            on_listening(urls)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _base_url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ---------------------------------------------------------------------------
# helpers


def _unit(salt: str, key: str) -> float:
    """A stable number in [0, 1) for `key`: the same on every run and host."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _canonical(number: str) -> str:
    try:
        return normalize_msisdn(number, allow_m2m=True)
    except NumberError:
        return number.strip()


def _token_matches(token: str, expected: str | None) -> bool:
    return (
        bool(token)
        and expected is not None
        and hmac.compare_digest(token.encode(), expected.encode())
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    if header[:6].lower() != "basic ":
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None, None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    client_id, _, secret = decoded.partition(":")
    return unquote_plus(client_id), unquote_plus(secret)


def _requested_status(body: object) -> object:
    # MaaP wraps the status in RCSMessage; the bare form is accepted too.
    if not isinstance(body, dict):
        return None
    wrapped = body.get("RCSMessage")
    return (wrapped if isinstance(wrapped, dict) else body).get("status")


def _form_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _parse_send(body: object) -> tuple[str, str, Mapping[str, Any]] | str:
    """(msgId, canonical recipient, RCSMessage) or what is wrong with it."""
    if not isinstance(body, dict):
        return "body must be an object"
    rcs = body.get("RCSMessage")
    contact = body.get("messageContact")
    if not isinstance(rcs, dict) or not isinstance(contact, dict):
        return "RCSMessage and messageContact are required"
    msg_id = rcs.get("msgId")
    user = contact.get("userContact")
    if not isinstance(msg_id, str) or not msg_id:
        return "RCSMessage.msgId is required"
    if not isinstance(user, str) or not user:
        return "messageContact.userContact is required"
    if "textMessage" not in rcs and "richcardMessage" not in rcs:
        return "RCSMessage needs textMessage or richcardMessage"
    return msg_id, _canonical(user.removeprefix("tel:")), cast(Mapping[str, Any], rcs)


def _first_reply_suggestion(rcs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates: list[object] = []
    chips = rcs.get("suggestedChipList")
    if isinstance(chips, dict):
        candidates.extend(chips.get("suggestions") or [])
    richcard = rcs.get("richcardMessage")
    message = richcard.get("message") if isinstance(richcard, dict) else None
    if isinstance(message, dict):
        card = message.get("generalPurposeCard")
        carousel = message.get("generalPurposeCardCarousel")
        contents: list[object] = []
        if isinstance(card, dict):
            contents.append(card.get("content"))
        if isinstance(carousel, dict):
            contents.extend(carousel.get("content") or [])
        for content in contents:
            if isinstance(content, dict):
                candidates.extend(content.get("suggestions") or [])
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("reply"), dict):
            return cast(Mapping[str, Any], candidate["reply"])
    return None
