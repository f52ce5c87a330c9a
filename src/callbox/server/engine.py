"""The Trio shell: one port serving Engine.IO over HTTP long-polling and WebSocket.

Lifetimes (each owner cleans up what it owns):

- the server nursery owns the listeners, every session task, and the application's own task;
- a session task owns its Engine.IO session: its heartbeat, its writes to a WebSocket, its
  close, and the application's close callback. Sessions outlive single requests and transports;
- a connection task owns its TCP stream: it reads requests with h11, answers polls, and after a
  WebSocket upgrade reads frames (server/wsframe.py) and hands messages to the application inline (so
  the messages of one client are handled in order, with no task hop per message).

Writes: a WebSocket is written only by its session's task, which drains the whole outbox into
one ``send_all``; a poll is answered by the connection task that holds it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import ssl
from functools import partial
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit

import h11
import msgspec
import trio

from ..config import Config
from ..engineio import (
    CloseReason,
    EngineIOProtocolError,
    EngineSession,
    PollConflict,
    SessionState,
    TransportMismatch,
)
from ..metrics import Counter, Gauge, Registry
from ..ratelimit import RateLimiter
from .http import ProxyTrust, StaticFiles
from .wsframe import BINARY, CLOSE, CODECS, PING, TEXT, WSCodec, WSProtocolError, accept_token

__all__ = ["EngineApp", "EngineSocket", "EngineServer"]

log = logging.getLogger("callbox.engine")

# h11 refuses a request head larger than this: far above any real browser request (cookies
# included), small enough that a client cannot make us hold much.
MAX_REQUEST_HEAD = 16 * 1024
# WebSocket close codes we send (RFC 6455 7.4.1); 1005 means the client's close gave none.
PROTOCOL_ERROR, POLICY_VIOLATION = 1002, 1008
# After refusing a client, read and drop what it still sends for up to this long (and this much),
# so that our close reaches it instead of a reset.
LINGER, LINGER_BYTES = 1.0, 1 << 20
# Bytes read from a socket at once: one read takes a typical burst of small frames.
RECEIVE_SIZE = 64 * 1024

_ERRORS = {
    0: "Transport unknown",
    1: "Session ID unknown",
    2: "Bad handshake method",
    3: "Bad request",
    4: "Forbidden",
    5: "Unsupported protocol version",
}


class EngineApp(Protocol):
    """What the server calls. Each callback runs in the task that received the event."""

    async def on_open(self, sock: EngineSocket) -> None: ...
    async def on_message(self, sock: EngineSocket, data: str | bytes) -> None: ...
    async def on_close(self, sock: EngineSocket, reason: CloseReason) -> None: ...
    async def run(self) -> None:
        """Background work of the application, run in the server nursery until shutdown."""


class EngineSocket:
    """One Engine.IO session as the application sees it: send text or bytes, close, and a
    ``state`` slot for the application's own use."""

    __slots__ = (
        "core", "server", "remote_address", "state", "_limited", "_lot", "_ws", "_stream", "_ws_scope", "_wlock",
        "_write_scope",
    )

    def __init__(self, server: EngineServer, core: EngineSession, remote_address: str) -> None:
        self.core = core
        self.server = server
        self.remote_address = remote_address
        self.state: Any = None
        self._limited = False  # its rate limit has dropped packets (logged once)
        self._lot = trio.lowlevel.ParkingLot()
        self._ws: WSCodec | None = None  # the WebSocket this session writes to, once upgraded
        self._stream: Any | None = None
        self._ws_scope: trio.CancelScope | None = None  # cancels that WebSocket's reader
        # The session task and the reader (for pongs to WebSocket pings, close answers) both
        # write to an upgraded WebSocket; this keeps their writes whole.
        self._wlock: trio.Lock | None = None
        self._write_scope: trio.CancelScope | None = None  # the WebSocket write under way, if any

    @property
    def sid(self) -> str:
        return self.core.sid

    @property
    def transport(self) -> str:
        return "websocket" if self.core.state is SessionState.WEBSOCKET else "polling"

    @property
    def is_open(self) -> bool:
        return self.core.is_open

    def send(self, data: str | bytes) -> bool:
        """Queue a message; False if the session is closed (or was just closed for being slow)."""
        ok = self.core.send(data)
        self._lot.unpark_all()
        if not ok and self._write_scope is not None:
            self._write_scope.cancel()  # cut off as too slow: abandon the write it is stuck in
        return ok

    def close(self, reason: CloseReason = CloseReason.FORCED_CLOSE) -> None:
        """Close the session: what is queued goes first, then the close packet."""
        self.core.close(reason, trio.current_time())
        self._lot.unpark_all()

    def _lose(self, reason: CloseReason) -> None:
        self.core.lost(reason)
        self._lot.unpark_all()
        if self._write_scope is not None:
            self._write_scope.cancel()


