"""The public link server (DOMAIN §12): short links and opt-out pages.

Its own listener (config ``[links]`` host/port), meant to face the internet
behind a TLS proxy, and its own small application: nothing of the
authenticated API is reachable through it.

- ``GET /<code>`` of a short link: ``302`` to its target, once the click is
  durable (see `ClickBatcher`). The first click per recipient and link is
  kept; later ones are counted.
- ``GET /<code>`` of an opt-out URL: a page with one button. A GET never
  opts anyone out (link scanners and previews open links); the button
  POSTs to the same path with a CSRF token.
- ``POST /<code>`` of an opt-out URL: with a valid token, the number goes
  on the account's opt-out list (carrierd.optout_list, source optout_url).
- Unknown codes: ``404``, expired ones ``410``, refused requests ``429``,
  all as small Japanese pages; never an error dump.

CSRF: the GET sets a random nonce in an HttpOnly, SameSite=Strict cookie
scoped to the code's path, and puts HMAC(csrf_secret, code, nonce) in the
form; the POST must carry both, and they must match (a double-submit bound
to the code by the server's secret: another site can neither read the
cookie nor forge the token). The page also forbids framing, so the button
cannot be clickjacked.

Guessing: a code is one of 62**n (n >= 8); every address has a small budget
of misses (unknown or expired codes), after which all its requests are
refused for a while, known codes included, so a guesser learns nothing from
the answers once over budget. Every well-shaped code, known or not, takes
the same path through one batched statement, so unknown codes cannot be
told apart by timing either.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Literal

import structlog
from aiohttp import web

from carrierd.config import HttpConfig, LinksConfig
from carrierd.domain.clock import Clock
from carrierd.domain.links import is_code_shaped, link_live
from carrierd.domain.netpolicy import IPNetwork
from carrierd.domain.numbers import national_form
from carrierd.http.app import Handler
from carrierd.http.limits import start_http_server
from carrierd.optout_list import DEFAULT_CAP, OptOutCapExceeded, OptOutSource, add_optouts
from carrierd.store.db import Database, Transaction, is_transient_db_error
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.http.links")

CSRF_COOKIE = "optout_csrf"
CSRF_FIELD = "token"
# A click batch never grows past this many codes (one statement's arrays).
MAX_BATCH_CODES = 2000
# Batches being committed at once: one commits while the next executes.
FLUSHES_IN_FLIGHT = 3
# The address table of the rate limiter: past this many, addresses whose
# buckets are full again (nothing to remember) are forgotten.
MAX_TRACKED_ADDRESSES = 50_000
MAX_FORM_BYTES = 4096


@dataclass(frozen=True)
class Followed:
    """What a code leads to: a short link's target, or an opt-out page."""

    kind: Literal["link", "optout", "expired", "unknown"]
    target_url: str | None = None
    msisdn: str | None = None


