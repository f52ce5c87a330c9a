"""Emitting to many sockets, and acting on them, by room: Node's ``io.to(...).except(...)``.

A :class:`Broadcast` names a set of sockets of one namespace: those in any of its rooms (every
socket, with no room given), minus those in any excluded room. Every socket is also in a room named
by its own id, so a socket id is a room too. It is immutable: ``to``, ``except_`` and ``timeout``
return new ones, so one can be kept and reused.

The operations that act on the sockets (:meth:`Broadcast.fetch_sockets`, :meth:`sockets_join`,
:meth:`sockets_leave`, :meth:`disconnect_sockets`) and :meth:`Broadcast.emit_with_ack` are async
even though, on one node, they act at once: with several nodes they will have to ask the others,
and the API stays the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from ..socketio import encode_event

if TYPE_CHECKING:
    from .api import Namespace, Socket

__all__ = ["Broadcast"]


def _names(rooms: Iterable[str | Iterable[str]]) -> frozenset[str]:
    out: set[str] = set()
    for room in rooms:
        if isinstance(room, str):
            out.add(room)
        else:
            out.update(room)
    return frozenset(out)


class Broadcast:
    """Sockets of ``namespace`` in any of ``rooms`` (all, if none) and in none of ``excluded``."""

    __slots__ = ("namespace", "rooms", "excluded", "seconds")

    def __init__(self, namespace: Namespace, rooms: frozenset[str] = frozenset(),
                 excluded: frozenset[str] = frozenset(), seconds: float | None = None) -> None:
        self.namespace = namespace
        self.rooms = rooms
        self.excluded = excluded
        self.seconds = seconds

    def to(self, *rooms: str | Iterable[str]) -> Broadcast:
        """Also the sockets in these rooms (a room name, or several)."""
        return Broadcast(self.namespace, self.rooms | _names(rooms), self.excluded, self.seconds)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> Broadcast:
        """But not the sockets in these rooms."""
        return Broadcast(self.namespace, self.rooms, self.excluded | _names(rooms), self.seconds)

    def timeout(self, seconds: float) -> Broadcast:
        """How long :meth:`emit_with_ack` waits for the answers."""
        return Broadcast(self.namespace, self.rooms, self.excluded, seconds)

    def targets(self) -> list[Socket]:
        """The sockets this names, now (this node's); of a parent namespace, its children's."""
        if self.namespace.is_parent:
            found: list[Socket] = []
            for child in list(self.namespace.children.values()):
                found.extend(Broadcast(child, self.rooms, self.excluded, self.seconds).targets())
            return found
        ns = self.namespace
        if self.rooms:
            chosen: dict[str, Socket] = {}
            for room in self.rooms:
                members = ns.rooms.get(room)
                if members:
                    chosen.update((s.id, s) for s in members)
                elif (own := ns.sockets.get(room)) is not None:  # a socket id is a room of one
                    chosen[own.id] = own
            found = list(chosen.values())
        else:
            found = list(ns.sockets.values())
        if not self.excluded:
            return found
        out: set[str] = set()
        for room in self.excluded:
            out.update(s.id for s in ns.rooms.get(room, ()))
            if room in ns.sockets:
                out.add(room)
        return [s for s in found if s.id not in out]

    def emit(self, event: str, *args: Any) -> int:
        """Send to each; encoded once (with connection state recovery on, once per socket, each with
        its own offset). Returns how many it was sent to."""
        sent = 0
        encoded: dict[str, list[str | bytes]] = {}  # by namespace (a parent's reach several)
        for sock in self.targets():
            ns = sock.namespace
            if sock._kept is not None or ns.outgoing_hooks():
                sent += sock.emit(event, *args)
                continue
            messages = encoded.get(ns.name)
            if messages is None:
                messages = encoded[ns.name] = encode_event(ns.name, event, args)
            sent += sock.send_raw(messages)
        return sent

    async def emit_with_ack(self, event: str, *args: Any) -> dict[str, tuple[Any, ...]]:
        """Send to each with an ack, and wait (at most :meth:`timeout` seconds, else the app's
        ``ack_timeout``) for their answers: the answers by socket id. A socket that did not answer
        in time, or went meanwhile, is not in it (compare with the sockets asked)."""
        answers: dict[str, tuple[Any, ...]] = {}

        async def ask(sock: Socket) -> None:
            try:
                answers[sock.id] = await sock.call(event, *args, timeout=self.seconds)
            except (trio.TooSlowError, ConnectionError):
                pass

        async with trio.open_nursery() as nursery:
            for sock in self.targets():
                if sock.connected:
                    nursery.start_soon(ask, sock)
        return answers

    async def fetch_sockets(self) -> list[Socket]:
        """The sockets this names."""
        return self.targets()

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Each of the sockets joins these rooms."""
        names = _names(rooms)
        for sock in self.targets():
            for room in names:
                sock.join(room)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Each of the sockets leaves these rooms."""
        names = _names(rooms)
        for sock in self.targets():
            for room in names:
                sock.leave(room)

    async def disconnect_sockets(self) -> None:
        """Disconnect each of the sockets from the namespace (its client is told)."""
        for sock in self.targets():
            await sock.disconnect()
