"""The +Message leg (DOMAIN §1, §8, §9, §11): capability, send, fallback,
discard, status webhooks.

Rows arrive from the dispatcher claimed ('dispatching', leased) with leg
'rcs'. Per row:

    carrier restriction names no +Message carrier → SMS leg / skipped
    capability (cached per number for capability_ttl_s)
        not capable               → SMS leg at once (rcs_then_sms) / failed
        platform error            → queued again after SEND_RETRY_S
    send, msgId = our message id (the platform de-duplicates on it)
        accepted                  → rcs_sent; fallback_at = +fallback_after_s
                                    (rcs_then_sms); expires_at = +expiry_s (rcs)
        capacity / not capable    → SMS leg at once / failed
        error (answer unknown)    → queued again after SEND_RETRY_S; once an
                                    rcs_then_sms has waited fallback_after_s,
                                    rcs_sent with the fallback due at once
                                    (a revoke before the SMS, see below)
        rejected (4xx)            → failed with the platform's reason

"SMS leg" is `dispatching|rcs_sent → queued` with leg 'sms' and not_before
now, and an event 'fallback' naming the cause: the dispatcher claims it
again and applies every SMS rule (pacing, carrier determination, au gate).

Timers are rows (DESIGN principle 4); `settle_due` claims them:

    fallback_at due (rcs_then_sms)  revoke first, so nobody gets both:
        revoked / not_found         → SMS leg (cause not_delivered_in_time)
        already_delivered           → no SMS; wait DELIVERED_GRACE_S for the
                                      delivered webhook, then count it
                                      delivered (the platform said so)
        error                       → asked again after REVOKE_RETRY_S
    expires_at due                  discard request (revoke), then expired
                                    with its answer in the event (§9: old
                                    apps could deliver after a discard)

Every platform request is made as the message's account's official account
(`Config.rcs_bot_of`, one `RcsClient` per bot in `RcsClients`): capability
(cached per bot and number), send, and the revokes of fallback and discard.
An account with no bot is `not_by_rcs` ('no_official_account').

Webhooks (http/webhooks.py verifies them with the bot's secret and calls
`apply_webhook` with the bot) touch only messages of the bot's account(s):
a status naming another account's message is refused and counted
('other_bot').
delivered/displayed settle an rcs_sent message as delivered and bill 1
+Message unit if within 72 h of the send (§11); failed falls back to SMS
(rcs_then_sms) or fails. A status for a message not yet rcs_sent (the
platform beat our commit) waits in rcs_early_statuses and is applied when
the send is recorded. A delivery reported after the message left rcs_sent
(SMS fallback started, expired, cancelled) changes no state and sends
nothing: it is logged once as 'rcs_late_delivery' and billed as +Message if
within 72 h of the send, because the platform did deliver it and charges
for it. Every webhook is idempotent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import aiohttp
import structlog

from carrierd.channels.rcs import (
    BearerAuth,
    InboundEvent,
    MessageStatusEvent,
    OAuth2ClientCredentials,
    RcsClient,
    RcsPlatformConfig,
    RcsPlatformError,
    RevokeOutcome,
    SendOutcome,
    TypingEvent,
    WebhookEvent,
)
from carrierd.config import Config, RcsBotConfig, RcsConfig
from carrierd.domain import billing, reasons
from carrierd.domain.clock import Clock
from carrierd.domain.lifecycle import Event, Move, Note
from carrierd.domain.rcs_content import RcsContent, RcsContentError, content_from_json
from carrierd.domain.rcs_flow import (
    RCS_CAPACITY_EXCEEDED,
    RCS_INVALID_CONTENT,
    RCS_NO_OFFICIAL_ACCOUNT,
    RcsFacts,
    after_platform_error,
    after_send,
    after_status,
    assumed_delivered,
    discarded,
    not_by_rcs,
    not_delivered_in_time,
    rcs_possible,
)
from carrierd.domain.states import State
from carrierd.engine.inbound import Inbound, our_message_id, record_webhook_event
from carrierd.engine.lifecycle import Lifecycle
from carrierd.loops import until_database_answers
from carrierd.store.db import Database, Row, Transaction
from carrierd.store.rows import ClaimedMessage
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.rcs_leg")

# A due fallback or expiry is leased this long while its revoke is in
# flight; it is also when a revoke that failed is asked again.
REVOKE_RETRY_S = 30.0
# A revoke answered "already delivered": the delivered webhook should be on
# its way. If it has not come after this long (lost, or our endpoint was
# down longer than the platform retries), the message counts as delivered.
DELIVERED_GRACE_S = 1800.0
# A discard (§9) that keeps failing is retried this long past the 72 h,
# then the message expires with the error recorded as the discard's answer.
DISCARD_GIVE_UP_S = 3600.0
# Early statuses whose message never reached rcs_sent, and capability
# answers past their TTL, are purged this often, this many at a time.
PURGE_EVERY_S = 60.0
PURGE_BATCH = 1000
EARLY_STATUS_KEEP_S = 24 * 3600.0


def platform_config(rcs: RcsConfig, bot: RcsBotConfig) -> RcsPlatformConfig:
    """The client configuration of one official account on the [rcs]
    platform (a static token wins over OAuth2 client credentials when both
    are set)."""
    auth: BearerAuth | OAuth2ClientCredentials
    if bot.token:
        auth = BearerAuth(bot.token)
    else:
        auth = OAuth2ClientCredentials(
            token_url=rcs.oauth_token_url,
            client_id=bot.oauth_client_id,
            client_secret=bot.oauth_client_secret,
        )
    return RcsPlatformConfig(
        base_url=rcs.base_url,
        bot_id=bot.bot_id,
        auth=auth,
        webhook_secret=bot.webhook_secret,
        request_timeout_s=rcs.request_timeout_s,
    )


class RcsClients:
    """One platform client per official account, made on first use from the
    configuration of the moment: a reload that changes a bot's credentials
    gets a new client (and a new OAuth token), the others keep theirs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        tune: Callable[[RcsPlatformConfig], RcsPlatformConfig] = lambda config: config,
    ) -> None:
        self._session = session
        self._tune = tune
        self._clients: dict[RcsPlatformConfig, RcsClient] = {}

    def for_bot(self, rcs: RcsConfig, bot: RcsBotConfig) -> RcsClient:
        config = self._tune(platform_config(rcs, bot))
        client = self._clients.get(config)
        if client is None:
            # Clients of bots a reload dropped or changed are not kept.
            self._clients = {
                c: existing for c, existing in self._clients.items() if c.bot_id != bot.bot_id
            }
            client = self._clients[config] = RcsClient(self._session, config)
        return client


