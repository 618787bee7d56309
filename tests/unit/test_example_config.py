"""conf/carrierd.example.toml is a configuration the daemon accepts, and a
broken copy of it is refused with every bad key named."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from carrierd.__main__ import main
from carrierd.config import (
    CARRIERS,
    AccountConfig,
    AccountRcsConfig,
    CarrierConfig,
    DatabaseConfig,
    EngineConfig,
    HttpConfig,
    RcsConfig,
    ReassignConfig,
    ResendConfig,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "conf/carrierd.example.toml"

# The secrets the example leaves to the environment file.
ENV = {
    "CARRIERD_DSN": "postgresql://carrierd:secret@db1.internal.example:5432/carrierd",
    "CARRIERD_RCS_CLIENT_SECRET": "client-secret",
    "CARRIERD_RCS_WEBHOOK_SECRET": "webhook-secret",
    "CARRIERD_RCS_CLIENT_SECRET_ACME": "acme-client-secret",
    "CARRIERD_RCS_WEBHOOK_SECRET_ACME": "acme-webhook-secret",
    "CARRIERD_RCS_WEBHOOK_SECRET_GLOBEX": "globex-webhook-secret",
}


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CARRIERD_HTTP_PORT", "CARRIERD_LOG_LEVEL", "CARRIERD_RCS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def test_example_loads_with_production_values() -> None:
    config = load_config(EXAMPLE, env=ENV)
    assert config.database.dsn == ENV["CARRIERD_DSN"]
    assert set(config.carriers) == set(CARRIERS)
    for carrier in config.carriers.values():
        assert carrier.tls and carrier.system_id and carrier.binds >= 1 and carrier.window >= 1
    assert config.carriers["softbank"].receipt_timeout_s == 3600
    assert config.carriers["docomo"].receipt_timeout_s == 72 * 3600
    assert config.rcs.enabled and config.rcs.webhook_secret == "webhook-secret"
    acme = config.accounts["acme"]
    assert len(acme.token_sha256) == 4  # two with every scope, two with a role
    assert set(acme.api_tokens.values()) == {
        frozenset({"read", "reports"}),
        frozenset({"send", "read"}),
    }
    assert acme.senders["softbank"] == "249200"
    assert acme.resend.quiet_window is not None
    assert acme.callback_secret
    globex = config.accounts["globex"]
    assert globex.plan == "lite"
    assert [globex.route_for(c) for c in CARRIERS] == ["premium", "premium"] + ["ordinary"] * 2
    assert acme.route_for("rakuten") == "ordinary" and acme.route_for("softbank") == "premium"
    ordinary = config.carriers["softbank"].route_config("ordinary")
    assert ordinary is not None and ordinary.sender == "ACME" and ordinary.tls
    assert ordinary.receipt_timeout_s == 3600  # the carrier's rule, on every route
    acme_bot, globex_bot = config.rcs_bot_of("acme"), config.rcs_bot_of("globex")
    assert acme_bot is not None and globex_bot is not None
    assert (acme_bot.bot_id, acme_bot.oauth_client_id) == ("acme-bot", "acme-bot-client")
    assert (acme_bot.oauth_client_secret, acme_bot.webhook_secret) == (
        "acme-client-secret",
        "acme-webhook-secret",
    )
    assert (globex_bot.bot_id, globex_bot.oauth_client_id) == ("globex-bot", "acme-gateway")
    assert globex_bot.webhook_secret == "globex-webhook-secret"


def _fields(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def test_example_documents_every_setting() -> None:
    # A setting added to config.py without a line here fails this test, so
    # the example stays the reference operators copy from.
    raw = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    assert set(raw["daemon"]) == {"id", "log_level"}
    assert set(raw["database"]) == _fields(DatabaseConfig)
    assert set(raw["http"]) == _fields(HttpConfig)
    assert set(raw["engine"]) == _fields(EngineConfig)
    assert set(raw["accounts"]["acme"]) == _fields(AccountConfig) - {"account_id"}
    assert set(raw["accounts"]["acme"]["resend"]) == _fields(ResendConfig)
    # A route is named by its table; docomo's other routes are a subtable.
    assert set(raw["carriers"]["docomo"]) == _fields(CarrierConfig) - {"name", "route"}
    # Secrets are left to the environment file, and said so.
    env_secrets = {
        "token": "CARRIERD_RCS_TOKEN",
        "oauth_client_secret": "CARRIERD_RCS_CLIENT_SECRET",
        "webhook_secret": "CARRIERD_RCS_WEBHOOK_SECRET",
    }
    # [rcs] bot_id serves only accounts naming no bot: shown, commented out.
    assert set(raw["rcs"]) == _fields(RcsConfig) - set(env_secrets) - {"bot_id"}
    assert "\n# bot_id = " in text
    for variable in env_secrets.values():
        assert variable in text
    assert set(raw["accounts"]["acme"]["rcs"]) == _fields(AccountRcsConfig) - set(env_secrets)
    for variable in env_secrets.values():
        assert variable + "_ACME" in text
    # The reassigned-number check is optional: shown, commented out.
    for name in _fields(ReassignConfig) - {"token"}:
        assert f"\n# {name} = " in text, name
    assert "\n# [reassign]\n" in text and "CARRIERD_REASSIGN_TOKEN" in text


def test_example_stores_token_digests_only() -> None:
    text = EXAMPLE.read_text()
    assert "\ntokens =" not in text
    assert "token_sha256" in text


def test_check_config_accepts_the_example(
    secrets_in_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_names_every_bad_key_of_a_broken_copy(
    secrets_in_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text()
    breakages = {
        "window = 32\nresponse_timeout_s = 10\nenquire_link_interval_s = 30\n"
        "reconnect_max_backoff_s = 30\nthrottle_pause_s = 2.0": (
            "window = 0\nresponse_timeout_s = 10\nenquire_link_interval_s = 30\n"
            "reconnect_max_backoff_s = 30\nthrottle_pause_s = 2.0"
        ),
        'concat = "payload"': 'concat = "udh7"',
        'quiet_window = "21:00-09:00"': 'quiet_window = "9pm-9am"',
        "rate_per_hour = 10000": 'rate_per_hour = "fast"',
        "pool_max = 10": "pool_max = 10\npool_maximum = 20",
        'softbank = "249200"': 'softbank = "249200"\nwillcom = "0120123456"',
    }
    for old, new in breakages.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    broken = tmp_path / "broken.toml"
    broken.write_text(text)

    assert main(["check-config", str(broken)]) == 2
    errors = capsys.readouterr().err
    for key_path in (
        "carriers.au.window: must be >= 1",
        "carriers.rakuten.concat: must be one of",
        "accounts.acme.resend.quiet_window: expected 'HH:MM-HH:MM'",
        "accounts.globex.rate_per_hour: expected an integer or a number",
        "database.pool_maximum: unknown key",
        "accounts.acme.senders.willcom: unknown carrier",
    ):
        assert key_path in errors, f"{key_path!r} not in:\n{errors}"
