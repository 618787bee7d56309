"""Sans-I/O SMPP 3.4 codec: PDUs declared as data, ``encode``, ``decode`` and a stream ``Framer``.

Nothing in this module does I/O, reads a clock or keeps global mutable state; the
asyncio session only moves bytes through it.

PDUs
----
Every PDU is a frozen, keyword-only dataclass with ``sequence_number`` and
``command_status`` (default 0), the mandatory body parameters of SMPP 3.4 under their
spec names (``sm_length`` is implied by ``short_message``), typed optional parameters
(TLVs) where the spec allows them (``None`` = absent), and ``extra_tlvs``: every other
TLV (vendor tags, tags the spec does not allow on that PDU, known tags whose value
does not have the spec's shape, a repeated tag) kept raw and written back unchanged
after the typed ones. (Set the typed field rather than putting a well-formed
``Tlv`` for it in ``extra_tlvs``: decoding would move it into the typed field.)
The class attribute ``command_id`` names the operation; ``Pdu`` is the union of all
classes plus ``UnknownPdu`` for command ids the codec does not implement
(``submit_multi`` and anything undefined).

    SubmitSm(sequence_number=7, source_addr="0120000000", destination_addr="09012345678",
             esm_class=ESM_CLASS_UDHI, data_coding=DataCoding.UCS2,
             short_message=udh_concat(ref=1, total=2, seq=1) + text_part_utf16be)

C-octet strings are ``str`` decoded as latin-1, so every byte a peer sends maps to
one character and back. ``short_message`` and ``message_payload`` are ``bytes``.

Decoding contract (the session's read loop)
-------------------------------------------
::

    framer = Framer(max_pdu_len=64 * 1024)
    framer.feed(chunk)                      # any chunk size, even one byte
    while (event := framer.next_event()) is not None:
        if isinstance(event, MalformedPdu):  # well framed, bad body: nack and carry on
            reply(GenericNack(sequence_number=event.sequence_number,
                              command_status=event.nack_status))
        elif isinstance(event, UnknownPdu):  # never a reason to drop the bind
            reply(GenericNack(sequence_number=event.sequence_number,
                              command_status=CommandStatus.ESME_RINVCMDID))
        else:
            dispatch(event)
    # StreamBroken propagates out of next_event: drop the connection and rebind.

``next_event`` returns ``None`` when it needs more bytes, and raises ``StreamBroken``
only when framing can no longer be trusted (command_length < 16 or > max_pdu_len).
Nothing else a peer sends raises: short bodies, C-octet strings without NUL, lengths
pointing past the end, truncated TLVs all become ``MalformedPdu`` with a
``nack_status`` of ESME_RINVCMDLEN (mandatory part does not fit the length) or
ESME_RINVOPTPARSTREAM (TLV stream broken). A decoder bug would surface as a
``MalformedPdu`` whose reason starts with ``"decoder bug"`` (ESME_RSYSERR) rather than
an exception that would drop a healthy bind; the fuzz tests assert it never happens.
Whether a malformed *response* deserves a generic_nack is the session's call
(``is_response(event.command_id)``).

Leniency on decode, strictness on encode
----------------------------------------
Decoding accepts what carriers actually send: over-long C-octet strings (the spec
maxima are not enforced), any ``command_status`` value (vendor codes included), a
response with an empty body (SMSCs omit the body on errors; fields take defaults),
a response whose last C-octet string runs to the end of the body without its NUL,
and ``receipted_message_id`` with or without its NUL. A failed response
(command_status != 0) whose fields are all defaults is encoded header-only, as the
spec prescribes for submit_sm_resp and the bind responses. Encoding refuses, with
``PduEncodeError``, anything the spec forbids on the wire: strings over their
maximum or containing NUL, integers out of range, short_message over 254 octets,
TLV values over 65535 octets.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Final, TypeAlias, get_type_hints

HEADER_LEN: Final = 16
DEFAULT_MAX_PDU_LEN: Final = 64 * 1024
INTERFACE_VERSION_34: Final = 0x34
SHORT_MESSAGE_MAX_LEN: Final = 254

_RESPONSE_BIT: Final = 0x80000000
_HEADER = struct.Struct(">IIII")
_TLV_HEADER = struct.Struct(">HH")


class CommandId(IntEnum):
    """SMPP 3.4 command ids (section 5.1.2.1)."""

    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    REPLACE_SM_RESP = 0x80000007
    CANCEL_SM = 0x00000008
    CANCEL_SM_RESP = 0x80000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    SUBMIT_MULTI_RESP = 0x80000021
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


class CommandStatus(IntEnum):
    """SMPP 3.4 command_status values (section 5.1.3).

    PDUs carry ``command_status`` as a plain ``int``: carriers use vendor codes
    (0x400-0x4FF) and reserved values, and an unknown code must never break decoding.
    ``describe_status`` names any value for logs.
    """

    ESME_ROK = 0x00
    ESME_RINVMSGLEN = 0x01
    ESME_RINVCMDLEN = 0x02
    ESME_RINVCMDID = 0x03
    ESME_RINVBNDSTS = 0x04
    ESME_RALYBND = 0x05
    ESME_RINVPRTFLG = 0x06
    ESME_RINVREGDLVFLG = 0x07
    ESME_RSYSERR = 0x08
    ESME_RINVSRCADR = 0x0A
    ESME_RINVDSTADR = 0x0B
    ESME_RINVMSGID = 0x0C
    ESME_RBINDFAIL = 0x0D
    ESME_RINVPASWD = 0x0E
    ESME_RINVSYSID = 0x0F
    ESME_RCANCELFAIL = 0x11
    ESME_RREPLACEFAIL = 0x13
    ESME_RMSGQFUL = 0x14
    ESME_RINVSERTYP = 0x15
    ESME_RINVNUMDESTS = 0x33
    ESME_RINVDLNAME = 0x34
    ESME_RINVDESTFLAG = 0x40
    ESME_RINVSUBREP = 0x42
    ESME_RINVESMCLASS = 0x43
    ESME_RCNTSUBDL = 0x44
    ESME_RSUBMITFAIL = 0x45
    ESME_RINVSRCTON = 0x48
    ESME_RINVSRCNPI = 0x49
    ESME_RINVDSTTON = 0x50
    ESME_RINVDSTNPI = 0x51
    ESME_RINVSYSTYP = 0x53
    ESME_RINVREPFLAG = 0x54
    ESME_RINVNUMMSGS = 0x55
    ESME_RTHROTTLED = 0x58
    ESME_RINVSCHED = 0x61
    ESME_RINVEXPIRY = 0x62
    ESME_RINVDFTMSGID = 0x63
    ESME_RX_T_APPN = 0x64
    ESME_RX_P_APPN = 0x65
    ESME_RX_R_APPN = 0x66
    ESME_RQUERYFAIL = 0x67
    ESME_RINVOPTPARSTREAM = 0xC0
    ESME_ROPTPARNOTALLWD = 0xC1
    ESME_RINVPARLEN = 0xC2
    ESME_RMISSINGOPTPARAM = 0xC3
    ESME_RINVOPTPARAMVAL = 0xC4
    ESME_RDELIVERYFAILURE = 0xFE
    ESME_RUNKNOWNERR = 0xFF


class TlvTag(IntEnum):
    """SMPP 3.4 optional parameter tags (section 5.3.2)."""

    DEST_ADDR_SUBUNIT = 0x0005
    DEST_NETWORK_TYPE = 0x0006
    DEST_BEARER_TYPE = 0x0007
    DEST_TELEMATICS_ID = 0x0008
    SOURCE_ADDR_SUBUNIT = 0x000D
    SOURCE_NETWORK_TYPE = 0x000E
    SOURCE_BEARER_TYPE = 0x000F
    SOURCE_TELEMATICS_ID = 0x0010
    QOS_TIME_TO_LIVE = 0x0017
    PAYLOAD_TYPE = 0x0019
    ADDITIONAL_STATUS_INFO_TEXT = 0x001D
    RECEIPTED_MESSAGE_ID = 0x001E
    MS_MSG_WAIT_FACILITIES = 0x0030
    PRIVACY_INDICATOR = 0x0201
    SOURCE_SUBADDRESS = 0x0202
    DEST_SUBADDRESS = 0x0203
    USER_MESSAGE_REFERENCE = 0x0204
    USER_RESPONSE_CODE = 0x0205
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    SAR_MSG_REF_NUM = 0x020C
    LANGUAGE_INDICATOR = 0x020D
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    CALLBACK_NUM_PRES_IND = 0x0302
    CALLBACK_NUM_ATAG = 0x0303
    NUMBER_OF_MESSAGES = 0x0304
    CALLBACK_NUM = 0x0381
    DPF_RESULT = 0x0420
    SET_DPF = 0x0421
    MS_AVAILABILITY_STATUS = 0x0422
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    DELIVERY_FAILURE_REASON = 0x0425
    MORE_MESSAGES_TO_SEND = 0x0426
    MESSAGE_STATE = 0x0427
    USSD_SERVICE_OP = 0x0501
    DISPLAY_TIME = 0x1201
    SMS_SIGNAL = 0x1203
    MS_VALIDITY = 0x1204
    ALERT_ON_MESSAGE_DELIVERY = 0x130C
    ITS_REPLY_TYPE = 0x1380
    ITS_SESSION_INFO = 0x1383


class MessageState(IntEnum):
    """message_state values (section 5.2.28), in query_sm_resp and the TLV of receipts."""

    ENROUTE = 1
    DELIVERED = 2
    EXPIRED = 3
    DELETED = 4
    UNDELIVERABLE = 5
    ACCEPTED = 6
    UNKNOWN = 7
    REJECTED = 8


class Ton(IntEnum):
    """Type of number (section 5.2.5)."""

    UNKNOWN = 0
    INTERNATIONAL = 1
    NATIONAL = 2
    NETWORK_SPECIFIC = 3
    SUBSCRIBER_NUMBER = 4
    ALPHANUMERIC = 5
    ABBREVIATED = 6


class Npi(IntEnum):
    """Numbering plan indicator (section 5.2.6)."""

    UNKNOWN = 0
    ISDN = 1
    DATA = 3
    TELEX = 4
    LAND_MOBILE = 6
    NATIONAL = 8
    PRIVATE = 9
    ERMES = 10
    INTERNET = 14
    WAP_CLIENT_ID = 18


class DataCoding(IntEnum):
    """data_coding values (section 5.2.19); Japanese text goes as UCS2."""

    SMSC_DEFAULT = 0x00
    IA5 = 0x01
    OCTET_UNSPECIFIED = 0x02
    LATIN_1 = 0x03
    OCTET_UNSPECIFIED_2 = 0x04
    JIS = 0x05
    CYRILLIC = 0x06
    LATIN_HEBREW = 0x07
    UCS2 = 0x08
    PICTOGRAM = 0x09
    MUSIC_CODES = 0x0A
    EXTENDED_KANJI_JIS = 0x0D
    KS_C_5601 = 0x0E


# esm_class bits (section 5.2.12). A delivery receipt is a deliver_sm whose message
# type bits (mask 0x3C) equal ESM_CLASS_RECEIPT.
ESM_CLASS_UDHI: Final = 0x40
ESM_CLASS_RECEIPT: Final = 0x04
ESM_CLASS_MESSAGE_TYPE_MASK: Final = 0x3C

# registered_delivery bits (section 5.2.17).
REGISTERED_DELIVERY_RECEIPT_ALWAYS: Final = 0x01
REGISTERED_DELIVERY_RECEIPT_ON_FAILURE: Final = 0x02


def is_response(command_id: int) -> bool:
    """True for response command ids (high bit set), generic_nack included."""
    return bool(command_id & _RESPONSE_BIT)


# Requests the spec gives no response: outbind is answered by a bind_receiver,
# alert_notification by nothing at all.
_UNANSWERED_REQUESTS: Final = frozenset({CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION})


def response_command_id(request_id: int) -> int:
    """The command id answering ``request_id`` (e.g. SUBMIT_SM -> SUBMIT_SM_RESP).

    Raises ValueError for a response id and for outbind/alert_notification, which
    have no response.
    """
    if is_response(request_id):
        raise ValueError(f"0x{request_id:08x} is already a response command id")
    if request_id in _UNANSWERED_REQUESTS:
        raise ValueError(f"0x{request_id:08x} has no response PDU")
    return request_id | _RESPONSE_BIT


def describe_status(command_status: int) -> str:
    """A log-friendly name for any command_status, vendor and reserved codes included."""
    try:
        return CommandStatus(command_status).name
    except ValueError:
        pass
    if 0x400 <= command_status <= 0x4FF:
        return f"vendor-specific 0x{command_status:08x}"
    return f"reserved 0x{command_status:08x}"


class PduEncodeError(ValueError):
    """A PDU holds a value that SMPP 3.4 cannot carry (our bug, never the peer's)."""


class StreamBroken(Exception):
    """The byte stream can no longer be framed: drop the connection and rebind."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """An optional parameter kept raw: unknown or vendor tag, or one we do not type."""

    tag: int
    value: bytes


@dataclass(frozen=True, slots=True)
class NetworkErrorCode:
    """network_error_code TLV (section 5.3.2.31): 1-octet network type + 2-octet code."""

    network_type: int  # 1 ANSI-136, 2 IS-95, 3 GSM, 4 ANSI-41
    error_code: int


@dataclass(frozen=True, slots=True)
class MalformedPdu:
    """A well-framed PDU whose body does not decode.

    The caller answers ``GenericNack(sequence_number, command_status=nack_status)``
    (for requests) and carries on reading: the next frame is unaffected.
    """

    sequence_number: int
    command_id: int
    reason: str
    nack_status: int = CommandStatus.ESME_RSYSERR


@dataclass(frozen=True, slots=True)
class UnknownPdu:
    """A PDU whose command id this codec does not implement; ``body`` kept verbatim.

    The session answers requests with generic_nack ESME_RINVCMDID and keeps the bind.
    ``encode`` writes it back unchanged, which lets a simulator send odd PDUs.
    """

    command_id: int
    sequence_number: int
    command_status: int
    body: bytes


# ---------------------------------------------------------------------------
# Wire types. PDU fields are annotated with one of these; the schema built from the
# annotations drives both encode and decode, so a PDU's layout is stated once.
# ---------------------------------------------------------------------------


class _BodyError(Exception):
    """Raised inside body decoding; becomes a MalformedPdu."""

    def __init__(self, reason: str, nack_status: int = CommandStatus.ESME_RINVCMDLEN) -> None:
        super().__init__(reason)
        self.reason = reason
        self.nack_status = nack_status


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.remaining:
            raise _BodyError(f"{what}: needs {count} octets, {self.remaining} left in body")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def octet(self, what: str) -> int:
        if self._pos >= len(self._data):
            raise _BodyError(f"{what}: needs 1 octets, 0 left in body")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def c_octet_string(self, what: str, *, lenient_eof: bool) -> str:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            if not lenient_eof:
                raise _BodyError(f"{what}: C-octet string without NUL")
            end = len(self._data)
            value = self._data[self._pos : end]
            self._pos = end
        else:
            value = self._data[self._pos : end]
            self._pos = end + 1
        return value.decode("latin-1")


def _check_int(value: object, width: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PduEncodeError(f"{what}: expected int, got {type(value).__name__}")
    if not 0 <= value < (1 << (8 * width)):
        raise PduEncodeError(f"{what}: {value} does not fit in {width} octet(s)")
    return value


def _c_octet_string_bytes(value: object, max_len: int, what: str) -> bytes:
    if not isinstance(value, str):
        raise PduEncodeError(f"{what}: expected str, got {type(value).__name__}")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise PduEncodeError(f"{what}: not representable as octets: {exc}") from None
    if b"\x00" in raw:
        raise PduEncodeError(f"{what}: contains NUL")
    if len(raw) + 1 > max_len:
        raise PduEncodeError(f"{what}: {len(raw)} octets, spec maximum is {max_len - 1}")
    return raw + b"\x00"


class _Int:
    """Unsigned big-endian integer of ``width`` octets."""

    def __init__(self, width: int) -> None:
        self.width = width

    def read(self, reader: _Reader, what: str, *, lenient_eof: bool) -> object:
        if self.width == 1:
            # Every integer of a PDU body is one octet: index, don't slice.
            return reader.octet(what)
        return int.from_bytes(reader.take(self.width, what), "big")

    def write(self, out: bytearray, value: object, what: str) -> None:
        if self.width == 1 and type(value) is int and 0 <= value < 256:
            out.append(value)
            return
        out += _check_int(value, self.width, what).to_bytes(self.width, "big")


class _CString:
    """C-octet string; ``max_len`` counts the NUL, as the spec tables do."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def read(self, reader: _Reader, what: str, *, lenient_eof: bool) -> object:
        return reader.c_octet_string(what, lenient_eof=lenient_eof)

    def write(self, out: bytearray, value: object, what: str) -> None:
        out += _c_octet_string_bytes(value, self.max_len, what)


class _ShortMessage:
    """sm_length octet followed by that many octets of short_message."""

    def read(self, reader: _Reader, what: str, *, lenient_eof: bool) -> object:
        sm_length = reader.take(1, "sm_length")[0]
        return reader.take(sm_length, what)

    def write(self, out: bytearray, value: object, what: str) -> None:
        if not isinstance(value, bytes):
            raise PduEncodeError(f"{what}: expected bytes, got {type(value).__name__}")
        if len(value) > SHORT_MESSAGE_MAX_LEN:
            raise PduEncodeError(
                f"{what}: {len(value)} octets, maximum is {SHORT_MESSAGE_MAX_LEN}"
                " (use message_payload for more)"
            )
        out.append(len(value))
        out += value


_BodyField: TypeAlias = _Int | _CString | _ShortMessage


class _TlvSpec:
    """A typed optional parameter: its tag and how its value is shaped.

    ``parse`` returns None when the value does not have the spec's shape; the TLV is
    then kept raw in extra_tlvs instead of failing the PDU.
    """

    def __init__(self, tag: TlvTag) -> None:
        self.tag = tag

    def parse(self, value: bytes) -> object | None:
        raise NotImplementedError

    def serialize(self, value: object, what: str) -> bytes:
        raise NotImplementedError


class _TlvInt(_TlvSpec):
    def __init__(self, tag: TlvTag, width: int) -> None:
        super().__init__(tag)
        self.width = width

    def parse(self, value: bytes) -> object | None:
        if len(value) != self.width:
            return None
        return int.from_bytes(value, "big")

    def serialize(self, value: object, what: str) -> bytes:
        return _check_int(value, self.width, what).to_bytes(self.width, "big")


class _TlvOctets(_TlvSpec):
    def parse(self, value: bytes) -> object | None:
        return value

    def serialize(self, value: object, what: str) -> bytes:
        if not isinstance(value, bytes):
            raise PduEncodeError(f"{what}: expected bytes, got {type(value).__name__}")
        return value


class _TlvCString(_TlvSpec):
    # Some SMSCs omit the NUL of receipted_message_id; accept both, write it per spec.
    def __init__(self, tag: TlvTag, max_len: int) -> None:
        super().__init__(tag)
        self.max_len = max_len

    def parse(self, value: bytes) -> object | None:
        end = value.find(b"\x00")
        if end >= 0 and any(value[end:]):
            return None
        return (value if end < 0 else value[:end]).decode("latin-1")

    def serialize(self, value: object, what: str) -> bytes:
        return _c_octet_string_bytes(value, self.max_len, what)


class _TlvNetworkErrorCode(_TlvSpec):
    def parse(self, value: bytes) -> object | None:
        if len(value) != 3:
            return None
        return NetworkErrorCode(value[0], int.from_bytes(value[1:], "big"))

    def serialize(self, value: object, what: str) -> bytes:
        if not isinstance(value, NetworkErrorCode):
            raise PduEncodeError(f"{what}: expected NetworkErrorCode")
        network_type = _check_int(value.network_type, 1, f"{what}.network_type")
        error_code = _check_int(value.error_code, 2, f"{what}.error_code")
        return bytes([network_type]) + error_code.to_bytes(2, "big")


_U8: TypeAlias = Annotated[int, _Int(1)]
_ServiceType: TypeAlias = Annotated[str, _CString(6)]
_Addr21: TypeAlias = Annotated[str, _CString(21)]
_Addr65: TypeAlias = Annotated[str, _CString(65)]
_MessageId: TypeAlias = Annotated[str, _CString(65)]
_Time: TypeAlias = Annotated[str, _CString(17)]
_SystemId: TypeAlias = Annotated[str, _CString(16)]
_Password: TypeAlias = Annotated[str, _CString(9)]
_Octets: TypeAlias = Annotated[bytes, _ShortMessage()]

_UserMessageReference: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.USER_MESSAGE_REFERENCE, 2)]
_SarMsgRefNum: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.SAR_MSG_REF_NUM, 2)]
_SarTotalSegments: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.SAR_TOTAL_SEGMENTS, 1)]
_SarSegmentSeqnum: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.SAR_SEGMENT_SEQNUM, 1)]
_MessagePayload: TypeAlias = Annotated[bytes | None, _TlvOctets(TlvTag.MESSAGE_PAYLOAD)]
_ReceiptedMessageId: TypeAlias = Annotated[str | None, _TlvCString(TlvTag.RECEIPTED_MESSAGE_ID, 65)]
_MessageStateTlv: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.MESSAGE_STATE, 1)]
_NetworkErrorCodeTlv: TypeAlias = Annotated[
    NetworkErrorCode | None, _TlvNetworkErrorCode(TlvTag.NETWORK_ERROR_CODE)
]
_ScInterfaceVersion: TypeAlias = Annotated[int | None, _TlvInt(TlvTag.SC_INTERFACE_VERSION, 1)]

