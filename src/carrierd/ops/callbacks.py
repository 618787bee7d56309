"""Durable status callbacks: POST a message's status to the account's URL.

The engine writes a row with `enqueue_callback` in the transaction that
changes the message's state; `CallbackSender` delivers the rows. Nothing
lives only in memory, so a restart loses no callback, and several daemons
share the work (SKIP LOCKED). Delivery is at least once: a daemon that dies
after the receiver answered but before it recorded the answer sends again,
so receivers deduplicate on the X-Carrierd-Callback-Id header.

Each POST carries the JSON payload, signed with HMAC-SHA256 under the
account's ``callback_secret``:

    X-Carrierd-Timestamp: <unix seconds of this attempt>
    X-Carrierd-Signature: sha256=<hex of HMAC(secret, timestamp + "." + body)>

The timestamp is inside the signature so that a captured request cannot be
replayed later as fresh; receivers should refuse old timestamps.

A 2xx answer marks the row sent. Anything else (an error status, a
redirect, a timeout, a refused connection) is retried with exponential
backoff up to a cap, the last attempt exactly `max_age_s` after the row was
written; if that one fails too the row is marked gave_up.

The same sender delivers the inbound pushes (replies to the account's
``inbound_callback_url``, engine/inbound.py): an `Outbox` names the
statements that claim and record its rows (`STATUS_OUTBOX`,
`INBOUND_OUTBOX`); signing, retries, leases and address checks are these.
The inbound outbox claims only the oldest pending push per account and
number, so a number's replies arrive in order.

Callbacks go to public addresses only, unless the account's
``callback_allow_networks`` names the network (domain/netpolicy.py).
`GuardedClient` enforces it where it cannot be dodged: its resolver refuses
a host if any address it resolves to is not allowed, and its socket factory
refuses to connect to a disallowed address (an address literal, however
spelled, never reaches a resolver; a name may resolve differently between a
check and a connect, but the connect itself is checked). Redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from carrierd.click_log import ClickLog, click_log
from carrierd.domain.clock import Clock
from carrierd.domain.netpolicy import IPNetwork, address_allowed
from carrierd.loops import supervise
from carrierd.store.db import Database, Row, Transaction
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.ops.callbacks")

SIGNATURE_HEADER = "X-Carrierd-Signature"
TIMESTAMP_HEADER = "X-Carrierd-Timestamp"
CALLBACK_ID_HEADER = "X-Carrierd-Callback-Id"
ATTEMPT_HEADER = "X-Carrierd-Attempt"

# Account id -> its callback secret ("" for none), or None for an account
# that is no longer configured. A callable rather than a dict so a reload's
# new secrets apply to the next attempt.
SecretLookup = Callable[[str], str | None]
# Account id -> the non-public networks its callbacks may reach.
NetworksLookup = Callable[[str], Sequence[IPNetwork]]

_MAX_ERROR_CHARS = 500


def sign_callback(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Carrierd-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_callback(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time comparison)."""
    return hmac.compare_digest(sign_callback(secret, timestamp, body), signature)


def with_click_log(payload: Any, message_id: int, clicks: ClickLog) -> Any:
    """A status payload with the message's click log, when it has one (a
    message without links or an open keeps the payload it always had)."""
    view = clicks.view(message_id)
    if not isinstance(payload, dict) or not (view["links"] or view["opened_at"]):
        return payload
    return {**payload, **view}


