"""The Trio shell's server: one port serving an Engine.IO application over HTTP long-polling and
WebSocket.

Where things live (each file one job):

- ``connection.py``: one TCP connection, HTTP/1.1 with h11, until it closes or becomes a WebSocket;
- ``routing.py``: Engine.IO's HTTP rules, sans-IO (which request is what, CORS, what to refuse);
- ``admission.py``: the caps and rates on connections and sessions;
- ``polling.py`` and ``websocket.py``: the two transports;
- ``session.py``: a session as the application sees it, the one function that applies what its
  core reports, and the session task (heartbeat, deadlines, writes);
- here: the server (listeners, the session table, metrics, delivery to the app, shutdown).

Lifetimes (each owner cleans up what it owns): the server nursery owns the listeners, every
connection task, every session task, the task of the alarms (while any is set) and the
application's own task.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import h11
import trio

from ..alarms import Alarms
from ..config import Config
from ..engineio import CloseReason, EngineSession
from ..metrics import Counter, Gauge, Registry
from .admission import REFUSALS, Admission
from .connection import handle_connection
from .http import Handshake, ProxyTrust, StaticFiles
from .routing import FORBIDDEN, UNKNOWN_SID, HTTPError
from .session import EngineSocket, run_session

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["EngineApp", "EngineSocket", "EngineServer"]

log = logging.getLogger("callbox.engine")


class EngineApp(Protocol):
    """What the server calls. Each callback runs in the task that received the event."""

    async def on_open(self, sock: EngineSocket) -> None:
        """A session opened (over polling, or a WebSocket)."""

    async def on_message(self, sock: EngineSocket, data: str | bytes) -> None:
        """A message from the session's client: text, or bytes for a binary one."""

    async def on_close(self, sock: EngineSocket, reason: CloseReason) -> None:
        """The session ended, for ``reason``."""

    async def run(self) -> None:
        """Background work of the application, run in the server nursery until shutdown."""

    # Optional: ``unready() -> str | None``, why /readyz should answer 503 (None: ready);
    # ``async admit(handshake) -> bool``, whether a new session may open (False: 403);
    # ``async handshake_headers(handshake) -> list[(name, value)] | None``, headers added to a new
    # session's answer (None: refused, 403).


