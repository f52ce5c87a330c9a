"""Error codes: the stable machine values clients switch on, and the sentences that go with them."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ErrorCode", "SignallingError", "DEFAULT_MESSAGES"]


class ErrorCode(enum.StrEnum):
    """The code of a refusal, in an ack {ok: false, code, message} or an error event."""

    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    NOT_JOINED = "NOT_JOINED"
    ALREADY_JOINED = "ALREADY_JOINED"
    SESSION_REPLACED = "SESSION_REPLACED"
    USER_OFFLINE = "USER_OFFLINE"
    USER_BUSY = "USER_BUSY"
    ALREADY_IN_CALL = "ALREADY_IN_CALL"
    INVALID_TARGET = "INVALID_TARGET"
    CALL_NOT_FOUND = "CALL_NOT_FOUND"
    NOT_IN_CALL = "NOT_IN_CALL"
    RATE_LIMITED = "RATE_LIMITED"
    UNAUTHORIZED = "UNAUTHORIZED"
    PEER_QUEUE_FULL = "PEER_QUEUE_FULL"
    UNAVAILABLE = "UNAVAILABLE"


# The seed server's sentences are kept where they apply ("User not available", "Call not found or
# expired", ...): existing client apps may show them.
DEFAULT_MESSAGES: Final[dict[ErrorCode, str]] = {
    ErrorCode.INVALID_PAYLOAD: "Invalid payload",
    ErrorCode.NOT_JOINED: "Join first with user:join",
    ErrorCode.ALREADY_JOINED: "This connection has already joined as another user",
    ErrorCode.SESSION_REPLACED: "This user joined from another connection",
    ErrorCode.USER_OFFLINE: "User not available",
    ErrorCode.USER_BUSY: "User not available",
    ErrorCode.ALREADY_IN_CALL: "You are already in a call",
    ErrorCode.INVALID_TARGET: "You cannot call yourself",
    ErrorCode.CALL_NOT_FOUND: "Call not found or expired",
    ErrorCode.NOT_IN_CALL: "You are not in a call with this user",
    ErrorCode.RATE_LIMITED: "Too many calls started, try again later",
    ErrorCode.UNAUTHORIZED: "Your token is for another user",
    ErrorCode.PEER_QUEUE_FULL: "The other party is reconnecting and too much is waiting for it",
    ErrorCode.UNAVAILABLE: "The server cannot reach its shared state; nothing was done, try again",
}


class SignallingError(Exception):
    """A request refused: the sender gets ``code`` and ``message`` (as an ack or an ``error`` event)."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = code
        self.message = DEFAULT_MESSAGES[code] if message is None else message
        super().__init__(f"{code}: {self.message}")
