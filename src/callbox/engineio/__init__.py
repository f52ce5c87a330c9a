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
    CloseReason,
    EngineSession,
    IllegalTransition,
    PollConflict,
    SessionState,
    TransportMismatch,
)

__all__ = [
    "CloseReason",
    "EngineIOProtocolError",
    "EngineSession",
    "IllegalTransition",
    "PacketType",
    "PollConflict",
    "SessionState",
    "TransportMismatch",
    "decode_payload",
    "decode_text_packet",
    "encode_payload",
    "encode_text_packet",
]
