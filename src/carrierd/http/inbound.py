"""``GET /v1/inbound``: the account's replies (SMS MO, +Message replies and
taps), newest first (by received_at, then id), as stored by engine/inbound.py.

Filters: `since` / `until` (ISO 8601 with offset, on received_at, `until`
exclusive), `from` (the replying number, national or E.164), `answers`
(the id of the message a reply answers), `send` (the send it answers, once
sends exist), `limit` (1-500, 50). `next_cursor` (null on the last page) is
passed as `cursor`; pages are keyed on (received_at, id), so replies that
come while a client pages never shift or repeat a page.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from carrierd.domain.inbound import inbound_document
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.storable import text_problem
from carrierd.http.app import API_STATE, authenticate, json_error
from carrierd.http.messages import (
    SEARCH_DEFAULT_LIMIT,
    SEARCH_MAX_LIMIT,
    _instant_param,
    _parse_id,
    decode_cursor,
    encode_cursor,
)

_PARAMS = frozenset({"since", "until", "from", "answers", "send", "limit", "cursor"})


class _BadParam(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _filters(request: web.Request) -> dict[str, Any]:
    query = request.query
    for key in query:
        if key not in _PARAMS:
            raise _BadParam(key, f"unknown query parameter (one of {', '.join(sorted(_PARAMS))})")
        if len(query.getall(key)) > 1:
            raise _BadParam(key, "given more than once")
        problem = text_problem(query[key])
        if problem is not None:
            raise _BadParam(key, problem)
    msisdn = None
    if "from" in query:
        try:
            msisdn = normalize_msisdn(query["from"], allow_m2m=True)
        except NumberError as exc:
            raise _BadParam("from", f"{exc.reason}: {exc.message}") from None
    ids: dict[str, int | None] = {}
    for key in ("answers", "send"):
        ids[key] = None
        if key in query:
            ids[key] = _parse_id(query[key])
            if ids[key] is None:
                raise _BadParam(key, "must be 1 to 18 digits 0-9")
    limit = SEARCH_DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"]
        limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0
        if not 1 <= limit <= SEARCH_MAX_LIMIT:
            raise _BadParam("limit", f"must be 1 to {SEARCH_MAX_LIMIT}")
    after_at = after_id = None
    if "cursor" in query:
        try:
            after_at, after_id = decode_cursor(query["cursor"])
        except ValueError as exc:
            raise _BadParam("cursor", str(exc)) from None
    try:
        since = _instant_param("since", query["since"]) if "since" in query else None
        until = _instant_param("until", query["until"]) if "until" in query else None
    except ValueError as exc:
        field = getattr(exc, "field", "since")
        raise _BadParam(field, getattr(exc, "reason", str(exc))) from None
    return {
        "since": since,
        "until": until,
        "msisdn": msisdn,
        "answers": ids["answers"],
        "send": ids["send"],
        "limit": limit,
        "after_at": after_at,
        "after_id": after_id,
    }


async def find_inbound(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    try:
        f = _filters(request)
    except _BadParam as exc:
        return json_error(400, exc.field, exc.reason)
    rows = await state.db.fetch(
        "inbound_search",
        account.account_id,
        f["since"],
        f["until"],
        f["msisdn"],
        f["answers"],
        f["send"],
        f["limit"] + 1,
        f["after_at"],
        f["after_id"],
    )
    page = rows[: f["limit"]]
    next_cursor = (
        encode_cursor(page[-1]["received_at"], page[-1]["id"]) if len(rows) > f["limit"] else None
    )
    return web.json_response(
        {"inbound": [inbound_document(r) for r in page], "next_cursor": next_cursor}
    )
