"""Replies: the one owner of what recipients send us.

Every reply, SMS MO (through the write-behind, its deliver_sm acknowledged
only once stored) and +Message replies and taps (through the webhook), is
stored by `Inbound.record`, in the transaction of its caller:

1. the account it belongs to, and the message it answers: among the
   accounts it may be for (an SMS: those whose inbound address or sender it
   was sent to; a +Message: those of the official account (bot) it came
   to), the message it names (a +Message inReplyTo), else the account's
   last message to the number sent within `inbound.answer_window_s`
   (SMS accepted by an SMSC, or +Message sent). With no such message, the
   only candidate account owns it; with several, none does;
2. the row in inbound_messages, once: a +Message by its platform msgId (and
   the webhook body's key), an SMS by the key of its deliver_sm's bytes
   (`inbound_sms_seen`, within `inbound.sms_duplicate_window_s`: a deliver_sm
   carries no id, and one whose acknowledgement was lost comes again);
3. an opt-out keyword (the account's `keywords`): the number goes on the
   account's opt-out list (optout_list.add_optouts, source keyword) and,
   the first time only, the account's `keyword_reply` is registered as an
   ordinary outbound message (intake's validation, messages table: sent,
   billed and tracked like any other);
4. the hooks (`Inbound.hooks`, `InboundHook`): later features (auto-replies,
   survey tallies) act on a new reply there, in the same transaction;
5. the push to the account's `inbound_callback_url` (inbound_callbacks,
   sent by ops/callbacks.py's CallbackSender, in order per number).

Concatenated SMS are reassembled in PostgreSQL (inbound_sms_reassembly and
inbound_sms_parts): a part is durable before its deliver_sm is answered, the
parts may come on any bind of any daemon, in any order, twice; the flush
that holds the message's row with every part present stores the reply. A
message still missing parts `inbound.reassembly_timeout_s` after its first
part is stored by the settle pass (`settle_due`) as what arrived, marked
incomplete. Text is decoded by domain/inbound.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import structlog

from carrierd.channels.rcs import InboundEvent
from carrierd.config import AccountConfig, Config, RcsBotConfig
from carrierd.domain.inbound import (
    DecodedText,
    InboundKind,
    MoPdu,
    MoSegment,
    PartOctets,
    answer_window_start,
    assemble,
    candidate_accounts,
    canonical_sender,
    decode_mo,
    inbound_document,
    keyword_confirmation,
    matched_keyword,
    owning_account,
    read_mo,
    reassembly_deadline,
)
from carrierd.intake import RequestShapeError, validate_batch
from carrierd.optout_list import OptOutCapExceeded, OptOutSource, add_optouts
from carrierd.store.db import Database, Row, Transaction

log = structlog.get_logger("carrierd.engine.inbound")

_CANONICAL_MOBILE = re.compile(r"\+81[1-9][0-9]{9}")


@dataclass(frozen=True)
class NewInbound:
    """A reply to store, as its channel read it."""

    channel: Literal["sms", "rcs"]
    candidates: tuple[str, ...]  # accounts it may be for
    msisdn: str
    to_address: str  # the SMS address, or the bot id
    received_at: datetime
    text: str | None
    carrier: str | None = None
    postback: str | None = None
    kind: InboundKind = "text"
    named_message_id: int | None = None  # the message it says it answers
    raw: Mapping[str, Any] = field(default_factory=dict)
    incomplete: bool = False
    parts_expected: int | None = None
    parts_received: int | None = None
    data_coding: int | None = None
    text_undecodable: bool = False
    raw_hex: str | None = None


@dataclass(frozen=True)
class StoredInbound:
    """A reply just stored, as the hooks see it."""

    id: int
    account: AccountConfig | None  # None: no account could be told
    row: Row  # the inbound_messages row (inbound_get)
    # The opt-out keyword it matched, and whether that put the number on
    # the list now (False: it was listed before).
    keyword: str | None
    newly_opted_out: bool


class InboundHook(Protocol):
    """Called for every new reply, inside the transaction that stores it
    (a replay of the same reply never reaches it): what it writes commits
    or rolls back with the reply. Auto-replies and survey tallies go here."""

    def __call__(
        self, tx: Transaction, stored: StoredInbound, now: datetime
    ) -> Awaitable[None]: ...


async def record_webhook_event(tx: Transaction, event_key: bytes, now: datetime) -> bool:
    """True the first time `event_key` is recorded; False for a replay, whose
    transaction must then change nothing."""
    return bool(await tx.fetchval("record_webhook_event", event_key, now))


class Inbound:
    def __init__(
        self,
        db: Database,
        *,
        config: Callable[[], Config],
        hooks: Sequence[InboundHook] = (),
    ) -> None:
        self._db = db
        self._config = config
        self.hooks: list[InboundHook] = list(hooks)

    # -- SMS -----------------------------------------------------------------------

    async def store_sms(self, tx: Transaction, pdus: Sequence[MoPdu], now: datetime) -> int:
        """Store MO deliver_sms (one flush of the write-behind); returns the
        replies stored (a part that completes nothing stores none)."""
        if not pdus:
            return 0
        config = self._config()
        segments = [read_mo(pdu) for pdu in pdus]
        window_start = answer_window_start(now, config.inbound.sms_duplicate_window_s)
        # Sorted: concurrent flushes take the keys' row locks in one order.
        keys = sorted({s.mo_key for s in segments})
        fresh = {
            bytes(r["mo_key"])
            for r in await tx.fetch("inbound_sms_first_seen", keys, now, window_start)
        }
        new: list[tuple[int, NewInbound]] = []
        groups: dict[tuple[str, str, str, int, int], list[tuple[int, MoSegment]]] = {}
        for index, segment in enumerate(segments):
            if segment.mo_key not in fresh:
                log.info(
                    "mo_duplicate", carrier=segment.carrier, msisdn=segment.msisdn, index=index
                )
                continue
            fresh.discard(segment.mo_key)  # the same bytes twice in one flush
            concat = segment.concat
            if concat is None:
                decoded = decode_mo(
                    [PartOctets(segment.data_coding, segment.udh_octets, segment.payload)],
                    self._alphabet(config, segment.carrier),
                )
                new.append((index, self._sms(config, segment, decoded)))
                continue
            key = (segment.carrier, segment.msisdn, segment.to_address, concat.reference)
            groups.setdefault((*key, concat.total), []).append((index, segment))
        for group_key in sorted(groups):
            completed = await self._add_parts(tx, group_key, groups[group_key], config, now)
            if completed is not None:
                new.append(completed)
        stored = 0
        for _, reply in sorted(new, key=lambda item: item[0]):
            if await self.record(tx, reply, now) is not None:
                stored += 1
        return stored

    async def _add_parts(
        self,
        tx: Transaction,
        group_key: tuple[str, str, str, int, int],
        parts: Sequence[tuple[int, MoSegment]],
        config: Config,
        now: datetime,
    ) -> tuple[int, NewInbound] | None:
        first_at = min(segment.received_at for _, segment in parts)
        deadline = reassembly_deadline(first_at, config.inbound.reassembly_timeout_s)
        for _, segment in parts:
            assert segment.concat is not None
            await tx.execute(
                "inbound_sms_add_part",
                *group_key,
                segment.concat.seq,
                segment.data_coding,
                segment.udh_octets,
                segment.payload,
                segment.received_at,
                deadline,
            )
        # Whoever holds the row sees every part committed before; the last
        # part's flush finds them all.
        opened = await tx.fetchrow("inbound_sms_lock_reassembly", *group_key)
        if opened is None:
            return None  # closed meanwhile by a settle pass: these parts went with it
        reply = await self._assembled(tx, group_key, config, now, only_complete=True)
        if reply is None:
            return None
        return max(index for index, _ in parts), reply

    async def _assembled(
        self,
        tx: Transaction,
        group_key: tuple[str, str, str, int, int],
        config: Config,
        now: datetime,
        *,
        only_complete: bool,
    ) -> NewInbound | None:
        carrier, msisdn, to_address, reference, total = group_key
        rows = await tx.fetch("inbound_sms_parts_of", *group_key)
        octets = {
            int(r["seq"]): PartOctets(int(r["data_coding"]), int(r["udh_octets"]), r["payload"])
            for r in rows
        }
        assembled = assemble(total, octets)
        if only_complete and not assembled.complete:
            return None
        await tx.execute("inbound_sms_close_reassembly", *group_key)
        decoded = decode_mo(assembled.parts, self._alphabet(config, carrier))
        # An incomplete message is received when it is given up on.
        received_at = max((r["received_at"] for r in rows), default=now)
        return NewInbound(
            channel="sms",
            candidates=self._sms_candidates(config, to_address),
            msisdn=msisdn,
            to_address=to_address,
            received_at=received_at if assembled.complete else now,
            text=decoded.text,
            carrier=carrier,
            raw={"concat_reference": reference, "parts": sorted(octets)},
            incomplete=not assembled.complete,
            parts_expected=assembled.expected,
            parts_received=assembled.received,
            data_coding=assembled.parts[0].data_coding if assembled.parts else None,
            text_undecodable=decoded.undecodable,
            raw_hex=decoded.raw_hex,
        )

    def _sms(self, config: Config, segment: MoSegment, decoded: DecodedText) -> NewInbound:
        return NewInbound(
            channel="sms",
            candidates=self._sms_candidates(config, segment.to_address),
            msisdn=segment.msisdn,
            to_address=segment.to_address,
            received_at=segment.received_at,
            text=decoded.text,
            carrier=segment.carrier,
            data_coding=segment.data_coding,
            text_undecodable=decoded.undecodable,
            raw_hex=decoded.raw_hex,
        )

    @staticmethod
    def _sms_candidates(config: Config, to_address: str) -> tuple[str, ...]:
        return candidate_accounts(
            to_address,
            (
                (a.account_id, (*a.inbound_addresses, *a.senders.values()))
                for a in config.accounts.values()
            ),
        )

    @staticmethod
    def _alphabet(config: Config, carrier: str) -> Any:
        carrier_config = config.carriers.get(carrier)
        return carrier_config.mo_default_alphabet if carrier_config is not None else "gsm7"

    async def settle_due(self, now: datetime, limit: int) -> int:
        """The settle pass's share: concatenated MO whose parts did not all
        come in time, stored as what arrived (incomplete); old duplicate
        keys purged. Returns the replies stored."""
        config = self._config()

        async def overdue(tx: Transaction) -> int:
            claimed = await tx.fetch("inbound_sms_claim_overdue", now, limit)
            stored = 0
            for row in claimed:
                group_key = (
                    row["carrier"],
                    row["msisdn"],
                    row["to_address"],
                    int(row["reference"]),
                    int(row["total"]),
                )
                reply = await self._assembled(tx, group_key, config, now, only_complete=False)
                if reply is not None and await self.record(tx, reply, now) is not None:
                    stored += 1
            return stored

        stored = await self._db.in_transaction(overdue)
        await self._db.execute(
            "inbound_sms_purge_seen",
            answer_window_start(now, config.inbound.sms_duplicate_window_s),
            limit,
        )
        return stored

    # -- +Message ------------------------------------------------------------------

    async def store_rcs(
        self,
        tx: Transaction,
        event: InboundEvent,
        bot: RcsBotConfig,
        now: datetime,
        event_key: bytes | None = None,
    ) -> bool:
        """A +Message reply or tap to `bot`; a repeated webhook (same
        `event_key`, or the same platform msgId) stores nothing and returns
        False."""
        if event_key is not None and not await record_webhook_event(tx, event_key, now):
            return False
        reply = NewInbound(
            channel="rcs",
            candidates=tuple(sorted(bot.accounts)),
            msisdn=canonical_sender(event.msisdn),
            to_address=bot.bot_id,
            received_at=now,
            text=event.text,
            postback=event.postback,
            kind=event.kind,
            named_message_id=our_message_id(event.in_reply_to),
            raw={
                "msgId": event.message_id,
                "kind": event.kind,
                "inReplyTo": event.in_reply_to,
                "platform_at": event.at.isoformat() if event.at else None,
            },
        )
        return await self.record(tx, reply, now) is not None

    # -- the one way a reply is stored ---------------------------------------------

    async def record(
        self, tx: Transaction, reply: NewInbound, now: datetime
    ) -> StoredInbound | None:
        """Store one reply with its effects (module docstring); None when it
        was stored before (a +Message msgId seen again)."""
        config = self._config()
        window_start = answer_window_start(now, config.inbound.answer_window_s)
        answered = await tx.fetchrow(
            "inbound_answered",
            reply.named_message_id,
            reply.msisdn,
            list(reply.candidates),
            window_start,
        )
        account_id = owning_account(answered["account_id"] if answered else None, reply.candidates)
        raw = dict(reply.raw)
        if reply.named_message_id is not None:
            raw["owner_inferred"] = answered is None or answered["id"] != reply.named_message_id
        inserted = await tx.fetchrow(
            "inbound_insert",
            account_id,
            reply.channel,
            reply.carrier,
            reply.msisdn,
            reply.to_address,
            reply.text,
            reply.postback,
            answered["id"] if answered else None,
            reply.received_at,
            json.dumps(raw, ensure_ascii=False),
            reply.kind,
            reply.incomplete,
            reply.parts_expected,
            reply.parts_received,
            reply.data_coding,
            reply.text_undecodable,
            reply.raw_hex,
        )
        if inserted is None:
            return None
        inbound_id = int(inserted["id"])
        account = config.accounts.get(account_id) if account_id is not None else None
        keyword, newly = None, False
        if account is not None:
            keyword, newly = await self._keyword(tx, inbound_id, account, reply, config, now)
        row = {**inserted, "keyword": keyword}
        stored = StoredInbound(inbound_id, account, row, keyword, newly)
        for hook in self.hooks:
            await hook(tx, stored, now)
        if account is not None and account.inbound_callback_url:
            payload = {"type": "inbound", "account_id": account.account_id, **inbound_document(row)}
            await tx.execute(
                "inbound_enqueue_push",
                inbound_id,
                account.account_id,
                reply.msisdn,
                account.inbound_callback_url,
                json.dumps(payload, ensure_ascii=False),
                now,
            )
        return stored

    async def _keyword(
        self,
        tx: Transaction,
        inbound_id: int,
        account: AccountConfig,
        reply: NewInbound,
        config: Config,
        now: datetime,
    ) -> tuple[str | None, bool]:
        keyword = matched_keyword((reply.text, reply.postback), account.keywords)
        if keyword is None:
            return None, False
        await tx.execute("inbound_note_keyword", inbound_id, keyword)
        if not _CANONICAL_MOBILE.fullmatch(reply.msisdn):
            log.warning("keyword_from_unknown_number", inbound_id=inbound_id, msisdn=reply.msisdn)
            return keyword, False
        try:
            added = await add_optouts(
                tx,
                account.account_id,
                [reply.msisdn],
                OptOutSource.KEYWORD,
                now,
                account.optout_cap,
            )
        except OptOutCapExceeded as exc:
            log.error("keyword_optout_refused", account=account.account_id, reason=str(exc))
            return keyword, False
        newly = added.added > 0
        confirmation = keyword_confirmation(newly, account.keyword_reply)
        if confirmation is not None:
            await self._confirm(tx, inbound_id, account, reply, confirmation, config, now)
        return keyword, newly

    async def _confirm(
        self,
        tx: Transaction,
        inbound_id: int,
        account: AccountConfig,
        reply: NewInbound,
        text: str,
        config: Config,
        now: datetime,
    ) -> None:
        """The keyword's confirmation, as intake would take it from the
        account: validated the same way, a message like any other. Answered
        on the channel the keyword came on (+Message only while the account
        has an official account)."""
        item: dict[str, Any] = {
            "to": reply.msisdn,
            "sms": {"text": text},
            "client_ref": f"keyword-reply:{inbound_id}",
        }
        if reply.channel == "rcs" and config.rcs_bot_of(account.account_id) is not None:
            item = {**item, "channel": "rcs", "rcs": {"text": text}}
            del item["sms"]
        # The one message a number just listed must still get (an account
        # may skip opted-out numbers by default).
        item["skip_opted_out"] = False
        message_id, _ = await register_reply(self._db, tx, account, item, config, now, "keyword")
        log.info(
            "keyword_reply_queued",
            account=account.account_id,
            inbound_id=inbound_id,
            message_id=message_id,
        )


def our_message_id(msg_id: str | None) -> int | None:
    """Our +Message msgIds are our message ids; anything else is not ours."""
    if msg_id is None or not msg_id.isdigit() or len(msg_id) > 18:
        return None
    return int(msg_id)


async def register_reply(
    db: Database,
    tx: Transaction,
    account: AccountConfig,
    item: dict[str, Any],
    config: Config,
    now: datetime,
    what: str,
) -> tuple[int | None, int | None]:
    """Register one message answering a reply (a keyword's confirmation, an
    auto-reply) in the transaction that stores the reply, validated as intake
    takes an item from the account. Returns (the new message's id, the id of
    one its client_ref registered before); both None when the item is
    invalid, which is logged as `<what>_reply_invalid` (a configuration
    error: the reply itself is stored all the same)."""
    try:
        batch = validate_batch(
            {"messages": [item]},
            account,
            now,
            max_items=1,
            expiry_s=config.engine.message_expiry_s,
        )
    except RequestShapeError as exc:
        log.error(f"{what}_reply_invalid", account=account.account_id, reason=str(exc))
        return None, None
    if batch.rejected:
        rejection = batch.rejected[0]
        log.error(
            f"{what}_reply_invalid",
            account=account.account_id,
            field=rejection.field,
            reason=rejection.reason,
        )
        return None, None
    conflicts: dict[int, int] = {}
    ids = await db.insert_messages(account.account_id, batch.rows, now, conflicts=conflicts, tx=tx)
    return ids.get(0), conflicts.get(0)
