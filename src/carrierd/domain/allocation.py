"""The national allocation of mobile number blocks to carriers (DOMAIN §4).

The Ministry allocates 070/080/090 (and 060) numbers to carriers in blocks
of 100,000 (`090-CDE`, sometimes 10,000). The `phonenumbers` package ships
that allocation and its maintainers keep it current, so it is carrierd's
built-in first guess: right for every subscriber who never ported, which is
most of them. A number ported to another carrier keeps its block, so the
guess is only a guess; learned carriers and configured ranges come first in
the resolver chain (domain/routing.py).

Pure: a lookup in data the package carries, no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Final

# The names the allocation gives the carriers carrierd delivers to. Okinawa
# Cellular is au in Okinawa (KDDI's; its subscribers are served by au's
# SMSC). Others (MVNO-only blocks) are not guessed.
ALLOCATION_NAMES: Final[Mapping[str, str]] = {
    "NTT Docomo": "docomo",
    "KDDI": "au",
    "Okinawa Cellular": "au",
    "Softbank": "softbank",
    "Rakuten Communications": "rakuten",
    "Rakuten Mobile": "rakuten",
}


def allocated_carrier(e164: str) -> str | None:
    """The carrier the number's block is allocated to, or None when the
    allocation names none of ours (an unallocated block, an MVNO).
    `e164` is canonical (`+819012345678`)."""
    return ALLOCATION_NAMES.get(_lookup()(e164))


@functools.cache
def _lookup() -> Callable[[str], str]:
    # Imported on first use: the allocation tables take a quarter of a
    # second to load, which every CLI command and daemon start would pay.
    from phonenumbers import PhoneNumber
    from phonenumbers.carrier import name_for_valid_number

    def name(e164: str) -> str:
        number = PhoneNumber(country_code=81, national_number=int(e164[3:]))
        return name_for_valid_number(number, "en")

    return name
