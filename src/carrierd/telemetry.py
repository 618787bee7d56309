"""Logging set-up (structlog, JSON lines on stdout for journald) and metrics.

Under systemd (stdout is the journal: ``$JOURNAL_STREAM`` names its device
and inode) every line starts with its syslog priority, ``<3>{...}`` for an
error, which journald strips and stores as the entry's PRIORITY, so
``journalctl -p err`` finds errors. Anywhere else the lines are plain JSON.

Every Prometheus metric of the daemon is defined in this module, so that
one file lists what operators can graph and alert on
(conf/grafana/carrierd.json graphs them; a test keeps the two in step).

Log events have stable snake_case names (``ready``, ``bind_lost``...):
dashboards and alerts match on them, so rename one only on purpose. The
redaction processor applies to every line, ours and the libraries':
recipient numbers keep only their last four digits, and message bodies are
dropped from every event logged at info or above.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

import carrierd

# -- logging -----------------------------------------------------------------------

PHONE_FIELDS: frozenset[str] = frozenset({"msisdn", "to", "recipient"})
BODY_FIELDS: frozenset[str] = frozenset({"body", "text", "sms_text"})
_KEPT_DIGITS = 4
_COUNTRY_PREFIX = "+81"


def mask_phone_number(value: str) -> str:
    """``+819012345678`` -> ``+81******5678``; any other form keeps its
    separators and last four digits (``090-****-5678`` stays readable for
    support, but does not identify the subscriber)."""
    prefix = ""
    rest = value
    if rest.startswith(_COUNTRY_PREFIX):
        prefix, rest = _COUNTRY_PREFIX, rest[len(_COUNTRY_PREFIX) :]
    digits_total = sum(ch.isdigit() for ch in rest)
    # Too short to keep a tail without giving the whole thing away.
    keep = _KEPT_DIGITS if digits_total > _KEPT_DIGITS else 0
    masked: list[str] = []
    digits_seen = 0
    for ch in rest:
        if ch.isdigit():
            digits_seen += 1
            masked.append(ch if digits_seen > digits_total - keep else "*")
        else:
            masked.append(ch)
    return prefix + "".join(masked)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_phone_number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return mask_phone_number(str(value))
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(v) for v in value]
    return value


def redact(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask numbers, drop bodies above debug."""
    for key in PHONE_FIELDS.intersection(event_dict):
        event_dict[key] = _mask_value(event_dict[key])
    level = str(event_dict.get("level", method_name)).lower()
    if level not in ("debug", "notset"):
        for key in BODY_FIELDS.intersection(event_dict):
            del event_dict[key]
    return event_dict


class _CarrierdLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we installed, so reconfiguring replaces it."""


# syslog(3) priorities of our level names (sd-daemon(3) "<N>" prefixes).
SYSLOG_PRIORITY: Mapping[str, int] = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
    "notset": 7,
}


def stream_is_journal(stream: TextIO, journal_stream: str | None) -> bool:
    """True when `stream` is the journal systemd connected us to.

    systemd sets JOURNAL_STREAM to "<device>:<inode>" of the stream it gave
    the service; comparing them with the stream's own (not just looking for
    the variable) keeps the prefixes out of a pipe or file that a child of
    such a service writes to.
    """
    if not journal_stream:
        return False
    device, _, inode = journal_stream.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        # No file descriptor (a StringIO), or a malformed variable.
        return False


class _PriorityPrefixed:
    """A renderer whose lines start with the syslog priority of their level."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", method_name)).lower()
        priority = SYSLOG_PRIORITY.get(level, 6)
        return f"<{priority}>{self._renderer(logger, method_name, event_dict)}"


def configure_logging(
    level: str = "info", *, stream: TextIO | None = None, journal: bool | None = None
) -> None:
    """JSON lines on `stream` (stdout) for structlog and stdlib loggers alike.

    `journal`: prefix each line with its syslog priority (``<3>`` for an
    error); None decides by whether `stream` is the journal (JOURNAL_STREAM).
    Safe to call again (tests, SIGHUP with a new level): it replaces what an
    earlier call installed.
    """
    output = sys.stdout if stream is None else stream
    if journal is None:
        journal = stream_is_journal(output, os.environ.get("JOURNAL_STREAM"))
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Callable[..., Any] = structlog.processors.JSONRenderer(ensure_ascii=False)
    if journal:
        renderer = _PriorityPrefixed(renderer)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
    # asyncpg, aiohttp and the rest log through the standard library: give
    # them the same JSON lines and the same redaction.
    handler = _CarrierdLogHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _CarrierdLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


# -- metrics -----------------------------------------------------------------------

