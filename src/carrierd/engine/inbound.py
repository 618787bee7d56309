"""Inbound messages: one owner for what recipients send us.

SMS MO (through the write-behind, acknowledged once durable) and +Message
replies and taps (through the webhook) are stored here, each with the
account it belongs to:
  - SMS: the account whose sender or inbound address it was sent to;
  - +Message: the account whose official account (bot) it came to. Among
    accounts sharing the [rcs] bot, the account of the message it answers
    (inReplyTo, our msgId), else of the latest +Message that bot sent to
    the number. A reply never names a message of another bot's account.

A +Message webhook is applied once per body (`record_webhook_event`, in the
applying transaction): a reply without a platform msgId has nothing else
to tell its replay from a new reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from carrierd.channels.rcs import InboundEvent
from carrierd.channels.types import InboundSms
from carrierd.config import AccountConfig, RcsBotConfig
from carrierd.domain.numbers import NumberError, normalize_msisdn
from carrierd.store.db import Transaction


def sms_owners(accounts: Mapping[str, AccountConfig]) -> dict[str, str]:
    """Address an SMS was sent to -> the account it belongs to."""
    return {
        address: account.account_id
        for account in accounts.values()
        for address in (*account.inbound_addresses, *account.senders.values())
    }


async def record_webhook_event(tx: Transaction, event_key: bytes, now: datetime) -> bool:
    """True the first time `event_key` is recorded; False for a replay, whose
    transaction must then change nothing."""
    return bool(await tx.fetchval("record_webhook_event", event_key, now))


class Inbound:
    def __init__(self, *, accounts: Callable[[], Mapping[str, AccountConfig]]) -> None:
        self._accounts = accounts

    async def store_sms(self, tx: Transaction, inbound: Sequence[InboundSms]) -> None:
        owners = sms_owners(self._accounts())
        await tx.execute(
            "insert_inbound_sms",
            [owners.get(m.to_address) for m in inbound],
            [m.carrier for m in inbound],
            [m.msisdn for m in inbound],
            [m.to_address for m in inbound],
            [m.text for m in inbound],
            [m.received_at for m in inbound],
        )

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
        msisdn = _canonical(event.msisdn)
        named = our_message_id(event.in_reply_to)
        raw: dict[str, Any] = {
            "msgId": event.message_id,
            "kind": event.kind,
            "inReplyTo": event.in_reply_to,
            "platform_at": event.at.isoformat() if event.at else None,
        }
        owners = sorted(bot.accounts)
        answered = await tx.fetchrow("rcs_reply_owner", named, msisdn, owners)
        raw["owner_inferred"] = answered is not None and answered["id"] != named
        # The bot tells the account even when no message of it fits.
        account_id = answered["account_id"] if answered else None
        if account_id is None and len(owners) == 1:
            account_id = owners[0]
        stored = await tx.fetch(
            "rcs_insert_inbound",
            account_id,
            msisdn,
            bot.bot_id,
            event.text,
            event.postback,
            answered["id"] if answered else None,
            now,
            json.dumps(raw, ensure_ascii=False),
        )
        return bool(stored)


def our_message_id(msg_id: str | None) -> int | None:
    """Our +Message msgIds are our message ids; anything else is not ours."""
    if msg_id is None or not msg_id.isdigit() or len(msg_id) > 18:
        return None
    return int(msg_id)


def _canonical(msisdn: str) -> str:
    try:
        return normalize_msisdn(msisdn, allow_m2m=True)
    except NumberError:
        return msisdn
