"""A fake transport for driving the signalling service directly (no sockets): sessions by id, each
with the events it was sent, as JSON."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import trio

import callbox
from callbox.signalling import MemoryRegistry, Session, Signalling

RING = 30.0


class Harness:
    """A fake transport: sessions by socket_id, each with the events it was sent, as JSON text."""

    def __init__(self, nursery: trio.Nursery, config: callbox.Config | None = None) -> None:
        self.nursery = nursery
        self.config = config or callbox.Config(ring_timeout=RING)
        self.registry = MemoryRegistry()
        self.service = Signalling(self, self.registry, lambda: self.config)
        self.sessions: dict[str, Session] = {}
        self.inbox: dict[str, list[tuple[str, bytes]]] = {}
        self.disconnected: list[str] = []
        self._n = 0

    # Transport
    def send(self, socket_id: str, event: str, payload: msgspec.Struct) -> bool:
        if socket_id not in self.sessions:
            return False
        self.inbox[socket_id].append((event, msgspec.json.encode(payload)))
        return True

    async def disconnect(self, socket_id: str) -> None:
        session = self.sessions.pop(socket_id, None)
        if session is not None:
            self.disconnected.append(socket_id)
            await self.service.closed(session)

    def start_soon(self, fn: Any, *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    # driving it
    def connect(self) -> Session:
        self._n += 1
        session = Session(f"s{self._n}")
        self.sessions[session.socket_id] = session
        self.inbox[session.socket_id] = []
        return session

    async def emit(self, session: Session, event: str, payload: Any = None, *, ack: bool = False) -> dict[str, Any]:
        """Send ``payload`` (JSON-encoded; bytes as they are; ``...`` for no argument); the ack, as JSON."""
        if payload is ...:
            args: list[object] = []
        elif isinstance(payload, bytes):
            args = [msgspec.Raw(payload)]
        else:
            args = [msgspec.Raw(msgspec.json.encode(payload))]
        result = await self.service.handle(session, event, args, ack=ack)
        decoded: dict[str, Any] = json.loads(msgspec.json.encode(result))
        return decoded

    async def join(self, user_id: str) -> Session:
        session = self.connect()
        assert (await self.emit(session, "user:join", {"userId": user_id}))["ok"]
        self.take(session)
        return session

    async def leave(self, session: Session) -> None:
        """The session's connection closes on purpose (the client's disconnect, a close frame)."""
        del self.sessions[session.socket_id]
        await self.service.closed(session)

    async def lose(self, session: Session) -> None:
        """The session's connection is lost without a goodbye (a blip, a dead peer)."""
        del self.sessions[session.socket_id]
        await self.service.closed(session, lost=True)

    async def recover(self, session: Session) -> None:
        """The lost session's connection comes back (a recovered Socket.IO socket)."""
        self.sessions[session.socket_id] = session
        await self.service.returned(session)

    def take_raw(self, session: Session) -> list[tuple[str, bytes]]:
        events, self.inbox[session.socket_id] = self.inbox[session.socket_id], []
        return events

    def take(self, session: Session) -> list[tuple[str, Any]]:
        return [(event, json.loads(body)) for event, body in self.take_raw(session)]

    async def ringing_call(self, caller: Session, callee: Session, call_type: str = "video") -> str:
        callee_id = callee.user_id
        ack = await self.emit(caller, "call:initiate", {"to": callee_id, "callType": call_type})
        assert ack["ok"], ack
        self.take(caller)
        self.take(callee)
        call_id: str = ack["callId"]
        return call_id

    async def live_call(self, caller: Session, callee: Session) -> str:
        call_id = await self.ringing_call(caller, callee)
        assert (await self.emit(callee, "call:accept", {"callId": call_id, "from": caller.user_id}))["ok"]
        self.take(caller)
        self.take(callee)
        return call_id

    def idle(self) -> bool:
        return not self.registry.users and not self.registry.calls and not self.service.timers


class _Token:
    """Any resume token (user:joined carries a new one for each connection when there is a grace)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) >= 16

    def __repr__(self) -> str:
        return "<resume token>"


TOKEN: Any = _Token()
