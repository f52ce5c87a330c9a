"""The Socket.IO application API: namespaces, sockets, events, acks, rooms.

This is an Engine.IO application (see :mod:`callbox.server.engine`). Handlers run inline in the
task that read the message, so one client's events are handled in order and no task is spawned
per message. A handler that wants to wait for something the same client sends (an ack from
``await socket.call(...)``) must do so from another task: ``app.start_soon(...)``.

With ``recovery_window`` set (connection state recovery, :mod:`callbox.socketio.recovery`), a
socket whose connection is lost is **detached** rather than ended: it keeps its id, rooms and
state, what is emitted to it is kept, and ``on_detach`` handlers run. A client that comes back
within the window with its pid takes it back (``on_recover`` handlers run, ``socket.recovered``);
otherwise the window's end ends it and the disconnect handlers run with the original reason. A
socket has one owner at a time: its client's connection, or (detached) its window's task.
"""

from __future__ import annotations

import collections
import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from types import CoroutineType
from typing import Any, Final

import msgspec
import trio

from ..config import Config
from ..engineio import CONNECTION_LOST, CloseReason
from ..metrics import Counter
from ..metrics import Registry as MetricsRegistry
from ..ratelimit import RateLimiter
from ..socketio import (
    Packet,
    PacketType,
    SocketIOProtocolError,
    encode_ack,
    encode_event,
    encode_packet,
)
from ..socketio.recovery import RecoveryBuffer, missed_offset
from ..socketio.session import SocketIOSession
from .broadcast import Broadcast
from .http import Handshake
from .session import EngineSocket, flush_writes

__all__ = ["SocketIO", "Namespace", "Socket", "Ack", "Broadcast", "ConnectionRefused", "DisconnectReason",
           "Handshake"]

log = logging.getLogger("callbox.socketio")

_json = msgspec.json.Decoder()
# The members the per-message code compares with, as module names (why: callbox/enums.py).
_EVENT, _BINARY_EVENT = PacketType.EVENT, PacketType.BINARY_EVENT

Handler = Callable[..., Any]

