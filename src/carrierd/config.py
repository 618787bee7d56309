"""Frozen, validated configuration: TOML file plus environment overrides.

Every error names its key path (``carriers.au.binds: must be >= 1``), and all
errors of a file are reported at once so an operator fixes them in one pass.
Carrier and contract numbers from DOMAIN.md are defaults here, never
constants in the code that uses them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal

from carrierd.domain import rcs_flow
from carrierd.domain.netpolicy import IPNetwork

CARRIERS: tuple[str, ...] = ("docomo", "au", "softbank", "rakuten")
RCS_CARRIERS: frozenset[str] = rcs_flow.RCS_CARRIERS
LOG_LEVELS = ("debug", "info", "warning", "error")

ConcatMode = Literal["udh8", "udh16", "sar", "payload"]
MessageIdStyle = Literal["as_is", "hex", "decimal"]
BindMode = Literal["transceiver", "pair"]


class ConfigError(ValueError):
    """All problems found in a configuration, each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class QuietWindowConfig:
    start: time
    end: time


@dataclass(frozen=True)
class ResendConfig:
    max_resends: int = 0
    interval_s: float = 600.0
    quiet_window: QuietWindowConfig | None = None


@dataclass(frozen=True)
class AccountConfig:
    account_id: str
    token_sha256: tuple[bytes, ...]
    rate_per_hour: float = 40_000.0
    burst: int = 100
    count_parts: bool = False
    allow_m2m: bool = False
    max_sms_chars: int = 660
    allow_gsm7: bool = False
    # DOMAIN §6: sender per carrier (0120 number, SoftBank six-digit code...).
    senders: Mapping[str, str] = field(default_factory=dict)
    # DOMAIN §6: "premium" or "lite" route per carrier; informational for routing.
    routes: Mapping[str, str] = field(default_factory=dict)
    resend: ResendConfig = field(default_factory=ResendConfig)
    at_least_once: bool = False
    callback_secret: str = ""
    inbound_addresses: tuple[str, ...] = ()
    # Non-public networks its status callbacks may reach (domain/netpolicy.py);
    # public addresses need no entry.
    callback_allow_networks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class CarrierConfig:
    name: str
    host: str = "127.0.0.1"
    port: int = 2775
    binds: int = 1
    bind_mode: BindMode = "transceiver"
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    addr_ton: int = 1
    addr_npi: int = 1
    tls: bool = False
    window: int = 10
    response_timeout_s: float = 10.0
    enquire_link_interval_s: float = 30.0
    reconnect_max_backoff_s: float = 30.0
    # The slowest a throttled bind sends: one submit per throttle_pause_s
    # (smpp/send_rate.py backs off from, and recovers to, submit_rate_per_s).
    throttle_pause_s: float = 1.0
    submit_rate_per_s: float = 0.0  # 0: no per-bind limit
    concat: ConcatMode = "udh8"
    # Carriers write the id in submit_sm_resp and in the receipt in different
    # bases (hex in one, decimal in the other); each side gets its own style.
    message_id_style: MessageIdStyle = "as_is"
    receipt_id_style: MessageIdStyle = "as_is"
    # "Not our subscriber" answers (DOMAIN §4): submit_sm_resp statuses and
    # receipt err codes that mean the number belongs to another carrier.
    wrong_carrier_statuses: tuple[int, ...] = (0x0000000B,)
    wrong_carrier_receipt_errors: tuple[int, ...] = ()
    receipt_timeout_s: float = 72 * 3600.0
    # Number-range table for carrier determination: national prefixes.
    number_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RcsConfig:
    enabled: bool = False
    base_url: str = ""
    bot_id: str = ""
    token: str = ""
    oauth_token_url: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: str = ""
    webhook_secret: str = ""
    request_timeout_s: float = 10.0
    fallback_after_s: float = 600.0
    expiry_s: float = 72 * 3600.0
    capability_ttl_s: float = 24 * 3600.0
    # A signed webhook's X-Signature-Timestamp may differ from our clock by
    # at most this much: an older capture cannot be replayed.
    webhook_tolerance_s: float = 300.0


