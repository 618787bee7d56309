"""The number-range table of the resolver chain (DOMAIN §4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.routing import NumberRanges

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
