"""/metrics through prometheus_client's aiohttp handler (gzip, OpenMetrics),
HTTP requests counted per route template, and the optional access log."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from carrierd.domain.clock import FakeClock
from carrierd.store.db import Database
from carrierd.telemetry import Metrics
from tests.integration.apiclient import auth, make_config, running_api

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def samples_of(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_metrics_negotiates_openmetrics_and_gzip(dsn: str, db: Database) -> None:
    metrics = Metrics()
    async with running_api(make_config(dsn), db, FakeClock(NOW), metrics=metrics) as (base, http):
        resp = await http.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"})
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert "Content-Encoding" not in resp.headers
        text = await resp.text()
        assert "carrierd_build_info{" in text and "process_cpu_seconds_total" in text

        resp = await http.get(
            f"{base}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).endswith("# EOF\n")

        # The raw bytes, as a scraper that accepts gzip receives them.
        async with aiohttp.ClientSession(auto_decompress=False) as raw:
            resp = await raw.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"})
            assert resp.headers["Content-Encoding"] == "gzip"
            assert (await resp.read())[:2] == b"\x1f\x8b"


async def test_requests_are_counted_by_route_template(dsn: str, db: Database) -> None:
    metrics = Metrics()
    async with running_api(make_config(dsn), db, FakeClock(NOW), metrics=metrics) as (base, http):
        for message_id in ("101", "102", "103"):
            resp = await http.get(f"{base}/v1/messages/{message_id}", headers=auth("acme-token"))
            assert resp.status == 404
        assert (await http.get(f"{base}/v1/messages/104")).status == 401
        assert (await http.get(f"{base}/no/such/path/9")).status == 404
        assert (await http.put(f"{base}/healthz")).status == 405
        text = await (await http.get(f"{base}/metrics")).text()
    counted = samples_of(text, "carrierd_http_requests_total")
    route = ("route", "/v1/messages/{message_id}")
    assert counted[(("method", "GET"), route, ("status", "404"))] == 3
    assert counted[(("method", "GET"), route, ("status", "401"))] == 1
    assert counted[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    assert counted[(("method", "PUT"), ("route", "unmatched"), ("status", "405"))] == 1
    # No raw path or id made a series of its own.
    assert all(dict(labels)["route"] in {route[1], "unmatched"} for labels in counted)
    durations = samples_of(text, "carrierd_http_request_duration_seconds_count")
    assert durations[(("method", "GET"), route)] == 4


async def test_the_access_log_is_off_by_default_and_on_by_config(dsn: str, db: Database) -> None:
    for enabled in (False, True):
        config = make_config(dsn, {"http": {"port": 0, "access_log": enabled}})
        async with running_api(config, db, FakeClock(NOW)) as (base, http):
            with capture_logs() as logs:
                resp = await http.get(
                    f"{base}/v1/messages/7?to=09012345678", headers=auth("acme-token")
                )
                assert resp.status == 404
        access = [entry for entry in logs if entry["event"] == "http_access"]
        if not enabled:
            assert access == []
            continue
        (entry,) = access
        assert entry["log_level"] == "info"
        assert entry["route"] == "/v1/messages/{message_id}"
        assert entry["path"] == "/v1/messages/7"  # never the query string
        assert (entry["method"], entry["status"]) == ("GET", 404)
        assert entry["duration_ms"] >= 0
