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

Webhooks (`webhook_route`): delivered/displayed settle an rcs_sent message
as delivered and bill 1 +Message unit if within 72 h of the send (§11);
failed falls back to SMS (rcs_then_sms) or fails. A status for a message
not yet rcs_sent (the platform beat our commit) waits in rcs_early_statuses
and is applied when the send is recorded. A delivery reported after the
message left rcs_sent (SMS fallback started, expired, cancelled) changes no
state and sends nothing: it is logged once as 'rcs_late_delivery' and billed
as +Message if within 72 h of the send, because the platform did deliver it
and charges for it. Every webhook is idempotent.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web

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
    WebhookRejected,
    verify_and_parse_webhook,
)
from carrierd.config import RCS_CARRIERS, Config, RcsConfig
from carrierd.domain import billing, reasons
from carrierd.domain.clock import Clock
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.domain.rcs_content import RcsContent, RcsContentError, content_from_json
from carrierd.domain.reasons import Reason
from carrierd.domain.states import State
from carrierd.engine.write_behind import TransitionHook
from carrierd.store.db import Database, Row, Transaction, Transition
from carrierd.telemetry import Metrics

log = structlog.get_logger("carrierd.engine.rcs_leg")

WEBHOOK_PATH = "/v1/webhooks/rcs"
# After a platform error on a capability check or send (the client has
# already retried a few times within the request): try again this much later.
SEND_RETRY_S = 30.0
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

RCS_CAPACITY_EXCEEDED = Reason(
    "rcs_capacity_exceeded", "the +Message platform had no capacity for the message"
)
RCS_INVALID_CONTENT = Reason("rcs_invalid_content", "the stored +Message content could not be read")
RCS_DELIVERY_FAILED = Reason("rcs_failed", "the +Message platform reported the delivery failed")

FallbackCause = Literal[
    "not_capable",
    "capacity_exceeded",
    "carrier_restriction",
    "invalid_content",
    "not_delivered_in_time",
    "rcs_failed",
]


def platform_config(rcs: RcsConfig) -> RcsPlatformConfig:
    """The client configuration for the [rcs] section (a static token wins
    over OAuth2 client credentials when both are set)."""
    auth: BearerAuth | OAuth2ClientCredentials
    if rcs.token:
        auth = BearerAuth(rcs.token)
    else:
        auth = OAuth2ClientCredentials(
            token_url=rcs.oauth_token_url,
            client_id=rcs.oauth_client_id,
            client_secret=rcs.oauth_client_secret,
        )
    return RcsPlatformConfig(
        base_url=rcs.base_url,
        bot_id=rcs.bot_id,
        auth=auth,
        webhook_secret=rcs.webhook_secret,
        request_timeout_s=rcs.request_timeout_s,
    )


def rcs_possible(carrier_named: str | None, carriers_allowed: Sequence[str] | None) -> bool:
    """+Message exists on docomo, au and SoftBank only (§1, §4): a send
    restricted to other carriers cannot use it. Within those three the
    platform decides by capability; it does not tell us the carrier."""
    if carrier_named is not None and carrier_named not in RCS_CARRIERS:
        return False
    return carriers_allowed is None or any(c in RCS_CARRIERS for c in carriers_allowed)


class HasTransitionHook(Protocol):
    """The WriteBehind: its hook (status callbacks, metrics) sees our changes too."""

    on_transitions: TransitionHook | None


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
    """What to tell Prometheus once the transaction has committed."""

    fallbacks: list[str] = field(default_factory=list)
    discards: list[str] = field(default_factory=list)
    billed: list[tuple[str, str]] = field(default_factory=list)
    delivery_s: list[float] = field(default_factory=list)

    def add(self, other: _Effects) -> None:
        self.fallbacks += other.fallbacks
        self.discards += other.discards
        self.billed += other.billed
        self.delivery_s += other.delivery_s