# Capability answers freshly asked, per bot id and number.
_Checked = dict[str, dict[str, bool]]


@dataclass(frozen=True)
class _Status:
    """A platform status to settle: 'displayed' counts as delivered."""

    message_id: int
    status: Literal["delivered", "failed"]
    at: datetime
    reported_as: str
    error: str | None = None
    early: bool = False


@dataclass
class _Effects:
    """What to tell Prometheus once the transaction has committed (the
    writer counts the moves themselves: fallbacks, final states, billing)."""

    discards: list[str] = field(default_factory=list)
    delivery_s: list[float] = field(default_factory=list)


def _facts(message: ClaimedMessage) -> RcsFacts:
    return RcsFacts(message.id, message.channel, message.accepted_at, message.send_at)


def _row_facts(row: Row) -> RcsFacts:
    return RcsFacts(row["id"], row["channel"], row["accepted_at"], None, row["rcs_sent_at"])


class RcsLeg:
    """Implements the dispatcher's `RcsLeg` and the timers' `RcsTimers`."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        clients: RcsClients,
        lifecycle: Lifecycle,
        inbound: Inbound,
        *,
        config: Callable[[], Config],
        lease_owner: str,
        metrics: Metrics | None = None,
        max_concurrent_requests: int = 32,
        max_batches_in_flight: int = 4,
    ) -> None:
        self._db = db
        self._clock = clock
        self._clients = clients
        self._lifecycle = lifecycle
        self._inbound = inbound
        self._config = config
        self._lease_owner = lease_owner
        self._metrics = metrics
        self._requests = asyncio.Semaphore(max_concurrent_requests)
        self._max_batches_in_flight = max_batches_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._next_purge_at: datetime | None = None

    # -- dispatch ------------------------------------------------------------------

    async def dispatch(self, messages: Sequence[ClaimedMessage], now: datetime) -> None:
        """Take over claimed messages. Returns once the batch is under way
        (the dispatcher keeps claiming and renewing leases meanwhile); waits
        first while `max_batches_in_flight` batches are still talking to the
        platform, so a slow platform slows the claims instead of piling up."""
        while len(self._in_flight) >= self._max_batches_in_flight:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(self._dispatch_batch(list(messages), now))
        self._in_flight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The rows stay 'dispatching' until their lease runs out; the
            # timers then queue them again and the send is repeated under
            # the same msgId, which the platform de-duplicates.
            log.error("rcs_dispatch_failed", error=repr(exc), exc_info=exc)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def wait_idle(self) -> None:
        """Tests and drain: wait for every batch under way."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def stop(self, drain_timeout_s: float) -> None:
        """Call before `Dispatcher.stop`: let batches under way record their
        outcomes, so the dispatcher gives back only rows nobody sent."""
        if self._in_flight:
            _done, pending = await asyncio.wait(self._in_flight, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()

    async def _dispatch_batch(self, messages: list[ClaimedMessage], now: datetime) -> None:
        config = self._config()
        keeper = asyncio.ensure_future(
            self._keep_leases([m.id for m in messages], config.engine.lease_s)
        )
        try:
            moves, checked, effects = await self._decide_and_send(messages, now, config)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        # The platform has answered: its outcome is ours alone, so it is
        # held while the database is away rather than dropped (which would
        # send the batch again after its lease ran out).
        await until_database_answers(
            "rcs_record_dispatch", lambda: self._record_dispatch(moves, checked, effects)
        )

    async def _keep_leases(self, message_ids: list[int], lease_s: float) -> None:
        """While a slow platform holds the batch, keep its rows ours: a lease
        that ran out would let another daemon decide differently (send SMS
        while our +Message is accepted)."""
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await self._db.execute(
                    "rcs_renew_leases",
                    message_ids,
                    self._clock.now() + timedelta(seconds=lease_s),
                    self._lease_owner,
                )
            except Exception:
                log.exception("rcs_lease_renewal_failed")

    async def _decide_and_send(
        self, messages: list[ClaimedMessage], now: datetime, config: Config
    ) -> tuple[list[Move], _Checked, _Effects]:
        """Capability and send for each message, each under its account's
        official account: the moves to record, the capability answers to
        cache per bot."""
        rcs = config.rcs
        moves: list[Move] = []
        effects = _Effects()
        candidates: list[tuple[ClaimedMessage, RcsContent, RcsBotConfig]] = []
        for message in messages:
            facts = _facts(message)
            bot = config.rcs_bot_of(message.account_id)
            if bot is None:
                moves.append(
                    not_by_rcs(
                        facts,
                        State.DISPATCHING,
                        "no_official_account",
                        RCS_NO_OFFICIAL_ACCOUNT,
                        now,
                        detail={"account": message.account_id},
                    )
                )
                continue
            if not rcs_possible(message.carrier_named, message.carriers_allowed):
                moves.append(
                    not_by_rcs(
                        facts,
                        State.DISPATCHING,
                        "carrier_restriction",
                        reasons.NOT_IN_CARRIER_RESTRICTION,
                        now,
                        final=State.SKIPPED,
                    )
                )
                continue
            try:
                content = content_from_json(message.rcs_content)
            except RcsContentError as exc:
                moves.append(
                    not_by_rcs(
                        facts,
                        State.DISPATCHING,
                        "invalid_content",
                        RCS_INVALID_CONTENT,
                        now,
                        detail={"problem": str(exc)},
                    )
                )
                continue
            candidates.append((message, content, bot))

        by_bot: dict[str, set[str]] = defaultdict(set)
        bots = {bot.bot_id: bot for _, _, bot in candidates}
        for message, _, bot in candidates:
            if message.msisdn:
                by_bot[bot.bot_id].add(message.msisdn)
        capable: dict[tuple[str, str], bool | RcsPlatformError] = {}
        checked: _Checked = {}
        for bot_id, numbers in by_bot.items():
            answers, asked = await self._capabilities(sorted(numbers), now, rcs, bots[bot_id])
            capable.update(((bot_id, number), answer) for number, answer in answers.items())
            if asked:
                checked[bot_id] = asked
        to_send: list[tuple[ClaimedMessage, RcsContent, RcsBotConfig]] = []
        for message, content, bot in candidates:
            facts = _facts(message)
            assert message.msisdn is not None
            answer = capable[(bot.bot_id, message.msisdn)]
            if not isinstance(answer, RcsPlatformError):
                if answer:
                    to_send.append((message, content, bot))
                else:
                    moves.append(
                        not_by_rcs(
                            facts, State.DISPATCHING, "not_capable", reasons.RCS_NOT_CAPABLE, now
                        )
                    )
            elif answer.reason == "capacity_exceeded":
                moves.append(
                    not_by_rcs(
                        facts,
                        State.DISPATCHING,
                        "capacity_exceeded",
                        RCS_CAPACITY_EXCEEDED,
                        now,
                        detail={"during": "capability", "platform": answer.detail},
                    )
                )
            else:
                moves.append(
                    after_platform_error(
                        facts,
                        now,
                        during="capability",
                        error=answer.reason,
                        platform=answer.detail,
                        fallback_after_s=rcs.fallback_after_s,
                    )
                )

        sent = await self._send_all(to_send, rcs)
        answered_at = self._clock.now()
        for message, bot, outcome in sent:
            if outcome.kind == "not_capable" and message.msisdn:
                # The handset lost +Message since the check: remember that.
                checked.setdefault(bot.bot_id, {})[message.msisdn] = False
            moves.append(
                after_send(
                    _facts(message),
                    outcome.kind,
                    answered_at,
                    fallback_after_s=rcs.fallback_after_s,
                    expiry_s=rcs.expiry_s,
                    attempts=outcome.attempts,
                    already_existed=outcome.already_existed,
                    error=outcome.reason,
                    http_status=outcome.http_status,
                    platform=outcome.detail,
                    bot_id=bot.bot_id,
                )
            )
        return moves, checked, effects

    async def _record_dispatch(
        self, moves: list[Move], checked: _Checked, effects: _Effects
    ) -> None:
        """One transaction for the batch: capability cache, the moves, and
        statuses that came early."""
        sent_at = self._clock.now()

        async def work(tx: Transaction) -> _Effects:
            for bot_id, answers in sorted(checked.items()):
                numbers = sorted(answers)
                await tx.execute(
                    "rcs_store_capabilities",
                    numbers,
                    [answers[n] for n in numbers],
                    [sent_at] * len(numbers),
                    bot_id,
                )
            applied = await self._lifecycle.apply(tx, moves, sent_at)
            now_sent = [a.move.message_id for a in applied if a.move.dst is State.RCS_SENT]
            early = await tx.fetch("rcs_take_early_statuses", now_sent)
            # A message delivered and failed before we knew: delivered wins.
            early.sort(key=lambda e: (e["message_id"], e["status"] != "delivered"))
            return await self._settle_statuses(
                tx,
                [
                    _Status(e["message_id"], e["status"], e["at"], e["status"], e["error"], True)
                    for e in early
                ],
                sent_at,
            )

        late = await self._db.in_transaction(work)
        effects.delivery_s += late.delivery_s
        self._observe(effects)

    async def _capabilities(
        self, msisdns: list[str], now: datetime, rcs: RcsConfig, bot: RcsBotConfig
    ) -> tuple[dict[str, bool | RcsPlatformError], dict[str, bool]]:
        """Every number's answer for `bot`, and the ones freshly asked (to
        cache)."""
        if not msisdns:
            return {}, {}
        fresh_after = now - timedelta(seconds=rcs.capability_ttl_s)
        cached = await self._db.fetch("rcs_cached_capabilities", msisdns, fresh_after, bot.bot_id)
        client = self._clients.for_bot(rcs, bot)
        answers: dict[str, bool | RcsPlatformError] = {r["msisdn"]: r["capable"] for r in cached}
        missing = [m for m in msisdns if m not in answers]

        async def ask(msisdn: str) -> bool | RcsPlatformError:
            async with self._requests:
                try:
                    return (await client.capability(msisdn)).capable
                except RcsPlatformError as exc:
                    return exc
                except Exception as exc:
                    log.exception("rcs_capability_crashed")
                    return RcsPlatformError("exception", repr(exc))

        asked = dict(zip(missing, await asyncio.gather(*map(ask, missing)), strict=True))
        answers.update(asked)
        checked = {m: a for m, a in asked.items() if isinstance(a, bool)}
        return answers, checked

    async def _send_all(
        self, to_send: list[tuple[ClaimedMessage, RcsContent, RcsBotConfig]], rcs: RcsConfig
    ) -> list[tuple[ClaimedMessage, RcsBotConfig, SendOutcome]]:
        # FIFO per recipient: messages to one number leave one after another.
        by_recipient: dict[str, list[tuple[ClaimedMessage, RcsContent, RcsBotConfig]]] = (
            defaultdict(list)
        )
        for message, content, bot in to_send:
            by_recipient[message.msisdn or ""].append((message, content, bot))

        async def send_in_order(
            queue: list[tuple[ClaimedMessage, RcsContent, RcsBotConfig]],
        ) -> list[tuple[ClaimedMessage, RcsBotConfig, SendOutcome]]:
            results: list[tuple[ClaimedMessage, RcsBotConfig, SendOutcome]] = []
            for message, content, bot in queue:
                async with self._requests:
                    try:
                        outcome = await self._clients.for_bot(rcs, bot).send(
                            str(message.id), message.msisdn or "", content
                        )
                    except Exception as exc:
                        # The request may have reached the platform: this is an
                        # unknown outcome, and a resend under the msgId is safe.
                        log.exception("rcs_send_crashed", message_id=message.id)
                        outcome = SendOutcome("error", "exception", repr(exc))
                results.append((message, bot, outcome))
            return results

        groups = await asyncio.gather(*map(send_in_order, by_recipient.values()))
        return [result for group in groups for result in group]

    # -- timers --------------------------------------------------------------------

    async def settle_due(self, now: datetime, limit: int) -> int:
        """One timer pass: discards first (a message whose validity ended
        gets no SMS), then fallbacks, then housekeeping."""
        rcs = self._config().rcs
        done = await self._settle_expiries(now, limit, rcs)
        done += await self._settle_fallbacks(now, limit)
        if self._next_purge_at is None or now >= self._next_purge_at:
            self._next_purge_at = now + timedelta(seconds=PURGE_EVERY_S)
            await self._db.execute(
                "rcs_purge_capabilities",
                now - timedelta(seconds=rcs.capability_ttl_s),
                PURGE_BATCH,
            )
            await self._db.execute(
                "rcs_purge_early_statuses",
                now - timedelta(seconds=EARLY_STATUS_KEEP_S),
                PURGE_BATCH,
            )
        return done

    async def _settle_fallbacks(self, now: datetime, limit: int) -> int:
        rows = await self._db.fetch(
            "rcs_claim_fallback_due", now, limit, now + timedelta(seconds=REVOKE_RETRY_S)
        )
        if not rows:
            return 0
        to_ask = [r for r in rows if r["refused_at"] is None]
        answers = await self._revoke_all(to_ask)
        at = self._clock.now()
        moves: list[Move] = []
        notes: list[Note] = []
        for row in rows:
            if row["refused_at"] is None:
                continue
            # The platform said it delivered; the webhook never came.
            moves.append(
                assumed_delivered(
                    _row_facts(row),
                    row["refused_at"],
                    {
                        "why": "revoke answered already delivered; no delivered webhook "
                        f"within {DELIVERED_GRACE_S:.0f} s"
                    },
                )
            )
        for row, answer in zip(to_ask, answers, strict=True):
            revoke = _revoke_detail(answer)
            if answer.kind in ("revoked", "not_found"):
                moves.append(not_delivered_in_time(_row_facts(row), at, revoke))
            elif answer.kind == "already_delivered":
                notes.append(
                    Note(
                        row["id"],
                        State.RCS_SENT,
                        Event.RCS_REVOKE_REFUSED,
                        detail={"revoke": revoke},
                        fallback_at=at + timedelta(seconds=DELIVERED_GRACE_S),
                    )
                )
            else:
                log.warning(
                    "rcs_revoke_failed",
                    message_id=row["id"],
                    reason=answer.reason,
                    retry_in_s=REVOKE_RETRY_S,
                )

        async def work(tx: Transaction) -> int:
            noted = await self._lifecycle.note(tx, notes, at)
            applied = await self._lifecycle.apply(tx, moves, at)
            return len(applied) + len(noted)

        return await self._db.in_transaction(work)

    async def _settle_expiries(self, now: datetime, limit: int, rcs: RcsConfig) -> int:
        rows = await self._db.fetch(
            "rcs_claim_expiry_due", now, limit, now + timedelta(seconds=REVOKE_RETRY_S)
        )
        if not rows:
            return 0
        answers = await self._revoke_all(rows)
        at = self._clock.now()
        effects = _Effects()
        moves: list[Move] = []
        for row, answer in zip(rows, answers, strict=True):
            discard = _revoke_detail(answer)
            give_up_at = row["rcs_sent_at"] + timedelta(seconds=rcs.expiry_s + DISCARD_GIVE_UP_S)
            if answer.kind == "error" and at < give_up_at:
                log.warning(
                    "rcs_discard_failed",
                    message_id=row["id"],
                    reason=answer.reason,
                    retry_in_s=REVOKE_RETRY_S,
                )
                continue
            effects.discards.append(answer.kind)
            if answer.kind == "already_delivered":
                # Delivered inside the platform's retention (72 h) and the
                # webhook was lost: the sender gets the truth, and it is billed.
                moves.append(assumed_delivered(_row_facts(row), at, {"discard": discard}))
            else:
                moves.append(discarded(_row_facts(row), discard))

        async def work(tx: Transaction) -> int:
            return len(await self._lifecycle.apply(tx, moves, at))

        done = await self._db.in_transaction(work)
        self._observe(effects)
        return done

    async def revoke(self, account_id: str, message_id: int) -> RevokeOutcome:
        """One revoke for a sender's cancel, through the account's official
        account and within the leg's request limit; what it does to the
        message is the caller's (engine/cancel.py)."""
        [outcome] = await self._revoke_all([{"id": message_id, "account_id": account_id}])
        return outcome

    async def subscriber_pages(
        self, account_id: str, page_size: int
    ) -> AsyncIterator[tuple[str, ...]]:
        """The numbers subscribed to the account's official account (KMC
        §3.4.7), a page at a time as the platform gives them; raises
        RcsPlatformError."""
        config = self._config()
        bot = config.rcs_bot_of(account_id)
        if bot is None:
            raise RcsPlatformError("no_official_account", account_id)
        client = self._clients.for_bot(config.rcs, bot)
        token: str | None = None
        while True:
            async with self._requests:
                page = await client.subscribers(token, page_size)
            yield page.numbers
            if page.next_token is None:
                return
            token = page.next_token

    async def _revoke_all(self, rows: Sequence[Row]) -> list[RevokeOutcome]:
        config = self._config()

        async def revoke(row: Row) -> RevokeOutcome:
            # The message went out under its account's official account; a
            # revoke through any other bot would not find it.
            bot = config.rcs_bot_of(row["account_id"])
            if bot is None:
                return RevokeOutcome("error", "no_official_account", row["account_id"])
            async with self._requests:
                try:
                    return await self._clients.for_bot(config.rcs, bot).revoke(str(row["id"]))
                except Exception as exc:
                    log.exception("rcs_revoke_crashed", message_id=row["id"])
                    return RevokeOutcome("error", "exception", repr(exc))

        return list(await asyncio.gather(*map(revoke, rows)))

    # -- webhooks ------------------------------------------------------------------

    async def apply_webhook(
        self, event: WebhookEvent, bot: RcsBotConfig, event_key: bytes | None = None
    ) -> bool:
        """Apply one verified event of `bot` once per `event_key` (the
        platform repeats them, an attacker may replay them); False for a
        repeat. It can touch only messages of the bot's own account(s)."""
        now = self._clock.now()
        if isinstance(event, MessageStatusEvent):
            status = _status_of(event, now)
            if status is None:
                return True  # settles nothing: a repeat is harmless, keep no key

            async def settle(tx: Transaction) -> _Effects | None:
                if event_key is not None and not await record_webhook_event(tx, event_key, now):
                    return None
                return await self._settle_statuses(tx, [status], now, owners=bot.accounts)

            effects = await self._db.in_transaction(settle)
            if effects is None:
                return False
            self._observe(effects)
        elif isinstance(event, InboundEvent):
            inbound_event = event
            stored = await self._db.in_transaction(
                lambda tx: self._inbound.store_rcs(tx, inbound_event, bot, now, event_key)
            )
            if stored and self._metrics is not None:
                self._metrics.mo_received_total.labels("rcs").inc()
            return stored
        elif isinstance(event, TypingEvent):
            pass  # "is typing" changes nothing we keep
        return True

    async def _settle_statuses(
        self,
        tx: Transaction,
        statuses: Sequence[_Status],
        now: datetime,
        *,
        owners: frozenset[str] | None = None,
    ) -> _Effects:
        """`owners`: the accounts the reporting bot sends for (None: statuses
        that waited for their send, checked when they came)."""
        effects = _Effects()
        if not statuses:
            return effects
        rows = {
            r["id"]: r
            for r in await tx.fetch("rcs_lock_messages", sorted({s.message_id for s in statuses}))
        }
        moves: list[Move] = []
        notes: list[Note] = []
        settled: set[int] = set()
        for status in statuses:
            row = rows.get(status.message_id)
            if row is None:
                log.info("rcs_status_for_unknown_message", message_id=status.message_id)
                continue
            if owners is not None and row["account_id"] not in owners:
                # Another official account's message: a bot reports on its
                # own sends only, whatever msgId its webhook names.
                log.warning(
                    "rcs_status_for_other_bot",
                    message_id=row["id"],
                    account_id=row["account_id"],
                    bot_accounts=sorted(owners),
                )
                if self._metrics is not None:
                    self._metrics.webhooks_rejected_total.labels("other_bot").inc()
                continue
            if not _on_rcs_leg(row):
                # Only a message that went, or goes, by +Message can hear
                # from the platform: a msgId naming anything else (an SMS
                # of any account) is refused, never applied or billed.
                log.warning(
                    "rcs_status_for_message_not_on_rcs",
                    message_id=row["id"],
                    channel=row["channel"],
                    leg=row["leg"],
                )
                if self._metrics is not None:
                    self._metrics.webhooks_rejected_total.labels("not_on_rcs_leg").inc()
                continue
            if status.reported_as == "displayed":
                # DOMAIN §12: the +Message open time, a record beside the
                # message (its state is "delivered" either way).
                await tx.execute("record_message_open", row["id"], status.at, now)
            state = row["state"]
            facts = _row_facts(row)
            if state == State.RCS_SENT and row["id"] not in settled:
                settled.add(row["id"])
                move = after_status(
                    facts,
                    status.status,
                    status.at,
                    now,
                    reported_as=status.reported_as,
                    error=status.error,
                    early=status.early,
                )
                moves.append(move)
                if move.dst is State.DELIVERED and row["rcs_sent_at"] is not None:
                    effects.delivery_s.append(
                        max(0.0, (status.at - row["rcs_sent_at"]).total_seconds())
                    )
            elif row["leg"] == "rcs" and state in (State.QUEUED, State.DISPATCHING):
                # Our send is not recorded yet (or is waiting for a retry).
                await tx.execute(
                    "rcs_store_early_status",
                    row["id"],
                    status.status,
                    status.at,
                    status.error,
                    now,
                )
            elif status.status == "delivered" and not (
                state == State.DELIVERED and row["leg"] == "rcs"
            ):
                notes.append(_late_delivery(row, status))
            # Anything else is a repeat or a failure after the fact: nothing to do.
        await self._lifecycle.apply(tx, moves, now)
        noted = await self._lifecycle.note(tx, notes, now)
        for message_id in noted:
            log.warning("rcs_late_delivery", message_id=message_id)
        return effects

    def _observe(self, effects: _Effects) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        for outcome in effects.discards:
            metrics.discards_total.labels(outcome).inc()
        for seconds in effects.delivery_s:
            metrics.rcs_delivery_seconds.observe(seconds)


def _on_rcs_leg(row: Row) -> bool:
    """A message the +Message platform may report on: a +Message channel,
    and either still on the +Message leg or sent by +Message before its
    SMS fallback."""
    return row["channel"] in ("rcs", "rcs_then_sms") and (
        row["leg"] == "rcs" or row["rcs_sent_at"] is not None
    )


def _late_delivery(row: Row, status: _Status) -> Note:
    """A delivery reported after the message left rcs_sent (SMS fallback
    under way, expired, cancelled): the platform did deliver it and charges
    for it, so it is logged once and billed if within 72 h of the send."""
    sent_at = row["rcs_sent_at"] or status.at
    units = billing.rcs_units(sent_at, status.at)
    return Note(
        row["id"],
        None,
        Event.RCS_LATE_DELIVERY,
        detail={
            "status": status.reported_as,
            "platform_at": status.at.isoformat(),
            "billed": bool(units),
            "leg": row["leg"],
        },
        rcs_units=units,
        billed_at=status.at if units else None,
        once=True,
    )


def _status_of(event: MessageStatusEvent, now: datetime) -> _Status | None:
    """'sent' and 'cancelled' (the echo of our revoke) settle nothing."""
    message_id = our_message_id(event.message_id)
    if message_id is None:
        log.info("rcs_status_for_foreign_msg_id", msg_id=event.message_id)
        return None
    at = event.at or now
    if event.status in ("delivered", "displayed"):
        return _Status(message_id, "delivered", at, event.status)
    if event.status == "failed":
        return _Status(message_id, "failed", at, event.status, event.error)
    return None


def _revoke_detail(answer: RevokeOutcome) -> dict[str, Any]:
    detail: dict[str, Any] = {"answer": answer.kind}
    if answer.http_status is not None:
        detail["http_status"] = answer.http_status
    if answer.reason and answer.reason != answer.kind:
        detail["reason"] = answer.reason
    if answer.detail:
        detail["platform"] = answer.detail
    return detail
