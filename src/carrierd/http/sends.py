"""Sends (案件, DOMAIN §14): register, read, export and cancel.

- ``POST /v1/sends``: a send (sends.py validates it) with its recipients in
  the JSON body (``recipients``: ``[{"to": ..., "variables": {...}}]``) or
  as a CSV upload (``multipart/form-data``: a part ``send`` with the JSON
  send, then a part ``recipients`` with the CSV: the number first, then a
  column per variable, named by the header line), or a subscriber group
  (``group_id``). Up to 100,000 recipients in one request. The CSV is read
  as it arrives, a batch of recipients at a time, each batch validated and
  stored in a transaction of its own (bounded, whatever the size of the
  send); JSON is decoded once and handed over in the same batches.
- ``GET /v1/sends/{id}``: counts by state, billing units, clicks and
  replies, and the messages a page at a time; ``GET /v1/sends``: the
  account's sends, newest first; ``GET /v1/sends/{id}/export``: the
  delivery-log CSV of its messages (http/reports.py's columns).
- ``POST /v1/sends/{id}/cancel``: every message of the send not yet gone
  is cancelled by the one rule of domain/cancel.py (+Message revoked
  first).

Idempotency: a send's ``client_ref`` names it. A POST repeated with the
same reference and the same send (recipients aside) answers the send
registered the first time; one that died while reading its recipients is
resumed where its last committed batch ended, so the recipients must be
the same ones. Other content under the reference is a 409.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import csv
import io
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from carrierd.config import AccountConfig
from carrierd.domain.inbound import inbound_document
from carrierd.domain.replies import reply_rules_of
from carrierd.domain.states import State
from carrierd.domain.status import iso_instant, status_document
from carrierd.domain.variables import TemplateError
from carrierd.http.app import (
    API_STATE,
    ApiError,
    ApiState,
    api_error,
    authenticate,
    error_body,
    json_error,
)
from carrierd.http.limits import streams_multipart
from carrierd.http.messages import BodyError, parse_json_body
from carrierd.http.reports import export_csv
from carrierd.intake import LinkMinting, RequestShapeError, ScheduleLimits, field_label
from carrierd.send_replies import check_auto_reply
from carrierd.sends import (
    MAX_GROUP_RECIPIENTS,
    MAX_RECIPIENTS,
    Recipient,
    RecipientRows,
    RowRejection,
    SendSpec,
    parse_send_spec,
    recipient_rows,
    variables_of,
)
from carrierd.store.db import Row, Transaction

log = structlog.get_logger("carrierd.http.sends")

# Recipients validated and stored per transaction.
BATCH_RECIPIENTS = 5000
# The JSON part of a CSV upload is the send alone: small.
MAX_SPEC_BYTES = 1024 * 1024
CSV_CHUNK_BYTES = 256 * 1024
# Rejections listed in an answer; all are counted (and kept).
MAX_REJECTIONS_SHOWN = 1000
PAGE_DEFAULT = 100
PAGE_MAX = 1000
_ASCII_DIGITS = frozenset("0123456789")


class _SendConflict(Exception):
    def __init__(self, send_id: int) -> None:
        self.send_id = send_id


# -- reading recipients -------------------------------------------------------------


def json_recipients(raw: object) -> Iterator[Recipient]:
    """The recipients of a JSON send: row = index in the array."""
    if not isinstance(raw, list):
        raise RequestShapeError("recipients", "expected an array of recipients")
    for index, item in enumerate(raw):
        yield _json_recipient(index, item)


def _json_recipient(index: int, item: object) -> Recipient:
    def bad(field: str, reason: str) -> Recipient:
        return Recipient(index, index, "", {}, RowRejection(index, field, reason))

    if isinstance(item, str):
        return Recipient(index, index, item, {})
    if not isinstance(item, dict):
        return bad("recipients", "expected an object with `to`, or a number as a string")
    unknown = set(item) - {"to", "variables"}
    if unknown:
        return bad(sorted(unknown)[0], "unknown field")
    to = item.get("to")
    if not isinstance(to, str) or not to:
        return bad("to", "required: the recipient's number as a string")
    values = variables_of(item.get("variables"), index)
    if isinstance(values, RowRejection):
        return Recipient(index, index, to, {}, values)
    return Recipient(index, index, to, values)


class CsvRecords:
    """Bytes in, whole CSV records out, however the chunks cut them: a
    quoted field may hold line breaks, so a chunk is cut only at a line
    break outside quotes."""

    def __init__(self, charset: str = "utf-8") -> None:
        # utf-8-sig: a byte order mark (what spreadsheets write) is dropped.
        name = "utf-8-sig" if codecs.lookup(charset).name == "utf-8" else charset
        self._decoder = codecs.getincrementaldecoder(name)()
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> list[list[str]]:
        text = self._pending + self._decoder.decode(data, final)
        cut = len(text) if final else _last_record_end(text)
        complete, self._pending = text[:cut], text[cut:]
        return list(csv.reader(io.StringIO(complete, newline="")))


_QUOTE_OR_NEWLINE = re.compile(r'["\n]')


def _last_record_end(text: str) -> int:
    inside = False
    end = 0
    for match in _QUOTE_OR_NEWLINE.finditer(text):
        if match.group(0) == '"':
            inside = not inside
        elif not inside:
            end = match.end()
    return end


@dataclass
class CsvHeader:
    variables: tuple[str, ...] = ()


async def csv_recipients(
    part: BodyPartReader, spec: SendSpec, header: CsvHeader, chunk_timeout_s: float
) -> AsyncIterator[Recipient]:
    """The recipients of an uploaded CSV, read as it arrives: row = record
    number (the header is 1). Raises RequestShapeError for a header that
    does not name the variables the content uses."""
    charset = part.get_charset("utf-8")
    try:
        records = CsvRecords(charset)
    except LookupError:
        raise RequestShapeError("recipients", f"unknown charset {charset!r}") from None
    row = 0
    ordinal = 0
    done = False
    while not done:
        chunk = await _read_chunk(part, chunk_timeout_s)
        done = not chunk
        try:
            parsed = records.feed(chunk, final=done)
        except UnicodeDecodeError as exc:
            raise RequestShapeError(
                "recipients", f"not {charset} text near byte {exc.start}: {exc.reason}"
            ) from None
        except csv.Error as exc:
            raise RequestShapeError("recipients", f"malformed CSV: {exc}") from None
        for record in parsed:
            row += 1
            if row == 1:
                header.variables = _check_header(record, spec)
                continue
            if not record or record == [""]:
                continue
            problem = None
            if len(record) > len(header.variables) + 1:
                problem = RowRejection(
                    row,
                    "recipients",
                    f"{len(record)} columns, the header has {len(header.variables) + 1}",
                )
            values = dict(zip(header.variables, record[1:], strict=False))
            yield Recipient(ordinal, row, record[0].strip(), values, problem)
            ordinal += 1


async def _read_chunk(part: BodyPartReader, timeout_s: float) -> bytes:
    """The next chunk of an upload; a client that sends nothing for
    `timeout_s` (http.body_timeout_s) is answered 408."""
    try:
        async with asyncio.timeout(timeout_s):
            return await part.read_chunk(CSV_CHUNK_BYTES)
    except (ValueError, HttpProcessingError) as exc:
        raise RequestShapeError("body", f"malformed multipart body: {exc}") from None
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"no part of the upload came within {timeout_s:g} s", "body"
        ) from None


def _check_header(record: list[str], spec: SendSpec) -> tuple[str, ...]:
    if not record:
        raise RequestShapeError("recipients", "the first line must be the header")
    names = tuple(name.strip() for name in record[1:])
    if len(set(names)) != len(names):
        raise RequestShapeError("recipients", "the header names a column twice")
    missing = sorted(spec.variables - set(names))
    if missing:
        raise RequestShapeError(
            "recipients",
            f"the content uses variable {missing[0]!r}, which is not a column of the CSV "
            f"(columns after the number: {', '.join(names) or 'none'})",
        )
    return names


async def group_recipients(
    state: ApiState, account_id: str, group_id: int
) -> AsyncIterator[Recipient]:
    ordinal = 0
    after = ""
    while True:
        page = await state.db.fetch(
            "group_members_page", group_id, account_id, after, BATCH_RECIPIENTS
        )
        for member in page:
            yield Recipient(ordinal, ordinal, member["msisdn"], {})
            ordinal += 1
        if len(page) < BATCH_RECIPIENTS:
            return
        after = page[-1]["msisdn"]


# -- registering --------------------------------------------------------------------


@dataclass
class Registration:
    send_id: int
    resume_from: int
    accepted: int = 0
    rejected: int = 0
    read: int = 0
    cancelled: bool = False


class Registrar:
    """Validates recipients a batch at a time and stores each batch in one
    transaction with the send's progress (rows_done)."""

    def __init__(
        self,
        state: ApiState,
        account: AccountConfig,
        spec: SendSpec,
        registration: Registration,
        now: datetime,
    ) -> None:
        self._state = state
        self._account = account
        self._spec = spec
        self.registration = registration
        self._now = now
        http = state.config.http
        self._expiry_s = state.config.engine.message_expiry_s
        self._schedule = ScheduleLimits(
            max_ahead=timedelta(days=http.send_at_max_ahead_days),
            past_skew=timedelta(seconds=http.send_at_past_skew_s),
        )

    async def register(self, recipients: AsyncIterator[Recipient]) -> None:
        batch: list[Recipient] = []
        async for entry in recipients:
            if entry.ordinal >= MAX_RECIPIENTS:
                too_many = RowRejection(
                    entry.row,
                    "recipients",
                    f"more than {MAX_RECIPIENTS} recipients: this row and those after it "
                    "were not read",
                )
                batch.append(Recipient(entry.ordinal, entry.row, "", {}, too_many))
                break
            batch.append(entry)
            if len(batch) >= BATCH_RECIPIENTS:
                if not await self._store(batch):
                    return
                batch = []
        if batch:
            await self._store(batch)

    async def _store(self, batch: list[Recipient]) -> bool:
        """Validate and store a batch; False once the send is cancelled."""
        reg = self.registration
        rows: list[RecipientRows] = []
        rejections: list[tuple[int, RowRejection]] = []
        for entry in batch:
            if entry.ordinal < reg.resume_from:
                continue
            result = recipient_rows(
                self._spec,
                entry,
                self._account,
                self._now,
                expiry_s=self._expiry_s,
                schedule=self._schedule,
                reassign_enabled=self._state.config.reassign.enabled,
                minting=LinkMinting.from_config(self._state.config.links),
            )
            if isinstance(result, RowRejection):
                rejections.append((entry.ordinal, result))
            else:
                rows.append(result)
        rows_done = batch[-1].ordinal + 1

        async def work(tx: Transaction) -> tuple[int, int] | None:
            lock = await tx.fetchrow("lock_send", reg.send_id)
            assert lock is not None
            if lock["state"] == "cancelled":
                return None
            # Another POST of the same send may have stored some of these.
            done_before = lock["rows_done"]
            todo = [r for r in rows if r.message["send_row"] >= done_before]
            fresh = [r for ordinal, r in rejections if ordinal >= done_before]
            first, last = await _insert_rows(
                tx, self._account.account_id, reg.send_id, todo, self._now
            )
            if fresh:
                await tx.execute(
                    "insert_send_rejections",
                    reg.send_id,
                    [r.row for r in fresh],
                    [r.field for r in fresh],
                    [r.reason for r in fresh],
                )
            await tx.execute(
                "record_send_batch",
                reg.send_id,
                max(rows_done, done_before),
                len(todo),
                len(fresh),
                first,
                last,
            )
            return len(todo), len(fresh)

        stored = await self._state.db.in_transaction(work)
        reg.read = rows_done
        if stored is None:
            reg.cancelled = True
            return False
        reg.accepted += stored[0]
        reg.rejected += stored[1]
        metrics = self._state.metrics
        if metrics is not None:
            # One update per label set, as intake does.
            account_id = self._account.account_id
            if stored[0]:
                metrics.messages_accepted_total.labels(account_id, self._spec.channel).inc(
                    stored[0]
                )
            for name, count in Counter(field_label(r.field) for _, r in rejections).items():
                metrics.messages_rejected_total.labels(name).inc(count)
        # Let other requests in between two batches of a large send.
        await asyncio.sleep(0)
        return True


