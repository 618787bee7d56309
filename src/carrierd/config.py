"""Frozen, validated configuration: TOML file plus environment overrides.

Every error names its key path (``carriers.au.binds: must be >= 1``), and all
errors of a file are reported at once so an operator fixes them in one pass.
Carrier and contract numbers from DOMAIN.md are defaults here, never
constants in the code that uses them.

A few keys may also come from the environment or, for secrets, from a
systemd credential (``LoadCredential=``, read from
``$CREDENTIALS_DIRECTORY``); `OVERRIDES` is the one list of them. An
override replaces the file's value before validation, so it is checked by
the same code as the key it replaces, and an error about it names where the
value came from (``http.port (CARRIERD_HTTP_PORT): expected an integer``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from carrierd.domain import rcs_flow
from carrierd.domain.links import style_problem
from carrierd.domain.netpolicy import IPNetwork, callback_url_problem

# Where an installed carrierd looks for its configuration (the demo passes
# conf/carrierd.toml through `make run`).
DEFAULT_CONFIG_PATH = "/etc/carrierd/carrierd.toml"

CARRIERS: tuple[str, ...] = ("docomo", "au", "softbank", "rakuten")
RCS_CARRIERS: frozenset[str] = rcs_flow.RCS_CARRIERS
LOG_LEVELS = ("debug", "info", "warning", "error")
# SMPP 3.4 §4.1.1: the bind's C-octet strings, in octets without the NUL
# (the spec's maxima, 16, 9 and 13, count it). A longer value cannot be
# encoded, so every bind attempt would fail: refused here instead.
SMPP_BIND_FIELD_MAX_OCTETS: Mapping[str, int] = {
    "system_id": 15,
    "password": 8,
    "system_type": 12,
}

# DOMAIN §6: a carrier's own connection is its premium route (direct, fixed
# sender numbers); other routes (an ordinary route through another SMSC) are
# named tables under it. A plan names a route per carrier.
PREMIUM = "premium"
ORDINARY = "ordinary"
PLANS: Mapping[str, Mapping[str, str]] = {
    "premium": dict.fromkeys(CARRIERS, PREMIUM),
    # Premium for docomo and au only, the ordinary route for the others.
    "lite": {"docomo": PREMIUM, "au": PREMIUM, "softbank": ORDINARY, "rakuten": ORDINARY},
}
# Route values earlier versions accepted (and ignored): what they meant now.
_LEGACY_ROUTE_HINTS: Mapping[str, str] = {
    "lite": ' (lite is a plan: plan = "lite")',
    "standard": " (the route once called standard is named ordinary)",
}
_ROUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# What a premium route carries as sender: the account's fixed number, a
# national number (0120...) or a carrier short code (SoftBank's 249200).
_FIXED_NUMBER = re.compile(r"\+?[0-9]{3,20}")

# What an API token may do (http/app.py `authenticate`): send and cancel
# messages, read their status, read billing and the delivery log, manage the
# opt-out list; `admin` holds every scope (and will manage users).
SCOPES: tuple[str, ...] = ("send", "read", "reports", "optouts", "admin")
ALL_SCOPES: frozenset[str] = frozenset(SCOPES)
# The roles of a KMC company's users, as scopes. A general user prepares
# drafts, which carrierd does not hold: it may only read.
ROLES: Mapping[str, frozenset[str]] = {
    "company_admin": frozenset({"admin"}),
    "senior_manager": frozenset({"send", "read", "reports", "optouts"}),
    "manager": frozenset({"send", "read"}),
    "general_user": frozenset({"read"}),
}

ConcatMode = Literal["udh8", "udh16", "sar", "payload"]
MessageIdStyle = Literal["as_is", "hex", "decimal"]
BindMode = Literal["transceiver", "pair"]
# data_coding 0 in MO: GSM 7-bit one septet per octet (SMPP's usual form) or
# packed, or an 8-bit character set agreed with the SMSC.
MoDefaultAlphabet = Literal["gsm7", "gsm7_packed", "shift_jis", "latin1"]
MO_DEFAULT_ALPHABETS: tuple[str, ...] = ("gsm7", "gsm7_packed", "shift_jis", "latin1")


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
class AccountRcsConfig:
    """The account's own +Message official account (公式アカウント): its bot,
    and the platform credentials issued for that bot. A credential left
    empty comes from [rcs] (one platform login serving several bots)."""

    bot_id: str
    token: str = field(default="", repr=False)
    oauth_client_id: str = ""
    oauth_client_secret: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)
    # The official account allows subscriptions (KMC §3.4.7): its
    # subscribers can be fetched into a subscriber group.
    subscriptions: bool = False


@dataclass(frozen=True)
class RcsBotConfig:
    """One official account as the daemon uses it: credentials resolved
    (account, environment, [rcs]) and the accounts it sends for. A bot an
    account names serves that account alone; [rcs] bot_id serves every
    account that names none."""

    bot_id: str
    accounts: frozenset[str]
    token: str = field(default="", repr=False)
    oauth_client_id: str = ""
    oauth_client_secret: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class AccountConfig:
    account_id: str
    token_sha256: tuple[bytes, ...]
    # The scopes of each token given in `api_tokens`; a token listed in
    # `tokens` or `token_sha256` holds every scope.
    api_tokens: Mapping[bytes, frozenset[str]] = field(default_factory=dict)
    rate_per_hour: float = 40_000.0
    burst: int = 100
    count_parts: bool = False
    allow_m2m: bool = False
    max_sms_chars: int = 660
    allow_gsm7: bool = False
    # DOMAIN §6: sender per carrier (0120 number, SoftBank six-digit code...).
    senders: Mapping[str, str] = field(default_factory=dict)
    # DOMAIN §6: the route per carrier; `routes` names one for a carrier,
    # the plan (PLANS) gives the others.
    plan: str = "premium"
    routes: Mapping[str, str] = field(default_factory=dict)
    resend: ResendConfig = field(default_factory=ResendConfig)
    at_least_once: bool = False
    callback_secret: str = ""
    inbound_addresses: tuple[str, ...] = ()
    # Replies (engine/inbound.py): pushed to this URL (signed like status
    # callbacks; "" for none); a reply that is one of `keywords` (compared
    # after NFKC, trimming and case folding) puts its number on the opt-out
    # list, and the first time it does, `keyword_reply` (if any) answers it.
    inbound_callback_url: str = ""
    keywords: tuple[str, ...] = ()
    keyword_reply: str = ""
    # Non-public networks its status callbacks may reach (domain/netpolicy.py);
    # public addresses need no entry.
    callback_allow_networks: tuple[IPNetwork, ...] = ()
    # Its +Message official account; None: the [rcs] bot_id (documented
    # for deployments where one company owns every account).
    rcs: AccountRcsConfig | None = None
    # DOMAIN §12: its opt-out list's cap, and whether a send that does not
    # say skips the numbers on it.
    optout_cap: int = 10_000
    skip_opted_out: bool = False

    def route_for(self, carrier: str) -> str:
        """The route this account's SMS to `carrier` take (DOMAIN §6)."""
        return self.routes.get(carrier) or PLANS[self.plan].get(carrier, PREMIUM)


