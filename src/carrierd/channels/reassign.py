"""The reassignment database's client (DOMAIN §13): batched lookups over
HTTP JSON.

The service's API (what `carrierd sim reassign` serves too):

    POST {url}/v1/lookups
    Authorization: Bearer <token>
    {"lookups": [{"number": "+819012345678", "base_date": "2025-04-01"}, ...]}

    200 {"results": [{"number": "+819012345678", "base_date": "2025-04-01",
                      "verdict": "no_history" | "history",
                      "data_month": "2026-11"}, ...]}

one result per lookup, in the order asked. `data_month` is the newest month
of the data the number was judged on.

    5xx, timeout, connection error, malformed answer   tried again (tenacity,
                                                        jittered backoff) up to
                                                        `retries` more times
    4xx (bad token, a request it refuses)              not tried again

A lookup that gets no verdict is a `LookupFailed` naming why: the gate then
sends nothing (§13: a lookup error does not send).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

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

from carrierd.config import ReassignConfig
from carrierd.domain.reassign import Judged, LookupFailed, LookupOutcome, Verdict, parse_month

log = structlog.get_logger("carrierd.channels.reassign")

LOOKUPS_PATH = "/v1/lookups"
# A lookup answer is small (about 100 bytes a number): a bigger body is not one.
MAX_ANSWER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Lookup:
    """One number to judge since `base_date` (already clamped, §13)."""

    msisdn: str
    base_date: date


class ReassignLookups(Protocol):
    """What the gate needs of the service: one outcome per lookup, in order."""

    async def lookup(self, lookups: Sequence[Lookup]) -> list[LookupOutcome]: ...


class _Failed(Exception):
    def __init__(self, reason: str, detail: str, *, transient: bool) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.transient = transient


class ReassignClient:
    """Implements `ReassignLookups` against the configured service."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: Callable[[], ReassignConfig],
        *,
        retry_initial_wait_s: float = 0.1,
        retry_max_wait_s: float = 2.0,
        observe_s: Callable[[float, str], None] | None = None,
    ) -> None:
        self._session = session
        # Read on every request: a reload's new URL or token applies at once.
        self._config = config
        self._retry_initial_wait_s = retry_initial_wait_s
        self._retry_max_wait_s = retry_max_wait_s
        # Each request's latency and outcome ("ok", or why it failed).
        self._observe_s = observe_s

    async def lookup(self, lookups: Sequence[Lookup]) -> list[LookupOutcome]:
        if not lookups:
            return []
        config = self._config()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(config.retries + 1),
            # Jitter spreads the retries of many daemons hitting one outage.
            wait=wait_exponential(multiplier=self._retry_initial_wait_s, max=self._retry_max_wait_s)
            + wait_random(0, self._retry_initial_wait_s),
            retry=retry_if_exception(lambda exc: isinstance(exc, _Failed) and exc.transient),
            before_sleep=_log_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return list(await self._ask(lookups, config))
        except _Failed as failure:
            failed = LookupFailed(f"{failure.reason}: {failure.detail}"[:300], attempts)
            return [failed] * len(lookups)
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    async def _ask(self, lookups: Sequence[Lookup], config: ReassignConfig) -> list[Judged]:
        body = {
            "lookups": [{"number": q.msisdn, "base_date": q.base_date.isoformat()} for q in lookups]
        }
        headers = {"Authorization": f"Bearer {config.token}", "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        url = config.url.rstrip("/") + LOOKUPS_PATH
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with self._session.post(
                url, json=body, headers=headers, timeout=timeout
            ) as response:
                status = response.status
                raw = await _body(response)
            if status >= 500:
                raise _Failed("server_error", f"HTTP {status}", transient=True)
            if status != 200:
                raise _Failed(
                    "refused",
                    f"HTTP {status}: {raw[:200].decode(errors='replace')}",
                    transient=False,
                )
            return _results(raw, lookups)
        except TimeoutError:
            outcome = "timeout"
            raise _Failed(
                "timeout", f"no answer within {config.timeout_s:g} s", transient=True
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            outcome = "connection_error"
            raise _Failed("connection_error", repr(exc), transient=True) from None
        except _Failed as failure:
            outcome = failure.reason
            raise
        finally:
            if self._observe_s is not None:
                self._observe_s(time.perf_counter() - started, outcome)


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The whole answer, refused once past MAX_ANSWER_BYTES (a read(n)
    would return whatever has arrived so far, not the body)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Failed("malformed", "answer too large", transient=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _results(raw: bytes, lookups: Sequence[Lookup]) -> list[Judged]:
    """The answer's verdicts, one per lookup in order; anything else about
    it is malformed (a service that answers nonsense once may not next time)."""

    def bad(why: str) -> _Failed:
        return _Failed("malformed", why, transient=True)

    try:
        answer: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not JSON: {exc}") from None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise bad("no results array")
    if len(results) != len(lookups):
        raise bad(f"{len(results)} results for {len(lookups)} lookups")
    judged: list[Judged] = []
    # An answer's results share their data month: each is checked once.
    months_read: set[str] = set()
    for index, (result, asked) in enumerate(zip(results, lookups, strict=True)):
        if not isinstance(result, dict):
            raise bad(f"results[{index}]: not an object")
        if result.get("number") != asked.msisdn:
            raise bad(f"results[{index}]: answers another number")
        try:
            verdict = Verdict(str(result.get("verdict")))
        except ValueError:
            raise bad(f"results[{index}].verdict: {str(result.get('verdict'))[:40]!r}") from None
        data_month = result.get("data_month")
        if not isinstance(data_month, str):
            raise bad(f"results[{index}].data_month: {str(data_month)[:40]!r}")
        if data_month not in months_read:
            try:
                parse_month(data_month)
            except ValueError:
                raise bad(f"results[{index}].data_month: {data_month[:40]!r}") from None
            months_read.add(data_month)
        judged.append(Judged(verdict, data_month))
    return judged


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning("reassign_lookup_retry", attempt=state.attempt_number, error=str(exc))
