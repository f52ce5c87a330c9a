"""One TCP connection: HTTP/1.1 requests read with h11 until it closes or becomes a WebSocket.

The connection task owns its stream: it reads requests, answers them (polls included), and after a
WebSocket upgrade runs the WebSocket's reader (``server/websocket.py``). Request heads and bodies
have deadlines (``request_head_timeout``), an idle keep-alive connection closes after
``keepalive_timeout``, and a connection is admitted once, on its first request, by its client
address (``server/admission.py``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import h11
import trio

from . import polling
from .http import StaticFiles
from .routing import (
    BAD_REQUEST,
    FORBIDDEN,
    HTTPError,
    cors_headers,
    error_body,
    head_size,
    preflight_headers,
    request_path,
    route,
    smuggling_shape,
)
from .session import send_now
from .websocket import open_websocket, read_websocket, run_websocket_session

if TYPE_CHECKING:
    from .engine import EngineServer

__all__ = ["Connection", "handle_connection"]

log = logging.getLogger("callbox.engine")

# h11 refuses a request head larger than this: far above any real browser request (cookies
# included), small enough that a client cannot make us hold much.
MAX_REQUEST_HEAD = 16 * 1024

_STATUS_TEXT = {408: b"Request timeout\n", 413: b"Payload too large\n"}
_PLAIN = [("Content-Type", "text/plain; charset=utf-8")]


async def handle_connection(server: EngineServer, stream: Any) -> None:
    try:
        peer = getattr(stream, "transport_stream", stream).socket.getpeername()
        peer_address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
    except OSError:
        return
    admission = server.admission
    admission.connections += 1
    conn = Connection(server, stream, peer_address)
    try:
        upgraded = await conn.serve()
        if upgraded is not None:
            # The connection is a WebSocket from here on; h11's state and the request are not
            # held for the WebSocket's whole life.
            conn.h11 = None  # type: ignore[assignment]
            sock, ws = upgraded
            if sock.runs_itself:
                await read_websocket(server, sock, ws, stream)
            else:
                await run_websocket_session(server, sock, ws, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        log.exception("connection failed", extra={"fields": {"remote": peer_address}})
    finally:
        admission.connections -= 1
        if conn.admitted:
            admission.connection_closed(conn.address)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


class Connection:
    """The HTTP side of one connection: its h11 state, its stream, its client address."""

    __slots__ = ("server", "stream", "h11", "address", "admitted")

    def __init__(self, server: EngineServer, stream: Any, peer_address: str) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self.address = peer_address  # the client's address: the peer, or past trusted proxies
        self.admitted = False

    async def serve(self) -> Any:
        """Requests until the connection closes (None) or becomes a WebSocket ((session, codec))."""
        server, conn = self.server, self.h11
        cfg = server.config
        try:
            while True:
                first = not self.admitted
                with trio.move_on_after(cfg.request_head_timeout if first else cfg.keepalive_timeout) as scope:
                    event = await self.next_event()
                if scope.cancelled_caught:
                    if first or conn.trailing_data[0]:
                        server.refused.inc("head_timeout")  # slow-loris, or a silent client
                    return None  # an idle keep-alive connection just closes
                if not isinstance(event, h11.Request):
                    return None
                if smuggling_shape(event):
                    server.refused.inc("bad_request")
                    await self.respond_and_close(400, b"Bad request\n")
                    return None
                if head_size(event) > MAX_REQUEST_HEAD:
                    server.refused.inc("bad_request")
                    await self.respond_and_close(431, b"Bad request\n")
                    return None
                if first:
                    self.address = server.proxies.client_address(self.address, event.headers)
                    refusal = server.admission.connection_refusal(self.address, trio.current_time())
                    if refusal is not None:
                        status = 429 if refusal == "connection_rate_per_address" else 503
                        await self.respond_and_close(status, b"Too many connections\n", retry_after=True)
                        return None
                    self.admitted = True
                result = await self.handle(event)
                if not isinstance(result, bool):
                    return result
                if not result or conn.our_state is h11.MUST_CLOSE:
                    return None
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return None
        except h11.RemoteProtocolError as exc:
            server.refused.inc("bad_request")
            await self.respond_and_close(exc.error_status_hint, b"Bad request\n")
            return None
        finally:
            if conn.their_state is h11.SEND_BODY:
                with trio.CancelScope(shield=True):
                    await server.linger(self.stream)  # we answered before reading all it sent

    async def handle(self, request: h11.Request) -> Any:
        """Answer one request. True: the connection may carry another; False: close it; or the
        WebSocket it became."""
        server = self.server
        path = request_path(request)
        app = server.app_at(path)
        if app is None:
            try:
                await self.drain_body(0)
            except HTTPError as err:
                await self.respond_and_close(err.status, _STATUS_TEXT[err.status])
                return False
            await self.plain(request.method, path)
            return True
        cors = cors_headers(request, server.config.cors_origins)
        try:
            if cors is None:
                raise HTTPError(403, FORBIDDEN)
            target = route(request, draining=server.draining)
            kind = target.kind
            if kind == "preflight":
                await self.drain_body(0)
                await self.respond(204, preflight_headers(request, cors), b"")
                return True
            if kind == "websocket":
                return await open_websocket(server, self, app, request, target.sid, base64=target.base64) or False
            if kind == "open":
                return await polling.open_polling(server, self, app, request, cors, base64=target.base64)
            sock = server.sessions.get(target.sid or "")
            if sock is None or sock.app is not app:
                raise server.unknown_session(target.sid or "", self.address)
            if kind == "poll":
                return await polling.poll(self, sock, cors)
            return await polling.post(server, self, request, sock, cors)
        except HTTPError as err:
            if err.refused is not None:
                server.refused.inc(err.refused)
            self._finish_request_nowait()  # a body we would discard is not waited for: we close instead
            headers = [*(cors or []), ("Content-Type", "application/json"), *err.headers]
            if err.retry_after:
                headers.append(("Retry-After", "1"))
            # A refused body (too large, too slow) ends the connection whether or not it all came.
            keep = self.h11.their_state is h11.DONE and err.status not in (408, 413)
            if not keep:
                headers.append(("Connection", "close"))
            await self.respond(err.status, headers, error_body(err.code), head=request.method == b"HEAD")
            return keep

    def _finish_request_nowait(self) -> None:
        """Read what is left of the request from h11's buffer, without waiting for more bytes."""
        conn = self.h11
        while conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return
            if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
                return

    async def plain(self, method: bytes, path: str) -> None:
        """Health, readiness, metrics and static files."""
        server = self.server
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            await self.respond(405, [*_PLAIN, ("Allow", "GET, HEAD")], b"Method not allowed\n")
        elif path == "/healthz":
            await self.respond(200, _PLAIN, b"ok\n", head=head)
        elif path == "/readyz":
            if (why := server.unready()) is not None:
                await self.respond(503, _PLAIN, why.encode() + b"\n", head=head)
            else:
                await self.respond(200, _PLAIN, b"ready\n", head=head)
        elif path == "/metrics":
            body = server.metrics.render()
            await self.respond(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body, head=head)
        elif server.static is not None and (file := server.static.resolve(path)) is not None:
            await self._send_file(method, file)
        else:
            await self.respond(404, _PLAIN, b"Not found\n", head=head)

    async def _send_file(self, method: bytes, file: str) -> None:
        conn, stream = self.h11, self.stream
        async with await trio.open_file(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            headers = [("Content-Type", StaticFiles.content_type(file)), ("Content-Length", str(size)),
                       ("Cache-Control", "no-cache")]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            if method == b"GET":
                while chunk := await f.read(self.server.RECEIVE_SIZE):
                    await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def next_event(self) -> Any:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(self.server.RECEIVE_SIZE))
                continue
            return event

    async def drain_body(self, limit: int) -> bytes:
        """Read the request body, refusing more than ``limit`` bytes, or one that does not arrive
        within ``request_head_timeout`` (slow-loris on the body). What h11 already holds (all of a
        GET's empty body) is taken without setting up a deadline."""
        conn = self.h11
        chunks: list[bytes] = []
        size = 0
        deadline = None
        while conn.their_state is h11.SEND_BODY:
            if size > limit:
                raise HTTPError(413, BAD_REQUEST)
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is None:
                    deadline = trio.current_time() + self.server.config.request_head_timeout
                with trio.move_on_at(deadline) as scope:
                    conn.receive_data(await self.stream.receive_some(self.server.RECEIVE_SIZE))
                if scope.cancelled_caught:
                    self.server.refused.inc("body_timeout")
                    raise HTTPError(408, BAD_REQUEST)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        if size > limit:
            raise HTTPError(413, BAD_REQUEST)
        return b"".join(chunks)

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes, *, head: bool = False) -> None:
        """One whole response in one write. ``head``: the request was HEAD, so headers only."""
        conn = self.h11
        data = conn.send(h11.Response(status_code=status, headers=[*headers, ("Content-Length", str(len(body)))]))
        assert data is not None
        out = [data]
        if body and not head:
            out.append(conn.send(h11.Data(data=body)) or b"")
        out.append(conn.send(h11.EndOfMessage()) or b"")
        await send_now(self.stream, b"".join(out))

    async def respond_and_close(self, status: int, body: bytes, *, retry_after: bool = False) -> None:
        """A plain-text answer, then the connection closes."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [("Content-Type", "text/plain"), ("Connection", "close")]
        if retry_after:
            headers.append(("Retry-After", "1"))
        try:
            await self.respond(status, headers, body)
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