def encode_payload(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def enqueue_callback(
    tx: Transaction,
    message_id: int,
    account_id: str,
    url: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> int:
    """Queue one callback inside the caller's transaction; returns its id."""
    callback_id = await tx.fetchval(
        "insert_status_callback", message_id, account_id, url, dict(payload), now
    )
    return int(callback_id)


class CallbackAddressRefused(OSError):
    """A callback would have connected to an address it may not reach."""

    def __init__(self, reason: str) -> None:
        # As (errno, strerror): aiohttp's connection errors show strerror.
        super().__init__(errno.EACCES, reason)


def _refuse_unless_allowed(host: str, allowed: Sequence[IPNetwork], what: str) -> None:
    try:
        address = ip_address(host)
    except ValueError:
        raise CallbackAddressRefused(f"{what} {host!r} is not an IP address") from None
    if not address_allowed(address, allowed):
        raise CallbackAddressRefused(
            f"{what} {address} is not public nor in the account's callback_allow_networks"
        )


class _CheckingResolver(AbstractResolver):
    """Resolves as usual, then refuses the host if any address is not allowed:
    a name that also points inside the network is not a callback target."""

    def __init__(self, allowed: tuple[IPNetwork, ...]) -> None:
        self._inner = DefaultResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            _refuse_unless_allowed(result["host"], self._allowed, f"{host} resolves to")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _checking_socket_factory(
    allowed: tuple[IPNetwork, ...],
) -> Callable[[tuple[Any, ...]], socket.socket]:
    def create(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        _refuse_unless_allowed(str(sockaddr[0]), allowed, "address")
        return socket.socket(family=family, type=type_, proto=proto)

    return create


class GuardedClient:
    """The HTTP client of status callbacks: one aiohttp session per
    allow-list (accounts without one share a session), each connecting only
    to public addresses and that list's networks."""

    def __init__(self, *, limit_per_host: int = 8) -> None:
        self._limit_per_host = limit_per_host
        self._sessions: dict[tuple[IPNetwork, ...], aiohttp.ClientSession] = {}

    def session(self, allowed: Sequence[IPNetwork]) -> aiohttp.ClientSession:
        key = tuple(allowed)
        session = self._sessions.get(key)
        if session is None:
            connector = aiohttp.TCPConnector(
                resolver=_CheckingResolver(key),
                socket_factory=_checking_socket_factory(key),
                limit_per_host=self._limit_per_host,
            )
            session = self._sessions[key] = aiohttp.ClientSession(connector=connector)
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt (pure: time passed in)."""

    base_backoff_s: float = 30.0
    max_backoff_s: float = 3600.0
    max_age_s: float = 24 * 3600.0

    def next_attempt_at(
        self, attempts: int, created_at: datetime, now: datetime
    ) -> datetime | None:
        """The time of the next attempt after `attempts` failed ones, or None
        to give up. The final attempt is placed at the deadline itself, so a
        receiver that recovers just before it still gets the callback."""
        deadline = created_at + timedelta(seconds=self.max_age_s)
        if now >= deadline:
            return None
        # The exponent is capped only to keep the float finite.
        delay_s = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** min(attempts - 1, 60))
        return min(now + timedelta(seconds=delay_s), deadline)


@dataclass(frozen=True)
class Outbox:
    """A table of callbacks: the statements that claim due rows (returning
    id, account_id, url, payload, attempts, created_at and subject_id, the
    message or reply the row is about) and record their outcomes."""

    name: str
    claim: str
    record: str


STATUS_OUTBOX = Outbox("status", "claim_status_callbacks", "record_status_callback_results")
INBOUND_OUTBOX = Outbox("inbound", "claim_inbound_callbacks", "record_inbound_callback_results")


@dataclass(frozen=True)
class _Outcome:
    callback_id: int
    attempts: int
    state: str
    next_attempt_at: datetime
    last_error: str | None


class CallbackSender:
    """Claims due callbacks in batches and POSTs them concurrently."""

    def __init__(
        self,
        db: Database,
        client: GuardedClient,
        accounts_secret_lookup: SecretLookup,
        clock: Clock,
        metrics: Metrics,
        *,
        allowed_networks: NetworksLookup = lambda _account_id: (),
        policy: RetryPolicy | None = None,
        batch_size: int = 100,
        max_concurrency: int = 32,
        request_timeout_s: float = 10.0,
        lease_s: float | None = None,
        idle_poll_s: float = 1.0,
        outbox: Outbox = STATUS_OUTBOX,
    ) -> None:
        if batch_size < 1 or max_concurrency < 1:
            raise ValueError("batch_size and max_concurrency must be >= 1")
        # A lease shorter than the slowest possible batch would let another
        # daemon send the same callbacks while ours are still in flight.
        slowest_batch_s = math.ceil(batch_size / max_concurrency) * request_timeout_s
        if lease_s is None:
            lease_s = 2 * slowest_batch_s
        if lease_s <= slowest_batch_s:
            raise ValueError(f"lease_s must exceed {slowest_batch_s:g} s, the slowest batch")
        self._db = db
        self._client = client
        self._secret_for = accounts_secret_lookup
        self._networks_for = allowed_networks
        self._clock = clock
        self._metrics = metrics
        self._policy = policy or RetryPolicy()
        self._batch_size = batch_size
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._lease = timedelta(seconds=lease_s)
        self._idle_poll_s = idle_poll_s
        self._outbox = outbox

    async def run_once(self, now: datetime) -> int:
        """Attempt every callback due at `now` (one batch); returns how many."""
        rows = await self._db.fetch(self._outbox.claim, now, now + self._lease, self._batch_size)
        if not rows:
            return 0
        # The click log as of this attempt (DOMAIN §12): clicks come after
        # the state change that queued the callback, so they are read now.
        # Status callbacks only: a reply's push has no links of its own.
        clicks = (
            await click_log(self._db, [int(row["message_id"]) for row in rows])
            if self._outbox is STATUS_OUTBOX
            else None
        )
        outcomes = await asyncio.gather(*(self._attempt(row, now, clicks) for row in rows))
        await self._db.execute(
            self._outbox.record,
            [o.callback_id for o in outcomes],
            [o.attempts for o in outcomes],
            [o.state for o in outcomes],
            [o.next_attempt_at for o in outcomes],
            [o.last_error for o in outcomes],
            now,
        )
        return len(rows)

    async def step(self) -> float:
        """One batch; returns the pause before the next: none after a full
        batch (more are probably due), idle_poll_s after a partial one."""
        handled = await self.run_once(self._clock.now())
        return 0.0 if handled >= self._batch_size else self._idle_poll_s

    async def run(self, stop_event: asyncio.Event) -> None:
        """Send until `stop_event` is set."""
        name = "callbacks" if self._outbox is STATUS_OUTBOX else f"{self._outbox.name}_callbacks"
        await supervise(name, self.step, stop_event)

    async def _attempt(self, row: Row, now: datetime, clicks: ClickLog | None) -> _Outcome:
        callback_id = int(row["id"])
        attempts = int(row["attempts"])
        error = await self._post(row, now, clicks)
        if error is None:
            self._metrics.callbacks_total.labels("sent").inc()
            return _Outcome(callback_id, attempts, "sent", now, None)
        retry_at = self._policy.next_attempt_at(attempts, row["created_at"], now)
        if retry_at is None:
            self._metrics.callbacks_total.labels("gave_up").inc()
            log.warning(
                "callback_gave_up",
                outbox=self._outbox.name,
                callback_id=callback_id,
                subject_id=row["subject_id"],
                account=row["account_id"],
                attempts=attempts,
                error=error,
            )
            return _Outcome(callback_id, attempts, "gave_up", now, error)
        self._metrics.callbacks_total.labels("retry").inc()
        return _Outcome(callback_id, attempts, "pending", retry_at, error)

    async def _post(self, row: Row, now: datetime, clicks: ClickLog | None) -> str | None:
        """POST one callback; None on a 2xx answer, else what went wrong."""
        account_id = str(row["account_id"])
        secret = self._secret_for(account_id)
        if secret is None:
            return "account not configured"
        session = self._client.session(self._networks_for(account_id))
        payload = row["payload"]
        if clicks is not None:
            payload = with_click_log(payload, int(row["message_id"]), clicks)
        body = encode_payload(payload)
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: timestamp,
            CALLBACK_ID_HEADER: str(row["id"]),
            ATTEMPT_HEADER: str(row["attempts"]),
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign_callback(secret, timestamp, body)
        async with self._semaphore:
            try:
                async with session.post(
                    str(row["url"]),
                    data=body,
                    headers=headers,
                    timeout=self._request_timeout,
                    # A redirect is the receiver's misconfiguration; following
                    # it would send the signed status somewhere unchosen.
                    allow_redirects=False,
                ) as response:
                    if 200 <= response.status < 300:
                        return None
                    return f"HTTP {response.status}"
            except TimeoutError:
                return "timeout"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
