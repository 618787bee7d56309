"""+Message (RCS) platform client and webhook parsing.

The operator platform speaks the GSMA MaaP chatbot API:

    GET  {base}/bot/v1/{botId}/contactCapabilities?userContact=+81...
         200 {"capabilities": ["richcard", ...]}   404 = no +Message
    POST {base}/bot/v1/{botId}/messages
         {"RCSMessage": {"msgId": <our message id>, <content>},
          "messageContact": {"userContact": "+81..."}}
    PUT  {base}/bot/v1/{botId}/messages/{msgId}/status
         {"RCSMessage": {"status": "cancelled"}}
    GET  {base}/bot/v1/{botId}/subscribers?pageSize=N&pageToken=T
         200 {"subscribers": ["+81..."], "nextPageToken": "..."}

Errors come as `{"error": {"code": "...", "message": "..."}}` where the
platform gives a body at all; we keep the platform's text in `detail`.

This is a plain I/O object: it holds no timers and no tasks. The 10-minute
fallback and the 72-hour discard (DOMAIN §8, §9) are rows the settler claims;
it calls `revoke` when they fall due. Whatever the engine does after a crash,
calling `send` again with the same message id is safe: the platform
de-duplicates by msgId, and a 409 "already exists" counts as accepted, on a
tenacity retry and on a resend after a restart alike.

Outcome mapping (stable reason codes, stored with the message):

    send     2xx, 409                 accepted (409: already_existed=True)
             429, or error code in capacity_error_codes (any status)
                                      capacity_exceeded -> SMS at once (§8)
             404                      not_capable -> SMS at once (§8)
             other 4xx                rejected (bad_request, unauthorized,
                                      forbidden, payload_too_large, http_NNN)
             5xx/timeout/connection   retried; when attempts run out: error
                                      (server_error, timeout, connection_error),
                                      safe to send again later
    subscribers  200 a page (and the next page's token), 403
             SUBSCRIPTIONS_NOT_ALLOWED not_allowed, anything else
             RcsPlatformError
    revoke   200/204 revoked, 409 already_delivered, 404 not_found,
             anything else error (with the reason code)
    capability  200 capable, 404 not capable, anything else RcsPlatformError

Webhooks (`verify_and_parse_webhook`) carry the time of sending and an
HMAC-SHA256 under a shared secret over that time and the raw body:

    X-Signature-Timestamp: <unix seconds>
    X-Signature: <hex of HMAC(secret, timestamp + "." + body)>

(an optional `sha256=` prefix is accepted). A timestamp further than the
configured tolerance (5 minutes) from our clock is refused, so a captured
webhook cannot be replayed later; within the window the receiver refuses
a body it has already applied. Bodies are MaaP events:

    {"event": "messageStatus", "messageContact": {"userContact": "+81..."},
     "RCSMessage": {"msgId": "...", "status": "delivered",
                    "timestamp": "2025-01-01T00:00:00Z",
                    "failureReason": "..." (failed only, optional)}}
    {"event": "message", "messageContact": {...},
     "RCSMessage": {"msgId": <platform id>, "textMessage": "...",
                    "timestamp": "...", "inReplyTo": <our msgId, optional>}}
    {"event": "response", "messageContact": {...},
     "RCSMessage": {"msgId": ..., "timestamp": ..., "inReplyTo": ...,
                    "suggestedResponse": {"response": {"reply" | "action":
                        {"displayText": "...", "postback": {"data": "..."}}}}}}
    {"event": "isTyping", "messageContact": {...},
     "RCSMessage": {"isTyping": "active" | "idle", "timestamp": ...}}
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, TypeAlias, cast
from urllib.parse import quote, quote_plus

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from carrierd.domain.rcs_content import RcsContent, to_maap
from carrierd.domain.storable import text_problem

_log = structlog.get_logger(__name__)

# Platform text kept in outcomes is for people reading the delivery log; a
# misbehaving proxy can answer with a whole HTML page.
_DETAIL_MAX_CHARS = 500


# ---------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BearerAuth:
    """A static token issued by the operator."""

    token: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class OAuth2ClientCredentials:
    """OAuth2 client credentials grant (RFC 6749 §4.4), client authenticated
    with HTTP Basic. The token is reused until `refresh_margin_s` before it
    expires, and fetched again once if the platform answers 401."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    refresh_margin_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class RcsPlatformConfig:
    base_url: str
    bot_id: str
    auth: BearerAuth | OAuth2ClientCredentials
    webhook_secret: str = field(repr=False)
    request_timeout_s: float = 10.0
    max_attempts: int = 3
    retry_initial_wait_s: float = 0.5
    retry_max_wait_s: float = 5.0
    signature_header: str = "X-Signature"
    # Some platforms answer a capacity shortage with a 503 or 403 and a code
    # rather than a 429; listing the code keeps it out of the retry loop.
    capacity_error_codes: frozenset[str] = frozenset({"CAPACITY_EXCEEDED"})

    def __post_init__(self) -> None:
        if not self.webhook_secret:
            raise ValueError("webhook_secret must not be empty: webhooks would be unverifiable")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")


