"""Metrics (per-instance registry, exposition, /metrics) and log redaction."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from carrierd.telemetry import (
    Metrics,
    SubmitMetrics,
    command_status_label,
    configure_logging,
    http_method_label,
    mask_phone_number,
    receipt_stat_label,
    stream_is_journal,
)

EXPECTED: dict[str, tuple[type, tuple[str, ...]]] = {
    "messages_accepted_total": (Counter, ("account", "channel")),
    "messages_rejected_total": (Counter, ("field",)),
    "parts_submitted_total": (Counter, ("carrier",)),
    "submit_responses_total": (Counter, ("carrier", "status")),
    "receipts_total": (Counter, ("carrier", "stat")),
    "messages_final_total": (Counter, ("channel", "state")),
    "fallbacks_total": (Counter, ("cause",)),
    "expiries_total": (Counter, ("channel",)),
    "discards_total": (Counter, ("outcome",)),
    "reroutes_total": (Counter, ("from_carrier",)),
    "resends_total": (Counter, ("carrier",)),
    "throttled_total": (Counter, ("carrier",)),
    "billing_units_total": (Counter, ("account", "channel")),
    "http_requests_total": (Counter, ("route", "method", "status")),
    "mo_received_total": (Counter, ("channel",)),
    "webhooks_rejected_total": (Counter, ("reason",)),
    "callbacks_total": (Counter, ("outcome",)),
    "queue_depth": (Gauge, ("state", "account")),
    "queue_oldest_age_seconds": (Gauge, ("state", "account")),
    "binds": (Gauge, ("carrier", "state")),
    "window_in_use": (Gauge, ("carrier", "bind")),
    "bind_send_rate_per_s": (Gauge, ("carrier", "bind")),
    "bucket_tokens": (Gauge, ("account",)),
    "au_gate_held": (Gauge, ()),
    "callbacks_pending": (Gauge, ()),
    "callbacks_oldest_pending_age_seconds": (Gauge, ()),
    "database_up": (Gauge, ()),
    "intake_to_submit_seconds": (Histogram, ()),
    "submit_response_seconds": (Histogram, ("carrier",)),
    "receipt_seconds": (Histogram, ("carrier",)),
    "rcs_delivery_seconds": (Histogram, ()),
    "http_request_duration_seconds": (Histogram, ("route", "method")),
    "reassign_verdicts_total": (Counter, ("verdict",)),
    "reassign_lookup_seconds": (Histogram, ("outcome",)),
}


def test_every_metric_exists_with_its_labels() -> None:
    metrics = Metrics()
    for attribute, (kind, labels) in EXPECTED.items():
        metric = getattr(metrics, attribute)
        assert type(metric) is kind, attribute
        assert isinstance(metric, MetricWrapperBase)
        assert tuple(metric._labelnames) == labels, attribute
    exported = metrics.exported_names()
    for attribute, (kind, _) in EXPECTED.items():
        base = f"carrierd_{attribute}"
        expected_name = f"{base}_bucket" if kind is Histogram else base
        assert expected_name in exported


def test_two_instances_do_not_share_a_registry() -> None:
    # The global default registry would refuse the second set of names.
    first, second = Metrics(), Metrics()
    first.parts_submitted_total.labels("au").inc(3)
    body, _ = second.render()
    assert b'carrierd_parts_submitted_total{carrier="au"}' not in body


def test_render_shows_prefixed_samples() -> None:
    metrics = Metrics()
    metrics.submit_responses_total.labels("docomo", "0x00000058").inc()
    metrics.receipt_seconds.labels("softbank").observe(42.0)
    metrics.au_gate_held.set(7)
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'carrierd_submit_responses_total{carrier="docomo",status="0x00000058"} 1.0' in text
    assert 'carrierd_receipt_seconds_bucket{carrier="softbank",le="60.0"} 1.0' in text
    assert "carrierd_au_gate_held 7.0" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            # Ours, and prometheus_client's process, platform and GC collectors.
            assert line.startswith(("carrierd_", "process_", "python_")), line


def test_queue_gauges_read_zero_when_a_pair_empties() -> None:
    metrics = Metrics()
    metrics.set_queue_gauges(
        [
            {"state": "queued", "account_id": "acme", "depth": 5, "oldest_age_s": 12.5},
            {"state": "submitted", "account_id": "acme", "depth": 2, "oldest_age_s": 3.0},
        ]
    )
    metrics.set_queue_gauges(
        [{"state": "submitted", "account_id": "acme", "depth": 1, "oldest_age_s": 4.0}]
    )
    text = metrics.render()[0].decode()
    assert 'carrierd_queue_depth{account="acme",state="queued"} 0.0' in text
    assert 'carrierd_queue_oldest_age_seconds{account="acme",state="queued"} 0.0' in text
    assert 'carrierd_queue_depth{account="acme",state="submitted"} 1.0' in text
    assert 'carrierd_queue_oldest_age_seconds{account="acme",state="submitted"} 4.0' in text


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("+819012345678", "+81******5678"),
        ("+818012345678", "+81******5678"),
        ("09012345678", "*******5678"),
        ("090-1234-5678", "***-****-5678"),
        ("1234", "****"),
        ("", ""),
    ],
)
def test_mask_phone_number(raw: str, masked: str) -> None:
    assert mask_phone_number(raw) == masked


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers_before, level_before = list(root.handlers), root.level
    yield stream
    structlog.reset_defaults()
    root.handlers[:] = handlers_before
    root.setLevel(level_before)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_info_lines_mask_numbers_and_drop_bodies(log_output: io.StringIO) -> None:
    configure_logging("info", stream=log_output)
    log = structlog.get_logger("carrierd.test")
    log.info(
        "message_submitted",
        msisdn="+819012345678",
        to=["+818011112222", "+817033334444"],
        recipient=9012345678,
        text="ご予約ありがとうございます",
        body="secret body",
        carrier="au",
    )
    log.debug("not_shown", msisdn="+819012345678")
    (line,) = _lines(log_output)
    assert line["event"] == "message_submitted"
    assert line["level"] == "info"
    assert line["msisdn"] == "+81******5678"
    assert line["to"] == ["+81******2222", "+81******4444"]
    assert line["recipient"] == "******5678"
    assert "text" not in line and "body" not in line
    assert line["carrier"] == "au"
    assert "timestamp" in line


def test_debug_lines_keep_bodies_but_still_mask(log_output: io.StringIO) -> None:
    configure_logging("debug", stream=log_output)
    structlog.get_logger().debug("pdu_built", to="+819012345678", text="こんにちは")
    (line,) = _lines(log_output)
    assert line["to"] == "+81******5678"
    assert line["text"] == "こんにちは"


def test_standard_library_loggers_get_the_same_json_and_redaction(
    log_output: io.StringIO,
) -> None:
    configure_logging("info", stream=log_output)
    # Configuring twice replaces the handler instead of doubling every line.
    configure_logging("info", stream=log_output)
    logging.getLogger("aiohttp.access").warning(
        "slow client", extra={"msisdn": "+819012345678", "text": "body"}
    )
    (line,) = _lines(log_output)
    assert line["event"] == "slow client"
    assert line["level"] == "warning"
    assert line["logger"] == "aiohttp.access"
    assert line["msisdn"] == "+81******5678"
    assert "text" not in line


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose")


def test_process_platform_gc_and_build_info_are_exported() -> None:
    text = Metrics().render()[0].decode()
    assert "\nprocess_cpu_seconds_total " in text
    assert "\nprocess_open_fds " in text
    assert "\npython_info{" in text
    assert "\npython_gc_collections_total{" in text
    (build,) = [line for line in text.splitlines() if line.startswith("carrierd_build_info{")]
    assert 'version="' in build and build.endswith(" 1.0")


# Label names that would make a series per message, recipient or month.
UNBOUNDED_LABELS = frozenset(
    {"month", "day", "path", "url", "msisdn", "to", "id", "message_id", "client_ref", "error"}
)


def test_no_metric_is_labelled_by_an_unbounded_value() -> None:
    for family in Metrics().registry.collect():
        if not family.name.startswith("carrierd_"):
            continue
        for sample in family.samples:
            assert not UNBOUNDED_LABELS & sample.labels.keys(), (family.name, sample.labels)
    for attribute in dir(metrics := Metrics()):
        metric = getattr(metrics, attribute)
        if isinstance(metric, MetricWrapperBase):
            assert not UNBOUNDED_LABELS & set(metric._labelnames), attribute


@pytest.mark.parametrize(
    ("stat", "label"),
    [("DELIVRD", "DELIVRD"), ("UNDELIV", "UNDELIV"), ("GARBAGE42", "other"), (None, "other")],
)
def test_receipt_stats_outside_smpp_read_other(stat: str | None, label: str) -> None:
    assert receipt_stat_label(stat) == label


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (0, "ok"),
        (0x58, "0x00000058"),
        (0x401, "0x00000401"),
        (0x100, "other"),
        (0xDEADBEEF, "other"),
    ],
)
def test_command_status_labels_are_bounded(status: int, label: str) -> None:
    assert command_status_label(status) == label


def test_a_hostile_smsc_cannot_grow_the_submit_series() -> None:
    metrics = Metrics()
    observer = SubmitMetrics(metrics, "docomo")
    for status in range(0x10000, 0x10000 + 5000):
        observer.submit_answered(status, 0.01)
    observer.submit_answered(0, 0.01)
    samples = [
        s
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "carrierd_submit_responses_total"
    ]
    assert {s.labels["status"]: s.value for s in samples} == {"other": 5000.0, "ok": 1.0}
    assert len(observer._by_status) == 1  # its cache of children is as bounded


def test_bind_counters_read_their_source_at_scrape_time() -> None:
    metrics = Metrics()
    text = metrics.render()[0].decode()
    assert "# TYPE carrierd_bind_reconnects_total counter" in text
    counts = {"docomo": (2, 7)}
    metrics.count_binds_from(lambda: counts)
    text = metrics.render()[0].decode()
    assert 'carrierd_bind_reconnects_total{carrier="docomo"} 2.0' in text
    assert 'carrierd_bind_failures_total{carrier="docomo"} 7.0' in text
    counts["docomo"] = (3, 9)
    assert 'carrierd_bind_failures_total{carrier="docomo"} 9.0' in metrics.render()[0].decode()
    assert {"carrierd_bind_reconnects_total", "carrierd_bind_failures_total"} <= (
        metrics.exported_names()
    )


def test_journal_lines_start_with_their_syslog_priority(log_output: io.StringIO) -> None:
    configure_logging("debug", stream=log_output, journal=True)
    log = structlog.get_logger("carrierd.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("asyncpg").error("library error")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("x")
    log.critical("c")
    lines = log_output.getvalue().splitlines()
    prefixes = [line[: line.index("{")] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>", "<3>", "<2>"]
    assert json.loads(lines[3][3:])["event"] == "e"


def test_plain_json_lines_off_the_journal(log_output: io.StringIO) -> None:
    configure_logging("info", stream=log_output)
    structlog.get_logger().error("e")
    assert log_output.getvalue().startswith("{")


def test_the_journal_is_recognised_by_its_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        status = os.fstat(journal.fileno())
        variable = f"{status.st_dev}:{status.st_ino}"
        assert stream_is_journal(journal, variable)
        assert not stream_is_journal(other, variable)
        assert not stream_is_journal(journal, None)
        assert not stream_is_journal(journal, "not-a-pair")
        assert not stream_is_journal(io.StringIO(), variable)


def test_http_methods_outside_the_standard_ones_read_other() -> None:
    assert [http_method_label(m) for m in ("GET", "POST", "BREW", "get")] == [
        "GET",
        "POST",
        "other",
        "other",
    ]
