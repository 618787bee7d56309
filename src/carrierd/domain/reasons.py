"""Failure and outcome reasons (DOMAIN §10).

A Reason is what the delivery log and the status API show: a stable
snake_case `code` for machines and dashboards, and English `text` for
people. A carrier error that no mapping knows is kept raw in both, never
replaced by a blank or a generic "error".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


# Outcomes the engine decides itself.
WRONG_CARRIER = Reason("wrong_carrier", "recipient is not a subscriber of this carrier")
NO_CARRIER_LEFT = Reason(
    "no_carrier_left", "every carrier answered that the recipient is not its subscriber"
)
OUTCOME_UNKNOWN_AFTER_RESTART = Reason(
    "outcome_unknown_after_restart", "outcome unknown after restart"
)
RECEIPT_TIMEOUT = Reason("receipt_timeout", "no delivery receipt arrived before the timeout")
QUIET_WINDOW = Reason("quiet_window", "the resend would fall inside the quiet window")
RESENDS_EXHAUSTED = Reason("resends_exhausted", "delivery failed after every allowed resend")
NOT_IN_CARRIER_RESTRICTION = Reason(
    "not_in_carrier_restriction",
    "the recipient's carrier is not among the carriers chosen for this send",
)
OPTED_OUT = Reason("opted_out", "the recipient is on the account's opt-out list")
VALIDITY_EXPIRED = Reason("validity_expired", "the message's validity period ended before delivery")
CANCELLED_BY_SENDER = Reason("cancelled_by_sender", "cancelled by the sender")
REASSIGNED_NUMBER = Reason(
    "reassigned_number", "the number may have changed owner since the base date"
)
REASSIGNMENT_LOOKUP_FAILED = Reason(
    "reassignment_lookup_failed", "the reassigned-number check failed, so the message was not sent"
)
PARENT_NOT_DELIVERED = Reason(
    "parent_not_delivered", "a follow-up of a message that was not delivered is not sent"
)
RCS_NOT_CAPABLE = Reason("rcs_not_capable", "the handset cannot receive +Message")
RCS_NOT_DELIVERED_IN_TIME = Reason(
    "rcs_not_delivered_in_time", "+Message was not delivered within the fallback delay"
)
RCS_DISCARDED = Reason(
    "rcs_discarded", "+Message was not delivered within 72 hours and was discarded"
)

# SMPP 3.4 section 5.1.3 command_status values.
_SMPP_STATUSES: Mapping[int, tuple[str, str, str]] = MappingProxyType(
    {
        # value: (code, spec name, text)
        0x00: ("smpp_ok", "ESME_ROK", "no error"),
        0x01: ("smpp_invalid_message_length", "ESME_RINVMSGLEN", "message length is invalid"),
        0x02: ("smpp_invalid_command_length", "ESME_RINVCMDLEN", "command length is invalid"),
        0x03: ("smpp_invalid_command_id", "ESME_RINVCMDID", "invalid command id"),
        0x04: ("smpp_invalid_bind_status", "ESME_RINVBNDSTS", "incorrect bind status for command"),
        0x05: ("smpp_already_bound", "ESME_RALYBND", "ESME already bound"),
        0x06: ("smpp_invalid_priority_flag", "ESME_RINVPRTFLG", "invalid priority flag"),
        0x07: (
            "smpp_invalid_registered_delivery",
            "ESME_RINVREGDLVFLG",
            "invalid registered delivery flag",
        ),
        0x08: ("smpp_system_error", "ESME_RSYSERR", "SMSC system error"),
        0x0A: ("smpp_invalid_source_address", "ESME_RINVSRCADR", "invalid source address"),
        0x0B: (
            "smpp_invalid_destination_address",
            "ESME_RINVDSTADR",
            "invalid destination address",
        ),
        0x0C: ("smpp_invalid_message_id", "ESME_RINVMSGID", "message id is invalid"),
        0x0D: ("smpp_bind_failed", "ESME_RBINDFAIL", "bind failed"),
        0x0E: ("smpp_invalid_password", "ESME_RINVPASWD", "invalid password"),
        0x0F: ("smpp_invalid_system_id", "ESME_RINVSYSID", "invalid system id"),
        0x11: ("smpp_cancel_failed", "ESME_RCANCELFAIL", "cancel_sm failed"),
        0x13: ("smpp_replace_failed", "ESME_RREPLACEFAIL", "replace_sm failed"),
        0x14: ("smpp_queue_full", "ESME_RMSGQFUL", "SMSC message queue full"),
        0x15: ("smpp_invalid_service_type", "ESME_RINVSERTYP", "invalid service type"),
        0x33: (
            "smpp_invalid_number_of_destinations",
            "ESME_RINVNUMDESTS",
            "invalid number of destinations",
        ),
        0x34: (
            "smpp_invalid_distribution_list",
            "ESME_RINVDLNAME",
            "invalid distribution list name",
        ),
        0x40: ("smpp_invalid_destination_flag", "ESME_RINVDESTFLAG", "destination flag invalid"),
        0x42: (
            "smpp_invalid_submit_with_replace",
            "ESME_RINVSUBREP",
            "invalid submit-with-replace request",
        ),
        0x43: ("smpp_invalid_esm_class", "ESME_RINVESMCLASS", "invalid esm_class field data"),
        0x44: (
            "smpp_cannot_submit_to_distribution_list",
            "ESME_RCNTSUBDL",
            "cannot submit to distribution list",
        ),
        0x45: ("smpp_submit_failed", "ESME_RSUBMITFAIL", "submit_sm or submit_multi failed"),
        0x48: ("smpp_invalid_source_ton", "ESME_RINVSRCTON", "invalid source address TON"),
        0x49: ("smpp_invalid_source_npi", "ESME_RINVSRCNPI", "invalid source address NPI"),
        0x50: ("smpp_invalid_destination_ton", "ESME_RINVDSTTON", "invalid destination TON"),
        0x51: ("smpp_invalid_destination_npi", "ESME_RINVDSTNPI", "invalid destination NPI"),
        0x53: ("smpp_invalid_system_type", "ESME_RINVSYSTYP", "invalid system_type field"),
        0x54: (
            "smpp_invalid_replace_if_present",
            "ESME_RINVREPFLAG",
            "invalid replace_if_present flag",
        ),
        0x55: ("smpp_invalid_number_of_messages", "ESME_RINVNUMMSGS", "invalid number of messages"),
        0x58: ("smpp_throttled", "ESME_RTHROTTLED", "throttled: message rate limit exceeded"),
        0x61: (
            "smpp_invalid_schedule_time",
            "ESME_RINVSCHED",
            "invalid scheduled delivery time",
        ),
        0x62: ("smpp_invalid_validity_period", "ESME_RINVEXPIRY", "invalid validity period"),
        0x63: (
            "smpp_invalid_predefined_message",
            "ESME_RINVDFTMSGID",
            "predefined message invalid or not found",
        ),
        0x64: (
            "smpp_receiver_temporary_error",
            "ESME_RX_T_APPN",
            "receiver temporary application error",
        ),
        0x65: (
            "smpp_receiver_permanent_error",
            "ESME_RX_P_APPN",
            "receiver permanent application error",
        ),
        0x66: ("smpp_receiver_reject", "ESME_RX_R_APPN", "receiver rejected the message"),
        0x67: ("smpp_query_failed", "ESME_RQUERYFAIL", "query_sm failed"),
        0xC0: (
            "smpp_invalid_optional_part",
            "ESME_RINVOPTPARSTREAM",
            "error in the optional part of the PDU",
        ),
        0xC1: (
            "smpp_optional_parameter_not_allowed",
            "ESME_ROPTPARNOTALLWD",
            "optional parameter not allowed",
        ),
        0xC2: ("smpp_invalid_parameter_length", "ESME_RINVPARLEN", "invalid parameter length"),
        0xC3: (
            "smpp_missing_optional_parameter",
            "ESME_RMISSINGOPTPARAM",
            "expected optional parameter missing",
        ),
        0xC4: (
            "smpp_invalid_optional_parameter_value",
            "ESME_RINVOPTPARAMVAL",
            "invalid optional parameter value",
        ),
        0xFE: ("smpp_delivery_failure", "ESME_RDELIVERYFAILURE", "delivery failure"),
        0xFF: ("smpp_unknown_error", "ESME_RUNKNOWNERR", "unknown error"),
    }
)

# Worth submitting again later: the SMSC refused for now, not for good.
# System error is included because a refused submit was not accepted, so a
# retry cannot duplicate it.
SMPP_TRANSIENT_STATUSES: frozenset[int] = frozenset({0x08, 0x14, 0x58, 0x64})

_SMPP_VENDOR_RANGE = range(0x400, 0x500)


def from_smpp_status(command_status: int) -> Reason:
    """Reason for a submit_sm_resp (or other response) command_status."""
    raw_code = f"smpp_status_0x{command_status:08x}"
    known = _SMPP_STATUSES.get(command_status)
    if known is not None:
        code, spec_name, text = known
        return Reason(code, f"{text} ({spec_name}, 0x{command_status:08X})")
    if command_status in _SMPP_VENDOR_RANGE:
        return Reason(
            raw_code, f"SMSC vendor-specific error 0x{command_status:08X} ({command_status})"
        )
    return Reason(raw_code, f"unrecognised SMPP command_status 0x{command_status:08X}")


def smpp_status_is_transient(command_status: int) -> bool:
    return command_status in SMPP_TRANSIENT_STATUSES


# Delivery receipt `stat` values (SMPP 3.4 Appendix B).
_RECEIPT_STATS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "DELIVRD": ("delivered", "delivered to the handset"),
        "EXPIRED": ("smsc_validity_expired", "validity period expired at the SMSC"),
        "DELETED": ("deleted_by_smsc", "the SMSC deleted the message"),
        "UNDELIV": ("undeliverable", "the message could not be delivered"),
        "ACCEPTD": ("accepted_by_smsc", "the message was accepted on the recipient's behalf"),
        "UNKNOWN": ("receipt_state_unknown", "the SMSC reports the message state as unknown"),
        "REJECTD": ("rejected_by_smsc", "the SMSC rejected the message"),
        "ENROUTE": ("enroute", "the message is still on its way"),
    }
)

_UNSAFE_FOR_CODE = re.compile(r"[^0-9a-z]+")


def from_receipt(
    stat: str,
    err: str | int | None,
    *,
    err_mapping: Mapping[int, tuple[str, str]] | None = None,
) -> Reason:
    """Reason for a delivery receipt's `stat` and `err` fields.

    `err` is network specific; a carrier's `err_mapping` (from config) wins.
    An unmapped non-zero `err` is kept raw in the code and the text.
    """
    stat_clean = stat.strip().upper()
    known = _RECEIPT_STATS.get(stat_clean)
    if known is None:
        code_stem = "receipt_stat_" + _slug(stat_clean)
        stem_text = f"unrecognised receipt state {stat!r}"
    else:
        code_stem, stem_text = known
        stem_text = f"{stem_text} (receipt {stat_clean})"
    if stat_clean == "DELIVRD":
        return Reason(code_stem, stem_text)

    err_text = _err_text(err)
    if err_text is None:
        return Reason(code_stem, stem_text)
    if err_mapping is not None and _is_ascii_number(err_text):
        mapped = from_config(err_mapping, int(err_text))
        if mapped is not None:
            return mapped
    return Reason(f"{code_stem}_err_{_slug(err_text)}", f"{stem_text}, error {err_text}")


def from_config(mapping: Mapping[int, tuple[str, str]], code: int) -> Reason | None:
    """A per-carrier configured (code, text) for an error number, if any."""
    entry = mapping.get(code)
    if entry is None:
        return None
    reason_code, text = entry
    return Reason(reason_code, text)


def _err_text(err: str | int | None) -> str | None:
    """The err field as shown, or None when it says "no error"."""
    if err is None:
        return None
    text = f"{err:03d}" if isinstance(err, int) else err.strip()
    if not text or (_is_ascii_number(text) and int(text) == 0):
        return None
    return text


def _is_ascii_number(text: str) -> bool:
    # str.isdigit() is also true for "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


def _slug(raw: str) -> str:
    """A code-safe rendering of a raw carrier value; the text keeps it verbatim."""
    slug = _UNSAFE_FOR_CODE.sub("_", raw.lower()).strip("_")
    if slug:
        return slug
    return "other" if raw.strip() else "blank"
