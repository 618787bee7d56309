"""The adaptive send rate of a bind (smpp/send_rate.py), on a fake clock:
plain numbers for time, an SMSC modelled as a token bucket."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carrierd.smpp.send_rate import (
    MAX_STEP_GAP_S,
    SendRate,
    SendRatePolicy,
    SubmitAnswer,
    send_rate_after,
)

CEILING_50 = SendRatePolicy.for_carrier(submit_rate_per_s=50.0, throttle_pause_s=1.0)
NO_CEILING = SendRatePolicy.for_carrier(submit_rate_per_s=0.0, throttle_pause_s=1.0)


def answer(
    rate: SendRate,
    what: SubmitAnswer,
    now_s: float,
    policy: SendRatePolicy,
    *,
    written_at_s: float | None = None,
    backlogged: bool = True,
    unanswered: int = 0,
) -> SendRate:
    return send_rate_after(
        rate,
        what,
        now_s,
        written_at_s=now_s - 0.01 if written_at_s is None else written_at_s,
        backlogged=backlogged,
        unanswered=unanswered,
        policy=policy,
    )


def accepted_every(
    rate: SendRate, policy: SendRatePolicy, start_s: float, end_s: float, step_s: float = 0.1
) -> SendRate:
    now_s = start_s
    while now_s < end_s - 1e-9:
        now_s += step_s
        rate = answer(rate, "accepted", now_s, policy)
    return rate


def test_policy_takes_its_ceiling_and_floor_from_the_carrier() -> None:
    assert (CEILING_50.ceiling_per_s, CEILING_50.floor_per_s) == (50.0, 1.0)
    assert (NO_CEILING.ceiling_per_s, NO_CEILING.floor_per_s) == (None, 1.0)
    # One submit per throttle_pause_s, but never above the ceiling.
    slow = SendRatePolicy.for_carrier(submit_rate_per_s=0.5, throttle_pause_s=0.2)
    assert (slow.ceiling_per_s, slow.floor_per_s) == (0.5, 0.5)
    with pytest.raises(ValueError, match="decrease_factor"):
        SendRatePolicy(ceiling_per_s=None, floor_per_s=1.0, decrease_factor=1.0)


def test_a_bind_starts_at_its_ceiling_or_without_a_limit() -> None:
    assert SendRate.start(CEILING_50).rate_per_s == 50.0
    assert not SendRate.start(CEILING_50).below_ceiling(CEILING_50)
    assert SendRate.start(NO_CEILING).rate_per_s is None
    assert not SendRate.start(NO_CEILING).below_ceiling(NO_CEILING)


def test_throttling_cuts_the_rate_once_per_round_trip() -> None:
    rate = answer(SendRate.start(CEILING_50), "throttled", 10.0, CEILING_50, written_at_s=9.99)
    assert rate.rate_per_s == pytest.approx(40.0)
    assert rate.below_ceiling(CEILING_50)
    # The rest of the window went out at 50/s, before the cut: no further cut.
    for now_s in (10.001, 10.002, 10.003):
        rate = answer(rate, "throttled", now_s, CEILING_50, written_at_s=9.995)
    assert rate.rate_per_s == pytest.approx(40.0)
    # A submit written at the new rate and throttled again: cut again.
    rate = answer(rate, "throttled", 10.1, CEILING_50, written_at_s=10.05)
    assert rate.rate_per_s == pytest.approx(32.0)


def test_the_rate_never_goes_below_the_floor() -> None:
    rate = SendRate.start(CEILING_50)
    for n in range(40):
        now_s = 10.0 + n
        rate = answer(rate, "throttled", now_s, CEILING_50, written_at_s=now_s - 0.001)
    assert rate.rate_per_s == CEILING_50.floor_per_s == 1.0


def test_accepted_answers_recover_the_rate_additively_up_to_the_ceiling() -> None:
    rate = answer(SendRate.start(CEILING_50), "throttled", 10.0, CEILING_50)
    assert rate.rate_per_s == pytest.approx(40.0)
    # A tenth of the rate the cut started from (50/s), per second.
    rate = accepted_every(rate, CEILING_50, 10.0, 11.0)
    assert rate.rate_per_s == pytest.approx(45.0)
    rate = accepted_every(rate, CEILING_50, 11.0, 12.0)
    assert rate.rate_per_s == pytest.approx(50.0)
    assert not rate.below_ceiling(CEILING_50)
    rate = accepted_every(rate, CEILING_50, 12.0, 20.0)
    assert rate.rate_per_s == 50.0


def test_no_recovery_while_nothing_waits_for_the_rate() -> None:
    rate = answer(SendRate.start(CEILING_50), "throttled", 10.0, CEILING_50)
    for n in range(1, 30):
        rate = answer(rate, "accepted", 10.0 + n * 0.1, CEILING_50, backlogged=False)
    assert rate.rate_per_s == pytest.approx(40.0)


def test_a_quiet_spell_counts_as_one_step_at_most() -> None:
    rate = answer(SendRate.start(CEILING_50), "throttled", 10.0, CEILING_50)
    rate = answer(rate, "accepted", 10.1, CEILING_50)
    rate = answer(rate, "accepted", 3600.0, CEILING_50)
    assert rate.rate_per_s == pytest.approx(40.0 + 0.5 + 5.0 * MAX_STEP_GAP_S)


def test_without_a_ceiling_the_first_cut_starts_from_the_pace_written() -> None:
    rate = SendRate.start(NO_CEILING)
    # 10 accepted over a second, then a throttling answer with 4 still unanswered.
    for n in range(10):
        rate = answer(rate, "accepted", 10.0 + n * 0.1, NO_CEILING)
    assert rate.rate_per_s is None
    rate = answer(rate, "throttled", 11.0, NO_CEILING, unanswered=4)
    assert rate.rate_per_s == pytest.approx(0.8 * 14)
    assert rate.below_ceiling(NO_CEILING)


def test_without_a_ceiling_a_throttle_before_any_acceptance_cuts_from_the_window() -> None:
    rate = answer(SendRate.start(NO_CEILING), "throttled", 10.0, NO_CEILING, unanswered=63)
    assert rate.rate_per_s == pytest.approx(0.8 * 63)


def test_without_a_ceiling_the_limit_is_lifted_once_the_smsc_takes_twice_as_much() -> None:
    rate = answer(SendRate.start(NO_CEILING), "throttled", 10.0, NO_CEILING, unanswered=10)
    assert rate.rate_per_s == pytest.approx(8.0)
    rate = accepted_every(rate, NO_CEILING, 10.0, 21.9)
    assert rate.rate_per_s is not None and rate.rate_per_s < 20.0
    rate = accepted_every(rate, NO_CEILING, 21.9, 22.1)
    assert rate.rate_per_s is None
    assert not rate.below_ceiling(NO_CEILING)


def test_with_a_ceiling_a_rate_that_doubled_steps_faster() -> None:
    rate = SendRate.start(CEILING_50)
    for n in range(40):
        rate = answer(rate, "throttled", 10.0 + n, CEILING_50, written_at_s=10.0 + n - 0.001)
    assert rate.rate_per_s == 1.0
    # At a tenth of 1/s per second the way back to 50/s would take 490 s;
    # each doubling makes the step grow with the rate.
    rate = accepted_every(rate, CEILING_50, 50.0, 110.0)
    assert rate.rate_per_s == 50.0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["accepted", "throttled"]),
            st.floats(min_value=0.0, max_value=5.0),  # time since the previous answer
            st.floats(min_value=0.0, max_value=2.0),  # its submit's age
            st.booleans(),
            st.integers(min_value=0, max_value=100),
        ),
        max_size=200,
    ),
    st.sampled_from([CEILING_50, NO_CEILING]),
)
def test_the_rate_stays_between_floor_and_ceiling(
    answers: list[tuple[SubmitAnswer, float, float, bool, int]], policy: SendRatePolicy
) -> None:
    rate = SendRate.start(policy)
    now_s = 100.0
    for what, gap_s, age_s, backlogged, unanswered in answers:
        now_s += gap_s
        rate = send_rate_after(
            rate,
            what,
            now_s,
            written_at_s=now_s - age_s,
            backlogged=backlogged,
            unanswered=unanswered,
            policy=policy,
        )
        if rate.rate_per_s is None:
            assert policy.ceiling_per_s is None
        else:
            assert rate.rate_per_s >= policy.floor_per_s
            assert policy.ceiling_per_s is None or rate.rate_per_s <= policy.ceiling_per_s


# -- against a modelled SMSC ------------------------------------------------------------


@dataclass
class Run:
    accepted: int
    throttled: int
    seconds: float


def run_against_throttling_smsc(
    policy: SendRatePolicy,
    limit_per_s: float,
    *,
    duration_s: float = 120.0,
    warmup_s: float = 20.0,
    round_trip_s: float = 0.005,
    reorder_s: float = 0.0,
    window: int = 64,
    seed: int = 1,
) -> Run:
    """One always-busy bind against an SMSC that accepts `limit_per_s` (a token
    bucket holding a second of them) and throttles the rest; answers come
    after `round_trip_s` plus up to `reorder_s` (answers out of order).
    Counts the answers after `warmup_s`."""
    rng = random.Random(seed)
    rate = SendRate.start(policy)
    smsc_tokens, smsc_at_s = limit_per_s, 0.0
    tokens, tokens_at_s = 1.0, 0.0
    now_s = 0.0
    answers: list[tuple[float, int, float, bool]] = []  # due, serial, written at, accepted
    serial = accepted = throttled = 0
    while now_s < duration_s:
        # The session's token bucket of one token at the current rate.
        write_at_s = now_s
        if rate.rate_per_s is not None:
            tokens = min(1.0, tokens + (now_s - tokens_at_s) * rate.rate_per_s)
            tokens_at_s = now_s
            if tokens < 1.0:
                write_at_s = now_s + (1.0 - tokens) / rate.rate_per_s
        if len(answers) >= window:
            write_at_s = max(write_at_s, answers[0][0])
        if answers and answers[0][0] <= write_at_s:
            now_s, _, written_at_s, ok = heapq.heappop(answers)
            before = rate.rate_per_s
            rate = send_rate_after(
                rate,
                "accepted" if ok else "throttled",
                now_s,
                written_at_s=written_at_s,
                backlogged=True,
                unanswered=len(answers),
                policy=policy,
            )
            if rate.rate_per_s is not None and (before is None or rate.rate_per_s < before):
                tokens, tokens_at_s = 0.0, now_s  # the session empties its bucket on a cut
            if now_s >= warmup_s:
                accepted += ok
                throttled += not ok
            continue
        now_s = write_at_s
        if rate.rate_per_s is not None:
            tokens -= 1.0
        arrives_s = now_s + round_trip_s / 2
        smsc_tokens = min(limit_per_s, smsc_tokens + (arrives_s - smsc_at_s) * limit_per_s)
        smsc_at_s = arrives_s
        ok = smsc_tokens >= 1.0
        smsc_tokens -= ok
        serial += 1
        due_s = now_s + round_trip_s + rng.uniform(0.0, reorder_s)
        heapq.heappush(answers, (due_s, serial, now_s, ok))
    return Run(accepted, throttled, duration_s - warmup_s)


@pytest.mark.parametrize(
    ("ceiling_per_s", "limit_per_s", "reorder_s"),
    [
        (0.0, 5.0, 0.0),
        (0.0, 5.0, 0.05),
        (50.0, 5.0, 0.0),
        (0.0, 50.0, 0.05),
        (100.0, 50.0, 0.0),
        (30.0, 20.0, 0.05),
    ],
)
def test_throughput_converges_to_what_the_smsc_accepts(
    ceiling_per_s: float, limit_per_s: float, reorder_s: float
) -> None:
    policy = SendRatePolicy.for_carrier(submit_rate_per_s=ceiling_per_s, throttle_pause_s=1.0)
    run = run_against_throttling_smsc(policy, limit_per_s, reorder_s=reorder_s)
    accepted_per_s = run.accepted / run.seconds
    assert accepted_per_s == pytest.approx(limit_per_s, rel=0.1)
    # About one throttling answer per cut, not a window of them.
    assert run.throttled <= 0.25 * run.accepted


def test_a_fixed_pause_would_hammer_the_same_smsc() -> None:
    """What the rule replaces: a bind that, throttled, stops for a second and
    then writes at full speed again. The model above is the judge: most of
    its submits come back throttled."""
    never_adapts = SendRatePolicy(
        ceiling_per_s=None, floor_per_s=1e9, decrease_factor=0.5, increase_share_per_s=1.0
    )
    run = run_against_throttling_smsc(never_adapts, 5.0)
    assert run.throttled > 5 * run.accepted