@dataclass(frozen=True)
class CarrierConfig:
    """One route of a carrier: an SMSC connection with its bind pool. The
    carrier's table is its premium route; `routes` holds its other ones."""

    name: str
    route: str = PREMIUM
    # The sender this route writes: "" sends the account's sender for the
    # carrier (a fixed number on a premium route); a value is the route's
    # own sender (an ordinary route's alphanumeric ID or shared number, not
    # guaranteed to reach the handset as written), whatever the account's.
    sender: str = ""
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
    # What data_coding 0 (SMSC default alphabet) means in this SMSC's MO:
    # by SMPP 3.4 a bilateral agreement (domain/inbound.py decode_mo).
    mo_default_alphabet: MoDefaultAlphabet = "gsm7"
    # Number-range table for carrier determination: national prefixes.
    number_prefixes: tuple[str, ...] = ()
    # The carrier's other routes by name (only on the premium one).
    routes: Mapping[str, CarrierConfig] = field(default_factory=dict)

    @property
    def pool_name(self) -> str:
        """Names this route's pool in bind ids, health and metrics."""
        return self.name if self.route == PREMIUM else f"{self.name}/{self.route}"

    def route_config(self, route: str) -> CarrierConfig | None:
        """The connection of the carrier's route `route`, None if it has none."""
        return self if route == self.route else self.routes.get(route)

    def all_routes(self) -> tuple[CarrierConfig, ...]:
        return (self, *self.routes.values())

    def sender_for(self, account: AccountConfig) -> str:
        return self.sender or account.senders.get(self.name, "")


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
class ReassignConfig:
    """DOMAIN §13: the reassignment database, an HTTP JSON service
    (channels/reassign.py). `url` set means the check is on."""

    url: str = ""
    token: str = ""
    timeout_s: float = 5.0
    # Further tries after a failed request (5xx, timeout, a malformed
    # answer), before the messages of the batch are skipped as failed.
    retries: int = 2
    batch_size: int = 100
    # Lookup requests in flight at once.
    concurrency: int = 4

    @property
    def enabled(self) -> bool:
        return bool(self.url)


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
class LinksConfig:
    """The public link server (http/links.py) and the links it mints
    (domain/links.py, DOMAIN §12). Off unless enabled: a body with link
    marks is then refused at intake rather than sent with the marks in it."""

    enabled: bool = False
    # Where it listens: meant to face the internet behind a TLS proxy.
    host: str = "127.0.0.1"
    port: int = 8081
    # What a link shows: [https://]domain/code, 23 characters.
    domain: str = ""
    show_scheme: bool = False
    # Signs the opt-out page's CSRF tokens; the same on every daemon.
    csrf_secret: str = field(default="", repr=False)
    optout_valid_days: float = 60.0
    # The proxies whose X-Forwarded-For names the client (rate limits).
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Per client address: every request, and (stricter) answers for codes
    # that do not exist or expired, which is what guessing produces.
    rate_per_s: float = 20.0
    burst: int = 60
    misses_per_min: float = 10.0
    miss_burst: int = 20
    # Send the CSRF cookie with Secure (the proxy in front speaks https).
    secure_cookies: bool = True
    max_connections: int = 1024