@dataclass(frozen=True)
class EngineConfig:
    claim_batch: int = 500
    lease_s: float = 60.0
    idle_poll_s: float = 0.05
    au_spacing_s: float = 22.0
    # How long a message whose parts the SMSC all accepted stays 'sending'
    # while its receipt may still come: a receipt within this time settles it
    # straight to its final state, one row update instead of two.
    submitted_grace_s: float = 15.0
    message_expiry_s: float = 72 * 3600.0
    pacing: bool = True
    default_carrier_order: tuple[str, ...] = CARRIERS


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024
    max_batch_items: int = 10_000
    # Hostile or broken clients (http/limits.py): a request head must arrive
    # within header_timeout_s of its first byte, a body within body_timeout_s
    # of its head; a connection waiting for a request is closed after
    # idle_timeout_s; at most max_connections are open at once.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_connections: int = 256
    # Scheduled sends: send_at at most this far ahead, and not further in the
    # past than the skew between the client's clock and ours.
    send_at_max_ahead_days: float = 60.0
    send_at_past_skew_s: float = 300.0
    # One http_access log event per request (http/observe.py).
    access_log: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    pool_min: int = 2
    pool_max: int = 10


@dataclass(frozen=True)
class Config:
    daemon_id: str
    log_level: str
    database: DatabaseConfig
    http: HttpConfig
    engine: EngineConfig
    accounts: Mapping[str, AccountConfig]
    carriers: Mapping[str, CarrierConfig]
    rcs: RcsConfig
    source_path: Path | None = None

    def account_for_token(self, token: str) -> AccountConfig | None:
        digest = hash_token(token)
        for account in self.accounts.values():
            if digest in account.token_sha256:
                return account
        return None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class _Reader:
    """Typed access to a TOML table that records problems instead of raising."""

    def __init__(self, problems: list[str], table: Mapping[str, Any], path: str) -> None:
        self.problems = problems
        self.table = table
        self.path = path
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self._key(key)}: {text}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python; a number field must not accept true/false.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(key, f"expected {_kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = float(self.get(key, (int, float), default))
        if minimum is not None and value < minimum:
            self.problem(key, f"must be >= {minimum:g}")
        if maximum is not None and value > maximum:
            self.problem(key, f"must be <= {maximum:g}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = int(self.get(key, int, default))
        if minimum is not None and value < minimum:
            self.problem(key, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.problem(key, f"must be <= {maximum}")
        return value

    def string(self, key: str, default: str, *, choices: tuple[str, ...] | None = None) -> str:
        value = str(self.get(key, str, default))
        if choices is not None and value not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default))

    def table_of(self, key: str) -> Mapping[str, Any]:
        return dict(self.get(key, dict, {}))

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) for v in value):
            self.problem(key, "expected a list of strings")
            return default
        return tuple(value)

    def integers(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.problem(key, "expected a list of integers")
            return default
        return tuple(value)

    def finish(self) -> None:
        for key in self.table:
            if key not in self.used:
                self.problem(key, "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "a boolean",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_quiet_window(reader: _Reader, key: str) -> QuietWindowConfig | None:
    text = reader.string(key, "")
    if not text:
        return None
    try:
        start_text, end_text = text.split("-")
        return QuietWindowConfig(
            time.fromisoformat(start_text.strip()), time.fromisoformat(end_text.strip())
        )
    except ValueError:
        reader.problem(key, f"expected 'HH:MM-HH:MM' (JST), got {text!r}")
        return None


def _parse_account(problems: list[str], account_id: str, raw: Mapping[str, Any]) -> AccountConfig:
    r = _Reader(problems, raw, f"accounts.{account_id}")
    tokens = [hash_token(t) for t in r.strings("tokens", ())]
    for hex_digest in r.strings("token_sha256", ()):
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            r.problem("token_sha256", f"not a SHA-256 hex digest: {hex_digest!r}")
        else:
            tokens.append(digest)
    if not tokens:
        r.problem("tokens", "an account needs at least one API token (tokens or token_sha256)")
    senders = r.table_of("senders")
    for carrier, sender in senders.items():
        if carrier not in CARRIERS:
            problems.append(f"accounts.{account_id}.senders.{carrier}: unknown carrier")
        elif not isinstance(sender, str) or not sender:
            problems.append(f"accounts.{account_id}.senders.{carrier}: expected a sender number")
    routes = r.table_of("routes")
    for carrier, route in routes.items():
        if carrier not in CARRIERS:
            problems.append(f"accounts.{account_id}.routes.{carrier}: unknown carrier")
        elif route not in ("premium", "lite", "standard"):
            problems.append(
                f"accounts.{account_id}.routes.{carrier}: must be premium, lite or standard"
            )
    resend_reader = _Reader(problems, r.table_of("resend"), f"accounts.{account_id}.resend")
    resend = ResendConfig(
        max_resends=resend_reader.integer("max_resends", 0, minimum=0, maximum=10),
        interval_s=resend_reader.number("interval_s", 600.0, minimum=1.0),
        quiet_window=_parse_quiet_window(resend_reader, "quiet_window"),
    )
    resend_reader.finish()
    account = AccountConfig(
        account_id=account_id,
        token_sha256=tuple(tokens),
        rate_per_hour=r.number("rate_per_hour", 40_000.0, minimum=1.0),
        burst=r.integer("burst", 100, minimum=1),
        count_parts=r.boolean("count_parts", False),
        allow_m2m=r.boolean("allow_m2m", False),
        max_sms_chars=r.integer("max_sms_chars", 660, minimum=1, maximum=670),
        allow_gsm7=r.boolean("allow_gsm7", False),
        senders={k: v for k, v in senders.items() if isinstance(v, str)},
        routes={k: v for k, v in routes.items() if isinstance(v, str)},
        resend=resend,
        at_least_once=r.boolean("at_least_once", False),
        callback_secret=r.string("callback_secret", ""),
        inbound_addresses=r.strings("inbound_addresses", ()),
        callback_allow_networks=_parse_networks(r, "callback_allow_networks"),
    )
    r.finish()
    return account


def _parse_networks(reader: _Reader, key: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for text in reader.strings(key, ()):
        try:
            networks.append(ip_network(text))
        except ValueError as exc:
            reader.problem(key, f"not a network such as 10.0.0.0/8: {exc}")
    return tuple(networks)


def _parse_carrier(problems: list[str], name: str, raw: Mapping[str, Any]) -> CarrierConfig:
    r = _Reader(problems, raw, f"carriers.{name}")
    default_timeout = 3600.0 if name == "softbank" else 72 * 3600.0
    carrier = CarrierConfig(
        name=name,
        host=r.string("host", "127.0.0.1"),
        port=r.integer("port", 2775, minimum=0, maximum=65535),
        binds=r.integer("binds", 1, minimum=1, maximum=64),
        bind_mode=r.string("bind_mode", "transceiver", choices=("transceiver", "pair")),  # type: ignore[arg-type]
        system_id=r.string("system_id", ""),
        password=r.string("password", ""),
        system_type=r.string("system_type", ""),
        addr_ton=r.integer("addr_ton", 1, minimum=0, maximum=6),
        addr_npi=r.integer("addr_npi", 1, minimum=0, maximum=18),
        tls=r.boolean("tls", False),
        window=r.integer("window", 10, minimum=1, maximum=1024),
        response_timeout_s=r.number("response_timeout_s", 10.0, minimum=0.1),
        enquire_link_interval_s=r.number("enquire_link_interval_s", 30.0, minimum=1.0),
        reconnect_max_backoff_s=r.number("reconnect_max_backoff_s", 30.0, minimum=0.1),
        throttle_pause_s=r.number("throttle_pause_s", 1.0, minimum=0.0),
        submit_rate_per_s=r.number("submit_rate_per_s", 0.0, minimum=0.0),
        concat=r.string("concat", "udh8", choices=("udh8", "udh16", "sar", "payload")),  # type: ignore[arg-type]
        message_id_style=r.string(  # type: ignore[arg-type]
            "message_id_style", "as_is", choices=("as_is", "hex", "decimal")
        ),
        receipt_id_style=r.string(  # type: ignore[arg-type]
            "receipt_id_style", "as_is", choices=("as_is", "hex", "decimal")
        ),
        wrong_carrier_statuses=r.integers("wrong_carrier_statuses", (0x0000000B,)),
        wrong_carrier_receipt_errors=r.integers("wrong_carrier_receipt_errors", ()),
        receipt_timeout_s=r.number("receipt_timeout_s", default_timeout, minimum=1.0),
        number_prefixes=r.strings("number_prefixes", ()),
    )
    r.finish()
    return carrier


def _resolve_dsn(configured: str, env: Mapping[str, str]) -> str:
    # Precedence: CARRIERD_DSN, then the config file, then the project-local
    # server that `make run` / `make test` start (CARRIERD_LOCAL_DSN).
    return env.get("CARRIERD_DSN") or configured or env.get("CARRIERD_LOCAL_DSN", "")


def parse_config(
    raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source_path: Path | None = None
) -> Config:
    env = os.environ if env is None else env
    problems: list[str] = []
    top = _Reader(problems, raw, "")

    daemon = _Reader(problems, top.table_of("daemon"), "daemon")
    default_id = f"{socket.gethostname()}-{os.getpid()}"
    daemon_id = env.get("CARRIERD_DAEMON_ID") or daemon.string("id", "") or default_id
    log_level = env.get("CARRIERD_LOG_LEVEL") or daemon.string(
        "log_level", "info", choices=LOG_LEVELS
    )
    daemon.finish()

    db = _Reader(problems, top.table_of("database"), "database")
    dsn = _resolve_dsn(db.string("dsn", ""), env)
    if not dsn:
        problems.append("database.dsn: no database configured (set CARRIERD_DSN or database.dsn)")
    database = DatabaseConfig(
        dsn=dsn,
        pool_min=db.integer("pool_min", 2, minimum=1),
        pool_max=db.integer("pool_max", 10, minimum=1),
    )
    db.finish()

    http_reader = _Reader(problems, top.table_of("http"), "http")
    http = HttpConfig(
        host=http_reader.string("host", "127.0.0.1"),
        port=int(
            env.get("CARRIERD_HTTP_PORT")
            or http_reader.integer("port", 8080, minimum=0, maximum=65535)
        ),
        max_body_bytes=http_reader.integer("max_body_bytes", 32 * 1024 * 1024, minimum=1024),
        max_batch_items=http_reader.integer("max_batch_items", 10_000, minimum=1),
        header_timeout_s=http_reader.number("header_timeout_s", 10.0, minimum=0.1),
        body_timeout_s=http_reader.number("body_timeout_s", 60.0, minimum=0.1),
        idle_timeout_s=http_reader.number("idle_timeout_s", 60.0, minimum=0.1),
        max_connections=http_reader.integer("max_connections", 256, minimum=1),
        send_at_max_ahead_days=http_reader.number(
            "send_at_max_ahead_days", 60.0, minimum=1.0, maximum=3650.0
        ),
        send_at_past_skew_s=http_reader.number("send_at_past_skew_s", 300.0, minimum=0.0),
        access_log=http_reader.boolean("access_log", False),
    )
    http_reader.finish()

    eng = _Reader(problems, top.table_of("engine"), "engine")
    order = eng.strings("default_carrier_order", CARRIERS)
    for name in order:
        if name not in CARRIERS:
            problems.append(f"engine.default_carrier_order: unknown carrier {name!r}")
    engine = EngineConfig(
        claim_batch=eng.integer("claim_batch", 500, minimum=1, maximum=10_000),
        lease_s=eng.number("lease_s", 60.0, minimum=1.0),
        idle_poll_s=eng.number("idle_poll_s", 0.05, minimum=0.001),
        au_spacing_s=eng.number("au_spacing_s", 22.0, minimum=0.0),
        submitted_grace_s=eng.number("submitted_grace_s", 15.0, minimum=0.0, maximum=60.0),
        message_expiry_s=eng.number("message_expiry_s", 72 * 3600.0, minimum=60.0),
        pacing=eng.boolean("pacing", True),
        default_carrier_order=order,
    )
    eng.finish()

    accounts: dict[str, AccountConfig] = {}
    for account_id, account_raw in top.table_of("accounts").items():
        if not isinstance(account_raw, dict):
            problems.append(f"accounts.{account_id}: expected a table")
            continue
        accounts[account_id] = _parse_account(problems, account_id, account_raw)
    seen_tokens: dict[bytes, str] = {}
    for account in accounts.values():
        for digest in account.token_sha256:
            other = seen_tokens.setdefault(digest, account.account_id)
            if other != account.account_id:
                problems.append(
                    f"accounts.{account.account_id}.tokens: token also used by account {other}"
                )

    carriers: dict[str, CarrierConfig] = {}
    for name, carrier_raw in top.table_of("carriers").items():
        if name not in CARRIERS:
            problems.append(
                f"carriers.{name}: unknown carrier (expected one of {', '.join(CARRIERS)})"
            )
            continue
        if not isinstance(carrier_raw, dict):
            problems.append(f"carriers.{name}: expected a table")
            continue
        carriers[name] = _parse_carrier(problems, name, carrier_raw)

    rr = _Reader(problems, top.table_of("rcs"), "rcs")
    rcs = RcsConfig(
        enabled=rr.boolean("enabled", False),
        base_url=rr.string("base_url", ""),
        bot_id=rr.string("bot_id", ""),
        token=env.get("CARRIERD_RCS_TOKEN") or rr.string("token", ""),
        oauth_token_url=rr.string("oauth_token_url", ""),
        oauth_client_id=rr.string("oauth_client_id", ""),
        oauth_client_secret=env.get("CARRIERD_RCS_CLIENT_SECRET")
        or rr.string("oauth_client_secret", ""),
        webhook_secret=env.get("CARRIERD_RCS_WEBHOOK_SECRET") or rr.string("webhook_secret", ""),
        request_timeout_s=rr.number("request_timeout_s", 10.0, minimum=0.1),
        fallback_after_s=rr.number("fallback_after_s", 600.0, minimum=1.0),
        expiry_s=rr.number("expiry_s", 72 * 3600.0, minimum=60.0),
        capability_ttl_s=rr.number("capability_ttl_s", 24 * 3600.0, minimum=0.0),
        webhook_tolerance_s=rr.number("webhook_tolerance_s", 300.0, minimum=1.0),
    )
    if rcs.enabled:
        for key in ("base_url", "bot_id", "webhook_secret"):
            if not getattr(rcs, key):
                problems.append(f"rcs.{key}: required when rcs.enabled is true")
        if not rcs.token and not rcs.oauth_token_url:
            problems.append("rcs.token: a bearer token or oauth_token_url is required")
    rr.finish()
    top.finish()

    if problems:
        raise ConfigError(problems)
    return Config(
        daemon_id=daemon_id,
        log_level=log_level,
        database=database,
        http=http,
        engine=engine,
        accounts=accounts,
        carriers=carriers,
        rcs=rcs,
        source_path=source_path,
    )


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    config_path = Path(path)
    try:
        with config_path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError([f"{config_path}: file not found"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{config_path}: not valid TOML: {exc}"]) from exc
    return parse_config(raw, env=env, source_path=config_path)
