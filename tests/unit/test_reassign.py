"""The reassigned-number rule (DOMAIN §13): the base date's clamp, the
verdict from an invalidity history, the moves and billing units of each
outcome, and intake's checks of the field."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.config import ConfigError, parse_config
from carrierd.domain import reasons
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.reassign import (
    INVALID_RUN_MONTHS,
    Judged,
    LookupFailed,
    Verdict,
    after_lookup,
    base_date_problem,
    carried,
    check_units,
    checked_base_date,
    earliest_base_date,
    judge,
    month_index,
    month_of,
    month_text,
    parse_month,
)
from carrierd.domain.states import State
from carrierd.intake import request_sha256, validate_batch
from carrierd.sim.reassign import (
    ReassignSim,
    ReassignSimConfig,
    ReassignSimDataError,
    config_from,
    load_histories,
)

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)  # 12:00 JST


# -- the base date ------------------------------------------------------------------


def test_no_base_date_means_no_check() -> None:
    assert checked_base_date(None, NOW) is None


def test_a_base_date_within_two_years_is_checked_as_given() -> None:
    assert checked_base_date(date(2025, 6, 1), NOW) == date(2025, 6, 1)
    assert checked_base_date(date(2024, 12, 1), NOW) == date(2024, 12, 1)


def test_an_older_base_date_is_clamped_to_two_years_before_now() -> None:
    assert checked_base_date(date(2024, 11, 30), NOW) == date(2024, 12, 1)
    assert checked_base_date(date(2019, 1, 1), NOW) == date(2024, 12, 1)


def test_the_clamp_counts_in_jst_dates() -> None:
    # 2026-12-01 15:30 UTC is already 2 December in Japan.
    late = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert earliest_base_date(late) == date(2024, 12, 2)
    assert earliest_base_date(datetime(2026, 12, 1, 14, 59, tzinfo=UTC)) == date(2024, 12, 1)


def test_the_clamp_from_29_february_goes_to_the_28th() -> None:
    leap_day = datetime(2028, 2, 29, 3, 0, tzinfo=UTC)
    assert earliest_base_date(leap_day) == date(2026, 2, 28)


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 12, 31)),
    st.datetimes(
        min_value=datetime(2010, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
)
def test_the_checked_date_is_never_older_than_two_years_nor_moved_otherwise(
    base: date, now: datetime
) -> None:
    checked = checked_base_date(base, now)
    assert checked is not None
    earliest = earliest_base_date(now)
    assert checked >= earliest
    assert checked == base or (base < earliest and checked == earliest)
    assert timedelta(days=2 * 365) <= now.date() - earliest + timedelta(days=1)


def test_intake_refuses_a_base_date_in_the_future_of_japan() -> None:
    assert base_date_problem(date(2026, 12, 1), NOW) is None
    assert base_date_problem(date(2026, 12, 2), NOW) is not None
    # 15:30 UTC on the 1st is the 2nd in Japan: the 2nd is today there.
    assert base_date_problem(date(2026, 12, 2), datetime(2026, 12, 1, 15, 30, tzinfo=UTC)) is None


# -- the verdict --------------------------------------------------------------------


def months(*texts: str) -> set[int]:
    return {parse_month(t) for t in texts}


def test_three_consecutive_invalid_months_since_the_base_date_are_a_history() -> None:
    history = months("2025-03", "2025-04", "2025-05")
    assert judge(history, date(2025, 1, 15), parse_month("2026-11")) is Verdict.HISTORY


def test_two_invalid_months_or_three_apart_are_no_history() -> None:
    data = parse_month("2026-11")
    assert judge(months("2025-03", "2025-04"), date(2025, 1, 1), data) is Verdict.NO_HISTORY
    spread = months("2025-03", "2025-04", "2025-06", "2025-07")
    assert judge(spread, date(2025, 1, 1), data) is Verdict.NO_HISTORY


def test_only_months_from_the_base_date_month_to_the_data_month_count() -> None:
    run = months("2025-03", "2025-04", "2025-05")
    data = parse_month("2026-11")
    # Base date in the run's first month: the whole run counts.
    assert judge(run, date(2025, 3, 31), data) is Verdict.HISTORY
    # Base date in its second month: two months left, no history (the
    # number changed hands before the consent, if at all).
    assert judge(run, date(2025, 4, 1), data) is Verdict.NO_HISTORY
    # Data that ends inside the run sees only its start.
    assert judge(run, date(2025, 1, 1), parse_month("2025-04")) is Verdict.NO_HISTORY
    assert judge(run, date(2025, 1, 1), parse_month("2025-05")) is Verdict.HISTORY


def test_a_run_across_new_year_is_consecutive() -> None:
    run = months("2025-11", "2025-12", "2026-01")
    assert judge(run, date(2025, 10, 1), parse_month("2026-11")) is Verdict.HISTORY


def test_months_round_trip_through_text() -> None:
    for year, month in ((2024, 1), (2025, 12), (1999, 7)):
        index = month_index(year, month)
        assert parse_month(month_text(index)) == index
        assert month_of(date(year, month, 28)) == index
    for bad in ("2025-13", "2025-00", "25-01", "2025-1", "2025-01-01"):
        with pytest.raises(ValueError):
            parse_month(bad)


def _brute_force(invalid: set[int], base: date, data_month: int) -> Verdict:
    for start in range(month_of(base), data_month - INVALID_RUN_MONTHS + 2):
        if all(start + k in invalid for k in range(INVALID_RUN_MONTHS)):
            return Verdict.HISTORY
    return Verdict.NO_HISTORY


@given(
    st.sets(st.integers(month_index(2023, 1), month_index(2027, 12)), max_size=30),
    st.dates(min_value=date(2023, 1, 1), max_value=date(2027, 12, 31)),
    st.integers(month_index(2023, 1), month_index(2027, 12)),
)
def test_the_verdict_is_a_run_of_three_inside_the_window(
    invalid: set[int], base: date, data_month: int
) -> None:
    assert judge(invalid, base, data_month) is _brute_force(invalid, base, data_month)


@given(
    st.sets(st.integers(month_index(2024, 1), month_index(2026, 12)), max_size=20),
    st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31)),
    st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31)),
)
def test_an_earlier_base_date_never_turns_a_history_into_none(
    invalid: set[int], one: date, other: date
) -> None:
    earlier, later = sorted((one, other))
    data = month_index(2026, 12)
    if judge(invalid, later, data) is Verdict.HISTORY:
        assert judge(invalid, earlier, data) is Verdict.HISTORY


# -- outcomes: moves and billing ------------------------------------------------------


def test_no_history_queues_the_message_again_billed_one_unit() -> None:
    move = after_lookup(
        7, Judged(Verdict.NO_HISTORY, "2026-11"), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    assert (move.src, move.dst, move.event) == (
        State.DISPATCHING,
        State.QUEUED,
        Event.REASSIGNMENT_CHECKED,
    )
    assert move.reason is None
    assert move.detail == {
        "base_date": "2025-01-01",
        "verdict": "no_history",
        "data_month": "2026-11",
    }
    assert (move.reassign_units, move.billed_at) == (1, NOW)


def test_a_passing_verdict_rides_on_the_leg_move_from_dispatching() -> None:
    verdict = after_lookup(
        7, Judged(Verdict.NO_HISTORY, "2026-11"), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    sending = Move(7, State.QUEUED, State.SENDING, Event.SENDING, leg="sms", detail={"attempt": 1})
    move = carried(sending, verdict)
    assert (move.src, move.dst, move.event, move.leg) == (
        State.DISPATCHING,
        State.SENDING,
        Event.SENDING,
        "sms",
    )
    assert (move.reassign_verdict, move.reassign_data_month) == ("no_history", "2026-11")
    assert (move.reassign_units, move.billed_at) == (1, NOW)
    assert (move.first_event, move.first_detail) == (Event.REASSIGNMENT_CHECKED, verdict.detail)
    assert move.detail == {"attempt": 1}
    # A wait of the leg (the au gate) goes back to queued with the verdict kept.
    held = Move(7, State.QUEUED, State.QUEUED, Event.AU_GATE_HOLD, wait="au gate")
    assert carried(held, verdict).src is State.DISPATCHING


# What `carried` takes from the verdict; every other field is the leg move's.
_FROM_VERDICT = {
    "src": "src",
    "reassign_units": "reassign_units",
    "reassign_verdict": "reassign_verdict",
    "reassign_data_month": "reassign_data_month",
    "billed_at": "billed_at",
    "first_event": "event",
    "first_detail": "detail",
}


@pytest.mark.parametrize("dst", [State.SENDING, State.QUEUED])
def test_carrying_keeps_every_field_of_the_leg_move_but_the_verdicts(dst: State) -> None:
    verdict = after_lookup(
        7, Judged(Verdict.NO_HISTORY, "2026-11"), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    # A distinct value in every field a leg move may set, so that a field
    # dropped, or one shifted onto its neighbour, shows.
    at = [NOW + timedelta(seconds=n) for n in range(1, 8)]
    leg = Move(
        7,
        State.QUEUED,
        dst,
        Event.SENDING if dst is State.SENDING else Event.AU_GATE_HOLD,
        reason=reasons.VALIDITY_EXPIRED,
        detail={"attempt": 2},
        not_before=at[0],
        receipt_deadline=at[1],
        fallback_at=at[2],
        expires_at=at[3],
        submitted_at=at[4],
        leg="sms",
        carrier="kddi",
        route="direct",
        attempt=2,
        resends_done=1,
        wrong_carrier=True,
        **(
            {"lease_owner": "d1/abc", "lease_until": at[5]}
            if dst is State.SENDING
            else {"wait": "au gate"}
        ),
    )
    move = carried(leg, verdict)
    names = [f.name for f in fields(Move)]
    assert set(_FROM_VERDICT) <= set(names)
    for name in names:
        source, source_name = (
            (verdict, _FROM_VERDICT[name]) if name in _FROM_VERDICT else (leg, name)
        )
        want = getattr(source, source_name)
        assert getattr(move, name) == want, name
    # A field Move gains must be thought about here and in `carried`.
    assert len(names) == 29


def test_only_a_passing_verdict_rides_and_only_on_its_own_message() -> None:
    passing = after_lookup(
        7, Judged(Verdict.NO_HISTORY, "2026-11"), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    skipping = after_lookup(
        7, Judged(Verdict.HISTORY, "2026-11"), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    sending = Move(7, State.QUEUED, State.SENDING, Event.SENDING)
    with pytest.raises(ValueError, match="only a passing verdict"):
        carried(sending, skipping)
    with pytest.raises(ValueError, match="not a leg move"):
        carried(Move(8, State.QUEUED, State.SENDING, Event.SENDING), passing)
    billed = Move(7, State.QUEUED, State.QUEUED, Event.FALLBACK, rcs_units=1, billed_at=NOW)
    with pytest.raises(ValueError, match="its own bill"):
        carried(billed, passing)


def test_history_skips_the_message_billed_one_unit_naming_the_clamp() -> None:
    move = after_lookup(
        7, Judged(Verdict.HISTORY, "2026-11"), date(2020, 5, 5), date(2024, 12, 1), NOW
    )
    assert (move.dst, move.reason) == (State.SKIPPED, reasons.REASSIGNED_NUMBER)
    assert move.detail == {
        "base_date": "2020-05-05",
        "checked_from": "2024-12-01",
        "verdict": "history",
        "data_month": "2026-11",
    }
    assert move.reassign_units == 1


def test_a_failed_lookup_skips_the_message_unbilled() -> None:
    move = after_lookup(
        7, LookupFailed("timeout: no answer", 3), date(2025, 1, 1), date(2025, 1, 1), NOW
    )
    assert (move.dst, move.reason) == (State.SKIPPED, reasons.REASSIGNMENT_LOOKUP_FAILED)
    assert move.detail is not None and move.detail["attempts"] == 3
    assert move.reassign_units == 0
    assert check_units(LookupFailed("x")) == 0
    assert check_units(Judged(Verdict.HISTORY, "2026-11")) == 1


# -- intake ----------------------------------------------------------------------------


ACCOUNT = parse_config(
    {"database": {"dsn": "postgresql://x/y"}, "accounts": {"acme": {"tokens": ["t"]}}}, env={}
).accounts["acme"]


def _intake(check: object, *, enabled: bool = True) -> tuple[str, str] | dict[str, object]:
    batch = validate_batch(
        {"messages": [{"to": "090-1234-5678", "sms": {"text": "こんにちは"}, **check}]},  # type: ignore[dict-item]
        ACCOUNT,
        NOW,
        max_items=10,
        expiry_s=3600,
        reassign_enabled=enabled,
    )
    if batch.rejected:
        return batch.rejected[0].field, batch.rejected[0].reason
    return batch.rows[0]


def test_intake_stores_the_base_date_and_none_without_a_check() -> None:
    row = _intake({"reassigned_check": {"base_date": "2025-04-01"}})
    assert isinstance(row, dict) and row["reassign_base_date"] == date(2025, 4, 1)
    for absent in ({}, {"reassigned_check": None}):
        row = _intake(absent)
        assert isinstance(row, dict) and row["reassign_base_date"] is None


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ("2026-12-02", "reassigned_check.base_date", "in the future"),
        ("2025-02-30", "reassigned_check.base_date", "not a date"),
        ("20250401", "reassigned_check.base_date", "not a date"),
        ("yesterday", "reassigned_check.base_date", "not a date"),
    ],
)
def test_intake_names_the_field_of_a_bad_base_date(value: str, field: str, words: str) -> None:
    rejected = _intake({"reassigned_check": {"base_date": value}})
    assert isinstance(rejected, tuple)
    assert rejected[0] == field and words in rejected[1]


def test_intake_refuses_a_check_without_a_base_date_or_a_service() -> None:
    assert _intake({"reassigned_check": {}}) == (
        "reassigned_check.base_date",
        "required (YYYY-MM-DD): the date the number's consent dates from",
    )
    rejected = _intake({"reassigned_check": {"base_date": "2025-04-01"}}, enabled=False)
    assert isinstance(rejected, tuple) and rejected[0] == "reassigned_check"
    assert "not configured" in rejected[1]


def test_the_base_date_is_part_of_the_content_but_leaves_other_hashes_alone() -> None:
    plain = _intake({})
    checked = _intake({"reassigned_check": {"base_date": "2025-04-01"}})
    other = _intake({"reassigned_check": {"base_date": "2025-04-02"}})
    assert isinstance(plain, dict) and isinstance(checked, dict) and isinstance(other, dict)
    assert len({plain["request_sha256"], checked["request_sha256"], other["request_sha256"]}) == 3
    # A message without the check hashes as it did before the field existed.
    without_key = {k: v for k, v in plain.items() if k != "reassign_base_date"}
    assert request_sha256(without_key) == plain["request_sha256"]


# -- configuration -----------------------------------------------------------------------


def _config_problems(reassign: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    raw = {
        "database": {"dsn": "postgresql://x/y"},
        "accounts": {"acme": {"tokens": ["t"]}},
        "reassign": reassign,
    }
    try:
        parse_config(raw, env=env or {})
    except ConfigError as exc:
        return exc.problems
    return []


def test_the_reassign_section_is_checked_key_by_key() -> None:
    assert _config_problems({}) == []
    assert _config_problems({"url": "http://db.example/", "token": "t"}) == []
    problems = _config_problems(
        {"url": "ftp://db", "batch_size": 0, "concurrency": 65, "timeout_s": "5", "colour": 1}
    )
    assert any(p.startswith("reassign.url: expected an http(s) URL") for p in problems)
    assert any(p.startswith("reassign.token: required when reassign.url is set") for p in problems)
    assert "reassign.batch_size: must be >= 1" in problems
    assert "reassign.concurrency: must be <= 64" in problems
    assert "reassign.timeout_s: expected an integer or a number, got str" in problems
    assert "reassign.colour: unknown key" in problems


def test_the_token_may_come_from_the_environment() -> None:
    raw = {
        "database": {"dsn": "postgresql://x/y"},
        "reassign": {"url": "http://db.example"},
    }
    config = parse_config(raw, env={"CARRIERD_REASSIGN_TOKEN": "from-env"})
    assert config.reassign.enabled and config.reassign.token == "from-env"
    assert config.overridden["reassign.token"] == "CARRIERD_REASSIGN_TOKEN"
    assert not parse_config({"database": {"dsn": "postgresql://x/y"}}, env={}).reassign.enabled


# -- the simulator's data ------------------------------------------------------------------


def test_the_simulator_judges_its_data_file_by_the_same_rule(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    path.write_text(
        json.dumps(
            {
                "data_month": "2026-10",
                "numbers": {
                    "+819011112222": ["2025-03", "2025-04", "2025-05"],
                    "+819011113333": [],
                },
            }
        )
    )
    config = config_from(
        {
            "token": "t",
            "seed": 1,
            "data_month": "",
            "data": str(path),
            "reassigned_share": 0.0,
            "error_share": 0.0,
            "malformed_share": 0.0,
            "latency_ms": 0.0,
            "jitter_ms": 0.0,
        }
    )
    sim = ReassignSim(config, now=lambda: NOW)
    assert config.data_month == "2026-10"
    judged = sim.verdict_of("+819011112222", date(2025, 1, 1))
    assert judged == {
        "number": "+819011112222",
        "base_date": "2025-01-01",
        "verdict": "history",
        "data_month": "2026-10",
    }
    assert sim.verdict_of("+819011112222", date(2025, 4, 1))["verdict"] == "no_history"
    assert sim.verdict_of("+819011113333", date(2025, 1, 1))["verdict"] == "no_history"
    # Any other number: generated, and with a zero share never a history.
    assert sim.invalid_months("+819099999999") == frozenset()


def test_generated_histories_are_stable_and_at_about_their_share() -> None:
    config = ReassignSimConfig(seed=5, data_month="2026-10", reassigned_share=0.1, gap_share=0.1)
    sim, again = ReassignSim(config), ReassignSim(config)
    numbers = [f"+81908888{n:04d}" for n in range(2000)]
    verdicts = [sim.verdict_of(n, date(2024, 10, 1))["verdict"] for n in numbers]
    assert verdicts == [again.verdict_of(n, date(2024, 10, 1))["verdict"] for n in numbers]
    assert 120 < verdicts.count("history") < 280


def test_a_broken_data_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    for text, words in (
        ("{", "numbers.json"),
        ('{"numbers": {"+819011112222": ["2025-13"]}}', "numbers.+819011112222"),
        ('{"numbers": []}', "expected"),
    ):
        path.write_text(text)
        with pytest.raises(ReassignSimDataError, match=words.replace("+", r"\+")):
            load_histories(path)


# -- the client's reading of an answer ------------------------------------------------


@pytest.mark.parametrize(
    ("results", "why"),
    [
        ([{"number": "+819011110001", "verdict": "history", "data_month": "2026-10"}], "1 results"),
        (
            [
                {"number": "+819011110001", "verdict": "no_history", "data_month": "2026-10"},
                {"number": "+819011110009", "verdict": "no_history", "data_month": "2026-10"},
            ],
            "another number",
        ),
        (
            [
                {"number": "+819011110001", "verdict": "no_history", "data_month": "2026-10"},
                {"number": "+819011110002", "verdict": "maybe", "data_month": "2026-10"},
            ],
            r"results\[1\].verdict",
        ),
        (
            [
                {"number": "+819011110001", "verdict": "no_history", "data_month": "2026-10"},
                {"number": "+819011110002", "verdict": "no_history", "data_month": {"m": 1}},
            ],
            r"results\[1\].data_month",
        ),
        (
            [
                {"number": "+819011110001", "verdict": "no_history", "data_month": "2026-10"},
                {"number": "+819011110002", "verdict": "no_history", "data_month": "2026-13"},
            ],
            r"results\[1\].data_month",
        ),
    ],
)
def test_the_client_refuses_an_answer_it_cannot_read_naming_the_result(
    results: list[object], why: str
) -> None:
    from carrierd.channels.reassign import Lookup, _Failed, _results

    asked = [Lookup("+819011110001", date(2025, 1, 1)), Lookup("+819011110002", date(2025, 1, 1))]
    with pytest.raises(_Failed, match=why):
        _results(json.dumps({"results": results}).encode(), asked)


def test_the_client_reads_each_verdict_in_order() -> None:
    from carrierd.channels.reassign import Lookup, _results

    numbers = ["+819011110001", "+819011110002", "+819011110003"]
    verdicts = ["no_history", "history", "no_history"]
    answer = {
        "results": [
            {"number": n, "verdict": v, "data_month": "2026-10"}
            for n, v in zip(numbers, verdicts, strict=True)
        ]
    }
    judged = _results(json.dumps(answer).encode(), [Lookup(n, date(2025, 1, 1)) for n in numbers])
    assert [(j.verdict.value, j.data_month) for j in judged] == [(v, "2026-10") for v in verdicts]
