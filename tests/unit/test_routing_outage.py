"""A carrier with no bind up is passed over in the candidate order (§4):
the message goes to the next candidate now, comes back to the one passed
over if the others refuse, and waits (never fails) when no candidate left
is up."""

from __future__ import annotations

from collections.abc import Collection

from hypothesis import given
from hypothesis import strategies as st

from carrierd.domain.routing import CarrierPick, NumberRanges, pick_carrier

CARRIERS = ("docomo", "au", "softbank", "rakuten")
MSISDN = "+819010012345"  # docomo by the national allocation: the first guess


def pick(
    *,
    bound: Collection[str],
    wrong: Collection[str] = (),
    named: str | None = None,
    learned: str | None = None,
    allowed: Collection[str] | None = None,
) -> CarrierPick:
    return pick_carrier(
        MSISDN,
        named=named,
        learned=learned,
        number_ranges=NumberRanges({}),
        default_order=CARRIERS,
        wrong=wrong,
        configured=CARRIERS,
        allowed=allowed,
        bound=bound,
    )


def test_a_new_number_goes_to_the_next_carrier_while_the_first_guess_is_down() -> None:
    choice = pick(bound={"au", "softbank", "rakuten"})
    assert (choice.action, choice.carrier, choice.down) == ("send", "au", ("docomo",))


def test_a_named_or_learned_carrier_that_is_down_is_passed_over_too() -> None:
    assert pick(bound={"au", "softbank"}, named="docomo").carrier == "au"
    choice = pick(bound={"docomo", "softbank"}, learned="au")
    assert (choice.carrier, choice.down) == ("docomo", ("au",))


def test_the_carrier_passed_over_is_waited_for_once_the_others_refused() -> None:
    choice = pick(bound={"au", "softbank", "rakuten"}, wrong={"au", "softbank", "rakuten"})
    assert (choice.action, choice.carrier, choice.down) == ("wait", "docomo", ("docomo",))
    assert choice.reason is None


def test_with_no_carrier_up_the_message_waits_for_every_candidate() -> None:
    choice = pick(bound=set())
    assert (choice.action, choice.carrier, choice.down) == ("wait", "docomo", CARRIERS)


def test_a_restricted_send_waits_for_its_carrier_instead_of_skipping() -> None:
    choice = pick(bound={"au"}, allowed={"docomo"})
    assert (choice.action, choice.carrier) == ("wait", "docomo")
    assert pick(bound={"au"}, allowed={"docomo"}, wrong={"docomo"}).action == "skip"


def test_no_carrier_left_still_fails() -> None:
    assert pick(bound=set(), wrong=CARRIERS).action == "fail"


@given(
    bound=st.sets(st.sampled_from(CARRIERS)),
    wrong=st.sets(st.sampled_from(CARRIERS)),
    named=st.none() | st.sampled_from(CARRIERS),
    learned=st.none() | st.sampled_from(CARRIERS),
)
def test_a_carrier_being_down_never_ends_a_message(
    bound: set[str], wrong: set[str], named: str | None, learned: str | None
) -> None:
    choice = pick(bound=bound, wrong=wrong, named=named, learned=learned)
    left = set(CARRIERS) - wrong
    if left & bound:
        assert choice.action == "send" and choice.carrier in left & bound
        assert not set(choice.down) & bound
    elif left:
        assert choice.action == "wait" and set(choice.down) == left
    else:
        assert choice.action == "fail"
