"""STAND-IN, to be replaced once the API's search and cancel are merged:
`carrierd messages` (search with filters, cursor pages) and `carrierd
cancel`, and the one error shape, against a small aiohttp server that
follows the contract of issue #14 (GET /v1/messages with state, to,
since/until, client_ref, channel, carrier, limit and cursor, answering
{"messages": [...], "next_cursor": ...}; POST /v1/messages/{id}/cancel;
errors as {"error": {"code", "message", "field"}}), because the daemon on
main has neither route yet. The commands that exist on main are tested
against the real daemon in tests/e2e/test_client_cli.py; these should move
there, against the real routes, when both are in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from carrierd.domain.clock import JST
from tests.clirun import Ran, in_process

TOKEN = "contract-token"


def message(message_id: int, state: str = "queued") -> dict[str, Any]:
    return {
        "id": str(message_id),
        "client_ref": f"ref-{message_id}",
        "channel": "sms",
        "leg": "sms",
        "state": state,
        "reason": None,
        "to": "+819012345678",
        "carrier": "docomo",
        "carriers_wrong": [],
        "parts": 1,
        "attempt": 1,
        "billing": {"sms_units": 0, "rcs_units": 0},
        "timestamps": {"accepted_at": "2026-11-22T03:00:00+00:00", "final_at": None},
    }


def error(status: int, code: str, text: str, field_name: str | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"error": {"code": code, "message": text}, **extra}
    if field_name is not None:
        body["error"]["field"] = field_name
    return web.json_response(body, status=status)


@dataclass
class ContractApi:
    """The contract's routes over ten messages, ids 10 down to 1 (newest first)."""

    queries: list[dict[str, list[str]]] = field(default_factory=list)

    async def search(self, request: web.Request) -> web.Response:
        query = {key: request.query.getall(key) for key in request.query}
        self.queries.append(query)
        for name in ("since", "until"):
            for text in query.get(name, []):
                try:
                    at = datetime.fromisoformat(text)
                except ValueError:
                    return error(400, "invalid_field", "not ISO 8601", name)
                if at.tzinfo is None:
                    return error(400, "invalid_field", "needs a UTC offset", name)
        if "bogus" in query.get("state", []):
            return error(400, "invalid_field", "unknown state 'bogus'", "state")
        limit = int(query.get("limit", ["50"])[0])
        after = int(query["cursor"][0]) if "cursor" in query else 11
        ids = [i for i in range(10, 0, -1) if i < after][:limit]
        more = bool(ids) and ids[-1] > 1
        return web.json_response(
            {
                "messages": [message(i) for i in ids],
                "next_cursor": str(ids[-1]) if more else None,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        message_id = int(request.match_info["message_id"])
        if message_id == 5:
            return web.json_response(message(5, "cancelled"))
        if message_id == 6:
            return error(
                409,
                "not_cancellable",
                "cannot cancel a message in state submitted: already handed to the SMSC",
                state="submitted",
            )
        return error(404, "not_found", "no such message")

    def app(self) -> web.Application:
        @web.middleware
        async def bearer(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return error(401, "unknown_token", "unknown token")
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[bearer])
        app.add_routes(
            [
                web.get("/v1/messages", self.search),
                web.post("/v1/messages/{message_id}/cancel", self.cancel),
            ]
        )
        return app


@dataclass
class Served:
    api: ContractApi
    env: dict[str, str]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    api = ContractApi()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(api, {"CARRIERD_URL": f"http://127.0.0.1:{port}", "CARRIERD_TOKEN": TOKEN})
    finally:
        await runner.cleanup()


@pytest.fixture
def cli(served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    async def run(*argv: str) -> Ran:
        return await in_process(capsys, monkeypatch, *argv, env=served.env)

    return run


async def test_messages_sends_every_filter_as_the_contract_names_it(
    served: Served, cli: Any
) -> None:
    before = datetime.now(JST)
    ran = await cli(
        "messages",
        "--state",
        "queued",
        "--state",
        "delivered,failed",
        "--to",
        "090-1234-5678",
        "--since",
        "2026-11-22",
        "--until",
        "2h",
        "--client-ref",
        "ref-1",
        "--channel",
        "sms",
        "--carrier",
        "docomo",
        "--limit",
        "20",
    )
    assert ran.code == 0, ran.err
    (query,) = served.api.queries
    assert query["state"] == ["queued", "delivered", "failed"]
    assert query["to"] == ["090-1234-5678"]
    # A date is its JST midnight; a time ago is from now; both with an offset,
    # which survives the query string.
    assert query["since"] == ["2026-11-22T00:00:00+09:00"]
    until = datetime.fromisoformat(query["until"][0])
    assert before - timedelta(hours=2, seconds=5) <= until <= datetime.now(JST) - timedelta(hours=2)
    assert (query["client_ref"], query["channel"], query["carrier"]) == (
        ["ref-1"],
        ["sms"],
        ["docomo"],
    )
    assert query["limit"] == ["20"]


async def test_messages_shows_one_page_and_the_next_cursor(served: Served, cli: Any) -> None:
    ran = await cli("messages", "--limit", "4")
    lines = ran.out.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["10", "9", "8", "7"]
    assert lines[5] == "more: --cursor 7 (or --all)"
    ran = await cli("messages", "--limit", "4", "--cursor", "7", "--json")
    assert served.api.queries[-1]["cursor"] == ["7"]
    page = json.loads(ran.out)
    assert [m["id"] for m in page["messages"]] == ["6", "5", "4", "3"]
    assert page["next_cursor"] == "3"


async def test_messages_all_follows_every_cursor(served: Served, cli: Any) -> None:
    ran = await cli("messages", "--all", "--limit", "3")
    assert ran.code == 0, ran.err
    rows = ran.out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [str(i) for i in range(10, 0, -1)]
    assert [q.get("cursor") for q in served.api.queries] == [None, ["8"], ["5"], ["2"]]
    assert "12:00:00+09:00" in rows[0]  # accepted 03:00 UTC, shown in JST


async def test_cancel_prints_the_new_state(cli: Any) -> None:
    ran = await cli("cancel", "5")
    assert (ran.code, ran.out) == (0, "message 5: cancelled\n")


async def test_a_refused_cancel_names_the_code_and_the_state(cli: Any) -> None:
    ran = await cli("cancel", "6")
    assert ran.code == 1
    assert ran.err.splitlines() == [
        "carrierd cancel: 409 not_cancellable: cannot cancel a message in state submitted:"
        " already handed to the SMSC",
        "  the message is submitted",
    ]
    missing = await cli("cancel", "99")
    assert missing.err == "carrierd cancel: 404 not_found: no such message\n"


async def test_an_error_names_its_field(cli: Any) -> None:
    ran = await cli("messages", "--state", "bogus")
    assert ran.code == 1
    assert ran.err == "carrierd messages: 400 invalid_field: unknown state 'bogus' (field state)\n"
    usage = await cli("messages", "--since", "yesterday")
    assert usage.code == 2
    assert "expected an ISO 8601 date-time" in usage.err