class EngineServer:
    """Serves an Engine.IO application on one port, at ``config.path``, and others at their own
    paths (``mounts``: path -> application; two Socket.IO apps, or one and a raw Engine.IO app, as
    Node mounts several servers on one HTTP server)."""

    # Bytes read from a socket at once: one read takes a typical burst of small frames.
    RECEIVE_SIZE = 64 * 1024
    # After refusing a client, read and drop what it still sends for up to this long (and this
    # much), so that our close reaches it instead of a reset.
    LINGER, LINGER_BYTES = 1.0, 1 << 20

    def __init__(self, app: EngineApp, config: Config, metrics: Registry | None = None, *,
                 mounts: dict[str, EngineApp] | None = None) -> None:
        self.app = app
        self.config = config
        self.apps: dict[str, EngineApp] = {config.path: app}  # by Engine.IO path
        for path, other in (mounts or {}).items():
            if not path.startswith("/") or not path.endswith("/"):
                raise ValueError(f"a mount path starts and ends with '/', got {path!r}")
            if path in self.apps:
                raise ValueError(f"two applications at {path!r}")
            self.apps[path] = other
        self.sessions: dict[str, EngineSocket] = {}  # by Engine.IO session id
        # The deadlines of the sessions that WebSocket readers run: each wakes its reader.
        self.alarms: Alarms[EngineSocket] = Alarms(self._start_soon, _wake)
        self.metrics = metrics or getattr(app, "metrics", None) or Registry()
        self.draining = False
        self.proxies = ProxyTrust(config.trusted_proxies)
        self.static = StaticFiles(config.static) if config.static else None
        self._nursery: trio.Nursery | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._sessions_gone = trio.Event()  # set when draining and the last session has ended
        self._closing = 0  # sessions whose application close handler still runs
        self.refused = self.metrics.add(Counter(
            "callbox_http_refused_total", "Connections and requests refused or cut off, by reason.", ["reason"],
            initial=[(r,) for r in REFUSALS],
        ))
        self.admission = Admission(config, self.refused)
        self.closed = self.metrics.add(Counter(
            "callbox_sessions_closed_total", "Engine.IO sessions ended, by reason.", ["reason"],
            initial=[(r.value,) for r in CloseReason],
        ))
        self.rate_limited = self.metrics.add(Counter(
            "callbox_rate_limited_total",
            "Client packets dropped by the per-session rate limit, and sessions cut off for flooding.",
            ["action"],
            initial=[("dropped",), ("disconnected",)],
        ))
        self.metrics.add(Gauge(
            "callbox_connections", "Open Engine.IO sessions by transport.", ["transport"], fn=self._count_transports
        ))
        self.metrics.add(Gauge(
            "callbox_tcp_connections", "Open TCP connections.", fn=lambda: {(): float(self.admission.connections)}
        ))

    def unknown_session(self, sid: str, address: str) -> HTTPError:
        """A request for a session this server does not have: the 400 it gets, and a log line that
        says why that happens (an ended session, or, behind a load balancer, another node's)."""
        log.info("unknown session id: it ended, or the request reached another node than the one "
                 "that opened it (long-polling behind a load balancer needs sticky sessions)",
                 extra={"fields": {"sid": sid[:40], "remote": address}})
        return HTTPError(400, UNKNOWN_SID)

    def unready(self) -> str | None:
        """Why this server should not get new clients now (/readyz's 503), or None."""
        if self.draining:
            return "draining"
        for app in self.apps.values():
            check = getattr(app, "unready", None)
            if check is not None and (why := check()) is not None:
                return str(why)
        return None

    def app_at(self, path: str) -> EngineApp | None:
        """The application served at ``path`` (with or without its final slash), if any."""
        app = self.apps.get(path)
        return app if app is not None else self.apps.get(path + "/")

    def _count_transports(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {("polling",): 0.0, ("websocket",): 0.0}
        for sock in self.sessions.values():
            counts[(sock.transport,)] += 1
        return counts

    # -- running ----------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled. ``task_status.started`` gets the (TCP) listeners."""
        cfg = self.config
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host or None)
        serving: list[Any] = list(listeners)
        if cfg.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            context.set_alpn_protocols(["http/1.1"])
            serving = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for app in self.apps.values():
                nursery.start_soon(app.run)
            await nursery.start(self._accept, serving)
            task_status.started(listeners)

    async def _accept(self, serving: list[Any], *, task_status: trio.TaskStatus[list[Any]]) -> None:
        """Accept connections until :meth:`shutdown`, which cancels this and closes the listeners.
        Connections live in the server nursery, not here, so that stopping accepting leaves open
        connections to close cleanly."""
        assert self._nursery is not None
        with trio.CancelScope() as self._accept_scope:
            try:
                await trio.serve_listeners(partial(handle_connection, self), serving, handler_nursery=self._nursery,
                                           task_status=task_status)
            finally:
                with trio.CancelScope(shield=True):
                    for listener in serving:
                        await listener.aclose()  # a draining node refuses new connections at once

    def _start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    async def shutdown(self, *, handover: bool = False) -> None:
        """Drain: stop accepting, fail /readyz, let the app end its work, close every session
        (what is queued is still delivered), and return once all are gone. Bound it with a
        cancel scope; whatever is left then is cut off by cancelling :meth:`serve`.

        ``handover``: the app hands its clients over to other nodes (``app.shutdown(handover=True)``)
        and the sessions close with reason ``server handover``."""
        self.draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for app in self.apps.values():
            shutdown = getattr(app, "shutdown", None)
            if shutdown is not None:
                await (shutdown(handover=True) if handover else shutdown())
        reason = CloseReason.HANDOVER if handover else CloseReason.SERVER_SHUTDOWN
        for sock in list(self.sessions.values()):
            sock.close(reason)
        if self.sessions or self._closing:
            await self._sessions_gone.wait()

    async def linger(self, stream: Any) -> None:
        """Read and drop what the client still sends, for a moment, so that closing does not reset
        the connection before the client has read our answer (or close frame)."""
        with trio.move_on_after(self.LINGER):
            try:
                if isinstance(stream, trio.SocketStream):  # TLS streams cannot half-close
                    await stream.send_eof()
                drained = 0
                while drained < self.LINGER_BYTES and (chunk := await stream.receive_some(self.RECEIVE_SIZE)):
                    drained += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # -- sessions ---------------------------------------------------------------------------

    async def handshake(self, app: EngineApp, conn: Connection,
                        request: h11.Request) -> tuple[Handshake, list[tuple[str, str]]]:
        """A request for a new session: what the application sees of it, once it allowed it (its
        ``admit(handshake)``: False refuses with 403), and the headers it adds to the answer
        (its ``handshake_headers(handshake)``: cookies for sticky sessions, say)."""
        handshake = Handshake(request.target, request.headers, conn.address, isinstance(conn.stream, trio.SSLStream))
        allow = getattr(app, "admit", None)
        if allow is not None and not await allow(handshake):
            log.info("request not allowed by the application", extra={"fields": {"remote": conn.address}})
            raise HTTPError(403, FORBIDDEN, refused="not_allowed")
        make_headers = getattr(app, "handshake_headers", None)
        headers = [] if make_headers is None else await make_headers(handshake)
        if headers is None:
            raise HTTPError(403, FORBIDDEN, refused="not_allowed")
        return handshake, headers

    def new_session(self, address: str, *, websocket: bool, base64: bool = False,
                    handshake: Handshake | None = None, app: EngineApp | None = None) -> EngineSocket:
        """A new session (not yet started: :meth:`start_session`) for a client at ``address``."""
        cfg = self.config
        while (sid := secrets.token_urlsafe(15)) in self.sessions:  # 120 random bits
            pass
        core = EngineSession(
            sid, websocket=websocket, now=trio.current_time(),
            ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout, max_outbox_bytes=cfg.max_outbox,
            event_rate=cfg.event_rate, event_burst=cfg.event_burst, base64=base64,
        )
        return EngineSocket(self, core, address, handshake, self.app if app is None else app)

    async def start_session(self, sock: EngineSocket) -> None:
        """Register the session, start its task (over polling; a WebSocket's reader runs the
        sessions made over it), and tell the application."""
        assert self._nursery is not None
        self.sessions[sock.sid] = sock
        self.admission.session_opened(sock.remote_address)
        if sock.runs_itself:
            self._nursery.start_soon(run_session, self, sock)
        log.info("session opened", extra={"fields": {"sid": sock.sid, "remote": sock.remote_address,
                                                     "transport": sock.transport}})
        try:
            await sock.app.on_open(sock)
        except Exception:
            log.exception("open handler failed for session %s", sock.sid)
            sock.lose(CloseReason.TRANSPORT_ERROR)

    async def session_ended(self, sock: EngineSocket) -> None:
        """The session task's last act: forget the session, count it, tell the application."""
        sid = sock.sid
        self.sessions.pop(sid, None)
        self.admission.session_closed(sock.remote_address)
        reason = sock.core.close_reason or CloseReason.TRANSPORT_CLOSE
        self.closed.inc(reason.value)
        if reason is CloseReason.RATE_LIMITED:
            self.rate_limited.inc("disconnected")
        log.info("session closed", extra={"fields": {"sid": sid, "remote": sock.remote_address,
                                                     "reason": reason.value}})
        self._closing += 1
        try:
            await sock.app.on_close(sock, reason)
        except Exception:
            log.exception("close handler failed for session %s", sid)
        finally:
            self._closing -= 1
            if self.draining and not self.sessions and not self._closing:
                self._sessions_gone.set()

    def handler_failed(self, sock: EngineSocket) -> None:
        """The session's message handler raised (call it in the ``except`` around
        ``sock.app.on_message``, as both transports do): a handler's exception closes its own
        session, never the server."""
        log.exception("message handler failed for session %s", sock.sid)
        sock.lose(CloseReason.TRANSPORT_ERROR)

    def packet_dropped(self, sock: EngineSocket) -> None:
        """The session's rate limit dropped a packet (logged once per session)."""
        if not sock._limited:
            sock._limited = True
            log.info("session rate limited", extra={"fields": {"sid": sock.sid, "remote": sock.remote_address}})
        self.rate_limited.inc("dropped")


async def _wake(sock: EngineSocket) -> None:
    sock.wake()
