"""The +Message flow (DOMAIN §1, §8, §9, §11) as decisions.

Pure: the +Message leg asks the platform (capability, send, revoke) and
receives its statuses; these functions say what each answer means for the
message, as the checked Move the lifecycle writer applies.

    cannot go by +Message (restriction, not capable, capacity, bad content)
        rcs_then_sms -> the SMS leg at once (queued, leg sms, 'fallback')
        rcs          -> failed / skipped with the reason
    send accepted    -> rcs_sent; fallback_at = +fallback_after_s
                        (rcs_then_sms); expires_at = +expiry_s (rcs: the
                        platform retries for 72 h from the send)
    platform error   -> queued again after SEND_RETRY_S; once an
                        rcs_then_sms has waited fallback_after_s, rcs_sent
                        with the fallback due at once (a revoke first: an
                        earlier send whose answer was lost may be stored)
    send rejected    -> failed with the platform's reason
    delivered / displayed status -> delivered, 1 unit if within 72 h (§11)
    failed status    -> the SMS leg (rcs_then_sms) or failed
    fallback due: revoked / not found -> the SMS leg (not delivered in time)
    expiry due: discard answered      -> expired (or delivered, if the
                                         platform says it already was)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from carrierd.domain import billing, reasons
from carrierd.domain.lifecycle import Event, Move
from carrierd.domain.reasons import Reason
from carrierd.domain.states import State

RCS_CARRIERS: frozenset[str] = frozenset({"docomo", "au", "softbank"})
# After a platform error on a capability check or send (the client has
# already retried a few times within the request): try again this much later.
SEND_RETRY_S = 30.0

RCS_CAPACITY_EXCEEDED = Reason(
    "rcs_capacity_exceeded", "the +Message platform had no capacity for the message"
)
RCS_INVALID_CONTENT = Reason("rcs_invalid_content", "the stored +Message content could not be read")
RCS_DELIVERY_FAILED = Reason("rcs_failed", "the +Message platform reported the delivery failed")
RCS_NOT_CONFIGURED = Reason("rcs_not_configured", "+Message is not configured on this daemon")
RCS_NO_OFFICIAL_ACCOUNT = Reason(
    "rcs_no_official_account", "the account has no +Message official account (bot)"
)

FallbackCause = Literal[
    "not_capable",
    "capacity_exceeded",
    "carrier_restriction",
    "invalid_content",
    "not_delivered_in_time",
    "rcs_failed",
    "rcs_not_configured",
    "no_official_account",
]
SendKind = Literal["accepted", "capacity_exceeded", "not_capable", "error", "rejected"]


@dataclass(frozen=True, slots=True)
class RcsFacts:
    """What the +Message decisions read of a message."""

    message_id: int
    channel: str  # rcs or rcs_then_sms
    accepted_at: datetime
    send_at: datetime | None
    rcs_sent_at: datetime | None = None


def rcs_possible(carrier_named: str | None, carriers_allowed: Collection[str] | None) -> bool:
    """+Message exists on docomo, au and SoftBank only (§1, §4): a send
    restricted to other carriers cannot use it. Within those three the
    platform decides by capability; it does not tell us the carrier."""
    if carrier_named is not None and carrier_named not in RCS_CARRIERS:
        return False
    return carriers_allowed is None or any(c in RCS_CARRIERS for c in carriers_allowed)


def not_by_rcs(
    facts: RcsFacts,
    src: State,
    cause: FallbackCause,
    reason: Reason,
    at: datetime,
    *,
    final: State = State.FAILED,
    detail: Mapping[str, Any] | None = None,
) -> Move:
    """+Message cannot take this message: the SMS leg at once for
    rcs_then_sms (§8), else `final` with the reason."""
    if facts.channel == "rcs_then_sms":
        return Move(
            facts.message_id,
            src,
            State.QUEUED,
            Event.FALLBACK,
            not_before=at,
            leg="sms",
            detail={"cause": cause, **(detail or {})},
        )
    return Move(facts.message_id, src, final, Event(final.value), reason=reason, detail=detail)


def after_platform_error(
    facts: RcsFacts,
    now: datetime,
    *,
    during: str,
    error: str | None,
    platform: str | None,
    fallback_after_s: float,
) -> Move:
    """Try again shortly. rcs_then_sms stops trying once it has waited as
    long as the fallback delay (§8), but through rcs_sent with the fallback
    due at once: an earlier send whose answer was lost may be stored at the
    platform, and only a revoke can tell before the SMS."""
    info = {"during": during, "error": error, "platform": platform}
    started = max(facts.accepted_at, facts.send_at or facts.accepted_at)
    waited_s = (now - started).total_seconds()
    if facts.channel == "rcs_then_sms" and waited_s >= fallback_after_s:
        return Move(
            facts.message_id,
            State.DISPATCHING,
            State.RCS_SENT,
            Event.RCS_SEND_UNKNOWN,
            fallback_at=now,
            detail=info,
        )
    return Move(
        facts.message_id,
        State.DISPATCHING,
        State.QUEUED,
        Event.RCS_RETRY,
        not_before=now + timedelta(seconds=SEND_RETRY_S),
        detail=info,
    )


def after_send(
    facts: RcsFacts,
    kind: SendKind,
    at: datetime,
    *,
    fallback_after_s: float,
    expiry_s: float,
    attempts: int = 1,
    already_existed: bool = False,
    error: str | None = None,
    http_status: int | None = None,
    platform: str | None = None,
    bot_id: str | None = None,
) -> Move:
    """What the platform's answer to a send means. `bot_id`: the official
    account it went out under, kept in the history."""
    if kind == "accepted":
        detail: dict[str, Any] = {"attempts": attempts}
        if bot_id is not None:
            detail["bot"] = bot_id
        if already_existed:
            detail["already_existed"] = True
        relay = facts.channel == "rcs_then_sms"
        return Move(
            facts.message_id,
            State.DISPATCHING,
            State.RCS_SENT,
            Event.RCS_SENT,
            fallback_at=at + timedelta(seconds=fallback_after_s) if relay else None,
            # channel rcs: the platform keeps trying for expiry_s after the
            # send (§9), so the discard timer counts from here, not intake.
            expires_at=None if relay else at + timedelta(seconds=expiry_s),
            detail=detail,
        )
    answer = {"platform": platform, "http_status": http_status}
    if kind == "capacity_exceeded":
        return not_by_rcs(
            facts,
            State.DISPATCHING,
            "capacity_exceeded",
            RCS_CAPACITY_EXCEEDED,
            at,
            detail={"during": "send", **answer},
        )
    if kind == "not_capable":
        return not_by_rcs(
            facts,
            State.DISPATCHING,
            "not_capable",
            reasons.RCS_NOT_CAPABLE,
            at,
            detail={"during": "send", **answer},
        )
    if kind == "error":
        return after_platform_error(
            facts,
            at,
            during="send",
            error=error,
            platform=platform,
            fallback_after_s=fallback_after_s,
        )
    reason = Reason(
        f"rcs_{error or 'rejected'}",
        f"the +Message platform refused the message (HTTP {http_status})"
        + (f": {platform}" if platform else ""),
    )
    return Move(facts.message_id, State.DISPATCHING, State.FAILED, Event.FAILED, reason=reason)


def after_status(
    facts: RcsFacts,
    status: Literal["delivered", "failed"],
    at: datetime,
    now: datetime,
    *,
    reported_as: str,
    error: str | None = None,
    early: bool = False,
) -> Move:
    """A platform status for an rcs_sent message. 'displayed' counts as
    delivered; 1 unit if delivered within 72 h of the send (§11)."""
    sent_at = facts.rcs_sent_at or at
    if status == "delivered":
        units = billing.rcs_units(sent_at, at)
        detail: dict[str, Any] = {
            "channel": "rcs",
            "status": reported_as,
            "platform_at": at.isoformat(),
        }
        if early:
            detail["early"] = True
        return Move(
            facts.message_id,
            State.RCS_SENT,
            State.DELIVERED,
            Event.DELIVERED,
            detail=detail,
            rcs_units=units,
            billed_at=at if units else None,
        )
    reason = RCS_DELIVERY_FAILED
    if error:
        reason = Reason(reason.code, f"{reason.text}: {error}")
    return not_by_rcs(
        facts,
        State.RCS_SENT,
        "rcs_failed",
        reason,
        now,
        detail={"platform": error} if error else {},
    )


def assumed_delivered(facts: RcsFacts, delivered_at: datetime, detail: Mapping[str, Any]) -> Move:
    """The platform said it delivered (a revoke or discard answered
    "already delivered") and the delivered webhook never came: the sender
    gets the truth, billed like a delivery."""
    units = billing.rcs_units(facts.rcs_sent_at or delivered_at, delivered_at)
    return Move(
        facts.message_id,
        State.RCS_SENT,
        State.DELIVERED,
        Event.DELIVERED,
        detail={"channel": "rcs", "assumed": True, **detail},
        rcs_units=units,
        billed_at=delivered_at if units else None,
    )


def not_delivered_in_time(facts: RcsFacts, at: datetime, revoke: Mapping[str, Any]) -> Move:
    """The fallback delay passed and the revoke took the +Message back."""
    return Move(
        facts.message_id,
        State.RCS_SENT,
        State.QUEUED,
        Event.FALLBACK,
        not_before=at,
        leg="sms",
        detail={"cause": "not_delivered_in_time", "revoke": revoke},
    )


def discarded(facts: RcsFacts, discard: Mapping[str, Any]) -> Move:
    """72 h passed without delivery; the discard request was sent (§9)."""
    return Move(
        facts.message_id,
        State.RCS_SENT,
        State.EXPIRED,
        Event.EXPIRED,
        reason=reasons.RCS_DISCARDED,
        detail={"discard": discard},
    )
