"""Who is online and which calls exist: the registry interface and its in-memory implementation.

Every method is one protocol step, applied all or nothing: it checks the rules (:mod:`._state`),
moves the machines, and returns immutable snapshots of what changed so that the caller can tell the
clients. Refusals raise :class:`SignallingError` with the code the client gets. The methods are
async so that a registry shared by several nodes fits the same interface: a Redis one would make
each method one atomic step (a Lua script, or WATCH/MULTI around the same checks), keyed by user id
and call id, and keep the decisions in :mod:`._state` where this one takes them from.

The registry knows nothing of sockets, timers or the wire: a user is an id and its **devices**, each
a session id (``socket_id``) with the device id the client chose; a call records the caller's
device, the callee's devices it rings and, once answered, the one that answered, so that it reaches
the sessions it was made between, even when one of them has just been replaced.

At most ``max_devices`` devices hold a user id; at most one of them takes part in the user's call
(the caller's device, or the callee's answering device). While a call rings, every device of the
callee is rung; the first accept wins, atomically, because each method here is one step.
"""

from __future__ import annotations

import hmac
from typing import Protocol

import msgspec

from ._errors import ErrorCode, SignallingError
from ._payloads import CallType
from ._state import (
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

__all__ = [
    "Device", "User", "Call", "Joined", "Ended", "Accepted", "Returned", "Registry", "RegistryUnavailable",
    "MemoryRegistry",
]


# The roles a relay's checks compare with, as module names (why: callbox/enums.py).
_CALLER, _CALLEE = Role.CALLER, Role.CALLEE


class RegistryUnavailable(Exception):
    """A shared registry's store failed or did not answer in time: the step may not have been
    applied. The request it served is refused (``UNAVAILABLE``); nothing falls back to local state."""


class Device(msgspec.Struct, frozen=True, gc=False):
    socket_id: str
    device_id: str
    active: int  # when it last joined or acted on a call (the registry's own count): who is replaced first
    resume_token: str | None = None  # the secret that takes this device's session back from a new connection
    away: bool = False  # its connection was lost; its reconnect grace runs


class User(msgspec.Struct, frozen=True, gc=False):
    id: str
    state: UserState
    devices: tuple[Device, ...]
    call_id: str | None = None

    def device(self, socket_id: str) -> Device | None:
        """Its device on session ``socket_id``, if it has one there."""
        for device in self.devices:
            if device.socket_id == socket_id:
                return device
        return None

    @property
    def reachable(self) -> bool:
        """Whether a device of it is connected (one that is away cannot be rung)."""
        return any(not d.away for d in self.devices)


class Call(msgspec.Struct, frozen=True, gc=False):
    id: str
    caller: str
    caller_socket: str
    callee: str
    callee_socket: str | None  # the device that answered; None while it rings
    ringing: tuple[str, ...]  # the callee's devices rung (all of them, as they come) until it is answered
    call_type: CallType
    state: CallState

    def role_of(self, user_id: str, socket_id: str) -> Role | None:
        """The role ``user_id`` on session ``socket_id`` has in the call (None: none)."""
        if user_id == self.caller and socket_id == self.caller_socket:
            return _CALLER
        if user_id == self.callee and (
            socket_id == self.callee_socket if self.callee_socket is not None else socket_id in self.ringing
        ):
            return _CALLEE
        return None

    def peer_of(self, role: Role) -> str:
        """The other party's user id."""
        return self.callee if role is _CALLER else self.caller

    def sockets_of(self, user_id: str) -> tuple[str, ...]:
        """The sessions a party takes part from: the caller's device; the answering device, or every
        device it rings."""
        if user_id == self.caller:
            return (self.caller_socket,)
        return (self.callee_socket,) if self.callee_socket is not None else self.ringing

    def carrier(self, user_id: str) -> str | None:
        """The device a party is in the call from (None while it rings at the callee's devices)."""
        return self.caller_socket if user_id == self.caller else self.callee_socket

    @property
    def parties(self) -> tuple[str, ...]:
        """Every session the call reaches."""
        return (self.caller_socket, *self.sockets_of(self.callee))


class Joined(msgspec.Struct, frozen=True, gc=False):
    user: User
    replaced_socket: str | None = None  # the session that held this device (or the one replaced past max_devices)
    ended: Ended | None = None  # that session's call, ended with reason "replaced"
    ringing: Call | None = None  # the user's call that rings: this new device rings too


class Accepted(msgspec.Struct, frozen=True, gc=False):
    call: Call  # answered: CONNECTING, its callee_socket the device that answered
    elsewhere: tuple[str, ...]  # the callee's other devices that were ringing


class Returned(msgspec.Struct, frozen=True, gc=False):
    user: User  # as it is now
    socket_id: str  # the session the device came back on
    previous_socket: str  # the session it came back from (the same one when recovered)
    call: Call | None  # its call, now reaching it on its new session; None if it ended meanwhile


class Ended(msgspec.Struct, frozen=True, gc=False):
    call: Call  # as it was before it ended
    outcome: Outcome
    by: str | None  # the user whose act ended it; None for a timeout or a server shutdown
    device: str | None = None  # the session of ``by`` that ended it (a reject: its other devices are told apart)


class Registry(Protocol):
    """Users and calls. Each method is atomic; see the module docstring."""

    async def join(self, user_id: str, socket_id: str, device_id: str | None = None, max_devices: int = 1,
                   resume_token: str | None = None) -> Joined:
        """``socket_id`` holds ``user_id`` from now on as device ``device_id`` (by default, its own): it
        replaces the session of that device, or (past ``max_devices``) the least recently active
        device not in a call; a replaced device's call ends."""
        ...

    async def leave(self, user_id: str, socket_id: str, away_only: bool = False) -> Ended | None:
        """``socket_id`` is gone: if it is a device of ``user_id``, it goes; its call ends (disconnected)
        if it took part in it (or was the only device rung); the user goes when its last device does.
        ``away_only``: only if that device is away (its grace passed; it did not come back meanwhile)."""
        ...

    async def detach(self, user_id: str, socket_id: str) -> Call | None:
        """``socket_id`` lost its connection: if it is the device of ``user_id`` in its call, the device is
        away, the user RECONNECTING (or already was) and the call waits; returns that call. None:
        nothing waits for it (the caller makes it leave)."""
        ...

    async def reattach(self, user_id: str, socket_id: str, resume_token: str | None,
                       new_token: str | None) -> Returned | None:
        """A device comes back on ``socket_id``: recovered (``resume_token`` None: the same session, away),
        or resumed from a new session with the token of one of the user's devices (in any state).
        None if neither applies."""
        ...

    async def initiate(self, caller: str, socket_id: str, callee: str, call_type: CallType,
                       call_id: str) -> Call | Accepted:
        """A new call, INITIATING, with both parties IN_CALL, ringing every device of the callee. Glare:
        if the callee's call to the caller rings at this device, that call is answered by it instead
        (an :class:`Accepted`)."""
        ...

    async def ring(self, call_id: str) -> Call | None:
        """The callee has been told: RINGING. None if the call has gone meanwhile."""
        ...

    async def accept(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Accepted:
        """A device of the callee accepts its ringing call: CONNECTING, the call that device's alone."""
        ...

    async def reject(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Ended:
        """A device of the callee declines its ringing call: gone, for every device."""
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

    async def user(self, user_id: str) -> User | None:
        """The user, if online."""
        ...

    async def call(self, call_id: str) -> Call | None:
        """The call, if it goes on."""
        ...

    async def counts(self) -> tuple[int, int]:
        """(users online, live calls)."""
        ...


def _not_found(message: str | None = None) -> SignallingError:
    return SignallingError(ErrorCode.CALL_NOT_FOUND, message)


def _replace_device(user: User, which: str, **changes: object) -> tuple[Device, ...]:
    """The user's devices, the one on session ``which`` changed."""
    return tuple(msgspec.structs.replace(d, **changes) if d.socket_id == which else d for d in user.devices)


class MemoryRegistry(Registry):
    """The registry of one process: two dicts. No method awaits anything, so each is atomic."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.calls: dict[str, Call] = {}
        self._clock = 0  # counts device activity, for "least recently active"

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # -- the users' machine ---------------------------------------------------------------------

    def _user_moves(self, user: User, event: UserEvent, call_id: str | None) -> None:
        state = transition(USER_TRANSITIONS, user.state, event)
        if state is UserState.OFFLINE:
            del self.users[user.id]
        else:
            self.users[user.id] = msgspec.structs.replace(user, state=state, call_id=call_id)

    def _holder(self, user_id: str, socket_id: str) -> User:
        user = self.users.get(user_id)
        if user is None or user.device(socket_id) is None:
            raise SignallingError(ErrorCode.NOT_JOINED)
        return user

    def _touch(self, user: User, socket_id: str) -> None:
        self.users[user.id] = msgspec.structs.replace(
            user, devices=_replace_device(user, socket_id, active=self._tick())
        )

    # -- the calls' machine ---------------------------------------------------------------------

    def _call_moves(self, call: Call, event: CallEvent, **changes: object) -> Call:
        state = transition(CALL_TRANSITIONS, call.state, event)
        if state is call.state and not changes:
            return call  # a relay in a live call: a move onto itself, nothing to store
        moved = msgspec.structs.replace(call, state=state, **changes)
        self.calls[call.id] = moved
        return moved

    def _end(self, call: Call, event: CallEvent, outcome: Outcome, by: str | None,
             device: str | None = None) -> Ended:
        """ENDING: release both parties; then CLOSE: the call is gone."""
        ending = self._call_moves(call, event)
        for party in (call.caller, call.callee):
            user = self.users.get(party)
            if user is not None and user.call_id == call.id:
                self._user_moves(user, UserEvent.CALL_END, None)
        transition(CALL_TRANSITIONS, ending.state, CallEvent.CLOSE)
        del self.calls[call.id]
        return Ended(call, outcome, by, device)

    def _takes_part(self, user: User, socket_id: str) -> Call | None:
        """The user's call, if this device carries it for the user (or is the only one it rings)."""
        if user.call_id is None:
            return None
        call = self.calls[user.call_id]
        sockets = call.sockets_of(user.id)
        return call if sockets == (socket_id,) else None

    def _remove_device(self, user: User, socket_id: str, outcome: Outcome) -> Ended | None:
        """The device goes: its call ends if it carried it; the user goes with its last device."""
        ended = None
        call = self._takes_part(user, socket_id)
        if call is not None:
            ended = self._end(call, CallEvent.DROP, outcome, user.id, socket_id)
        elif user.call_id is not None:
            rung = self.calls[user.call_id]
            if socket_id in rung.ringing:
                self.calls[rung.id] = msgspec.structs.replace(
                    rung, ringing=tuple(s for s in rung.ringing if s != socket_id)
                )
        user = self.users[user.id]
        devices = tuple(d for d in user.devices if d.socket_id != socket_id)
        if devices:
            self.users[user.id] = msgspec.structs.replace(user, devices=devices)
        else:
            self._user_moves(user, UserEvent.LEAVE, None)
        return ended

    # -- Registry -------------------------------------------------------------------------------

    async def join(self, user_id: str, socket_id: str, device_id: str | None = None, max_devices: int = 1,
                   resume_token: str | None = None) -> Joined:
        current = self.users.get(user_id)
        if device_id is None:
            device_id = socket_id
        device = Device(socket_id, device_id, self._tick(), resume_token)
        if current is None:
            state = transition(USER_TRANSITIONS, UserState.OFFLINE, UserEvent.JOIN)
            user = self.users[user_id] = User(user_id, state, (device,))
            return Joined(user)
        if current.device(socket_id) is not None:
            return Joined(current)
        replaced = next((d for d in current.devices if d.device_id == device_id), None)
        if replaced is None and len(current.devices) >= max_devices:
            # The least recently active device not in a call (ringing is not being in it): with one
            # device allowed, that one, in a call or not.
            carrier = self.calls[current.call_id].carrier(user_id) if current.call_id else None
            spare = [d for d in current.devices if d.socket_id != carrier or max_devices == 1]
            replaced = min(spare, key=lambda d: d.active)
        ended = None
        if replaced is not None:
            if len(current.devices) == 1:
                # The user's only device is replaced: it leaves first (its call, if any, ends).
                ended = self._remove_device(current, replaced.socket_id, Outcome.REPLACED)
                state = transition(USER_TRANSITIONS, UserState.OFFLINE, UserEvent.JOIN)
                user = self.users[user_id] = User(user_id, state, (device,))
                return Joined(user, replaced.socket_id, ended)
            ended = self._remove_device(current, replaced.socket_id, Outcome.REPLACED)
            current = self.users[user_id]
        user = self.users[user_id] = msgspec.structs.replace(current, devices=(*current.devices, device))
        ringing = None
        if user.call_id is not None:
            call = self.calls[user.call_id]
            if call.callee == user_id and call.callee_socket is None:  # it rings: the new device too
                ringing = self.calls[call.id] = msgspec.structs.replace(call, ringing=(*call.ringing, socket_id))
        return Joined(user, None if replaced is None else replaced.socket_id, ended, ringing)

    async def leave(self, user_id: str, socket_id: str, away_only: bool = False) -> Ended | None:
        user = self.users.get(user_id)
        device = None if user is None else user.device(socket_id)
        if user is None or device is None or (away_only and not device.away):
            return None  # taken over by another session already (or back)
        return self._remove_device(user, socket_id, Outcome.DISCONNECTED)

    async def detach(self, user_id: str, socket_id: str) -> Call | None:
        user = self.users.get(user_id)
        if user is None or user.device(socket_id) is None:
            return None
        call = self._takes_part(user, socket_id)
        if call is None:
            return None
        if user.state is not UserState.RECONNECTING:
            self._user_moves(user, UserEvent.DETACH, user.call_id)
            user = self.users[user_id]
        self.users[user_id] = msgspec.structs.replace(user, devices=_replace_device(user, socket_id, away=True))
        return call

    async def reattach(self, user_id: str, socket_id: str, resume_token: str | None,
                       new_token: str | None) -> Returned | None:
        user = self.users.get(user_id)
        if user is None:
            return None
        if resume_token is None:
            device = user.device(socket_id)
            if device is None or not device.away:
                return None
        else:
            device = next((d for d in user.devices if d.resume_token is not None
                           and hmac.compare_digest(d.resume_token, resume_token)), None)
            if device is None:
                return None
        previous = device.socket_id
        call = self._takes_part(user, previous)
        if user.state is UserState.RECONNECTING and call is not None:
            self._user_moves(user, UserEvent.RETURN, user.call_id)
            user = self.users[user_id]
        devices = _replace_device(user, previous, socket_id=socket_id, away=False,
                                  resume_token=new_token or device.resume_token, active=self._tick())
        user = self.users[user_id] = msgspec.structs.replace(user, devices=devices)
        if call is not None and previous != socket_id:
            if call.caller == user_id:
                call = self._moved(call, caller_socket=socket_id)
            elif call.callee_socket is not None:
                call = self._moved(call, callee_socket=socket_id)
            else:
                call = self._moved(call, ringing=tuple(socket_id if s == previous else s for s in call.ringing))
        return Returned(user, socket_id, previous, call)

    def _moved(self, call: Call, **changes: object) -> Call:
        """The call reaches a party on another session (no move of its machine)."""
        moved = self.calls[call.id] = msgspec.structs.replace(call, **changes)
        return moved

    async def initiate(self, caller: str, socket_id: str, callee: str, call_type: CallType,
                       call_id: str) -> Call | Accepted:
        from_user = self._holder(caller, socket_id)
        if callee == caller:
            raise SignallingError(ErrorCode.INVALID_TARGET)
        if from_user.state is not UserState.ONLINE:
            glare = self.calls.get(from_user.call_id or "")
            if (glare is not None and glare.caller == callee and glare.callee == caller
                    and socket_id in glare.ringing and call_allows(glare.state, CallEvent.MERGE, Role.CALLEE)):
                return self._answer(glare, caller, socket_id, CallEvent.MERGE)
            raise SignallingError(ErrorCode.ALREADY_IN_CALL)
        to_user = self.users.get(callee)
        if to_user is None:
            raise SignallingError(ErrorCode.USER_OFFLINE)
        if to_user.state is not UserState.ONLINE:
            raise SignallingError(ErrorCode.USER_BUSY)  # its call rings, goes on, or waits for it
        if not to_user.reachable:
            raise SignallingError(ErrorCode.USER_OFFLINE)  # nobody rings a device whose connection is gone
        rung = tuple(d.socket_id for d in to_user.devices if not d.away)
        call = Call(call_id, caller, socket_id, callee, None, rung, call_type, CallState.INITIATING)
        self.calls[call_id] = call
        self._touch(from_user, socket_id)
        self._user_moves(self.users[caller], UserEvent.CALL_START, call_id)
        self._user_moves(to_user, UserEvent.CALL_START, call_id)
        return call

    def _answer(self, call: Call, user_id: str, socket_id: str, event: CallEvent) -> Accepted:
        elsewhere = tuple(s for s in call.ringing if s != socket_id)
        user = self.users[user_id]
        if user.state is UserState.RECONNECTING:
            # The call rang at a device that is away; another one answers: the user is back in it.
            self._user_moves(user, UserEvent.RETURN, user.call_id)
        self._touch(self.users[user_id], socket_id)
        return Accepted(self._call_moves(call, event, callee_socket=socket_id, ringing=()), elsewhere)

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

    async def accept(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Accepted:
        call = self._answerable(call_id, user_id, socket_id, caller, CallEvent.ACCEPT)
        return self._answer(call, user_id, socket_id, CallEvent.ACCEPT)

    async def reject(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Ended:
        call = self._answerable(call_id, user_id, socket_id, caller, CallEvent.REJECT)
        self._touch(self.users[user_id], socket_id)
        return self._end(call, CallEvent.REJECT, Outcome.REJECTED, user_id, socket_id)

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
        self._touch(self.users[user_id], socket_id)
        return self._end(call, event, outcome, user_id, socket_id)

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
