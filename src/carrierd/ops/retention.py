"""Retention: final messages go `keep_days` after they ended (100 by
default, more than the 3 months of delivery log that DOMAIN §15 promises),
with their parts, events and callbacks; au gate rows (DOMAIN §5) go once
their spacing ran out long ago (domain/au_gate.au_gate_forgets_before). The
keys of applied +Message webhooks go after WEBHOOK_KEYS_KEEP_DAYS: a repeat
of a body older than the platform's 72 h of retries is refused by its
timestamp anyway. Short links and their click log go with their message,
their set of target URLs with the last message that named it; opt-out URLs
once their 60 days ran out (DOMAIN §12). Replies
(inbound_messages, with their pushes) go `keep_days` after they came, like
the messages they answer.

Every daemon on a database runs the purge; they share the rows (SKIP
LOCKED in the statement) rather than electing one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from carrierd.domain.au_gate import au_gate_forgets_before
from carrierd.domain.clock import Clock
from carrierd.loops import supervise
from carrierd.store.db import Database

log = structlog.get_logger("carrierd.ops.retention")

RETENTION_KEEP_DAYS = 100
PURGE_BATCH_ROWS = 1000
RETENTION_INTERVAL_S = 3600.0
WEBHOOK_KEYS_KEEP_DAYS = 4


async def purge_expired(
    db: Database,
    now: datetime,
    keep_days: int = RETENTION_KEEP_DAYS,
    *,
    batch_rows: int = PURGE_BATCH_ROWS,
) -> int:
    """Delete messages that ended more than `keep_days` before `now`, with
    their parts, events and callbacks; returns how many messages went.

    Each batch is its own short transaction, so the purge never holds many
    locks nor a long snapshot on the busiest table.
    """
    cutoff = now - timedelta(days=keep_days)
    deleted = await _in_batches(db, "purge_final_messages", cutoff, batch_rows)
    # The target URL sets the last of whose links went with those messages
    # (and any a purge before a crash counted down and left).
    await _in_batches(db, "purge_released_link_targets", now, batch_rows)
    return deleted


async def purge_au_gate(
    db: Database, now: datetime, spacing_s: float, *, batch_rows: int = PURGE_BATCH_ROWS
) -> int:
    """Delete au gate rows that hold nothing back any more; returns how many."""
    before = au_gate_forgets_before(now, spacing_s)
    return await _in_batches(db, "purge_au_gate", before, batch_rows)


async def purge_webhook_keys(
    db: Database,
    now: datetime,
    keep_days: int = WEBHOOK_KEYS_KEEP_DAYS,
    *,
    batch_rows: int = PURGE_BATCH_ROWS,
) -> int:
    """Delete webhook de-duplication keys recorded more than `keep_days`
    before `now`; returns how many went."""
    cutoff = now - timedelta(days=keep_days)
    return await _in_batches(db, "purge_webhook_events", cutoff, batch_rows)


async def purge_optout_links(
    db: Database, now: datetime, *, batch_rows: int = PURGE_BATCH_ROWS
) -> int:
    """Delete opt-out URLs whose validity (60 days, DOMAIN §12) ended before
    `now`; short links go with their message (purge_final_messages)."""
    return await _in_batches(db, "purge_expired_optout_links", now, batch_rows)


async def purge_replies(
    db: Database,
    now: datetime,
    keep_days: int = RETENTION_KEEP_DAYS,
    *,
    batch_rows: int = PURGE_BATCH_ROWS,
) -> int:
    """Delete replies received more than `keep_days` before `now`, with
    their pushes; returns how many went."""
    cutoff = now - timedelta(days=keep_days)
    return await _in_batches(db, "purge_inbound_messages", cutoff, batch_rows)


async def _in_batches(db: Database, statement: str, before: datetime, batch_rows: int) -> int:
    """Run a purge statement (it deletes at most `batch_rows` rows older than
    `before` and returns how many) until a batch comes back short; each
    batch is its own short transaction. Returns the rows deleted."""
    total = 0
    while True:
        deleted = int(await db.fetchval(statement, before, batch_rows))
        total += deleted
        if deleted < batch_rows:
            return total


async def run_retention(
    db: Database,
    clock: Clock,
    stop_event: asyncio.Event,
    *,
    au_spacing_s: Callable[[], float],
    keep_days: int = RETENTION_KEEP_DAYS,
    interval_s: float = RETENTION_INTERVAL_S,
) -> None:
    """Purge every `interval_s` until `stop_event` is set."""

    async def purge_once() -> float:
        now = clock.now()
        deleted = await purge_expired(db, now, keep_days)
        if deleted:
            log.info("retention_purged", messages=deleted, keep_days=keep_days)
        forgotten = await purge_au_gate(db, now, au_spacing_s())
        if forgotten:
            log.info("retention_purged_au_gate", numbers=forgotten)
        replies = await purge_replies(db, now, keep_days)
        if replies:
            log.info("retention_purged_replies", replies=replies, keep_days=keep_days)
        keys = await purge_webhook_keys(db, now)
        if keys:
            log.info("retention_purged_webhook_keys", keys=keys)
        optout_links = await purge_optout_links(db, now)
        if optout_links:
            log.info("retention_purged_optout_links", links=optout_links)
        return interval_s

    await supervise("retention", purge_once, stop_event)
