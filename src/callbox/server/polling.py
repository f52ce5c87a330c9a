"""The long-polling transport: the handshake GET, the pending GET that carries output, and the POST
that carries input. Each runs in the connection task that holds the request."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11
import trio

from ..engineio import CloseReason, EngineIOProtocolError, PollConflict, TransportMismatch
from .routing import BAD_REQUEST, HTTPError, declared_length
from .session import EngineSocket, apply, batched_writes

if TYPE_CHECKING:
    from .connection import Connection
    from .engine import EngineApp, EngineServer

__all__ = ["open_polling", "poll", "post"]

log = logging.getLogger("callbox.engine")

_TEXT = [("Content-Type", "text/plain; charset=UTF-8")]


async def open_polling(server: EngineServer, conn: Connection, app: EngineApp, request: h11.Request,
                       cors: list[tuple[str, str]], *, base64: bool) -> bool:
    """The handshake: a new session of ``app``, its open packet as the answer."""
    await conn.drain_body(0)
    server.admission.admit_session(conn.address, trio.current_time())
    handshake, extra = await server.handshake(app, conn, request)
    sock = server.new_session(conn.address, websocket=False, base64=base64, handshake=handshake, app=app)
    body = sock.core.handshake_packet(upgrades=["websocket"], max_payload=server.config.max_payload).encode()
    await server.start_session(sock)
    await conn.respond(200, [*cors, *_TEXT, *extra], body)
    return True


async def poll(conn: Connection, sock: EngineSocket, cors: list[tuple[str, str]]) -> bool:
    """A GET: answered with what is queued, once there is something (or the session ends)."""
    await conn.drain_body(0)
    core = sock.core
    try:
        core.begin_poll(trio.current_time())
    except PollConflict:
        apply(sock)  # the first GET gets the close packet
        raise HTTPError(400, BAD_REQUEST) from None
    except EngineIOProtocolError:
        raise HTTPError(400, BAD_REQUEST) from None
    if not core.poll_ready and await _client_left_waiting(conn, sock):
        core.abort_poll()
        apply(sock)
        return False
    body = core.finish_poll()
    apply(sock)
    await conn.respond(200, [*cors, *_TEXT], body)
    return True


async def _client_left_waiting(conn: Connection, sock: EngineSocket) -> bool:
    """Wait until the session has something for the GET; True if the client gave up first (a
    client that gives up on its GET closes the connection: it has gone)."""
    left = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal left
            try:
                data = await conn.stream.receive_some(conn.server.RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # a reset is a client gone too
            if data:
                conn.h11.receive_data(data)  # a pipelined request: keep it for later
                await trio.sleep_forever()
            left = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        assert sock._lot is not None  # a session polled is one made over polling
        while not sock.core.poll_ready:
            await sock._lot.park()
        nursery.cancel_scope.cancel()
    return left


async def post(server: EngineServer, conn: Connection, request: h11.Request, sock: EngineSocket,
               cors: list[tuple[str, str]]) -> bool:
    """A POST: its messages are delivered, in order, before it is answered. A second POST while one
    is being handled is refused (400) and closes the session (Engine.IO v4)."""
    core = sock.core
    try:
        core.begin_post(trio.current_time())
    except PollConflict:
        apply(sock)
        raise HTTPError(400, BAD_REQUEST) from None
    except TransportMismatch:
        raise HTTPError(400, BAD_REQUEST) from None
    try:
        return await _post(server, conn, request, sock, cors)
    finally:
        core.end_post()


async def _post(server: EngineServer, conn: Connection, request: h11.Request, sock: EngineSocket,
                cors: list[tuple[str, str]]) -> bool:
    core = sock.core
    try:
        if declared_length(request) > server.config.max_payload:
            raise HTTPError(413, BAD_REQUEST)  # refused before reading a byte of it
        body = await conn.drain_body(server.config.max_payload)
    except HTTPError:
        sock.lose(CloseReason.TRANSPORT_ERROR)
        raise
    try:
        messages = core.receive_payload(body, trio.current_time())
    except TransportMismatch:
        raise HTTPError(400, BAD_REQUEST) from None
    except EngineIOProtocolError as exc:
        log.info("session %s: %s", sock.sid, exc)
        sock.lose(CloseReason.PARSE_ERROR)
        raise HTTPError(400, BAD_REQUEST) from None
    apply(sock)  # a pong moves the heartbeat; a close ends the session
    # Deliver, then answer: the client sends its next POST only after this one's "ok", so one
    # client's messages are handled one at a time and in order, as over WebSocket.
    with batched_writes():
        for message in messages:
            if not core.is_open:
                break
            try:
                await sock.app.on_message(sock, message)
            except Exception:
                server.handler_failed(sock)
    await conn.respond(200, [*cors, ("Content-Type", "text/html")], b"ok")
    return True