# How a connection may end and its sockets still be recovered: it was lost, or the client closed it
# itself (socket.io-client's ``socket.io.engine.close()``); not when either side left on purpose.
RECOVERABLE: Final = CONNECTION_LOST | {CloseReason.CLIENT_CLOSE}
# Why a recovery attempt got a fresh socket (the recoveries metric's results).
RECOVERY_RESULTS: Final = ("recovered", "unknown", "expired_offset", "throttled", "declined")
# An HTTP header name (RFC 9110's token).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ConnectionRefused(Exception):
    """Raise from a connect handler or a middleware to refuse the client: it sees ``connect_error``
    with ``message`` (and ``data``, if given, as the error's ``data``)."""

    def __init__(self, message: str = "Connection refused", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class DisconnectReason:
    """The reasons a disconnect handler receives (socket.io's own words)."""

    CLIENT_DISCONNECT = "client namespace disconnect"
    SERVER_DISCONNECT = "server namespace disconnect"
    # Engine.IO reasons pass through: "client close", "transport close", "transport error",
    # "ping timeout", "parse error", "outbox full", "rate limited", "forced close",
    # "server shutting down", "recovered elsewhere" (see engineio.CloseReason).


class Socket:
    """One client connected to one namespace. ``id`` is its Socket.IO socket id (not the Engine.IO
    session id, which the client never needs)."""

    __slots__ = ("ack_requested", "auth", "client", "id", "namespace", "pid", "recovered", "recovering", "rooms",
                 "state", "_ack_id", "_early", "_expiry", "_kept")

    def __init__(self, namespace: Namespace, client: _Client, auth: Any) -> None:
        self.id = client.server.socket_id_prefix + secrets.token_urlsafe(15)
        # Connection state recovery: the private id the client reconnects with, and what it was sent.
        recovery = client.server.config.recovery_window > 0
        self.pid = secrets.token_urlsafe(16) if recovery else None
        self._kept = RecoveryBuffer() if recovery else None
        # True once taken back by a reconnecting client. In a connect handler, ``recovering`` is the
        # detached socket this connection asks to take back (set it to None to decline: the client
        # gets this fresh socket instead).
        self.recovered = False
        self.recovering: Socket | None = None
        # While detached: the scope of the task that ends it when the recovery window passes.
        self._expiry: trio.CancelScope | None = None
        self.namespace = namespace
        self.client = client
        self.auth = auth
        self.rooms: set[str] = set()
        self.state: Any = None  # the application's own data for this socket
        # True while an event handler runs for an event the client sent with an ack callback:
        # the handler's return value is then the ack.
        self.ack_requested = False
        self._ack_id: int | None = None  # that event's ack id, until the handler defers its answer
        # What the connect handler emits, sent right after the CONNECT answer (dropped if it refuses).
        self._early: list[tuple[str, tuple[Any, ...]]] | None = []

    @property
    def connected(self) -> bool:
        """Connected to its namespace now (not detached, not ended)."""
        return self.client.sockets.get(self.namespace.name) is self

    @property
    def detached(self) -> bool:
        """Its connection was lost and the recovery window runs: what is emitted to it is kept."""
        return self._expiry is not None

    @property
    def transport(self) -> str:
        """"websocket" or "polling": what its connection runs on now."""
        return self.client.esock.transport

    @property
    def handshake(self) -> Handshake:
        """The HTTP request that opened this socket's connection: ``query``, ``headers``,
        ``cookies``, ``address`` (past trusted proxies), ``secure``, ``url``, ``time``. The CONNECT
        payload is :attr:`auth`."""
        return self.client.esock.handshake

    def defer_ack(self) -> Ack | None:
        """From an event handler: answer the client's ack later, by calling the returned
        :class:`Ack` once, instead of with the handler's return value (which is then not sent).

        None if the client sent the event without an ack callback. An ack never called is never
        sent: the client's callback does not run (socket.io-client's ``timeout()`` /
        ``emitWithAck`` turn that into an error on its side); nothing is kept for it here."""
        ack_id, self._ack_id = self._ack_id, None
        return None if ack_id is None else Ack(self, ack_id)

    @property
    def conn(self) -> EngineSocket:
        """The Engine.IO session carrying this socket now (Node's ``socket.conn``): its ``sid``,
        ``transport``, ``close(reason)`` ends the whole connection, every namespace of it."""
        return self.client.esock

    @property
    def remote_address(self) -> str:
        """The client's address (past trusted proxies)."""
        return self.client.esock.remote_address

    def emit(self, event: str, *args: Any) -> bool:
        """Send an event to this client. False if it is gone (nothing was sent).

        From the connect handler, events wait for the CONNECT answer and follow it. To a detached
        socket, they are kept for the client's return (False past the recovery limits: the
        socket then ends)."""
        connected = self.client.sockets.get(self.namespace.name) is self
        if not connected and self._expiry is None:
            if self._early is None:
                return False
            self._early.append((event, args))
            return True
        ns = self.namespace
        if ns._outgoing or ns._app_hooks.outgoing:
            _run_hooks(ns.outgoing_hooks(), self, event, args)
        kept = self._kept
        if kept is None:
            return self.client.send_packet(encode_event(self.namespace.name, event, args, None))
        messages = encode_event(self.namespace.name, event, (*args, kept.next_offset()), None)
        config = self.client.server.config
        fits = kept.keep(messages, trio.current_time(), max_events=config.recovery_max_events,
                         max_bytes=config.recovery_max_bytes,
                         keep_for=2 * (config.ping_interval + config.ping_timeout) if connected else None)
        if connected:
            return self.client.send_packet(messages)
        if not fits:
            assert self._expiry is not None
            self._expiry.cancel()  # past what is kept for a detached socket: it ends now
            return False
        return True

    def send_raw(self, encoded: list[str | bytes]) -> bool:
        """Send an already encoded packet (fan-out encodes once for all its targets; not with
        recovery on, where each socket's events carry its own offsets)."""
        if self._kept is not None:
            raise RuntimeError("send_raw() cannot give the event its offset with recovery on: use emit()")
        return self.client.sockets.get(self.namespace.name) is self and self.client.send_packet(encoded)

    async def call(self, event: str, *args: Any, timeout: float | None = None) -> tuple[Any, ...]:  # noqa: ASYNC109
        """Emit with an ack and wait for the client's answer (``trio.TooSlowError`` on timeout)."""
        if not self.connected:
            raise ConnectionError("socket is not connected")
        client = self.client
        hooks = self.namespace.outgoing_hooks()
        if hooks:
            _run_hooks(hooks, self, event, args)
        ack_id = client.core.new_ack_id()
        send, receive = trio.open_memory_channel[tuple[Any, ...]](1)
        client.acks[ack_id] = send
        try:
            client.send_packet(encode_event(self.namespace.name, event, args, ack_id))
            flush_writes()  # from a handler: what it sent goes out before it waits for the answer
            wait = client.server.config.ack_timeout if timeout is None else timeout
            with trio.fail_after(wait):
                return await receive.receive()
        except trio.EndOfChannel:
            raise ConnectionError("socket disconnected before it answered") from None
        finally:
            client.acks.pop(ack_id, None)
            client.core.ack_abandoned(ack_id)

    def to(self, *rooms: str | Iterable[str]) -> Broadcast:
        """The sockets in these rooms but this one (Node's ``socket.to(room).emit``: the others)."""
        return Broadcast(self.namespace).to(*rooms).except_(self.id)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> Broadcast:
        """Every socket of the namespace but this one and those in these rooms (``socket.broadcast``)."""
        return Broadcast(self.namespace).except_(self.id, *rooms)

    @property
    def broadcast(self) -> Broadcast:
        """Every socket of the namespace but this one."""
        return Broadcast(self.namespace).except_(self.id)

    def join(self, room: str) -> None:
        """Join ``room`` (no-op if in it already)."""
        if room not in self.rooms:
            self.rooms.add(room)
            self.namespace.rooms[room].add(self)
            if self.namespace._app_hooks.changes:
                _changed(self, "join", room)

    def leave(self, room: str) -> None:
        """Leave ``room`` (no-op if not in it); an empty room goes."""
        if room in self.rooms:
            self.rooms.discard(room)
            members = self.namespace.rooms.get(room)
            if members is not None:
                members.discard(self)
                if not members:
                    del self.namespace.rooms[room]
            if self.namespace._app_hooks.changes:
                _changed(self, "leave", room)

    async def disconnect(self) -> None:
        """Disconnect this socket from its namespace (the Engine.IO session stays open). A detached
        socket ends at once (it cannot be recovered any more)."""
        if self.connected:
            self.client.send_packet([encode_packet(PacketType.DISCONNECT, self.namespace.name)])
            await self.client.remove_socket(self.namespace.name, DisconnectReason.SERVER_DISCONNECT)
        elif self._expiry is not None:
            self._expiry = None
            await _end_socket(self, DisconnectReason.SERVER_DISCONNECT)


class Ack:
    """The answer to one event a client sent with an ack callback, given after its handler
    returned (:meth:`Socket.defer_ack`). Call it once, with the values the callback gets."""

    __slots__ = ("_client", "_id", "_socket", "sent")

    def __init__(self, socket: Socket, ack_id: int) -> None:
        self._socket = socket
        self._client = socket.client  # the ack id is this connection's
        self._id = ack_id
        self.sent = False

    def __call__(self, *args: Any) -> bool:
        """Send the answer; False if the socket's connection has gone (nothing sent). A second call
        raises :class:`RuntimeError`."""
        if self.sent:
            raise RuntimeError("this ack was answered already")
        self.sent = True
        sock = self._socket
        if sock.client is not self._client or not sock.connected:
            return False
        return sock.client.send_packet(encode_ack(sock.namespace.name, list(args), self._id))


class Namespace:
    """A namespace: its handlers, its connected sockets and its rooms."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sockets: dict[str, Socket] = {}  # connected and detached ones
        self.by_pid: dict[str, Socket] = {}  # with recovery on: the same sockets, by private id
        self.rooms: collections.defaultdict[str, set[Socket]] = collections.defaultdict(set)
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._connect: Handler | None = None
        self._disconnect: Handler | None = None
        self._detach: Handler | None = None
        self._recover: Handler | None = None
        self._any: Handler | None = None
        self._middleware: list[Handler] = []
        self._outgoing: list[Handler] = []
        self._app_hooks = _AppHooks()  # the app's, shared by every namespace
        self.is_parent = False  # a parent namespace (SocketIO.of with a pattern or a function)
        self._connecting = 0  # CONNECTs being decided (a child goes only when none is)
        self.parent: Namespace | None = None  # a child's (see SocketIO.of)
        self.children: dict[str, Namespace] = {}  # a parent's

    def child(self, name: str) -> Namespace:
        """A child of this parent namespace: its handlers, middleware and hooks are the parent's."""
        child = Namespace(name)
        child.parent = self
        child._handlers, child._middleware, child._outgoing = self._handlers, self._middleware, self._outgoing
        child._app_hooks = self._app_hooks
        child._connect, child._disconnect, child._detach = self._connect, self._disconnect, self._detach
        child._recover, child._any = self._recover, self._any
        self.children[name] = child
        return child

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

    def use(self, fn: Handler) -> Handler:
        """Middleware: ``fn(socket, auth)`` runs for each client connecting to this namespace, in the
        order registered, after the app's own (:meth:`SocketIO.use`) and before the connect
        handler; raise :class:`ConnectionRefused` to refuse it (with ``data`` for the client)."""
        self._middleware.append(fn)
        return fn

    def on_any(self, fn: Handler) -> Handler:
        """``handler(socket, event, *args)`` for events with no handler of their own (raw args)."""
        self._any = fn
        return fn

    def on_connect(self, fn: Handler) -> Handler:
        """``handler(socket, auth)``; raise :class:`ConnectionRefused` to refuse."""
        self._connect = fn
        return fn

    def on_disconnect(self, fn: Handler) -> Handler:
        """``handler(socket, reason)``: the socket has ended (with recovery on: left on purpose,
        or its recovery window passed; ``reason`` is then the one its connection was lost for)."""
        self._disconnect = fn
        return fn

    def on_detach(self, fn: Handler) -> Handler:
        """``handler(socket, reason)``: with recovery on, the socket's connection was lost (or the
        client closed it) and its recovery window starts."""
        self._detach = fn
        return fn

    def on_recover(self, fn: Handler) -> Handler:
        """``handler(socket)``: a detached socket was taken back by its client, after the CONNECT
        answer and the events it missed were sent."""
        self._recover = fn
        return fn

    def on_any_outgoing(self, fn: Handler) -> Handler:
        """``fn(socket, event, args)`` for every event emitted to a socket of this namespace (for
        logs and metrics; it runs inline, so keep it quick; its exceptions are logged)."""
        self._outgoing.append(fn)
        return fn

    def outgoing_hooks(self) -> list[Handler]:
        """This namespace's outgoing hooks, then the app's (:meth:`SocketIO.on_any_outgoing`)."""
        app = self._app_hooks.outgoing
        return self._outgoing + app if app else self._outgoing

    # -- emitting -------------------------------------------------------------------------------

    def to(self, *rooms: str | Iterable[str]) -> Broadcast:
        """The sockets in these rooms (a socket id is a room of one), to emit to or act on."""
        return Broadcast(self).to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> Broadcast:
        """Every socket but those in these rooms."""
        return Broadcast(self).except_(*rooms)

    def timeout(self, seconds: float) -> Broadcast:
        """Every socket, for :meth:`Broadcast.emit_with_ack` with this timeout."""
        return Broadcast(self).timeout(seconds)

    def emit(self, event: str, *args: Any, room: str | None = None, skip: Socket | None = None) -> int:
        """Send to every socket (or those in ``room``) but ``skip``; see :class:`Broadcast` for
        more (several rooms, rooms excluded, acks). Returns the count. A parent namespace's emit
        reaches its children's sockets."""
        targets = Broadcast(self) if room is None else Broadcast(self).to(room)
        return (targets.except_(skip.id) if skip is not None else targets).emit(event, *args)

    async def fetch_sockets(self) -> list[Socket]:
        """Every socket of the namespace (see :class:`Broadcast` for those of some rooms)."""
        return await Broadcast(self).fetch_sockets()

    async def disconnect_sockets(self) -> None:
        """Disconnect every socket of the namespace."""
        await Broadcast(self).disconnect_sockets()


class _AppHooks:
    """The app's hooks that every namespace runs (see :meth:`SocketIO.on_any_outgoing` and after)."""

    __slots__ = ("changes", "incoming", "outgoing")

    def __init__(self) -> None:
        self.outgoing: list[Handler] = []
        self.incoming: list[Handler] = []
        self.changes: list[Handler] = []


def _changed(socket: Socket, change: str, detail: Any) -> None:
    for fn in socket.namespace._app_hooks.changes:
        try:
            fn(change, socket, detail)
        except Exception:
            log.exception("socket change hook failed for socket %s", socket.id)


def _run_hooks(hooks: list[Handler], socket: Socket, event: str, args: Iterable[Any]) -> None:
    for fn in hooks:
        try:
            fn(socket, event, args)
        except Exception:
            log.exception("outgoing hook failed for socket %s", socket.id)


def _drop_if_unused(ns: Namespace, app: SocketIO) -> None:
    """A child namespace goes once it has no socket and no CONNECT to it is being decided."""
    parent = ns.parent
    if parent is not None and not ns.sockets and not ns._connecting and parent.children.get(ns.name) is ns:
        del parent.children[ns.name]
        if app.namespaces.get(ns.name) is ns:
            del app.namespaces[ns.name]


async def _call(fn: Handler, *args: Any) -> Any:
    result = fn(*args)
    return (await result) if _awaits(result) else result


def _awaits(result: Any) -> bool:
    """Whether a handler's result is to be awaited: a handler may be a coroutine function or a plain
    one (whose result may still be awaitable). An async handler's coroutine, the usual case, is
    known without the awaitable protocol check."""
    return type(result) is CoroutineType or (result is not None and inspect.isawaitable(result))


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
        socket ends. A namespace still being decided is forgotten (its connect handler's verdict
        will change nothing)."""
        if self.core.disconnect(namespace):
            await _end_socket(self.sockets.pop(namespace), reason)

    async def detach_socket(self, namespace: str, reason: CloseReason) -> None:
        """The session's connection was lost: its socket in ``namespace`` waits for its client
        for the recovery window (a task of the app's owns it meanwhile), or ends at once."""
        if not self.core.disconnect(namespace):
            return
        sock = self.sockets.pop(namespace)
        if sock._kept is None or reason not in RECOVERABLE or self.server._nursery is None:
            await _end_socket(sock, reason.value)
            return
        scope = sock._expiry = trio.CancelScope(deadline=trio.current_time() + self.server.config.recovery_window)
        self.server.start_soon(_expire, sock, scope, reason.value)
        ns = sock.namespace
        if ns._detach is not None:
            try:
                await _call(ns._detach, sock, reason.value)
            except Exception:
                log.exception("detach handler failed for socket %s", sock.id)


async def _expire(sock: Socket, scope: trio.CancelScope, reason: str) -> None:
    """A detached socket's window: it ends when the window passes (or is cancelled past the
    recovery limits), unless its client took it back first."""
    with scope:
        await trio.sleep_forever()
    if sock._expiry is scope:
        sock._expiry = None
        await _end_socket(sock, reason)


async def _end_socket(sock: Socket, reason: str) -> None:
    """The one end of every socket: it leaves its namespace and rooms, its disconnect handler runs."""
    ns = sock.namespace
    ns.sockets.pop(sock.id, None)
    if sock.pid is not None:
        ns.by_pid.pop(sock.pid, None)
    for room in list(sock.rooms):
        sock.leave(room)
    if ns._app_hooks.changes:
        _changed(sock, "disconnect", reason)
    _drop_if_unused(ns, sock.client.server)
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
        self._hooks = _AppHooks()  # shared by every namespace
        self.namespaces: dict[str, Namespace] = {"/": Namespace("/")}
        self.namespaces["/"]._app_hooks = self._hooks
        self._parents: list[tuple[re.Pattern[str] | Handler, Namespace]] = []
        self._pending: collections.deque[_Client] = collections.deque()
        self._pending_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._shutdown_handlers: list[Handler] = []
        # What every socket id starts with (a node's name, where several share the users).
        self.socket_id_prefix = ""
        # Each says why the app should get no new clients now (/readyz 503), or None.
        self.readiness_checks: list[Callable[[], str | None]] = []
        self._middleware: list[Handler] = []
        self._allow_request: Handler | None = None
        self._initial_headers: Handler | None = None
        # Recovery attempts that named no socket, per client address.
        self._recovery_misses = RateLimiter()
        self.recoveries = self.metrics.add(Counter(
            "callbox_recoveries_total", "Connection state recovery attempts, by result.", ["result"],
            initial=[(r,) for r in RECOVERY_RESULTS],
        ))

    def of(self, name: str | re.Pattern[str] | Handler) -> Namespace:
        """The namespace ``name``, registered on first use. Clients are refused a namespace that is
        not registered, unless a **parent** namespace matches it: ``of(re.compile(...))`` or
        ``of(fn)`` with ``fn(name, auth) -> bool`` (may be async) gives one. A client that connects
        to a name a parent matches gets a child namespace of that name, which has the parent's
        handlers and middleware (register them before clients come); a child goes when its last
        socket does (Node's dynamic namespaces). What is sent through the parent (``emit``, ``to``,
        :class:`Broadcast`) reaches the children's sockets.

        The matcher is asked only for a name that has no namespace yet: it decides which
        namespaces may exist, not who may connect to one (that is for middleware, or the connect
        handler)."""
        if not isinstance(name, str):
            parent = Namespace(f"<parent {getattr(name, 'pattern', name)!r}>")
            parent._app_hooks = self._hooks
            parent.is_parent = True
            self._parents.append((name, parent))
            return parent
        if not name.startswith("/"):
            raise ValueError("a namespace name starts with '/'")
        ns = self.namespaces.get(name)
        if ns is None:
            ns = self.namespaces[name] = Namespace(name)
            ns._app_hooks = self._hooks
        return ns

    async def _child(self, name: str, auth: Any) -> Namespace | None:
        """A child namespace for ``name`` if a parent matches it (see :meth:`of`)."""
        for matcher, parent in self._parents:
            if isinstance(matcher, re.Pattern):
                matches = matcher.fullmatch(name) is not None
            else:
                try:
                    matches = bool(await _call(matcher, name, auth))
                except Exception:
                    log.exception("namespace matcher failed for %r", name)
                    matches = False
            if matches:
                child = self.namespaces[name] = parent.child(name)
                return child
        return None

    def register(self, handlers: object, name: str = "/") -> Namespace:
        """Class-based handlers (python-socketio's ``AsyncNamespace`` style): each method of
        ``handlers`` named ``on_<event>`` handles ``<event>`` (``on_connect``, ``on_disconnect``,
        ``on_detach``, ``on_recover``, ``on_any`` and ``on_any_outgoing`` are those hooks), on the
        namespace ``name``. Events whose names are not Python identifiers (``call:start``) are
        registered with :meth:`Namespace.on` or handled by ``on_any``."""
        ns = self.of(name)
        hooks = {"on_connect": ns.on_connect, "on_disconnect": ns.on_disconnect, "on_detach": ns.on_detach,
                 "on_recover": ns.on_recover, "on_any": ns.on_any, "on_any_outgoing": ns.on_any_outgoing}
        for attr in dir(handlers):
            fn = getattr(handlers, attr)
            if not attr.startswith("on_") or attr.startswith("on__") or not callable(fn):
                continue
            if attr in hooks:
                hooks[attr](fn)
            else:
                ns.on(attr[3:])(fn)
        return ns

    def on_any_outgoing(self, fn: Handler) -> Handler:
        """``fn(socket, event, args)`` for every event emitted to any socket (see
        :meth:`Namespace.on_any_outgoing`)."""
        self._hooks.outgoing.append(fn)
        return fn

    def on_any_incoming(self, fn: Handler) -> Handler:
        """``fn(socket, event, args)`` for every event any client sends, before its handler runs
        (``args`` decoded from JSON; for logs, metrics, the admin UI; it runs inline)."""
        self._hooks.incoming.append(fn)
        return fn

    def on_socket_change(self, fn: Handler) -> Handler:
        """``fn(change, socket, detail)`` when a socket of any namespace changes: ``"connect"``
        (detail None), ``"disconnect"`` (the reason), ``"join"`` / ``"leave"`` (the room). It runs
        inline; its exceptions are logged."""
        self._hooks.changes.append(fn)
        return fn

    def to(self, *rooms: str | Iterable[str]) -> Broadcast:
        """The default namespace's sockets in these rooms (see :class:`Broadcast`)."""
        return self.namespaces["/"].to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> Broadcast:
        """The default namespace's sockets but those in these rooms."""
        return self.namespaces["/"].except_(*rooms)

    def timeout(self, seconds: float) -> Broadcast:
        """The default namespace's sockets, for :meth:`Broadcast.emit_with_ack`."""
        return self.namespaces["/"].timeout(seconds)

    async def fetch_sockets(self) -> list[Socket]:
        """The default namespace's sockets."""
        return await self.namespaces["/"].fetch_sockets()

    async def disconnect_sockets(self) -> None:
        """Disconnect every socket of the default namespace."""
        await self.namespaces["/"].disconnect_sockets()

    # The default namespace's registration, for brevity.
    def on(self, event: str, *, raw: bool = False) -> Callable[[Handler], Handler]:
        """The default namespace's :meth:`Namespace.on`."""
        return self.namespaces["/"].on(event, raw=raw)

    def on_connect(self, fn: Handler) -> Handler:
        """The default namespace's :meth:`Namespace.on_connect`."""
        return self.namespaces["/"].on_connect(fn)

    def on_disconnect(self, fn: Handler) -> Handler:
        """The default namespace's :meth:`Namespace.on_disconnect`."""
        return self.namespaces["/"].on_disconnect(fn)

    def on_any(self, fn: Handler) -> Handler:
        """The default namespace's :meth:`Namespace.on_any`."""
        return self.namespaces["/"].on_any(fn)

    def emit(self, event: str, *args: Any, room: str | None = None, skip: Socket | None = None) -> int:
        """The default namespace's :meth:`Namespace.emit`."""
        return self.namespaces["/"].emit(event, *args, room=room, skip=skip)

    def on_shutdown(self, fn: Handler) -> Handler:
        """``handler(handover)`` runs when the server drains, before every socket is disconnected."""
        self._shutdown_handlers.append(fn)
        return fn

    def use(self, fn: Handler) -> Handler:
        """Middleware for every namespace: ``fn(socket, auth)`` runs for each client connecting to
        any namespace, before the namespace's own middleware and connect handler (authenticate
        once, for all of them); raise :class:`ConnectionRefused` to refuse it."""
        self._middleware.append(fn)
        return fn

    def allow_request(self, fn: Handler) -> Handler:
        """Decorator: ``fn(handshake) -> bool`` (may be async, and wait) decides whether a request
        for a new connection is served at all; False (or an exception, logged) answers 403 before
        any session exists. Node's ``allowRequest``: check the origin, a header, the address."""
        self._allow_request = fn
        return fn

    def initial_headers(self, fn: Handler) -> Handler:
        """Decorator: ``fn(handshake)`` (may be async) returns headers (a list of (name, value), or a
        dict) added to the answer that opens a connection (the polling handshake, or the WebSocket
        101): a cookie that pins the client to this node behind a load balancer, say. If it raises,
        or returns a header that is not one (a name that is not a token, a value with a line
        break), the request is refused (403) and the error logged."""
        self._initial_headers = fn
        return fn

    async def admit(self, handshake: Handshake) -> bool:
        """The Engine.IO server asks whether a new connection may open (see :meth:`allow_request`)."""
        if self._allow_request is None:
            return True
        try:
            return bool(await _call(self._allow_request, handshake))
        except Exception:
            log.exception("allow_request failed: the request is refused")
            return False

    async def handshake_headers(self, handshake: Handshake) -> list[tuple[str, str]] | None:
        """The Engine.IO server asks for the headers of a new connection's answer (see
        :meth:`initial_headers`); None refuses the request."""
        if self._initial_headers is None:
            return []
        try:
            headers = await _call(self._initial_headers, handshake)
            items = headers.items() if isinstance(headers, dict) else headers
            out = [(str(name), str(value)) for name, value in items]
            for name, value in out:
                if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
                    raise ValueError(f"not an HTTP header: {name!r}: {value!r}")
        except Exception:
            log.exception("initial_headers failed: the request is refused")
            return None
        return out

    def unready(self) -> str | None:
        """Why /readyz answers 503 (the first readiness check that says so), or None."""
        for check in self.readiness_checks:
            if (why := check()) is not None:
                return why
        return None

    def close_connections(self, reason: CloseReason) -> None:
        """Close the connection of every connected socket, without a Socket.IO goodbye: each client
        sees its connection end for ``reason`` (and socket.io-client reconnects)."""
        for ns in self.namespaces.values():
            for sock in list(ns.sockets.values()):
                if sock.connected:
                    sock.client.esock.close(reason)

    async def shutdown(self, *, handover: bool = False) -> None:
        """Run the shutdown handlers (``handler(handover)``), then disconnect every socket (the client
        is told, and its disconnect handler gets "server shutting down").

        ``handover``: the clients are not told; their connections are about to close (reason
        "server handover"), and a client reconnects by itself, to another node."""
        for fn in self._shutdown_handlers:
            try:
                await _call(fn, handover)
            except Exception:
                log.exception("shutdown handler failed")
        if handover:
            return
        for ns in self.namespaces.values():
            for sock in list(ns.sockets.values()):
                if sock._expiry is not None:  # detached: nobody to tell
                    sock._expiry = None
                    await _end_socket(sock, CloseReason.SERVER_SHUTDOWN.value)
                elif sock.connected:
                    sock.client.send_packet([encode_packet(PacketType.DISCONNECT, ns.name)])
                    await sock.client.remove_socket(ns.name, CloseReason.SERVER_SHUTDOWN.value)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the server (for work that must not block a client's
        reader, such as waiting for that client's ack). Its exceptions are logged."""
        if self._nursery is None:
            raise RuntimeError("the server is not running")

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
            try:
                await self._close_late_clients()
            finally:
                self._nursery = None  # closing: nothing new may start (a detached socket ends at once)

    async def _close_late_clients(self) -> None:
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
        """Engine.IO hook: a session opened (it must CONNECT a namespace within ``connect_timeout``)."""
        client = _Client(self, esock)
        esock.state = client
        self._pending.append(client)
        self._pending_lot.unpark_all()

    async def on_message(self, esock: EngineSocket, data: str | bytes) -> None:
        """Engine.IO hook: one message of a session, decoded as Socket.IO and handled. An event,
        the usual packet, is handled here; the others by :meth:`_on_other_packet`."""
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
        if ptype is not _EVENT and ptype is not _BINARY_EVENT:
            await self._on_other_packet(client, packet)
            return
        sock = client.sockets.get(packet.namespace)
        if sock is None:
            return  # not connected there: dropped, as socket.io does
        ns = sock.namespace
        packet_args = packet.data
        name = packet.event
        entry = ns._handlers.get(name)
        sock.ack_requested = packet.id is not None
        sock._ack_id = packet.id
        if ns._app_hooks.incoming:
            shown = packet_args if ptype is _BINARY_EVENT else [_json.decode(a) for a in packet_args]
            _run_hooks(ns._app_hooks.incoming, sock, name, shown)
        try:
            if entry is not None:
                fn, raw = entry
                args = packet_args if (raw or ptype is _BINARY_EVENT) else [_json.decode(a) for a in packet_args]
                result = fn(sock, *args)  # not through _call: one coroutine less per event
                if _awaits(result):
                    result = await result
            elif ns._any is not None:
                result = await _call(ns._any, sock, name, *packet_args)
            else:
                return
        finally:
            sock.ack_requested = False
            ack_id, sock._ack_id = sock._ack_id, None  # None: the handler deferred it (defer_ack)
        if ack_id is not None and sock.connected:
            if result is None:
                ack_args: list[Any] = []
            elif isinstance(result, tuple):
                ack_args = list(result)
            else:
                ack_args = [result]
            sock.client.send_packet(encode_ack(ns.name, ack_args, ack_id))

    async def _on_other_packet(self, client: _Client, packet: Packet) -> None:
        """An ACK, CONNECT or DISCONNECT from the client."""
        ptype = packet.type
        if ptype is PacketType.ACK or ptype is PacketType.BINARY_ACK:
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
        """Engine.IO hook: a session ended; its sockets end (or are detached, with recovery on)."""
        client: _Client = esock.state
        for waiter in client.acks.values():
            waiter.close()
        client.acks.clear()
        for namespace in list(client.core.namespaces):
            await client.detach_socket(namespace, reason)

    # -- Socket.IO ------------------------------------------------------------------------------

    async def _connect(self, client: _Client, packet: Packet) -> None:
        name = packet.namespace
        ns = self.namespaces.get(name)
        if ns is None and self._parents:
            ns = await self._child(name, {} if packet.data is None else packet.data)
        if ns is None:
            client.send_packet([encode_packet(PacketType.CONNECT_ERROR, name, {"message": "Invalid namespace"})])
            return
        if not client.core.connect(name):
            _drop_if_unused(ns, self)
            return  # already connected, or being decided: socket.io ignores a repeated CONNECT
        ns._connecting += 1
        try:
            await self._connect_to(client, ns, packet)
        finally:
            ns._connecting -= 1
            _drop_if_unused(ns, self)

    async def _connect_to(self, client: _Client, ns: Namespace, packet: Packet) -> None:
        name = ns.name
        # No CONNECT payload is an empty one, as in Node (the handlers get {}).
        auth = {} if packet.data is None else packet.data
        sock = Socket(ns, client, auth)
        asked = None  # the socket this CONNECT may take back
        if sock.pid is not None and isinstance(auth, dict) and "pid" in auth:
            asked = sock.recovering = self._recoverable(ns, auth, client.esock.remote_address)
        checks = [*self._middleware, *ns._middleware]
        if ns._connect is not None:
            checks.append(ns._connect)
        if checks:
            try:
                for fn in checks:
                    await _call(fn, sock, auth)
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
        early, sock._early = sock._early or [], None
        old = sock.recovering
        if old is not None:
            missed = self._missed(old, auth)  # again: the connect handler may have waited
            if missed is not None:
                await self._recover(client, old, missed, sock.auth, early)
                return
            self.recoveries.inc("expired_offset")
        elif asked is not None:
            self.recoveries.inc("declined")
        client.sockets[name] = sock
        ns.sockets[sock.id] = sock
        answer: dict[str, str] = {"sid": sock.id}
        if sock.pid is not None:
            ns.by_pid[sock.pid] = sock
            answer["pid"] = sock.pid
        client.send_packet([encode_packet(PacketType.CONNECT, name, answer)])
        if self._hooks.changes:
            _changed(sock, "connect", None)
        for event, args in early:
            sock.emit(event, *args)

    # -- connection state recovery ----------------------------------------------------------------

    def _recoverable(self, ns: Namespace, auth: dict[str, Any], address: str) -> Socket | None:
        """The socket a CONNECT asks to take back, if it may (the metric counts each refusal)."""
        config = self.config
        now = trio.current_time()
        burst, rate = config.recovery_attempts_burst, config.recovery_attempts_per_minute / 60
        misses = self._recovery_misses
        if not misses.allows(address, now, burst, rate):
            self.recoveries.inc("throttled")
            return None
        pid = auth.get("pid")
        old = ns.by_pid.get(pid) if isinstance(pid, str) else None
        if old is None:
            misses.take(address, now, burst, rate)
            self.recoveries.inc("unknown")
            return None
        if self._missed(old, auth) is None:
            self.recoveries.inc("expired_offset")
            return None
        return old

    @staticmethod
    def _missed(old: Socket, auth: dict[str, Any]) -> list[list[str | bytes]] | None:
        """What ``old`` sent after the client's offset, if it can still be recovered."""
        offset = missed_offset(auth.get("offset"))
        if old._kept is None or offset is None or old.namespace.sockets.get(old.id) is not old:
            return None
        return old._kept.after(offset)

    async def _recover(self, client: _Client, old: Socket, missed: list[list[str | bytes]], auth: Any,
                       early: list[tuple[str, tuple[Any, ...]]]) -> None:
        """``client`` takes ``old`` back: same id and pid, then every event it missed, in order."""
        ns = old.namespace
        name = ns.name
        previous = old.client
        if old._expiry is not None:
            scope, old._expiry = old._expiry, None
            scope.cancel()
        elif previous.sockets.get(name) is old:
            # Its old connection still looks alive (half-open TCP): move the socket off it before
            # closing it, so that nothing of the old connection's end can touch the socket.
            del previous.sockets[name]
            previous.core.disconnect(name)
            previous.esock.lose(CloseReason.RECOVERED_ELSEWHERE)
        old.client = client
        old.auth = auth
        old.recovered = True
        client.sockets[name] = old
        self.recoveries.inc("recovered")
        client.send_packet([encode_packet(PacketType.CONNECT, name, {"sid": old.id, "pid": old.pid})])
        for messages in missed:
            client.send_packet(messages)
        for event, args in early:
            old.emit(event, *args)
        if ns._recover is not None:
            try:
                await _call(ns._recover, old)
            except Exception:
                log.exception("recover handler failed for socket %s", old.id)

