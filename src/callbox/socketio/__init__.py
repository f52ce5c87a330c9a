"""Socket.IO v5, sans-IO: the packet codec and binary reassembly. No I/O, no trio."""

from .packet import (
    MAX_ACK_ID_DIGITS,
    MAX_ATTACHMENTS,
    MAX_NAMESPACE_LENGTH,
    RESERVED_EVENTS,
    Decoder,
    Packet,
    PacketType,
    SocketIOProtocolError,
    encode_binary_packet,
    encode_packet,
    has_binary,
)

__all__ = [
    "MAX_ACK_ID_DIGITS",
    "MAX_ATTACHMENTS",
    "MAX_NAMESPACE_LENGTH",
    "RESERVED_EVENTS",
    "Decoder",
    "Packet",
    "PacketType",
    "SocketIOProtocolError",
    "encode_binary_packet",
    "encode_packet",
    "has_binary",
]