_MESSAGE_COLUMNS = (
    "channel",
    "state",
    "recipient_raw",
    "msisdn",
    "sms_text",
    "sms_encoding",
    "sms_parts",
    "rcs_content",
    "carrier_named",
    "carriers_allowed",
    "callback_url",
    "callback_every_change",
    "send_at",
    "not_before",
    "expires_at",
    "send_row",
    # The recipient gates (intake: DOMAIN §12, §13).
    "skip_opted_out",
    "optout_check_at",
    "reassign_base_date",
)


async def _insert_rows(
    tx: Transaction, account_id: str, send_id: int, rows: list[RecipientRows], now: datetime
) -> tuple[int | None, int | None]:
    """Insert a batch's messages and follow-ups; the lowest and highest id."""
    if not rows:
        return None, None
    follow_ups = [r for r in rows if r.follow_up is not None]
    count = len(rows) + len(follow_ups)
    ids = [r["id"] for r in await tx.fetch("reserve_message_ids", count)]
    ids.sort()
    # Follow-ups take the higher ids: every writer locks a first message
    # before its follow-up.
    message_ids = ids[: len(rows)]
    follow_ids = iter(ids[len(rows) :])
    all_rows: list[dict[str, Any]] = []
    after: list[int | None] = []
    for row in rows:
        all_rows.append(row.message)
        after.append(None)
    row_ids = list(message_ids)
    for row, message_id in zip(rows, message_ids, strict=True):
        if row.follow_up is None:
            continue
        # Waiting for its first message (domain/follow_up.py): no time yet,
        # and an end should the first never settle: the first's validity,
        # then its own.
        validity = row.follow_up["expires_at"] - row.follow_up["not_before"]
        waiting = {
            **row.follow_up,
            "state": State.SCHEDULED.value,
            "not_before": None,
            "expires_at": row.message["expires_at"] + validity,
            "send_at": None,
        }
        all_rows.append(waiting)
        after.append(message_id)
        row_ids.append(next(follow_ids))
    columns: dict[str, list[Any]] = {c: [r.get(c) for r in all_rows] for c in _MESSAGE_COLUMNS}
    columns["rcs_content"] = [None if c is None else _json_text(c) for c in columns["rcs_content"]]
    columns["carriers_allowed"] = [
        None if c is None else ",".join(c) for c in columns["carriers_allowed"]
    ]
    await tx.execute(
        "insert_send_messages",
        account_id,
        row_ids,
        *columns.values(),
        after,
        now,
        send_id,
    )
    # DOMAIN §12: the links minted for each recipient, with its message.
    await tx.insert_links(account_id, all_rows, row_ids, now)
    own = [(i, r.auto_replies) for i, r in zip(message_ids, rows, strict=True) if r.auto_replies]
    if own:
        await tx.execute(
            "insert_send_auto_replies", [i for i, _ in own], [_json_text(c) for _, c in own]
        )
    return ids[0], ids[-1]


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- handlers -----------------------------------------------------------------------


