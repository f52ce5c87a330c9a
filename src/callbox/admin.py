"""The server side of the Socket.IO Admin UI (``@socket.io/admin-ui``, https://socket.io/docs/v4/admin-ui/):
an opt-in, authenticated admin namespace through which operators watch sockets, rooms and events
with the standard tool (the hosted https://admin.socket.io, or its files served by you), as Node's
``instrument(io, ...)`` and python-socketio's ``instrument()`` offer::

    app = callbox.SocketIO(callbox.Config(cors_origins=("https://admin.socket.io",)))
    callbox.admin.instrument(app, auth={"username": "admin", "password": os.environ["ADMIN_PASSWORD"]})

The UI connects to the ``/admin`` namespace with socket.io-client, with ``auth`` ``{username,
password}`` and ``withCredentials``: from another origin, list that origin in ``cors_origins``.

Theory of operation. Everything goes through the application API; nothing in the server is
patched:

- A middleware on the admin namespace checks the credentials (constant time) and gives the UI a
  session id (``session``), which it keeps and reconnects with after a page reload, as Node's does.
- Its connect handler sends ``config`` (the features: which commands it accepts), then, in
  development mode, ``all_sockets`` (every socket of every namespace), then ``server_stats``.
- In development mode the app's hooks report what happens, to every admin socket:
  ``on_socket_change`` gives ``socket_connected``, ``socket_disconnected``, ``room_joined``,
  ``room_left``; ``on_any_incoming`` / ``on_any_outgoing`` give ``event_received`` /
  ``event_sent``. Events of the admin namespace itself are not reported: reporting is emitting
  there, which would report itself without end.
- A task (started when the first admin connects: the server is running then) sends
  ``server_stats`` every ``server_stats_interval`` seconds, and reports the sockets whose
  connection upgraded from long-polling to WebSocket since (``socket_updated``).
- The UI's commands (``emit``, ``join``, ``leave``, ``_disconnect``), unless ``read_only``, act
  on the sockets of a namespace, or of one room of it (a socket id is a room too).

Production mode (as Node's): ``config`` and ``server_stats`` only, no per-socket reporting, so no
hook runs per event. The development mode's hooks make every emit go socket by socket (each is
reported), instead of being encoded once for all its targets: that is its cost.

What the UI gets differs from Node's in these, on purpose:

- ``handshake.address`` is callbox's (past trusted proxies only), not a ``X-Forwarded-For`` or
  ``CF-Connecting-IP`` header any client can set; the CONNECT payload (``auth``) is never shown
  (the admin's own password is in it), as in Node.
- ``clientId`` is the first 12 characters of the Engine.IO session id, as in Node: the whole id
  would let whoever reads the screen take over a long-polling session.
- ``data`` is the socket's ``state`` (as JSON: what does not encode shows as its ``repr``); its
  changes are not pushed (Node proxies ``socket.data`` for that; a ``state`` has no hook).
- ``aggregatedEvents`` has ``rawConnection`` and ``rawDisconnection`` (by close reason), counted
  from the server's session table and its closed-sessions counter, so they count every
  application's sessions when several share the port; not ``packetsIn``/``packetsOut`` /
  ``bytesIn``/``bytesOut``: the public API has no hook at the Engine.IO packet level.
- The password is compared as given (constant time); Node requires a bcrypt hash there, which
  would need a dependency callbox does not have. Keep it out of the source (an environment
  variable, a secret file).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import inspect
import logging
import os
import platform
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal

import msgspec
import trio

from . import Broadcast, CloseReason, ConnectionRefused, EngineServer, Namespace, Socket, SocketIO

__all__ = ["instrument", "Instrumentation", "AuthCheck"]

log = logging.getLogger("callbox.admin")

AuthCheck = Callable[[Any], bool | Awaitable[bool]]
"""``check(auth) -> bool`` (may be async): the CONNECT payload the UI sent (``{"username",
"password"}`` from its login form, ``{"sessionId"}`` after a reload) is an admin's."""

