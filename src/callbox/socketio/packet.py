"""Socket.IO v5 packets, sans-IO.

One packet is one Engine.IO message: ``<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]``.
The namespace is left out when it is ``/``. BINARY_EVENT and BINARY_ACK are followed by as many
binary Engine.IO messages as they announce; their JSON holds ``{"_placeholder":true,"num":N}``
where each buffer goes.

Event and ack arguments are decoded only one level deep, into ``msgspec.Raw`` values: the layer
above decodes what it routes on and forwards the rest byte for byte. Malformed input raises
:class:`SocketIOProtocolError`; the connection that sent it closes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = [
    "PacketType",
    "Packet",
    "SocketIOProtocolError",
    "Decoder",
    "encode_packet",
    "encode_binary_packet",
    "encode_event",
    "encode_ack",
    "RESERVED_EVENTS",
    "MAX_ATTACHMENTS",
    "MAX_ACK_ID_DIGITS",
    "MAX_NAMESPACE_LENGTH",
]

# Bounds on what one packet may claim. socket.io-client sends one attachment per Buffer argument;
# 64 leaves room for any real use while a claim of millions cannot make us wait or allocate.
MAX_ATTACHMENTS = 64
# The JS client counts ack ids up from 0 in a Number: 15 digits stay below 2**53 with room.
MAX_ACK_ID_DIGITS = 15
# Namespaces are short names such as "/admin"; 256 characters is far past any real one.
MAX_NAMESPACE_LENGTH = 256

# Names socket.io reserves for its own events: a client may not emit them.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class SocketIOProtocolError(Exception):
    """The peer sent a packet that is not Socket.IO v5. Its Engine.IO session closes."""


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class Packet(msgspec.Struct, gc=False):
    """A decoded packet.

    ``data`` is: for CONNECT the auth payload (any JSON value, usually an object) or None; for
    EVENT and ACK the list of arguments as ``msgspec.Raw`` (for EVENT without the event name, which
    is ``event``);
    for the binary kinds, after reassembly, the list of plain Python arguments with ``bytes``
    where the placeholders were.
    """

    type: PacketType
    namespace: str = "/"
    id: int | None = None
    data: Any = None
    event: str = ""  # for EVENT and BINARY_EVENT: the event name, decoded once here


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_TYPES = {str(t.value): t for t in PacketType}
_TYPE_CHAR = {t: str(t.value) for t in PacketType}
# The members the per-packet code compares with, as module names (why: callbox/enums.py).
_CONNECT, _DISCONNECT, _EVENT, _ACK = PacketType.CONNECT, PacketType.DISCONNECT, PacketType.EVENT, PacketType.ACK
_CONNECT_ERROR, _BINARY_EVENT, _BINARY_ACK = PacketType.CONNECT_ERROR, PacketType.BINARY_EVENT, PacketType.BINARY_ACK
_DIGITS = frozenset("0123456789")
_NAMESPACE_END = re.compile(r"[,\[{]")


class Decoder:
    """Turns Engine.IO messages into Socket.IO packets, holding a binary packet until its
    attachments have all arrived."""

    __slots__ = ("_pending", "_buffers", "_expected")

    def __init__(self) -> None:
        self._pending: Packet | None = None
        self._buffers: list[bytes] = []
        self._expected = 0

    def receive_text(self, text: str) -> Packet | None:
        """One text message. Returns the packet, or None while a binary packet waits for data."""
        if self._pending is not None:
            raise SocketIOProtocolError("text message while binary attachments were expected")
        packet, attachments = _decode(text)
        if attachments:
            self._pending = packet
            self._expected = attachments
            self._buffers = []
            return None
        return packet

    def receive_binary(self, data: bytes) -> Packet | None:
        """One binary message: an attachment of the pending binary packet."""
        if self._pending is None:
            raise SocketIOProtocolError("binary message with no binary packet announced")
        self._buffers.append(data)
        if len(self._buffers) < self._expected:
            return None
        packet, buffers = self._pending, self._buffers
        self._pending, self._buffers, self._expected = None, [], 0
        try:
            packet.data = _fill_placeholders(packet.data, buffers)
        except RecursionError:
            raise SocketIOProtocolError("JSON nested too deeply") from None
        return packet


def _decode(text: str) -> tuple[Packet, int]:
    if not text:
        raise SocketIOProtocolError("empty packet")
    ptype = _TYPES.get(text[0])
    if ptype is None:
        raise SocketIOProtocolError(f"unknown packet type {text[0]!r}")
    i, n = 1, len(text)
    attachments = 0
    if ptype is _BINARY_EVENT or ptype is _BINARY_ACK:
        dash = text.find("-", 1, 1 + 3)
        count = text[1:dash] if dash > 0 else ""
        if not count or not _DIGITS.issuperset(count):
            raise SocketIOProtocolError("binary packet without a valid attachment count")
        attachments = int(count)
        if attachments < 1 or attachments > MAX_ATTACHMENTS:
            raise SocketIOProtocolError(f"attachment count must be 1 to {MAX_ATTACHMENTS}")
        i = dash + 1
    namespace = "/"
    if i < n and text[i] == "/":
        # The namespace ends at its comma, or (a lenient client) where the JSON starts.
        match = _NAMESPACE_END.search(text, i)
        end = match.start() if match else n
        rest = end + 1 if match and match.group() == "," else end
        namespace = text[i:end].split("?", 1)[0]
        if len(namespace) > MAX_NAMESPACE_LENGTH:
            raise SocketIOProtocolError("namespace too long")
        i = rest
    start = i
    while i < n and text[i] in _DIGITS:
        i += 1
    ack_id = None
    if i > start:
        if i - start > MAX_ACK_ID_DIGITS:
            raise SocketIOProtocolError("ack id too long")
        ack_id = int(text[start:i])
    body = text[i:]
    packet = Packet(ptype, namespace, ack_id)
    try:
        if ptype is _EVENT or ptype is _ACK:  # the usual packet first
            _set_args(packet, _raw_list.decode(body))
        elif ptype is _CONNECT:
            if ack_id is not None:
                raise SocketIOProtocolError("CONNECT with an ack id")
            packet.data = _any.decode(body) if body else None
            if packet.data is not None and not isinstance(packet.data, dict):
                raise SocketIOProtocolError("CONNECT payload must be an object")
        elif ptype is _DISCONNECT:
            if body or ack_id is not None:
                raise SocketIOProtocolError("DISCONNECT carries no data")
        elif ptype is _CONNECT_ERROR:
            raise SocketIOProtocolError("CONNECT_ERROR is sent by servers only")
        else:  # binary: decode fully, placeholders are filled in when the buffers arrive
            args = _any.decode(body)
            if not isinstance(args, list):
                raise SocketIOProtocolError("binary packet data must be an array")
            _set_args(packet, args)
    except msgspec.DecodeError as exc:
        raise SocketIOProtocolError(f"invalid JSON: {exc}") from exc
    except RecursionError:
        raise SocketIOProtocolError("JSON nested too deeply") from None
    return packet, attachments


def _set_args(packet: Packet, args: list[Any]) -> None:
    """An event's name goes to ``packet.event`` and the rest to ``packet.data``; an ack needs its id."""
    ptype = packet.type
    if ptype is _EVENT or ptype is _BINARY_EVENT:
        packet.event = _event_name(args)
        del args[0]
    elif packet.id is None:
        raise SocketIOProtocolError("ACK without an ack id")
    packet.data = args


