"""Routes in the configuration (DOMAIN §6): a carrier's table is its premium
route, [carriers.X.routes.NAME] its others; an account's plan and routes
choose one per carrier, and check-config refuses what cannot be sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from carrierd.__main__ import main
from carrierd.config import CARRIERS, ConfigError, parse_config


def raw_config(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "database": {"dsn": "postgresql://localhost/carrierd"},
        "accounts": {
            "acme": {
                "tokens": ["acme-token"],
                "senders": {c: "249200" if c == "softbank" else "0120111111" for c in CARRIERS},
            }
        },
        "carriers": {
            "docomo": {"host": "127.0.0.1", "port": 2775},
            "au": {"host": "127.0.0.1", "port": 2776},
            "softbank": {
                "host": "127.0.0.1",
                "port": 2777,
                "routes": {
                    "ordinary": {
                        "host": "smpp.aggregator.example",
                        "port": 2800,
                        "binds": 3,
                        "system_id": "agg",
                        "sender": "ACME",
                        "concat": "payload",
                    }
                },
            },
            "rakuten": {
                "host": "127.0.0.1",
                "port": 2778,
                "routes": {"ordinary": {"host": "127.0.0.1", "port": 2801}},
            },
        },
    }
    for key, value in changes.items():
        raw[key] = value
    return raw


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    return caught.value.problems


def test_a_carrier_with_one_table_is_its_premium_route() -> None:
    raw = raw_config()
    raw["carriers"]["softbank"].pop("routes")
    raw["carriers"]["rakuten"].pop("routes")
    config = parse_config(raw, env={})
    acme = config.accounts["acme"]
    for name, carrier in config.carriers.items():
        assert acme.route_for(name) == "premium"
        assert carrier.route_config("premium") is carrier
        assert carrier.all_routes() == (carrier,) and carrier.pool_name == name
        # The premium route sends the account's fixed number.
        assert carrier.sender_for(acme) == acme.senders[name]


def test_a_route_is_a_connection_of_its_own_with_its_sender() -> None:
    config = parse_config(raw_config(), env={})
    softbank = config.carriers["softbank"]
    ordinary = softbank.route_config("ordinary")
    assert ordinary is not None and softbank.route_config("lite") is None
    assert (ordinary.host, ordinary.port, ordinary.binds, ordinary.system_id) == (
        "smpp.aggregator.example",
        2800,
        3,
        "agg",
    )
    assert (ordinary.concat, softbank.concat) == ("payload", "udh8")
    assert ordinary.pool_name == "softbank/ordinary" and ordinary.route == "ordinary"
    # The route's own sender, whatever the account's; the carrier's rules stay.
    assert ordinary.sender_for(config.accounts["acme"]) == "ACME"
    assert ordinary.receipt_timeout_s == softbank.receipt_timeout_s == 3600
    # Without a sender of its own a route sends the account's.
    rakuten_ordinary = config.carriers["rakuten"].route_config("ordinary")
    assert rakuten_ordinary is not None
    assert rakuten_ordinary.sender_for(config.accounts["acme"]) == "0120111111"


def test_the_lite_plan_is_premium_for_docomo_and_au_only() -> None:
    raw = raw_config()
    raw["accounts"]["acme"]["plan"] = "lite"
    acme = parse_config(raw, env={}).accounts["acme"]
    assert {c: acme.route_for(c) for c in CARRIERS} == {
        "docomo": "premium",
        "au": "premium",
        "softbank": "ordinary",
        "rakuten": "ordinary",
    }
    # A route named per carrier overrides the plan.
    raw["accounts"]["acme"]["routes"] = {"softbank": "premium"}
    acme = parse_config(raw, env={}).accounts["acme"]
    assert (acme.route_for("softbank"), acme.route_for("rakuten")) == ("premium", "ordinary")


def test_an_account_naming_a_route_its_carrier_lacks_is_refused_with_the_key() -> None:
    raw = raw_config()
    raw["accounts"]["acme"]["routes"] = {"docomo": "ordinary", "softbank": "standard"}
    assert problems_of(raw) == [
        "accounts.acme.routes.docomo: carriers.docomo has no route 'ordinary'; its routes: premium",
        "accounts.acme.routes.softbank: carriers.softbank has no route 'standard';"
        " its routes: premium, ordinary (the route once called standard is named ordinary)",
    ]


def test_a_plan_needing_a_route_the_carrier_lacks_is_refused() -> None:
    raw = raw_config()
    raw["accounts"]["acme"]["plan"] = "lite"
    raw["carriers"]["rakuten"].pop("routes")
    assert problems_of(raw) == [
        "accounts.acme.plan: carriers.rakuten has no route 'ordinary'"
        " (the lite plan's route for rakuten); its routes: premium"
    ]
    # Values earlier versions accepted and ignored are explained.
    raw["accounts"]["acme"]["plan"] = "premium"
    raw["accounts"]["acme"]["routes"] = {"au": "lite"}
    assert problems_of(raw) == [
        "accounts.acme.routes.au: carriers.au has no route 'lite'; its routes: premium"
        ' (lite is a plan: plan = "lite")'
    ]
    raw["accounts"]["acme"].pop("routes")
    raw["accounts"]["acme"]["plan"] = "gold"
    assert problems_of(raw)[0].startswith("accounts.acme.plan: must be one of premium, lite")


def test_route_tables_are_checked() -> None:
    raw = raw_config()
    raw["carriers"]["softbank"]["routes"] = {
        "premium": {"host": "h", "port": 1},
        "Ordinary Route": {"host": "h", "port": 1},
        "ordinary": {"host": "h", "port": 1, "number_prefixes": ["070"], "binds": 0},
        "spare": 5,
    }
    assert problems_of(raw) == [
        "carriers.softbank.routes.premium: the premium route is the carrier's own table"
        " (carriers.softbank)",
        "carriers.softbank.routes.Ordinary Route: a route name is lower-case letters,"
        " digits and _ (at most 32)",
        "carriers.softbank.routes.ordinary.binds: must be >= 1",
        "carriers.softbank.routes.ordinary.number_prefixes: unknown key",
        "carriers.softbank.routes.spare: expected a table",
    ]


def test_the_premium_route_sends_a_fixed_number_not_a_name() -> None:
    raw = raw_config()
    raw["accounts"]["acme"]["senders"]["docomo"] = "ACME"
    assert problems_of(raw) == [
        "accounts.acme.senders.docomo: the premium route sends a fixed sender number"
        " (a 0120 number, or a short code such as 249200), not 'ACME'"
    ]
    # On a route that sends the account's sender and is not premium, a name
    # may go (not guaranteed to reach the handset as written).
    raw["accounts"]["acme"]["senders"]["rakuten"] = "ACME"
    raw["accounts"]["acme"]["senders"]["docomo"] = "0120111111"
    raw["accounts"]["acme"]["routes"] = {"rakuten": "ordinary"}
    assert parse_config(raw, env={}).accounts["acme"].senders["rakuten"] == "ACME"


def test_check_config_names_the_route_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARRIERD_DSN", "postgresql://localhost/carrierd")
    path = tmp_path / "carrierd.toml"
    path.write_text(
        """
[accounts.acme]
tokens = ["t"]
senders = { softbank = "249200" }
routes = { softbank = "ordinary" }

[carriers.softbank]
host = "127.0.0.1"
port = 2777
"""
    )
    assert main(["check-config", str(path)]) == 2
    assert (
        "accounts.acme.routes.softbank: carriers.softbank has no route 'ordinary'"
        in capsys.readouterr().err
    )
    path.write_text(
        path.read_text()
        + '\n[carriers.softbank.routes.ordinary]\nhost = "127.0.0.1"\nport = 2800\n'
        + 'sender = "ACME"\n'
    )
    assert main(["check-config", str(path)]) == 0