def _websocket_key(request: h11.Request) -> bytes:
    """The Sec-WebSocket-Key of a valid RFC 6455 opening handshake, or the HTTP error to answer."""
    headers: dict[bytes, bytes] = {}
    for name, value in request.headers:
        headers[name] = headers[name] + b"," + value if name in headers else value
    if headers.get(b"sec-websocket-version", b"").strip() != b"13":
        raise _HTTPError(426, 3, headers=(("Sec-WebSocket-Version", "13"),))
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    key = headers.get(b"sec-websocket-key", b"").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if b"upgrade" not in tokens or not valid_key:
        raise _HTTPError(400, 3)
    return key


def _head_size(request: h11.Request) -> int:
    """About the bytes of a request head (h11 bounds only heads that arrive in pieces)."""
    return len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers)


def _smuggling_shape(request: h11.Request) -> bool:
    """Transfer-Encoding and Content-Length together: RFC 9112 6.1 says close after answering; a
    request shaped so is how smuggling through a proxy starts, so it is refused outright."""
    names = {name for name, _ in request.headers}
    return b"transfer-encoding" in names and b"content-length" in names


def _error_body(code: int) -> bytes:
    return msgspec.json.encode({"code": code, "message": _ERRORS[code]})


class _HTTPError(Exception):
    def __init__(self, status: int, code: int, *, retry_after: bool = False,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.headers = headers


def _finish_request_nowait(conn: h11.Connection) -> None:
    """Read what is left of the request from h11's buffer, without waiting for more bytes."""
    while conn.their_state is h11.SEND_BODY:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            return


def _declared_length(request: h11.Request) -> int:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return 0


_STATUS_TEXT = {408: b"Request timeout\n", 413: b"Payload too large\n"}


class EngineServer:
    """Serves one Engine.IO application on one port."""

    def __init__(self, app: EngineApp, config: Config, metrics: Registry | None = None) -> None:
        self.app = app
        self.config = config
        self.sessions: dict[str, EngineSocket] = {}
        self.metrics = metrics or getattr(app, "metrics", None) or Registry()
        self.draining = False
        self.connections = 0  # open TCP connections
        self._per_address: dict[str, int] = {}  # open TCP connections by client address
        self._per_address_sessions: dict[str, int] = {}
        self._address_rate = RateLimiter()  # new connections and sessions by client address
        self._proxies = ProxyTrust(config.trusted_proxies)
        self._static = StaticFiles(config.static) if config.static else None
        self._nursery: trio.Nursery | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._sessions_gone = trio.Event()  # set when draining and the last session has ended
        self._path = config.path
        self._path_noslash = config.path.rstrip("/")
        self.refused = self.metrics.add(Counter(
            "callbox_http_refused_total",
            "Connections and requests refused or cut off, by reason.",
            ["reason"],
            initial=[(r,) for r in ("max_connections", "max_connections_per_address", "connection_rate_per_address",
                                    "max_sessions", "max_sessions_per_address", "head_timeout", "body_timeout",
                                    "bad_request", "draining")],
        ))
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
            "callbox_tcp_connections", "Open TCP connections.", fn=lambda: {(): float(self.connections)}
        ))

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
            nursery.start_soon(self.app.run)
            with trio.CancelScope() as self._accept_scope:
                # Connections live in the server nursery, not the accept loop's, so that stopping
                # the accept loop (at shutdown) leaves open connections to close cleanly.
                await nursery.start(
                    partial(trio.serve_listeners, self._handle_connection, serving, handler_nursery=nursery)
                )
                task_status.started(listeners)
                await trio.sleep_forever()

    async def shutdown(self) -> None:
        """Drain: stop accepting, fail /readyz, let the app end its work, close every session
        (what is queued is still delivered), and return once all are gone. Bound it with a
        cancel scope; whatever is left then is cut off by cancelling :meth:`serve`."""
        self.draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        shutdown = getattr(self.app, "shutdown", None)
        if shutdown is not None:
            await shutdown()
        for sock in list(self.sessions.values()):
            sock.close(CloseReason.SERVER_SHUTDOWN)
        if self.sessions:
            await self._sessions_gone.wait()

    def _take_address_token(self, address: str) -> bool:
        """New connections and new sessions share one bucket per client address."""
        cfg = self.config
        return self._address_rate.take(address, trio.current_time(), cfg.connection_burst_per_address,
                                       cfg.connection_rate_per_address)

    def _admit_session(self, address: str) -> None:
        """May ``address`` open one more session? Else the handshake is refused (503/429)."""
        if self._per_address_sessions.get(address, 0) >= self.config.max_sessions_per_address:
            self.refused.inc("max_sessions_per_address")
            raise _HTTPError(503, 3, retry_after=True)
        if len(self.sessions) >= self.config.max_sessions:
            self.refused.inc("max_sessions")
            raise _HTTPError(503, 3, retry_after=True)
        if not self._take_address_token(address):
            self.refused.inc("connection_rate_per_address")
            raise _HTTPError(429, 3, retry_after=True)

    def _new_session(self, remote: str, *, websocket: bool) -> EngineSocket:
        cfg = self.config
        core = EngineSession(
            self._new_sid(), websocket=websocket, now=trio.current_time(),
            ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout, max_outbox_bytes=cfg.max_outbox,
            event_rate=cfg.event_rate, event_burst=cfg.event_burst,
        )
        return EngineSocket(self, core, remote)

    def _start_session(self, sock: EngineSocket) -> None:
        assert self._nursery is not None
        self.sessions[sock.sid] = sock
        address = sock.remote_address
        self._per_address_sessions[address] = self._per_address_sessions.get(address, 0) + 1
        self._nursery.start_soon(self._run_session, sock)
        log.info("session opened", extra={"fields": {"sid": sock.sid, "remote": address,
                                                     "transport": "websocket" if sock._ws else "polling"}})

    def _new_sid(self) -> str:
        while True:
            sid = secrets.token_urlsafe(15)  # 120 random bits
            if sid not in self.sessions:
                return sid

    async def _run_session(self, sock: EngineSocket) -> None:
        core = sock.core
        try:
            await self._session_loop(sock)
        except Exception:
            # A bug in one session must end that session only, never the server.
            log.exception("session failed", extra={"fields": {"sid": core.sid}})
            sock._lose(CloseReason.TRANSPORT_ERROR)
        finally:
            self.sessions.pop(core.sid, None)
            address = sock.remote_address
            left = self._per_address_sessions[address] - 1
            if left:
                self._per_address_sessions[address] = left
            else:
                del self._per_address_sessions[address]
            reason = core.close_reason or CloseReason.TRANSPORT_CLOSE
            self.closed.inc(reason.value)
            if reason is CloseReason.RATE_LIMITED:
                self.rate_limited.inc("disconnected")
            log.info("session closed", extra={"fields": {"sid": core.sid, "remote": address, "reason": reason.value}})
            if self.draining and not self.sessions:
                self._sessions_gone.set()
            if sock._ws_scope is not None:
                sock._ws_scope.cancel()
            sock._lot.unpark_all()
            with trio.CancelScope(shield=True):
                try:
                    await self.app.on_close(sock, reason)
                except Exception:
                    log.exception("close handler failed for session %s", core.sid)

    async def _session_loop(self, sock: EngineSocket) -> None:
        """Heartbeat, deadlines and WebSocket writes of one session, until it is closed."""
        core = sock.core
        while core.state is not SessionState.CLOSED:
            if sock._ws is not None and core.has_output and core.state in (
                SessionState.WEBSOCKET,
                SessionState.CLOSING,
            ):
                await self._flush_ws(sock)
                continue
            with trio.move_on_at(core.next_deadline()):
                await sock._lot.park()
            had_output = core.has_output
            core.handle_timeout(trio.current_time())
            if core.has_output and not had_output:
                sock._lot.unpark_all()  # a ping for a pending poll
            if sock._ws is None and sock._ws_scope is not None and core.state is SessionState.POLLING:
                sock._ws_scope.cancel()  # an upgrade that timed out: close its probe

    async def _flush_ws(self, sock: EngineSocket) -> None:
        ws, stream, lock = sock._ws, sock._stream, sock._wlock
        assert ws is not None and stream is not None and lock is not None
        items = sock.core.take_output()
        if not ws.open:
            # The client's close frame came in while we had output queued: nobody will read it.
            sock._lose(CloseReason.TRANSPORT_CLOSE)
            return
        data = b"".join(map(ws.message, items))
        if sock.core.state is SessionState.CLOSED:
            data += ws.close()
        # A write that cannot finish by the time a silent peer would be declared dead means the
        # peer is not reading: give up on it rather than block this session forever.
        with trio.move_on_at(sock.core.dead_by()) as scope:
            sock._write_scope = scope
            try:
                async with lock:
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                sock._lose(CloseReason.TRANSPORT_CLOSE)
            finally:
                sock._write_scope = None
        if scope.cancelled_caught:  # cut off as too slow, or silent past its heartbeat
            sock._lose(CloseReason.PING_TIMEOUT)

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle_connection(self, stream: Any) -> None:
        try:
            peer = getattr(stream, "transport_stream", stream).socket.getpeername()
            remote = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        except OSError:
            return
        self.connections += 1
        counted: list[str] = []  # the client address this connection counts against, once known
        try:
            upgraded = await self._serve_http(stream, remote, counted)
            if upgraded is not None:
                # The connection is a WebSocket from here on; h11's state and the request went
                # with _serve_http's frame, so they are not held for the WebSocket's whole life.
                await self._read_ws(upgraded.sock, upgraded.ws, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection failed", extra={"fields": {"remote": remote}})
        finally:
            self.connections -= 1
            for address in counted:
                left = self._per_address[address] - 1
                if left:
                    self._per_address[address] = left
                else:
                    del self._per_address[address]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve_http(self, stream: Any, remote: str, counted: list[str]) -> _Upgraded | None:
        """HTTP/1.1 requests on one connection, until it closes or becomes a WebSocket."""
        cfg = self.config
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                first = not counted
                with trio.move_on_after(cfg.request_head_timeout if first else cfg.keepalive_timeout) as scope:
                    event = await self._next_event(conn, stream)
                if scope.cancelled_caught:
                    if first or conn.trailing_data[0]:
                        self.refused.inc("head_timeout")  # slow-loris, or a silent client
                    return None  # an idle keep-alive connection just closes
                if not isinstance(event, h11.Request):
                    return None
                if _smuggling_shape(event):
                    self.refused.inc("bad_request")
                    await self._send_simple(conn, stream, 400, b"Bad request\n")
                    return None
                if _head_size(event) > MAX_REQUEST_HEAD:
                    self.refused.inc("bad_request")
                    await self._send_simple(conn, stream, 431, b"Bad request\n")
                    return None
                if first:
                    address = self._proxies.client_address(remote, event.headers)
                    refusal = self._admit(address)
                    if refusal is not None:
                        self.refused.inc(refusal)
                        status = 429 if refusal == "connection_rate_per_address" else 503
                        await self._send_simple(conn, stream, status, b"Too many connections\n", retry_after=True)
                        return None
                    self._per_address[address] = self._per_address.get(address, 0) + 1
                    counted.append(address)
                result = await self._handle_request(conn, stream, event, counted[0])
                if isinstance(result, _Upgraded):
                    return result
                if not result or conn.our_state is h11.MUST_CLOSE:
                    return None
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return None
        except h11.RemoteProtocolError as exc:
            self.refused.inc("bad_request")
            await self._send_simple(conn, stream, exc.error_status_hint, b"Bad request\n")
            return None
        finally:
            if conn.their_state is h11.SEND_BODY:
                with trio.CancelScope(shield=True):
                    await self._linger(stream)  # we answered before reading all it sent

    async def _linger(self, stream: Any) -> None:
        """Read and drop what the client still sends, for a moment, so that closing does not reset
        the connection before the client has read our answer (or close frame)."""
        with trio.move_on_after(LINGER):
            try:
                if isinstance(stream, trio.SocketStream):  # TLS streams cannot half-close
                    await stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES and (chunk := await stream.receive_some(RECEIVE_SIZE)):
                    drained += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _admit(self, address: str) -> str | None:
        """Why a new connection from ``address`` is refused, or None to let it in."""
        if self.connections > self.config.max_connections:
            return "max_connections"
        if self._per_address.get(address, 0) >= self.config.max_connections_per_address:
            return "max_connections_per_address"
        if not self._take_address_token(address):
            return "connection_rate_per_address"
        return None

    async def _next_event(self, conn: h11.Connection, stream: Any) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                conn.receive_data(data)
                continue
            return event

    async def _send(self, conn: h11.Connection, stream: Any, status: int,
                    headers: list[tuple[str, str]], body: bytes, *, head: bool = False) -> None:
        """One whole response in one write. ``head``: the request was HEAD, so headers only."""
        headers = [*headers, ("Content-Length", str(len(body)))]
        data = conn.send(h11.Response(status_code=status, headers=headers))
        assert data is not None
        out = [data]
        if body and not head:
            out.append(conn.send(h11.Data(data=body)) or b"")
        out.append(conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(b"".join(out))

    async def _send_simple(self, conn: h11.Connection, stream: Any, status: int, body: bytes,
                           *, retry_after: bool = False) -> None:
        """A plain-text answer, then the connection closes."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [("Content-Type", "text/plain"), ("Connection", "close")]
        if retry_after:
            headers.append(("Retry-After", "1"))
        try:
            await self._send(conn, stream, status, headers, body)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _cors_headers(self, request: h11.Request) -> list[tuple[str, str]] | None:
        """CORS answer headers, or None if the Origin is not allowed. No Origin: not a browser."""
        origin = host = None
        for name, value in request.headers:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None:
            return []
        allowed = self.config.cors_origins
        if "*" in allowed or origin in allowed or (
            not allowed and host is not None and urlsplit(origin).netloc == host
        ):
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            ]
        return None

    async def _handle_request(self, conn: h11.Connection, stream: Any,
                              request: h11.Request, remote: str) -> bool | _Upgraded:
        """Answer one request. True: the connection may carry another; False: close it; or the
        WebSocket it became."""
        target = request.target.decode("latin-1")
        path, _, query_string = target.partition("?")
        if path != self._path and path != self._path_noslash:
            try:
                await self._drain_body(conn, stream, 0)
            except _HTTPError as err:
                await self._send_simple(conn, stream, err.status, _STATUS_TEXT[err.status])
                return False
            await self._plain_http(conn, stream, request.method, path)
            return True
        cors = self._cors_headers(request)
        try:
            if cors is None:
                raise _HTTPError(403, 4)
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            if request.method == b"OPTIONS":
                await self._drain_body(conn, stream, 0)
                req_headers = next((v.decode("latin-1") for n, v in request.headers
                                    if n == b"access-control-request-headers"), "")
                headers = [*cors, ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                           ("Access-Control-Max-Age", "86400")]
                if req_headers:
                    headers.append(("Access-Control-Allow-Headers", req_headers))
                await self._send(conn, stream, 204, headers, b"")
                return True
            transport = query.get("transport")
            if transport not in ("polling", "websocket"):
                raise _HTTPError(400, 0)
            if query.get("EIO") != "4":
                raise _HTTPError(400, 5)
            sid = query.get("sid")
            if sid is None and self.draining:
                self.refused.inc("draining")
                raise _HTTPError(503, 3)
            is_upgrade = any(n == b"upgrade" and v.lower() == b"websocket" for n, v in request.headers)
            if transport == "websocket":
                if not is_upgrade or request.method != b"GET":
                    raise _HTTPError(400, 3)
                return await self._websocket(conn, stream, request, sid, remote)
            if sid is None:
                if request.method != b"GET":
                    raise _HTTPError(400, 2)
                await self._drain_body(conn, stream, 0)
                body = await self._open_polling(remote)
                await self._send(conn, stream, 200, [*cors, ("Content-Type", "text/plain; charset=UTF-8")], body)
                return True
            sock = self.sessions.get(sid)
            if sock is None:
                raise _HTTPError(400, 1)
            if request.method == b"GET":
                await self._drain_body(conn, stream, 0)
                return await self._poll(conn, stream, sock, cors)
            if request.method == b"POST":
                return await self._post(conn, stream, request, sock, cors)
            raise _HTTPError(400, 3)
        except _HTTPError as err:
            _finish_request_nowait(conn)  # a body we would discard is not waited for: we close instead
            headers = [*(cors or []), ("Content-Type", "application/json"), *err.headers]
            if err.retry_after:
                headers.append(("Retry-After", "1"))
            # A refused body (too large, too slow) ends the connection whether or not it all came.
            keep = conn.their_state is h11.DONE and err.status not in (408, 413)
            if not keep:
                headers.append(("Connection", "close"))
            await self._send(conn, stream, err.status, headers, _error_body(err.code), head=request.method == b"HEAD")
            return keep

    async def _plain_http(self, conn: h11.Connection, stream: Any, method: bytes, path: str) -> None:
        """Health, readiness, metrics and static files."""
        text = [("Content-Type", "text/plain; charset=utf-8")]
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            await self._send(conn, stream, 405, [*text, ("Allow", "GET, HEAD")], b"Method not allowed\n")
        elif path == "/healthz":
            await self._send(conn, stream, 200, text, b"ok\n", head=head)
        elif path == "/readyz":
            if self.draining:
                await self._send(conn, stream, 503, text, b"draining\n", head=head)
            else:
                await self._send(conn, stream, 200, text, b"ready\n", head=head)
        elif path == "/metrics":
            body = self.metrics.render()
            await self._send(conn, stream, 200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body,
                             head=head)
        elif self._static is not None and (file := self._static.resolve(path)) is not None:
            await self._send_file(conn, stream, method, file)
        else:
            await self._send(conn, stream, 404, text, b"Not found\n", head=head)

    async def _send_file(self, conn: h11.Connection, stream: Any, method: bytes, file: str) -> None:
        async with await trio.open_file(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            headers = [("Content-Type", StaticFiles.content_type(file)), ("Content-Length", str(size)),
                       ("Cache-Control", "no-cache")]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            if method == b"GET":
                while chunk := await f.read(RECEIVE_SIZE):
                    await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def _drain_body(self, conn: h11.Connection, stream: Any, limit: int) -> bytes:
        """Read the request body, refusing more than ``limit`` bytes, or one that does not arrive
        within ``request_head_timeout`` (slow-loris on the body)."""
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.config.request_head_timeout) as scope:
            while conn.their_state is h11.SEND_BODY:
                if size > limit:
                    raise _HTTPError(413, 3)
                event = await self._next_event(conn, stream)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
        if scope.cancelled_caught:
            self.refused.inc("body_timeout")
            raise _HTTPError(408, 3)
        if size > limit:
            raise _HTTPError(413, 3)
        return b"".join(chunks)

    # -- long-polling -------------------------------------------------------------------------

    async def _open_polling(self, remote: str) -> bytes:
        cfg = self.config
        self._admit_session(remote)
        sock = self._new_session(remote, websocket=False)
        core = sock.core
        body = core.handshake_packet(upgrades=["websocket"], max_payload=cfg.max_payload).encode()
        self._start_session(sock)
        await self._call_open(sock)
        return body

    async def _call_open(self, sock: EngineSocket) -> None:
        try:
            await self.app.on_open(sock)
        except Exception:
            log.exception("open handler failed for session %s", sock.sid)
            sock._lose(CloseReason.TRANSPORT_ERROR)

    async def _poll(self, conn: h11.Connection, stream: Any, sock: EngineSocket,
                    cors: list[tuple[str, str]]) -> bool:
        core = sock.core
        try:
            core.begin_poll(trio.current_time())
        except PollConflict:
            sock._lot.unpark_all()
            raise _HTTPError(400, 3) from None
        except EngineIOProtocolError:
            raise _HTTPError(400, 3) from None
        if not core.poll_ready:
            aborted = False
            async with trio.open_nursery() as nursery:

                async def watch_abort() -> None:
                    # A client that gives up on its GET closes the connection: it has gone.
                    nonlocal aborted
                    try:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""  # a reset is a client gone too
                    if data:
                        conn.receive_data(data)  # a pipelined request: keep it for later
                        await trio.sleep_forever()
                    aborted = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_abort)
                while not core.poll_ready:
                    await sock._lot.park()
                nursery.cancel_scope.cancel()
            if aborted:
                core.abort_poll()
                sock._lot.unpark_all()
                return False
        body = core.finish_poll()
        if core.state is SessionState.CLOSED:
            sock._lot.unpark_all()
        await self._send(conn, stream, 200, [*cors, ("Content-Type", "text/plain; charset=UTF-8")], body)
        return True

    async def _post(self, conn: h11.Connection, stream: Any, request: h11.Request,
                    sock: EngineSocket, cors: list[tuple[str, str]]) -> bool:
        core = sock.core
        try:
            if _declared_length(request) > self.config.max_payload:
                raise _HTTPError(413, 3)  # refused before reading a byte of it
            body = await self._drain_body(conn, stream, self.config.max_payload)
        except _HTTPError:
            sock._lose(CloseReason.TRANSPORT_ERROR)
            raise
        try:
            messages = core.receive_payload(body, trio.current_time())
        except TransportMismatch:
            raise _HTTPError(400, 3) from None
        except EngineIOProtocolError as exc:
            log.info("session %s: %s", sock.sid, exc)
            sock._lose(CloseReason.PARSE_ERROR)
            raise _HTTPError(400, 3) from None
        self._count_drops(sock)
        sock._lot.unpark_all()  # a pong moves the heartbeat; a close ends the session
        # Deliver, then answer: the client sends its next POST only after this one's "ok", so one
        # client's messages are handled one at a time and in order, as over WebSocket.
        for message in messages:
            if not core.is_open:
                break
            await self._deliver(sock, message)
        await self._send(conn, stream, 200, [*cors, ("Content-Type", "text/html")], b"ok")
        return True

    def _count_drops(self, sock: EngineSocket) -> None:
        """Report packets the session's rate limit dropped (logged once per session)."""
        core = sock.core
        if core.dropped:
            if not sock._limited:
                sock._limited = True
                log.info("session rate limited", extra={"fields": {"sid": core.sid, "remote": sock.remote_address}})
            self.rate_limited.inc("dropped", value=core.dropped)
            core.dropped = 0

    async def _deliver(self, sock: EngineSocket, message: str | bytes) -> None:
        try:
            await self.app.on_message(sock, message)
        except Exception:
            # A handler's exception closes its own session, never the server.
            log.exception("message handler failed for session %s", sock.sid)
            sock._lose(CloseReason.TRANSPORT_ERROR)

    # -- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, conn: h11.Connection, stream: Any, request: h11.Request,
                         sid: str | None, remote: str) -> bool | _Upgraded:
        key = _websocket_key(request)
        sock: EngineSocket | None = None
        if sid is not None:
            sock = self.sessions.get(sid)
            if sock is None:
                raise _HTTPError(400, 1)
        else:
            self._admit_session(remote)
        await self._drain_body(conn, stream, 0)
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", accept_token(key)),
        ]
        await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
        trailing, _ = conn.trailing_data
        cfg = self.config
        ws: WSCodec = CODECS[cfg.ws_codec](cfg.max_payload, bytes(trailing))
        if sock is None:
            sock = self._new_session(remote, websocket=True)
            core = sock.core
            opening = core.handshake_packet(upgrades=[], max_payload=cfg.max_payload)
            await stream.send_all(ws.message(opening))
            self._attach_ws(sock, ws, stream)
            self._start_session(sock)
            await self._call_open(sock)
        else:
            try:
                sock.core.begin_upgrade(trio.current_time())
            except EngineIOProtocolError:
                # Not a polling session (already upgraded, or upgrading): this WebSocket is refused.
                await stream.send_all(ws.close(POLICY_VIOLATION))
                return False
        return _Upgraded(sock, ws)

    def _attach_ws(self, sock: EngineSocket, ws: WSCodec, stream: Any) -> None:
        sock._ws = ws
        sock._stream = stream
        sock._wlock = trio.Lock()

    async def _read_ws(self, sock: EngineSocket, ws: WSCodec, stream: Any) -> None:
        """Read frames until the WebSocket or the session ends; messages go to the app inline."""
        core = sock.core
        reason = CloseReason.TRANSPORT_CLOSE
        upgrading = sock._ws is not ws
        control: list[bytes] = []  # frames the reader answers itself (pong, close, 3probe)
        with trio.CancelScope() as scope:
            sock._ws_scope = scope  # the session's end (or a stalled upgrade) closes this WebSocket
            try:
                while True:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    for kind, payload in ws.feed(data):
                        msg: str | bytes | None
                        if kind == TEXT:
                            assert isinstance(payload, str)
                            msg, reply = core.receive_ws_text(payload, trio.current_time())
                            if reply is not None:
                                control.append(ws.message(reply))
                                sock._lot.unpark_all()  # release a pending poll with a noop
                            elif upgrading and core.state is SessionState.WEBSOCKET:
                                upgrading = False
                                self._attach_ws(sock, ws, stream)
                                sock._lot.unpark_all()  # flush what waited during the upgrade
                        elif kind == BINARY:
                            assert isinstance(payload, bytes)
                            msg = core.receive_ws_binary(payload, trio.current_time())
                        elif kind == PING:
                            assert isinstance(payload, bytes)
                            control.append(ws.pong(payload))
                            continue
                        else:
                            assert kind == CLOSE and isinstance(payload, int)
                            control.append(ws.close(payload))  # echo its code (none: an empty close)
                            raise _WSDone
                        if core.dropped:
                            self._count_drops(sock)
                        if msg is not None:
                            await self._deliver(sock, msg)
                        if not core.is_open:
                            # Closed (by the client, a handler, the rate limit): read no more of
                            # what is buffered; the session task writes the close and ends us.
                            sock._lot.unpark_all()
                            raise _WSDone
                    if control:
                        await self._send_control(sock, stream, control, upgrading)
                        control = []
            except _WSDone:
                if control:
                    with trio.move_on_after(1):
                        await self._send_control(sock, stream, control, upgrading)
                if core.state is SessionState.CLOSING and not upgrading:
                    await trio.sleep_forever()  # until the session task has flushed its close
            except (EngineIOProtocolError, WSProtocolError) as exc:
                log.info("protocol error", extra={"fields": {"sid": sock.sid, "error": str(exc)}})
                reason = CloseReason.PARSE_ERROR
                # Tell the client why, rather than just drop it.
                frame = ws.close(exc.code if isinstance(exc, WSProtocolError) else PROTOCOL_ERROR)
                if frame:
                    with trio.move_on_after(LINGER):
                        await self._send_control(sock, stream, [frame], upgrading)
                    await self._linger(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                if sock._ws_scope is scope:
                    sock._ws_scope = None
                if upgrading:
                    sock.core.upgrade_failed()
                elif sock._ws is ws:
                    sock._lose(reason)

    async def _send_control(self, sock: EngineSocket, stream: Any, frames: list[bytes],
                            upgrading: bool) -> None:
        if upgrading or sock._wlock is None:
            await stream.send_all(b"".join(frames))
        else:
            async with sock._wlock:
                await stream.send_all(b"".join(frames))


class _Upgraded(NamedTuple):
    sock: EngineSocket
    ws: WSCodec


class _WSDone(Exception):
    pass
