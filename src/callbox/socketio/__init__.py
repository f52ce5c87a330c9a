"""Socket.IO v5, sans-IO: the packet codec, binary reassembly, and one session's state (namespaces,
acks, the connect deadline). No I/O, no trio."""

from .packet import (
    MAX_ACK_ID_DIGITS,
    MAX_ATTACHMENTS,
    MAX_NAMESPACE_LENGTH,
    RESERVED_EVENTS,
    Decoder,
    Packet,
    PacketType,
    SocketIOProtocolError,
    encode_ack,
    encode_binary_packet,
    encode_event,
    encode_packet,
    has_binary,
)
from .session import SocketIOSession

__all__ = [
    "MAX_ACK_ID_DIGITS",
    "MAX_ATTACHMENTS",
    "MAX_NAMESPACE_LENGTH",
    "RESERVED_EVENTS",
    "Decoder",
    "Packet",
    "PacketType",
    "SocketIOProtocolError",
    "SocketIOSession",
    "encode_ack",
    "encode_binary_packet",
    "encode_event",
    "encode_packet",
    "has_binary",
]
