"""Who is online and which calls exist: the registry interface and its in-memory implementation.

Every method is one protocol step, applied all or nothing: it checks the rules (:mod:`._state`),
moves the machines, and returns immutable snapshots of what changed so that the caller can tell the
clients. Refusals raise :class:`SignallingError` with the code the client gets. The methods are
async so that a registry shared by several nodes fits the same interface: a Redis one would make
each method one atomic step (a Lua script, or WATCH/MULTI around the same checks), keyed by user id
and call id, and keep the decisions in :mod:`._state` where this one takes them from.

The registry knows nothing of sockets, timers or the wire: a user is an id and the session id
(``socket_id``) that holds it; a call records both parties' session ids so that it reaches the sessions it
was made between, even when one of them has just been replaced.
"""

from __future__ import annotations

import hmac
from typing import Protocol

import msgspec

from ._errors import ErrorCode, SignallingError
from ._payloads import CallType
from ._state import (
    AWAY_STATES,
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    Outcome,
    Role,
    UserEvent,
    UserState,
    call_allows,
    end_event,
    transition,
)

__all__ = ["User", "Call", "Joined", "Ended", "Returned", "Registry", "MemoryRegistry"]


class User(msgspec.Struct, frozen=True, gc=False):
    id: str
    socket_id: str
    state: UserState
    call_id: str | None = None
    resume_token: str | None = None  # the secret that takes this session back from a new connection


class Call(msgspec.Struct, frozen=True, gc=False):
    id: str
    caller: str
    caller_socket: str
    callee: str
    callee_socket: str
    call_type: CallType
    state: CallState

    def role_of(self, user_id: str, socket_id: str) -> Role | None:
        if user_id == self.caller and socket_id == self.caller_socket:
            return Role.CALLER
        if user_id == self.callee and socket_id == self.callee_socket:
            return Role.CALLEE
        return None

    def peer_of(self, role: Role) -> str:
        """The other party's user id."""
        return self.callee if role is Role.CALLER else self.caller

    def socket_of(self, user_id: str) -> str:
        """The session a party takes part from."""
        return self.caller_socket if user_id == self.caller else self.callee_socket


class Joined(msgspec.Struct, frozen=True, gc=False):
    user: User
    replaced_socket: str | None = None  # the session that held the user id before, if another
    ended: Ended | None = None  # that session's call, ended with reason "replaced"


class Returned(msgspec.Struct, frozen=True, gc=False):
    user: User  # as it is now, on its new session
    previous_socket: str  # the session it came back from (the same one when recovered)
    call: Call | None  # its call, now reaching it on its new session; None if it ended meanwhile


class Ended(msgspec.Struct, frozen=True, gc=False):
    call: Call  # as it was before it ended
    outcome: Outcome
    by: str | None  # the user whose act ended it; None for a timeout or a server shutdown


