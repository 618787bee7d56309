"""A client of carrierd's HTTP API, for the command line and for scripts.

It speaks only HTTP: nothing here reads the daemon's configuration or
database, so it runs on any host that can reach the API with a token.
Errors come back as `ApiError` with the API's machine-readable code, read
from the one error shape (``{"error": {"code", "message", "field"}}``); an
older daemon's ``{"error": "...", "field": ...}`` and aiohttp's plain-text
404/405 are read too, with a code made from the status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from carrierd import __version__

DEFAULT_URL = "http://127.0.0.1:8080"
URL_VARIABLE = "CARRIERD_URL"
TOKEN_VARIABLE = "CARRIERD_TOKEN"

# A status code's meaning, for an error body that carries no code of its own.
_CODE_FOR_STATUS: Mapping[int, str] = {
    400: "invalid_field",
    401: "unknown_token",
    403: "scope_required",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "nothing_accepted",
    500: "internal_error",
    503: "unavailable",
}


class ClientError(Exception):
    """The API could not be asked (no connection, no answer, not JSON)."""


class ApiError(ClientError):
    """The API answered with an error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        # The whole body: some errors carry more beside "error" (a cancel's
        # 409 names the message's state).
        self.body: Mapping[str, Any] = body or {}
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {code}: {message}{where}")


