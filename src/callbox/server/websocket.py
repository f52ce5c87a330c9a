"""The WebSocket transport: the 101 answer, then a reader that hands messages to the application
inline (so one client's messages are handled in order, with no task hop per message).

A WebSocket either carries a session from its start (no ``sid``: the open packet follows the 101 in
the same write), and then its reader runs that session (:func:`run_websocket_session`: reads,
heartbeat, the writes that could not be made at once, the session's end); or it probes to upgrade a
polling session (``2probe`` / ``3probe`` / ``5``) and, once the core reports the upgrade, carries
that session, whose own task keeps writing and beating (:func:`read_websocket`)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import h11
import trio

from ..engineio import CloseReason, EngineIOProtocolError, SessionState
from .http import Handshake
from .routing import websocket_key
from .session import EngineSocket, apply, batched_writes, flush_websocket, send_now, tick, write_or_wake
from .wsframe import (
    BINARY,
    CLOSE,
    CODECS,
    PING,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    TEXT,
    WSCodec,
    WSProtocolError,
    accept_token,
)

if TYPE_CHECKING:
    from .connection import Connection
    from .engine import EngineApp, EngineServer

__all__ = ["open_websocket", "read_websocket", "run_websocket_session"]

log = logging.getLogger("callbox.engine")

# How long the answers the reader owes (pong, close echo) may take once the session is over.
CONTROL_TIMEOUT = 1.0


async def open_websocket(
    server: EngineServer, conn: Connection, app: EngineApp, request: h11.Request, sid: str | None, *,
    base64: bool = False,
) -> tuple[EngineSocket, WSCodec] | None:
    """Answer 101 and return the session this WebSocket carries or probes for (None: refused).
    ``base64``: a new session sends its binary messages as text (``b64=1``)."""
    key = websocket_key(request)
    sock: EngineSocket | None = None
    handshake: Handshake | None = None
    extra: list[tuple[str, str]] = []
    if sid is not None:
        sock = server.sessions.get(sid)
        if sock is None or sock.app is not app:
            raise server.unknown_session(sid, conn.address)
    else:
        server.admission.admit_session(conn.address, trio.current_time())
        handshake, extra = await server.handshake(app, conn, request)
    await conn.drain_body(0)
    cfg = server.config
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", accept_token(key)),
               *((n.encode("latin-1"), v.encode("latin-1")) for n, v in extra)]
    head = conn.h11.send(h11.InformationalResponse(status_code=101, headers=headers)) or b""
    ws: WSCodec = CODECS[cfg.ws_codec](cfg.max_payload, bytes(conn.h11.trailing_data[0]))
    stream = conn.stream
    if sock is None:
        sock = server.new_session(conn.address, websocket=True, base64=base64, handshake=handshake, app=app)
        opening = sock.core.handshake_packet(upgrades=[], max_payload=cfg.max_payload)
        await send_now(stream, head + ws.message(opening))  # the 101 and the open packet: one write
        sock.carry(ws, stream)
        return sock, ws  # run_websocket_session starts it, inside the try that ends it
    await send_now(stream, head)
    try:
        sock.core.begin_upgrade(trio.current_time())
    except EngineIOProtocolError:
        # Not a polling session (already upgraded, or upgrading): this WebSocket is refused.
        await stream.send_all(ws.close(POLICY_VIOLATION))
        return None
    return sock, ws


class _Done(Exception):
    """The WebSocket is finished (its close frame was read, or the session is over)."""


async def run_websocket_session(server: EngineServer, sock: EngineSocket, ws: WSCodec, stream: Any) -> None:
    """Run a session made over this WebSocket, in its connection's task: read frames (messages go
    to the app inline), keep the heartbeat, write what could not be written at once, close."""
    core = sock.core
    reason = CloseReason.TRANSPORT_CLOSE
    control: list[bytes] = []  # frames the reader answers itself (pong, close)
    fd = sock._fd  # -1 for TLS: read through the stream
    closed = SessionState.CLOSED  # a local name (why: callbox/enums.py)
    probe = True  # read before waiting
    woke = False  # the data read next came after a wait
    carried: bytes | None = None  # data a TLS read returned as the reader was woken: read first
    try:
        await server.start_session(sock)
        while core.state is not closed:
            # One cancel scope for as long as nothing wakes the reader, not one per wait (trio's
            # scopes cost about 5 us each). Only a parked reader is woken (``_wait_scope`` is set
            # just around its wait), so the handlers that run inside the scope are never cancelled.
            # The heartbeat's deadlines ring as alarms (callbox/alarms.py), which wake it the same way.
            with trio.CancelScope() as wake:
                while core.state is not closed:
                    if core.has_output and not sock._leftover:
                        write_or_wake(sock)  # what another reader's batch holds for us: without waiting, if it can
                    if sock._leftover or core.has_output:
                        await flush_websocket(sock)  # a write was in flight, the kernel was full, TLS, or closing
                        continue
                    # Read what the socket already has without waiting (a client that keeps sending
                    # is read at the cost of one read each time); only an empty socket waits, until
                    # data comes, an alarm rings, or a writer wakes us. After a read that followed a
                    # wait (a client that sends one message and waits for the answer) the socket is
                    # most likely empty: wait at once, which sees data that came meanwhile, rather
                    # than pay a read that finds nothing (a system call per message in a call flow).
                    data, carried = carried, None
                    if data is None and fd >= 0 and probe:
                        data = _read_now(fd, server.RECEIVE_SIZE)
                    if data is None:
                        deadline = core.next_deadline()
                        if trio.current_time() >= deadline:
                            break  # a ping due or a pong overdue: tick below
                        # Parked, here only may the reader be woken. Inline, not a helper: every
                        # idle connection waits here, and a helper's frame cost 0.2 KiB of RSS each.
                        server.alarms.set(sock, deadline)
                        sock._wait_scope = wake
                        try:
                            if fd >= 0:
                                await trio.lowlevel.wait_readable(fd)
                            else:
                                data = await stream.receive_some(server.RECEIVE_SIZE)
                        finally:
                            sock._wait_scope = None
                        if wake.cancel_called:  # woken as the wait ended: nothing more in this scope
                            carried = data
                            break
                        if data is None:
                            probe = woke = True
                            continue  # readable now: read it at the top
                    elif trio.current_time() >= core.next_deadline():
                        tick(sock)  # the heartbeat, which no alarm wakes us for while the client keeps sending
                    if not data:
                        sock.lose(reason)  # the client went
                        break
                    probe, woke = not woke, False
                    await _serve_read(server, sock, ws, stream, data, control)
            tick(sock)  # woken: a deadline passed (ping due, pong overdue), or there is output to write
    except _Done:
        with trio.move_on_after(CONTROL_TIMEOUT):
            if control:
                await _send_control(sock, ws, stream, control)
        while core.state is SessionState.CLOSING:
            await flush_websocket(sock)  # what was queued, the close packet and the close frame
    except (EngineIOProtocolError, WSProtocolError) as exc:
        reason = CloseReason.PARSE_ERROR
        await _refuse(server, sock, ws, stream, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        sock._fd = -1  # the stream closes after this: never write to its descriptor again
        server.alarms.cancel(sock)
        sock.lose(reason)
        with trio.CancelScope(shield=True):
            await server.session_ended(sock)


async def _serve_read(server: EngineServer, sock: EngineSocket, ws: WSCodec, stream: Any, data: bytes,
                      control: list[bytes]) -> None:
    """Handle one read: its frames, with the writes they cause held across one yield, then the
    frames the reader answers itself."""
    with batched_writes():
        await _handle_read(server, sock, ws, None, data, control)
        # Yield once per read, so that a client that never stops sending cannot keep the others
        # waiting; with the writes still gathered, so that what the others' handlers send to the
        # same sockets meanwhile goes out in the same writes.
        await trio.lowlevel.checkpoint()
    if control:
        # Pongs to a client that does not read its pongs would block here for ever: the
        # heartbeat's verdict bounds it, as it bounds every write.
        with trio.move_on_at(sock.core.dead_by()) as stalled:
            await _send_control(sock, ws, stream, control)
        if stalled.cancelled_caught:
            sock.lose(CloseReason.PING_TIMEOUT)
        control.clear()


def _read_now(fd: int, size: int) -> bytes | None:
    """What the socket has, without waiting: None if nothing yet, b"" at its end (or a reset)."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:  # a reset is the client gone
        return b""