# The UI's names for what a server offers (socket.io-admin-ui lib/typed-events.ts, ``Feature``).
# The commands: EMIT, JOIN, LEAVE, DISCONNECT act on one socket, the M* ones on all those of a
# namespace or room; AGGREGATED_EVENTS: server_stats carries aggregatedEvents; ALL_EVENTS: the
# per-socket reports of development mode.
COMMAND_FEATURES: Final = ("EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT")

# The UI's own server sends server_stats every 2 s (socket.io-admin-ui's initStatsEmitter), and
# marks a server unhealthy after 10 s without (its ui/src/store/modules/servers.js).
STATS_INTERVAL: Final = 2.0
# What Node's instrument() shows of the Engine.IO session id (its registerVerboseListeners).
CLIENT_ID_CHARS: Final = 12
# How long a session id given to the UI stays good: a day, as Node's RedisStore keeps one
# (socket.io-admin-ui lib/stores.ts); its InMemoryStore keeps them for the process's life.
SESSION_TTL: Final = 24 * 3600.0
# Session ids kept at most (the oldest goes first): each successful login adds one.
MAX_SESSIONS: Final = 1024
# The message the UI recognizes as a wrong login (it then shows its login form again).
REFUSED: Final = "invalid credentials"
# Event names a server may not emit (Node's RESERVED_EVENTS): a client takes them for its own.
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

HOSTNAME: Final = platform.node()

Mode = Literal["development", "production"]


def instrument(
    app: SocketIO,
    *,
    auth: Mapping[str, str] | AuthCheck | None,
    namespace: str = "/admin",
    read_only: bool = False,
    server_id: str | None = None,
    mode: Mode = "development",
    server_stats_interval: float = STATS_INTERVAL,
    allow_unauthenticated: bool = False,
) -> Instrumentation:
    """Serve the Admin UI's namespace on ``app``; call it before serving.

    ``auth``: ``{"username": ..., "password": ...}`` (compared in constant time), or a function
    ``check(auth) -> bool`` (may be async) given the CONNECT payload, or None: anyone may watch
    and command, refused unless ``allow_unauthenticated`` is true as well.
    ``namespace``: the admin namespace (the UI's default is ``/admin``); it must not exist yet.
    ``read_only``: the UI may watch but not act (no ``emit``, ``join``, ``leave``, ``_disconnect``).
    ``server_id``: the server's name in the UI's server list (default: the host name).
    ``mode``: ``"development"`` reports every socket, room change and event; ``"production"``
    only the statistics.
    ``server_stats_interval``: seconds between two ``server_stats``.
    """
    return Instrumentation(
        app, auth=auth, namespace=namespace, read_only=read_only, server_id=server_id, mode=mode,
        server_stats_interval=server_stats_interval, allow_unauthenticated=allow_unauthenticated,
    )


