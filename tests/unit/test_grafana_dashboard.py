"""The Grafana dashboard graphs only metrics the daemon exports."""

from __future__ import annotations

from typing import Any

import pytest

from carrierd.telemetry import Metrics
from tests.grafana_dashboard import expressions, load_dashboard, metric_names, panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        (
            'sum by (carrier) (rate(carrierd_x_total{carrier=~"$carrier"}[5m]))',
            {"carrierd_x_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(a_bucket[$__rate_interval])))",
            {"a_bucket"},
        ),
        ("sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > 1e3", {"a_sum", "a_count"}),
        ("max(up) and on (job) other", {"up", "other"}),
        ('label_values(carrierd_binds{carrier!="x"}, state)', {"carrierd_binds"}),
    ],
)
def test_metric_name_parser(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_every_expression_names_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = Metrics().exported_names()
    seen: set[str] = set()
    for title, expression in expressions(dashboard):
        names = metric_names(expression)
        assert names, f"{title}: no metric in {expression!r}"
        unknown = names - exported
        assert not unknown, f"{title}: {sorted(unknown)} not exported by Metrics"
        seen |= names
    # The topics the dashboard exists for are all on it.
    for required in (
        "carrierd_parts_submitted_total",
        "carrierd_receipts_total",
        "carrierd_queue_depth",
        "carrierd_queue_oldest_age_seconds",
        "carrierd_binds",
        "carrierd_window_in_use",
        "carrierd_bucket_tokens",
        "carrierd_au_gate_held",
        "carrierd_fallbacks_total",
        "carrierd_billing_units_total",
        "carrierd_intake_to_submit_seconds_bucket",
        "carrierd_submit_response_seconds_bucket",
        "carrierd_receipt_seconds_bucket",
        "carrierd_rcs_delivery_seconds_bucket",
    ):
        assert required in seen, f"dashboard does not graph {required}"


def test_latency_panels_use_histogram_quantile(dashboard: dict[str, Any]) -> None:
    for title, expression in expressions(dashboard):
        if any(name.endswith("_bucket") for name in metric_names(expression)):
            assert "histogram_quantile(" in expression, title
            assert "by (le)" in expression or ", le)" in expression, title


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
