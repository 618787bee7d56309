"""Values from outside the file (environment variables, systemd credentials)
replace the file's value, are validated like it, and errors name where they
came from; a missing value names every way to give it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carrierd.__main__ import build_parser, main
from carrierd.config import (
    DEFAULT_CONFIG_PATH,
    OVERRIDES,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf/carrierd.example.toml"
DEMO = ROOT / "conf/carrierd.toml"

BASE: dict[str, Any] = {
    "accounts": {"acme": {"tokens": ["acme-token"]}},
    "database": {"dsn": "postgresql://file/db"},
}

# key path -> (the file's value, the override's text, what the config reads,
# how to read it). Every entry of OVERRIDES needs one.
SAMPLES: dict[str, tuple[Any, str, Any, Callable[[Config], Any]]] = {
    "daemon.id": ("from-file", "from-env", "from-env", lambda c: c.daemon_id),
    "daemon.log_level": ("info", "debug", "debug", lambda c: c.log_level),
    "http.port": (8080, "8081", 8081, lambda c: c.http.port),
    "database.dsn": (
        "postgresql://file/db",
        "postgresql://env/db",
        "postgresql://env/db",
        lambda c: c.database.dsn,
    ),
    "rcs.token": ("file-token", "env-token", "env-token", lambda c: c.rcs.token),
    "rcs.oauth_client_secret": ("file", "env", "env", lambda c: c.rcs.oauth_client_secret),
    "rcs.webhook_secret": ("file", "env", "env", lambda c: c.rcs.webhook_secret),
    "reassign.token": ("file", "env", "env", lambda c: c.reassign.token),
}


def with_key(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    table, name = key.split(".")
    return {**raw, table: {**raw.get(table, {}), name: value}}


def problems_of(raw: dict[str, Any], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env=env)
    return caught.value.problems


def test_every_override_has_a_sample() -> None:
    assert set(SAMPLES) == {o.key for o in OVERRIDES}


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda o: o.variable)
def test_a_variable_replaces_the_key_the_file_also_sets(override: Any) -> None:
    file_value, text, expected, read = SAMPLES[override.key]
    raw = with_key(BASE, override.key, file_value)
    config = parse_config(raw, env={override.variable: text})
    assert read(config) == expected
    assert config.overridden == {override.key: override.variable}
    # An empty variable (a blank EnvironmentFile line) leaves the file's value.
    assert read(parse_config(raw, env={override.variable: ""})) == file_value


@pytest.mark.parametrize(
    "override", [o for o in OVERRIDES if o.credential], ids=lambda o: o.credential
)
def test_a_credential_replaces_the_key_and_wins_over_the_variable(
    override: Any, tmp_path: Path
) -> None:
    file_value, text, expected, read = SAMPLES[override.key]
    # `echo secret > file` leaves a newline that is no part of the secret.
    (tmp_path / override.credential).write_text(text + "\n")
    raw = with_key(BASE, override.key, file_value)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    config = parse_config(raw, env=env)
    assert read(config) == expected
    assert config.overridden == {override.key: f"credential {override.credential}"}
    config = parse_config(raw, env={**env, override.variable: "from-variable"})
    assert read(config) == expected
    # A credential absent from the directory leaves the variable in charge.
    (tmp_path / override.credential).unlink()
    config = parse_config(raw, env={**env, override.variable: "from-variable"})
    assert read(config) == "from-variable"


def test_the_one_daemon_per_core_recipe_works_with_the_example() -> None:
    # The README's recipe: every daemon gets its own id and port from the
    # environment, beside the secrets the example leaves to it, although the
    # example sets daemon.id, daemon.log_level and http.port itself.
    raw = tomllib.loads(EXAMPLE.read_text())
    assert {"id", "log_level"} <= set(raw["daemon"]) and "port" in raw["http"]
    env = {
        "CARRIERD_DAEMON_ID": "gw1-core2",
        "CARRIERD_HTTP_PORT": "8082",
        "CARRIERD_LOG_LEVEL": "warning",
        "CARRIERD_DSN": "postgresql://carrierd:pw@db1/carrierd",
        "CARRIERD_RCS_TOKEN": "rcs-token",
        "CARRIERD_RCS_CLIENT_SECRET": "client-secret",
        "CARRIERD_RCS_WEBHOOK_SECRET": "webhook-secret",
        "CARRIERD_RCS_WEBHOOK_SECRET_ACME": "acme-webhook-secret",
        "CARRIERD_RCS_WEBHOOK_SECRET_GLOBEX": "globex-webhook-secret",
    }
    config = load_config(EXAMPLE, env=env)
    assert (config.daemon_id, config.http.port, config.log_level) == ("gw1-core2", 8082, "warning")
    assert (config.rcs.token, config.rcs.webhook_secret) == ("rcs-token", "webhook-secret")


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        ("CARRIERD_HTTP_PORT", "abc", "http.port (CARRIERD_HTTP_PORT): expected an integer"),
        ("CARRIERD_HTTP_PORT", "70000", "http.port (CARRIERD_HTTP_PORT): must be <= 65535"),
        ("CARRIERD_HTTP_PORT", "-1", "http.port (CARRIERD_HTTP_PORT): must be >= 0"),
        (
            "CARRIERD_LOG_LEVEL",
            "verbose",
            "daemon.log_level (CARRIERD_LOG_LEVEL): must be one of debug, info, warning, error",
        ),
    ],
)
def test_a_bad_override_is_refused_naming_the_variable(
    variable: str, text: str, expected: str
) -> None:
    problems = problems_of(BASE, {variable: text})
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_check_config_refuses_a_bad_override_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "carrierd.toml"
    config.write_text('[database]\ndsn = "postgresql://x/y"\n[accounts.a]\ntokens = ["t"]\n')
    monkeypatch.setenv("CARRIERD_HTTP_PORT", "abc")
    monkeypatch.setenv("CARRIERD_LOG_LEVEL", "verbose")
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "CARRIERD_HTTP_PORT" in err and "CARRIERD_LOG_LEVEL" in err


def test_check_config_says_which_keys_were_overridden(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "carrierd.toml"
    config.write_text('[database]\ndsn = "postgresql://x/y"\n[accounts.a]\ntokens = ["t"]\n')
    (tmp_path / "carrierd_rcs_token").write_text("very-secret")
    for override in OVERRIDES:
        monkeypatch.delenv(override.variable, raising=False)
    monkeypatch.setenv("CARRIERD_HTTP_PORT", "8099")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "http.port from CARRIERD_HTTP_PORT" in out
    assert "rcs.token from credential carrierd_rcs_token" in out
    assert "very-secret" not in out


def test_an_unreadable_credential_is_named(tmp_path: Path) -> None:
    (tmp_path / "carrierd_dsn").mkdir()
    problems = problems_of(BASE, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert len(problems) == 1
    assert problems[0].startswith("database.dsn (credential carrierd_dsn): cannot read")


def test_a_missing_database_names_the_ways_to_give_one() -> None:
    problems = problems_of({"accounts": BASE["accounts"]}, {})
    assert len(problems) == 1
    for way in ("CARRIERD_DSN", "credential carrierd_dsn", "database.dsn", "CARRIERD_LOCAL_DSN"):
        assert way in problems[0], problems
    # The demo configuration outside make: no dsn anywhere.
    with pytest.raises(ConfigError, match="CARRIERD_DSN"):
        load_config(DEMO, env={})
    assert load_config(DEMO, env={"CARRIERD_LOCAL_DSN": "postgresql://local/db"})


def test_a_missing_webhook_secret_names_the_variable_and_the_credential() -> None:
    raw = with_key(with_key(BASE, "rcs.enabled", True), "rcs.base_url", "https://rcs.example")
    raw = with_key(raw, "rcs.bot_id", "bot")
    problems = problems_of(with_key(raw, "rcs.token", "t"), {})
    assert len(problems) == 1 and problems[0].startswith("rcs.webhook_secret: required"), problems
    assert "CARRIERD_RCS_WEBHOOK_SECRET" in problems[0]
    assert "credential carrierd_rcs_webhook_secret" in problems[0]
    problems = problems_of(with_key(raw, "rcs.webhook_secret", "w"), {})
    assert len(problems) == 1 and problems[0].startswith("rcs.token: a bearer token"), problems
    assert "CARRIERD_RCS_TOKEN" in problems[0]


def test_the_example_names_each_accounts_missing_secrets() -> None:
    env = {"CARRIERD_DSN": "postgresql://x/y", "CARRIERD_RCS_CLIENT_SECRET": "s"}
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, env=env)
    assert caught.value.problems, "the example leaves its webhook secrets to the environment"
    for problem in caught.value.problems:
        account = problem.removeprefix("accounts.").split(".")[0]
        assert problem.startswith(f"accounts.{account}.rcs.webhook_secret: required"), problem
        assert f"CARRIERD_RCS_WEBHOOK_SECRET_{account.upper()}" in problem
        assert f"credential carrierd_rcs_webhook_secret_{account}" in problem


def test_an_accounts_own_secrets_come_from_credentials_or_its_variables(tmp_path: Path) -> None:
    raw = {
        **BASE,
        "rcs": {"enabled": True, "base_url": "https://rcs.example", "oauth_token_url": "u"},
        "accounts": {
            "acme-jp": {
                "tokens": ["t"],
                "rcs": {"bot_id": "acme-bot", "oauth_client_id": "c", "webhook_secret": "file"},
            }
        },
    }
    (tmp_path / "carrierd_rcs_webhook_secret_acme_jp").write_text("from-credential\n")
    env = {
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "CARRIERD_RCS_WEBHOOK_SECRET_ACME_JP": "from-variable",
        "CARRIERD_RCS_CLIENT_SECRET_ACME_JP": "client-secret",
    }
    config = parse_config(raw, env=env)
    bot = config.rcs_bots["acme-bot"]
    assert (bot.webhook_secret, bot.oauth_client_secret) == ("from-credential", "client-secret")
    assert config.overridden == {
        "accounts.acme-jp.rcs.webhook_secret": "credential carrierd_rcs_webhook_secret_acme_jp",
        "accounts.acme-jp.rcs.oauth_client_secret": "CARRIERD_RCS_CLIENT_SECRET_ACME_JP",
    }
    # The caller's mapping is left as it was.
    assert raw["accounts"]["acme-jp"]["rcs"]["webhook_secret"] == "file"


def test_the_installed_default_config_path() -> None:
    parser = build_parser()
    for argv in (["run"], ["migrate"], ["check-config"]):
        assert (
            parser.parse_args(argv).config == DEFAULT_CONFIG_PATH == "/etc/carrierd/carrierd.toml"
        )
    # The demo keeps its own configuration: make passes it explicitly.
    makefile = (ROOT / "Makefile").read_text()
    assert "CONFIG ?= conf/carrierd.toml" in makefile
    assert "migrate --config $(CONFIG)" in makefile
    assert '"$bin/carrierd" run --config "$config"' in (ROOT / "scripts/run-demo.sh").read_text()


def test_a_missing_default_config_says_how_to_name_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip("this machine has an installed configuration")
    assert main(["check-config"]) == 2
    assert "name the configuration file to use" in capsys.readouterr().err
