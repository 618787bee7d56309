"""What a reload (SIGHUP) applies, and what waits for the next start."""

from __future__ import annotations

from typing import Any

from carrierd.config import parse_config, reloaded

BASE: dict[str, Any] = {
    "database": {"dsn": "postgresql://localhost/x"},
    "accounts": {"acme": {"tokens": ["t"]}},
    "links": {
        "enabled": True,
        "domain": "s.kmc.jp",
        "csrf_secret": "reload-test-secret",
        "port": 8081,
        "burst": 60,
    },
}


def config(**links: Any) -> Any:
    return parse_config({**BASE, "links": {**BASE["links"], **links}}, env={})


def test_the_link_limits_apply_and_the_listener_waits_for_a_restart() -> None:
    running = config()
    applied, waiting = reloaded(running, config(burst=5, port=9090, domain="t.kmc.jp"))
    assert (applied.links.burst, applied.links.domain) == (5, "t.kmc.jp")
    assert applied.links.port == 8081
    assert waiting == ["links.port"]


def test_links_turned_on_by_a_reload_stay_off_until_a_start() -> None:
    # Intake would mint links that no running server serves.
    running = parse_config({**BASE, "links": {"enabled": False}}, env={})
    applied, waiting = reloaded(running, config())
    assert not applied.links.enabled
    assert waiting == ["links.enabled"]


def test_the_gate_keeps_its_workers_and_an_unchanged_reload_waits_for_nothing() -> None:
    running = config()
    more = parse_config({**BASE, "reassign": {"concurrency": 9}}, env={})
    assert reloaded(running, more)[1] == ["reassign.concurrency"]
    assert reloaded(running, config()) == (config(), [])