def error_from_response(status: int, text: str) -> ApiError:
    """The error an HTTP answer carries, whichever shape it has."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    fallback_code = _CODE_FOR_STATUS.get(status, f"http_{status}")
    if not isinstance(body, dict):
        message = text.strip().splitlines()[0] if text.strip() else f"HTTP {status}"
        return ApiError(status, fallback_code, message)
    error = body.get("error")
    if isinstance(error, dict):
        return ApiError(
            status,
            str(error.get("code") or fallback_code),
            str(error.get("message") or f"HTTP {status}"),
            error.get("field") if isinstance(error.get("field"), str) else None,
            body,
        )
    field_name = body.get("field")
    message = str(error) if error is not None else f"HTTP {status}"
    if isinstance(body.get("detail"), str):
        message = f"{message}: {body['detail']}"
    return ApiError(
        status,
        fallback_code,
        message,
        field_name if isinstance(field_name, str) else None,
        body,
    )


@dataclass(frozen=True)
class SendResult:
    """POST /v1/messages: what was accepted and what was rejected (a batch
    with nothing accepted is a result too, not an exception)."""

    status: int
    accepted: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    error: ApiError | None = None


@dataclass(frozen=True)
class SearchFilters:
    """GET /v1/messages filters; instants are ISO 8601 with an offset."""

    states: Sequence[str] = ()
    to: str | None = None
    since: str | None = None
    until: str | None = None
    client_ref: str | None = None
    channel: str | None = None
    carrier: str | None = None

    def query(self) -> list[tuple[str, str]]:
        pairs = [("state", s) for s in self.states]
        for name in ("to", "since", "until", "client_ref", "channel", "carrier"):
            value = getattr(self, name)
            if value is not None:
                pairs.append((name, value))
        return pairs


@dataclass(frozen=True)
class Page:
    messages: list[dict[str, Any]]
    next_cursor: str | None = None


@dataclass
class CarrierdClient:
    """`async with CarrierdClient(url, token) as api: await api.status("42")`."""

    base_url: str
    token: str
    timeout_s: float = 30.0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def __aenter__(self) -> CarrierdClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={
                "Authorization": f"Bearer {self.token}",
                "User-Agent": f"carrierd-cli/{__version__}",
                "Accept": "application/json",
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        answer_statuses: frozenset[int] = frozenset(),
    ) -> tuple[int, Any]:
        """(status, decoded JSON) of a 2xx answer, or of one in
        `answer_statuses`; any other status raises ApiError."""
        if self._session is None:
            raise RuntimeError("use CarrierdClient in `async with`")
        url = self._url(path)
        try:
            async with self._session.request(
                method, url, params=params, json=body if body is not None else None
            ) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError:
            raise ClientError(f"{url}: no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from None
        if not (200 <= status < 300 or status in answer_statuses):
            raise error_from_response(status, text)
        try:
            return status, json.loads(text)
        except ValueError:
            raise ClientError(f"{url}: answer {status} is not JSON: {text[:200]!r}") from None

    async def send(self, messages: Sequence[Mapping[str, Any]]) -> SendResult:
        status, body = await self._request(
            "POST",
            "/v1/messages",
            body={"messages": list(messages)},
            answer_statuses=frozenset({409, 422}),
        )
        if not isinstance(body, dict) or "rejected" not in body:
            raise error_from_response(status, json.dumps(body))
        error = error_from_response(status, json.dumps(body)) if status >= 300 else None
        return SendResult(status, list(body.get("accepted", [])), list(body["rejected"]), error)

    async def status(self, message_id: str) -> dict[str, Any]:
        _, body = await self._request("GET", f"/v1/messages/{quote(message_id, safe='')}")
        return dict(body)

    async def cancel(self, message_id: str) -> dict[str, Any]:
        """POST /v1/messages/{id}/cancel: the message as it is now."""
        _, body = await self._request("POST", f"/v1/messages/{quote(message_id, safe='')}/cancel")
        return dict(body)

    async def search(
        self, filters: SearchFilters, *, cursor: str | None = None, limit: int | None = None
    ) -> Page:
        params = filters.query()
        if limit is not None:
            params.append(("limit", str(limit)))
        if cursor is not None:
            params.append(("cursor", cursor))
        _, body = await self._request("GET", "/v1/messages", params=params)
        return Page(list(body.get("messages", [])), body.get("next_cursor") or None)

    async def search_all(
        self, filters: SearchFilters, *, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every message the filters match, page after page."""
        cursor: str | None = None
        while True:
            page = await self.search(filters, cursor=cursor, limit=limit)
            for message in page.messages:
                yield message
            if page.next_cursor is None or not page.messages:
                return
            cursor = page.next_cursor

    async def billing(self, month: str | None = None) -> dict[str, Any]:
        params = [("month", month)] if month else []
        _, body = await self._request("GET", "/v1/billing", params=params)
        return dict(body)

    # -- the opt-out list (DOMAIN §12) ---------------------------------------------

    async def optouts_add(self, numbers: Sequence[str]) -> dict[str, Any]:
        """{"added": n, "already_listed": n}; a wrong number refuses them all."""
        _, body = await self._request("POST", "/v1/optouts", body={"numbers": list(numbers)})
        return dict(body)

    async def optout(self, number: str) -> dict[str, Any]:
        _, body = await self._request("GET", f"/v1/optouts/{quote(number, safe='')}")
        return dict(body)

    async def optouts_remove(self, number: str) -> dict[str, Any]:
        _, body = await self._request("DELETE", f"/v1/optouts/{quote(number, safe='')}")
        return dict(body)

    async def optouts_page(
        self, *, cursor: str | None = None, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        params = [("limit", str(limit))] if limit is not None else []
        if cursor is not None:
            params.append(("cursor", cursor))
        _, body = await self._request("GET", "/v1/optouts", params=params)
        return list(body.get("optouts", [])), body.get("next_cursor") or None

    async def optouts_export(self) -> str:
        """The list as CSV (msisdn,added_at,source)."""
        return await self._text_request("GET", "/v1/optouts/export")

    async def optouts_import(self, csv_text: str) -> dict[str, Any]:
        """Add a CSV's numbers (source csv); a wrong row refuses them all."""
        text = await self._text_request("POST", "/v1/optouts/import", csv_text=csv_text)
        try:
            return dict(json.loads(text))
        except ValueError:
            raise ClientError(f"/v1/optouts/import: answer is not JSON: {text[:200]!r}") from None

    async def _text_request(self, method: str, path: str, *, csv_text: str | None = None) -> str:
        """The text of a 2xx answer to a request whose body (if any) is CSV."""
        if self._session is None:
            raise RuntimeError("use CarrierdClient in `async with`")
        url = self._url(path)
        headers = {"Content-Type": "text/csv; charset=utf-8"} if csv_text is not None else None
        try:
            async with self._session.request(
                method,
                url,
                data=None if csv_text is None else csv_text.encode("utf-8"),
                headers=headers,
            ) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError:
            raise ClientError(f"{url}: no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from None
        if not 200 <= status < 300:
            raise error_from_response(status, text)
        return text
