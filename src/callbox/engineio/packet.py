"""Engine.IO v4 packets and polling payloads: bytes in, packets out, and back.

A packet is one ASCII type digit followed by its data. Over WebSocket a text frame holds one
packet and a binary frame is a MESSAGE with raw bytes. Over long-polling a payload joins packets
with the record separator ``\\x1e``, and a binary message travels as ``b`` + base64; so it does over
WebSocket from a client that cannot send binary frames (engine.io-client's ``forceBase64``, which
also asks, with ``b64=1``, to be sent binary that way).

Nothing here does I/O; malformed input raises :class:`EngineIOProtocolError`.
"""

from __future__ import annotations

import binascii
import enum
from base64 import b64decode, b64encode

__all__ = [
    "PacketType",
    "Packet",
    "EngineIOProtocolError",
    "decode_text_packet",
    "decode_payload",
    "encode_text_packet",
    "encode_base64_message",
    "encode_payload",
]

RECORD_SEPARATOR = "\x1e"


class EngineIOProtocolError(Exception):
    """The peer sent something that is not Engine.IO v4. The session that received it closes."""


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


# A decoded packet: its type and its data (text, or bytes for a binary message).
Packet = tuple[PacketType, str | bytes]

_TYPES = {str(t.value): t for t in PacketType}


def decode_text_packet(text: str) -> Packet:
    """Decode one text packet (a WebSocket text frame or one record of a polling payload); ``b`` +
    base64 is a binary message."""
    if not text:
        raise EngineIOProtocolError("empty packet")
    if text[0] == "b":
        try:
            return PacketType.MESSAGE, b64decode(text[1:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EngineIOProtocolError("invalid base64 in binary packet") from exc
    ptype = _TYPES.get(text[0])
    if ptype is None:
        raise EngineIOProtocolError(f"unknown packet type {text[0]!r}")
    return ptype, text[1:]


def encode_text_packet(ptype: PacketType, data: str = "") -> str:
    return f"{ptype.value}{data}"


def decode_payload(body: bytes) -> list[Packet]:
    """Decode a polling POST body: packets separated by ``\\x1e``, binary ones as ``b<base64>``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineIOProtocolError("payload is not valid UTF-8") from exc
    return [decode_text_packet(record) for record in text.split(RECORD_SEPARATOR)]


def encode_base64_message(data: bytes) -> str:
    """A binary message as text: ``b`` + base64."""
    return "b" + b64encode(data).decode("ascii")


def encode_polling_packet(packet: Packet) -> str:
    ptype, data = packet
    if isinstance(data, bytes):
        return encode_base64_message(data)  # only messages carry binary
    return f"{ptype.value}{data}"


def encode_payload(packets: list[Packet]) -> bytes:
    """Encode packets as one polling response body."""
    return RECORD_SEPARATOR.join(map(encode_polling_packet, packets)).encode("utf-8")
