"""Where callbacks may go (domain/netpolicy.py): address spellings, address
classes, allow-lists, and what intake can tell from a URL alone."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from carrierd.config import ConfigError, parse_config
from carrierd.domain.netpolicy import address_allowed, callback_url_problem, host_address

LOOPBACK = IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", LOOPBACK),
        ("0x7f.1", LOOPBACK),
        ("0X7F.0.0.1", LOOPBACK),
        ("2130706433", LOOPBACK),
        ("0x7f000001", LOOPBACK),
        ("0177.0.0.1", LOOPBACK),
        ("017700000001", LOOPBACK),
        ("127.1", LOOPBACK),
        ("127.0.1", LOOPBACK),
        ("127.0.0.1.", LOOPBACK),
        ("[::1]", IPv6Address("::1")),
        ("::ffff:127.0.0.1", IPv6Address("::ffff:7f00:1")),
        ("example.com", None),
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
        ("08.0.0.1", None),  # not octal: a name (which no resolver will find)
        ("1_0.0.0.1", None),  # int() would read 10
        ("١٢٧.0.0.1", None),  # int() would read 127
    ],
)
def test_host_spellings_read_as_the_resolver_reads_them(
    host: str, address: IPv4Address | IPv6Address | None
) -> None:
    assert host_address(host) == address


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fd00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ip_address(address))


def test_an_allowed_network_opens_exactly_that_network() -> None:
    allowed = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]
    assert address_allowed(ip_address("10.9.8.7"), allowed)
    assert address_allowed(ip_address("::ffff:10.9.8.7"), allowed)
    assert address_allowed(ip_address("fd00::5"), allowed)
    assert not address_allowed(ip_address("127.0.0.1"), allowed)
    assert not address_allowed(ip_address("192.168.0.1"), allowed)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/carrierd", None),
        ("http://93.184.216.34:8080/x", None),
        ("http://127.0.0.1/x", "public"),
        ("http://0x7f.1/x", "public"),
        ("http://2130706433/x", "public"),
        ("http://[::1]:80/x", "public"),
        ("http://[::ffff:169.254.169.254]/x", "public"),
        ("http://localhost:8080/x", "public"),
        ("http://api.localhost/x", "public"),
        ("http://user@10.0.0.1/x", "public"),
        ("http://999.1/x", "neither a name"),
        ("ftp://example.com/x", "http"),
        ("javascript:alert(1)", "http"),
        ("http:///x", "host"),
        ("http://example.com:99999/x", "port"),
        ("http://exa mple.com/x", "control"),
        ("http://example.com/\x00", "control"),
    ],
)
def test_intake_refuses_what_the_url_alone_shows(url: str, problem: str | None) -> None:
    found = callback_url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found.lower(), found


def test_intake_takes_a_literal_in_an_allowed_network() -> None:
    assert callback_url_problem("http://10.1.2.3/x", (ip_network("10.0.0.0/8"),)) is None
    assert callback_url_problem("http://localhost/x", (ip_network("127.0.0.0/8"),)) is None


def test_config_reads_allowed_networks_and_names_a_bad_one() -> None:
    raw = {
        "database": {"dsn": "postgresql:///x"},
        "accounts": {"a": {"tokens": ["t"], "callback_allow_networks": ["10.0.0.0/8"]}},
    }
    config = parse_config(raw, env={})
    assert config.accounts["a"].callback_allow_networks == (ip_network("10.0.0.0/8"),)
    raw["accounts"]["a"]["callback_allow_networks"] = ["10.0.0.1/8"]  # host bits set
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert any("accounts.a.callback_allow_networks" in p for p in caught.value.problems)
