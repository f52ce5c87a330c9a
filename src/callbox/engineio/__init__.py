"""Engine.IO v4, sans-IO: packets, payloads and the session state machine. No I/O, no trio."""

from .packet import (
    EngineIOProtocolError,
    PacketType,
    decode_payload,
    decode_text_packet,
    encode_payload,
    encode_text_packet,
)
from .session import (
    CONNECTION_LOST,
    CloseReason,
    Effect,
    EngineSession,
    IllegalTransition,
    PollConflict,
    Sent,
    SessionState,
    TransportMismatch,
)

__all__ = [
    "CONNECTION_LOST",
    "CloseReason",
    "Effect",
    "EngineIOProtocolError",
    "EngineSession",
    "IllegalTransition",
    "PacketType",
    "PollConflict",
    "Sent",
    "SessionState",
    "TransportMismatch",
    "decode_payload",
    "decode_text_packet",
    "encode_payload",
    "encode_text_packet",
]
