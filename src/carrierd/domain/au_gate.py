"""The au spacing rule (DOMAIN §5), in one place.

Consecutive SMS to the same au number leave at least `spacing_s` after the
previous one *arrived* (its final receipt), also inside an all-carrier send.
While one is still in flight the next waits; the final receipt that ends it
releases the waiting ones to `receipt + spacing_s`.

Pure: the SMS leg reads the gate's facts per number, `au_gate_check` says
hold or go, `au_gate_releases` says whether a settled attempt opens the
gate; the shell writes the holds and releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from carrierd.domain.pacing import au_not_before
from carrierd.domain.states import State

AU = "au"
# Re-check interval for a message held because an earlier SMS to the same au
# number is still in flight: the receipt moves not_before precisely, this
# only bounds the wait when the receipt never comes.
AU_IN_FLIGHT_RECHECK_S = 30.0
# A number's last final receipt is kept this long past its spacing, so that
# daemons whose clocks disagree by less than this still see it.
AU_GATE_KEEP_PAST_SPACING_S = 3600.0


@dataclass(frozen=True, slots=True)
class AuGateFacts:
    in_flight: bool  # an SMS to the number is sending/submitted on au
    last_final_at: datetime | None  # the last final receipt of an au SMS to it


@dataclass(frozen=True, slots=True)
class AuHold:
    not_before: datetime
    why: Literal["in_flight", "spacing"]


def au_gate_check(
    facts: AuGateFacts | None, *, taken_in_batch: bool, now: datetime, spacing_s: float
) -> AuHold | None:
    """Hold (until when, and why) or None to send now. `taken_in_batch`:
    an earlier message of the same claim already goes to the number."""
    if taken_in_batch or (facts is not None and facts.in_flight):
        return AuHold(now + timedelta(seconds=AU_IN_FLIGHT_RECHECK_S), "in_flight")
    if facts is not None and facts.last_final_at is not None:
        opens_at = au_not_before(facts.last_final_at, spacing_s)
        if opens_at > now:
            return AuHold(opens_at, "spacing")
    return None


@dataclass(frozen=True, slots=True)
class AuGateRelease:
    """A settled au attempt opens the gate for its number: from the moment
    its SMS arrived (`arrived_at`: held messages go `spacing_s` after it),
    or, when nothing arrived (None), at once."""

    arrived_at: datetime | None


def au_gate_releases(
    *, carrier: str | None, last_receipt_at: datetime | None, to_state: State, reroute: bool
) -> AuGateRelease | None:
    """Whether (and from when) a settled SMS attempt opens the gate for its
    number; None while its SMS may still arrive.

    A final receipt from au is an arrival: the spacing counts from it. A
    refusal is not, nor is a "not our subscriber" answer in any form (the
    number is not au's: a reroute), nor a message none of whose parts left
    (queued again) or that failed without a receipt: nothing reached the
    handset, so the messages held behind it go at once (the gate still
    applies the spacing of an earlier arrival when they are claimed).
    `unknown` keeps them held: its SMS may still arrive.
    """
    if carrier != AU:
        return None
    if reroute:
        return AuGateRelease(None)
    if to_state in (State.DELIVERED, State.FAILED, State.QUEUED):
        return AuGateRelease(last_receipt_at)
    return None


def au_gate_forgets_before(now: datetime, spacing_s: float) -> datetime:
    """Gate rows whose last final receipt is older than this hold nothing
    back any more (the spacing ran out): retention deletes them, and a
    number without a row goes at once, exactly as with one."""
    return now - timedelta(seconds=spacing_s + AU_GATE_KEEP_PAST_SPACING_S)
