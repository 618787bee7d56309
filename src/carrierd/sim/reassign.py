"""A reassignment database simulator (DOMAIN §13): `carrierd sim reassign`.

It serves the API channels/reassign.py speaks (POST /v1/lookups, bearer
token) and judges with the daemon's own rule (domain/reassign.py `judge`)
on a month-by-month invalidity history per number:

  - loaded from a JSON file, `{"data_month": "2026-11", "numbers":
    {"+819012345678": ["2025-03", "2025-04", "2025-05"], ...}}` (a listed
    number with no months was never out of service);
  - otherwise generated, stable per (seed, number): `reassigned_share` of
    numbers have INVALID_RUN_MONTHS or more invalid months in a row at some
    point of the last two years (a history), `gap_share` a shorter gap that
    is none, the rest were always in service.

`data_month` (default: the current JST month) is the newest month of the
data. Faults to exercise the client: `error_share` of requests answered 503,
`malformed_share` answered with something that is not a valid answer (cut
JSON, a result missing, a verdict it does not know), and every answer after
`latency_ms` plus up to `jitter_ms` of random extra.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from carrierd.domain.reassign import (
    INVALID_RUN_MONTHS,
    jst_today,
    judge,
    month_of,
    month_text,
    parse_month,
)

_log = structlog.get_logger("carrierd.sim.reassign")

MAX_LOOKUPS_PER_REQUEST = 1000
# How far back generated histories reach, in months.
_GENERATED_SPAN_MONTHS = 24


class ReassignSimDataError(ValueError):
    pass


@dataclass
class ReassignSimConfig:
    token: str = "sim-reassign-token"
    seed: int = 1
    # Newest month of the data, "YYYY-MM"; "" = the current JST month.
    data_month: str = ""
    reassigned_share: float = 0.02
    gap_share: float = 0.05
    # Faults; read at every request, so a test may change them on the fly.
    error_share: float = 0.0
    # The next this many requests are answered 503 whatever the share.
    fail_next_requests: int = 0
    malformed_share: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    # Loaded histories: number -> its invalid months (indexes, domain/reassign.py).
    histories: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass
class ReassignSimCounters:
    requests: int = 0
    lookups: int = 0
    errors_injected: int = 0
    malformed_injected: int = 0
    # The numbers asked for, in order (tests: was it looked up, how often):
    # the last ASKED_KEPT of them, so that a simulator left running beside
    # `make run` does not grow with every lookup.
    asked: list[str] = field(default_factory=list)


ASKED_KEPT = 10_000


def load_histories(path: Path) -> tuple[str, dict[str, frozenset[int]]]:
    """(data_month, histories) from a data file; ReassignSimDataError names
    what is wrong."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReassignSimDataError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("numbers", {}), dict):
        raise ReassignSimDataError(f'{path}: expected {{"data_month": ..., "numbers": {{...}}}}')
    data_month = raw.get("data_month", "")
    if data_month:
        try:
            parse_month(str(data_month))
        except ValueError as exc:
            raise ReassignSimDataError(f"{path}: data_month: {exc}") from exc
    histories: dict[str, frozenset[int]] = {}
    for number, months in raw.get("numbers", {}).items():
        if not isinstance(months, list):
            raise ReassignSimDataError(f"{path}: numbers.{number}: expected a list of YYYY-MM")
        try:
            histories[number] = frozenset(parse_month(str(m)) for m in months)
        except ValueError as exc:
            raise ReassignSimDataError(f"{path}: numbers.{number}: {exc}") from exc
    return str(data_month), histories