async def _read_capped(part: BodyPartReader, limit: int, field: str, timeout_s: float) -> bytes:
    data = bytearray()
    while chunk := await _read_chunk(part, timeout_s):
        data += chunk
        if len(data) > limit:
            raise RequestShapeError(field, f"larger than {limit} bytes")
    return bytes(data)


@streams_multipart
async def post_send(request: web.Request) -> web.Response:
    try:
        return await _post_send(request)
    finally:
        # An answer given before the CSV was read (a retry of a registered
        # send, a conflict, a bad header): the rest of the body is read and
        # dropped, so the connection can carry the next request.
        await request.release()


async def _post_send(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "send")
    now = state.clock.now()
    mime = request.content_type if "Content-Type" in request.headers else "application/json"
    csv_part: BodyPartReader | None = None
    try:
        if mime == "multipart/form-data":
            try:
                reader = await request.multipart()
            except ValueError as exc:
                raise BodyError(f"malformed multipart body: {exc}") from None
            body, csv_part = await _read_upload(reader, state.config.http.body_timeout_s)
        elif mime == "application/json" or mime.endswith("+json"):
            body = parse_json_body(await request.read())
        else:
            return api_error(
                415,
                "unsupported_media_type",
                f"expected application/json or multipart/form-data, got {mime}",
                "Content-Type",
            )
        spec = parse_send_spec(body)
        check_auto_reply(spec.replies, account, now, state.config.engine.message_expiry_s)
    except BodyError as exc:
        return json_error(400, "body", str(exc))
    except (RequestShapeError, TemplateError) as exc:
        return json_error(400, exc.field, exc.reason)
    assert isinstance(body, dict)

    source: AsyncIterator[Recipient]
    if spec.group_id is not None:
        if csv_part is not None:
            return json_error(400, "recipients", "a send takes recipients or a group_id, not both")
        if spec.variables:
            return json_error(
                400,
                "group_id",
                f"the content uses variable {sorted(spec.variables)[0]!r}; "
                "a subscriber group's numbers have no variables",
            )
        group = await state.db.fetchrow("get_group", spec.group_id, account.account_id)
        if group is None:
            return json_error(404, "group_id", "no such subscriber group")
        if group["size"] > MAX_GROUP_RECIPIENTS:
            return api_error(
                422,
                "group_too_large",
                f"the group has {group['size']} numbers; a send to a subscriber group takes "
                f"at most {MAX_GROUP_RECIPIENTS} (KMC §3.4.7)",
                "group_id",
            )
        source = group_recipients(state, account.account_id, spec.group_id)
    elif csv_part is not None:
        source = csv_recipients(csv_part, spec, CsvHeader(), state.config.http.body_timeout_s)
    else:
        if "recipients" not in body:
            return json_error(400, "recipients", "required (or a CSV upload, or a group_id)")
        raw = body["recipients"]
        if not isinstance(raw, list):
            return json_error(400, "recipients", "expected an array of recipients")
        if len(raw) > MAX_RECIPIENTS:
            return json_error(
                400, "recipients", f"at most {MAX_RECIPIENTS} recipients per send, got {len(raw)}"
            )
        source = _aiter(json_recipients(raw))

    # The first recipient is read before the send is made: a CSV whose
    # header does not name the content's variables is refused with nothing
    # stored.
    try:
        source = await _primed(source)
    except RequestShapeError as exc:
        return json_error(400, exc.field, exc.reason)
    try:
        registration = await _open(state, account.account_id, spec, now)
    except _SendConflict as exc:
        return api_error(
            409,
            "idempotency_conflict",
            f"send {exc.send_id} already has this client_ref with another content",
            "client_ref",
            extra={"send_id": str(exc.send_id)},
        )
    if registration is not None:
        try:
            await Registrar(state, account, spec, registration, now).register(source)
        except RequestShapeError as exc:
            return json_error(400, exc.field, exc.reason)
        if not registration.cancelled:
            await state.db.execute("finish_send", registration.send_id, state.clock.now())
        send_id = registration.send_id
        log.info(
            "send_registered",
            account=account.account_id,
            send_id=send_id,
            accepted=registration.accepted,
            rejected=registration.rejected,
        )
    else:
        existing = await state.db.fetchrow(
            "get_send_by_client_ref", account.account_id, spec.client_ref
        )
        assert existing is not None
        send_id = existing["id"]
    send = await state.db.fetchrow("get_send", send_id, account.account_id)
    assert send is not None
    rejections = await state.db.fetch("send_rejections", send_id, MAX_REJECTIONS_SHOWN)
    answer = {
        "id": str(send_id),
        "client_ref": send["client_ref"],
        "state": send["state"],
        "accepted": send["accepted"],
        "rejected": send["rejected"],
        "rejections": [
            {"row": r["row_no"], "field": r["field"], "reason": r["reason"]} for r in rejections
        ],
    }
    if send["accepted"]:
        return web.json_response(answer, status=202)
    first = answer["rejections"][0] if answer["rejections"] else None
    message = "no recipient was accepted" + (
        f"; row {first['row']}: {first['field']}: {first['reason']}" if first else ""
    )
    return web.json_response(
        {**error_body("nothing_accepted", message, "recipients"), **answer}, status=422
    )