# Buckets span what each latency really ranges over: an SMSC answers a
# submit_sm in milliseconds, a receipt takes seconds to days (SoftBank's
# timeout is 1 h, the others' 72 h).
_SUBMIT_RESPONSE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_INTAKE_TO_SUBMIT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_RECEIPT_BUCKETS_S = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 24 * 3600)
_RCS_DELIVERY_BUCKETS_S = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600)
# Intake of 10,000 items takes a second or two; a CSV export streams longer.
_HTTP_REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# One request to the reassignment database (§13): tens of ms when well,
# up to its timeout (5 s by default) when not.
_REASSIGN_LOOKUP_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

# Label values come only from bounded sets: configured accounts, carriers and
# binds, the daemon's own enums and reason words, route templates. What a
# peer sends (a receipt's stat, an SMSC's command_status, an HTTP method) is
# mapped onto such a set here, so a broken or hostile peer cannot grow the
# series count.
RECEIPT_STATS: frozenset[str] = frozenset(
    {"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD", "ENROUTE"}
)
HTTP_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
)
OTHER = "other"
# The route label of a request that matched no route (404, 405).
UNMATCHED_ROUTE = "unmatched"


def receipt_stat_label(stat: str | None) -> str:
    """A receipt's stat as a label: one of RECEIPT_STATS, else "other"."""
    return stat if stat in RECEIPT_STATS else OTHER


def command_status_label(command_status: int) -> str:
    """ "ok", or the command_status in hex when SMPP 3.4 gives it a place
    (0x00-0xFF, vendor-specific 0x400-0x4FF: 512 values at most), else "other"."""
    if command_status == 0:
        return "ok"
    if 0 < command_status <= 0xFF or 0x400 <= command_status <= 0x4FF:
        return f"0x{command_status:08x}"
    return OTHER


def http_method_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER


# carrier -> (binds established again after a loss, bind attempts that failed),
# each counted since the daemon started.
BindCounts = Callable[[], Mapping[str, tuple[int, int]]]


class _BindCounters(Collector):
    """bind_reconnects_total and bind_failures_total, read from the SMPP
    sessions' own counters at scrape time (smpp/ knows nothing of Prometheus)."""

    def __init__(self) -> None:
        self.source: BindCounts | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        reconnects = CounterMetricFamily(
            "carrierd_bind_reconnects",
            "Binds established again after one was lost (the first bind of each "
            "connection is not counted).",
            labels=("carrier",),
        )
        failures = CounterMetricFamily(
            "carrierd_bind_failures",
            "Bind attempts that failed (no connection, refused, no answer in time).",
            labels=("carrier",),
        )
        counts = self.source() if self.source is not None else {}
        for carrier, (reconnected, failed) in sorted(counts.items()):
            reconnects.add_metric((carrier,), reconnected)
            failures.add_metric((carrier,), failed)
        yield reconnects
        yield failures