def _event_name(args: list[Any]) -> str:
    """The event name: the first argument, a string socket.io does not reserve."""
    if not args:
        raise SocketIOProtocolError("event without a name")
    name = args[0]
    if isinstance(name, msgspec.Raw):
        try:
            name = _any.decode(name)
        except msgspec.DecodeError as exc:  # pragma: no cover - Raw was already validated
            raise SocketIOProtocolError("invalid event name") from exc
    if not isinstance(name, str):
        raise SocketIOProtocolError("event name must be a string")
    if name in RESERVED_EVENTS:
        raise SocketIOProtocolError(f"{name!r} is a reserved event name")
    return name


def _fill_placeholders(data: Any, buffers: list[bytes]) -> Any:
    if isinstance(data, list):
        return [_fill_placeholders(x, buffers) for x in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True and len(data) == 2:
            num = data.get("num")
            if type(num) is not int or not 0 <= num < len(buffers):
                raise SocketIOProtocolError("binary placeholder points to no attachment")
            return buffers[num]
        return {k: _fill_placeholders(v, buffers) for k, v in data.items()}
    return data


def _header(ptype: PacketType, namespace: str, ack_id: int | None) -> str:
    head = _TYPE_CHAR[ptype]
    if namespace != "/":
        head += namespace + ","
    if ack_id is not None:
        head += str(ack_id)
    return head


def encode_packet(
    ptype: PacketType, namespace: str = "/", data: Any = None, ack_id: int | None = None
) -> str:
    """Encode a packet with no binary data (``data`` is encoded by msgspec, Raw as is)."""
    head = _header(ptype, namespace, ack_id)
    if data is None:
        return head
    return head + _encoder.encode(data).decode("utf-8")


_BINARY = (bytes, bytearray, memoryview)
_CONTAINERS = (list, tuple, dict)
_NEVER_BINARY = (str, msgspec.Raw)  # most arguments, with Structs: quick checks
# ``isinstance(x, msgspec.Struct)`` is the slow kind of isinstance (Struct's class has a metaclass of
# its own, which defines the check): a Struct is known by its metaclass instead.
_STRUCT_META = type(msgspec.Struct)


def has_binary(data: Any) -> bool:
    """Does ``data`` hold bytes anywhere (in lists, tuples, dicts)? Structs and Raw do not count:
    msgspec encodes them as JSON."""
    if isinstance(data, dict):
        data = data.values()
    elif not isinstance(data, (list, tuple)):
        return isinstance(data, _BINARY)
    for item in data:
        if type(type(item)) is _STRUCT_META or isinstance(item, _NEVER_BINARY):
            continue
        if isinstance(item, _BINARY) or (isinstance(item, _CONTAINERS) and has_binary(item)):
            return True
    return False


def encode_binary_packet(
    ptype: PacketType, namespace: str, data: list[Any], ack_id: int | None = None
) -> list[str | bytes]:
    """Encode a packet whose arguments hold bytes: the header message, then one per buffer.

    ``ptype`` is EVENT or ACK; the binary type is chosen here.
    """
    buffers: list[bytes] = []

    def strip(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(bytes(value))
            return {"_placeholder": True, "num": len(buffers) - 1}
        if isinstance(value, (list, tuple)):
            return [strip(x) for x in value]
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        return value

    stripped = strip(data)
    btype = _BINARY_EVENT if ptype is _EVENT else _BINARY_ACK
    head = f"{btype.value}{len(buffers)}-" + _header(btype, namespace, ack_id)[1:]
    return [head + _encoder.encode(stripped).decode("utf-8"), *buffers]


def encode_event(namespace: str, event: str, args: Iterable[Any], ack_id: int | None = None) -> list[str | bytes]:
    """An EVENT (a BINARY_EVENT if an argument holds bytes) as the Engine.IO messages that carry it."""
    data = [event, *args]
    if has_binary(data):
        return encode_binary_packet(_EVENT, namespace, data, ack_id)
    return [encode_packet(_EVENT, namespace, data, ack_id)]


def encode_ack(namespace: str, args: list[Any], ack_id: int) -> list[str | bytes]:
    """An ACK (a BINARY_ACK if an argument holds bytes) as the Engine.IO messages that carry it."""
    if has_binary(args):
        return encode_binary_packet(_ACK, namespace, args, ack_id)
    return [encode_packet(_ACK, namespace, args, ack_id)]