async def _primed(source: AsyncIterator[Recipient]) -> AsyncIterator[Recipient]:
    """`source` with its first recipient already read."""
    try:
        first = await anext(source)
    except StopAsyncIteration:
        return _aiter(())

    async def rest() -> AsyncIterator[Recipient]:
        yield first
        async for recipient in source:
            yield recipient

    return rest()


async def _aiter(items: Iterable[Recipient]) -> AsyncIterator[Recipient]:
    for item in items:
        yield item


async def _read_upload(
    reader: MultipartReader, timeout_s: float
) -> tuple[object, BodyPartReader | None]:
    """The `send` part (JSON) and the `recipients` part (CSV), in that order."""
    try:
        first = await reader.next()
    except (ValueError, HttpProcessingError) as exc:
        raise BodyError(f"malformed multipart body: {exc}") from None
    if not isinstance(first, BodyPartReader) or first.name != "send":
        raise RequestShapeError("send", "the first part must be `send`: the send as JSON")
    body = parse_json_body(await _read_capped(first, MAX_SPEC_BYTES, "send", timeout_s))
    if isinstance(body, dict) and "recipients" in body:
        raise RequestShapeError("recipients", "in a CSV upload, the recipients are the CSV part")
    try:
        async with asyncio.timeout(timeout_s):
            second = await reader.next()
    except (ValueError, HttpProcessingError) as exc:
        raise BodyError(f"malformed multipart body: {exc}") from None
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"no part of the upload came within {timeout_s:g} s", "body"
        ) from None
    if second is None:
        return body, None
    if not isinstance(second, BodyPartReader) or second.name != "recipients":
        raise RequestShapeError("recipients", "the second part must be `recipients`: the CSV")
    return body, second


