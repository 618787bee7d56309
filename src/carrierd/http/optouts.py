"""The account's opt-out list (DOMAIN §12), scope "optouts".

- ``POST /v1/optouts``: add ``{"number": N}`` or ``{"numbers": [...]}``, all
  or none: a number that is not a mobile number refuses the request, every
  such number named by its index, and adding past the account's cap
  (``optout_cap``) is ``409 optout_list_full``.
- ``GET /v1/optouts``: the list in the order numbers were added, a page at a
  time (``next_cursor``).
- ``GET /v1/optouts/{number}``: one number: when and how it was added.
- ``DELETE /v1/optouts/{number}``: take it off.
- ``GET /v1/optouts/export``: the list as CSV, streamed page by page.
- ``POST /v1/optouts/import``: a CSV of numbers (the export's shape, or a
  number per line), added with source ``csv``, all or none: every row that
  is wrong is named by its row number.

Numbers are taken in any spelling intake takes and shown canonical (+81).
Every add goes through optout_list.add_optouts.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from carrierd.config import AccountConfig
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.status import iso_instant
from carrierd.domain.storable import text_problem
from carrierd.http.app import API_STATE, api_error, authenticate, json_error, require_json_body
from carrierd.http.messages import BodyError, parse_json_body
from carrierd.optout_list import (
    CSV_COLUMNS,
    OptOut,
    OptOutCapExceeded,
    OptOutSource,
    add_optouts_now,
    find_optout,
    optouts_page,
    parse_optout_csv,
    remove_optout,
)

log = structlog.get_logger("carrierd.http.optouts")

MAX_ADD_NUMBERS = 10_000
PAGE_DEFAULT_LIMIT = 100
PAGE_MAX_LIMIT = 1000
# A refused request names at most this many of its wrong numbers or rows
# (and says how many there were).
MAX_LISTED_ERRORS = 100
# Longer than any spelling of a number: refused before it is parsed.
_MAX_NUMBER_LEN = 32
_ASCII_DIGITS = frozenset("0123456789")
_CSV_TYPES = ("text/csv", "text/plain", "application/csv")


def _entry(optout: OptOut) -> dict[str, Any]:
    return {
        "msisdn": optout.msisdn,
        "added_at": iso_instant(optout.added_at),
        "source": optout.source.value,
    }


def _number_problem(text: str, account: AccountConfig) -> tuple[str | None, str]:
    """(canonical number, "") or (None, why not)."""
    if len(text) > _MAX_NUMBER_LEN:
        return None, f"not_a_number: longer than {_MAX_NUMBER_LEN} characters"
    problem = text_problem(text)
    if problem is not None:
        return None, problem
    try:
        return normalize_msisdn(text, allow_m2m=account.allow_m2m), ""
    except NumberError as exc:
        return None, f"{exc.reason}: {exc.message}"


def _list_full(exc: OptOutCapExceeded) -> web.Response:
    return api_error(
        409,
        "optout_list_full",
        str(exc),
        extra={"cap": exc.cap, "listed": exc.listed, "adding": exc.adding},
    )


def _added(result_added: int, already: int) -> web.Response:
    return web.json_response({"added": result_added, "already_listed": already})


async def add_numbers(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    wrong_type = require_json_body(request)
    if wrong_type is not None:
        return wrong_type
    try:
        body = parse_json_body(await request.read())
    except BodyError as exc:
        return api_error(400, "malformed_body", str(exc), "body")
    if not isinstance(body, dict):
        return json_error(400, "body", "expected a JSON object")
    for key in body:
        if key not in ("number", "numbers"):
            return json_error(400, key, "unknown field (number or numbers)")
    if ("number" in body) == ("numbers" in body):
        return json_error(400, "numbers", "give either number or numbers")
    if "number" in body:
        if not isinstance(body["number"], str):
            return json_error(400, "number", "expected a string")
        texts, fields = [body["number"]], ["number"]
    else:
        texts = body["numbers"]
        if not isinstance(texts, list) or not texts:
            return json_error(400, "numbers", "expected a non-empty array of strings")
        if len(texts) > MAX_ADD_NUMBERS:
            return json_error(
                400, "numbers", f"at most {MAX_ADD_NUMBERS} per request, got {len(texts)}"
            )
        fields = [f"numbers[{i}]" for i in range(len(texts))]
    numbers: list[str] = []
    rejected: list[dict[str, Any]] = []
    for index, (text, field) in enumerate(zip(texts, fields, strict=True)):
        if not isinstance(text, str):
            rejected.append({"index": index, "field": field, "reason": "expected a string"})
            continue
        msisdn, why = _number_problem(text, account)
        if msisdn is None:
            rejected.append({"index": index, "field": field, "reason": why})
        else:
            numbers.append(msisdn)
    if rejected:
        first = rejected[0]
        return api_error(
            400,
            "invalid_field",
            f"{len(rejected)} number(s) refused, none added; {first['field']}: {first['reason']}",
            first["field"],
            extra={"rejected": rejected[:MAX_LISTED_ERRORS], "rejected_count": len(rejected)},
        )
    try:
        result = await add_optouts_now(
            state.db,
            account.account_id,
            numbers,
            OptOutSource.API,
            state.clock.now(),
            cap=account.optout_cap,
        )
    except OptOutCapExceeded as exc:
        return _list_full(exc)
    log.info("optouts_added", account=account.account_id, added=result.added)
    return _added(result.added, result.already_listed)


def _path_number(request: web.Request, account: AccountConfig) -> str | web.Response:
    msisdn, why = _number_problem(request.match_info["number"], account)
    if msisdn is None:
        return json_error(400, "number", why)
    return msisdn


async def get_number(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    msisdn = _path_number(request, account)
    if isinstance(msisdn, web.Response):
        return msisdn
    optout = await find_optout(state.db, account.account_id, msisdn)
    if optout is None:
        return json_error(404, None, f"{msisdn} is not on the opt-out list")
    return web.json_response(_entry(optout))


async def delete_number(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    msisdn = _path_number(request, account)
    if isinstance(msisdn, web.Response):
        return msisdn
    if not await remove_optout(state.db, account.account_id, msisdn):
        return json_error(404, None, f"{msisdn} is not on the opt-out list")
    log.info("optout_removed", account=account.account_id)
    return web.json_response({"msisdn": msisdn, "removed": True})


def encode_cursor(added_at: datetime, msisdn: str) -> str:
    """An opaque cursor: the (added_at, msisdn) key of the last entry shown."""
    micros = round(added_at.timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}.{msisdn}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    bad = ValueError("not a cursor this API gave")
    if len(text) > 64:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    micros_text, _, msisdn = raw.partition(".")
    if not micros_text or len(micros_text) > 18 or not set(micros_text) <= _ASCII_DIGITS:
        raise bad
    if not msisdn.startswith("+") or not set(msisdn[1:]) <= _ASCII_DIGITS or len(msisdn) > 16:
        raise bad
    try:
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros_text))
    except OverflowError:
        raise bad from None
    return at, msisdn


async def list_numbers(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    for key in request.query:
        if key not in ("limit", "cursor"):
            return json_error(400, key, "unknown query parameter (limit or cursor)")
    limit = PAGE_DEFAULT_LIMIT
    if "limit" in request.query:
        text = request.query["limit"]
        if not text or len(text) > 4 or not set(text) <= _ASCII_DIGITS:
            return json_error(400, "limit", f"must be 1 to {PAGE_MAX_LIMIT}")
        limit = int(text)
        if not 1 <= limit <= PAGE_MAX_LIMIT:
            return json_error(400, "limit", f"must be 1 to {PAGE_MAX_LIMIT}")
    after = None
    if "cursor" in request.query:
        try:
            after = decode_cursor(request.query["cursor"])
        except ValueError as exc:
            return json_error(400, "cursor", str(exc))
    rows = await optouts_page(state.db, account.account_id, after, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].added_at, page[-1].msisdn) if len(rows) > limit else None
    return web.json_response({"optouts": [_entry(o) for o in page], "next_cursor": next_cursor})


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def export_numbers(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="optouts-{account.account_id}.csv"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(_csv_text([CSV_COLUMNS]).encode("utf-8"))
    after: tuple[datetime, str] | None = None
    exported = 0
    while True:
        page = await optouts_page(state.db, account.account_id, after, state.export_page_rows)
        if page:
            lines = ((o.msisdn, iso_instant(o.added_at), o.source.value) for o in page)
            await response.write(_csv_text(lines).encode("utf-8"))
            exported += len(page)
            after = (page[-1].added_at, page[-1].msisdn)
        if len(page) < state.export_page_rows:
            break
    await response.write_eof()
    log.info("optouts_exported", account=account.account_id, rows=exported)
    return response


async def import_numbers(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "optouts")
    if "Content-Type" in request.headers and request.content_type not in _CSV_TYPES:
        return api_error(
            415,
            "unsupported_media_type",
            f"expected text/csv, got {request.content_type}",
            "Content-Type",
        )
    try:
        text = (await request.read()).decode("utf-8")
    except UnicodeDecodeError as exc:
        return api_error(400, "malformed_body", f"not UTF-8: {exc}", "body")
    numbers, errors = parse_optout_csv(text, allow_m2m=account.allow_m2m)
    if errors:
        first = errors[0]
        return api_error(
            400,
            "invalid_field",
            f"{len(errors)} row(s) refused, none added; row {first.row}: {first.reason}",
            "body",
            extra={
                "rejected": [{"row": e.row, "reason": e.reason} for e in errors][
                    :MAX_LISTED_ERRORS
                ],
                "rejected_count": len(errors),
            },
        )
    if not numbers:
        return json_error(400, "body", "no numbers: one a row, in the first column")
    try:
        result = await add_optouts_now(
            state.db,
            account.account_id,
            numbers,
            OptOutSource.CSV,
            state.clock.now(),
            cap=account.optout_cap,
        )
    except OptOutCapExceeded as exc:
        return _list_full(exc)
    log.info("optouts_imported", account=account.account_id, added=result.added)
    return _added(result.added, result.already_listed)
