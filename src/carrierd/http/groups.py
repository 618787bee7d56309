"""Subscriber groups (サブスクライブグループ, KMC §3.4.7).

An account whose +Message official account allows subscriptions
(`[accounts.X.rcs] subscriptions = true`) fetches the numbers subscribed to
it from the platform into a named group, and sends to the group like to a
recipient list (POST /v1/sends with `group_id`; at most 250,000 numbers).

- ``POST /v1/groups`` ``{"name": ...}``: fetch (or fetch again: the group
  of that name is replaced, in one transaction) and answer the group.
- ``GET /v1/groups``: the account's groups.
- ``GET /v1/groups/{id}/export``: its numbers as CSV (a `number` column:
  the file is a send's recipient CSV as it is).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog
from aiohttp import web

from carrierd.channels.rcs import RcsPlatformError
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.status import iso_instant
from carrierd.http.app import API_STATE, api_error, authenticate, json_error, require_json_body
from carrierd.http.messages import BodyError, parse_json_body
from carrierd.store.db import Row, Transaction

log = structlog.get_logger("carrierd.http.groups")

MAX_NAME_LEN = 100
# Numbers asked of the platform per page, and written per statement.
PAGE_SIZE = 10_000
_ASCII_DIGITS = frozenset("0123456789")


class SubscriberSource(Protocol):
    def subscriber_pages(self, account_id: str, page_size: int) -> AsyncIterator[tuple[str, ...]]:
        """The numbers subscribed to the account's official account, a page
        at a time; raises RcsPlatformError."""


def group_view(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "bot_id": row["bot_id"],
        "size": row["size"],
        "fetched_at": iso_instant(row["fetched_at"]),
    }


async def fetch_group(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "send")
    wrong_type = require_json_body(request)
    if wrong_type is not None:
        return wrong_type
    try:
        body = parse_json_body(await request.read())
    except BodyError as exc:
        return json_error(400, "body", str(exc))
    if not isinstance(body, dict):
        return json_error(400, "body", "expected a JSON object")
    for key in body:
        if key != "name":
            return json_error(400, key, "unknown field")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LEN or "\x00" in name:
        return json_error(400, "name", f"required: a string of 1 to {MAX_NAME_LEN} characters")
    rcs = account.rcs
    if rcs is None or not rcs.subscriptions:
        return api_error(
            403,
            "subscriptions_not_allowed",
            "this account's +Message official account does not allow subscriptions "
            "([accounts.<id>.rcs] subscriptions)",
        )
    if state.subscribers is None:
        return api_error(503, "not_configured", "+Message is not configured on this daemon")
    numbers: set[str] = set()
    refused = 0
    try:
        async for page in state.subscribers.subscriber_pages(account.account_id, PAGE_SIZE):
            for raw in page:
                try:
                    numbers.add(normalize_msisdn(raw, allow_m2m=account.allow_m2m))
                except NumberError:
                    refused += 1
    except RcsPlatformError as exc:
        if exc.reason == "not_allowed":
            return api_error(
                403,
                "subscriptions_not_allowed",
                f"the +Message platform says bot {rcs.bot_id!r} takes no subscriptions",
            )
        return api_error(
            502, "platform_error", f"the +Message platform did not list subscribers: {exc}"
        )
    ordered = sorted(numbers)
    now = state.clock.now()

    async def store(tx: Transaction) -> Row:
        group_id = await tx.fetchval("upsert_group", account.account_id, name, rcs.bot_id, now)
        await tx.execute("clear_group", group_id)
        for start in range(0, len(ordered), PAGE_SIZE):
            await tx.execute("add_group_members", group_id, ordered[start : start + PAGE_SIZE])
        row = await tx.fetchrow("finish_group", group_id, now)
        assert row is not None
        return row

    group = await state.db.in_transaction(store)
    log.info("group_fetched", account=account.account_id, group=name, size=group["size"])
    return web.json_response({**group_view(group), "numbers_refused": refused}, status=201)


async def list_groups(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    rows = await state.db.fetch("list_groups", account.account_id)
    return web.json_response({"groups": [group_view(r) for r in rows]})


async def export_group(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    account = authenticate(request, "reports")
    text = request.match_info["group_id"]
    if not text or len(text) > 18 or not set(text) <= _ASCII_DIGITS:
        return json_error(400, "group_id", "must be 1 to 18 digits 0-9")
    group = await state.db.fetchrow("get_group", int(text), account.account_id)
    if group is None:
        return json_error(404, None, "no such subscriber group")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="group-{group["id"]}.csv"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"number\r\n")
    after = ""
    while True:
        page = await state.db.fetch(
            "group_members_page", group["id"], account.account_id, after, PAGE_SIZE
        )
        if page:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\r\n").writerows([r["msisdn"]] for r in page)
            await response.write(buffer.getvalue().encode())
            after = page[-1]["msisdn"]
        if len(page) < PAGE_SIZE:
            break
    await response.write_eof()
    return response