async def _open(
    state: ApiState, account_id: str, spec: SendSpec, now: datetime
) -> Registration | None:
    """A new send, or the one its client_ref names still registering (to
    resume); None when that one is registered (or cancelled): answer it."""
    follow_delay = spec.follow_up.delay_s if spec.follow_up is not None else None
    send_id = await state.db.fetchval(
        "create_send",
        account_id,
        spec.client_ref,
        spec.request_sha256,
        spec.channel,
        dict(spec.document),
        spec.group_id,
        follow_delay,
        state.config.engine.message_expiry_s if spec.follow_up is not None else None,
        now,
    )
    if send_id is not None:
        return Registration(send_id, 0)
    existing = await state.db.fetchrow("get_send_by_client_ref", account_id, spec.client_ref)
    assert existing is not None
    if bytes(existing["request_sha256"]) != spec.request_sha256:
        raise _SendConflict(existing["id"])
    if existing["state"] != "registering":
        return None
    send = await state.db.fetchrow("get_send", existing["id"], account_id)
    assert send is not None
    return Registration(existing["id"], send["rows_done"])


def _parse_id(text: str, field: str) -> int:
    if not text or len(text) > 18 or not set(text) <= _ASCII_DIGITS:
        raise _BadRequest(field, "must be 1 to 18 digits 0-9")
    return int(text)


