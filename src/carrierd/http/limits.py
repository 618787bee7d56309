"""The HTTP server's defences against slow, idle and too many connections.

aiohttp reads a request head for as long as a client cares to send it, so
a thousand clients each sending a header line now and then (slowloris)
hold a thousand file descriptors for ever. `start_http_server` serves the
app through a `ConnectionGuard` that puts a deadline on every wait for the
client (config ``[http]``):

- ``idle_timeout_s``: a connection waiting for a request that sends nothing
  (a new one, or a kept-alive one after its response) is closed;
- ``header_timeout_s``: from the first byte of a request, its head (request
  line and headers) must be complete within this time;
- ``body_timeout_s``: once the head is in, the body must be complete within
  this time, else the answer is 408 and the connection is closed;
- ``max_connections``: at the limit, a new connection displaces the one
  that has waited longest for a request head (idle or slow: both are cheap
  to drop, a client in earnest reconnects); if every connection is busy
  with a request, the new one is closed at once.

The guard sits between the event loop and aiohttp's protocol: it sees each
connection open, each chunk of bytes arrive and each close, and a
middleware tells it when a request's handler starts and ends (while a
handler works, no deadline of the client's applies). What aiohttp reads and
answers is unchanged. The deadlines use the event loop's clock: they are
network timeouts, not message times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web

from carrierd.config import HttpConfig
from carrierd.http.app import error_body
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.http.limits")

Handler = Callable[[web.Request], Any]


class _GuardedConnection(asyncio.Protocol):
    """One client connection: forwards everything to aiohttp's protocol and
    keeps the deadline of whatever the connection is waiting for."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        # True while a request's handler runs: the client owes us nothing.
        self.busy = False
        self.waiting_since = self._loop.time()
        self._head_started = False
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self.transport.abort()
            return
        self.admitted = True
        self._inner.connection_made(transport)
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if not self.busy and not self._head_started:
            self._head_started = True
            self._arm(self._guard.config.header_timeout_s, "header_timeout")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._guard.forget(self)
        if self.admitted:
            self.admitted = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- what the middleware and the guard tell it ---------------------------------

    def request_started(self) -> None:
        self.busy = True
        self._cancel_deadline()

    def request_finished(self) -> None:
        self.busy = False
        self._wait_for_request()

    def drop(self, reason: str) -> None:
        """Close now, counting why (a displaced or expired connection)."""
        self._cancel_deadline()
        self._guard.count_closed(reason)
        if self.transport is not None:
            self.transport.abort()

    # -- deadlines -----------------------------------------------------------------

    def _wait_for_request(self) -> None:
        self._head_started = False
        self.waiting_since = self._loop.time()
        self._arm(self._guard.config.idle_timeout_s, "idle_timeout")

    def _arm(self, delay_s: float, reason: str) -> None:
        self._cancel_deadline()
        self._deadline = self._loop.call_later(delay_s, self._expire, reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        if not self.busy:
            self.drop(reason)


class ConnectionGuard:
    """Every open connection of one server, with the limits of `config`."""

    def __init__(self, config: HttpConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._open: dict[asyncio.Transport, _GuardedConnection] = {}

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        return lambda: _GuardedConnection(self, inner())

    def admit(self, connection: _GuardedConnection) -> bool:
        assert connection.transport is not None
        if len(self._open) >= self.config.max_connections:
            waiting = [c for c in self._open.values() if not c.busy]
            if not waiting:
                self.count_closed("over_limit")
                return False
            oldest = min(waiting, key=lambda c: c.waiting_since)
            self.forget(oldest)
            oldest.drop("displaced")
        self._open[connection.transport] = connection
        return True

    def forget(self, connection: _GuardedConnection) -> None:
        if connection.transport is not None:
            self._open.pop(connection.transport, None)

    def count_closed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.http_connections_closed_total.labels(reason).inc()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None:
            connection.request_started()
        try:
            if request.body_exists and not _reads_as_it_arrives(request):
                # read() keeps the body: the handler's read() or json() gets it.
                try:
                    async with asyncio.timeout(self.config.body_timeout_s):
                        await request.read()
                except TimeoutError:
                    return await self._body_timed_out(request)
            result: web.StreamResponse = await handler(request)
            return result
        finally:
            if connection is not None:
                connection.request_finished()

    async def _body_timed_out(self, request: web.Request) -> web.StreamResponse:
        self.count_closed("body_timeout")
        response = web.json_response(
            error_body(
                "request_timeout",
                f"request body not received within {self.config.body_timeout_s:g} s",
                "body",
            ),
            status=408,
        )
        response.force_close()
        # Sent here, then the connection closed once it is flushed: left to
        # aiohttp, the rest of the body would be awaited for lingering_time.
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response


# Handlers that read a multipart body as it arrives (a send's CSV upload
# of 100,000 rows): it is not read ahead for them, and they put the body
# deadline on each chunk they wait for (BODY_CHUNK_TIMEOUT_S).
_STREAMING_HANDLERS: set[Callable[..., Any]] = set()


def streams_multipart(handler: Handler) -> Handler:
    """Mark a route handler that reads its multipart body as it arrives."""
    _STREAMING_HANDLERS.add(handler)
    return handler


def _reads_as_it_arrives(request: web.Request) -> bool:
    return (
        request.content_type == "multipart/form-data"
        and request.match_info.handler in _STREAMING_HANDLERS
    )


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, host: str, port: int) -> None:
        super().__init__(runner)
        self._guard = guard
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), self._host, self._port
        )


async def start_http_server(
    app: web.Application,
    config: HttpConfig,
    *,
    metrics: Metrics | None = None,
    host: str | None = None,
    port: int | None = None,
    **runner_options: Any,
) -> tuple[web.AppRunner, ConnectionGuard]:
    """Serve `app` on host:port (default: config's) behind a ConnectionGuard;
    `runner.cleanup()` stops it. The limits are read once: a reload does
    not change them."""
    guard = ConnectionGuard(config, metrics)
    # Innermost, so that a 413 from reading the body still meets the app's
    # error handling on its way out.
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = _GuardedSite(
        runner, guard, config.host if host is None else host, config.port if port is None else port
    )
    await site.start()
    return runner, guard
