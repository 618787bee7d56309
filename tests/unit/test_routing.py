"""The resolver chain (DOMAIN §4): number ranges, the national allocation."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.allocation import ALLOCATION_NAMES, allocated_carrier
from carrierd.domain.routing import (
    CarrierPick,
    NumberRanges,
    pick_carrier,
    sends_part_one_first,
    teaches_resolver,
)

CARRIERS = ("docomo", "au", "softbank", "rakuten")


def test_longest_matching_prefix_wins() -> None:
    ranges = NumberRanges({"090": "docomo", "0901": "au", "090123": "softbank", "080": "au"})
    assert ranges.carrier_for("+819012345678") == "softbank"
    assert ranges.carrier_for("+819019999999") == "au"
    assert ranges.carrier_for("+819099999999") == "docomo"
    assert ranges.carrier_for("+818012345678") == "au"
    assert ranges.carrier_for("+817012345678") is None
    assert NumberRanges({}).carrier_for("+819012345678") is None


def _longest_prefix(national: str, table: dict[str, str]) -> str | None:
    matches = [p for p in table if national.startswith(p)]
    return table[max(matches, key=len)] if matches else None


@given(
    table=st.dictionaries(
        st.from_regex(r"0[0-9]{0,6}", fullmatch=True), st.sampled_from(CARRIERS), max_size=40
    ),
    digits=st.from_regex(r"[1-9][0-9]{9}", fullmatch=True),
)
def test_same_answer_as_trying_every_prefix(table: dict[str, str], digits: str) -> None:
    assert NumberRanges(table).carrier_for("+81" + digits) == _longest_prefix("0" + digits, table)


# -- the resolver chain ------------------------------------------------------------


def pick(msisdn: str, **facts: object) -> CarrierPick:
    given_facts: dict[str, Any] = {
        "named": None,
        "learned": None,
        "number_ranges": NumberRanges({}),
        "default_order": CARRIERS,
        "wrong": (),
        "configured": CARRIERS,
        "allowed": None,
        "bound": CARRIERS,
        **facts,
    }
    return pick_carrier(msisdn, **given_facts)


def test_the_national_allocation_is_the_first_guess_for_a_new_number() -> None:
    """Blocks of the allocation (phonenumbers' data): 090-123 docomo,
    090-312 au... A number nobody named or delivered to goes to its block's
    carrier, not to the head of the default order."""
    for msisdn in ("+819012345678", "+818031234567", "+819012311111"):
        expected = allocated_carrier(msisdn)
        assert expected is not None
        assert pick(msisdn) == CarrierPick("send", expected, "allocation")
    assert {allocated_carrier(n) for n in ("+819012345678", "+818031234567")} != {"docomo"}


def test_config_ranges_and_learned_carriers_override_the_allocation() -> None:
    msisdn = "+818031234567"
    block = allocated_carrier(msisdn)
    other = next(c for c in CARRIERS if c != block)
    ranges = NumberRanges({"0803": other})
    assert pick(msisdn, number_ranges=ranges) == CarrierPick("send", other, "number_range")
    assert pick(msisdn, learned="rakuten", number_ranges=ranges).source == "learned"
    assert pick(msisdn, named="au", learned="rakuten").source == "named"
    # The range's carrier refused: the allocation is still a better guess
    # than the default order.
    assert pick(msisdn, number_ranges=ranges, wrong=[other]) == CarrierPick(
        "send", block, "allocation"
    )
    # The block's carrier refused too: the default order, skipping both.
    after = pick(msisdn, number_ranges=ranges, wrong=[other, block])
    assert after.source == "default_order" and after.carrier not in (other, block)


def test_a_block_allocated_to_none_of_ours_falls_to_the_default_order() -> None:
    # 060 blocks are hardly allocated yet; 020 are M2M.
    msisdn = "+816099999999"
    assert allocated_carrier(msisdn) is None
    assert pick(msisdn) == CarrierPick("send", "docomo", "default_order")


def test_allocation_names_map_to_our_carriers() -> None:
    assert set(ALLOCATION_NAMES.values()) == set(CARRIERS)


def test_part_one_goes_alone_until_the_carrier_is_confirmed() -> None:
    for source in ("named", "number_range", "allocation", "default_order"):
        assert sends_part_one_first(source, 3)
        assert not sends_part_one_first(source, 1)
    assert not sends_part_one_first("learned", 3)


def test_a_first_delivery_confirms_the_carrier_and_repeats_are_not_written() -> None:
    assert teaches_resolver(None, "au")
    assert teaches_resolver("docomo", "au")
    assert not teaches_resolver("au", "au")