# ---------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True)
class Capability:
    capable: bool
    features: tuple[str, ...] = ()


SendOutcomeKind: TypeAlias = Literal[
    "accepted", "capacity_exceeded", "not_capable", "rejected", "error"
]


@dataclass(frozen=True)
class SendOutcome:
    """`rejected` is final for this content; `error` means the platform's
    answer is unknown and sending again with the same id is safe."""

    kind: SendOutcomeKind
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    already_existed: bool = False
    attempts: int = 1


RevokeOutcomeKind: TypeAlias = Literal["revoked", "already_delivered", "not_found", "error"]


@dataclass(frozen=True)
class RevokeOutcome:
    kind: RevokeOutcomeKind
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    attempts: int = 1


@dataclass(frozen=True)
class SubscriberPage:
    numbers: tuple[str, ...]
    # None on the last page.
    next_token: str | None


class RcsPlatformError(Exception):
    """A capability check that got no usable answer."""

    def __init__(self, reason: str, detail: str | None, http_status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.http_status = http_status


# ---------------------------------------------------------------------------
# Client


@dataclass(frozen=True)
class _Response:
    status: int
    text: str
    error_code: str | None
    error_detail: str | None
    attempts: int

    def json_object(self) -> Mapping[str, object] | None:
        try:
            data = json.loads(self.text) if self.text else None
        except ValueError:
            return None
        return cast(Mapping[str, object], data) if isinstance(data, dict) else None


class _CallFailed(Exception):
    def __init__(
        self, reason: str, detail: str | None, http_status: int | None, *, transient: bool
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        self.transient = transient
        self.attempts = 1


@dataclass
class _CachedToken:
    value: str
    # None: the server gave no lifetime; keep it until a 401.
    refresh_at: float | None


class RcsClient:
    """Talks to one bot on one platform over a session the caller owns."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: RcsPlatformConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._config = config
        self._monotonic = monotonic
        self._bot_url = f"{config.base_url.rstrip('/')}/bot/v1/{quote(config.bot_id, safe='')}"
        self._token: _CachedToken | None = None
        # One token fetch at a time: a burst of sends after expiry must not
        # become a burst of token requests.
        self._token_lock = asyncio.Lock()

    async def capability(self, msisdn: str) -> Capability:
        """Whether `msisdn` (E.164) can receive +Message. Raises RcsPlatformError."""
        try:
            response = await self._call(
                "GET", f"{self._bot_url}/contactCapabilities", params={"userContact": msisdn}
            )
        except _CallFailed as failure:
            raise RcsPlatformError(failure.reason, failure.detail, failure.http_status) from None
        if 200 <= response.status < 300:
            data = response.json_object() or {}
            features = data.get("capabilities", [])
            if not isinstance(features, list):
                features = []
            return Capability(capable=True, features=tuple(str(feature) for feature in features))
        if response.status == 404:
            return Capability(capable=False)
        if self._is_capacity(response):
            raise RcsPlatformError("capacity_exceeded", response.error_detail, response.status)
        raise RcsPlatformError(
            _reason_for_status(response.status), response.error_detail, response.status
        )

    async def send(self, message_id: str, msisdn: str, content: RcsContent) -> SendOutcome:
        """Send `content` to `msisdn` (E.164) under our `message_id` as msgId."""
        body = {
            "RCSMessage": {"msgId": message_id, **to_maap(content)},
            "messageContact": {"userContact": msisdn},
        }
        try:
            response = await self._call("POST", f"{self._bot_url}/messages", json_body=body)
        except _CallFailed as failure:
            kind: SendOutcomeKind = "error" if failure.transient else "rejected"
            return SendOutcome(
                kind,
                failure.reason,
                failure.detail,
                failure.http_status,
                attempts=failure.attempts,
            )
        status, detail, attempts = response.status, response.error_detail, response.attempts
        if 200 <= status < 300:
            return SendOutcome("accepted", http_status=status, attempts=attempts)
        if status == 409:
            # Our earlier attempt (or an earlier daemon's) got through.
            return SendOutcome(
                "accepted", http_status=status, already_existed=True, attempts=attempts
            )
        if self._is_capacity(response):
            return SendOutcome(
                "capacity_exceeded", "capacity_exceeded", detail, status, attempts=attempts
            )
        if status == 404:
            return SendOutcome("not_capable", "not_capable", detail, status, attempts=attempts)
        return SendOutcome(
            "rejected", _reason_for_status(status), detail, status, attempts=attempts
        )

    async def subscribers(self, page_token: str | None, page_size: int) -> SubscriberPage:
        """One page of the numbers subscribed to the bot (KMC §3.4.7), as
        the platform gives them; raises RcsPlatformError (not_allowed: the
        official account takes no subscriptions)."""
        params = {"pageSize": str(page_size)}
        if page_token:
            params["pageToken"] = page_token
        try:
            response = await self._call("GET", f"{self._bot_url}/subscribers", params=params)
        except _CallFailed as failure:
            raise RcsPlatformError(failure.reason, failure.detail, failure.http_status) from None
        if response.status == 403 and response.error_code == "SUBSCRIPTIONS_NOT_ALLOWED":
            raise RcsPlatformError("not_allowed", response.error_detail, response.status)
        if not 200 <= response.status < 300:
            raise RcsPlatformError(
                _reason_for_status(response.status), response.error_detail, response.status
            )
        data = response.json_object() or {}
        numbers = data.get("subscribers")
        token = data.get("nextPageToken")
        if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
            raise RcsPlatformError("bad_answer", "subscribers is not a list of numbers", 200)
        return SubscriberPage(
            tuple(str(n) for n in numbers), token if isinstance(token, str) and token else None
        )

    async def revoke(self, message_id: str) -> RevokeOutcome:
        """Ask the platform to stop delivering `message_id` (the §9 discard)."""
        url = f"{self._bot_url}/messages/{quote(message_id, safe='')}/status"
        try:
            response = await self._call(
                "PUT", url, json_body={"RCSMessage": {"status": "cancelled"}}
            )
        except _CallFailed as failure:
            return RevokeOutcome(
                "error", failure.reason, failure.detail, failure.http_status, failure.attempts
            )
        status, detail, attempts = response.status, response.error_detail, response.attempts
        if 200 <= status < 300:
            return RevokeOutcome("revoked", http_status=status, attempts=attempts)
        if status == 409:
            return RevokeOutcome("already_delivered", "already_delivered", detail, status, attempts)
        if status == 404:
            return RevokeOutcome("not_found", "not_found", detail, status, attempts)
        if self._is_capacity(response):
            return RevokeOutcome("error", "capacity_exceeded", detail, status, attempts)
        return RevokeOutcome("error", _reason_for_status(status), detail, status, attempts)

    # -- transport ------------------------------------------------------------

    def _is_capacity(self, response: _Response) -> bool:
        return response.status == 429 or (
            response.error_code is not None
            and response.error_code in self._config.capacity_error_codes
        )

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: object = None,
    ) -> _Response:
        """One logical request: tenacity retries the transient failures.

        Returns any response that is not transient (2xx and 4xx alike);
        raises _CallFailed when attempts run out or auth cannot be had.
        """
        config = self._config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(config.max_attempts),
            # Jitter spreads the retries of many daemons hitting one outage.
            wait=wait_exponential(
                multiplier=config.retry_initial_wait_s, max=config.retry_max_wait_s
            )
            + wait_random(0, config.retry_initial_wait_s),
            retry=retry_if_exception(lambda exc: isinstance(exc, _CallFailed) and exc.transient),
            before_sleep=_log_retry,
            reraise=True,
        )
        attempt_number = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    response = await self._attempt(method, url, params, json_body)
                    return replace(response, attempts=attempt_number)
        except _CallFailed as failure:
            failure.attempts = attempt_number
            raise
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    async def _attempt(
        self, method: str, url: str, params: Mapping[str, str] | None, json_body: object
    ) -> _Response:
        token = await self._access_token()
        response = await self._exchange(method, url, params, json_body, token)
        if response.status == 401 and isinstance(self._config.auth, OAuth2ClientCredentials):
            # The platform may drop tokens before expires_in (key rotation,
            # restart); one fresh token settles it, a second 401 is real.
            await self._invalidate_token(token)
            token = await self._access_token()
            response = await self._exchange(method, url, params, json_body, token)
        if response.status >= 500 and response.error_code not in self._config.capacity_error_codes:
            raise _CallFailed(
                "server_error", response.error_detail, response.status, transient=True
            )
        return response

    async def _exchange(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json_body: object,
        token: str,
    ) -> _Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self._config.request_timeout_s)
        try:
            async with self._session.request(
                method, url, params=params, json=json_body, headers=headers, timeout=timeout
            ) as http_response:
                text = await http_response.text(errors="replace")
                status = http_response.status
        except TimeoutError:
            raise _CallFailed(
                "timeout",
                f"no answer within {self._config.request_timeout_s} s",
                None,
                transient=True,
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _CallFailed("connection_error", repr(exc), None, transient=True) from None
        code, detail = _error_of(status, text)
        return _Response(status, text, code, detail, 1)

    # -- auth -----------------------------------------------------------------

    async def _access_token(self) -> str:
        auth = self._config.auth
        if isinstance(auth, BearerAuth):
            return auth.token
        async with self._token_lock:
            cached = self._token
            if cached is not None and (
                cached.refresh_at is None or self._monotonic() < cached.refresh_at
            ):
                return cached.value
            self._token = await self._fetch_token(auth)
            return self._token.value

    async def _invalidate_token(self, rejected: str) -> None:
        async with self._token_lock:
            # Several requests may hold the same rejected token; only the
            # first one to get here drops it, the rest reuse the new one.
            if self._token is not None and self._token.value == rejected:
                self._token = None

    async def _fetch_token(self, auth: OAuth2ClientCredentials) -> _CachedToken:
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        timeout = aiohttp.ClientTimeout(total=self._config.request_timeout_s)
        fetched_at = self._monotonic()
        try:
            async with self._session.post(
                auth.token_url,
                data=form,
                headers={
                    "Accept": "application/json",
                    "Authorization": _basic_authorization(auth.client_id, auth.client_secret),
                },
                timeout=timeout,
            ) as http_response:
                text = await http_response.text(errors="replace")
                status = http_response.status
        except TimeoutError:
            raise _CallFailed(
                "timeout", "token endpoint did not answer", None, transient=True
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _CallFailed("connection_error", repr(exc), None, transient=True) from None
        if status >= 500:
            raise _CallFailed("server_error", _truncate(text), status, transient=True)
        if status != 200:
            raise _CallFailed("auth_failed", _truncate(text), status, transient=False)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise _CallFailed(
                "auth_failed", "token response has no access_token", status, transient=False
            )
        expires_in = data.get("expires_in") if isinstance(data, dict) else None
        refresh_at: float | None = None
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            # Never spend more than half a short-lived token's life on margin.
            margin_s = min(auth.refresh_margin_s, float(expires_in) / 2)
            refresh_at = fetched_at + float(expires_in) - margin_s
        return _CachedToken(token, refresh_at)


def _basic_authorization(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode each part before base64, so a ":" in
    # the client id cannot shift the split.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    _log.warning(
        "rcs_request_retry",
        attempt=state.attempt_number,
        reason=getattr(exc, "reason", None),
        http_status=getattr(exc, "http_status", None),
    )


_REASONS_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "capacity_exceeded",
}


def _reason_for_status(status: int) -> str:
    return _REASONS_BY_STATUS.get(status, f"http_{status}")


def _error_of(status: int, text: str) -> tuple[str | None, str | None]:
    """The platform's error code and readable text, for non-2xx answers."""
    if 200 <= status < 300:
        return None, None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            code_text = str(code) if code is not None else None
            parts = [part for part in (code_text, message) if part is not None]
            return code_text, _truncate(": ".join(str(part) for part in parts)) or None
    return None, _truncate(text) or None


def _truncate(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX_CHARS else text[:_DETAIL_MAX_CHARS] + "…"


# ---------------------------------------------------------------------------
# Webhooks

MessageStatus: TypeAlias = Literal["sent", "delivered", "displayed", "failed", "cancelled"]
InboundKind: TypeAlias = Literal["text", "suggestion_reply", "suggestion_action"]

MESSAGE_STATUSES: tuple[MessageStatus, ...] = (
    "sent",
    "delivered",
    "displayed",
    "failed",
    "cancelled",
)


@dataclass(frozen=True)
class MessageStatusEvent:
    message_id: str
    status: MessageStatus
    at: datetime | None
    msisdn: str | None
    error: str | None = None


@dataclass(frozen=True)
class InboundEvent:
    msisdn: str
    kind: InboundKind
    text: str
    postback: str | None
    message_id: str | None
    in_reply_to: str | None
    at: datetime | None = None


@dataclass(frozen=True)
class TypingEvent:
    msisdn: str
    active: bool
    at: datetime | None = None


WebhookEvent: TypeAlias = MessageStatusEvent | InboundEvent | TypingEvent


TIMESTAMP_HEADER = "X-Signature-Timestamp"
# Unix seconds as ASCII digits: longer cannot be a time we would accept.
_MAX_TIMESTAMP_DIGITS = 12
UNAUTHORIZED_REASONS = frozenset(
    {"missing_signature", "bad_signature", "missing_timestamp", "stale_timestamp"}
)


class WebhookRejected(Exception):
    """A webhook not to apply. `reason`: one of UNAUTHORIZED_REASONS (answer
    401), malformed_json or unknown_shape (answer 400)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def webhook_signature(body: bytes, secret: str, timestamp: str) -> str:
    """Hex HMAC-SHA256 of `timestamp` "." body, as the platform puts in the header."""
    signed = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def webhook_headers(body: bytes, secret: str, now: datetime) -> dict[str, str]:
    """The signature headers the platform sends with `body` at `now`."""
    timestamp = str(int(now.timestamp()))
    return {TIMESTAMP_HEADER: timestamp, "X-Signature": webhook_signature(body, secret, timestamp)}


def verify_and_parse_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    now: datetime,
    tolerance_s: float = 300.0,
    signature_header: str = "X-Signature",
) -> WebhookEvent:
    """Check the signature over the timestamp and the raw bytes, then the
    timestamp against `now`, then parse. Raises WebhookRejected."""
    if not secret:
        raise ValueError("webhook secret must not be empty")
    provided = _header(headers, signature_header)
    if provided is None or not provided.strip():
        raise WebhookRejected("missing_signature", f"no {signature_header} header")
    timestamp = (_header(headers, TIMESTAMP_HEADER) or "").strip()
    if not (0 < len(timestamp) <= _MAX_TIMESTAMP_DIGITS and timestamp.isascii()):
        raise WebhookRejected("missing_timestamp", f"no unix time in {TIMESTAMP_HEADER}")
    if not timestamp.isdigit():
        raise WebhookRejected("missing_timestamp", f"{TIMESTAMP_HEADER} is not a unix time")
    provided = provided.strip()
    if provided[:7].lower() == "sha256=":
        provided = provided[7:]
    expected = webhook_signature(body, secret, timestamp).encode("ascii")
    if not hmac.compare_digest(expected, provided.lower().encode("utf-8", "replace")):
        raise WebhookRejected("bad_signature", "HMAC-SHA256 does not match")
    skew_s = int(timestamp) - now.timestamp()
    if abs(skew_s) > tolerance_s:
        raise WebhookRejected(
            "stale_timestamp", f"signed {skew_s:+.0f} s from now, tolerance {tolerance_s:g} s"
        )
    try:
        data = json.loads(body)
    except RecursionError:
        raise WebhookRejected("malformed_json", "nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected("malformed_json", str(exc)) from None
    return _parse_event(data)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def _parse_event(data: object) -> WebhookEvent:
    root = _obj(data, "body")
    event = root.get("event")
    message = _obj(root.get("RCSMessage"), "RCSMessage")
    msisdn = _contact(root.get("messageContact"))
    at = _timestamp(message.get("timestamp"))
    if event == "messageStatus":
        status = message.get("status")
        if status not in MESSAGE_STATUSES:
            raise WebhookRejected("unknown_shape", f"unknown message status {status!r}")
        failure = _optional_str(message, "failureReason")
        return MessageStatusEvent(
            message_id=_required_str(message, "msgId"),
            status=status,
            at=at,
            msisdn=msisdn,
            error=failure if status == "failed" else None,
        )
    if msisdn is None:
        raise WebhookRejected("unknown_shape", "messageContact.userContact is required")
    if event == "message":
        return InboundEvent(
            msisdn=msisdn,
            kind="text",
            text=_required_str(message, "textMessage"),
            postback=None,
            message_id=_optional_str(message, "msgId"),
            in_reply_to=_optional_str(message, "inReplyTo"),
            at=at,
        )
    if event == "response":
        suggested = _obj(message.get("suggestedResponse"), "suggestedResponse")
        response = _obj(suggested.get("response"), "suggestedResponse.response")
        if "reply" in response:
            kind: InboundKind = "suggestion_reply"
            chosen = _obj(response["reply"], "response.reply")
        elif "action" in response:
            kind = "suggestion_action"
            chosen = _obj(response["action"], "response.action")
        else:
            raise WebhookRejected("unknown_shape", "response has neither reply nor action")
        postback = _obj(chosen.get("postback"), "postback")
        return InboundEvent(
            msisdn=msisdn,
            kind=kind,
            text=_required_str(chosen, "displayText"),
            postback=_required_str(postback, "data"),
            message_id=_optional_str(message, "msgId"),
            in_reply_to=_optional_str(message, "inReplyTo"),
            at=at,
        )
    if event == "isTyping":
        state = message.get("isTyping")
        if state not in ("active", "idle"):
            raise WebhookRejected("unknown_shape", f"unknown isTyping state {state!r}")
        return TypingEvent(msisdn=msisdn, active=state == "active", at=at)
    raise WebhookRejected("unknown_shape", f"unknown event {event!r}")


def _obj(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise WebhookRejected("unknown_shape", f"{what} must be an object")
    return cast(Mapping[str, object], value)


def _required_str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise WebhookRejected("unknown_shape", f"{key} must be a non-empty string")
    return _storable(value, key)


def _optional_str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookRejected("unknown_shape", f"{key} must be a string")
    return _storable(value, key) or None


def _storable(value: str, key: str) -> str:
    # Every string an event keeps can reach PostgreSQL text or jsonb.
    problem = text_problem(value)
    if problem is not None:
        raise WebhookRejected("unknown_shape", f"{key} {problem}")
    return value


def _contact(value: object) -> str | None:
    if value is None:
        return None
    contact = _obj(value, "messageContact")
    user = _optional_str(contact, "userContact")
    if user is not None and user.startswith("tel:"):
        user = user[4:]
    return user


def _timestamp(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookRejected("unknown_shape", "timestamp must be a string")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise WebhookRejected("unknown_shape", f"bad timestamp {value!r}") from None
    # MaaP timestamps are UTC; a platform that drops the offset still means UTC.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
