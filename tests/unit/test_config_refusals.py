"""Configuration that would only fail once the daemon runs is refused by
`carrierd check-config`, naming the key path and the reason: a carrier
without its SMSC's address, SMPP bind fields the protocol cannot carry, and
an account with no sender for a configured carrier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from carrierd.__main__ import main
from carrierd.config import ConfigError, parse_config


def raw_config() -> dict[str, Any]:
    return {
        "database": {"dsn": "postgresql:///x"},
        "accounts": {
            "acme": {"tokens": ["t"], "senders": {"docomo": "0120111111", "au": "0120111111"}}
        },
        "carriers": {
            "docomo": {"host": "smsc.docomo.example.jp", "port": 2775},
            "au": {"host": "smsc.au.example.jp", "port": 2775},
        },
    }


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    return caught.value.problems


def test_the_base_config_is_accepted() -> None:
    config = parse_config(raw_config(), env={})
    assert config.carriers["au"].host == "smsc.au.example.jp"


@pytest.mark.parametrize("key", ["host", "port"])
def test_a_carrier_without_its_smsc_address_is_refused(key: str) -> None:
    raw = raw_config()
    del raw["carriers"]["au"][key]
    assert problems_of(raw) == [f"carriers.au.{key}: required: the address of the carrier's SMSC"]


def test_an_empty_host_is_refused() -> None:
    raw = raw_config()
    raw["carriers"]["docomo"]["host"] = " "
    assert problems_of(raw) == ["carriers.docomo.host: must not be empty"]


@pytest.mark.parametrize(
    ("key", "longest"), [("system_id", 15), ("password", 8), ("system_type", 12)]
)
def test_bind_fields_longer_than_smpp_allows_are_refused(key: str, longest: int) -> None:
    raw = raw_config()
    raw["carriers"]["docomo"][key] = "x" * longest
    parse_config(raw, env={})
    raw["carriers"]["docomo"][key] = "x" * (longest + 1)
    [problem] = problems_of(raw)
    assert problem.startswith(f"carriers.docomo.{key}: {longest + 1} octets;")
    assert f"at most {longest}" in problem


def test_a_bind_field_outside_ascii_is_refused() -> None:
    raw = raw_config()
    raw["carriers"]["docomo"]["password"] = "pässwd"
    assert problems_of(raw) == ["carriers.docomo.password: must be ASCII (an SMPP C-octet string)"]


def test_an_account_without_a_sender_for_a_configured_carrier_is_refused() -> None:
    raw = raw_config()
    del raw["accounts"]["acme"]["senders"]["au"]
    [problem] = problems_of(raw)
    assert problem.startswith("accounts.acme.senders.au: required:")
    # A sender for a carrier that is not configured here is not needed.
    raw = raw_config()
    del raw["carriers"]["au"]
    del raw["accounts"]["acme"]["senders"]["au"]
    parse_config(raw, env={})


def test_check_config_names_each_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "carrierd.toml"
    path.write_text(
        "\n".join(
            [
                "[database]",
                'dsn = "postgresql:///x"',
                "[accounts.acme]",
                'tokens = ["t"]',
                'senders = { docomo = "0120111111" }',
                "[carriers.docomo]",
                "port = 2775",
                'password = "longer-than-8"',
                "[carriers.au]",
                'host = "smsc.au.example.jp"',
                "port = 2775",
            ]
        )
    )
    assert main(["check-config", str(path)]) == 2
    errors = capsys.readouterr().err
    for expected in (
        "carriers.docomo.host: required",
        "carriers.docomo.password: 13 octets; SMPP 3.4 allows at most 8",
        "accounts.acme.senders.au: required",
    ):
        assert expected in errors, f"{expected!r} not in:\n{errors}"


def test_a_secret_from_the_environment_leaves_the_file_key_known() -> None:
    raw = raw_config()
    raw["rcs"] = {"webhook_secret": "from-the-file"}
    config = parse_config(raw, env={"CARRIERD_RCS_WEBHOOK_SECRET": "from-the-env"})
    assert config.rcs.webhook_secret == "from-the-env"


def test_reply_settings_are_checked() -> None:
    raw = raw_config()
    raw["accounts"]["acme"].update(
        inbound_callback_url="http://10.0.0.5/replies", keywords=["停止", " "]
    )
    raw["carriers"]["docomo"]["mo_default_alphabet"] = "utf8"
    raw["inbound"] = {"reassembly_timeout_s": 0}
    assert problems_of(raw) == [
        "accounts.acme.inbound_callback_url: host '10.0.0.5' is not a public address"
        " (not allowed for this account)",
        "accounts.acme.keywords: a keyword must not be empty",
        "carriers.docomo.mo_default_alphabet: must be one of gsm7, gsm7_packed, shift_jis,"
        " latin1, not 'utf8'",
        "inbound.reassembly_timeout_s: must be >= 1",
    ]