class ClickBatcher:
    """Group commit for clicks: every request waits for the statement that
    counts its click to commit, and the requests that arrive while
    statements run go together in the next one (at most FLUSHES_IN_FLIGHT
    at once, each sorting its codes so that two never wait on each other's
    rows). A 302 is therefore only sent once its click is durable, at the
    cost of one round trip per batch, not per click."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._pending: dict[str, list[asyncio.Future[Followed]]] = {}
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(FLUSHES_IN_FLIGHT)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="link-clicks")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def follow(self, code: str) -> Followed:
        if self._stopping:
            raise ConnectionError("link server stopping")
        future: asyncio.Future[Followed] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(code, []).append(future)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # While every slot is busy committing, requests gather in
                # _pending: the busier the server, the bigger the batches.
                await self._slots.acquire()
                task = asyncio.create_task(self._answer(self._take()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if self._stopping and not self._pending:
                await asyncio.gather(*in_flight)
                return

    async def _answer(self, batch: dict[str, list[asyncio.Future[Followed]]]) -> None:
        try:
            results = await self._flush(batch)
        except Exception as exc:
            if not is_transient_db_error(exc):
                log.exception("link_clicks_failed", codes=len(batch))
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(ConnectionError(str(exc)))
            return
        finally:
            self._slots.release()
        for code, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(results[code])

    def _take(self) -> dict[str, list[asyncio.Future[Followed]]]:
        if len(self._pending) <= MAX_BATCH_CODES:
            batch, self._pending = self._pending, {}
            return batch
        codes = list(self._pending)[:MAX_BATCH_CODES]
        return {code: self._pending.pop(code) for code in codes}

    async def _flush(self, batch: dict[str, list[asyncio.Future[Followed]]]) -> dict[str, Followed]:
        now = self._clock.now()
        codes = sorted(batch)
        counts = [len(batch[code]) for code in codes]
        found = {
            r["code"]: Followed(r["kind"], r["target_url"], r["msisdn"])
            for r in await self._db.fetch("links_follow", codes, counts, now)
        }
        missing = [code for code in codes if code not in found]
        if missing:
            for r in await self._db.fetch("links_lookup", missing):
                if not link_live(r["expires_at"], now):
                    found[r["code"]] = Followed("expired")
        return {code: found.get(code, Followed("unknown")) for code in codes}


@dataclass
class _Buckets:
    tokens: float
    misses: float
    at_s: float


@dataclass
class AddressLimiter:
    """Token buckets per client address: one for every request, a smaller
    one for misses (unknown or expired codes). An address out of misses is
    refused everything until its miss bucket refills. Times are the event
    loop's seconds (a network defence, not a message time)."""

    rate_per_s: float
    burst: int
    misses_per_s: float
    miss_burst: int
    _addresses: dict[str, _Buckets] = field(default_factory=dict)

    def _refilled(self, address: str, now_s: float) -> _Buckets:
        buckets = self._addresses.get(address)
        if buckets is None:
            if len(self._addresses) >= MAX_TRACKED_ADDRESSES:
                self._forget_full(now_s)
            buckets = _Buckets(float(self.burst), float(self.miss_burst), now_s)
            self._addresses[address] = buckets
            return buckets
        elapsed_s = max(0.0, now_s - buckets.at_s)
        buckets.tokens = min(float(self.burst), buckets.tokens + elapsed_s * self.rate_per_s)
        buckets.misses = min(float(self.miss_burst), buckets.misses + elapsed_s * self.misses_per_s)
        buckets.at_s = now_s
        return buckets

    def allow(self, address: str, now_s: float) -> bool:
        buckets = self._refilled(address, now_s)
        if buckets.misses < 1.0 or buckets.tokens < 1.0:
            return False
        buckets.tokens -= 1.0
        return True

    def missed(self, address: str, now_s: float) -> None:
        buckets = self._refilled(address, now_s)
        buckets.misses = max(0.0, buckets.misses - 1.0)

    def _forget_full(self, now_s: float) -> None:
        for address, buckets in list(self._addresses.items()):
            elapsed_s = max(0.0, now_s - buckets.at_s)
            if (
                buckets.tokens + elapsed_s * self.rate_per_s >= self.burst
                and buckets.misses + elapsed_s * self.misses_per_s >= self.miss_burst
            ):
                del self._addresses[address]
        if len(self._addresses) >= MAX_TRACKED_ADDRESSES:
            # Everyone is busy: forget the oldest half rather than grow.
            by_age = sorted(self._addresses, key=lambda a: self._addresses[a].at_s)
            for address in by_age[: len(by_age) // 2]:
                del self._addresses[address]


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """The address a request came from: the peer, or, when the peer is a
    trusted proxy, the last address in X-Forwarded-For that is not one."""
    peer = remote or ""
    if not trusted or not forwarded_for or not _in_networks(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if hop and not _in_networks(hop, trusted):
            return hop
    return peer


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def csrf_token(secret: str, code: str, nonce: str) -> str:
    """The form's token: binds the cookie's nonce to this opt-out URL."""
    message = f"optout\0{code}\0{nonce}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def csrf_valid(secret: str, code: str, nonce: str | None, token: str | None) -> bool:
    if not nonce or not token or len(nonce) > 64 or len(token) > 128:
        return False
    return hmac.compare_digest(csrf_token(secret, code, nonce), token)


# -- pages --------------------------------------------------------------------

_STYLE = (
    "body{margin:0;font-family:sans-serif;background:#f4f4f4;color:#222;line-height:1.6}"
    "main{max-width:30rem;margin:0 auto;padding:1.5rem 1rem}"
    "h1{font-size:1.25rem;margin:0 0 1rem}"
    "p,form{margin:0 0 1rem}"
    "button{width:100%;padding:1rem;font-size:1.1rem;border:0;border-radius:.5rem;"
    "background:#c62828;color:#fff}"
    ".note{font-size:.85rem;color:#555}"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def page(status: int, title: str, body_html: str) -> web.Response:
    document = (
        '<!doctype html><html lang="ja"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body_html}</main></body></html>"
    )
    return web.Response(
        status=status,
        text=document,
        content_type="text/html",
        charset="utf-8",
        headers=_SECURITY_HEADERS,
    )


def _masked(msisdn: str | None) -> str:
    if not msisdn:
        return ""
    national = national_form(msisdn)
    return f"{national[:3]}-****-{national[-4:]}"


def unknown_page() -> web.Response:
    return page(
        404,
        "リンクが見つかりません",
        "<p>このリンクは無効です。URLをもう一度お確かめください。</p>",
    )


def expired_page() -> web.Response:
    return page(
        410,
        "有効期限が切れています",
        "<p>このリンクの有効期限は終了しました。</p>"
        '<p class="note">配信の停止をご希望の場合は、送信元へ直接お問い合わせください。</p>',
    )


def too_many_page() -> web.Response:
    response = page(
        429,
        "しばらくお待ちください",
        "<p>アクセスが集中しています。少し時間をおいてから、もう一度お試しください。</p>",
    )
    response.headers["Retry-After"] = "60"
    return response


def unavailable_page() -> web.Response:
    response = page(
        503,
        "ただいま混み合っています",
        "<p>一時的にご利用いただけません。少し時間をおいてから、もう一度お試しください。</p>",
    )
    response.headers["Retry-After"] = "5"
    return response


def optout_page(code: str, msisdn: str | None, token: str, *, retry: bool = False) -> web.Response:
    again = (
        '<p class="note">お手続きを完了できませんでした。もう一度ボタンを押してください。</p>'
        if retry
        else ""
    )
    number = _masked(msisdn)
    who = f"（{html.escape(number)}）" if number else ""
    return page(
        403 if retry else 200,
        "配信停止のお手続き",
        f"{again}<p>このお客様{who}へのメッセージ配信を停止します。</p>"
        "<p>よろしければ、下のボタンを押してください。</p>"
        f'<form method="post" action="/{html.escape(code)}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(token)}">'
        '<button type="submit" id="confirm">配信を停止する</button></form>'
        '<p class="note">このページを開いただけでは、配信は停止されません。</p>',
    )


def done_page() -> web.Response:
    return page(
        200,
        "配信を停止しました",
        "<p>お手続きが完了しました。今後、この送信元からのメッセージは届きません。</p>"
        '<p class="note">このページは閉じていただいてかまいません。</p>',
    )


def list_full_page() -> web.Response:
    return page(
        409,
        "お手続きを完了できませんでした",
        "<p>申し訳ありません。現在、配信停止を受け付けることができません。</p>"
        '<p class="note">お手数ですが、送信元へ直接お問い合わせください。</p>',
    )


# -- the application ----------------------------------------------------------


@dataclass
class LinkServerState:
    config: LinksConfig
    db: Database
    clock: Clock
    batcher: ClickBatcher
    limiter: AddressLimiter
    loop_time: Callable[[], float]
    optout_cap: Callable[[str], int] = lambda _account_id: DEFAULT_CAP
    metrics: Metrics | None = None

    def answered(self, answer: LinkAnswer, response: web.Response) -> web.Response:
        """`response`, counted by what it was (carrierd_link_answers_total)."""
        if self.metrics is not None:
            self.metrics.link_answers_total.labels(answer).inc()
        return response


# What the link server answered, as counted: a rise in unknown and
# rate_limited is someone guessing codes; in unavailable, the database.
LinkAnswer = Literal[
    "redirect",
    "optout_page",
    "optout_confirmed",
    "optout_list_full",
    "csrf_refused",
    "expired",
    "unknown",
    "rate_limited",
    "unavailable",
]


LINK_STATE: web.AppKey[LinkServerState] = web.AppKey("link_state", LinkServerState)


@web.middleware
async def _pages_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is a page: aiohttp's own errors and ours alike."""
    state = request.app[LINK_STATE]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 405:
            return page(405, "このページは表示できません", "<p>このリンクは開けません。</p>")
        if exc.status == 413:
            return page(413, "送信できません", "<p>内容が大きすぎます。</p>")
        return state.answered("unknown", unknown_page())
    except Exception as exc:
        if is_transient_db_error(exc) or isinstance(exc, ConnectionError):
            log.warning("link_server_database_unavailable", path=request.path, error=repr(exc))
        else:
            log.exception("link_server_failed", path=request.path)
        return state.answered("unavailable", unavailable_page())
    return response


def _address(request: web.Request, state: LinkServerState) -> str:
    return client_address(
        request.remote, request.headers.get("X-Forwarded-For"), state.config.trusted_proxies
    )


async def get_code(request: web.Request) -> web.StreamResponse:
    state = request.app[LINK_STATE]
    address = _address(request, state)
    now_s = state.loop_time()
    if not state.limiter.allow(address, now_s):
        return state.answered("rate_limited", too_many_page())
    code = request.match_info["code"]
    if not is_code_shaped(code):
        state.limiter.missed(address, now_s)
        return state.answered("unknown", unknown_page())
    followed = await state.batcher.follow(code)
    if followed.kind == "link" and followed.target_url is not None:
        redirect = web.Response(
            status=302,
            headers={
                "Location": followed.target_url,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )
        return state.answered("redirect", redirect)
    if followed.kind == "optout":
        return state.answered("optout_page", _optout_form(state, code, followed.msisdn))
    state.limiter.missed(address, now_s)
    if followed.kind == "expired":
        return state.answered("expired", expired_page())
    return state.answered("unknown", unknown_page())


def _optout_form(
    state: LinkServerState, code: str, msisdn: str | None, *, retry: bool = False
) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = optout_page(
        code, msisdn, csrf_token(state.config.csrf_secret, code, nonce), retry=retry
    )
    response.set_cookie(
        CSRF_COOKIE,
        nonce,
        path=f"/{code}",
        httponly=True,
        secure=state.config.secure_cookies,
        samesite="Strict",
    )
    return response


async def post_code(request: web.Request) -> web.StreamResponse:
    state = request.app[LINK_STATE]
    address = _address(request, state)
    now_s = state.loop_time()
    if not state.limiter.allow(address, now_s):
        return state.answered("rate_limited", too_many_page())
    code = request.match_info["code"]
    if not is_code_shaped(code):
        state.limiter.missed(address, now_s)
        return state.answered("unknown", unknown_page())
    form = await request.post()
    token = form.get(CSRF_FIELD)
    nonce = request.cookies.get(CSRF_COOKIE)
    now = state.clock.now()

    async def confirm(tx: Transaction) -> str:
        row = await tx.fetchrow("links_optout_target", code)
        if row is None:
            return "unknown"
        if not link_live(row["expires_at"], now):
            return "expired"
        if not csrf_valid(
            state.config.csrf_secret, code, nonce, token if isinstance(token, str) else None
        ):
            return "csrf:" + str(row["msisdn"])
        account_id = str(row["account_id"])
        try:
            await add_optouts(
                tx,
                account_id,
                [row["msisdn"]],
                OptOutSource.OPTOUT_URL,
                now,
                state.optout_cap(account_id),
            )
        except OptOutCapExceeded as exc:
            log.warning("optout_url_list_full", account=account_id, reason=str(exc))
            return "full"
        await tx.execute("links_optout_confirmed", row["key"], now)
        log.info("optout_url_confirmed", account=account_id)
        return "done"

    outcome = await state.db.in_transaction(confirm)
    if outcome == "done":
        return state.answered("optout_confirmed", done_page())
    if outcome == "full":
        return state.answered("optout_list_full", list_full_page())
    if outcome.startswith("csrf:"):
        # Nothing done; a fresh form lets a person who really pressed the
        # button (an old tab, a lost cookie) try again.
        log.info("optout_url_csrf_refused", has_cookie=nonce is not None)
        retry = _optout_form(state, code, outcome.removeprefix("csrf:"), retry=True)
        return state.answered("csrf_refused", retry)
    state.limiter.missed(address, now_s)
    if outcome == "expired":
        return state.answered("expired", expired_page())
    return state.answered("unknown", unknown_page())


async def robots(_request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nDisallow: /\n", content_type="text/plain")


def build_link_app(state: LinkServerState) -> web.Application:
    """The link server's whole surface."""
    app = web.Application(client_max_size=MAX_FORM_BYTES, middlewares=[_pages_only])
    app[LINK_STATE] = state
    app.add_routes(
        [
            web.get("/robots.txt", robots),
            # No HEAD: a scanner's HEAD must not count as a click.
            web.get("/{code}", get_code, allow_head=False),
            web.post("/{code}", post_code),
        ]
    )
    return app


@dataclass
class LinkServer:
    """The running link server; `stop` closes the listener, then lets the
    last batch of clicks commit."""

    runner: web.AppRunner
    batcher: ClickBatcher
    port: int
    state: LinkServerState

    def apply(self, config: LinksConfig) -> None:
        """A reload's [links]: rate limits, trusted proxies, the CSRF secret
        and cookie flags apply to the next request (an opt-out form shown
        before a new secret is refused once and shown again). The listener
        keeps its address (config.py `reloaded`)."""
        self.state.config = config
        limiter = self.state.limiter
        limiter.rate_per_s = config.rate_per_s
        limiter.burst = config.burst
        limiter.misses_per_s = config.misses_per_min / 60.0
        limiter.miss_burst = config.miss_burst

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.batcher.stop()


async def start_link_server(
    config: LinksConfig,
    db: Database,
    clock: Clock,
    *,
    optout_cap: Callable[[str], int] | None = None,
    metrics: Metrics | None = None,
    host: str | None = None,
    port: int | None = None,
) -> LinkServer:
    loop = asyncio.get_running_loop()
    batcher = ClickBatcher(db, clock)
    batcher.start()
    state = LinkServerState(
        config=config,
        db=db,
        clock=clock,
        batcher=batcher,
        limiter=AddressLimiter(
            rate_per_s=config.rate_per_s,
            burst=config.burst,
            misses_per_s=config.misses_per_min / 60.0,
            miss_burst=config.miss_burst,
        ),
        loop_time=loop.time,
        metrics=metrics,
    )
    if optout_cap is not None:
        state.optout_cap = optout_cap
    limits = HttpConfig(
        host=config.host if host is None else host,
        port=config.port if port is None else port,
        max_body_bytes=MAX_FORM_BYTES,
        max_connections=config.max_connections,
        header_timeout_s=10.0,
        body_timeout_s=10.0,
        idle_timeout_s=30.0,
    )
    try:
        runner, _ = await start_http_server(build_link_app(state), limits, access_log=None)
    except BaseException:
        await batcher.stop()
        raise
    return LinkServer(runner, batcher, int(runner.addresses[0][1]), state)
