"""Recipient gates: decisions taken once per message before its legs split.

Opt-out (DOMAIN §12). A send that asks to skip opted-out numbers reads its
account's list once:
- an immediate send, as the list is when the send is registered;
- a scheduled send, as the list is 15 minutes before `send_at`, or at
  registration when that is less than 15 minutes away.
The verdict is recorded on the message, and the dispatcher skips on it.
A scheduled send's read is a timer row (`optout_check_at`), which reads
the list counting only numbers added by that instant: a number added
exactly 15 minutes before `send_at` is on the list the send obeys, one
added later is not, even when the settler runs the check late. A SQL-feed
row, whose number is known only once a dispatcher validates it, reads the
list when claimed, counting the numbers added by the same instant
(`optout_list_as_of`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

# §12: how long before a scheduled send its opt-out list is read.
OPTOUT_LIST_LEAD = timedelta(minutes=15)


def optout_list_read_at(send_at: datetime | None, now: datetime) -> datetime | None:
    """When a send registered at `now` reads its opt-out list: None for at
    once (registration), else the instant its check is due. A send exactly
    15 minutes away reads it at registration: that is 15 minutes before."""
    if send_at is None:
        return None
    due = send_at - OPTOUT_LIST_LEAD
    return due if due > now else None


def optout_list_as_of(send_at: datetime | None, registered_at: datetime) -> datetime:
    """The instant whose list a send registered at `registered_at` obeys:
    its registration, or 15 minutes before `send_at` when that is later.
    A SQL-feed row is read when claimed, counting only the numbers added by
    this instant, as if it had been read then."""
    return optout_list_read_at(send_at, registered_at) or registered_at


def wants_optout_check(skip_opted_out: bool | None, account_default: bool) -> bool:
    """Whether a send skips opted-out numbers: its own choice, else (a
    SQL-feed row that did not say) its account's default."""
    return account_default if skip_opted_out is None else skip_opted_out


class GateVerdict(StrEnum):
    PASS = "pass"  # on to the legs
    SKIP = "skip"  # ends skipped; never sent, not billed
    CHECK = "check"  # the list was not read yet: read it now, then decide


def optout_gate(
    skip_opted_out: bool | None, account_default: bool, opted_out: bool | None
) -> GateVerdict:
    """A claimed message's opt-out gate, from its recorded verdict
    (`opted_out`: None when the list was not read yet, as for SQL-feed rows,
    which are checked when claimed, or a check whose timer has not run)."""
    if not wants_optout_check(skip_opted_out, account_default):
        return GateVerdict.PASS
    if opted_out is None:
        return GateVerdict.CHECK
    return GateVerdict.SKIP if opted_out else GateVerdict.PASS
