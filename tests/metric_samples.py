"""Reading a daemon's counters back in tests, from its own registry."""

from __future__ import annotations

from carrierd.telemetry import Metrics


def counter_values(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """The counter `name` (as exported, without _total) by `label`."""
    return {
        sample.labels[label]: sample.value
        for family in metrics.registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_total")
    }