async def _refuse(server: EngineServer, sock: EngineSocket, ws: WSCodec, stream: Any,
                  exc: EngineIOProtocolError | WSProtocolError) -> None:
    """Tell a client that broke the protocol why (a close frame), rather than just drop it."""
    log.info("protocol error", extra={"fields": {"sid": sock.sid, "error": str(exc)}})
    frame = ws.close(exc.code if isinstance(exc, WSProtocolError) else PROTOCOL_ERROR)
    if frame:
        with trio.move_on_after(server.LINGER):
            await _send_control(sock, ws, stream, [frame])
        await server.linger(stream)


async def read_websocket(server: EngineServer, sock: EngineSocket, ws: WSCodec, stream: Any) -> None:
    """Read frames of a WebSocket probing for (or carrying) a polling session's upgrade until the
    WebSocket or the session ends; messages go to the app inline, the session's task writes."""
    core = sock.core
    reason = CloseReason.TRANSPORT_CLOSE
    control: list[bytes] = []  # frames the reader answers itself (pong, close, 3probe)
    with trio.CancelScope() as scope:
        if sock._ws is ws:
            sock._ws_scope = scope  # the session's end closes this WebSocket
        else:
            sock._probe = (ws, stream, scope)  # the session adopts it, or an abandoned upgrade closes it
        try:
            while True:
                data = await stream.receive_some(server.RECEIVE_SIZE)
                if not data:
                    break
                with batched_writes():
                    await _handle_read(server, sock, ws, scope, data, control)
                if control:
                    await _send_control(sock, ws, stream, control)
                    control.clear()
        except _Done:
            if control:
                with trio.move_on_after(CONTROL_TIMEOUT):
                    await _send_control(sock, ws, stream, control)
            if sock._ws is ws and core.state is SessionState.CLOSING:
                await trio.sleep_forever()  # until the session task has flushed its close
        except (EngineIOProtocolError, WSProtocolError) as exc:
            reason = CloseReason.PARSE_ERROR
            await _refuse(server, sock, ws, stream, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if sock._ws is ws:
                sock._fd = -1  # the stream closes after this: never write to its descriptor again
                if sock._ws_scope is scope:
                    sock._ws_scope = None
                sock.lose(reason)
            elif sock._probe is not None and sock._probe[0] is ws:
                sock._probe = None
                core.upgrade_failed()
                apply(sock)


async def _handle_read(server: EngineServer, sock: EngineSocket, ws: WSCodec, scope: trio.CancelScope | None,
                       data: bytes, control: list[bytes]) -> None:
    """Hand the frames of one read to the session and the application, in order."""
    core = sock.core
    now = trio.current_time()  # the frames of one read came at once
    for kind, payload in ws.feed(data):
        msg: str | bytes | None
        if kind == TEXT:
            assert isinstance(payload, str)
            msg, reply = core.receive_ws_text(payload, now)
            if reply is not None:
                control.append(ws.message(reply))
        elif kind == BINARY:
            assert isinstance(payload, bytes)
            msg = core.receive_ws_binary(payload, now)
        elif kind == PING:
            assert isinstance(payload, bytes)
            control.append(ws.pong(payload))
            continue
        else:
            assert kind == CLOSE and isinstance(payload, int)
            control.append(ws.close(payload))  # echo its code (none: an empty close)
            if sock._ws is ws:  # the client said goodbye (a probe's close ends only the probe)
                core.goodbye(trio.current_time())
                apply(sock)
            raise _Done
        apply(sock)
        if scope is not None and sock._ws is ws and sock._ws_scope is not scope:
            sock._ws_scope = scope  # adopted by the upgrade
        if msg is not None:
            try:  # as over polling (``handler_failed``); inline, not a helper: a coroutine less per message
                await sock.app.on_message(sock, msg)
            except Exception:
                server.handler_failed(sock)
        if not core.is_open:
            # Closed (by the client, a handler, the rate limit): read no more of what is
            # buffered; the session task writes the close and ends us.
            raise _Done


async def _send_control(sock: EngineSocket, ws: WSCodec, stream: Any, frames: list[bytes]) -> None:
    if sock._ws is not ws:  # a probe: nothing else writes to it
        await stream.send_all(b"".join(frames))
    else:
        async with sock._wlock:
            await stream.send_all(b"".join(frames))
