"""The example Prometheus configuration and alert rules: promtool accepts
them, the rules' unit tests pass, and every series they read is one the
daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from carrierd.telemetry import Metrics
from tests.grafana_dashboard import metric_names

PROMETHEUS = Path(__file__).resolve().parents[2] / "conf/prometheus"
RULES = PROMETHEUS / "carrierd.rules.yml"
# Written by Prometheus itself for every target.
SCRAPE_SERIES = frozenset({"up"})
ALERTS = (
    "CarrierdDown",
    "CarrierdNoBind",
    "CarrierdQueueAge",
    "CarrierdReceiptsUnanswered",
    "CarrierdCallbacksFailing",
    "CarrierdCallbackBacklog",
    "CarrierdDatabaseDown",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run(
        [path, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def rule_expressions(text: str) -> dict[str, str]:
    """alert name -> its expression (one line, or a folded block)."""
    found: dict[str, str] = {}
    pattern = re.compile(r"- alert: (\w+)\n(?:\s*#.*\n)*\s*expr: (?:>-\n((?:\s{10,}.*\n)+)|(.*)\n)")
    for match in pattern.finditer(text):
        found[match.group(1)] = " ".join((match.group(2) or match.group(3)).split())
    return found


def test_promtool_checks_the_rules_and_the_configuration() -> None:
    rules = promtool("check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "carrierd.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_read_only_exported_series() -> None:
    expressions = rule_expressions(RULES.read_text(encoding="utf-8"))
    assert tuple(expressions) == ALERTS
    exported = Metrics().exported_names() | SCRAPE_SERIES
    for alert, expression in expressions.items():
        names = metric_names(expression)
        assert names, (alert, expression)
        assert names <= exported, (alert, sorted(names - exported))
