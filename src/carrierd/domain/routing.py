"""Carrier determination (DOMAIN §4).

Pure: the SMS leg gathers the facts (learned carriers, configured pools,
bound binds), `pick_carrier` decides, the shell writes the decision.

The resolver chain, most certain first: the carrier the sender named (a
first guess too: a refusal reroutes like any other), the carrier that last
delivered to the number (learned), the configured number ranges (the
operator's own table overrides the built-in one), the national allocation
(domain/allocation.py), then the default order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from carrierd.domain import reasons
from carrierd.domain.allocation import allocated_carrier
from carrierd.domain.numbers import national_form
from carrierd.domain.reasons import Reason


@dataclass(frozen=True)
class CarrierChoice:
    carrier: str | None
    source: Literal["named", "learned", "number_range", "allocation", "default_order", "none"]


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
    """The resolver chain: named, learned, number range, allocation, default order.

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
    by_allocation = allocated_carrier(msisdn)
    if usable(by_allocation):
        return CarrierChoice(by_allocation, "allocation")
    for carrier in default_order:
        if usable(carrier):
            return CarrierChoice(carrier, "default_order")
    return CarrierChoice(None, "none")


@dataclass(frozen=True)
class CarrierPick:
    """What to do with one SMS now: send to `carrier`, wait for a bind of
    it, skip the recipient (carrier restriction), or fail (no carrier left).

    `down`: candidates ahead of `carrier` in the order that have no bind up,
    passed over for now (send), or all the candidates left (wait)."""

    action: Literal["send", "wait", "skip", "fail"]
    carrier: str | None
    source: str
    reason: Reason | None = None
    down: tuple[str, ...] = ()


def pick_carrier(
    msisdn: str,
    *,
    named: str | None,
    learned: str | None,
    number_ranges: NumberRanges,
    default_order: Sequence[str],
    wrong: Collection[str],
    configured: Collection[str],
    allowed: Collection[str] | None,
    bound: Collection[str],
) -> CarrierPick:
    """The carrier for the next attempt (§4).

    A send restricted to some carriers ("carrier-specific delivery") tries
    only those, in the resolver's order, and skips the recipient only when
    none is left: every allowed carrier said "not our subscriber" (or none
    is configured here). The first guess alone never skips anyone: a ported
    number is often on another carrier than its range says.

    A carrier with no bind up is passed over: the next candidate in the
    order goes now. One SMSC away must not hold every new number back while
    the other carriers work; the carrier passed over stays a candidate, and
    if the others answer "not our subscriber" the message waits for it. It
    waits, too, when no candidate left has a bind up: it never fails for a
    carrier being away.
    """
    candidates = configured if allowed is None else [c for c in configured if c in allowed]
    order = [*default_order, *sorted(candidates)]
    down: list[str] = []
    first_source = "none"
    while True:
        choice = resolve_carrier(
            msisdn,
            named=named,
            learned=learned,
            number_ranges=number_ranges,
            default_order=order,
            tried=[*wrong, *down],
            available=candidates,
        )
        if choice.carrier is None:
            break
        if choice.carrier in bound:
            return CarrierPick("send", choice.carrier, choice.source, down=tuple(down))
        if not down:
            first_source = choice.source
        down.append(choice.carrier)
    if down:
        return CarrierPick("wait", down[0], first_source, down=tuple(down))
    if allowed is not None:
        return CarrierPick("skip", None, choice.source, reasons.NOT_IN_CARRIER_RESTRICTION)
    return CarrierPick("fail", None, choice.source, reasons.NO_CARRIER_LEFT)


def sends_part_one_first(source: str, submits: int) -> bool:
    """Whether a multipart SMS goes out part 1 alone, the other parts only
    after the carrier accepted it (§4): so whenever the carrier is not yet
    confirmed for the recipient, that is, not the one that last delivered
    to it. A carrier that refuses part 1 ("not our subscriber") has then
    cost one submit and never seen the rest of the text. A named carrier is
    a guess like any other."""
    return submits > 1 and source != "learned"


def teaches_resolver(learned: str | None, delivered_by: str) -> bool:
    """Whether a delivery by `delivered_by` is news to the resolver: the
    first delivery to a number confirms its carrier (its multipart messages
    then go whole), a delivery by another carrier corrects it; the others
    repeat what it knows and are not written."""
    return learned != delivered_by