def _now() -> str:
    """Now, as the UI's timestamps are (JavaScript's ``Date`` in JSON): ISO 8601, UTC, ms."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _digest(text: str) -> bytes:
    # Compared as digests, so that the comparison takes as long whatever the lengths.
    return hashlib.sha256(text.encode()).digest()


class _Sessions:
    """The session ids given to logged-in UIs (a reload reconnects with one instead of the password)."""

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}  # id -> when it expires (trio's clock), oldest first

    def new(self) -> str:
        now = trio.current_time()
        for session, deadline in list(self._deadlines.items()):  # oldest first
            if deadline > now and len(self._deadlines) < MAX_SESSIONS:
                break
            del self._deadlines[session]
        session = secrets.token_hex(16)
        self._deadlines[session] = now + SESSION_TTL
        return session

    def valid(self, session: Any) -> bool:
        if not isinstance(session, str):
            return False
        deadline = self._deadlines.get(session)
        if deadline is None:
            return False
        if deadline <= trio.current_time():
            del self._deadlines[session]
            return False
        return True


class Instrumentation:
    """The admin namespace of an app (see :func:`instrument`): ``namespace``, ``features`` (what its
    ``config`` offers), ``serialize(socket)`` and ``stats()`` (what the UI gets)."""

    def __init__(
        self,
        app: SocketIO,
        *,
        auth: Mapping[str, str] | AuthCheck | None,
        namespace: str = "/admin",
        read_only: bool = False,
        server_id: str | None = None,
        mode: Mode = "development",
        server_stats_interval: float = STATS_INTERVAL,
        allow_unauthenticated: bool = False,
    ) -> None:
        if mode not in ("development", "production"):
            raise ValueError(f"mode is 'development' or 'production', not {mode!r}")
        if not server_stats_interval > 0:
            raise ValueError("server_stats_interval must be positive")
        if namespace in app.namespaces:
            raise ValueError(f"the namespace {namespace!r} is in use: the admin namespace needs its own")
        self._credentials: tuple[bytes, bytes] | None = None
        self._check: AuthCheck | None = None
        if auth is None:
            if not allow_unauthenticated:
                raise ValueError("auth is None: pass allow_unauthenticated=True to let anyone in (and command)")
        elif isinstance(auth, Mapping):
            username, password = auth.get("username"), auth.get("password")
            if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
                raise ValueError('auth is {"username": ..., "password": ...}, both non-empty strings')
            self._credentials = (_digest(username), _digest(password))
        elif callable(auth):
            self._check = auth
        else:
            raise TypeError("auth is a {username, password} mapping, a function, or None")
        self.app = app
        self.read_only = read_only
        self.mode: Mode = mode
        self.server_id = server_id or HOSTNAME
        self.interval = server_stats_interval
        features = [] if read_only else list(COMMAND_FEATURES)
        features.append("AGGREGATED_EVENTS")
        if mode == "development":
            features.append("ALL_EVENTS")
        self.features: list[str] = features
        self.namespace: Namespace = app.of(namespace)
        self._sessions = _Sessions()
        self._started = time.monotonic()
        self._server: EngineServer | None = None  # known once an admin connected (the stats need it)
        self._ticking = False
        self._raw: tuple[int, dict[str, int]] | None = None  # sessions opened and closed, at the last tick
        self._upgrading: dict[tuple[str, str], Socket] = {}  # sockets shown on long-polling
        self._aggregated: list[dict[str, Any]] = []

        ns = self.namespace
        ns.use(self._authenticate)
        ns.on_connect(self._admin_connected)
        if not read_only:
            ns.on("emit")(self._emit)
            ns.on("join")(self._join)
            ns.on("leave")(self._leave)
            ns.on("_disconnect")(self._disconnect)
        if mode == "development":
            app.on_socket_change(self._socket_changed)
            app.on_any_incoming(self._received)
            app.on_any_outgoing(self._sent)

    # -- what the UI sees ------------------------------------------------------------------------

    def serialize(self, socket: Socket) -> dict[str, Any]:
        """A socket as the UI shows it (socket.io-admin-ui's ``SerializedSocket``)."""
        hs = socket.handshake
        headers = hs.headers
        transport = socket.transport
        if transport == "polling":
            self._upgrading[(socket.namespace.name, socket.id)] = socket
        return {
            "id": socket.id,
            "clientId": socket.conn.sid[:CLIENT_ID_CHARS],
            "transport": transport,
            "nsp": socket.namespace.name,
            "data": self._data(socket),
            "handshake": {
                "address": hs.address,
                "headers": headers,
                "query": hs.query,
                "issued": int(hs.issued * 1000),  # ms since the epoch, as Node's Date.now()
                "secure": hs.secure,
                "time": hs.time,
                "url": hs.url,
                "xdomain": "origin" in headers,  # as Node: a browser sent it from a page
            },
            # A socket id is a room of its own, which the UI shows as the socket's private room.
            "rooms": [socket.id, *sorted(socket.rooms)],
        }

    @staticmethod
    def _data(socket: Socket) -> Any:
        if socket.state is None:
            return {}
        try:
            return msgspec.to_builtins(socket.state, str_keys=True, enc_hook=repr)
        except Exception:  # a state that does not even repr: show nothing rather than fail the admin
            return {}

    def stats(self, joining: Socket | None = None) -> dict[str, Any]:
        """What ``server_stats`` says now (its ``aggregatedEvents``: those since the last one sent);
        ``joining``: a socket being accepted, counted already."""
        server = self._server
        extra = joining.namespace if joining is not None and not joining.connected else None
        sessions = [] if server is None else [s for s in server.sessions.values() if s.app is self.app]
        return {
            "serverId": self.server_id,
            "hostname": HOSTNAME,
            "pid": os.getpid(),
            "uptime": time.monotonic() - self._started,
            "clientsCount": len(sessions),
            "pollingClientsCount": sum(1 for s in sessions if s.transport == "polling"),
            "aggregatedEvents": list(self._aggregated),
            "namespaces": [{"name": ns.name, "socketsCount": len(ns.sockets) + (ns is extra)}
                           for ns in self.app.namespaces.values()],
        }

    def _report(self, event: str, *args: Any) -> None:
        self.namespace.emit(event, *args)

    # -- the admin namespace ---------------------------------------------------------------------

    async def _authenticate(self, socket: Socket, auth: Any) -> None:
        if self._credentials is not None:
            if isinstance(auth, dict) and self._sessions.valid(auth.get("sessionId")):
                return
            if not self._matches(auth):
                log.info("admin login refused from %s", socket.handshake.address)
                raise ConnectionRefused(REFUSED)
            socket.emit("session", self._sessions.new())
        elif self._check is not None:
            verdict = self._check(auth)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                log.info("admin login refused from %s", socket.handshake.address)
                raise ConnectionRefused(REFUSED)

    def _matches(self, auth: Any) -> bool:
        assert self._credentials is not None
        if not isinstance(auth, dict):
            return False
        username, password = auth.get("username"), auth.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        user_ok = hmac.compare_digest(_digest(username), self._credentials[0])
        password_ok = hmac.compare_digest(_digest(password), self._credentials[1])
        return user_ok & password_ok  # both compared, whichever is wrong

    async def _admin_connected(self, socket: Socket, auth: Any) -> None:
        self._server = socket.conn.server  # the one serving now (an app may be served again)
        socket.emit("config", {"supportedFeatures": self.features})
        if self.mode == "development":
            shown = [self.serialize(s) for ns in list(self.app.namespaces.values()) for s in list(ns.sockets.values())]
            shown.append(self.serialize(socket))  # itself, as Node's (not in its namespace until accepted)
            socket.emit("all_sockets", shown)
        socket.emit("server_stats", {**self.stats(socket), "aggregatedEvents": []})  # the dashboard at once
        if not self._ticking:
            self._ticking = True
            self._raw = self._raw_counts()
            self.app.start_soon(self._tick)

    # -- statistics --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        try:
            while True:
                await trio.sleep(self.interval)
                self._count_raw()
                if self.namespace.sockets:
                    self._report("server_stats", self.stats())
                    self._report_upgrades()
                else:
                    self._upgrading.clear()
                self._aggregated.clear()
        finally:
            self._ticking = False  # the server stopped; the next one's first admin starts it again

    def _raw_counts(self) -> tuple[int, dict[str, int]]:
        """Sessions ever opened on the server, and those closed by reason."""
        server = self._server
        if server is None:
            return 0, {}
        closed = {reason.value: int(server.closed.get(reason.value)) for reason in CloseReason}
        return sum(closed.values()) + len(server.sessions), closed

    def _count_raw(self) -> None:
        before, self._raw = self._raw, self._raw_counts()
        if before is None:
            return
        stamp = int(time.time()) * 1000  # the UI's histograms count by the second
        opened = self._raw[0] - before[0]
        if opened > 0:
            self._aggregated.append({"timestamp": stamp, "type": "rawConnection", "count": opened})
        for reason, count in self._raw[1].items():
            if (gone := count - before[1].get(reason, 0)) > 0:
                self._aggregated.append({"timestamp": stamp, "type": "rawDisconnection", "subType": reason,
                                         "count": gone})

    def _report_upgrades(self) -> None:
        for key, socket in list(self._upgrading.items()):
            if socket.namespace.sockets.get(socket.id) is not socket:
                del self._upgrading[key]
            elif socket.transport != "polling":
                del self._upgrading[key]
                self._report("socket_updated", {"id": socket.id, "nsp": socket.namespace.name,
                                                "transport": socket.transport})

    # -- development mode: what happens, as it happens ------------------------------------------

    def _socket_changed(self, change: str, socket: Socket, detail: Any) -> None:
        if not self.namespace.sockets:
            return
        name = socket.namespace.name
        if change == "connect":
            self._report("socket_connected", self.serialize(socket), _now())
        elif change == "disconnect":
            self._upgrading.pop((name, socket.id), None)
            self._report("socket_disconnected", name, socket.id, detail, _now())
        elif change == "join":
            self._report("room_joined", name, detail, socket.id, _now())
        elif change == "leave":
            self._report("room_left", name, detail, socket.id, _now())

    def _received(self, socket: Socket, event: str, args: Iterable[Any]) -> None:
        if socket.namespace is not self.namespace and self.namespace.sockets:
            self._report("event_received", socket.namespace.name, socket.id, [event, *args], _now())

    def _sent(self, socket: Socket, event: str, args: Iterable[Any]) -> None:
        if socket.namespace is not self.namespace and self.namespace.sockets:
            self._report("event_sent", socket.namespace.name, socket.id, [event, *args], _now())

    # -- the UI's commands ---------------------------------------------------------------------

    def _targets(self, nsp: Any, room: Any) -> Broadcast | None:
        """The sockets of namespace ``nsp`` (in ``room``, if one is given: a socket id is a room)."""
        ns = self.app.namespaces.get(nsp) if isinstance(nsp, str) else None
        if ns is None:
            return None
        if room is None or room == "":
            return Broadcast(ns)
        if isinstance(room, str):
            return Broadcast(ns).to(room)
        if isinstance(room, list) and all(isinstance(r, str) for r in room):
            return Broadcast(ns).to(room)
        return None

    async def _emit(self, socket: Socket, nsp: Any = None, room: Any = None, event: Any = None, *args: Any) -> None:
        targets = self._targets(nsp, room)
        if targets is None or not isinstance(event, str) or event in RESERVED_EVENTS:
            log.info("admin %s: emit to %r %r of %r ignored", socket.id, nsp, room, event)
            return
        targets.emit(event, *args)

    async def _join(self, socket: Socket, nsp: Any = None, room: Any = None, which: Any = None) -> None:
        targets = self._targets(nsp, which)
        if targets is not None and isinstance(room, str):
            await targets.sockets_join(room)

    async def _leave(self, socket: Socket, nsp: Any = None, room: Any = None, which: Any = None) -> None:
        targets = self._targets(nsp, which)
        if targets is not None and isinstance(room, str):
            await targets.sockets_leave(room)

    async def _disconnect(self, socket: Socket, nsp: Any = None, close: Any = False, which: Any = None) -> None:
        targets = self._targets(nsp, which)
        if targets is None:
            return
        chosen = await targets.fetch_sockets()
        if close is not True:
            for sock in chosen:
                await sock.disconnect()
            return
        # Close their connections, as Node's disconnect(true): each socket of those connections,
        # in every namespace, is told (so that its client does not reconnect), then the connection
        # closes.
        conns = {sock.conn.sid: sock.conn for sock in chosen if sock.connected}
        for ns in list(self.app.namespaces.values()):
            for sock in list(ns.sockets.values()):
                if sock.connected and sock.conn.sid in conns:
                    await sock.disconnect()
        for conn in conns.values():
            conn.close(CloseReason.FORCED_CLOSE)