@dataclass(frozen=True)
class InboundConfig:
    """Replies (engine/inbound.py)."""

    # A reply answers the account's last message to the number sent within
    # this window before it.
    answer_window_s: float = 7 * 24 * 3600.0
    # A concatenated MO whose parts have not all come this long after its
    # first part is stored as what arrived, marked incomplete.
    reassembly_timeout_s: float = 300.0
    # A deliver_sm carries no id of its own: the same bytes from the same
    # number to the same address within this window are one MO, delivered
    # again (its acknowledgement was lost), not a second reply.
    sms_duplicate_window_s: float = 600.0


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
    # Key paths an override set, and where from ("CARRIERD_HTTP_PORT").
    overridden: Mapping[str, str] = field(default_factory=dict)
    # +Message official accounts by bot id.
    rcs_bots: Mapping[str, RcsBotConfig] = field(default_factory=dict)
    reassign: ReassignConfig = field(default_factory=ReassignConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)

    def rcs_bot_of(self, account_id: str) -> RcsBotConfig | None:
        """The official account an account's +Message goes out under."""
        for bot in self.rcs_bots.values():
            if account_id in bot.accounts:
                return bot
        return None

    def rcs_default_bot(self) -> RcsBotConfig | None:
        """The [rcs] bot_id, when it serves an account."""
        return self.rcs_bots.get(self.rcs.bot_id) if self.rcs.bot_id else None

    def account_for_token(self, token: str) -> AccountConfig | None:
        access = self.access_for_token(token)
        return None if access is None else access[0]

    def access_for_token(self, token: str) -> tuple[AccountConfig, frozenset[str]] | None:
        """The token's account and scopes, or None for an unknown token."""
        digest = hash_token(token)
        for account in self.accounts.values():
            if digest in account.token_sha256:
                return account, account.api_tokens.get(digest, ALL_SCOPES)
        return None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Override:
    """A key whose value may come from outside the file.

    The systemd credential wins over the environment variable (a unit moved
    to credentials may keep an old environment file), which wins over the
    file. An empty credential or variable counts as not set (an
    EnvironmentFile line left blank must not blank the file's value).
    """

    path: tuple[str, ...]  # its path in the file, ("http", "port")
    variable: str
    # The name under $CREDENTIALS_DIRECTORY (LoadCredential=NAME:PATH), for
    # secrets only.
    credential: str | None = None

    @property
    def key(self) -> str:
        return ".".join(self.path)


OVERRIDES: tuple[Override, ...] = (
    Override(("daemon", "id"), "CARRIERD_DAEMON_ID"),
    Override(("daemon", "log_level"), "CARRIERD_LOG_LEVEL"),
    Override(("http", "port"), "CARRIERD_HTTP_PORT"),
    Override(("database", "dsn"), "CARRIERD_DSN", credential="carrierd_dsn"),
    Override(("rcs", "token"), "CARRIERD_RCS_TOKEN", credential="carrierd_rcs_token"),
    Override(
        ("rcs", "oauth_client_secret"),
        "CARRIERD_RCS_CLIENT_SECRET",
        credential="carrierd_rcs_client_secret",
    ),
    Override(
        ("rcs", "webhook_secret"),
        "CARRIERD_RCS_WEBHOOK_SECRET",
        credential="carrierd_rcs_webhook_secret",
    ),
    Override(
        ("reassign", "token"), "CARRIERD_REASSIGN_TOKEN", credential="carrierd_reassign_token"
    ),
    Override(
        ("links", "csrf_secret"),
        "CARRIERD_LINKS_CSRF_SECRET",
        credential="carrierd_links_csrf_secret",
    ),
)
_OVERRIDE_BY_KEY: Mapping[str, Override] = {o.key: o for o in OVERRIDES}

# An account's own +Message secrets ([accounts.<id>.rcs]), by the suffix of
# their names (account_env_name).
ACCOUNT_RCS_SECRETS: tuple[tuple[str, str], ...] = (
    ("token", "TOKEN"),
    ("oauth_client_secret", "CLIENT_SECRET"),
    ("webhook_secret", "WEBHOOK_SECRET"),
)


def account_rcs_override(account_id: str, key: str) -> Override:
    what = dict(ACCOUNT_RCS_SECRETS)[key]
    variable = account_env_name(account_id, what)
    return Override(("accounts", account_id, "rcs", key), variable, credential=variable.lower())


def overrides_for(raw: Mapping[str, Any]) -> tuple[Override, ...]:
    """OVERRIDES, and the secrets of each account that has its own +Message
    table."""
    found = list(OVERRIDES)
    accounts = raw.get("accounts")
    for account_id, table in accounts.items() if isinstance(accounts, dict) else ():
        if isinstance(table, dict) and isinstance(table.get("rcs"), dict):
            found += [account_rcs_override(account_id, key) for key, _ in ACCOUNT_RCS_SECRETS]
    return tuple(found)


# The demo's project-local PostgreSQL (`scripts/localpg.sh dsn`, exported by
# the Makefile): used only when neither the file nor an override names one.
LOCAL_DSN_VARIABLE = "CARRIERD_LOCAL_DSN"