class Registry(Protocol):
    """Users and calls. Each method is atomic; see the module docstring."""

    async def join(self, user_id: str, socket_id: str, resume_token: str | None = None) -> Joined:
        """``socket_id`` holds ``user_id`` from now on, taking it over (and ending its call) if another held it."""
        ...

    async def leave(self, user_id: str, socket_id: str) -> Ended | None:
        """``socket_id`` is gone: if it still holds ``user_id``, end its call (disconnected) and forget the user."""
        ...

    async def detach(self, user_id: str, socket_id: str) -> Call | None:
        """``socket_id`` lost its connection: if it holds ``user_id`` in a call, the user is RECONNECTING
        (or already was) and the call waits; returns that call. None: nothing waits for it."""
        ...

    async def reattach(self, user_id: str, socket_id: str, resume_token: str | None,
                       new_token: str | None) -> Returned | None:
        """The user comes back on ``socket_id``: recovered (``resume_token`` None: the same session,
        which must still hold it, away), or resumed from a new session with the token of the one that
        holds it (in any state). None if neither applies."""
        ...

    async def initiate(self, caller: str, socket_id: str, callee: str, call_type: CallType, call_id: str) -> Call:
        """A new call, INITIATING, with both parties IN_CALL."""
        ...

    async def ring(self, call_id: str) -> Call | None:
        """The callee has been told: RINGING. None if the call has gone meanwhile."""
        ...

    async def accept(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Call:
        """The callee accepts its ringing call: CONNECTING."""
        ...

    async def reject(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Ended:
        """The callee declines its ringing call: gone."""
        ...

    async def hang_up(self, call_id: str, user_id: str, socket_id: str) -> Ended:
        """A party ends its call: gone (cancelled, or hung up)."""
        ...

    async def time_out(self, call_id: str) -> Ended | None:
        """The ring deadline passed: gone, if it is still ringing."""
        ...

    async def relay(self, user_id: str, socket_id: str, target: str, event: CallEvent) -> Call:
        """May ``user_id`` send ``target`` this relay (OFFER, ANSWER, CANDIDATE)? The call, moved on."""
        ...

    async def end_all(self, outcome: Outcome) -> list[Ended]:
        """End every call (for a server shutdown)."""
        ...

    async def user(self, user_id: str) -> User | None: ...

    async def call(self, call_id: str) -> Call | None: ...

    async def counts(self) -> tuple[int, int]:
        """(users online, live calls)."""
        ...


def _not_found(message: str | None = None) -> SignallingError:
    return SignallingError(ErrorCode.CALL_NOT_FOUND, message)


class MemoryRegistry:
    """The registry of one process: two dicts. No method awaits anything, so each is atomic."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.calls: dict[str, Call] = {}

    # -- the users' machine ---------------------------------------------------------------------

    def _user_moves(self, user: User, event: UserEvent, call_id: str | None) -> None:
        state = transition(USER_TRANSITIONS, user.state, event)
        if state is UserState.OFFLINE:
            del self.users[user.id]
        else:
            self.users[user.id] = msgspec.structs.replace(user, state=state, call_id=call_id)

    def _holder(self, user_id: str, socket_id: str) -> User:
        user = self.users.get(user_id)
        if user is None or user.socket_id != socket_id:
            raise SignallingError(ErrorCode.NOT_JOINED)
        return user

    # -- the calls' machine ---------------------------------------------------------------------

    def _call_moves(self, call: Call, event: CallEvent) -> Call:
        state = transition(CALL_TRANSITIONS, call.state, event)
        if state is call.state:
            return call  # a relay in a live call: a move onto itself, nothing to store
        moved = msgspec.structs.replace(call, state=state)
        self.calls[call.id] = moved
        return moved

    def _end(self, call: Call, event: CallEvent, outcome: Outcome, by: str | None) -> Ended:
        """ENDING: release both parties; then CLOSE: the call is gone."""
        ending = self._call_moves(call, event)
        for party in (call.caller, call.callee):
            user = self.users.get(party)
            if user is not None and user.call_id == call.id:
                self._user_moves(user, UserEvent.CALL_END, None)
        transition(CALL_TRANSITIONS, ending.state, CallEvent.CLOSE)
        del self.calls[call.id]
        return Ended(call, outcome, by)

    def _drop(self, user: User, outcome: Outcome) -> Ended | None:
        """The user's session goes: end its call, if any, for the other party."""
        if user.call_id is None:
            return None
        return self._end(self.calls[user.call_id], CallEvent.DROP, outcome, user.id)

    # -- Registry -------------------------------------------------------------------------------

    async def join(self, user_id: str, socket_id: str, resume_token: str | None = None) -> Joined:
        current = self.users.get(user_id)
        if current is not None and current.socket_id == socket_id:
            return Joined(current)
        replaced_socket = ended = None
        if current is not None:
            replaced_socket = current.socket_id
            ended = self._drop(current, Outcome.REPLACED)
            self._user_moves(self.users[user_id], UserEvent.LEAVE, None)
        state = transition(USER_TRANSITIONS, UserState.OFFLINE, UserEvent.JOIN)
        user = self.users[user_id] = User(user_id, socket_id, state, resume_token=resume_token)
        return Joined(user, replaced_socket, ended)

    async def detach(self, user_id: str, socket_id: str) -> Call | None:
        user = self.users.get(user_id)
        if user is None or user.socket_id != socket_id or user.call_id is None:
            return None
        if user.state is not UserState.RECONNECTING:
            self._user_moves(user, UserEvent.DETACH, user.call_id)
        return self.calls[user.call_id]

    async def reattach(self, user_id: str, socket_id: str, resume_token: str | None,
                       new_token: str | None) -> Returned | None:
        user = self.users.get(user_id)
        if user is None:
            return None
        if resume_token is None:
            if user.socket_id != socket_id or user.state not in AWAY_STATES:
                return None
        elif user.resume_token is None or not hmac.compare_digest(user.resume_token, resume_token):
            return None
        previous = user.socket_id
        if user.state in AWAY_STATES:
            self._user_moves(user, UserEvent.RETURN, user.call_id)
        user = self.users[user_id] = msgspec.structs.replace(
            self.users[user_id], socket_id=socket_id, resume_token=new_token or user.resume_token
        )
        call = None if user.call_id is None else self.calls[user.call_id]
        if call is not None and previous != socket_id:
            side = "caller_socket" if call.caller == user_id else "callee_socket"
            call = self.calls[call.id] = msgspec.structs.replace(call, **{side: socket_id})
        return Returned(user, previous, call)

    async def leave(self, user_id: str, socket_id: str) -> Ended | None:
        user = self.users.get(user_id)
        if user is None or user.socket_id != socket_id:
            return None  # taken over by another session already
        ended = self._drop(user, Outcome.DISCONNECTED)
        self._user_moves(self.users[user_id], UserEvent.LEAVE, None)
        return ended

    async def initiate(self, caller: str, socket_id: str, callee: str, call_type: CallType, call_id: str) -> Call:
        from_user = self._holder(caller, socket_id)
        if callee == caller:
            raise SignallingError(ErrorCode.INVALID_TARGET)
        if from_user.state is not UserState.ONLINE:
            raise SignallingError(ErrorCode.ALREADY_IN_CALL)
        to_user = self.users.get(callee)
        if to_user is None or to_user.state is UserState.AWAY:
            raise SignallingError(ErrorCode.USER_OFFLINE)
        if to_user.state is not UserState.ONLINE:
            raise SignallingError(ErrorCode.USER_BUSY)
        call = Call(call_id, caller, socket_id, callee, to_user.socket_id, call_type, CallState.INITIATING)
        self.calls[call_id] = call
        self._user_moves(from_user, UserEvent.CALL_START, call_id)
        self._user_moves(to_user, UserEvent.CALL_START, call_id)
        return call

    async def ring(self, call_id: str) -> Call | None:
        call = self.calls.get(call_id)
        if call is None or not call_allows(call.state, CallEvent.RING, Role.SERVER):
            return None
        return self._call_moves(call, CallEvent.RING)

    def _answerable(self, call_id: str, user_id: str, socket_id: str, caller: str | None, event: CallEvent) -> Call:
        self._holder(user_id, socket_id)
        call = self.calls.get(call_id)
        if (
            call is None
            or (caller is not None and caller != call.caller)
            or not call_allows(call.state, event, call.role_of(user_id, socket_id))
        ):
            raise _not_found()
        return call

    async def accept(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Call:
        call = self._answerable(call_id, user_id, socket_id, caller, CallEvent.ACCEPT)
        return self._call_moves(call, CallEvent.ACCEPT)

    async def reject(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Ended:
        call = self._answerable(call_id, user_id, socket_id, caller, CallEvent.REJECT)
        return self._end(call, CallEvent.REJECT, Outcome.REJECTED, user_id)

    async def hang_up(self, call_id: str, user_id: str, socket_id: str) -> Ended:
        self._holder(user_id, socket_id)
        call = self.calls.get(call_id)
        role = None if call is None else call.role_of(user_id, socket_id)
        if call is None or role is None:
            raise _not_found("Call not found")
        event = end_event(call.state, role)
        if not call_allows(call.state, event, role):
            raise _not_found("Call not found")
        outcome = Outcome.CANCELLED if event is CallEvent.CANCEL else Outcome.HANGUP
        return self._end(call, event, outcome, user_id)

    async def time_out(self, call_id: str) -> Ended | None:
        call = self.calls.get(call_id)
        if call is None or not call_allows(call.state, CallEvent.TIMEOUT, Role.SERVER):
            return None
        return self._end(call, CallEvent.TIMEOUT, Outcome.TIMEOUT, None)

    async def relay(self, user_id: str, socket_id: str, target: str, event: CallEvent) -> Call:
        user = self._holder(user_id, socket_id)
        if target not in self.users:
            raise SignallingError(ErrorCode.NOT_IN_CALL, "User not found")
        call = None if user.call_id is None else self.calls[user.call_id]
        role = None if call is None else call.role_of(user_id, socket_id)
        if call is None or role is None or call.peer_of(role) != target or not call_allows(call.state, event, role):
            raise SignallingError(ErrorCode.NOT_IN_CALL)
        return self._call_moves(call, event)

    async def end_all(self, outcome: Outcome) -> list[Ended]:
        return [self._end(call, CallEvent.DROP, outcome, None) for call in list(self.calls.values())]

    async def user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def call(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    async def counts(self) -> tuple[int, int]:
        return len(self.users), len(self.calls)
