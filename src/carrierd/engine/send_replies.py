"""Replies to a send (DOMAIN §14): the inbound hook that records a survey
answer's choice and sends the auto-reply.

Runs inside the transaction that stores the reply (engine/inbound.py
`Inbound.hooks`), so the choice and the auto-reply commit with the reply or
not at all. The decisions are domain/replies.py's; this only reads the
send, writes the choice and queues the auto-reply as an ordinary message
(intake's validation, messages table). Once per recipient (and choice) is
the database's to keep: the auto-reply's client_ref is unique per account
(messages_client_ref), so a second answer, a redelivered one or one racing
it in another transaction inserts nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from carrierd.config import Config
from carrierd.domain.replies import (
    AutoReply,
    auto_reply_for,
    match_choice,
    reply_rules_of,
    suggestion_validity_s,
)
from carrierd.engine.inbound import StoredInbound, register_reply
from carrierd.store.db import Database, Transaction

log = structlog.get_logger("carrierd.engine.send_replies")


class SendReplies:
    """An `InboundHook`."""

    def __init__(self, db: Database, *, config: Callable[[], Config]) -> None:
        self._db = db
        self._config = config

    async def __call__(self, tx: Transaction, stored: StoredInbound, now: datetime) -> None:
        row = stored.row
        account = stored.account
        if row["send_id"] is None or row["in_reply_to"] is None or account is None:
            return
        context = await tx.fetchrow("send_reply_context", row["in_reply_to"])
        if context is None:
            return
        rules = reply_rules_of(context["spec"] or {})
        own = context["own"]
        if own is not None and rules.auto_reply is not None:
            # The recipient's own contents, their variables substituted.
            rules = replace(
                rules,
                auto_reply=AutoReply(
                    own.get(""), {code: c for code, c in own.items() if code != ""}
                ),
            )
        choice = match_choice(rules.codes, row["text"], row["postback"]) if rules.codes else None
        if choice is not None:
            await tx.execute("inbound_set_choice", stored.id, choice)
        if stored.keyword is not None or context["send_state"] == "cancelled":
            # An opt-out keyword is answered by its confirmation alone.
            return
        is_tap = row["kind"] != "text"
        decision = auto_reply_for(
            rules,
            send_id=int(context["send_id"]),
            msisdn=row["msisdn"],
            choice=choice,
            sent_at=context["sent_at"],
            now=now,
            suggestion_validity_s=suggestion_validity_s(context["rcs_content"], row["postback"])
            if is_tap
            else None,
        )
        if decision is None:
            return
        config = self._config()
        content = decision.content
        item: dict[str, Any] = {"to": row["msisdn"], "client_ref": decision.client_ref}
        if (
            row["channel"] == "rcs"
            and "rcs" in content
            and config.rcs_bot_of(account.account_id) is not None
        ):
            item.update(channel="rcs", rcs=content["rcs"])
        elif "sms" in content:
            item.update(channel="sms", sms=content["sms"])
        else:
            log.info("auto_reply_no_content_for_channel", inbound_id=stored.id)
            return
        # An opted-out number is not answered.
        item["skip_opted_out"] = True
        message_id, registered_before = await register_reply(
            self._db, tx, account, item, config, now, "auto"
        )
        if message_id is not None:
            await tx.execute("mark_auto_reply", message_id, int(context["send_id"]))
        log.info(
            "auto_reply",
            account=account.account_id,
            inbound_id=stored.id,
            client_ref=decision.client_ref,
            message_id=message_id or registered_before,
        )
