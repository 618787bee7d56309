"""The short chaos campaign (`make chaos` runs the long one): 2,000 messages
through a daemon process killed once with work in flight, then through one
whose PostgreSQL restarts, judged from the SMSC simulator's journal as well
as from the database: nothing accepted stays open, no part is accepted
twice by the SMSC, and every part the SMSC delivered is billed. Once more
with the reassigned-number check on every message, killed while lookups
are in flight: each message judged and billed once, none sent unjudged."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from bench.chaos import (
    SHORT_CHECKED_KILL,
    SHORT_DAEMON_KILL,
    SHORT_PG_RESTART,
    SHORT_SETTINGS,
    Outcome,
    report_lines,
    run_scenario,
    throwaway_postgres,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    settings = replace(SHORT_SETTINGS, out_dir=tmp_path_factory.mktemp("chaos"))
    with throwaway_postgres() as postgres:
        yield {
            scenario.name: run_scenario(scenario, settings, postgres)
            for scenario in (SHORT_DAEMON_KILL, SHORT_PG_RESTART, SHORT_CHECKED_KILL)
        }


def _explain(outcome: Outcome) -> str:
    return "\n".join(report_lines(outcome))


def test_a_killed_daemon_loses_and_duplicates_nothing(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[SHORT_DAEMON_KILL.name]
    assert outcome.messages == SHORT_SETTINGS.messages, _explain(outcome)
    assert outcome.lost == 0, _explain(outcome)
    assert outcome.duplicates == 0, _explain(outcome)
    assert outcome.shared_ids == [], _explain(outcome)


def test_a_killed_daemon_bills_every_part_the_smsc_delivered(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes[SHORT_DAEMON_KILL.name]
    assert outcome.unbilled == 0, _explain(outcome)
    assert outcome.billing_counts_gap == 0, _explain(outcome)


def test_a_postgresql_restart_duplicates_nothing(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[SHORT_PG_RESTART.name]
    assert outcome.messages == SHORT_SETTINGS.messages, _explain(outcome)
    assert outcome.duplicates == 0, _explain(outcome)
    assert outcome.shared_ids == [], _explain(outcome)


def test_a_postgresql_restart_loses_nothing_and_bills_every_delivered_part(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes[SHORT_PG_RESTART.name]
    assert outcome.lost == 0, _explain(outcome)
    assert outcome.unbilled == 0, _explain(outcome)
    assert outcome.billing_counts_gap == 0, _explain(outcome)


def test_a_daemon_killed_mid_lookup_judges_and_bills_each_message_once(
    outcomes: dict[str, Outcome],
) -> None:
    outcome = outcomes[SHORT_CHECKED_KILL.name]
    assert outcome.messages == SHORT_SETTINGS.messages, _explain(outcome)
    assert outcome.lost == 0 and outcome.duplicates == 0, _explain(outcome)
    judged = outcome.verdicts["no_history"] + outcome.verdicts["history"]
    assert judged + outcome.verdicts["none"] == outcome.messages, _explain(outcome)
    assert outcome.checks_billed == judged, _explain(outcome)
    assert outcome.sent_unpassed == 0, _explain(outcome)
    assert outcome.unbilled == 0 and outcome.billing_counts_gap == 0, _explain(outcome)
