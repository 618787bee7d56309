"""Carrier determination and the outcome of an SMS attempt (DOMAIN §4, §9, §10).

Pure: the dispatcher and the receipt recorder gather the facts from the
database, these functions decide, and the shell writes the decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from carrierd.domain import reasons
from carrierd.domain.numbers import national_form
from carrierd.domain.pacing import QuietWindow, next_resend_at
from carrierd.domain.reasons import Reason
from carrierd.domain.states import State

NOT_HANDED_OVER = Reason("not_handed_over", "no bind of the carrier was available; retrying")
INCOMPLETE_SUBMISSION = Reason(
    "incomplete_submission", "some parts were never handed to the carrier"
)
UNSENT_RETRY_S = 1.0


@dataclass(frozen=True)
class CarrierChoice:
    carrier: str | None
    source: Literal["named", "learned", "number_range", "default_order", "none"]


class NumberRanges:
    """The number-range table: national prefix -> carrier; the longest
    matching prefix wins (`090123` beats `0901`).

    A lookup tries one prefix length at a time, longest first, so its cost
    grows with the number of distinct lengths, not of prefixes: real range
    tables hold thousands, and every message is looked up (twice)."""

    def __init__(self, prefixes: Mapping[str, str]) -> None:
        self._carriers = dict(prefixes)
        self._lengths = sorted({len(prefix) for prefix in self._carriers}, reverse=True)

    def carrier_for(self, msisdn: str) -> str | None:
        national = national_form(msisdn)
        for length in self._lengths:
            carrier = self._carriers.get(national[:length])
            if carrier is not None:
                return carrier
        return None


def resolve_carrier(
    msisdn: str,
    *,
    named: str | None,
    learned: str | None,
    number_ranges: NumberRanges,
    default_order: Sequence[str],
    tried: Collection[str],
    available: Collection[str],
) -> CarrierChoice:
    """The resolver chain: named, learned, number range, default order.

    `tried` are carriers that already answered "not our subscriber" for this
    message: never asked twice. Only carriers with a configured pool count.
    A lookup service (MNP database) slots in as another link of this chain.
    """

    def usable(carrier: str | None) -> bool:
        return carrier is not None and carrier in available and carrier not in tried

    if usable(named):
        return CarrierChoice(named, "named")
    if usable(learned):
        return CarrierChoice(learned, "learned")
    by_range = number_ranges.carrier_for(msisdn)
    if usable(by_range):
        return CarrierChoice(by_range, "number_range")
    for carrier in default_order:
        if usable(carrier):
            return CarrierChoice(carrier, "default_order")
    return CarrierChoice(None, "none")


PartState = Literal["pending", "accepted", "refused", "delivered", "failed", "unknown"]


@dataclass(frozen=True)
class AttemptParts:
    """What the parts of a message's current attempt say."""

    state: State  # the message's state now (sending or submitted)
    total: int
    pending: int
    accepted: int
    refused: int
    delivered: int
    failed: int
    unknown: int
    unsent: int  # never handed over (no bind up, shutdown)
    wrong_carrier: bool  # a refusal or receipt meaning "not our subscriber"
    refused_status: int | None
    failure: Reason | None  # reason of the first failed part


@dataclass(frozen=True)
class ResendPolicy:
    max_resends: int
    interval_s: float
    quiet: QuietWindow | None


@dataclass(frozen=True)
class AttemptOutcome:
    to_state: State
    reason: Reason | None = None
    not_before: datetime | None = None
    resend: bool = False
    reroute: bool = False


def decide_attempt(
    parts: AttemptParts,
    now: datetime,
    *,
    resends_done: int,
    policy: ResendPolicy,
) -> AttemptOutcome | None:
    """The message's next state from its parts, or None when nothing changes.

    A multipart message is delivered when every part is, failed as soon as
    one part finally fails (§10). "Not our subscriber" reroutes (§4); any
    other failure receipt may be resent under the account's policy (§9).
    """
    if parts.wrong_carrier:
        return AttemptOutcome(State.QUEUED, reasons.WRONG_CARRIER, not_before=now, reroute=True)
    if parts.refused:
        status = parts.refused_status if parts.refused_status is not None else 0
        return AttemptOutcome(State.FAILED, reasons.from_smpp_status(status))
    if parts.failed:
        failure = parts.failure or reasons.from_receipt("UNDELIV", None)
        if policy.max_resends <= 0:
            return AttemptOutcome(State.FAILED, failure)
        at = next_resend_at(now, resends_done, policy.max_resends, policy.interval_s, policy.quiet)
        if at is None:
            if resends_done >= policy.max_resends:
                exhausted = reasons.RESENDS_EXHAUSTED
                return AttemptOutcome(
                    State.FAILED, Reason(exhausted.code, f"{exhausted.text}: {failure.text}")
                )
            quiet = reasons.QUIET_WINDOW
            return AttemptOutcome(State.FAILED, Reason(quiet.code, f"{quiet.text}: {failure.text}"))
        return AttemptOutcome(State.QUEUED, failure, not_before=at, resend=True)
    if parts.delivered == parts.total:
        return AttemptOutcome(State.DELIVERED)
    if parts.pending:
        return None
    if parts.unsent:
        if parts.unsent == parts.total:
            # Nothing left this process: safe to try again shortly.
            return AttemptOutcome(
                State.QUEUED, NOT_HANDED_OVER, not_before=now + timedelta(seconds=UNSENT_RETRY_S)
            )
        return AttemptOutcome(State.FAILED, INCOMPLETE_SUBMISSION)
    if parts.unknown:
        return AttemptOutcome(State.UNKNOWN, reasons.OUTCOME_UNKNOWN_AFTER_RESTART)
    if parts.state is State.SENDING:
        return AttemptOutcome(State.SUBMITTED)
    return None


def receipt_deadline(now: datetime, receipt_timeout_s: float) -> datetime:
    return now + timedelta(seconds=receipt_timeout_s)
