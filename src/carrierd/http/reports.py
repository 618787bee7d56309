"""Reports for the accounts: billing counts and the delivery-log export.

- ``GET /v1/billing?month=YYYY-MM``: the account's billing counts for a
  JST month (DOMAIN §11), SMS units also per route (DOMAIN §6), as JSON, or
  CSV (a line per route) with ``format=csv`` or ``Accept: text/csv``.
- ``GET /v1/messages/export?from=...&to=...``: the account's delivery log
  (DOMAIN §15) for messages accepted in [from, to), as CSV streamed page by
  page, so a three-month export costs the daemon one page of memory
  (``ApiState.export_page_rows``). Retention, which bounds how far back an
  export can reach, is ops/retention.py.

Every route authenticates with the account's bearer token and reads only
that account's rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from carrierd.click_log import ClickLog, click_log
from carrierd.domain.billing import billing_month
from carrierd.domain.clock import JST
from carrierd.http.app import API_STATE, authenticate, json_error
from carrierd.store.db import Database, Row

log = structlog.get_logger("carrierd.http.reports")

EXPORT_MAX_SPAN = timedelta(days=93)

EXPORT_COLUMNS: tuple[str, ...] = (
    "id",
    "client_ref",
    "channel",
    "msisdn",
    "carrier",
    "route",
    "state",
    "reason_code",
    "reason_text",
    "accepted_at",
    "submitted_at",
    "final_at",
    "sms_parts",
    "sms_units",
    "rcs_units",
    # DOMAIN §12: per short link its first click and count (JSON, as in the
    # status view), and when a +Message was opened.
    "links",
    "opened_at",
)

# One line per route (DOMAIN §6): SMS units on the line of the route that
# carried them, +Message units and checks on the line whose route is "".
BILLING_COLUMNS: tuple[str, ...] = (
    "account",
    "month",
    "route",
    "sms_units",
    "rcs_units",
    "reassigned_checks",
)

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# A "+09:00" offset typed into a URL without encoding arrives as " 09:00".
_UNENCODED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


@dataclass(frozen=True)
class BillingCounts:
    sms_units: int
    rcs_units: int
    reassigned_checks: int
    # DOMAIN §6: the SMS units per route that carried them.
    sms_units_by_route: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # (route, sms_units, rcs_units, reassigned_checks) as stored.
    lines: tuple[tuple[str, int, int, int], ...] = ()


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a JST calendar month "YYYY-MM" as aware datetimes."""
    match = _MONTH.match(month)
    if match is None:
        raise ValueError(f"expected YYYY-MM, got {month!r}")
    year, month_no = int(match.group(1)), int(match.group(2))
    start = datetime(year, month_no, 1, tzinfo=JST)
    end = datetime(year + month_no // 12, month_no % 12 + 1, 1, tzinfo=JST)
    return start, end


async def billing_counts(db: Database, account_id: str, month: str) -> BillingCounts:
    lines = tuple(
        (
            str(row["route"]),
            int(row["sms_units"]),
            int(row["rcs_units"]),
            int(row["reassigned_checks"]),
        )
        for row in await db.fetch("billing_for_month", account_id, month)
    )
    return BillingCounts(
        sms_units=sum(line[1] for line in lines),
        rcs_units=sum(line[2] for line in lines),
        reassigned_checks=sum(line[3] for line in lines),
        sms_units_by_route={route: sms for route, sms, _, _ in lines if sms},
        lines=lines or (("", 0, 0, 0),),
    )


async def recompute_billing(db: Database, account_id: str, month: str) -> BillingCounts:
    """The month's SMS and +Message units rebuilt from the messages (audit:
    compare with `billing_counts`). Reassigned-number checks have no message
    rows and read 0 here."""
    start, end = month_bounds(month)
    row = await db.fetchrow("billing_recomputed_from_messages", account_id, start, end)
    assert row is not None
    return BillingCounts(
        sms_units=int(row["sms_units"]), rcs_units=int(row["rcs_units"]), reassigned_checks=0
    )


def _wants_csv(request: web.Request) -> bool:
    requested = request.query.get("format")
    if requested is not None:
        return requested == "csv"
    return "text/csv" in request.headers.get("Accept", "")


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(rows)
    return buffer.getvalue()


async def get_billing(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "reports")
    output_format = request.query.get("format")
    if output_format not in (None, "json", "csv"):
        return json_error(400, "format", "must be json or csv")
    month = request.query.get("month") or billing_month(state.clock.now())
    if _MONTH.match(month) is None:
        return json_error(400, "month", f"expected YYYY-MM (a JST calendar month), got {month!r}")
    counts = await billing_counts(state.db, account.account_id, month)
    if _wants_csv(request):
        text = _csv_text(
            [
                BILLING_COLUMNS,
                *((account.account_id, month, *line) for line in counts.lines),
            ]
        )
        return web.Response(
            text=text,
            content_type="text/csv",
            charset="utf-8",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="billing-{account.account_id}-{month}.csv"'
                )
            },
        )
    return web.json_response(
        {
            "account": account.account_id,
            "month": month,
            "sms_units": counts.sms_units,
            "sms_units_by_route": dict(counts.sms_units_by_route),
            "rcs_units": counts.rcs_units,
            "reassigned_checks": counts.reassigned_checks,
        }
    )


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time with its UTC offset ("Z" or "+09:00")."""
    candidates = [text]
    repaired = _UNENCODED_OFFSET.sub(r"+\1", text)
    if repaired != text:
        candidates.append(repaired)
    for candidate in candidates:
        try:
            at = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if at.tzinfo is not None and at.utcoffset() is not None:
            return at
        raise ValueError("needs a UTC offset, e.g. 2026-11-01T00:00:00+09:00")
    raise ValueError(f"not an ISO 8601 date-time: {text!r}")


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _export_line(row: Row, clicks: ClickLog) -> tuple[Any, ...]:
    view = clicks.view(row["id"])
    links = view["links"]
    return (
        row["id"],
        row["client_ref"] or "",
        row["channel"],
        row["msisdn"] or "",
        row["carrier"] or "",
        row["route"] or "",
        row["state"],
        row["reason_code"] or "",
        row["reason_text"] or "",
        _iso(row["accepted_at"]),
        _iso(row["submitted_at"]),
        _iso(row["final_at"]),
        "" if row["sms_parts"] is None else row["sms_parts"],
        row["sms_units"],
        row["rcs_units"],
        json.dumps(links, ensure_ascii=False, separators=(",", ":")) if links else "",
        view["opened_at"] or "",
    )


async def export_messages(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    account = authenticate(request, "reports")
    bounds: dict[str, datetime] = {}
    for field in ("from", "to"):
        text = request.query.get(field)
        if not text:
            return json_error(400, field, "required query parameter (ISO 8601 with offset)")
        try:
            bounds[field] = parse_instant(text)
        except ValueError as exc:
            return json_error(400, field, str(exc))
    start, end = bounds["from"], bounds["to"]
    if end <= start:
        return json_error(400, "to", "must be later than from")
    if end - start > EXPORT_MAX_SPAN:
        return json_error(400, "to", f"at most {EXPORT_MAX_SPAN.days} days after from")

    page_rows = state.export_page_rows

    async def next_page(last: Row | None) -> list[Row]:
        # The keyset starts just before `from`: (from, 0) precedes every id.
        after_at, after_id = (start, 0) if last is None else (last["accepted_at"], last["id"])
        return await state.db.fetch(
            "export_messages_page",
            account.account_id,
            start,
            end,
            after_at,
            after_id,
            page_rows,
        )

    response, exported = await export_csv(
        request, f"messages-{account.account_id}.csv", next_page, page_rows
    )
    log.info("messages_exported", account=account.account_id, rows=exported)
    return response


async def export_csv(
    request: web.Request,
    filename: str,
    next_page: Callable[[Row | None], Awaitable[list[Row]]],
    page_rows: int,
) -> tuple[web.StreamResponse, int]:
    """Stream the delivery-log CSV (EXPORT_COLUMNS) page by page:
    `next_page(last row of the page before, or None)` gives up to
    `page_rows` rows. Returns the response and the rows written."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(_csv_text([EXPORT_COLUMNS]).encode("utf-8"))
    exported = 0
    last: Row | None = None
    while True:
        page = await next_page(last)
        if page:
            clicks = await click_log(request.app[API_STATE].db, [row["id"] for row in page])
            lines = (_export_line(row, clicks) for row in page)
            await response.write(_csv_text(lines).encode("utf-8"))
            exported += len(page)
            last = page[-1]
        if len(page) < page_rows:
            break
    await response.write_eof()
    return response, exported
