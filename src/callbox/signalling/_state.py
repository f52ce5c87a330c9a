"""The user and call state machines: the rules of signalling, sans-IO.

Theory of operation
===================

Two machines, one table each, and nothing else in the package decides a transition.

A **user** is a user id held by one socket or more (its devices, up to ``max_devices``; devices come
and go without moving the user's machine, but for the first and the last). It is OFFLINE (no record
at all), ONLINE once a socket sends ``user:join``, and IN_CALL from the moment a call involving it is
created (as caller or as callee) until that call ends, when it is ONLINE again. A user leaves (its
last device went, or was taken over) only when ONLINE: a user in a call first has its call ended,
then leaves. Without a reconnect grace the user machine is a straight line, as the protocol states
it::

    OFFLINE --JOIN--> ONLINE --CALL_START--> IN_CALL --CALL_END--> ONLINE --LEAVE--> OFFLINE

With a reconnect grace, when the connection of the device that carries a user's call is lost (not
closed on purpose) the user DETACHes: RECONNECTING, its call waiting for that device. It RETURNs to
IN_CALL, or its call ends meanwhile (the peer hangs up, the ring times out) and it is ONLINE again,
with that device away until it comes back or its grace ends (a device that is away is never rung)::

    IN_CALL --DETACH--> RECONNECTING --RETURN--> IN_CALL
    RECONNECTING --CALL_END--> ONLINE

A **call** is created by ``call:initiate`` in INITIATING, with both parties already IN_CALL (so that
nobody else can call either of them meanwhile). Once the callee has been told (``call:incoming``)
it is RINGING (at every device of the callee), and the ring deadline runs. Only the callee may ACCEPT
(from one device: the first accept wins) or REJECT, and only while it rings; the callee calling the
caller back meanwhile (glare) MERGEs the two into this one, as an accept. Accepting makes it
CONNECTING, and the first ``call:answer`` relayed then makes it CONNECTED.
Relays (offer, answer, candidate) pass from RINGING on, never while INITIATING. Either party may end
it at any time: the caller ending it before it is answered is a CANCEL, anything else a HANGUP. The
server ends it on TIMEOUT (still ringing at the deadline) or DROP (a party's session went: it
disconnected, was replaced, or the server shuts down). Every end goes through ENDING, where both
parties are told and released; CLOSE then makes the call ENDED, which is gone: no record, no timer.

Who may do what is the second half of a rule: :data:`CALL_ACTORS` says which role may fire each
event; :func:`call_allows` combines both. A move the tables do not allow raises
:class:`TransitionError`: callers decide what to answer (an error code) *before* firing, so a
TransitionError escaping is a bug in callbox, never the peer's fault.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, TypeVar

from ..enums import TableEnum

__all__ = [
    "UserState",
    "UserEvent",
    "USER_TRANSITIONS",
    "CallState",
    "CallEvent",
    "Role",
    "CALL_TRANSITIONS",
    "CALL_ACTORS",
    "RELAY_EVENTS",
    "Outcome",
    "TransitionError",
    "transition",
    "call_allows",
    "end_event",
]


class TransitionError(Exception):
    """A move its machine's table does not allow (a bug in the caller: the rules were not checked)."""

    def __init__(self, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(f"{type(state).__name__}.{state.name} has no transition on {event.name}")
        self.state = state
        self.event = event


S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def transition(table: Mapping[S, Mapping[E, S]], state: S, event: E) -> S:
    """The state after ``event`` in ``state``, or :class:`TransitionError`."""
    try:
        return table[state][event]
    except KeyError:
        raise TransitionError(state, event) from None


# -- users --------------------------------------------------------------------------------------


class UserState(TableEnum):
    """Where a user id stands (``USER_TRANSITIONS``; protocol/signalling.md, State machines)."""

    OFFLINE = "offline"
    ONLINE = "online"
    IN_CALL = "in_call"
    RECONNECTING = "reconnecting"  # the connection of its device in the call was lost; the call waits


class UserEvent(TableEnum):
    """What moves a user's machine."""

    JOIN = "join"  # user:join from a socket
    CALL_START = "call_start"  # a call involving the user was created (either side)
    CALL_END = "call_end"  # that call ended, however
    LEAVE = "leave"  # its last device went (closed, taken over, or its grace ended)
    DETACH = "detach"  # its device in the call lost its connection (with a reconnect grace)
    RETURN = "return"  # that device came back within the grace (recovered, or resumed with its token)


USER_TRANSITIONS: Final[Mapping[UserState, Mapping[UserEvent, UserState]]] = {
    UserState.OFFLINE: {UserEvent.JOIN: UserState.ONLINE},
    UserState.ONLINE: {UserEvent.CALL_START: UserState.IN_CALL, UserEvent.LEAVE: UserState.OFFLINE},
    UserState.IN_CALL: {UserEvent.CALL_END: UserState.ONLINE, UserEvent.DETACH: UserState.RECONNECTING},
    UserState.RECONNECTING: {UserEvent.RETURN: UserState.IN_CALL, UserEvent.CALL_END: UserState.ONLINE},
}


# -- calls --------------------------------------------------------------------------------------


class CallState(TableEnum):
    """Where a call stands (``CALL_TRANSITIONS``)."""

    INITIATING = "initiating"
    RINGING = "ringing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    ENDING = "ending"
    ENDED = "ended"


class CallEvent(TableEnum):
    """What moves a call's machine; ``CALL_ACTORS`` says who may make each move."""

    RING = "ring"  # the callee was sent call:incoming
    ACCEPT = "accept"
    MERGE = "merge"  # glare: the callee called the caller back while it rang; that answers it
    REJECT = "reject"
    OFFER = "offer"  # relays
    ANSWER = "answer"
    CANDIDATE = "candidate"
    CANCEL = "cancel"  # call:end by the caller before the call was answered
    HANGUP = "hangup"  # any other call:end
    TIMEOUT = "timeout"  # still ringing at the deadline
    DROP = "drop"  # a party's session went (disconnected, replaced) or the server shuts down
    CLOSE = "close"  # both parties told and released: the call is gone


class Role(TableEnum):
    """Who makes a move of a call: one of its parties, or the server (a timer)."""

    CALLER = "caller"
    CALLEE = "callee"
    SERVER = "server"


_S = CallState
_E = CallEvent

CALL_TRANSITIONS: Final[Mapping[CallState, Mapping[CallEvent, CallState]]] = {
    _S.INITIATING: {
        _E.RING: _S.RINGING,
        _E.CANCEL: _S.ENDING,
        _E.HANGUP: _S.ENDING,
        _E.DROP: _S.ENDING,
    },
    _S.RINGING: {
        _E.ACCEPT: _S.CONNECTING,
        _E.MERGE: _S.CONNECTING,
        _E.REJECT: _S.ENDING,
        _E.OFFER: _S.RINGING,
        _E.ANSWER: _S.RINGING,
        _E.CANDIDATE: _S.RINGING,
        _E.CANCEL: _S.ENDING,
        _E.HANGUP: _S.ENDING,
        _E.TIMEOUT: _S.ENDING,
        _E.DROP: _S.ENDING,
    },
    _S.CONNECTING: {
        _E.OFFER: _S.CONNECTING,
        _E.ANSWER: _S.CONNECTED,
        _E.CANDIDATE: _S.CONNECTING,
        _E.HANGUP: _S.ENDING,
        _E.DROP: _S.ENDING,
    },
    _S.CONNECTED: {
        _E.OFFER: _S.CONNECTED,  # renegotiation
        _E.ANSWER: _S.CONNECTED,
        _E.CANDIDATE: _S.CONNECTED,
        _E.HANGUP: _S.ENDING,
        _E.DROP: _S.ENDING,
    },
    _S.ENDING: {_E.CLOSE: _S.ENDED},
    _S.ENDED: {},
}

_PARTIES = frozenset({Role.CALLER, Role.CALLEE})

CALL_ACTORS: Final[Mapping[CallEvent, frozenset[Role]]] = {
    _E.RING: frozenset({Role.SERVER}),
    _E.ACCEPT: frozenset({Role.CALLEE}),
    _E.MERGE: frozenset({Role.CALLEE}),
    _E.REJECT: frozenset({Role.CALLEE}),
    _E.OFFER: _PARTIES,
    _E.ANSWER: _PARTIES,
    _E.CANDIDATE: _PARTIES,
    _E.CANCEL: frozenset({Role.CALLER}),
    _E.HANGUP: _PARTIES,
    _E.TIMEOUT: frozenset({Role.SERVER}),
    _E.DROP: frozenset({Role.SERVER}),
    _E.CLOSE: frozenset({Role.SERVER}),
}

RELAY_EVENTS: Final = frozenset({_E.OFFER, _E.ANSWER, _E.CANDIDATE})


def call_allows(state: CallState, event: CallEvent, role: Role | None) -> bool:
    """Whether ``role`` may fire ``event`` on a call in ``state`` (``None``: not a party)."""
    return role is not None and role in CALL_ACTORS[event] and event in CALL_TRANSITIONS[state]


def end_event(state: CallState, role: Role) -> CallEvent:
    """What ``call:end`` from ``role`` is: the caller ending an unanswered call cancels it."""
    if role is Role.CALLER and state in (CallState.INITIATING, CallState.RINGING):
        return CallEvent.CANCEL
    return CallEvent.HANGUP


class Outcome(enum.Enum):
    """How a call ended. The first five are ``call:ended``'s ``reason``; a rejected call is told
    with ``call:rejected`` and a timed-out one with ``call:timeout``."""

    HANGUP = "hangup"
    CANCELLED = "cancelled"
    DISCONNECTED = "disconnected"
    REPLACED = "replaced"
    SERVER_SHUTDOWN = "server_shutdown"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
