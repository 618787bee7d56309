"""What the engine and the SMS channel exchange: plain values, no I/O.

The dispatcher hands an `SmsRequest` to an `SmsGateway` (the SMPP pools
behind channels/sms.py) and gets one `PartOutcome` per part back; receipts
and mobile-originated messages come the other way through `SmsEvents`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from carrierd.domain.inbound import MoPdu

# accepted: submit_sm_resp OK; refused: submit_sm_resp with an error status;
# unknown: handed over but no response (timeout, disconnect): ambiguous;
# unsent: never left this process (no bind up, shutting down), or the SMSC
# answered that it took nothing for now (throttled).
PartResult = Literal["accepted", "refused", "unknown", "unsent"]
# Why an outcome is unknown: the response did not come in time, the bind
# dropped with the part in flight, the response could not be read.
UnknownCause = Literal["response_timeout", "bind_lost", "unusable_response"]


@dataclass(frozen=True)
class SmsRequest:
    message_id: int
    attempt: int
    account_id: str
    msisdn: str  # canonical +81 form
    source_addr: str
    encoding: Literal["ucs2", "gsm7"]
    parts: tuple[str, ...]
    expires_at: datetime
    # DOMAIN §6: the carrier's route (its bind pool) the account sends over.
    route: str = "premium"
    # The parts (1-based) to submit now, in order; empty: every part. Each
    # still goes as part n of len(parts), with the attempt's concatenation
    # reference: part 1 alone first to a carrier not yet confirmed, the
    # others once it accepted (engine/sms_leg.py).
    part_numbers: tuple[int, ...] = ()

    def numbers(self) -> tuple[int, ...]:
        """The part numbers this request submits."""
        return self.part_numbers or tuple(range(1, len(self.parts) + 1))


@dataclass(frozen=True)
class PartOutcome:
    part_no: int  # 1-based
    result: PartResult
    smsc_message_id: str | None = None  # normalised per carrier config
    command_status: int | None = None
    bind_id: str | None = None
    unknown_cause: UnknownCause | None = None  # unknown only
    # unknown by response timeout only: the outcome the SMSC's late answer
    # reveals (never unknown again), cancelled when none will come.
    late: asyncio.Future[PartOutcome] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Receipt:
    carrier: str
    smsc_message_id: str  # normalised per carrier config
    stat: str  # DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, UNKNOWN, ACCEPTD, ENROUTE
    err: str | None
    received_at: datetime
    # A receipt may carry its id twice (receipted_message_id TLV and "id:"
    # text), each in its own base; when the two normalise differently, the
    # second one. Either may be the one the part was accepted with.
    alt_smsc_message_id: str | None = None
    # What else the receipt says about its part, for a receipt whose id no
    # part carries (its submit_sm_resp was lost): the handset's address as
    # the SMSC wrote it (the receipt's source_addr), the Appendix B
    # "submit date" and "text" as written. Read only then, and not part of
    # what makes two receipts the same.
    recipient_addr: str | None = field(default=None, compare=False)
    submit_date: str | None = field(default=None, compare=False)
    text_start: str | None = field(default=None, compare=False)


# A mobile-originated deliver_sm as it came: the channel reads no MO text
# (engine/inbound.py owns replies; domain/inbound.py reads them).
InboundSms = MoPdu


FINAL_RECEIPT_STATS = frozenset({"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "UNKNOWN"})


class SmsGateway(Protocol):
    def carriers(self) -> Collection[str]:
        """Carriers with a configured pool."""
        ...

    def is_available(self, carrier: str, route: str = "premium") -> bool:
        """At least one bind of the carrier's route takes submits (bound, or
        throttled to the pace its SMSC accepts)."""
        ...

    async def submit(self, carrier: str, request: SmsRequest) -> list[PartOutcome]:
        """Hand the request's parts (`request.numbers()`) to the carrier over
        ``request.route``; one outcome per part, in order."""
        ...

    def receipts_backlogged(self) -> bool:
        """A carrier holds receipts back because we have not answered the
        ones it sent: they wait on our database, and new submits would only
        add to both queues."""
        ...


class SmsEvents(Protocol):
    """Where the SMS channel delivers what carriers send us. A returned
    awaitable completes once the event is durable; the carrier's PDU is
    acknowledged only then."""

    def receipt(self, receipt: Receipt) -> Awaitable[None] | None: ...

    def inbound(self, message: InboundSms) -> Awaitable[None] | None: ...