class RcsLeg:
    """Implements the dispatcher's `RcsLeg` and the settler's `RcsTimers`."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        client: RcsClient,
        *,
        config: Callable[[], Config],
        hooks: HasTransitionHook | None = None,
        metrics: Metrics | None = None,
        max_concurrent_requests: int = 32,
        max_batches_in_flight: int = 4,
    ) -> None:
        self._db = db
        self._clock = clock
        self._client = client
        self._config = config
        self._hooks = hooks
        self._metrics = metrics
        self._requests = asyncio.Semaphore(max_concurrent_requests)
        self._max_batches_in_flight = max_batches_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._next_purge_at: datetime | None = None

    # -- dispatch ------------------------------------------------------------------

    async def dispatch(self, rows: Sequence[Row], now: datetime) -> None:
        """Take over claimed rows. Returns once the batch is under way (the
        dispatcher keeps claiming and renewing leases meanwhile); waits first
        while `max_batches_in_flight` batches are still talking to the
        platform, so a slow platform slows the claims instead of piling up."""
        while len(self._in_flight) >= self._max_batches_in_flight:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(self._dispatch_batch(list(rows), now))
        self._in_flight.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The rows stay 'dispatching' until their lease runs out; the
            # settler then queues them again and the send is repeated under
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

    async def _dispatch_batch(self, rows: list[Row], now: datetime) -> None:
        config = self._config()
        keeper = asyncio.ensure_future(
            self._keep_leases([r["id"] for r in rows], config.engine.lease_s, config.daemon_id)
        )
        try:
            transitions, checked, effects = await self._decide_and_send(rows, now, config.rcs)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await self._record_dispatch(transitions, checked, effects, config.rcs)

    async def _keep_leases(self, message_ids: list[int], lease_s: float, daemon_id: str) -> None:
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
                    daemon_id,
                )
            except Exception:
                log.exception("rcs_lease_renewal_failed")

    async def _decide_and_send(
        self, rows: list[Row], now: datetime, rcs: RcsConfig
    ) -> tuple[list[Transition], dict[str, bool], _Effects]:
        """Capability and send for each row: the transitions to record, the
        capability answers to cache."""
        transitions: list[Transition] = []
        effects = _Effects()
        candidates: list[tuple[Row, RcsContent]] = []
        for row in rows:
            if not rcs_possible(row["carrier_named"], row["carriers_allowed"]):
                transitions.append(
                    self._not_by_rcs(
                        row,
                        State.DISPATCHING,
                        "carrier_restriction",
                        reasons.NOT_IN_CARRIER_RESTRICTION,
                        now,
                        effects,
                        final=State.SKIPPED,
                    )
                )
                continue
            try:
                content = content_from_json(row["rcs_content"])
            except RcsContentError as exc:
                transitions.append(
                    self._not_by_rcs(
                        row,
                        State.DISPATCHING,
                        "invalid_content",
                        RCS_INVALID_CONTENT,
                        now,
                        effects,
                        detail={"problem": str(exc)},
                    )
                )
                continue
            candidates.append((row, content))

        capable, checked = await self._capabilities(
            sorted({row["msisdn"] for row, _ in candidates}), now, rcs
        )
        to_send: list[tuple[Row, RcsContent]] = []
        for row, content in candidates:
            answer = capable[row["msisdn"]]
            if not isinstance(answer, RcsPlatformError):
                if answer:
                    to_send.append((row, content))
                else:
                    transitions.append(
                        self._not_by_rcs(
                            row,
                            State.DISPATCHING,
                            "not_capable",
                            reasons.RCS_NOT_CAPABLE,
                            now,
                            effects,
                        )
                    )
            elif answer.reason == "capacity_exceeded":
                transitions.append(
                    self._not_by_rcs(
                        row,
                        State.DISPATCHING,
                        "capacity_exceeded",
                        RCS_CAPACITY_EXCEEDED,
                        now,
                        effects,
                        detail={"during": "capability", "platform": answer.detail},
                    )
                )
            else:
                transitions.append(
                    self._platform_error(row, now, "capability", answer.reason, answer.detail, rcs)
                )

        sent = await self._send_all(to_send)
        answered_at = self._clock.now()
        for row, outcome in sent:
            if outcome.kind == "not_capable":
                # The handset lost +Message since the check: remember that.
                checked[row["msisdn"]] = False
            transitions.append(self._after_send(row, outcome, answered_at, rcs, effects))
        return transitions, checked, effects

    async def _record_dispatch(
        self,
        transitions: list[Transition],
        checked: dict[str, bool],
        effects: _Effects,
        rcs: RcsConfig,
    ) -> None:
        """One transaction for the batch: capability cache, state changes,
        the discard timer of channel rcs, and statuses that came early."""
        sent_at = self._clock.now()

        async def work(tx: Transaction) -> _Effects:
            if checked:
                numbers = sorted(checked)
                await tx.execute(
                    "rcs_store_capabilities",
                    numbers,
                    [checked[n] for n in numbers],
                    [sent_at] * len(numbers),
                )
            changed = await self._apply(tx, transitions, sent_at)
            now_sent = [c for c in changed if c["state"] == State.RCS_SENT]
            rcs_only = [c["id"] for c in now_sent if c["channel"] == "rcs"]
            if rcs_only:
                await tx.execute(
                    "rcs_set_expiry", rcs_only, sent_at + timedelta(seconds=rcs.expiry_s)
                )
            early = await tx.fetch("rcs_take_early_statuses", [c["id"] for c in now_sent])
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

        effects.add(await self._db.in_transaction(work))
        self._observe(effects)

    async def _capabilities(
        self, msisdns: list[str], now: datetime, rcs: RcsConfig
    ) -> tuple[dict[str, bool | RcsPlatformError], dict[str, bool]]:
        """Every number's answer, and the ones freshly asked (to cache)."""
        if not msisdns:
            return {}, {}
        fresh_after = now - timedelta(seconds=rcs.capability_ttl_s)
        cached = await self._db.fetch("rcs_cached_capabilities", msisdns, fresh_after)
        answers: dict[str, bool | RcsPlatformError] = {r["msisdn"]: r["capable"] for r in cached}
        missing = [m for m in msisdns if m not in answers]

        async def ask(msisdn: str) -> bool | RcsPlatformError:
            async with self._requests:
                try:
                    return (await self._client.capability(msisdn)).capable
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
        self, to_send: list[tuple[Row, RcsContent]]
    ) -> list[tuple[Row, SendOutcome]]:
        # FIFO per recipient: messages to one number leave one after another.
        by_recipient: dict[str, list[tuple[Row, RcsContent]]] = defaultdict(list)
        for row, content in to_send:
            by_recipient[row["msisdn"]].append((row, content))

        async def send_in_order(
            queue: list[tuple[Row, RcsContent]],
        ) -> list[tuple[Row, SendOutcome]]:
            results: list[tuple[Row, SendOutcome]] = []
            for row, content in queue:
                async with self._requests:
                    try:
                        outcome = await self._client.send(str(row["id"]), row["msisdn"], content)
                    except Exception as exc:
                        # The request may have reached the platform: this is an
                        # unknown outcome, and a resend under the msgId is safe.
                        log.exception("rcs_send_crashed", message_id=row["id"])
                        outcome = SendOutcome("error", "exception", repr(exc))
                results.append((row, outcome))
            return results

        groups = await asyncio.gather(*map(send_in_order, by_recipient.values()))
        return [result for group in groups for result in group]

    def _after_send(
        self, row: Row, outcome: SendOutcome, at: datetime, rcs: RcsConfig, effects: _Effects
    ) -> Transition:
        if outcome.kind == "accepted":
            detail: dict[str, Any] = {"attempts": outcome.attempts}
            if outcome.already_existed:
                detail["already_existed"] = True
            return Transition(
                row["id"],
                State.DISPATCHING,
                State.RCS_SENT,
                "rcs_sent",
                fallback_at=(
                    at + timedelta(seconds=rcs.fallback_after_s)
                    if row["channel"] == "rcs_then_sms"
                    else None
                ),
                detail=detail,
            )
        platform = {"platform": outcome.detail, "http_status": outcome.http_status}
        if outcome.kind == "capacity_exceeded":
            return self._not_by_rcs(
                row,
                State.DISPATCHING,
                "capacity_exceeded",
                RCS_CAPACITY_EXCEEDED,
                at,
                effects,
                detail={"during": "send", **platform},
            )
        if outcome.kind == "not_capable":
            return self._not_by_rcs(
                row,
                State.DISPATCHING,
                "not_capable",
                reasons.RCS_NOT_CAPABLE,
                at,
                effects,
                detail={"during": "send", **platform},
            )
        if outcome.kind == "error":
            return self._platform_error(row, at, "send", outcome.reason, outcome.detail, rcs)
        reason = Reason(
            f"rcs_{outcome.reason or 'rejected'}",
            f"the +Message platform refused the message (HTTP {outcome.http_status})"
            + (f": {outcome.detail}" if outcome.detail else ""),
        )
        return _to_state(row["id"], State.DISPATCHING, State.FAILED, "failed", reason)

    def _platform_error(
        self,
        row: Row,
        now: datetime,
        during: str,
        reason: str | None,
        detail: str | None,
        rcs: RcsConfig,
    ) -> Transition:
        """Try again shortly. rcs_then_sms stops trying once it has waited as
        long as the fallback delay (§8), but through rcs_sent with the
        fallback due at once: an earlier send whose answer was lost may be
        stored at the platform, and only a revoke can tell before the SMS."""
        info = {"during": during, "error": reason, "platform": detail}
        started = max(row["accepted_at"], row["send_at"] or row["accepted_at"])
        waited_s = (now - started).total_seconds()
        if row["channel"] == "rcs_then_sms" and waited_s >= rcs.fallback_after_s:
            return Transition(
                row["id"],
                State.DISPATCHING,
                State.RCS_SENT,
                "rcs_send_unknown",
                fallback_at=now,
                detail=info,
            )
        return Transition(
            row["id"],
            State.DISPATCHING,
            State.QUEUED,
            "rcs_retry",
            not_before=now + timedelta(seconds=SEND_RETRY_S),
            detail=info,
        )

    def _not_by_rcs(
        self,
        row: Row,
        from_state: State,
        cause: FallbackCause,
        reason: Reason,
        at: datetime,
        effects: _Effects,
        *,
        final: State = State.FAILED,
        detail: dict[str, Any] | None = None,
    ) -> Transition:
        """+Message cannot take this message: the SMS leg at once for
        rcs_then_sms (§8), else `final` with the reason."""
        if row["channel"] == "rcs_then_sms":
            effects.fallbacks.append(cause)
            return Transition(
                row["id"],
                from_state,
                State.QUEUED,
                "fallback",
                not_before=at,
                leg="sms",
                detail={"cause": cause, **(detail or {})},
            )
        return _to_state(row["id"], from_state, final, final.value, reason, detail)

    # -- timers --------------------------------------------------------------------

    async def settle_due(self, now: datetime, limit: int) -> int:
        """One settler pass: discards first (a message whose validity ended
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
        effects = _Effects()
        transitions: list[Transition] = []
        bills: list[tuple[str, datetime]] = []
        postponed: list[tuple[int, datetime, str]] = []
        for row in rows:
            if row["refused_at"] is None:
                continue
            # The platform said it delivered; the webhook never came.
            units = billing.rcs_units(row["rcs_sent_at"], row["refused_at"])
            transitions.append(
                Transition(
                    row["id"],
                    State.RCS_SENT,
                    State.DELIVERED,
                    "delivered",
                    rcs_units=units,
                    detail={
                        "channel": "rcs",
                        "assumed": True,
                        "why": "revoke answered already delivered; no delivered webhook "
                        f"within {DELIVERED_GRACE_S:.0f} s",
                    },
                )
            )
            if units:
                bills.append((row["account_id"], row["refused_at"]))
        for row, answer in zip(to_ask, answers, strict=True):
            revoke = _revoke_detail(answer)
            if answer.kind in ("revoked", "not_found"):
                effects.fallbacks.append("not_delivered_in_time")
                transitions.append(
                    Transition(
                        row["id"],
                        State.RCS_SENT,
                        State.QUEUED,
                        "fallback",
                        not_before=at,
                        leg="sms",
                        detail={"cause": "not_delivered_in_time", "revoke": revoke},
                    )
                )
            elif answer.kind == "already_delivered":
                postponed.append(
                    (
                        row["id"],
                        at + timedelta(seconds=DELIVERED_GRACE_S),
                        json.dumps({"revoke": revoke}, ensure_ascii=False),
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
            if postponed:
                await tx.execute(
                    "rcs_postpone_fallback",
                    [p[0] for p in postponed],
                    [p[1] for p in postponed],
                    [p[2] for p in postponed],
                    "rcs_revoke_refused",
                    at,
                )
            changed = await self._apply(tx, transitions, at)
            await self._bill(tx, bills, effects)
            return len(changed) + len(postponed)

        done = await self._db.in_transaction(work)
        self._observe(effects)
        return done

    async def _settle_expiries(self, now: datetime, limit: int, rcs: RcsConfig) -> int:
        rows = await self._db.fetch(
            "rcs_claim_expiry_due", now, limit, now + timedelta(seconds=REVOKE_RETRY_S)
        )
        if not rows:
            return 0
        answers = await self._revoke_all(rows)
        at = self._clock.now()
        effects = _Effects()
        transitions: list[Transition] = []
        bills: list[tuple[str, datetime]] = []
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
                transitions.append(
                    Transition(
                        row["id"],
                        State.RCS_SENT,
                        State.DELIVERED,
                        "delivered",
                        rcs_units=1,
                        detail={"channel": "rcs", "assumed": True, "discard": discard},
                    )
                )
                bills.append((row["account_id"], at))
            else:
                transitions.append(
                    _to_state(
                        row["id"],
                        State.RCS_SENT,
                        State.EXPIRED,
                        "expired",
                        reasons.RCS_DISCARDED,
                        {"discard": discard},
                    )
                )

        async def work(tx: Transaction) -> int:
            changed = await self._apply(tx, transitions, at)
            await self._bill(tx, bills, effects)
            return len(changed)

        done = await self._db.in_transaction(work)
        self._observe(effects)
        return done

    async def _revoke_all(self, rows: Sequence[Row]) -> list[RevokeOutcome]:
        async def revoke(row: Row) -> RevokeOutcome:
            async with self._requests:
                try:
                    return await self._client.revoke(str(row["id"]))
                except Exception as exc:
                    log.exception("rcs_revoke_crashed", message_id=row["id"])
                    return RevokeOutcome("error", "exception", repr(exc))

        return list(await asyncio.gather(*map(revoke, rows)))

    # -- webhooks ------------------------------------------------------------------

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """POST /v1/webhooks/rcs. 401 for a missing or wrong signature, 400
        for a body we cannot read: logged, counted, never applied. A 5xx
        (database trouble) makes the platform send it again later."""
        body = await request.read()
        secret = self._config().rcs.webhook_secret
        if not secret:
            log.error("rcs_webhook_without_secret")
            return web.json_response({"error": "webhooks are not configured"}, status=503)
        try:
            event = verify_and_parse_webhook(body, request.headers, secret)
        except WebhookRejected as rejected:
            unauthorized = rejected.reason in ("missing_signature", "bad_signature")
            log.warning(
                "rcs_webhook_rejected",
                reason=rejected.reason,
                detail=rejected.detail,
                remote=request.remote,
                body_bytes=len(body),
            )
            if self._metrics is not None:
                self._metrics.webhooks_rejected_total.labels(rejected.reason).inc()
            return web.json_response(
                {"error": rejected.reason}, status=401 if unauthorized else 400
            )
        await self.apply_webhook(event)
        return web.Response(status=204)

    async def apply_webhook(self, event: WebhookEvent) -> None:
        """Apply one verified event (idempotent: the platform repeats them)."""
        now = self._clock.now()
        if isinstance(event, MessageStatusEvent):
            status = _status_of(event, now)
            if status is None:
                return
            effects = await self._db.in_transaction(
                lambda tx: self._settle_statuses(tx, [status], now)
            )
            self._observe(effects)
        elif isinstance(event, InboundEvent):
            await self._store_inbound(event, now)
        elif isinstance(event, TypingEvent):
            pass  # "is typing" changes nothing we keep

    async def _settle_statuses(
        self, tx: Transaction, statuses: Sequence[_Status], now: datetime
    ) -> _Effects:
        effects = _Effects()
        if not statuses:
            return effects
        rows = {
            r["id"]: r
            for r in await tx.fetch("rcs_lock_messages", sorted({s.message_id for s in statuses}))
        }
        transitions: list[Transition] = []
        bills: list[tuple[str, datetime]] = []
        settled: set[int] = set()
        for status in statuses:
            row = rows.get(status.message_id)
            if row is None:
                log.info("rcs_status_for_unknown_message", message_id=status.message_id)
                continue
            state = row["state"]
            if state == State.RCS_SENT and row["id"] not in settled:
                settled.add(row["id"])
                transitions.append(self._status_transition(row, status, now, bills, effects))
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
                await self._late_delivery(tx, row, status, now, bills)
            # Anything else is a repeat or a failure after the fact: nothing to do.
        await self._apply(tx, transitions, now)
        await self._bill(tx, bills, effects)
        return effects

    def _status_transition(
        self,
        row: Row,
        status: _Status,
        now: datetime,
        bills: list[tuple[str, datetime]],
        effects: _Effects,
    ) -> Transition:
        if status.status == "delivered":
            units = billing.rcs_units(row["rcs_sent_at"], status.at)
            if units:
                bills.append((row["account_id"], status.at))
            effects.delivery_s.append(max(0.0, (status.at - row["rcs_sent_at"]).total_seconds()))
            detail: dict[str, Any] = {
                "channel": "rcs",
                "status": status.reported_as,
                "platform_at": status.at.isoformat(),
            }
            if status.early:
                detail["early"] = True
            return Transition(
                row["id"],
                State.RCS_SENT,
                State.DELIVERED,
                "delivered",
                rcs_units=units,
                detail=detail,
            )
        failure = {"platform": status.error} if status.error else {}
        reason = RCS_DELIVERY_FAILED
        if status.error:
            reason = Reason(reason.code, f"{reason.text}: {status.error}")
        return self._not_by_rcs(
            row, State.RCS_SENT, "rcs_failed", reason, now, effects, detail=failure
        )

    async def _late_delivery(
        self,
        tx: Transaction,
        row: Row,
        status: _Status,
        now: datetime,
        bills: list[tuple[str, datetime]],
    ) -> None:
        sent_at = row["rcs_sent_at"] or status.at
        units = billing.rcs_units(sent_at, status.at)
        detail = {
            "status": status.reported_as,
            "platform_at": status.at.isoformat(),
            "billed": bool(units),
            "leg": row["leg"],
        }
        result = await tx.fetchrow(
            "rcs_record_late_delivery",
            row["id"],
            now,
            json.dumps(detail, ensure_ascii=False),
            units,
        )
        if result is not None and result["billed"]:
            bills.append((row["account_id"], status.at))
        if result is not None and result["logged"]:
            log.warning(
                "rcs_late_delivery",
                message_id=row["id"],
                state=row["state"],
                leg=row["leg"],
                billed=bool(units),
            )

    async def _store_inbound(self, event: InboundEvent, now: datetime) -> None:
        msisdn = _canonical(event.msisdn)
        named = _our_id(event.in_reply_to)
        raw: dict[str, Any] = {
            "msgId": event.message_id,
            "kind": event.kind,
            "inReplyTo": event.in_reply_to,
            "platform_at": event.at.isoformat() if event.at else None,
        }

        async def work(tx: Transaction) -> None:
            owner = await tx.fetchrow("rcs_reply_owner", named, msisdn)
            raw["owner_inferred"] = owner is not None and owner["id"] != named
            await tx.fetch(
                "rcs_insert_inbound",
                owner["account_id"] if owner else None,
                msisdn,
                self._config().rcs.bot_id or None,
                event.text,
                event.postback,
                owner["id"] if owner else None,
                now,
                json.dumps(raw, ensure_ascii=False),
            )

        await self._db.in_transaction(work)

    # -- shared --------------------------------------------------------------------

    async def _apply(
        self, tx: Transaction, transitions: Sequence[Transition], now: datetime
    ) -> list[Row]:
        changed = await tx.apply_transitions(transitions, now)
        hook = self._hooks.on_transitions if self._hooks is not None else None
        if changed and hook is not None:
            await hook(tx, changed, now)
        return changed

    async def _bill(
        self, tx: Transaction, bills: Iterable[tuple[str, datetime]], effects: _Effects
    ) -> None:
        """+Message units (§11) per account and JST month of the delivery."""
        per_month: dict[tuple[str, str], int] = defaultdict(int)
        for account_id, delivered_at in bills:
            per_month[(account_id, billing.billing_month(delivered_at))] += 1
        if not per_month:
            return
        await tx.execute(
            "add_billing",
            [a for a, _ in per_month],
            [m for _, m in per_month],
            ["rcs"] * len(per_month),
            list(per_month.values()),
        )
        for key, units in per_month.items():
            effects.billed += [key] * units

    def _observe(self, effects: _Effects) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        for cause in effects.fallbacks:
            metrics.fallbacks_total.labels(cause).inc()
        for outcome in effects.discards:
            metrics.discards_total.labels(outcome).inc()
        for account_id, month in effects.billed:
            metrics.billing_units_total.labels(account_id, "rcs", month).inc()
        for seconds in effects.delivery_s:
            metrics.rcs_delivery_seconds.observe(seconds)


def webhook_route(leg: RcsLeg, path: str = WEBHOOK_PATH) -> web.RouteDef:
    """The route for `ApiState.extra_routes` (the platform's webhook URL)."""
    return web.post(path, leg.handle_webhook)


def _to_state(
    message_id: int,
    from_state: State,
    to_state: State,
    event: str,
    reason: Reason,
    detail: dict[str, Any] | None = None,
) -> Transition:
    return Transition(
        message_id,
        from_state,
        to_state,
        event,
        reason_code=reason.code,
        reason_text=reason.text,
        detail=detail,
    )


def _status_of(event: MessageStatusEvent, now: datetime) -> _Status | None:
    """'sent' and 'cancelled' (the echo of our revoke) settle nothing."""
    message_id = _our_id(event.message_id)
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


def _our_id(msg_id: str | None) -> int | None:
    """Our msgIds are our message ids; anything else is not ours."""
    if msg_id is None or not msg_id.isdigit() or len(msg_id) > 18:
        return None
    return int(msg_id)


def _canonical(msisdn: str) -> str:
    try:
        return normalize_msisdn(msisdn, allow_m2m=True)
    except NumberError:
        return msisdn
