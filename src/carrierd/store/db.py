"""The only module that imports asyncpg.

It runs the migrations and the named statements of queries.sql; callers get
plain Python values back, never asyncpg objects.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar, cast

import asyncpg

# A connect that takes longer is as good as refused: the caller backs off
# and tries again (asyncpg's default is 60 s, during which a flush or an
# HTTP request would hang).
CONNECT_TIMEOUT_S = 10.0
# Idle pooled connections older than this are closed and reopened on demand.
POOL_IDLE_LIFETIME_S = 60.0
# How long /readyz waits for the database's answer.
PROBE_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 10.0

# Held for the whole migration so that two daemons starting at once apply
# each migration exactly once; the number is "carrierd" in ASCII, truncated.
MIGRATION_LOCK_KEY = 0x6361727269657264

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(text: str) -> dict[str, str]:
    """Split queries.sql into its named statements."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end].strip()
        if match.group(1) in queries:
            raise ValueError(f"queries.sql: statement {match.group(1)!r} defined twice")
        queries[match.group(1)] = body
    return queries


def _load_all_queries() -> dict[str, str]:
    # queries.sql holds the engine's statements; other store/*.sql files
    # (reports, callbacks) hold their own, and a name may be defined once.
    merged: dict[str, str] = {}
    store = resources.files("carrierd.store")
    for entry in sorted(store.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in load_queries(entry.read_text()).items():
            if name in merged:
                raise ValueError(f"{entry.name}: statement {name!r} defined twice")
            merged[name] = sql
    return merged


QUERIES = _load_all_queries()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def list_migrations() -> list[Migration]:
    schema = resources.files("carrierd.store").joinpath("schema")
    found: list[Migration] = []
    for entry in schema.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def migrate(dsn: str) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied: list[int] = []
            for migration in list_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                applied.append(migration.version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# A row by column name: a dict from the pool's helpers, an asyncpg Record
# inside a transaction (copying thousands of Records into dicts per flush was
# a visible share of the daemon's CPU). Read-only either way; iterating a
# Record yields its values, so code reads rows by key only.
Row = Mapping[str, Any]
T = TypeVar("T")


class ConnectionBroken(Exception):
    """A pooled connection turned out unusable mid-work; it was discarded."""


# Failures after which the same work can simply be tried again later: the
# database aborted the transaction, restarts, or the connection broke. Loops
# that must outlive them (the dispatcher) catch these and nothing else, so a
# programming error still stops the daemon loudly.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.CannotConnectNowError,
    ConnectionBroken,
    OSError,
)

# asyncpg reports a connection that died under a statement, or a pooled
# connection found closed, as a bare InterfaceError; only its text tells it
# from a programming error (another operation in progress, a bad codec).
_CONNECTION_LOST_TEXTS = ("connection is closed", "connection was closed")
# A server going down or coming up, whatever class asyncpg gives it (the
# text is PostgreSQL's own, in the C locale our clusters run in).
_SERVER_AWAY_TEXTS = (
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
)


def _text_of(exc: BaseException) -> str:
    # asyncpg's errors made without a message fail in str().
    try:
        return str(exc)
    except Exception:
        return ""


def _is_transient_itself(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            *TRANSIENT_DB_ERRORS,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            TimeoutError,
        ),
    ):
        return True
    text = _text_of(exc)
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return any(lost in text for lost in _CONNECTION_LOST_TEXTS)
    if isinstance(exc, asyncpg.PostgresError):
        return any(away in text for away in _SERVER_AWAY_TEXTS)
    return False


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether `exc` means "the database is unreachable or aborted this
    transaction": the same work can simply be tried again later.

    TRANSIENT_DB_ERRORS, plus asyncpg's "cannot connect now" (a server
    starting or shutting down), a connection that no longer exists or was
    lost, and OSError, which includes a refused or timed-out connect.
    asyncpg sometimes wraps the socket's error in one of its own
    (`raise ... from`), so the chain of causes is read too.
    A closed pool is not transient: that is our own shutdown.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _is_transient_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def is_database_unreachable(exc: BaseException) -> bool:
    """A transient error that means the database could not be reached or
    dropped the connection, as opposed to one that aborted a transaction
    (deadlock, serialization failure) on a database that is up."""
    return is_transient_db_error(exc) and not isinstance(
        exc, (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
    )


def describe_db_error(exc: BaseException, max_chars: int = 200) -> str:
    """A short, single-line reason for a probe or an error body."""
    text = " ".join(_text_of(exc).split())
    return f"{type(exc).__name__}: {text}"[:max_chars] if text else type(exc).__name__


class Database:
    """A pool plus the named statements. Create with ``await Database.open(...)``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> Database:
        """A pool on `dsn`; raises (a transient error) if it cannot connect.

        After a server restart every pooled connection is closed: asyncpg
        notices the closed socket and opens a new connection at the next
        acquire, and a connection that broke in use is terminated when
        released (its reset fails). Idle connections are replaced after
        POOL_IDLE_LIFETIME_S, so one that silently stopped answering does not
        live in the pool for long.
        """
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=connect_timeout_s,
            max_inactive_connection_lifetime=POOL_IDLE_LIFETIME_S,
        )
        return cls(pool)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the pool gracefully, or abruptly after `timeout_s` (a
        server that stopped answering never acknowledges a goodbye)."""
        try:
            await asyncio.wait_for(self._pool.close(), timeout_s)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection for one piece of work.

        asyncpg raises InternalClientError when it lost track of a
        connection's protocol state, as when the server closed it in the
        middle of an exchange (a restart under load: "cannot switch to
        state 15; another operation is in progress"). That connection is
        unusable, not the work: it is terminated (the pool opens a new one)
        and the error becomes ConnectionBroken, which callers retry. The
        same goes when it is the pool's reset of the connection, as it takes
        it back, that finds it confused (the pool has terminated it then):
        an intake request that met a restart there answered 500, not 503.
        """
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except asyncpg.exceptions.InternalClientError as exc:
                    conn.terminate()
                    raise ConnectionBroken(describe_db_error(exc)) from exc
        except asyncpg.exceptions.InternalClientError as exc:
            raise ConnectionBroken(describe_db_error(exc)) from exc

    @asynccontextmanager
    async def _connection_of(
        self, tx: Transaction | None
    ) -> AsyncIterator[asyncpg.Connection | asyncpg.pool.PoolConnectionProxy]:
        """`tx`'s connection (its transaction() is then a savepoint), else a
        pooled one."""
        if tx is None:
            async with self._connection() as conn:
                yield conn
        else:
            yield tx.connection

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            rows = await conn.fetch(QUERIES[name], *args)
        return [dict(r) for r in rows]

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(QUERIES[name], *args)
        return dict(row) if row is not None else None

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with self._connection() as conn:
            return await conn.fetchval(QUERIES[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        async with self._connection() as conn:
            return str(await conn.execute(QUERIES[name], *args))

    async def executemany(self, name: str, args: Iterable[Sequence[Any]]) -> None:
        async with self._connection() as conn:
            await conn.executemany(QUERIES[name], args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._connection() as conn, conn.transaction():
            tx = Transaction(conn)
            yield tx
        _run_committed_effects(tx)

    async def in_transaction(
        self, work: Callable[[Transaction], Awaitable[T]], *, attempts: int = 5
    ) -> T:
        """Run `work` in a transaction, again from the start when PostgreSQL
        aborts it for a deadlock or serialization failure (two daemons
        updating parts of one message in different orders)."""
        for attempt in range(1, attempts + 1):
            try:
                async with self._connection() as conn, conn.transaction():
                    tx = Transaction(conn)
                    result = await work(tx)
                _run_committed_effects(tx)
                return result
            except (
                asyncpg.exceptions.DeadlockDetectedError,
                asyncpg.exceptions.SerializationError,
            ):
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """None when the database answers a query within `timeout_s`, else
        why it did not (readiness)."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._connection() as conn:
                    await conn.fetchval("SELECT 1")
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            if is_transient_db_error(exc) or isinstance(exc, asyncpg.PostgresError):
                return describe_db_error(exc)
            raise
        return None

    async def call_raw(self, sql: str, *args: Any) -> list[Row]:
        """For tests and tooling only: statements that are not business DML."""
        async with self._connection() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    # -- accounts -----------------------------------------------------------------

    async def sync_accounts(
        self, accounts: Iterable[tuple[str, bool, int, Sequence[bytes]]]
    ) -> None:
        async with self.transaction() as tx:
            for account_id, allow_m2m, max_sms_chars, tokens in accounts:
                await tx.execute("upsert_account", account_id, allow_m2m, max_sms_chars)
                await tx.execute("replace_account_tokens", account_id, list(tokens))

    # -- intake -------------------------------------------------------------------

    async def insert_messages(
        self,
        account_id: str,
        rows: Sequence[Mapping[str, Any]],
        now: datetime,
        conflicts: dict[int, int] | None = None,
        tx: Transaction | None = None,
    ) -> dict[int, int]:
        """Insert validated messages; returns {row index: message id}.
        Inside `tx` when given (a message that exists only if what caused it
        commits: a keyword's confirmation), else in a transaction of its own.

        Rows whose client_ref the account already used map to the existing
        message (idempotent retries); nothing else is written for them. A
        row whose `request_sha256` differs from the existing message's is
        not a retry: it is left out of the result and put in `conflicts`
        ({row index: existing id}) when given.
        """
        if not rows:
            return {}
        async with self._connection_of(tx) as conn, conn.transaction():
            ids = [r["id"] for r in await conn.fetch(QUERIES["reserve_message_ids"], len(rows))]
            columns: dict[str, list[Any]] = {
                key: [row.get(key) for row in rows]
                for key in (
                    "client_ref",
                    "channel",
                    "state",
                    "recipient_raw",
                    "msisdn",
                    "sms_text",
                    "sms_encoding",
                    "sms_parts",
                    "rcs_content",
                    "carrier_named",
                    "carriers_allowed",
                    "callback_url",
                    "callback_every_change",
                    "send_at",
                    "not_before",
                    "expires_at",
                )
            }
            columns["rcs_content"] = [
                None if c is None else json.dumps(c) for c in columns["rcs_content"]
            ]
            columns["carriers_allowed"] = [
                None if c is None else ",".join(c) for c in columns["carriers_allowed"]
            ]
            inserted = {
                r["id"]
                for r in await conn.fetch(
                    QUERIES["insert_messages"],
                    account_id,
                    ids,
                    *columns.values(),
                    now,
                    [row.get("request_sha256") for row in rows],
                    [row.get("skip_opted_out") for row in rows],
                    [row.get("optout_check_at") for row in rows],
                    # §13: the reassigned-number check's base date, or None.
                    [row.get("reassign_base_date") for row in rows],
                )
            }
            result: dict[int, int] = {}
            missing_refs: dict[str, list[int]] = {}
            for index, (row, message_id) in enumerate(zip(rows, ids, strict=True)):
                if message_id in inserted:
                    result[index] = message_id
                else:
                    missing_refs.setdefault(row["client_ref"], []).append(index)
            if missing_refs:
                found = await conn.fetch(
                    QUERIES["find_by_client_refs"], account_id, list(missing_refs)
                )
                for r in found:
                    for index in missing_refs.get(r["client_ref"], []):
                        wanted = rows[index].get("request_sha256")
                        stored = r["request_sha256"]
                        if wanted is not None and stored is not None and wanted != stored:
                            if conflicts is not None:
                                conflicts[index] = r["id"]
                            continue
                        result[index] = r["id"]
            await _insert_links(conn, account_id, rows, ids, inserted, now)
            return result

    async def get_message(self, account_id: str, message_id: int) -> Row | None:
        return await self.fetchrow("get_message", message_id, account_id)


class LinkCodeTaken(Exception):
    """A link code minted at intake is already in use (a chance of about
    one in 10**9 per batch): nothing of the batch was stored; mint again."""


async def _insert_links(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    account_id: str,
    rows: Sequence[Mapping[str, Any]],
    ids: Sequence[int],
    inserted: set[int],
    now: datetime,
) -> None:
    """The links intake minted (row key "links", domain/links.MintedLinks),
    for the rows inserted now: a retry's links are not its message's."""
    # One string per field for the whole batch (store/links.sql says why):
    # the short links of the messages that have them, each distinct set of
    # target URLs once with how many messages name it, and the opt-out URLs.
    link_ids: list[str] = []
    link_msisdns: list[str] = []
    keys: list[str] = []
    suffixes: list[str] = []
    message_sets: list[str] = []
    set_nos: dict[tuple[str, ...], int] = {}
    naming: list[int] = []
    optout_ids: list[str] = []
    optout_msisdns: list[str] = []
    optout_codes: list[str] = []
    optout_expiries: list[str] = []
    for row, message_id in zip(rows, ids, strict=True):
        links = row.get("links")
        if links is None or message_id not in inserted:
            continue
        if links.link_key is not None:
            link_ids.append(str(message_id))
            link_msisdns.append(row["msisdn"])
            keys.append(links.link_key)
            suffixes.append(links.link_suffixes)
            set_no = set_nos.get(links.targets)
            if set_no is None:
                set_no = set_nos[links.targets] = len(set_nos) + 1
                naming.append(0)
            naming[set_no - 1] += 1
            message_sets.append(str(set_no))
        if links.optout_code is not None:
            optout_ids.append(str(message_id))
            optout_msisdns.append(row["msisdn"])
            optout_codes.append(links.optout_code)
            optout_expiries.append(links.optout_expires_at.isoformat())
    wanted = len(keys) + len(optout_codes)
    if not wanted:
        return
    try:
        stored = await conn.fetchval(
            QUERIES["insert_message_links"],
            " ".join(link_ids),
            " ".join(link_msisdns),
            " ".join(keys),
            " ".join(suffixes),
            " ".join(message_sets),
            "\n".join([" ".join(targets) for targets in set_nos]),
            " ".join(map(str, naming)),
            " ".join(optout_ids),
            " ".join(optout_msisdns),
            " ".join(optout_codes),
            " ".join(optout_expiries),
            account_id,
            now,
        )
    except asyncpg.UniqueViolationError as exc:
        raise LinkCodeTaken(str(exc)) from exc
    if stored != wanted:
        # The statement leaves out a row with a code equal to a whole-code key.
        raise LinkCodeTaken(f"{stored} of {wanted} rows: a minted code is a key stored whole")


def _run_committed_effects(tx: Transaction) -> None:
    for effect in tx.committed_effects:
        effect()


class Transaction:
    """Named statements on one connection inside a transaction."""

    def __init__(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn
        self.committed_effects: list[Callable[[], None]] = []

    async def fetch(self, name: str, *args: Any) -> list[Row]:
        return cast(list[Row], await self._conn.fetch(QUERIES[name], *args))

    async def fetchrow(self, name: str, *args: Any) -> Row | None:
        return cast(Row | None, await self._conn.fetchrow(QUERIES[name], *args))

    async def fetchval(self, name: str, *args: Any) -> Any:
        return await self._conn.fetchval(QUERIES[name], *args)

    async def execute(self, name: str, *args: Any) -> str:
        return str(await self._conn.execute(QUERIES[name], *args))

    async def executemany(self, name: str, args: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(QUERIES[name], args)

    @property
    def connection(self) -> asyncpg.Connection | asyncpg.pool.PoolConnectionProxy:
        return self._conn

    async def insert_links(
        self,
        account_id: str,
        rows: Sequence[Mapping[str, Any]],
        ids: Sequence[int],
        now: datetime,
    ) -> None:
        """The links intake minted for `rows`, stored as messages `ids` in
        this transaction (sends insert their messages themselves)."""
        await _insert_links(self._conn, account_id, rows, ids, set(ids), now)

    def after_commit(self, effect: Callable[[], None]) -> None:
        """Run `effect` once this transaction has committed (metrics and
        other in-memory effects must not count work that rolled back)."""
        self.committed_effects.append(effect)


async def create_database_from_template(admin_dsn: str, name: str, template: str) -> None:
    """Tests: a fresh database cloned from a migrated template (fast, isolated)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def ensure_template(admin_dsn: str, template: str, template_dsn: str) -> None:
    """Tests: create (once) and migrate the template database."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", template)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{template}"')
    finally:
        await conn.close()
    await migrate(template_dsn)