class _BadRequest(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _cursor(message_id: int) -> str:
    return base64.urlsafe_b64encode(f"m{message_id}".encode()).decode().rstrip("=")


def _after_cursor(text: str | None) -> int:
    if text is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _BadRequest("cursor", "not a cursor this API gave") from None
    if len(text) > 40 or not raw.startswith("m") or not set(raw[1:]) <= _ASCII_DIGITS:
        raise _BadRequest("cursor", "not a cursor this API gave")
    return int(raw[1:] or "0")


def _limit(text: str | None) -> int:
    if text is None:
        return PAGE_DEFAULT
    if (
        not text
        or len(text) > 4
        or not set(text) <= _ASCII_DIGITS
        or not 1 <= int(text) <= PAGE_MAX
    ):
        raise _BadRequest("limit", f"must be 1 to {PAGE_MAX}")
    return int(text)


def _check_params(request: web.Request, allowed: frozenset[str]) -> None:
    for key in request.query:
        if key not in allowed:
            raise _BadRequest(key, f"unknown query parameter (one of {', '.join(sorted(allowed))})")
        if len(request.query.getall(key)) > 1:
            raise _BadRequest(key, "given more than once")


def send_summary(send: Row) -> dict[str, Any]:
    spec = send["spec"] or {}
    return {
        "id": str(send["id"]),
        "client_ref": send["client_ref"],
        "state": send["state"],
        "channel": send["channel"],
        "group_id": None if send["group_id"] is None else str(send["group_id"]),
        "follow_up": None
        if send["follow_up_delay_s"] is None
        else {
            "delay_s": send["follow_up_delay_s"],
            "channel": (spec.get("follow_up") or {}).get("channel") or send["channel"],
        },
        "created_at": iso_instant(send["created_at"]),
        "registered_at": iso_instant(send["registered_at"]),
        "cancelled_at": iso_instant(send["cancelled_at"]),
        "recipients": {
            "read": send["rows_done"],
            "accepted": send["accepted"],
            "rejected": send["rejected"],
        },
    }


async def clicks_of(state: ApiState, send: Row) -> dict[str, int] | None:
    """Short-link clicks (DOMAIN §12) of the send's messages: None while
    this daemon keeps no click log to count them from."""
    return None


async def get_send(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    try:
        _check_params(request, frozenset({"limit", "cursor"}))
        send_id = _parse_id(request.match_info["send_id"], "send_id")
        limit = _limit(request.query.get("limit"))
        after = _after_cursor(request.query.get("cursor"))
    except _BadRequest as exc:
        return json_error(400, exc.field, exc.reason)
    send = await state.db.fetchrow("get_send", send_id, account.account_id)
    if send is None:
        return json_error(404, None, "no such send")
    view = send_summary(send)
    lo, hi = send["first_message_id"], send["last_message_id"]
    by_state: dict[str, int] = {}
    follow_by_state: dict[str, int] = {}
    sms_units = rcs_units = 0
    messages: list[Row] = []
    replies = {"replies": 0, "repliers": 0}
    if lo is not None:
        for row in await state.db.fetch("send_state_counts", send_id, lo, hi):
            (follow_by_state if row["follow_up"] else by_state)[row["state"]] = row["n"]
            sms_units += row["sms_units"]
            rcs_units += row["rcs_units"]
        messages = await state.db.fetch("send_messages_page", send_id, lo, hi, after, limit + 1)
        counted = await state.db.fetchrow("send_replies", send_id)
        if counted is not None:
            replies = {"replies": counted["replies"], "repliers": counted["repliers"]}
    survey = await survey_of(state, send)
    page = messages[:limit]
    view.update(
        {
            "messages_by_state": by_state,
            "follow_ups_by_state": follow_by_state,
            "billing": {"sms_units": sms_units, "rcs_units": rcs_units},
            "clicks": await clicks_of(state, send),
            "replies": replies,
            "survey": survey,
            "messages": [
                {
                    **status_document(m),
                    "recipient_index": m["send_row"],
                    "after_message_id": None
                    if m["after_message_id"] is None
                    else str(m["after_message_id"]),
                }
                for m in page
            ],
            "next_cursor": _cursor(page[-1]["id"]) if len(messages) > limit else None,
        }
    )
    return web.json_response(view)


async def survey_of(state: ApiState, send: Row) -> dict[str, Any] | None:
    """A survey send's tally (domain/replies.py: each recipient counted
    once, for their latest matched answer) and its unmatched replies; None
    for a send without choices."""
    rules = reply_rules_of(send["spec"] or {})
    if not rules.choices:
        return None
    counts = {r["choice"]: r["n"] for r in await state.db.fetch("send_choice_tally", send["id"])}
    unmatched = await state.db.fetchrow("send_unmatched_replies", send["id"])
    assert unmatched is not None
    return {
        "choices": [
            {"code": c.code, "label": c.label, "count": counts.get(c.code, 0)}
            for c in rules.choices
        ],
        "answered": sum(counts.values()),
        "unmatched": {"replies": unmatched["replies"], "repliers": unmatched["repliers"]},
    }


async def send_replies(request: web.Request) -> web.Response:
    """GET /v1/sends/{id}/replies: every reply to the send, oldest first,
    with the survey choice it matched (null: none), a page at a time."""
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    try:
        _check_params(request, frozenset({"limit", "cursor"}))
        send_id = _parse_id(request.match_info["send_id"], "send_id")
        limit = _limit(request.query.get("limit"))
        after = _after_cursor(request.query.get("cursor"))
    except _BadRequest as exc:
        return json_error(400, exc.field, exc.reason)
    send = await state.db.fetchrow("get_send", send_id, account.account_id)
    if send is None:
        return json_error(404, None, "no such send")
    rows = await state.db.fetch("send_replies_page", send_id, after, limit + 1)
    page = rows[:limit]
    return web.json_response(
        {
            "send_id": str(send_id),
            "replies": [{**inbound_document(r), "choice": r["choice"]} for r in page],
            "next_cursor": _cursor(page[-1]["id"]) if len(rows) > limit else None,
        }
    )


async def list_sends(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "read")
    try:
        _check_params(request, frozenset({"limit", "cursor"}))
        limit = _limit(request.query.get("limit"))
        before = _after_cursor(request.query.get("cursor")) or None
    except _BadRequest as exc:
        return json_error(400, exc.field, exc.reason)
    rows = await state.db.fetch("list_sends", account.account_id, before, limit + 1)
    page = rows[:limit]
    return web.json_response(
        {
            "sends": [send_summary(r) for r in page],
            "next_cursor": _cursor(page[-1]["id"]) if len(rows) > limit else None,
        }
    )


async def export_send(request: web.Request) -> web.StreamResponse:
    state = request.app[API_STATE]
    account = authenticate(request, "reports")
    try:
        _check_params(request, frozenset())
        send_id = _parse_id(request.match_info["send_id"], "send_id")
    except _BadRequest as exc:
        return json_error(400, exc.field, exc.reason)
    send = await state.db.fetchrow("get_send", send_id, account.account_id)
    if send is None:
        return json_error(404, None, "no such send")
    lo, hi = send["first_message_id"], send["last_message_id"]
    page_rows = state.export_page_rows

    async def next_page(last: Row | None) -> list[Row]:
        if lo is None:
            return []
        after = 0 if last is None else last["id"]
        return await state.db.fetch("send_export_page", send_id, lo, hi, after, page_rows)

    response, exported = await export_csv(request, f"send-{send_id}.csv", next_page, page_rows)
    log.info("send_exported", account=account.account_id, send_id=send_id, rows=exported)
    return response


async def cancel_send(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    account = authenticate(request, "send")
    try:
        send_id = _parse_id(request.match_info["send_id"], "send_id")
    except _BadRequest as exc:
        return json_error(400, exc.field, exc.reason)
    if state.canceller is None:
        return api_error(503, "not_configured", "cancel is not available on this daemon")
    marked = await state.db.fetchrow(
        "mark_send_cancelled", send_id, account.account_id, state.clock.now()
    )
    if marked is None:
        return json_error(404, None, "no such send")
    lo, hi = marked["first_message_id"], marked["last_message_id"]
    totals: dict[str, int] = {}
    not_cancelled: dict[str, int] = {}
    after = 0
    while lo is not None:
        page = await state.db.fetch("send_open_messages", send_id, lo, hi, after, BATCH_RECIPIENTS)
        if not page:
            break
        outcomes = await state.canceller.cancel_many(account.account_id, [r["id"] for r in page])
        for (result, message_state), n in outcomes.items():
            totals[result] = totals.get(result, 0) + n
            if result != "cancelled" and message_state is not None:
                not_cancelled[message_state] = not_cancelled.get(message_state, 0) + n
        after = page[-1]["id"]
        if len(page) < BATCH_RECIPIENTS:
            break
    log.info("send_cancelled", account=account.account_id, send_id=send_id, **totals)
    return web.json_response(
        {
            "id": str(send_id),
            "state": "cancelled",
            "cancelled": totals.get("cancelled", 0),
            "revoke_failed": totals.get("revoke_failed", 0),
            "not_cancelled_by_state": not_cancelled,
        }
    )