def how_to_set(key: str, account_id: str | None = None) -> str:
    """The ways to give `key` a value, for an error saying it is missing
    (`account_id`: `key` is that account's +Message secret, "token")."""
    if account_id is not None:
        override: Override | None = account_rcs_override(account_id, key)
        key = f"accounts.{account_id}.rcs.{key}"
    else:
        override = _OVERRIDE_BY_KEY.get(key)
    if override is None:
        return f"set {key}"
    ways = []
    if override.credential is not None:
        ways.append(f"the systemd credential {override.credential}")
    ways.append(f"{override.variable}")
    ways.append(f"{key} in the file")
    return "set " + ", ".join(ways[:-1]) + " or " + ways[-1]


def _read_credential(directory: str, name: str, key: str, problems: list[str]) -> str | None:
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        problems.append(f"{key} (credential {name}): cannot read {path}: {reason}")
        return None
    # `echo secret > file` leaves a newline no secret means to have.
    return text.rstrip("\r\n")


def apply_overrides(
    raw: Mapping[str, Any], env: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """`raw` with the overrides in place, and where each replaced value came
    from (key path -> "CARRIERD_HTTP_PORT" or "credential carrierd_dsn")."""
    merged: dict[str, Any] = dict(raw)
    origins: dict[str, str] = {}
    credentials_dir = env.get("CREDENTIALS_DIRECTORY", "")
    for override in overrides_for(raw):
        value: str | None = None
        if override.credential is not None and credentials_dir:
            value = _read_credential(credentials_dir, override.credential, override.key, problems)
            origin = f"credential {override.credential}"
        if not value:
            value = env.get(override.variable) or None
            origin = override.variable
        if not value:
            continue
        if _replace(merged, override.path, value):
            origins[override.key] = origin
    return merged, origins


def _replace(raw: dict[str, Any], path: tuple[str, ...], value: str) -> bool:
    """Set `path` in `raw`, copying each table on the way (the caller's
    mapping stays as it was); False when a table on the way is not one (the
    reader reports it)."""
    head, *rest = path
    if not rest:
        raw[head] = value
        return True
    table = raw.get(head, {})
    if not isinstance(table, dict):
        return False
    raw[head] = copied = dict(table)
    return _replace(copied, tuple(rest), value)


class _Reader:
    """Typed access to a TOML table that records problems instead of raising."""

    def __init__(
        self,
        problems: list[str],
        table: Mapping[str, Any],
        path: str,
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self.problems = problems
        self.table = table
        self.path = path
        self.used: set[str] = set()
        # Key paths whose value came from an override, and from where.
        self.origins: Mapping[str, str] = origins or {}

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, text: str) -> None:
        full = self._key(key)
        origin = self.origins.get(full)
        self.problems.append(f"{full} ({origin}): {text}" if origin else f"{full}: {text}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if self._key(key) in self.origins and isinstance(value, str):
            value = self._from_text(key, value, kind)
            if value is None:
                return default
        # bool is an int in Python; a number field must not accept true/false.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(key, f"expected {_kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def _from_text(self, key: str, text: str, kind: type | tuple[type, ...]) -> Any:
        """An override's text read as the key's type (None: not readable)."""
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if str in kinds:
            return text
        for candidate in kinds:
            try:
                if candidate is int:
                    return int(text.strip())
                if candidate is float:
                    return float(text.strip())
            except ValueError:
                continue
        self.problem(key, f"expected {_kind_name(kind)}, got {text!r}")
        return None

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
    api_tokens = _parse_api_tokens(r)
    tokens.extend(d for d in api_tokens if d not in tokens)
    if not tokens:
        r.problem(
            "tokens",
            "an account needs at least one API token (tokens, token_sha256 or api_tokens)",
        )
    senders = r.table_of("senders")
    for carrier, sender in senders.items():
        if carrier not in CARRIERS:
            problems.append(f"accounts.{account_id}.senders.{carrier}: unknown carrier")
        elif not isinstance(sender, str) or not sender:
            problems.append(f"accounts.{account_id}.senders.{carrier}: expected a sender number")
    plan = r.string("plan", "premium", choices=tuple(PLANS))
    routes = r.table_of("routes")
    for carrier, route in routes.items():
        if carrier not in CARRIERS:
            problems.append(f"accounts.{account_id}.routes.{carrier}: unknown carrier")
        elif not isinstance(route, str) or not route:
            problems.append(f"accounts.{account_id}.routes.{carrier}: expected a route name")
        # Whether the carrier has that route is checked with the carriers.
    resend_reader = _Reader(problems, r.table_of("resend"), f"accounts.{account_id}.resend")
    resend = ResendConfig(
        max_resends=resend_reader.integer("max_resends", 0, minimum=0, maximum=10),
        interval_s=resend_reader.number("interval_s", 600.0, minimum=1.0),
        quiet_window=_parse_quiet_window(resend_reader, "quiet_window"),
    )
    resend_reader.finish()
    callback_networks = _parse_networks(r, "callback_allow_networks")
    account = AccountConfig(
        account_id=account_id,
        token_sha256=tuple(tokens),
        api_tokens=api_tokens,
        rate_per_hour=r.number("rate_per_hour", 40_000.0, minimum=1.0),
        burst=r.integer("burst", 100, minimum=1),
        count_parts=r.boolean("count_parts", False),
        allow_m2m=r.boolean("allow_m2m", False),
        max_sms_chars=r.integer("max_sms_chars", 660, minimum=1, maximum=670),
        allow_gsm7=r.boolean("allow_gsm7", False),
        senders={k: v for k, v in senders.items() if isinstance(v, str)},
        plan=plan if plan in PLANS else "premium",
        routes={k: v for k, v in routes.items() if isinstance(v, str) and v},
        resend=resend,
        at_least_once=r.boolean("at_least_once", False),
        callback_secret=r.string("callback_secret", ""),
        inbound_addresses=r.strings("inbound_addresses", ()),
        inbound_callback_url=_inbound_callback_url(r, callback_networks),
        keywords=_keywords(r),
        keyword_reply=r.string("keyword_reply", ""),
        callback_allow_networks=callback_networks,
        rcs=_parse_account_rcs(problems, account_id, r),
        optout_cap=r.integer("optout_cap", 10_000, minimum=0),
        skip_opted_out=r.boolean("skip_opted_out", False),
    )
    r.finish()
    return account


# A bot id is a path segment of the platform's API and of our webhook URL.
_BOT_ID = re.compile(r"[A-Za-z0-9._~@-]{1,128}")


def _parse_account_rcs(
    problems: list[str], account_id: str, account: _Reader
) -> AccountRcsConfig | None:
    if "rcs" not in account.table:
        account.used.add("rcs")
        return None
    r = _Reader(problems, account.table_of("rcs"), f"accounts.{account_id}.rcs")
    bot_id = r.string("bot_id", "")
    if not bot_id:
        r.problem("bot_id", "required: the bot id of the account's +Message official account")
    elif not _BOT_ID.fullmatch(bot_id):
        r.problem("bot_id", f"{bot_id!r}: letters, digits and . _ ~ @ - only, at most 128")
    rcs = AccountRcsConfig(
        bot_id=bot_id,
        token=r.string("token", ""),
        oauth_client_id=r.string("oauth_client_id", ""),
        oauth_client_secret=r.string("oauth_client_secret", ""),
        webhook_secret=r.string("webhook_secret", ""),
        subscriptions=r.boolean("subscriptions", False),
    )
    r.finish()
    return rcs


def _inbound_callback_url(r: _Reader, allowed: tuple[IPNetwork, ...]) -> str:
    url = r.string("inbound_callback_url", "")
    problem = callback_url_problem(url, allowed) if url else None
    if problem is not None:
        r.problem("inbound_callback_url", problem)
    return url


def _keywords(r: _Reader) -> tuple[str, ...]:
    keywords = r.strings("keywords", ())
    for keyword in keywords:
        if not keyword.strip():
            r.problem("keywords", "a keyword must not be empty")
    return keywords


def account_env_name(account_id: str, what: str) -> str:
    """CARRIERD_RCS_TOKEN_ACME_JP for account "acme-jp": where an account's
    +Message secret may come from instead of the file."""
    return f"CARRIERD_RCS_{what}_{re.sub(r'[^A-Z0-9]', '_', account_id.upper())}"


def _rcs_bots(
    problems: list[str],
    rcs: RcsConfig,
    accounts: Mapping[str, AccountConfig],
) -> dict[str, RcsBotConfig]:
    """Each official account with its owner(s), or a problem naming the key
    where two accounts claim one bot or a bot lacks what it needs."""
    inheriting = frozenset(a.account_id for a in accounts.values() if a.rcs is None)
    named = {a.rcs.bot_id for a in accounts.values() if a.rcs is not None}
    bots: dict[str, RcsBotConfig] = {}
    # [rcs] bot_id is the inheriting accounts' bot; named by an account while
    # none inherits it, it is that account's like any other.
    if rcs.bot_id and (inheriting or rcs.bot_id not in named):
        bots[rcs.bot_id] = RcsBotConfig(
            bot_id=rcs.bot_id,
            accounts=inheriting,
            token=rcs.token,
            oauth_client_id=rcs.oauth_client_id,
            oauth_client_secret=rcs.oauth_client_secret,
            webhook_secret=rcs.webhook_secret,
        )
        if rcs.enabled and not rcs.webhook_secret:
            problems.append(
                "rcs.webhook_secret: required when rcs.enabled is true"
                f" ({how_to_set('rcs.webhook_secret')})"
            )
    env_names: dict[str, str] = {}
    uses_rcs_login = bool(bots)
    for account in accounts.values():
        own = account.rcs
        if own is None or not own.bot_id:
            continue
        key = f"accounts.{account.account_id}.rcs"
        env_name = account_env_name(account.account_id, "TOKEN")
        other_account = env_names.setdefault(env_name, account.account_id)
        if other_account != account.account_id:
            problems.append(
                f"{key}: its secrets' environment names ({env_name}) are also"
                f" account {other_account}'s; rename one account"
            )
        claimed = bots.get(own.bot_id)
        if claimed is not None:
            if own.bot_id == rcs.bot_id:
                owners = ", ".join(sorted(claimed.accounts))
                reason = f"it is [rcs] bot_id, the official account of {owners}"
            else:
                reason = f"it is also accounts.{min(claimed.accounts)}.rcs.bot_id"
            problems.append(
                f"{key}.bot_id: bot {own.bot_id!r} belongs to one account only; {reason}"
            )
            continue

        # Their environment variables and credentials are in place already
        # (apply_overrides).
        token, client_secret = own.token, own.oauth_client_secret
        # Credentials come as a set: an account naming none of its own uses
        # the platform login of [rcs].
        own_login = bool(token or own.oauth_client_id)
        uses_rcs_login = uses_rcs_login or not own_login
        bots[own.bot_id] = RcsBotConfig(
            bot_id=own.bot_id,
            accounts=frozenset({account.account_id}),
            token=token if own_login else rcs.token,
            oauth_client_id=own.oauth_client_id if own_login else rcs.oauth_client_id,
            oauth_client_secret=client_secret if own_login else rcs.oauth_client_secret,
            webhook_secret=own.webhook_secret or rcs.webhook_secret,
        )
        if rcs.enabled:
            if not bots[own.bot_id].webhook_secret:
                ways = how_to_set("webhook_secret", account.account_id)
                problems.append(f"{key}.webhook_secret: required (or rcs.webhook_secret; {ways})")
            if own_login and not token and not rcs.oauth_token_url:
                problems.append(f"{key}.oauth_client_id: needs rcs.oauth_token_url")
    if rcs.enabled and not bots:
        problems.append("rcs.bot_id: required when rcs.enabled is true")
    if rcs.enabled and (uses_rcs_login or not bots) and not (rcs.token or rcs.oauth_token_url):
        problems.append(
            f"rcs.token: a bearer token or oauth_token_url is required ({how_to_set('rcs.token')})"
        )
    return bots


def _parse_api_tokens(r: _Reader) -> dict[bytes, frozenset[str]]:
    """`[[accounts.X.api_tokens]]`: a token (`sha256` hex digest, or plain
    `token` for a demo) with its `role` (ROLES) or its `scopes` (SCOPES)."""
    result: dict[bytes, frozenset[str]] = {}
    entries = r.get("api_tokens", list, [])
    for i, entry in enumerate(entries):
        path = f"api_tokens[{i}]"
        if not isinstance(entry, dict):
            r.problem(path, "expected a table")
            continue
        e = _Reader(r.problems, entry, f"{r.path}.{path}")
        e.string("name", "")
        plain, hex_digest = e.string("token", ""), e.string("sha256", "")
        digest = b""
        if plain and hex_digest:
            e.problem("token", "give token or sha256, not both")
        elif plain:
            digest = hash_token(plain)
        elif hex_digest:
            try:
                digest = bytes.fromhex(hex_digest)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                e.problem("sha256", f"not a SHA-256 hex digest: {hex_digest!r}")
                digest = b""
        else:
            e.problem("sha256", "required (or token)")
        role = e.string("role", "")
        scopes = e.strings("scopes", ())
        granted: frozenset[str] = frozenset()
        if role and scopes:
            e.problem("role", "give role or scopes, not both")
        elif role:
            if role not in ROLES:
                e.problem("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
            granted = ROLES.get(role, frozenset())
        elif scopes:
            unknown = [s for s in scopes if s not in SCOPES]
            if unknown:
                e.problem("scopes", f"unknown scope {unknown[0]!r} (one of {', '.join(SCOPES)})")
            granted = frozenset(s for s in scopes if s in SCOPES)
        else:
            e.problem("role", "required (or scopes)")
        e.finish()
        if digest:
            if digest in result:
                e.problem("sha256", "the same token is listed twice")
            result[digest] = granted
    return result


def _parse_networks(reader: _Reader, key: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for text in reader.strings(key, ()):
        try:
            networks.append(ip_network(text))
        except ValueError as exc:
            reader.problem(key, f"not a network such as 10.0.0.0/8: {exc}")
    return tuple(networks)


def _parse_carrier(
    problems: list[str], name: str, raw: Mapping[str, Any], route: str = PREMIUM
) -> CarrierConfig:
    path = f"carriers.{name}" if route == PREMIUM else f"carriers.{name}.routes.{route}"
    r = _Reader(problems, raw, path)
    default_timeout = 3600.0 if name == "softbank" else 72 * 3600.0
    other_routes: dict[str, CarrierConfig] = {}
    if route == PREMIUM:
        # Carrier-level keys (number_prefixes, routes) are read here only:
        # in a route's table they are unknown keys.
        for route_name, route_raw in r.table_of("routes").items():
            route_path = f"{path}.routes.{route_name}"
            if route_name == PREMIUM:
                problems.append(
                    f"{route_path}: the premium route is the carrier's own table ({path})"
                )
            elif not _ROUTE_NAME.fullmatch(route_name):
                problems.append(
                    f"{route_path}: a route name is lower-case letters, digits and _ (at most 32)"
                )
            elif not isinstance(route_raw, dict):
                problems.append(f"{route_path}: expected a table")
            else:
                other_routes[route_name] = _parse_carrier(problems, name, route_raw, route_name)
        number_prefixes = r.strings("number_prefixes", ())
    else:
        number_prefixes = ()
    # Where the SMSC is has no sensible default: a guess would only show up
    # as binds failing (or reaching the wrong SMSC) once the daemon runs.
    for key in ("host", "port"):
        if key not in raw:
            r.problem(key, "required: the address of the carrier's SMSC")
    host = r.string("host", "")
    if "host" in raw and not host.strip():
        r.problem("host", "must not be empty")
    carrier = CarrierConfig(
        name=name,
        route=route,
        sender=r.string("sender", ""),
        host=host,
        port=r.integer("port", 0, minimum=0, maximum=65535),
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
        mo_default_alphabet=r.string(  # type: ignore[arg-type]
            "mo_default_alphabet", "gsm7", choices=MO_DEFAULT_ALPHABETS
        ),
        number_prefixes=number_prefixes,
        routes=other_routes,
    )
    for key, max_octets in SMPP_BIND_FIELD_MAX_OCTETS.items():
        _check_bind_field(r, key, getattr(carrier, key), max_octets)
    r.finish()
    return carrier


def _check_bind_field(reader: _Reader, key: str, value: str, max_octets: int) -> None:
    try:
        octets = len(value.encode("ascii"))
    except UnicodeEncodeError:
        reader.problem(key, "must be ASCII (an SMPP C-octet string)")
        return
    if octets > max_octets:
        reader.problem(
            key,
            f"{octets} octets; SMPP 3.4 allows at most {max_octets} in a bind, "
            "so every bind would fail",
        )


def _check_routes(
    problems: list[str],
    accounts: Mapping[str, AccountConfig],
    carriers: Mapping[str, CarrierConfig],
) -> None:
    """Every account's route exists at its carrier, and what the route sends
    as sender is what the route can carry (DOMAIN §6)."""
    for account in accounts.values():
        path = f"accounts.{account.account_id}"
        for name, carrier in carriers.items():
            route = account.route_for(name)
            connection = carrier.route_config(route)
            if connection is None:
                key = f"routes.{name}" if name in account.routes else "plan"
                via = "" if key != "plan" else f" (the {account.plan} plan's route for {name})"
                problems.append(
                    f"{path}.{key}: carriers.{name} has no route {route!r}{via};"
                    f" its routes: {', '.join(r.route for r in carrier.all_routes())}"
                    + _LEGACY_ROUTE_HINTS.get(route, "")
                )
                continue
            sender = account.senders.get(name, "")
            premium_sender = not connection.sender and route == PREMIUM
            if premium_sender and sender and not _FIXED_NUMBER.fullmatch(sender):
                problems.append(
                    f"{path}.senders.{name}: the premium route sends a fixed sender"
                    f" number (a 0120 number, or a short code such as 249200), not"
                    f" {sender!r}"
                )


def parse_config(
    raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source_path: Path | None = None
) -> Config:
    env = os.environ if env is None else env
    problems: list[str] = []
    raw, origins = apply_overrides(raw, env, problems)
    top = _Reader(problems, raw, "")

    def section(name: str) -> _Reader:
        return _Reader(problems, top.table_of(name), name, origins)

    daemon = section("daemon")
    default_id = f"{socket.gethostname()}-{os.getpid()}"
    daemon_id = daemon.string("id", "") or default_id
    log_level = daemon.string("log_level", "info", choices=LOG_LEVELS)
    daemon.finish()

    db = section("database")
    dsn = db.string("dsn", "") or env.get(LOCAL_DSN_VARIABLE, "")
    if not dsn:
        problems.append(
            f"database.dsn: no database configured: {how_to_set('database.dsn')}"
            f" (the demo's local server: {LOCAL_DSN_VARIABLE}=$(scripts/localpg.sh dsn),"
            " which make exports)"
        )
    database = DatabaseConfig(
        dsn=dsn,
        pool_min=db.integer("pool_min", 2, minimum=1),
        pool_max=db.integer("pool_max", 10, minimum=1),
    )
    db.finish()

    http_reader = section("http")
    http = HttpConfig(
        host=http_reader.string("host", "127.0.0.1"),
        port=http_reader.integer("port", 8080, minimum=0, maximum=65535),
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

    eng = section("engine")
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

    for account in accounts.values():
        for name, carrier in carriers.items():
            route = carrier.route_config(account.route_for(name))
            # A route with a sender of its own sends it for every account.
            if name not in account.senders and not (route is not None and route.sender):
                problems.append(
                    f"accounts.{account.account_id}.senders.{name}: required: carrier {name} "
                    "is configured, and its SMS would go out without a sender"
                )
    _check_routes(problems, accounts, carriers)

    rr = section("rcs")
    rcs = RcsConfig(
        enabled=rr.boolean("enabled", False),
        base_url=rr.string("base_url", ""),
        bot_id=rr.string("bot_id", ""),
        token=rr.string("token", ""),
        oauth_token_url=rr.string("oauth_token_url", ""),
        oauth_client_id=rr.string("oauth_client_id", ""),
        oauth_client_secret=rr.string("oauth_client_secret", ""),
        webhook_secret=rr.string("webhook_secret", ""),
        request_timeout_s=rr.number("request_timeout_s", 10.0, minimum=0.1),
        fallback_after_s=rr.number("fallback_after_s", 600.0, minimum=1.0),
        expiry_s=rr.number("expiry_s", 72 * 3600.0, minimum=60.0),
        capability_ttl_s=rr.number("capability_ttl_s", 24 * 3600.0, minimum=0.0),
        webhook_tolerance_s=rr.number("webhook_tolerance_s", 300.0, minimum=1.0),
    )
    rcs_bots = _rcs_bots(problems, rcs, accounts)
    if rcs.enabled:
        if not rcs.base_url:
            problems.append("rcs.base_url: required when rcs.enabled is true")
        if rcs.bot_id and not _BOT_ID.fullmatch(rcs.bot_id):
            problems.append(
                f"rcs.bot_id: {rcs.bot_id!r}: letters, digits and . _ ~ @ - only, at most 128"
            )
    rr.finish()
    reassign = _parse_reassign(section("reassign"))
    links = _parse_links(section("links"))
    ir = section("inbound")
    inbound = InboundConfig(
        answer_window_s=ir.number("answer_window_s", 7 * 24 * 3600.0, minimum=0.0),
        reassembly_timeout_s=ir.number("reassembly_timeout_s", 300.0, minimum=1.0),
        sms_duplicate_window_s=ir.number("sms_duplicate_window_s", 600.0, minimum=0.0),
    )
    ir.finish()
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
        overridden=origins,
        rcs_bots=rcs_bots,
        reassign=reassign,
        links=links,
        inbound=inbound,
    )


def _parse_links(r: _Reader) -> LinksConfig:
    links = LinksConfig(
        enabled=r.boolean("enabled", False),
        host=r.string("host", "127.0.0.1"),
        port=r.integer("port", 8081, minimum=0, maximum=65535),
        domain=r.string("domain", ""),
        show_scheme=r.boolean("show_scheme", False),
        csrf_secret=r.string("csrf_secret", ""),
        optout_valid_days=r.number("optout_valid_days", 60.0, minimum=1.0, maximum=3650.0),
        trusted_proxies=_parse_networks(r, "trusted_proxies"),
        rate_per_s=r.number("rate_per_s", 20.0, minimum=0.01),
        burst=r.integer("burst", 60, minimum=1),
        misses_per_min=r.number("misses_per_min", 10.0, minimum=0.01),
        miss_burst=r.integer("miss_burst", 20, minimum=1),
        secure_cookies=r.boolean("secure_cookies", True),
        max_connections=r.integer("max_connections", 1024, minimum=1),
    )
    if links.enabled:
        problem = style_problem(links.domain, links.show_scheme)
        if problem is not None:
            r.problem("domain", problem)
        if len(links.csrf_secret) < 16:
            r.problem(
                "csrf_secret",
                "required when links.enabled is true, at least 16 characters"
                f" ({how_to_set('links.csrf_secret')})",
            )
    r.finish()
    return links


def _parse_reassign(reader: _Reader) -> ReassignConfig:
    """[reassign]: the reassigned-number check's service (§13)."""
    config = ReassignConfig(
        url=reader.string("url", ""),
        token=reader.string("token", ""),
        timeout_s=reader.number("timeout_s", 5.0, minimum=0.05, maximum=120.0),
        retries=reader.integer("retries", 2, minimum=0, maximum=10),
        batch_size=reader.integer("batch_size", 100, minimum=1, maximum=1000),
        concurrency=reader.integer("concurrency", 4, minimum=1, maximum=64),
    )
    if config.url:
        parts = urlsplit(config.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            reader.problem("url", f"expected an http(s) URL, got {config.url!r}")
        if not config.token:
            reader.problem(
                "token", f"required when reassign.url is set: {how_to_set('reassign.token')}"
            )
    reader.finish()
    return config


# The link server's listener: what a reload cannot change under a running
# server (LinkServer.apply takes the rest of [links]).
_LINK_LISTENER_KEYS = ("enabled", "host", "port", "max_connections")


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """What a reload (SIGHUP) applies of `new` while `running` is in use,
    and the keys it changed that wait for the next start. The link
    server's listener keeps its settings, `enabled` with them: intake must
    not mint links for a server that is not there. The reassigned-number
    gate keeps its number of workers."""
    waiting = [
        f"links.{key}"
        for key in _LINK_LISTENER_KEYS
        if getattr(new.links, key) != getattr(running.links, key)
    ]
    if new.reassign.concurrency != running.reassign.concurrency:
        waiting.append("reassign.concurrency")
    listener = {key: getattr(running.links, key) for key in _LINK_LISTENER_KEYS}
    return replace(new, links=replace(new.links, **listener)), waiting


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    config_path = Path(path)
    try:
        with config_path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        hint = (
            " (the installed default; name the configuration file to use)"
            if str(path) == DEFAULT_CONFIG_PATH
            else ""
        )
        raise ConfigError([f"{config_path}: file not found{hint}"]) from exc
    except OSError as exc:
        raise ConfigError([f"{config_path}: cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{config_path}: not valid TOML: {exc}"]) from exc
    return parse_config(raw, env=env, source_path=config_path)
