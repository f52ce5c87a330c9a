"""WebRTC call signalling on the Socket.IO API: users, calls, relays, ring timeouts.

- :func:`create_app` / :func:`install`: the signalling protocol on a :class:`callbox.SocketIO` app;
- :class:`Signalling`: the service itself, over any :class:`Transport`;
- :class:`Registry` (interface) and :class:`MemoryRegistry` (the default): who is online, which calls;
- the state machines (:mod:`._state`), the payload types and the error codes.

The protocol is documented in ``protocol/signalling.md``.
"""

from __future__ import annotations

from ._app import create_app, install
from ._errors import ErrorCode, SignallingError
from ._registry import Call, Ended, Joined, MemoryRegistry, Registry, User
from ._service import Session, Signalling, Transport
from ._state import (
    CALL_ACTORS,
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    Outcome,
    Role,
    TransitionError,
    UserEvent,
    UserState,
)

__all__ = [
    "CALL_ACTORS",
    "CALL_TRANSITIONS",
    "USER_TRANSITIONS",
    "Call",
    "CallEvent",
    "CallState",
    "Ended",
    "ErrorCode",
    "Joined",
    "MemoryRegistry",
    "Outcome",
    "Registry",
    "Role",
    "Session",
    "Signalling",
    "SignallingError",
    "TransitionError",
    "Transport",
    "User",
    "UserEvent",
    "UserState",
    "create_app",
    "install",
]
