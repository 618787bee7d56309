"""The route table of build_app, the probes and /metrics, and the status
document read through GET /v1/messages/{id}."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from carrierd.domain.clock import FakeClock
from carrierd.domain.status import STATUS_COLUMNS
from carrierd.http.app import ApiState, build_app
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import auth, make_config, running_api
from tests.integration.test_http_webhooks import RecordingSink

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)

ACCOUNT_ROUTES = {
    ("POST", "/v1/messages"),
    ("GET", "/v1/messages"),
    ("GET", "/v1/messages/export"),
    ("GET", "/v1/messages/{message_id}"),
    ("POST", "/v1/messages/{message_id}/cancel"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/billing"),
    ("POST", "/v1/optouts"),
    ("GET", "/v1/optouts"),
    ("GET", "/v1/optouts/export"),
    ("POST", "/v1/optouts/import"),
    ("GET", "/v1/optouts/{number}"),
    ("DELETE", "/v1/optouts/{number}"),
    ("GET", "/v1/inbound"),
    ("POST", "/v1/sends"),
    ("GET", "/v1/sends"),
    ("GET", "/v1/sends/{send_id}"),
    ("GET", "/v1/sends/{send_id}/export"),
    ("GET", "/v1/sends/{send_id}/replies"),
    ("POST", "/v1/sends/{send_id}/cancel"),
    ("POST", "/v1/groups"),
    ("GET", "/v1/groups"),
    ("GET", "/v1/groups/{group_id}/export"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}


def routes_of(state: ApiState) -> set[tuple[str, str]]:
    app = build_app(state)
    # aiohttp adds a HEAD route beside every GET.
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


@pytest.mark.parametrize(
    ("with_metrics", "with_sink", "optional"),
    [
        (False, False, set()),
        (True, False, {("GET", "/metrics")}),
        (
            True,
            True,
            {
                ("GET", "/metrics"),
                ("POST", "/v1/webhooks/rcs"),
                ("POST", "/v1/webhooks/rcs/{bot_id}"),
            },
        ),
    ],
)
async def test_build_app_lists_every_route(
    dsn: str,
    db: Database,
    with_metrics: bool,
    with_sink: bool,
    optional: set[tuple[str, str]],
) -> None:
    state = ApiState(
        make_config(dsn),
        db,
        FakeClock(NOW),
        metrics=Metrics() if with_metrics else None,
        webhook_sink=RecordingSink() if with_sink else None,
    )
    assert routes_of(state) == ACCOUNT_ROUTES | optional


async def test_metrics_serves_the_exposition(dsn: str, db: Database) -> None:
    metrics = Metrics()
    metrics.callbacks_total.labels("sent").inc(2)
    async with running_api(make_config(dsn), db, FakeClock(NOW), metrics=metrics) as (base, http):
        resp = await http.get(f"{base}/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert 'carrierd_callbacks_total{outcome="sent"} 2.0' in await resp.text()
        resp = await http.get(f"{base}/healthz")
        assert (resp.status, await resp.json()) == (200, {"status": "alive"})


async def test_readyz_reports_a_failing_check_as_503(dsn: str, db: Database) -> None:
    async def not_ready() -> dict[str, object]:
        return {"carriers": {"ready": False, "docomo": 0}}

    async with running_api(make_config(dsn), db, FakeClock(NOW), readiness=not_ready) as (
        base,
        http,
    ):
        resp = await http.get(f"{base}/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["ready"] is False
        assert body["checks"]["database"] is True


async def test_get_message_reads_every_status_column(dsn: str, db: Database) -> None:
    config = make_config(dsn)
    async with running_api(config, db, FakeClock(NOW)) as (base, http):
        resp = await http.post(
            f"{base}/v1/messages",
            headers=auth("acme-token"),
            json={"messages": [{"to": "09012345678", "sms": {"text": "x"}, "client_ref": "c"}]},
        )
        message_id = int((await resp.json())["accepted"][0]["id"])
        row = await db.get_message("acme", message_id)
        assert row is not None
        assert set(STATUS_COLUMNS) <= set(row)

        resp = await http.get(f"{base}/v1/messages/{message_id}", headers=auth("acme-token"))
        view = await resp.json()
        assert view["id"] == str(message_id)
        assert view["client_ref"] == "c"
        assert view["timestamps"]["accepted_at"] == NOW.isoformat()
        assert view["history"][0]["event"] == "accepted"
        assert view["sms_parts"] == []
