"""Each account's +Message official account (bot) in the configuration: who
owns which bot, where its credentials come from, and what check-config
refuses, with the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from carrierd.__main__ import main
from carrierd.config import ConfigError, account_env_name, parse_config

RCS = {"enabled": True, "base_url": "http://platform.example", "token": "platform-token"}


def config_raw(accounts: dict[str, dict[str, Any]], **rcs: Any) -> dict[str, Any]:
    return {
        "database": {"dsn": "postgresql://localhost/x"},
        "accounts": {
            name: {"tokens": [f"{name}-api-token"], **extra} for name, extra in accounts.items()
        },
        "rcs": {**RCS, "webhook_secret": "platform-webhook-secret", **rcs},
    }


def problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, env=env or {})
    return refused.value.problems


def test_each_account_owns_the_bot_it_names() -> None:
    config = parse_config(
        config_raw(
            {
                "acme": {"rcs": {"bot_id": "acme-bot"}},
                "globex": {"rcs": {"bot_id": "globex-bot", "token": "globex-token"}},
            }
        ),
        env={},
    )
    acme, globex = config.rcs_bot_of("acme"), config.rcs_bot_of("globex")
    assert acme is not None and globex is not None
    assert (acme.bot_id, acme.accounts, acme.token) == (
        "acme-bot",
        frozenset({"acme"}),
        "platform-token",
    )
    assert (globex.bot_id, globex.accounts, globex.token) == (
        "globex-bot",
        frozenset({"globex"}),
        "globex-token",
    )
    assert set(config.rcs_bots) == {"acme-bot", "globex-bot"}
    assert config.rcs_default_bot() is None


def test_rcs_bot_id_serves_the_accounts_that_name_none() -> None:
    # A configuration from before accounts had bots keeps working.
    config = parse_config(
        config_raw(
            {"acme": {}, "globex": {}, "initech": {"rcs": {"bot_id": "initech-bot"}}},
            bot_id="shared-bot",
        ),
        env={},
    )
    shared = config.rcs_default_bot()
    assert shared is not None and shared.accounts == frozenset({"acme", "globex"})
    assert config.rcs_bot_of("acme") is shared
    bot = config.rcs_bot_of("initech")
    assert bot is not None and bot.bot_id == "initech-bot"


def test_an_account_without_any_bot_has_none() -> None:
    config = parse_config(config_raw({"acme": {"rcs": {"bot_id": "acme-bot"}}, "sms-only": {}}))
    assert config.rcs_bot_of("sms-only") is None


def test_secrets_come_from_the_environment_named_after_the_account() -> None:
    env = {
        account_env_name("acme-jp", "TOKEN"): "env-token",
        account_env_name("acme-jp", "WEBHOOK_SECRET"): "env-webhook-secret",
        "CARRIERD_RCS_CLIENT_SECRET_GLOBEX": "env-client-secret",
    }
    assert account_env_name("acme-jp", "TOKEN") == "CARRIERD_RCS_TOKEN_ACME_JP"
    config = parse_config(
        config_raw(
            {
                "acme-jp": {"rcs": {"bot_id": "acme-bot", "token": "file-token"}},
                "globex": {"rcs": {"bot_id": "globex-bot", "oauth_client_id": "globex-client"}},
            },
            oauth_token_url="http://platform.example/oauth/token",
        ),
        env=env,
    )
    acme, globex = config.rcs_bots["acme-bot"], config.rcs_bots["globex-bot"]
    assert (acme.token, acme.webhook_secret) == ("env-token", "env-webhook-secret")
    # An OAuth client of its own: not the [rcs] static token.
    assert (globex.token, globex.oauth_client_id, globex.oauth_client_secret) == (
        "",
        "globex-client",
        "env-client-secret",
    )
    assert globex.webhook_secret == "platform-webhook-secret"


def test_two_accounts_naming_one_bot_are_refused() -> None:
    found = problems(
        config_raw(
            {
                "acme": {"rcs": {"bot_id": "shared-bot"}},
                "globex": {"rcs": {"bot_id": "shared-bot"}},
            }
        )
    )
    assert found == [
        "accounts.globex.rcs.bot_id: bot 'shared-bot' belongs to one account only;"
        " it is also accounts.acme.rcs.bot_id"
    ]


def test_naming_the_bot_other_accounts_inherit_is_refused() -> None:
    found = problems(
        config_raw(
            {"acme": {}, "globex": {"rcs": {"bot_id": "shared-bot"}}},
            bot_id="shared-bot",
        )
    )
    assert found == [
        "accounts.globex.rcs.bot_id: bot 'shared-bot' belongs to one account only;"
        " it is [rcs] bot_id, the official account of acme"
    ]


@pytest.mark.parametrize(
    ("accounts", "rcs", "expected"),
    [
        ({"acme": {"rcs": {}}}, {}, "accounts.acme.rcs.bot_id: required"),
        (
            {"acme": {"rcs": {"bot_id": "acme/bot"}}},
            {},
            "accounts.acme.rcs.bot_id: 'acme/bot': letters, digits",
        ),
        ({"acme": {"rcs": {"bot_id": "a", "bot": "b"}}}, {}, "accounts.acme.rcs.bot: unknown key"),
        (
            {"acme": {"rcs": {"bot_id": "acme-bot"}}},
            {"webhook_secret": ""},
            "accounts.acme.rcs.webhook_secret: required",
        ),
        (
            {"acme": {"rcs": {"bot_id": "acme-bot", "oauth_client_id": "c"}}},
            {},
            "accounts.acme.rcs.oauth_client_id: needs rcs.oauth_token_url",
        ),
        (
            {"acme": {"rcs": {"bot_id": "acme-bot"}}},
            {"token": ""},
            "rcs.token: a bearer token or oauth_token_url is required",
        ),
        ({"acme": {}}, {}, "rcs.bot_id: required when rcs.enabled is true"),
        (
            {"a-b": {"rcs": {"bot_id": "x"}}, "a_b": {"rcs": {"bot_id": "y"}}},
            {},
            "accounts.a_b.rcs: its secrets' environment names (CARRIERD_RCS_TOKEN_A_B)",
        ),
    ],
)
def test_what_a_bot_lacks_is_named_by_its_key(
    accounts: dict[str, dict[str, Any]], rcs: dict[str, Any], expected: str
) -> None:
    found = problems(config_raw(accounts, **rcs))
    assert any(problem.startswith(expected) for problem in found), found


def test_check_config_refuses_two_accounts_on_one_bot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARRIERD_RCS_TOKEN", raising=False)
    path = tmp_path / "carrierd.toml"
    path.write_text(
        """
[database]
dsn = "postgresql://localhost/x"

[accounts.acme]
tokens = ["acme-api-token"]
[accounts.acme.rcs]
bot_id = "acme-bot"

[accounts.globex]
tokens = ["globex-api-token"]
[accounts.globex.rcs]
bot_id = "acme-bot"

[rcs]
enabled = true
base_url = "http://platform.example"
token = "platform-token"
webhook_secret = "platform-webhook-secret"
"""
    )
    assert main(["check-config", str(path)]) == 2
    assert (
        "accounts.globex.rcs.bot_id: bot 'acme-bot' belongs to one account only"
        in capsys.readouterr().err
    )


def test_rcs_bot_id_named_by_an_account_when_none_inherits_is_that_accounts() -> None:
    config = parse_config(
        config_raw({"acme": {"rcs": {"bot_id": "acme-bot"}}}, bot_id="acme-bot"), env={}
    )
    bot = config.rcs_default_bot()
    assert bot is not None and bot.accounts == frozenset({"acme"})