class ReassignSim:
    def __init__(
        self,
        config: ReassignSimConfig,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.counters = ReassignSimCounters()
        self._now = now
        self._random = random.Random(config.seed)
        # While set, answers wait to be released one by one (`release`): a
        # service that stalls, and tests that choose which answer lands first.
        self.hold_answers = False
        self.held: list[asyncio.Future[None]] = []
        self._held_more = asyncio.Event()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/lookups", self._handle_lookups)
        return app

    # -- the data -----------------------------------------------------------------

    def data_month(self) -> int:
        if self.config.data_month:
            return parse_month(self.config.data_month)
        return month_of(jst_today(self._now()))

    def invalid_months(self, msisdn: str, newest: int | None = None) -> frozenset[int]:
        """The months `msisdn` was out of service, up to the data's newest
        month (`data_month()` unless given): loaded, else generated."""
        loaded = self.config.histories.get(msisdn)
        if loaded is not None:
            return loaded
        if newest is None:
            newest = self.data_month()
        draw = _unit(f"{self.config.seed}:history", msisdn)
        if draw < self.config.reassigned_share:
            length = INVALID_RUN_MONTHS + int(_unit(f"{self.config.seed}:length", msisdn) * 3)
        elif draw < self.config.reassigned_share + self.config.gap_share:
            length = 1 + int(_unit(f"{self.config.seed}:length", msisdn) * (INVALID_RUN_MONTHS - 1))
        else:
            return frozenset()
        end = newest - int(_unit(f"{self.config.seed}:end", msisdn) * _GENERATED_SPAN_MONTHS)
        return frozenset(range(end - length + 1, end + 1))

    def verdict_of(self, msisdn: str, base_date: date) -> dict[str, str]:
        return self.verdicts([(msisdn, base_date)])[0]

    def verdicts(self, lookups: list[tuple[str, date]]) -> list[dict[str, str]]:
        """One request's answers, all judged on the data as it is now: the
        month is read once, not per number (a service's CPU here is the
        daemon's and PostgreSQL's, not a remote host's)."""
        newest = self.data_month()
        newest_text = month_text(newest)
        return [
            {
                "number": msisdn,
                "base_date": base_date.isoformat(),
                "verdict": judge(self.invalid_months(msisdn, newest), base_date, newest).value,
                "data_month": newest_text,
            }
            for msisdn, base_date in lookups
        ]

    def release(self, index: int) -> None:
        """Let the `index`th held answer (in arrival order) go."""
        if not self.held[index].done():
            self.held[index].set_result(None)

    async def wait_held(self, count: int) -> None:
        """Until `count` answers have been held."""
        while len(self.held) < count:
            self._held_more.clear()
            await self._held_more.wait()

    # -- HTTP ---------------------------------------------------------------------

    async def _handle_lookups(self, request: web.Request) -> web.Response:
        config = self.config
        header = request.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        if not (token and hmac.compare_digest(token.encode(), config.token.encode())):
            return _error(401, "unauthorized", "a valid bearer token is required")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "malformed_body", "not JSON")
        lookups = _parse_lookups(body)
        if isinstance(lookups, str):
            return _error(400, "invalid_request", lookups)
        self.counters.requests += 1
        self.counters.lookups += len(lookups)
        asked = self.counters.asked
        asked += [number for number, _ in lookups]
        if len(asked) > ASKED_KEPT:
            del asked[: len(asked) - ASKED_KEPT]
        # Judged on the data as it is when asked.
        results = self.verdicts(lookups)
        delay_ms = config.latency_ms + self._random.uniform(0.0, config.jitter_ms)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if self.hold_answers:
            held = asyncio.get_running_loop().create_future()
            self.held.append(held)
            self._held_more.set()
            await held
        if config.fail_next_requests > 0:
            config.fail_next_requests -= 1
            self.counters.errors_injected += 1
            return _error(503, "unavailable", "injected error")
        if self._random.random() < config.error_share:
            self.counters.errors_injected += 1
            return _error(503, "unavailable", "injected error")
        if self._random.random() < config.malformed_share:
            self.counters.malformed_injected += 1
            return self._malformed(results)
        return web.json_response({"results": results})

    def _malformed(self, results: list[dict[str, str]]) -> web.Response:
        kind = self._random.randrange(3)
        if kind == 0:
            text = json.dumps({"results": results})
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        if kind == 1:
            return web.json_response({"results": results[:-1]})
        return web.json_response({"results": [{**r, "verdict": "maybe"} for r in results]})


def _parse_lookups(body: Any) -> list[tuple[str, date]] | str:
    if not isinstance(body, dict) or not isinstance(body.get("lookups"), list):
        return 'expected {"lookups": [{"number": ..., "base_date": "YYYY-MM-DD"}, ...]}'
    items = body["lookups"]
    if len(items) > MAX_LOOKUPS_PER_REQUEST:
        return f"at most {MAX_LOOKUPS_PER_REQUEST} lookups per request"
    parsed: list[tuple[str, date]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("number"), str):
            return f"lookups[{index}]: needs a number"
        try:
            base_date = date.fromisoformat(str(item.get("base_date")))
        except ValueError:
            return f"lookups[{index}].base_date: not a date YYYY-MM-DD"
        parsed.append((item["number"], base_date))
    return parsed


def _unit(salt: str, key: str) -> float:
    """A stable number in [0, 1) for `key`: the same on every run and host."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def run_reassign_sim(
    config: ReassignSimConfig,
    host: str,
    port: int,
    *,
    on_listening: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve until cancelled; `on_listening` gets the bound base URLs."""
    runner = web.AppRunner(ReassignSim(config).build_app())
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        urls = [
            f"http://{address[0]}:{address[1]}"
            for address in runner.addresses
            if isinstance(address, tuple)
        ]
        _log.info(
            "reassign_sim_listening",
            urls=urls,
            numbers_loaded=len(config.histories),
            latency_ms=config.latency_ms,
        )
        if on_listening is not None:
            on_listening(urls)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def config_from(options: Mapping[str, Any]) -> ReassignSimConfig:
    """The simulator's configuration from the CLI's options (and data file)."""
    config = ReassignSimConfig(
        token=options["token"],
        seed=options["seed"],
        data_month=options["data_month"],
        reassigned_share=options["reassigned_share"],
        error_share=options["error_share"],
        malformed_share=options["malformed_share"],
        latency_ms=options["latency_ms"],
        jitter_ms=options["jitter_ms"],
    )
    if options.get("data"):
        data_month, histories = load_histories(Path(options["data"]))
        config.histories = histories
        config.data_month = config.data_month or data_month
    if config.data_month:
        try:
            parse_month(config.data_month)
        except ValueError as exc:
            raise ReassignSimDataError(f"--data-month: {exc}") from exc
    return config