class Metrics:
    """Every metric of one daemon, in a registry of its own (never the
    process-global default registry: tests build as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # The process (CPU, memory, file descriptors), platform (Python
        # version) and garbage collector collectors of prometheus_client's
        # default registry, in ours: they read this process, whichever
        # registry shows them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self._bind_counters = _BindCounters()
        registry.register(self._bind_counters)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"carrierd_{name}", doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"carrierd_{name}", doc, list(labels), registry=registry)

        def histogram(
            name: str, doc: str, buckets: Iterable[float], labels: Iterable[str] = ()
        ) -> Histogram:
            return Histogram(
                f"carrierd_{name}", doc, list(labels), registry=registry, buckets=tuple(buckets)
            )

        # Counters.
        self.messages_accepted_total = counter(
            "messages_accepted_total", "Messages accepted at intake.", ("account", "channel")
        )
        self.messages_rejected_total = counter(
            "messages_rejected_total", "Messages refused at intake, by field.", ("field",)
        )
        self.parts_submitted_total = counter(
            "parts_submitted_total", "SMS parts handed to an SMSC.", ("carrier",)
        )
        self.submit_responses_total = counter(
            "submit_responses_total",
            "submit_sm_resp received; status is ok, the command_status in hex, or other "
            "(outside SMPP 3.4's ranges).",
            ("carrier", "status"),
        )
        self.receipts_total = counter(
            "receipts_total",
            "Delivery receipts received, by stat (other: not one SMPP 3.4 names).",
            ("carrier", "stat"),
        )
        self.receipts_unmatched_total = counter(
            "receipts_unmatched_total",
            "Receipts dropped after waiting for a part with their id that never came.",
            ("carrier",),
        )
        self.receipts_correlated_total = counter(
            "receipts_correlated_total",
            "Receipts whose id matched no part, given to the one part their recipient, "
            "submit date and text fit (its submit_sm_resp was lost).",
            ("carrier",),
        )
        self.receipts_ambiguous_total = counter(
            "receipts_ambiguous_total",
            "Receipts whose id matched no part and that two or more parts fitted: "
            "left unmatched rather than guessed.",
            ("carrier",),
        )
        self.messages_final_total = counter(
            "messages_final_total", "Messages that reached a final state.", ("channel", "state")
        )
        self.transitions_total = counter(
            "transitions_total",
            "Message state changes applied by the lifecycle writer.",
            ("from_state", "to_state"),
        )
        self.fallbacks_total = counter(
            "fallbacks_total", "+Message messages sent as SMS instead, by cause.", ("cause",)
        )
        self.expiries_total = counter(
            "expiries_total", "Messages expired without delivery.", ("channel",)
        )
        self.discards_total = counter(
            "discards_total", "+Message discard requests, by the platform's answer.", ("outcome",)
        )
        self.reroutes_total = counter(
            "reroutes_total",
            "Sends moved to another carrier after 'not our subscriber'.",
            ("from_carrier",),
        )
        self.resends_total = counter(
            "resends_total", "System resends after a failure receipt.", ("carrier",)
        )
        self.throttled_total = counter(
            "throttled_total", "Throttling answers from an SMSC.", ("carrier",)
        )
        # No month label: it would add series every month, for ever. The
        # monthly figures are GET /v1/billing; increase() over a month range
        # of this counter gives the same.
        self.billing_units_total = counter(
            "billing_units_total", "Billable units counted.", ("account", "channel")
        )
        self.webhooks_rejected_total = counter(
            "webhooks_rejected_total", "Inbound webhooks refused, by reason.", ("reason",)
        )
        self.callbacks_total = counter(
            "callbacks_total", "Status callback attempts, by outcome.", ("outcome",)
        )
        self.http_connections_closed_total = counter(
            "http_connections_closed_total",
            "HTTP connections the server closed on a client (idle_timeout, "
            "header_timeout, body_timeout, displaced, over_limit).",
            ("reason",),
        )
        self.http_requests_total = counter(
            "http_requests_total",
            "HTTP requests answered, by route template (unmatched: no route), method "
            "and status code.",
            ("route", "method", "status"),
        )
        self.mo_received_total = counter(
            "mo_received_total",
            "Messages from handsets received: SMS MO (sms; an SMSC's redelivery "
            "counts again) and +Message replies and taps (rcs).",
            ("channel",),
        )

        # Gauges.
        self.queue_depth = gauge(
            "queue_depth", "Open messages in the database.", ("state", "account")
        )
        self.queue_oldest_age_seconds = gauge(
            "queue_oldest_age_seconds",
            "How long the oldest open message has waited.",
            ("state", "account"),
        )
        self.binds = gauge("binds", "SMPP binds by state.", ("carrier", "state"))
        self.window_in_use = gauge(
            "window_in_use", "Requests awaiting a response on a bind.", ("carrier", "bind")
        )
        self.bind_send_rate_per_s = gauge(
            "bind_send_rate_per_s",
            "Submits a second a bind sends at most now: its submit_rate_per_s, or lower "
            "while the SMSC throttles (+Inf: no limit).",
            ("carrier", "bind"),
        )
        self.delivers_unanswered = gauge(
            "delivers_unanswered",
            "deliver_sm received on a bind and not yet answered (not yet durable).",
            ("carrier", "bind"),
        )
        self.bucket_tokens = gauge(
            "bucket_tokens", "Tokens left in the account's rate bucket.", ("account",)
        )
        self.au_gate_held = gauge(
            "au_gate_held", "au numbers waiting out the spacing after their last receipt."
        )
        self.callbacks_pending = gauge(
            "callbacks_pending", "Status callbacks not yet delivered (due or waiting to retry)."
        )
        self.callbacks_oldest_pending_age_seconds = gauge(
            "callbacks_oldest_pending_age_seconds",
            "How long the oldest undelivered status callback has waited (0: none).",
        )
        self.database_up = gauge(
            "database_up",
            "1 when the database answered the daemon's last probe, 0 when it did not.",
        )
        self.build = Info(
            "carrierd_build", "The running carrierd and the Python it runs on.", registry=registry
        )
        self.build.info(
            {
                "version": carrierd.__version__,
                "python": platform.python_version(),
            }
        )

        # §13: verdicts per message (no_history, history, lookup_failed).
        self.reassign_verdicts_total = counter(
            "reassign_verdicts_total",
            "Reassigned-number checks by outcome.",
            ("verdict",),
        )

        # §12: the public link server's answers, by what each was (LINK_ANSWERS).
        self.link_answers_total = counter(
            "link_answers_total",
            "Answers of the public link server: redirect, optout_page, optout_confirmed, "
            "optout_list_full, csrf_refused, expired, unknown, rate_limited, unavailable.",
            ("answer",),
        )

        # Histograms.
        self.reassign_lookup_seconds = histogram(
            "reassign_lookup_seconds",
            "One request to the reassignment database, by outcome (ok, timeout, ...).",
            _REASSIGN_LOOKUP_BUCKETS_S,
            ("outcome",),
        )
        self.intake_to_submit_seconds = histogram(
            "intake_to_submit_seconds",
            "From acceptance to the first part handed to an SMSC.",
            _INTAKE_TO_SUBMIT_BUCKETS_S,
        )
        self.submit_response_seconds = histogram(
            "submit_response_seconds",
            "From submit_sm to its submit_sm_resp.",
            _SUBMIT_RESPONSE_BUCKETS_S,
            ("carrier",),
        )
        self.receipt_seconds = histogram(
            "receipt_seconds",
            "From submit_sm_resp to the delivery receipt.",
            _RECEIPT_BUCKETS_S,
            ("carrier",),
        )
        self.rcs_delivery_seconds = histogram(
            "rcs_delivery_seconds",
            "From +Message send to its delivery report.",
            _RCS_DELIVERY_BUCKETS_S,
        )
        self.http_request_duration_seconds = histogram(
            "http_request_duration_seconds",
            "From a request's handler being called to its response, by route template.",
            _HTTP_REQUEST_BUCKETS_S,
            ("route", "method"),
        )

        # (state, account) pairs the queue gauges have reported: a pair that
        # empties reads 0 rather than vanishing from the graph.
        self._queue_label_pairs: set[tuple[str, str]] = set()
        # (route, method, status) -> its counter and histogram children.
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # prometheus_client's own handler: gzip when the scraper accepts it,
        # OpenMetrics when it asks for it, name[] filters.
        self._exposition = make_aiohttp_handler(self.registry)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        """Answer a scrape of /metrics."""
        return self._exposition(request)

    def count_binds_from(self, source: BindCounts) -> None:
        """Where bind_reconnects_total and bind_failures_total are read."""
        self._bind_counters.source = source

    def observe_http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests_total.labels(route, method, str(status)),
                self.http_request_duration_seconds.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def exported_names(self) -> frozenset[str]:
        """Every series name a scrape can show (with _total, _bucket...)."""
        names: set[str] = set()
        for family in self.registry.collect():
            if family.type == "counter":
                names.update({f"{family.name}_total", f"{family.name}_created"})
            elif family.type == "histogram":
                suffixes = ("_bucket", "_sum", "_count", "_created")
                names.update(family.name + s for s in suffixes)
            elif family.type == "info":
                names.add(f"{family.name}_info")
            else:
                names.add(family.name)
        return frozenset(names)

    def set_queue_gauges(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the queue gauges with `rows` (state, account_id, depth,
        oldest_age_s); pairs seen before but absent now read 0."""
        current = {(str(r["state"]), str(r["account_id"])): r for r in rows}
        for pair in self._queue_label_pairs - current.keys():
            self.queue_depth.labels(*pair).set(0)
            self.queue_oldest_age_seconds.labels(*pair).set(0)
        for pair, row in current.items():
            self.queue_depth.labels(*pair).set(float(row["depth"]))
            self.queue_oldest_age_seconds.labels(*pair).set(float(row["oldest_age_s"]))
        self._queue_label_pairs |= current.keys()


class SubmitMetrics:
    """One carrier's submit_responses_total, submit_response_seconds and
    throttled_total, fed by its SMPP sessions (``smpp.session.SubmitObserver``:
    smpp/ knows nothing of Prometheus)."""

    __slots__ = ("_by_status", "_carrier", "_metrics", "_response_seconds", "_throttled")

    def __init__(self, metrics: Metrics, carrier: str) -> None:
        self._metrics = metrics
        self._carrier = carrier
        # labels() takes a lock and builds a key on every call; at 5,000
        # answers a second the few children there are stay in hand.
        self._by_status: dict[int, Any] = {}
        self._response_seconds = metrics.submit_response_seconds.labels(carrier)
        self._throttled = metrics.throttled_total.labels(carrier)

    def submit_answered(self, command_status: int, elapsed_s: float) -> None:
        counter = self._by_status.get(command_status)
        if counter is None:
            label = command_status_label(command_status)
            counter = self._metrics.submit_responses_total.labels(self._carrier, label)
            if label != OTHER:  # the cache stays as bounded as the labels
                self._by_status[command_status] = counter
        counter.inc()
        self._response_seconds.observe(elapsed_s)

    def throttled(self) -> None:
        self._throttled.inc()
