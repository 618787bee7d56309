"""Status callbacks reach public addresses only, unless the account allows a
network: real receivers on loopback addresses, the real sender and a real
PostgreSQL.

Each refusal is shown against a receiver that is really there, and the same
URL is then delivered once the account allows loopback: what stops the
callback is the guard, not an unreachable address.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from ipaddress import ip_network

from aiohttp import web

from carrierd.domain.clock import FakeClock
from carrierd.ops.callbacks import CallbackSender, GuardedClient, enqueue_callback
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.test_callbacks import PAYLOAD, callback_row, new_message

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
# The aiohttp in use refuses some legacy IPv4 spellings (2130706433, 127.1)
# itself; the guard stands behind it for any it lets through (0x7f.1).
# The wording is aiohttp's own: 3.12.0 says the second, later releases the first.
LIBRARY_REFUSES = ("not a canonical IPv4 address", "is not an IP address")


def refused_by_library(error: str) -> bool:
    return any(words in error for words in LIBRARY_REFUSES)


class Receiver:
    def __init__(self, redirect_to: str | None = None) -> None:
        self.redirect_to = redirect_to
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.host)
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        return web.Response(text="ok")


@asynccontextmanager
async def receiving(host: str, receiver: Receiver) -> AsyncIterator[int]:
    app = web.Application()
    app.add_routes([web.post("/status", receiver.handle)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def send_all(db: Database, urls: list[str], allowed: list[str]) -> list[str | None]:
    """Queue one callback per URL, run one batch; each one's error (None: sent)."""
    ids = []
    for url in urls:
        message_id = await new_message(db)
        async with db.transaction() as tx:
            ids.append(await enqueue_callback(tx, message_id, "acme", url, PAYLOAD, NOW))
    networks = tuple(ip_network(n) for n in allowed)
    client = GuardedClient()
    try:
        sender = CallbackSender(
            db,
            client,
            lambda _account: "",
            FakeClock(NOW),
            Metrics(),
            allowed_networks=lambda _account: networks,
            request_timeout_s=5.0,
        )
        assert await sender.run_once(NOW) == len(urls)
    finally:
        await client.close()
    rows = [await callback_row(db, i) for i in ids]
    return [None if r["state"] == "sent" else r["last_error"] for r in rows]


async def test_loopback_in_every_spelling_is_refused_unless_the_account_allows_it(
    db: Database,
) -> None:
    receiver = Receiver()
    async with receiving("127.0.0.1", receiver) as port:
        urls = [
            f"http://127.0.0.1:{port}/status",
            f"http://0x7f.1:{port}/status",
            f"http://2130706433:{port}/status",
            f"http://0177.0.0.1:{port}/status",
            f"http://127.1:{port}/status",
            f"http://localhost:{port}/status",  # a name that resolves to 127.0.0.1
        ]
        if ipv6_loopback():
            urls.append(f"http://[::ffff:127.0.0.1]:{port}/status")
        errors = await send_all(db, urls, allowed=[])
        assert receiver.hits == []
        for url, error in zip(urls, errors, strict=True):
            assert error is not None and ("not public" in error or refused_by_library(error)), (
                url,
                error,
            )

        # The same URLs with loopback allowed for the account are delivered,
        # but for the legacy spellings aiohttp itself refuses to connect to.
        errors = await send_all(db, urls, allowed=["127.0.0.0/8"])
        for url, error in zip(urls, errors, strict=True):
            assert error is None or refused_by_library(error), (url, error)
        delivered = [url for url, error in zip(urls, errors, strict=True) if error is None]
        assert len(receiver.hits) == len(delivered)
        assert {urls[0], urls[1], urls[5]} <= set(delivered)


async def test_ipv6_loopback_is_refused_unless_allowed(db: Database) -> None:
    if not ipv6_loopback():
        return  # nothing listens on [::1] on a host without IPv6
    receiver = Receiver()
    async with receiving("::1", receiver) as port:
        url = f"http://[::1]:{port}/status"
        [error] = await send_all(db, [url], allowed=["127.0.0.0/8"])
        assert error is not None and "not public" in error
        assert receiver.hits == []
        assert await send_all(db, [url], allowed=["::1/128"]) == [None]
        assert len(receiver.hits) == 1


async def test_metadata_and_private_addresses_are_refused_before_connecting(
    db: Database,
) -> None:
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/status",
        "http://[fd00::1]/status",
        "http://0.0.0.0/status",
        "http://100.64.0.1/status",
    ]
    errors = await send_all(db, urls, allowed=[])
    for url, error in zip(urls, errors, strict=True):
        assert error is not None and "not public" in error, (url, error)


async def test_a_redirect_to_a_private_address_is_not_followed(db: Database) -> None:
    inside = Receiver()
    async with receiving("127.0.0.2", inside) as inside_port:
        inside_url = f"http://127.0.0.2:{inside_port}/status"
        # Stands for a public receiver: the account allows exactly its address.
        public = Receiver(redirect_to=inside_url)
        async with receiving("127.0.0.1", public) as public_port:
            public_url = f"http://127.0.0.1:{public_port}/status"
            [error] = await send_all(db, [public_url], allowed=["127.0.0.1/32"])
            assert error == "HTTP 307"
            assert len(public.hits) == 1
            assert inside.hits == []
            # Where it pointed is refused outright too.
            [error] = await send_all(db, [inside_url], allowed=["127.0.0.1/32"])
            assert error is not None and "not public" in error
            assert inside.hits == []
