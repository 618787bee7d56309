"""A bind that cannot succeed fails quietly and honestly: one warning per
failed attempt with its reason, retried with backoff, and nothing left for
asyncio to report ("Future exception was never retrieved").

check-config refuses a password over SMPP's 8 octets; a CarrierConfig built
in code can still carry one, and used to leave a failed future per attempt.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from carrierd.config import CarrierConfig
from carrierd.smpp.session import SmppSession

WAIT_S = 5.0  # an upper bound for things to happen, not a speed claim


@pytest.fixture(autouse=True)
def _plain_structlog() -> Iterator[None]:
    # capture_logs needs structlog's defaults, whatever another test set up.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


async def three_failures(session: SmppSession) -> None:
    while session.stats.bind_failures < 3:  # noqa: ASYNC110 - nothing to wait on but stats
        await asyncio.sleep(0.01)


async def test_a_bind_the_codec_cannot_encode_fails_once_per_attempt_with_its_reason() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = CarrierConfig(
        name="docomo",
        host="127.0.0.1",
        port=port,
        password="123456789",  # 9 octets: SMPP 3.4 carries at most 8
        reconnect_max_backoff_s=0.05,
    )
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    session = SmppSession(config, "docomo-1", lambda *_: None, initial_backoff_s=0.01)
    try:
        with capture_logs() as logs:
            await session.start()
            await asyncio.wait_for(three_failures(session), WAIT_S)
            await session.stop(0.1)
        # Unretrieved exceptions are reported when their future is collected.
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
        server.close()
        await server.wait_closed()

    assert session.health == "stopped"
    failures = [e for e in logs if e["event"] == "smpp_bind_failed"]
    assert len(failures) == session.stats.bind_failures >= 3
    assert all("password: 9 octets" in e["error"] for e in failures)
    assert all(e["retry_in_s"] > 0 for e in failures)
    assert unhandled == []
