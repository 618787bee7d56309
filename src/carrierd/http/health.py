"""Probes and the metrics exporter: unauthenticated, like every exporter,
so keep the HTTP listener on a private interface.

- ``GET /healthz``: the process answers (liveness). It does not look at the
  database: a daemon waiting out a database outage is alive and doing the
  right thing, and a liveness failure would only get it restarted into the
  same outage (and drop its binds and the receipts it holds).
- ``GET /readyz``: the database answers and the daemon's own checks pass
  (readiness: 503 otherwise, with the failing checks in the body; the
  database check is ``true`` or ``"unreachable: <reason>"``). The carriers
  check (``carriers_check``) names each carrier ``up`` or ``down`` with its
  binds, and is ready while at least one carrier is up: messages to a
  carrier that is away wait or go to the next candidate (§4), so intake
  stays open; only with every carrier down would it queue for nothing.
- ``GET /metrics``: the Prometheus exposition (only with ApiState.metrics):
  the text format, or OpenMetrics when the scraper asks for it, gzipped
  when it accepts that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from carrierd.http.app import API_STATE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[API_STATE]
    problem = await state.db.probe()
    checks: dict[str, Any] = {"database": True if problem is None else f"unreachable: {problem}"}
    if state.readiness is not None:
        checks.update(await state.readiness())
    ready = all(v is True or (isinstance(v, dict) and v.get("ready")) for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def carriers_check(binds: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """The carriers readiness check from (binds up, binds) per carrier:
    ready while any carrier has a bind up (or none is configured: a
    +Message-only daemon)."""
    carriers = {
        name: {"status": "up" if up > 0 else "down", "binds_up": up, "binds": total}
        for name, (up, total) in binds.items()
    }
    ready = not binds or any(up > 0 for up, _ in binds.values())
    return {"ready": ready, **carriers}


async def serve_metrics(request: web.Request) -> web.StreamResponse:
    metrics = request.app[API_STATE].metrics
    if metrics is None:
        raise web.HTTPNotFound()
    return await metrics.serve(request)
