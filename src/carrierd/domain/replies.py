"""Replies to a send (案件, DOMAIN §14): survey choices and auto-replies.

A send may declare `choices` (a two-way survey): codes of one or two Latin
letters (A, B, ... or AB) with labels, which the sender puts in the text.
A reply matches a code when its text, read as NFKC (so full-width Ａ is A),
trimmed and upper-cased, is the code; a +Message tap matches when its
postback is. The match is stored with the reply; the tally counts, per
recipient, the latest reply that matched a choice (a recipient who changes
their mind is counted once, for their last answer); every reply is kept,
matched or not.

An auto-reply (自動返信) is a content sent back when the recipient answers
within the send's reply validity: `reply_valid_s` from the answered
message's sending and/or `reply_valid_until`, both inclusive; for a tap on
a suggestion that has its own `reply_validity_s`, that one instead of
both; none = unlimited. It goes once per recipient or, with
`per_choice` contents, once per recipient and choice (a reply that matches
no choice gets the default content, once). "Once" is kept by the database:
the auto-reply is a message whose client_ref (`auto_reply_ref`) is unique
per account.

Pure: the caller passes the send's rules, the reply and the time.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

CHOICE_CODE = re.compile(r"[A-Z]{1,2}")
MAX_CHOICES = 50
MAX_CHOICE_LABEL = 100


@dataclass(frozen=True)
class Choice:
    code: str
    label: str


@dataclass(frozen=True)
class AutoReply:
    # A message item's content ({"sms": ..., "rcs": ...}): to any answer,
    # or to one that matches no choice when per_choice is given.
    default: Mapping[str, Any] | None
    per_choice: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ReplyRules:
    choices: tuple[Choice, ...] = ()
    auto_reply: AutoReply | None = None
    reply_valid_s: int | None = None
    reply_valid_until: datetime | None = None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.choices)


def normalized_answer(text: str) -> str:
    """What a reply's text is compared as: NFKC (full-width Ａ is A),
    whitespace trimmed (full-width space too), upper case."""
    return unicodedata.normalize("NFKC", text).strip().upper()


def match_choice(codes: Sequence[str], text: str | None, postback: str | None) -> str | None:
    """The choice code a reply answers, or None (unmatched)."""
    for candidate in (postback, text):
        if candidate is None:
            continue
        answer = normalized_answer(candidate)
        if answer in codes:
            return answer
    return None


def reply_deadline(
    rules: ReplyRules, sent_at: datetime, suggestion_validity_s: int | None = None
) -> datetime | None:
    """Until when an answer to a message sent at `sent_at` is within the
    send's reply validity; None: unlimited."""
    if suggestion_validity_s is not None:
        # The suggestion's own validity is the one the recipient was given.
        return sent_at + timedelta(seconds=suggestion_validity_s)
    valid_s = rules.reply_valid_s
    ends = [sent_at + timedelta(seconds=valid_s)] if valid_s is not None else []
    if rules.reply_valid_until is not None:
        ends.append(rules.reply_valid_until)
    return min(ends) if ends else None


@dataclass(frozen=True)
class AutoReplyDecision:
    client_ref: str
    content: Mapping[str, Any]


def auto_reply_ref(send_id: int, msisdn: str, choice: str | None) -> str:
    """The auto-reply message's client_ref: one per send, recipient (and
    choice), so a second answer (or the same one redelivered, or one racing
    it) inserts nothing."""
    base = f"auto-reply:{send_id}:{msisdn}"
    return base if choice is None else f"{base}:{choice}"


def auto_reply_for(
    rules: ReplyRules,
    *,
    send_id: int,
    msisdn: str,
    choice: str | None,
    sent_at: datetime,
    now: datetime,
    suggestion_validity_s: int | None = None,
) -> AutoReplyDecision | None:
    """The auto-reply an answer at `now` gets, or None (no auto-reply, or
    outside the reply validity)."""
    auto = rules.auto_reply
    if auto is None:
        return None
    deadline = reply_deadline(rules, sent_at, suggestion_validity_s)
    if deadline is not None and now > deadline:
        return None
    if choice is not None and choice in auto.per_choice:
        return AutoReplyDecision(auto_reply_ref(send_id, msisdn, choice), auto.per_choice[choice])
    if auto.default is None:
        return None
    return AutoReplyDecision(auto_reply_ref(send_id, msisdn, None), auto.default)


def suggestion_validity_s(rcs_content: object, postback: str | None) -> int | None:
    """The `reply_validity_s` of the suggestion (chip or card suggestion)
    in stored +Message content whose postback is `postback`."""
    if postback is None or not isinstance(rcs_content, Mapping):
        return None
    lists: list[object] = [rcs_content.get("chips")]
    card = rcs_content.get("card")
    if isinstance(card, Mapping):
        lists.append(card.get("suggestions"))
    carousel = rcs_content.get("carousel")
    if isinstance(carousel, Mapping) and isinstance(carousel.get("cards"), list):
        lists += [c.get("suggestions") for c in carousel["cards"] if isinstance(c, Mapping)]
    for suggestions in lists:
        if not isinstance(suggestions, list):
            continue
        for s in suggestions:
            if isinstance(s, Mapping) and s.get("postback") == postback:
                validity = s.get("reply_validity_s")
                return validity if isinstance(validity, int) else None
    return None


def reply_rules_of(spec: Mapping[str, Any]) -> ReplyRules:
    """The rules of a stored send spec (validated when it was posted),
    codes normalized."""
    choices = tuple(
        Choice(normalized_answer(str(c["code"])), str(c.get("label", "")))
        for c in spec.get("choices") or ()
    )
    raw = spec.get("auto_reply")
    auto = None
    if isinstance(raw, Mapping):
        per_choice = {
            normalized_answer(str(code)): _content(item)
            for code, item in (raw.get("per_choice") or {}).items()
        }
        default = _content(raw) if ("sms" in raw or "rcs" in raw) else None
        auto = AutoReply(default, per_choice)
    until = spec.get("reply_valid_until")
    return ReplyRules(
        choices=choices,
        auto_reply=auto,
        reply_valid_s=spec.get("reply_valid_s"),
        reply_valid_until=datetime.fromisoformat(until) if isinstance(until, str) else None,
    )


def _content(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in ("sms", "rcs") if raw.get(k) is not None}
