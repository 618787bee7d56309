"""The OpenAPI document (src/carrierd/http/openapi.json) against the real
server: every route is described, real answers match their schemas
(jsonschema_rs, which schemathesis brings), and schemathesis fuzzes every
operation from the document with a bounded number of examples: no 500,
every error in the one JSON shape."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from carrierd.domain.clock import FakeClock
from carrierd.engine.cancel import Canceller
from carrierd.engine.lifecycle import Lifecycle
from carrierd.http.app import ERROR_CODES, ApiState, build_app
from carrierd.http.limits import start_http_server
from carrierd.http.openapi import openapi_document
from carrierd.store.db import Database, create_database_from_template, drop_database
from carrierd.telemetry import Metrics
from tests.conftest import TEMPLATE, with_database
from tests.integration.apiclient import auth, make_config, sync_accounts
from tests.integration.test_http_webhooks import RecordingSink

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
DOCUMENT = openapi_document()
# Each fuzzed operation gets this many examples: enough to reach every
# parameter's edges, few enough for `make test`.
FUZZ_EXAMPLES = 25


def response_schema(path: str, method: str, status: int, media_type: str) -> dict[str, Any]:
    responses = DOCUMENT["paths"][path][method]["responses"]
    described = responses.get(str(status))
    assert described is not None, f"{method.upper()} {path}: {status} is not described"
    if "$ref" in described:
        described = DOCUMENT["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
    content = described.get("content", {})
    assert media_type in content, f"{method.upper()} {path} {status}: {media_type} not described"
    return {"components": DOCUMENT["components"], **content[media_type]["schema"]}


def check_against_document(path: str, method: str, status: int, media_type: str, body: Any) -> None:
    validator = jsonschema_rs.Draft202012Validator(
        response_schema(path, method, status, media_type)
    )
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, (path, method, status, body, errors)


@asynccontextmanager
async def serve(db: Database, dsn: str) -> AsyncIterator[str]:
    config = make_config(
        dsn,
        {"rcs": {"enabled": False, "bot_id": "fuzz-bot", "webhook_secret": "fuzz-secret"}},
    )
    await sync_accounts(db, config)
    clock = FakeClock(NOW)
    state = ApiState(
        config,
        db,
        clock,
        metrics=Metrics(),
        webhook_sink=RecordingSink(),
        canceller=Canceller(db, Lifecycle(), clock),
    )
    runner, _ = await start_http_server(build_app(state), config.http, host="127.0.0.1", port=0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_every_route_is_described() -> None:
    config = make_config("postgresql://localhost/unused")
    state = ApiState(config, None, FakeClock(NOW), metrics=Metrics(), webhook_sink=RecordingSink())  # type: ignore[arg-type]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in build_app(state).router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert served == described
    codes = set(
        DOCUMENT["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
            "enum"
        ]
    )
    assert codes == ERROR_CODES


async def test_real_answers_match_the_document(dsn: str, db: Database) -> None:
    async with serve(db, dsn) as base, aiohttp.ClientSession() as http:
        token = auth("acme-token")

        async def check(method: str, path: str, url: str, expected: int, **kw: Any) -> Any:
            async with http.request(method, base + url, **kw) as resp:
                assert resp.status == expected, (url, await resp.text())
                if resp.content_type == "application/json":
                    body = await resp.json()
                else:
                    body = await resp.text()
                check_against_document(path, method.lower(), resp.status, resp.content_type, body)
                return body

        later = (NOW + timedelta(hours=2)).isoformat()
        items = [
            {"to": "090-1234-5678", "sms": {"text": "本文"}, "client_ref": "a"},
            {"to": "090-1234-5679", "sms": {"text": "本文"}, "send_at": later},
            {"to": "050-1234-5678", "sms": {"text": "本文"}},
        ]
        body = await check(
            "POST", "/v1/messages", "/v1/messages", 202, json={"messages": items}, headers=token
        )
        first, scheduled = (a["id"] for a in body["accepted"])
        conflict = {"messages": [{**items[0], "sms": {"text": "別"}}]}
        await check("POST", "/v1/messages", "/v1/messages", 409, json=conflict, headers=token)
        await check(
            "POST",
            "/v1/messages",
            "/v1/messages",
            422,
            json={"messages": [items[2]]},
            headers=token,
        )
        await check("POST", "/v1/messages", "/v1/messages", 400, json={"x": 1}, headers=token)
        await check("POST", "/v1/messages", "/v1/messages", 401, json={"messages": items})
        await check(
            "POST",
            "/v1/messages",
            "/v1/messages",
            415,
            data=b"x",
            headers={**token, "Content-Type": "text/plain"},
        )
        one = "/v1/messages/{message_id}"
        await check("GET", one, f"/v1/messages/{first}", 200, headers=token)
        await check("GET", one, "/v1/messages/77", 404, headers=token)
        await check("GET", one, "/v1/messages/a", 400, headers=token)
        cancel = "/v1/messages/{message_id}/cancel"
        await check("POST", cancel, f"/v1/messages/{scheduled}/cancel", 200, headers=token)
        await check("POST", cancel, f"/v1/messages/{scheduled}/cancel", 409, headers=token)
        await check("GET", "/v1/messages", "/v1/messages?limit=1", 200, headers=token)
        await check("GET", "/v1/messages", "/v1/messages?state=x", 400, headers=token)
        await check("GET", "/v1/billing", "/v1/billing", 200, headers=token)
        await check("GET", "/v1/billing", "/v1/billing?format=csv", 200, headers=token)
        await check("GET", "/v1/billing", "/v1/billing?month=13", 400, headers=token)
        export = "/v1/messages/export"
        await check(
            "GET",
            export,
            export,
            200,
            params={"from": NOW.isoformat(), "to": later},
            headers=token,
        )
        optouts, one_optout = "/v1/optouts", "/v1/optouts/{number}"
        numbers = {"numbers": ["090-1111-2222", "+819011112223"]}
        await check("POST", optouts, optouts, 200, json=numbers, headers=token)
        await check("POST", optouts, optouts, 400, json={"numbers": ["050-1"]}, headers=token)
        await check("GET", optouts, "/v1/optouts?limit=1", 200, headers=token)
        await check("GET", optouts, "/v1/optouts?cursor=x", 400, headers=token)
        await check("GET", one_optout, "/v1/optouts/09011112222", 200, headers=token)
        await check("DELETE", one_optout, "/v1/optouts/09011112222", 200, headers=token)
        await check("DELETE", one_optout, "/v1/optouts/09011112222", 404, headers=token)
        await check("GET", one_optout, "/v1/optouts/x", 400, headers=token)
        await check("GET", "/v1/optouts/export", "/v1/optouts/export", 200, headers=token)
        csv_type = {**token, "Content-Type": "text/csv"}
        imports = "/v1/optouts/import"
        await check("POST", imports, imports, 200, data="09011113333\n", headers=csv_type)
        await check("POST", imports, imports, 400, data="msisdn\nabc\n", headers=csv_type)
        await check("GET", "/healthz", "/healthz", 200)
        await check("GET", "/readyz", "/readyz", 200)
        await check("GET", "/metrics", "/metrics", 200)
        await check("GET", "/v1/openapi.json", "/v1/openapi.json", 200)
        await check("POST", "/v1/webhooks/rcs", "/v1/webhooks/rcs", 401, data=b"{}")
        await check(
            "POST", "/v1/webhooks/rcs/{bot_id}", "/v1/webhooks/rcs/fuzz-bot", 401, data=b"{}"
        )
        await check("POST", "/v1/webhooks/rcs/{bot_id}", "/v1/webhooks/rcs/nobody", 404, data=b"{}")


# -- fuzzing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_api(pg_server_dsn: str) -> Iterator[str]:
    """The API on its own event loop in a thread: schemathesis calls it
    synchronously, from the test's thread."""
    name = f"carrierd_fuzz_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database_from_template(pg_server_dsn, name, TEMPLATE))
    dsn = with_database(pg_server_dsn, name)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stopped = asyncio.Event()
    started: asyncio.Future[str] = loop.create_future()

    async def run() -> None:
        db = await Database.open(dsn, min_size=1, max_size=4)
        try:
            async with serve(db, dsn) as base:
                started.set_result(base)
                await stopped.wait()
        finally:
            await db.close()

    running = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        yield asyncio.run_coroutine_threadsafe(asyncio.wait_for(started, 30), loop).result()
    finally:
        loop.call_soon_threadsafe(stopped.set)
        running.result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        asyncio.run(drop_database(pg_server_dsn, name))


def every_error_is_json(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    body = response.json()
    error = body["error"]
    assert error["code"] in ERROR_CODES, body
    assert isinstance(error["message"], str) and error["message"], body
    return None


SCHEMA = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/metrics")


@SCHEMA.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_the_api_from_its_document(case: Any, live_api: str) -> None:
    case.call_and_validate(
        base_url=live_api,
        headers=None if case.path.startswith("/v1/webhooks/rcs") else auth("acme-token"),
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            every_error_is_json,
        ],
    )
