"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of every route
(openapi.json beside this module, kept by hand with the handlers;
tests/integration/test_openapi.py checks real answers against it and
fuzzes the API from it). Unauthenticated, like any API description."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

OPENAPI_PATH = "/v1/openapi.json"


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("carrierd.http").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def _openapi_bytes() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode("utf-8")


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_openapi_bytes(), content_type="application/json")
