"""Where status callbacks may go: public addresses, plus the networks an
account's configuration allows (``callback_allow_networks``).

A callback URL comes from a client, and the daemon sits inside an
operator's network: without this rule a client could make the daemon POST
to its loopback, the cloud metadata service (169.254.169.254) or any private
host. The rule is applied twice: at intake to URLs whose host is an address
literal (a quick 400), and at delivery to every address the host resolves
to and to the very address a socket connects to (the check that counts:
names can resolve differently later).

Address literals are read as the resolver reads them, odd spellings
included (``0x7f.1``, ``2130706433``, ``0177.0.0.1``, ``127.1``), and an IPv6
address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4, Teredo) is
judged by that IPv4 address too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")
_DECIMAL_DIGITS = frozenset("0123456789")
_NAT64 = IPv6Network("64:ff9b::/96")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _ipv4_number(part: str) -> int | None:
    """One dotted part as inet_aton reads it: 0x hex, leading-0 octal, or
    decimal (ASCII digits only: int() would also take '١' and '1_0')."""
    if part[:2] in ("0x", "0X"):
        digits, allowed, base = part[2:], _HEX_DIGITS, 16
        if not digits:
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, allowed, base = part[1:], _OCTAL_DIGITS, 8
    else:
        digits, allowed, base = part, _DECIMAL_DIGITS, 10
    if not digits or not set(digits) <= allowed:
        return None
    return int(digits, base)


def looks_numeric(label: str) -> bool:
    """A host label a URL parser takes for (part of) an IPv4 address."""
    return bool(label) and (
        set(label) <= _DECIMAL_DIGITS
        or (label[:2] in ("0x", "0X") and set(label[2:]) <= _HEX_DIGITS)
    )


def parse_ipv4(text: str) -> IPv4Address | None:
    """An IPv4 address in any spelling inet_aton accepts (1 to 4 parts, each
    decimal, octal or hex; the last part fills the remaining bytes)."""
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]  # a trailing dot, as in a fully qualified name
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *leading, last = [n for n in numbers if n is not None]
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = 0
    for n in leading:
        value = value << 8 | n
    return IPv4Address(value << (8 * (4 - len(leading))) | last)


def host_address(host: str) -> IPAddress | None:
    """The address a URL host names literally, or None for a DNS name."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return IPv6Address(bare)
        except ValueError:
            return None
    return parse_ipv4(bare)


def _embedded_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """IPv4 addresses an IPv6 address routes to or stands for."""
    found: list[IPv4Address] = []
    if address in _NAT64:
        found.append(IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def is_public(address: IPAddress) -> bool:
    """Reachable on the public internet: none of loopback, private,
    link-local, shared (CGNAT), multicast, reserved, unspecified."""
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or (isinstance(address, IPv6Address) and address.is_site_local)
    )


def _in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def address_allowed(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """May a callback connect to `address`? Public addresses may; any other
    only inside one of the `allowed` networks."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is a.b.c.d, whatever the socket family.
            return address_allowed(address.ipv4_mapped, allowed)
        if address.scope_id is not None:
            address = IPv6Address(str(address).split("%", 1)[0])
    if _in_networks(address, allowed):
        return True
    if not is_public(address):
        return False
    if isinstance(address, IPv6Address):
        return all(is_public(v4) or _in_networks(v4, allowed) for v4 in _embedded_ipv4(address))
    return True


# A batch usually names one callback URL for all its items.
@lru_cache(maxsize=1024)
def callback_url_problem(url: str, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why `url` can never be a callback target, or None when it may be one.

    Only what the URL itself shows: a host name is judged when the callback
    is delivered, after resolving it.
    """
    if _SPACE_OR_CONTROL.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not host:
        return "must name a host"
    address = host_address(host)
    if address is None:
        labels = host.rstrip(".").split(".")
        if looks_numeric(labels[-1]):
            return f"host {host!r} is neither a name nor a valid IPv4 address"
        if labels[-1] == "localhost":
            address = IPv4Address("127.0.0.1")  # RFC 6761: always loopback
    if address is not None and not address_allowed(address, allowed):
        return f"host {host!r} is not a public address (not allowed for this account)"
    return None