# ---------------------------------------------------------------------------
# PDUs (SMPP 3.4 section 4). Field order is wire order.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BindTransmitter:
    """bind_transmitter (4.1.1)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSMITTER
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    password: _Password = ""
    system_type: Annotated[str, _CString(13)] = ""
    interface_version: _U8 = INTERFACE_VERSION_34
    addr_ton: _U8 = 0
    addr_npi: _U8 = 0
    address_range: Annotated[str, _CString(41)] = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindTransmitterResp:
    """bind_transmitter_resp (4.1.2)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSMITTER_RESP
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    sc_interface_version: _ScInterfaceVersion = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindReceiver:
    """bind_receiver (4.1.3)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_RECEIVER
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    password: _Password = ""
    system_type: Annotated[str, _CString(13)] = ""
    interface_version: _U8 = INTERFACE_VERSION_34
    addr_ton: _U8 = 0
    addr_npi: _U8 = 0
    address_range: Annotated[str, _CString(41)] = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindReceiverResp:
    """bind_receiver_resp (4.1.4)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_RECEIVER_RESP
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    sc_interface_version: _ScInterfaceVersion = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindTransceiver:
    """bind_transceiver (4.1.5)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSCEIVER
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    password: _Password = ""
    system_type: Annotated[str, _CString(13)] = ""
    interface_version: _U8 = INTERFACE_VERSION_34
    addr_ton: _U8 = 0
    addr_npi: _U8 = 0
    address_range: Annotated[str, _CString(41)] = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindTransceiverResp:
    """bind_transceiver_resp (4.1.6)."""

    command_id: ClassVar[CommandId] = CommandId.BIND_TRANSCEIVER_RESP
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    sc_interface_version: _ScInterfaceVersion = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outbind:
    """outbind (4.1.7): the SMSC asks the ESME to bind_receiver."""

    command_id: ClassVar[CommandId] = CommandId.OUTBIND
    sequence_number: int
    command_status: int = 0
    system_id: _SystemId = ""
    password: _Password = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Unbind:
    """unbind (4.2.1)."""

    command_id: ClassVar[CommandId] = CommandId.UNBIND
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnbindResp:
    """unbind_resp (4.2.2)."""

    command_id: ClassVar[CommandId] = CommandId.UNBIND_RESP
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericNack:
    """generic_nack (4.3.1): answer to a PDU that could not be processed at all."""

    command_id: ClassVar[CommandId] = CommandId.GENERIC_NACK
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitSm:
    """submit_sm (4.4.1)."""

    command_id: ClassVar[CommandId] = CommandId.SUBMIT_SM
    sequence_number: int
    command_status: int = 0
    service_type: _ServiceType = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr21 = ""
    dest_addr_ton: _U8 = 0
    dest_addr_npi: _U8 = 0
    destination_addr: _Addr21 = ""
    esm_class: _U8 = 0
    protocol_id: _U8 = 0
    priority_flag: _U8 = 0
    schedule_delivery_time: _Time = ""
    validity_period: _Time = ""
    registered_delivery: _U8 = 0
    replace_if_present_flag: _U8 = 0
    data_coding: _U8 = 0
    sm_default_msg_id: _U8 = 0
    short_message: _Octets = b""
    user_message_reference: _UserMessageReference = None
    sar_msg_ref_num: _SarMsgRefNum = None
    sar_total_segments: _SarTotalSegments = None
    sar_segment_seqnum: _SarSegmentSeqnum = None
    message_payload: _MessagePayload = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitSmResp:
    """submit_sm_resp (4.4.2). message_id is "" when the SMSC sent no body (errors)."""

    command_id: ClassVar[CommandId] = CommandId.SUBMIT_SM_RESP
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverSm:
    """deliver_sm (4.6.1): mobile-originated message or delivery receipt.

    A receipt has ``esm_class & ESM_CLASS_MESSAGE_TYPE_MASK == ESM_CLASS_RECEIPT``; its
    id and state come from receipted_message_id/message_state when present, else
    from the receipt text (see carrierd.smpp.receipt).
    """

    command_id: ClassVar[CommandId] = CommandId.DELIVER_SM
    sequence_number: int
    command_status: int = 0
    service_type: _ServiceType = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr21 = ""
    dest_addr_ton: _U8 = 0
    dest_addr_npi: _U8 = 0
    destination_addr: _Addr21 = ""
    esm_class: _U8 = 0
    protocol_id: _U8 = 0
    priority_flag: _U8 = 0
    schedule_delivery_time: _Time = ""
    validity_period: _Time = ""
    registered_delivery: _U8 = 0
    replace_if_present_flag: _U8 = 0
    data_coding: _U8 = 0
    sm_default_msg_id: _U8 = 0
    short_message: _Octets = b""
    user_message_reference: _UserMessageReference = None
    sar_msg_ref_num: _SarMsgRefNum = None
    sar_total_segments: _SarTotalSegments = None
    sar_segment_seqnum: _SarSegmentSeqnum = None
    message_payload: _MessagePayload = None
    receipted_message_id: _ReceiptedMessageId = None
    message_state: _MessageStateTlv = None
    network_error_code: _NetworkErrorCodeTlv = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverSmResp:
    """deliver_sm_resp (4.6.2). message_id is unused by the spec (NULL)."""

    command_id: ClassVar[CommandId] = CommandId.DELIVER_SM_RESP
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSm:
    """data_sm (4.7.1)."""

    command_id: ClassVar[CommandId] = CommandId.DATA_SM
    sequence_number: int
    command_status: int = 0
    service_type: _ServiceType = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr65 = ""
    dest_addr_ton: _U8 = 0
    dest_addr_npi: _U8 = 0
    destination_addr: _Addr65 = ""
    esm_class: _U8 = 0
    registered_delivery: _U8 = 0
    data_coding: _U8 = 0
    user_message_reference: _UserMessageReference = None
    sar_msg_ref_num: _SarMsgRefNum = None
    sar_total_segments: _SarTotalSegments = None
    sar_segment_seqnum: _SarSegmentSeqnum = None
    message_payload: _MessagePayload = None
    receipted_message_id: _ReceiptedMessageId = None
    message_state: _MessageStateTlv = None
    network_error_code: _NetworkErrorCodeTlv = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSmResp:
    """data_sm_resp (4.7.2)."""

    command_id: ClassVar[CommandId] = CommandId.DATA_SM_RESP
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    network_error_code: _NetworkErrorCodeTlv = None
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySm:
    """query_sm (4.8.1)."""

    command_id: ClassVar[CommandId] = CommandId.QUERY_SM
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr21 = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySmResp:
    """query_sm_resp (4.8.2)."""

    command_id: ClassVar[CommandId] = CommandId.QUERY_SM_RESP
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    final_date: _Time = ""
    message_state: _U8 = 0
    error_code: _U8 = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelSm:
    """cancel_sm (4.9.1)."""

    command_id: ClassVar[CommandId] = CommandId.CANCEL_SM
    sequence_number: int
    command_status: int = 0
    service_type: _ServiceType = ""
    message_id: _MessageId = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr21 = ""
    dest_addr_ton: _U8 = 0
    dest_addr_npi: _U8 = 0
    destination_addr: _Addr21 = ""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelSmResp:
    """cancel_sm_resp (4.9.2)."""

    command_id: ClassVar[CommandId] = CommandId.CANCEL_SM_RESP
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaceSm:
    """replace_sm (4.10.1)."""

    command_id: ClassVar[CommandId] = CommandId.REPLACE_SM
    sequence_number: int
    command_status: int = 0
    message_id: _MessageId = ""
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr21 = ""
    schedule_delivery_time: _Time = ""
    validity_period: _Time = ""
    registered_delivery: _U8 = 0
    sm_default_msg_id: _U8 = 0
    short_message: _Octets = b""
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaceSmResp:
    """replace_sm_resp (4.10.2)."""

    command_id: ClassVar[CommandId] = CommandId.REPLACE_SM_RESP
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EnquireLink:
    """enquire_link (4.11.1)."""

    command_id: ClassVar[CommandId] = CommandId.ENQUIRE_LINK
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EnquireLinkResp:
    """enquire_link_resp (4.11.2)."""

    command_id: ClassVar[CommandId] = CommandId.ENQUIRE_LINK_RESP
    sequence_number: int
    command_status: int = 0
    extra_tlvs: tuple[Tlv, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertNotification:
    """alert_notification (4.12.1); ms_availability_status stays in extra_tlvs."""

    command_id: ClassVar[CommandId] = CommandId.ALERT_NOTIFICATION
    sequence_number: int
    command_status: int = 0
    source_addr_ton: _U8 = 0
    source_addr_npi: _U8 = 0
    source_addr: _Addr65 = ""
    esme_addr_ton: _U8 = 0
    esme_addr_npi: _U8 = 0
    esme_addr: _Addr65 = ""
    extra_tlvs: tuple[Tlv, ...] = ()


KnownPdu: TypeAlias = (
    BindTransmitter
    | BindTransmitterResp
    | BindReceiver
    | BindReceiverResp
    | BindTransceiver
    | BindTransceiverResp
    | Outbind
    | Unbind
    | UnbindResp
    | GenericNack
    | SubmitSm
    | SubmitSmResp
    | DeliverSm
    | DeliverSmResp
    | DataSm
    | DataSmResp
    | QuerySm
    | QuerySmResp
    | CancelSm
    | CancelSmResp
    | ReplaceSm
    | ReplaceSmResp
    | EnquireLink
    | EnquireLinkResp
    | AlertNotification
)
Pdu: TypeAlias = KnownPdu | UnknownPdu

PDU_CLASSES: Final[tuple[type[KnownPdu], ...]] = (
    BindTransmitter,
    BindTransmitterResp,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    Outbind,
    Unbind,
    UnbindResp,
    GenericNack,
    SubmitSm,
    SubmitSmResp,
    DeliverSm,
    DeliverSmResp,
    DataSm,
    DataSmResp,
    QuerySm,
    QuerySmResp,
    CancelSm,
    CancelSmResp,
    ReplaceSm,
    ReplaceSmResp,
    EnquireLink,
    EnquireLinkResp,
    AlertNotification,
)


# ---------------------------------------------------------------------------
# Schemas: built once from the annotations above.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Schema:
    build: Callable[..., KnownPdu]
    command_id: int
    body: tuple[tuple[str, _BodyField], ...]
    tlvs: tuple[tuple[str, _TlvSpec], ...]
    tlv_by_tag: Mapping[int, tuple[str, _TlvSpec]]
    defaults: tuple[tuple[str, object], ...]


_HEADER_FIELDS: Final = frozenset({"sequence_number", "command_status", "extra_tlvs"})


def _build_schema(cls: type[KnownPdu]) -> _Schema:
    hints = get_type_hints(cls, include_extras=True)
    body: list[tuple[str, _BodyField]] = []
    tlvs: list[tuple[str, _TlvSpec]] = []
    for pdu_field in dataclasses.fields(cls):
        if pdu_field.name in _HEADER_FIELDS:
            continue
        wire = [m for m in getattr(hints[pdu_field.name], "__metadata__", ()) if m is not None]
        if len(wire) != 1:
            raise TypeError(f"{cls.__name__}.{pdu_field.name} lacks a wire type")
        if isinstance(wire[0], _TlvSpec):
            tlvs.append((pdu_field.name, wire[0]))
        else:
            body.append((pdu_field.name, wire[0]))
    return _Schema(
        build=cls,
        command_id=cls.command_id,
        body=tuple(body),
        tlvs=tuple(tlvs),
        tlv_by_tag={spec.tag: (name, spec) for name, spec in tlvs},
        defaults=tuple(
            (f.name, f.default) for f in dataclasses.fields(cls) if f.name not in _HEADER_FIELDS
        ),
    )


_SCHEMAS: Final[Mapping[type[KnownPdu], _Schema]] = {cls: _build_schema(cls) for cls in PDU_CLASSES}
_SCHEMAS_BY_ID: Final[Mapping[int, _Schema]] = {
    schema.command_id: schema for schema in _SCHEMAS.values()
}


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def encode(pdu: Pdu) -> bytes:
    """The complete wire frame of ``pdu``, command_length included.

    Raises ``PduEncodeError`` for values SMPP 3.4 cannot carry (see module docs).
    Typed TLVs are written in declaration order, then ``extra_tlvs`` unchanged.
    """
    if isinstance(pdu, UnknownPdu):
        command_id = _check_int(pdu.command_id, 4, "command_id")
        body = bytes(pdu.body)
    else:
        schema = _SCHEMAS[type(pdu)]
        command_id = schema.command_id
        body = _encode_body(pdu, schema)
    header = _HEADER.pack(
        HEADER_LEN + len(body),
        command_id,
        _check_int(pdu.command_status, 4, "command_status"),
        _check_int(pdu.sequence_number, 4, "sequence_number"),
    )
    return header + body


def _encode_body(pdu: KnownPdu, schema: _Schema) -> bytes:
    if (
        pdu.command_status != 0
        and is_response(schema.command_id)
        and not pdu.extra_tlvs
        and all(getattr(pdu, name) == default for name, default in schema.defaults)
    ):
        # Spec 4.1.2/4.4.2: the body of a failed response is not returned. Only when
        # it carries nothing, so decode(encode(p)) == p still holds.
        return b""
    out = bytearray()
    for name, wire in schema.body:
        wire.write(out, getattr(pdu, name), name)
    for name, spec in schema.tlvs:
        value = getattr(pdu, name)
        if value is not None:
            _write_tlv(out, spec.tag, spec.serialize(value, name))
    for tlv in pdu.extra_tlvs:
        _write_tlv(out, _check_int(tlv.tag, 2, "tlv tag"), tlv.value)
    return bytes(out)


def _write_tlv(out: bytearray, tag: int, value: bytes) -> None:
    if len(value) > 0xFFFF:
        raise PduEncodeError(f"TLV 0x{tag:04x}: {len(value)} octets, maximum is 65535")
    out += _TLV_HEADER.pack(tag, len(value))
    out += value


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode(frame: bytes) -> Pdu | MalformedPdu:
    """Decode one whole frame (header included).

    Raises ``StreamBroken`` only if ``frame`` is not exactly one frame (shorter than a
    header, or command_length disagreeing with its size).
    """
    if len(frame) < HEADER_LEN:
        raise StreamBroken(f"frame of {len(frame)} octets is shorter than an SMPP header")
    command_length, command_id, command_status, sequence_number = _HEADER.unpack_from(frame)
    if command_length != len(frame):
        raise StreamBroken(f"command_length {command_length} but frame has {len(frame)} octets")
    return _decode_body(command_id, command_status, sequence_number, bytes(frame[HEADER_LEN:]))


def _decode_body(
    command_id: int, command_status: int, sequence_number: int, body: bytes
) -> Pdu | MalformedPdu:
    schema = _SCHEMAS_BY_ID.get(command_id)
    if schema is None:
        return UnknownPdu(command_id, sequence_number, command_status, body)
    try:
        return _decode_known(schema, command_status, sequence_number, body)
    except _BodyError as exc:
        return MalformedPdu(sequence_number, command_id, exc.reason, exc.nack_status)
    except Exception as exc:
        # Keeps a decoder bug from dropping a healthy bind (the peer would resend the
        # same PDU after rebinding, forever); the fuzz tests assert this never happens.
        return MalformedPdu(
            sequence_number, command_id, f"decoder bug: {exc!r}", CommandStatus.ESME_RSYSERR
        )


def _decode_known(
    schema: _Schema, command_status: int, sequence_number: int, body: bytes
) -> KnownPdu:
    response = is_response(schema.command_id)
    if response and not body:
        # SMSCs omit the body of a failed response (and some of a successful
        # deliver_sm_resp); the fields keep their defaults.
        return schema.build(sequence_number=sequence_number, command_status=command_status)
    reader = _Reader(body)
    values: dict[str, Any] = {}
    for name, wire in schema.body:
        values[name] = wire.read(reader, name, lenient_eof=response)
    extras: list[Tlv] = []
    while reader.remaining:
        if reader.remaining < _TLV_HEADER.size:
            raise _BodyError(
                f"{reader.remaining} stray octet(s) after the last TLV",
                CommandStatus.ESME_RINVOPTPARSTREAM,
            )
        tag, length = _TLV_HEADER.unpack(reader.take(_TLV_HEADER.size, "TLV header"))
        if length > reader.remaining:
            raise _BodyError(
                f"TLV 0x{tag:04x} length {length} points past the end of the PDU",
                CommandStatus.ESME_RINVOPTPARSTREAM,
            )
        value = reader.take(length, f"TLV 0x{tag:04x}")
        typed = schema.tlv_by_tag.get(tag)
        if typed is not None and typed[0] not in values:
            parsed = typed[1].parse(value)
            if parsed is not None:
                values[typed[0]] = parsed
                continue
        extras.append(Tlv(tag, value))
    return schema.build(
        sequence_number=sequence_number,
        command_status=command_status,
        extra_tlvs=tuple(extras),
        **values,
    )


class Framer:
    """Turns a byte stream into PDUs: ``feed`` bytes, then call ``next_event`` until None.

    ``max_pdu_len`` bounds command_length (and so the memory one peer can make us
    hold); a frame over it, or under the 16-octet header, raises ``StreamBroken``,
    and keeps raising it: after that the stream has no trustworthy frame boundary.
    """

    def __init__(self, max_pdu_len: int = DEFAULT_MAX_PDU_LEN) -> None:
        if max_pdu_len < HEADER_LEN:
            raise ValueError(f"max_pdu_len must be at least {HEADER_LEN}")
        self._max_pdu_len = max_pdu_len
        self._buffer = bytearray()
        self._start = 0
        self._broken: str | None = None

    @property
    def max_pdu_len(self) -> int:
        return self._max_pdu_len

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as a PDU."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        if self._broken is None:
            self._buffer += data

    def next_event(self) -> Pdu | MalformedPdu | None:
        if self._broken is not None:
            raise StreamBroken(self._broken)
        if self.buffered < 4:
            return None
        command_length = int.from_bytes(self._buffer[self._start : self._start + 4], "big")
        if command_length < HEADER_LEN or command_length > self._max_pdu_len:
            self._broken = (
                f"command_length {command_length} outside [{HEADER_LEN}, {self._max_pdu_len}]"
            )
            self._buffer.clear()
            self._start = 0
            raise StreamBroken(self._broken)
        if self.buffered < command_length:
            return None
        start = self._start
        _, command_id, command_status, sequence_number = _HEADER.unpack_from(self._buffer, start)
        body = bytes(self._buffer[start + HEADER_LEN : start + command_length])
        self._start += command_length
        # Compact lazily so a burst of small frames does not shift the buffer each time.
        if self._start >= len(self._buffer):
            self._buffer.clear()
            self._start = 0
        elif self._start > 4096 and self._start * 2 > len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        return _decode_body(command_id, command_status, sequence_number, body)


# ---------------------------------------------------------------------------
# User data header helpers (3GPP TS 23.040 9.2.3.24) for concatenated SMS.
# ---------------------------------------------------------------------------

_IEI_CONCAT_8BIT: Final = 0x00
_IEI_CONCAT_16BIT: Final = 0x08


def udh_concat(ref: int, total: int, seq: int, *, ref16: bool = False) -> bytes:
    """The UDH of part ``seq`` (1-based) of ``total`` parts sharing reference ``ref``.

    6 octets with the 8-bit reference IE (0x00), 7 with the 16-bit one (0x08). Put it
    in front of the part's octets and set ``ESM_CLASS_UDHI`` in esm_class.
    """
    if not 1 <= total <= 255:
        raise ValueError(f"total parts {total} outside 1..255")
    if not 1 <= seq <= total:
        raise ValueError(f"part number {seq} outside 1..{total}")
    if ref16:
        if not 0 <= ref <= 0xFFFF:
            raise ValueError(f"16-bit concat reference {ref} outside 0..65535")
        return bytes([6, _IEI_CONCAT_16BIT, 4, ref >> 8, ref & 0xFF, total, seq])
    if not 0 <= ref <= 0xFF:
        raise ValueError(f"8-bit concat reference {ref} outside 0..255")
    return bytes([5, _IEI_CONCAT_8BIT, 3, ref, total, seq])


@dataclass(frozen=True, slots=True)
class ConcatInfo:
    """Concatenation IE of a received part: reference, part count, 1-based part number."""

    ref: int
    total: int
    seq: int


def split_udh(short_message: bytes) -> tuple[ConcatInfo | None, bytes]:
    """Split a UDHI short_message into its concatenation IE (if any) and the payload.

    Never raises: a header whose length points past the message is left in place and
    ``(None, short_message)`` returned; a concat IE with impossible numbers is ignored.
    """
    if not short_message:
        return None, short_message
    header_len = short_message[0]
    if 1 + header_len > len(short_message):
        return None, short_message
    header = short_message[1 : 1 + header_len]
    concat: ConcatInfo | None = None
    pos = 0
    while pos + 2 <= len(header):
        iei, ie_len = header[pos], header[pos + 1]
        data = header[pos + 2 : pos + 2 + ie_len]
        if len(data) < ie_len:
            break
        candidate: ConcatInfo | None = None
        if iei == _IEI_CONCAT_8BIT and ie_len == 3:
            candidate = ConcatInfo(data[0], data[1], data[2])
        elif iei == _IEI_CONCAT_16BIT and ie_len == 4:
            candidate = ConcatInfo((data[0] << 8) | data[1], data[2], data[3])
        if candidate is not None and 1 <= candidate.seq <= candidate.total:
            concat = candidate
        pos += 2 + ie_len
    return concat, short_message[1 + header_len :]
