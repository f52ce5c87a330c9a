"""The Socket.IO application API: namespaces, sockets, events, acks, rooms.

This is an Engine.IO application (see :mod:`callbox.server.engine`). Handlers run inline in the
task that read the message, so one client's events are handled in order and no task is spawned
per message. A handler that wants to wait for something the same client sends (an ack from
``await socket.call(...)``) must do so from another task: ``app.start_soon(...)``.
"""

from __future__ import annotations

import collections
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import trio

from ..config import Config
from ..engineio import CloseReason
from ..metrics import Registry as MetricsRegistry
from ..socketio import (
    Packet,
    PacketType,
    SocketIOProtocolError,
    encode_binary_packet,
    encode_packet,
    has_binary,
)
from ..socketio.session import SocketIOSession
from .session import EngineSocket

__all__ = ["SocketIO", "Namespace", "Socket", "ConnectionRefused", "DisconnectReason"]

log = logging.getLogger("callbox.socketio")

_json = msgspec.json.Decoder()

Handler = Callable[..., Any]


class ConnectionRefused(Exception):
    """Raise from a connect handler to refuse the client: it sees ``connect_error``."""

    def __init__(self, message: str = "Connection refused", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class DisconnectReason:
    """The reasons a disconnect handler receives (socket.io's own words)."""

    CLIENT_DISCONNECT = "client namespace disconnect"
    SERVER_DISCONNECT = "server namespace disconnect"
    # Engine.IO reasons pass through: "transport close", "transport error", "ping timeout",
    # "parse error", "outbox full", "forced close", "server shutting down".


class Socket:
    """One client connected to one namespace. ``id`` is its Socket.IO socket id (not the Engine.IO
    session id, which the client never needs)."""

    __slots__ = ("ack_requested", "auth", "client", "id", "namespace", "rooms", "state", "_early")

    def __init__(self, namespace: Namespace, client: _Client, auth: Any) -> None:
        self.id = secrets.token_urlsafe(15)
        self.namespace = namespace
        self.client = client
        self.auth = auth
        self.rooms: set[str] = set()
        self.state: Any = None  # the application's own data for this socket
        # True while an event handler runs for an event the client sent with an ack callback:
        # the handler's return value is then the ack.
        self.ack_requested = False
        # What the connect handler emits, sent right after the CONNECT answer (dropped if it refuses).
        self._early: list[list[str | bytes]] | None = []

    @property
    def connected(self) -> bool:
        return self.client.sockets.get(self.namespace.name) is self

    @property
    def transport(self) -> str:
        return self.client.esock.transport

    @property
    def remote_address(self) -> str:
        return self.client.esock.remote_address

    def emit(self, event: str, *args: Any) -> bool:
        """Send an event to this client. False if it is gone (nothing was sent).

        From the connect handler, events wait for the CONNECT answer and follow it."""
        if self.client.sockets.get(self.namespace.name) is self:
            return self.client.send_packet(_event_messages(self.namespace.name, event, args, None))
        if self._early is None:
            return False
        self._early.append(_event_messages(self.namespace.name, event, args, None))
        return True

    def send_raw(self, encoded: list[str | bytes]) -> bool:
        """Send an already encoded packet (fan-out encodes once for all its targets)."""
        return self.client.sockets.get(self.namespace.name) is self and self.client.send_packet(encoded)

    async def call(self, event: str, *args: Any, timeout: float | None = None) -> tuple[Any, ...]:  # noqa: ASYNC109
        """Emit with an ack and wait for the client's answer (``trio.TooSlowError`` on timeout)."""
        if not self.connected:
            raise ConnectionError("socket is not connected")
        client = self.client
        ack_id = client.core.new_ack_id()
        send, receive = trio.open_memory_channel[tuple[Any, ...]](1)
        client.acks[ack_id] = send
        try:
            client.send_packet(_event_messages(self.namespace.name, event, args, ack_id))
            wait = client.server.config.ack_timeout if timeout is None else timeout
            with trio.fail_after(wait):
                return await receive.receive()
        except trio.EndOfChannel:
            raise ConnectionError("socket disconnected before it answered") from None
        finally:
            client.acks.pop(ack_id, None)
            client.core.ack_abandoned(ack_id)

    def join(self, room: str) -> None:
        if room not in self.rooms:
            self.rooms.add(room)
            self.namespace.rooms[room].add(self)

    def leave(self, room: str) -> None:
        if room in self.rooms:
            self.rooms.discard(room)
            members = self.namespace.rooms.get(room)
            if members is not None:
                members.discard(self)
                if not members:
                    del self.namespace.rooms[room]

    async def disconnect(self) -> None:
        """Disconnect this socket from its namespace (the Engine.IO session stays open)."""
        if self.connected:
            self.client.send_packet([encode_packet(PacketType.DISCONNECT, self.namespace.name)])
            await self.client.remove_socket(self.namespace.name, DisconnectReason.SERVER_DISCONNECT)


def _event_messages(namespace: str, event: str, args: Iterable[Any], ack_id: int | None) -> list[str | bytes]:
    data = [event, *args]
    if has_binary(data):
        return encode_binary_packet(PacketType.EVENT, namespace, data, ack_id)
    return [encode_packet(PacketType.EVENT, namespace, data, ack_id)]


class Namespace:
    """A namespace: its handlers, its connected sockets and its rooms."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sockets: dict[str, Socket] = {}
        self.rooms: collections.defaultdict[str, set[Socket]] = collections.defaultdict(set)
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._connect: Handler | None = None
        self._disconnect: Handler | None = None
        self._any: Handler | None = None

    # -- registering handlers -------------------------------------------------------------------

    def on(self, event: str, *, raw: bool = False) -> Callable[[Handler], Handler]:
        """Decorator: ``handler(socket, *args)`` for ``event``; its return value is the ack.

        With ``raw=True`` the arguments arrive as ``msgspec.Raw`` (decode what you need; relay
        the rest untouched). Binary arguments always arrive decoded, with ``bytes``.
        """

        def register(fn: Handler) -> Handler:
            self._handlers[event] = (fn, raw)
            return fn

        return register

    def on_any(self, fn: Handler) -> Handler:
        """``handler(socket, event, *args)`` for events with no handler of their own (raw args)."""
        self._any = fn
        return fn

    def on_connect(self, fn: Handler) -> Handler:
        """``handler(socket, auth)``; raise :class:`ConnectionRefused` to refuse."""
        self._connect = fn
        return fn

    def on_disconnect(self, fn: Handler) -> Handler:
        """``handler(socket, reason)``."""
        self._disconnect = fn
        return fn

    # -- emitting -------------------------------------------------------------------------------

    def emit(self, event: str, *args: Any, room: str | None = None, skip: Socket | None = None) -> int:
        """Send to every socket (or those in ``room``) but ``skip``; encoded once. Returns the count."""
        encoded = _event_messages(self.name, event, args, None)
        targets = self.sockets.values() if room is None else list(self.rooms.get(room, ()))
        sent = 0
        for sock in list(targets):
            if sock is not skip and sock.send_raw(encoded):
                sent += 1
        return sent


async def _call(fn: Handler, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _Client:
    """The Socket.IO side of one Engine.IO session: its sans-IO core (namespaces, acks, the binary
    packet being reassembled, the connect deadline), its connected sockets by namespace, and the
    tasks waiting for acks."""

    __slots__ = ("server", "esock", "core", "sockets", "acks")

    def __init__(self, server: SocketIO, esock: EngineSocket) -> None:
        self.server = server
        self.esock = esock
        self.core = SocketIOSession(now=trio.current_time(), connect_timeout=server.config.connect_timeout)
        self.sockets: dict[str, Socket] = {}  # the connected ones
        self.acks: dict[int, trio.MemorySendChannel[tuple[Any, ...]]] = {}

    def send_packet(self, messages: list[str | bytes]) -> bool:
        esock = self.esock
        ok = True
        for m in messages:
            ok = esock.send(m) and ok
        return ok

    async def remove_socket(self, namespace: str, reason: str) -> None:
        """The namespace ends (the client's DISCONNECT, the server's, or the session's end): its
        socket leaves its rooms and the disconnect handler runs. A namespace still being decided
        is forgotten (its connect handler's verdict will change nothing)."""
        if not self.core.disconnect(namespace):
            return
        sock = self.sockets.pop(namespace)
        ns = sock.namespace
        ns.sockets.pop(sock.id, None)
        for room in list(sock.rooms):
            sock.leave(room)
        if ns._disconnect is not None:
            try:
                await _call(ns._disconnect, sock, reason)
            except Exception:
                log.exception("disconnect handler failed for socket %s", sock.id)


class SocketIO:
    """A Socket.IO server application. Register handlers on namespaces, then serve it::

        app = SocketIO()

        @app.on("hello")
        async def hello(socket, name):
            socket.emit("greeting", f"hello {name}")
            return "ok"  # the ack, if the client asked for one

        trio.run(callbox.serve, app)
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.metrics = MetricsRegistry()  # served at /metrics with the server's own
        self.namespaces: dict[str, Namespace] = {"/": Namespace("/")}
        self._pending: collections.deque[_Client] = collections.deque()
        self._pending_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._shutdown_handlers: list[Handler] = []

    def of(self, name: str) -> Namespace:
        """The namespace ``name``, registered on first use. Unregistered ones are refused."""
        if not name.startswith("/"):
            raise ValueError("a namespace name starts with '/'")
        ns = self.namespaces.get(name)
        if ns is None:
            ns = self.namespaces[name] = Namespace(name)
        return ns

    # The default namespace's registration, for brevity.
    def on(self, event: str, *, raw: bool = False) -> Callable[[Handler], Handler]:
        return self.namespaces["/"].on(event, raw=raw)

    def on_connect(self, fn: Handler) -> Handler:
        return self.namespaces["/"].on_connect(fn)

    def on_disconnect(self, fn: Handler) -> Handler:
        return self.namespaces["/"].on_disconnect(fn)

    def on_any(self, fn: Handler) -> Handler:
        return self.namespaces["/"].on_any(fn)

    def emit(self, event: str, *args: Any, room: str | None = None, skip: Socket | None = None) -> int:
        return self.namespaces["/"].emit(event, *args, room=room, skip=skip)

    def on_shutdown(self, fn: Handler) -> Handler:
        """``handler()`` runs when the server drains, before every socket is disconnected."""
        self._shutdown_handlers.append(fn)
        return fn

    async def shutdown(self) -> None:
        """Run the shutdown handlers, then disconnect every socket (the client is told, and its
        disconnect handler gets "server shutting down")."""
        for fn in self._shutdown_handlers:
            try:
                await _call(fn)
            except Exception:
                log.exception("shutdown handler failed")
        for ns in self.namespaces.values():
            for sock in list(ns.sockets.values()):
                sock.client.send_packet([encode_packet(PacketType.DISCONNECT, ns.name)])
                await sock.client.remove_socket(ns.name, CloseReason.SERVER_SHUTDOWN.value)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the server (for work that must not block a client's
        reader, such as waiting for that client's ack). Its exceptions are logged."""
        assert self._nursery is not None, "the server is not running"

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("background task %r failed", fn)

        self._nursery.start_soon(guarded)

    # -- Engine.IO application --------------------------------------------------------------------

    async def run(self) -> None:
        """Closes clients that do not connect to a namespace within ``connect_timeout``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            pending = self._pending
            while True:
                while not pending:
                    await self._pending_lot.park()
                client = pending[0]
                if client.core.connect_by is not None:
                    await trio.sleep_until(client.core.connect_by)
                pending.popleft()
                if client.core.connect_overdue(trio.current_time()) and client.esock.is_open:
                    log.info("session %s: no namespace connected in time", client.esock.sid)
                    client.esock.close(CloseReason.TRANSPORT_CLOSE)

    async def on_open(self, esock: EngineSocket) -> None:
        client = _Client(self, esock)
        esock.state = client
        self._pending.append(client)
        self._pending_lot.unpark_all()

    async def on_message(self, esock: EngineSocket, data: str | bytes) -> None:
        client: _Client = esock.state
        try:
            packet = client.core.receive(data)
        except SocketIOProtocolError as exc:
            log.info("session %s: %s", esock.sid, exc)
            esock.close(CloseReason.PARSE_ERROR)
            return
        if packet is None:
            return
        ptype = packet.type
        if ptype is PacketType.EVENT or ptype is PacketType.BINARY_EVENT:
            sock = client.sockets.get(packet.namespace)
            if sock is not None:  # else not connected there: dropped, as socket.io does
                await self._handle_event(sock, packet)
        elif ptype is PacketType.ACK or ptype is PacketType.BINARY_ACK:
            if client.core.ack_received(packet):
                assert packet.id is not None
                waiter = client.acks.pop(packet.id)
                args = packet.data if ptype is PacketType.BINARY_ACK else [_json.decode(a) for a in packet.data]
                waiter.send_nowait(tuple(args))
        elif ptype is PacketType.CONNECT:
            await self._connect(client, packet)
        elif ptype is PacketType.DISCONNECT:
            await client.remove_socket(packet.namespace, DisconnectReason.CLIENT_DISCONNECT)

    async def on_close(self, esock: EngineSocket, reason: CloseReason) -> None:
        client: _Client = esock.state
        for waiter in client.acks.values():
            waiter.close()
        client.acks.clear()
        for namespace in list(client.core.namespaces):
            await client.remove_socket(namespace, reason.value)

    # -- Socket.IO ------------------------------------------------------------------------------

    async def _connect(self, client: _Client, packet: Packet) -> None:
        name = packet.namespace
        ns = self.namespaces.get(name)
        if ns is None:
            client.send_packet([encode_packet(PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})])
            return
        if not client.core.connect(name):
            return  # already connected, or being decided: socket.io ignores a repeated CONNECT
        sock = Socket(ns, client, packet.data)
        if ns._connect is not None:
            try:
                await _call(ns._connect, sock, packet.data)
            except ConnectionRefused as refusal:
                sock._early = None
                if client.core.refused(name):
                    body: dict[str, Any] = {"message": refusal.message}
                    if refusal.data is not None:
                        body["data"] = refusal.data
                    client.send_packet([encode_packet(PacketType.CONNECT_ERROR, name, body)])
                return
            except BaseException:
                client.core.refused(name)
                raise
        if not client.core.accepted(name) or not client.esock.is_open:
            sock._early = None
            return
        client.sockets[name] = sock
        ns.sockets[sock.id] = sock
        client.send_packet([encode_packet(PacketType.CONNECT, name, {"sid": sock.id})])
        early, sock._early = sock._early, None
        for messages in early or ():
            client.send_packet(messages)

    async def _handle_event(self, sock: Socket, packet: Packet) -> None:
        ns = sock.namespace
        data = packet.data
        name = packet.event
        entry = ns._handlers.get(name)
        sock.ack_requested = packet.id is not None
        try:
            if entry is not None:
                fn, raw = entry
                args = data if (raw or packet.type is PacketType.BINARY_EVENT) else [_json.decode(a) for a in data]
                result = await _call(fn, sock, *args)
            elif ns._any is not None:
                result = await _call(ns._any, sock, name, *data)
            else:
                return
        finally:
            sock.ack_requested = False
        if packet.id is not None and sock.connected:
            if result is None:
                ack_args: list[Any] = []
            elif isinstance(result, tuple):
                ack_args = list(result)
            else:
                ack_args = [result]
            if has_binary(ack_args):
                messages = encode_binary_packet(PacketType.ACK, ns.name, ack_args, packet.id)
            else:
                messages = [encode_packet(PacketType.ACK, ns.name, ack_args, packet.id)]
            sock.client.send_packet(messages)
