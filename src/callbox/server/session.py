"""One Engine.IO session in the shell: the socket the application sees, the one function that
applies what its core reports, and the session task.

Lifetimes: a session made over long-polling gets a session task in the server nursery
(:func:`run_session`): it runs the heartbeat and deadlines, writes what a WebSocket it upgrades to
could not take at once, and at the end calls the application's close handler; the session outlives
single requests and transports. A session made directly over a WebSocket has no task of its own:
its connection's task does all of that (``server/websocket.py``), which saves a task and its frames
per client (3.8 KiB of RSS each, measured on a 10,000-client ramp), and its deadlines ring as
alarms (``callbox/alarms.py``).

Writes to a WebSocket are made from the task that sent the message, with no task switch: trio has
no public try-send, so the smallest safe one is a non-blocking ``os.write`` on the socket's file
descriptor (it never blocks; the kernel takes a prefix of the bytes or nothing). Whatever it does
not take at once, and everything sent while the session task's own write is in flight, goes to the
session task, which drains it with ``send_all``. TLS streams have no such shortcut: the session task
writes everything.

A reader batches: while it handles the frames of one read (:func:`batched_writes`), what its
handlers send to a WebSocket is written when the read is handled and the reader has yielded once to
the others, so that what their handlers send to the same sockets meanwhile goes in the same write:
one write per receiving socket instead of one per message. A socket may be in several readers'
batches at once; whoever comes first (a batch's end, or the socket's own reader before it reads)
writes everything queued for it. A write to a socket whose peer is idle costs a wake-up on the
other side (measured here: 11 us of CPU for an isolated write against 0.7 us back to back), so
fewer, larger writes are what keeps a relay cheap (holding them for the yield: relay per server
CPU-second +13%, call flows +14%; at 4,000 relays/s, far from saturation, about 6% more CPU per
relay: a reader woken for one message makes one more turn of trio's loop before it writes). A
handler that waits (awaits something slow) delays what it and the handlers before it in the same
read sent, until it returns; except that waiting for a client's answer (:meth:`Socket.call`, a
broadcast's acks) writes what was sent first (:func:`flush_writes`), since that answer may depend
on it.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from ..engineio import CloseReason, Effect, EngineSession, Sent, SessionState
from .http import Handshake
from .wsframe import WSCodec

if TYPE_CHECKING:
    from .engine import EngineApp, EngineServer

__all__ = [
    "EngineSocket", "apply", "batched_writes", "flush_websocket", "flush_writes", "run_session", "send_now", "tick",
    "write_or_wake",
]

log = logging.getLogger("callbox.engine")

_WEBSOCKET, _CLOSED = SessionState.WEBSOCKET, SessionState.CLOSED
_OUTPUT, _QUEUED = Effect.OUTPUT, Sent.QUEUED


class EngineSocket:
    """One Engine.IO session as the application sees it: send text or bytes, close, and a
    ``state`` slot for the application's own use."""

    __slots__ = (
        "core", "server", "remote_address", "state", "_limited", "_lot", "_ws", "_stream", "_fd", "_leftover",
        "_batched", "_ws_scope", "_probe", "_wlock", "_write_scope", "_wait_scope", "_polling_born", "handshake", "app",
    )

    def __init__(self, server: EngineServer, core: EngineSession, remote_address: str,
                 handshake: Handshake | None = None, app: EngineApp | None = None) -> None:
        self.core = core
        self.server = server
        self.app: EngineApp = server.app if app is None else app  # the application it belongs to
        self.remote_address = remote_address
        # The request that opened it (tests that make sessions without one: an empty GET /).
        self.handshake = handshake or Handshake(b"/", [], remote_address, False)
        self.state: Any = None
        self._polling_born = core.state is SessionState.POLLING
        self._limited = False  # its rate limit has dropped packets (logged once)
        # The session task and a pending poll wait here: only a session made over polling has them.
        self._lot = trio.lowlevel.ParkingLot() if self._polling_born else None
        self._ws: WSCodec | None = None  # the WebSocket carrying the session, once it does
        self._stream: Any = None
        self._fd = -1  # its socket, for writes from the sender's task (-1: TLS, always the session task)
        self._leftover = b""  # encoded frames the kernel did not take at once: the session task writes them
        self._batched: batched_writes | None = None  # the last reader's batch it joined
        self._ws_scope: trio.CancelScope | None = None  # cancels that WebSocket's reader
        self._probe: tuple[WSCodec, Any, trio.CancelScope] | None = None  # a WebSocket probing to upgrade
        # The session task and the reader (pongs to WebSocket pings, close answers) both write to
        # the WebSocket; this keeps their writes whole and tells a sender a write is in flight.
        self._wlock = trio.Lock()
        self._write_scope: trio.CancelScope | None = None  # the session task's write under way, if any
        # A session run by its WebSocket's reader: the reader's scope while it is parked waiting for
        # data, cancelled to wake it (None while it is not parked).
        self._wait_scope: trio.CancelScope | None = None

    @property
    def sid(self) -> str:
        """The Engine.IO session id."""
        return self.core.sid

    @property
    def transport(self) -> str:
        """"websocket" or "polling": what the session runs on now."""
        return "websocket" if self.core.state is _WEBSOCKET else "polling"

    @property
    def is_open(self) -> bool:
        """Open: messages sent now are queued for the client."""
        return self.core.is_open

    @property
    def runs_itself(self) -> bool:
        """True for a session made over long-polling: it has a task of its own (:func:`run_session`).
        A session made over a WebSocket is run by that WebSocket's reader."""
        return self._polling_born

    def send(self, data: str | bytes) -> bool:
        """Queue a message; False if the session is closing or closed, or was just cut off as too
        slow (nothing was queued)."""
        sent = self.core.send(data)
        apply(self)
        return sent is _QUEUED

    def close(self, reason: CloseReason = CloseReason.FORCED_CLOSE) -> None:
        """Close the session: what is queued goes first, then the close packet."""
        self.core.close(reason, trio.current_time())
        apply(self)

    def lose(self, reason: CloseReason) -> None:
        """End the session at once (nothing more is written)."""
        self.core.lost(reason)
        apply(self)

    def carry(self, ws: WSCodec, stream: Any) -> None:
        """This WebSocket carries the session from now on."""
        self._ws = ws
        self._stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    def _write_now(self) -> None:
        """Write the outbox from this task, as far as the socket takes it without waiting."""
        ws = self._ws
        assert ws is not None
        data = _frames(ws, self.core.take_output())
        try:
            written = _write_some(self._fd, data)
        except OSError:  # reset, or the connection is closing: the reader will see it too
            self.lose(CloseReason.TRANSPORT_CLOSE)
            return
        if written < len(data):
            self._leftover = data[written:]
            self.wake()

    def wake(self) -> None:
        """Whoever runs this session (its task, its WebSocket's reader, a pending poll) has work."""
        if self._lot is not None:
            self._lot.unpark_all()
        if self._wait_scope is not None:
            self._wait_scope.cancel()


class batched_writes:  # lower case: it reads as a function, ``with batched_writes():``
    """Within this block, WebSocket output the current task sends is written at its end: the
    sockets its handlers sent to are gathered, then each written once. A class rather than a
    generator-based context manager: it is entered once per read on the hot path."""

    __slots__ = ("sockets", "open", "_token")

    def __init__(self) -> None:
        self.sockets: list[EngineSocket] = []
        self.open = True

    def __enter__(self) -> None:
        self._token = _BATCH.set(self)

    def __exit__(self, *exc_info: object) -> None:
        _BATCH.reset(self._token)
        self.open = False
        for sock in self.sockets:
            if sock._batched is self:
                sock._batched = None
            write_or_wake(sock)


def flush_writes() -> None:
    """Write now what the current reader's batch has gathered (the batch stays open for what is
    sent after): before a handler waits for another client's answer to what it just sent."""
    batch = _BATCH.get()
    if batch is None or not batch.open or not batch.sockets:
        return
    sockets, batch.sockets = batch.sockets, []
    for sock in sockets:
        if sock._batched is batch:
            sock._batched = None
        write_or_wake(sock)


# The batch of the current task, if it is a reader handling one read. A ContextVar, so it is the
# reader's own; a task started meanwhile inherits it, and writes at once once the batch is done.
_BATCH: ContextVar[batched_writes | None] = ContextVar("callbox_write_batch", default=None)


def _frames(ws: WSCodec, messages: list[str | bytes]) -> bytes:
    """The messages as WebSocket frames, in one bytes (one message, the usual case, is not joined)."""
    if len(messages) == 1:
        return ws.message(messages[0])
    return b"".join(map(ws.message, messages))


def _write_some(fd: int, data: bytes) -> int:
    """The bytes of ``data`` a non-blocking socket takes now (0: its buffer is full); trio has no
    public try-send, and this never blocks. A reset or a closed socket raises ``OSError``."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


async def send_now(stream: Any, data: bytes) -> None:
    """``stream.send_all(data)``, except that a plain TCP socket is written directly first, without
    waiting (the same non-blocking ``os.write`` as a session's writes): trio's ``send_all`` costs about
    9 us of CPU here against 0.5 us for the system call, on every HTTP answer and every 101. Only what
    the kernel does not take at once goes through ``send_all``. Unlike ``send_all`` it is no
    checkpoint when the kernel takes everything."""
    if isinstance(stream, trio.SocketStream):
        try:
            written = _write_some(stream.socket.fileno(), data)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if written == len(data):
            return
        data = data[written:]
    await stream.send_all(data)


def tick(sock: EngineSocket) -> None:
    """Act on the session's deadlines as of now (ping due, pong overdue, close or upgrade timed out)."""
    sock.core.handle_timeout(trio.current_time())
    apply(sock)


def write_or_wake(sock: EngineSocket) -> None:
    """Write the outbox from this task if nothing else is writing to the socket; else (or over
    polling, or TLS, or closing) wake whoever writes it. An outbox already written (by its own
    reader, or another reader's batch) wakes nobody: a wake-up for nothing costs its reader a turn."""
    core = sock.core
    if sock._fd >= 0 and core.state is _WEBSOCKET and not sock._leftover and not sock._wlock.locked():
        if core.has_output:
            sock._write_now()
    else:
        sock.wake()


def apply(sock: EngineSocket) -> None:
    """Act on everything the session's core reported since the last call: the one place where a
    core's state change turns into wake-ups, writes and cancellations."""
    core = sock.core
    if not core.has_effects:
        return
    for effect in core.take_effects():
        if effect is _OUTPUT:
            batch = _BATCH.get()
            if batch is None or not batch.open:
                write_or_wake(sock)
            elif sock._batched is not batch:
                sock._batched = batch
                batch.sockets.append(sock)
        elif effect is Effect.LOST:
            sock.wake()
            if sock._write_scope is not None:
                sock._write_scope.cancel()  # nobody will read what it is stuck writing
        elif effect is Effect.CLOSED:
            sock.wake()  # whoever runs the session ends it once its last batch is written
        elif effect is Effect.DROPPED:
            sock.server.packet_dropped(sock)
        elif effect is Effect.UPGRADED:
            assert sock._probe is not None
            ws, stream, _ = sock._probe
            sock._probe = None
            sock.carry(ws, stream)
            sock.wake()
        else:
            assert effect is Effect.UPGRADE_ABANDONED
            if sock._probe is not None:
                sock._probe[2].cancel()  # close the probing WebSocket
                sock._probe = None


async def run_session(server: EngineServer, sock: EngineSocket) -> None:
    """The session task: heartbeat, deadlines and WebSocket writes until the session is closed,
    then the application's close handler."""
    core = sock.core
    try:
        await _session_loop(sock)
    except Exception:
        # A bug in one session must end that session only, never the server.
        log.exception("session failed", extra={"fields": {"sid": core.sid}})
        sock.lose(CloseReason.TRANSPORT_ERROR)
    finally:
        if sock._ws_scope is not None:
            sock._ws_scope.cancel()
        if sock._probe is not None:
            sock._probe[2].cancel()
        sock.wake()
        with trio.CancelScope(shield=True):
            await server.session_ended(sock)


async def _session_loop(sock: EngineSocket) -> None:
    core, lot = sock.core, sock._lot
    assert lot is not None
    while core.state is not _CLOSED:
        if sock._ws is not None and (sock._leftover or core.has_output) and core.state is not SessionState.POLLING:
            await flush_websocket(sock)
            continue
        with trio.move_on_at(core.next_deadline()):
            await lot.park()
        tick(sock)


async def flush_websocket(sock: EngineSocket) -> None:
    """Write the leftover and everything queued in one ``send_all``; a drained close packet is
    followed by the WebSocket close frame."""
    ws, stream = sock._ws, sock._stream
    assert ws is not None
    core = sock.core
    if not ws.open:
        # The client's close frame came in while we had output queued: nobody will read it.
        sock.lose(CloseReason.TRANSPORT_CLOSE)
        return
    data = sock._leftover + _frames(ws, core.take_output())
    sock._leftover = b""
    if core.state is _CLOSED:
        data += ws.close()
    apply(sock)
    # A write that cannot finish by the time a silent peer would be declared dead means the
    # peer is not reading: give up on it rather than block this session forever.
    with trio.move_on_at(core.dead_by()) as scope:
        sock._write_scope = scope
        try:
            async with sock._wlock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            sock.lose(CloseReason.TRANSPORT_CLOSE)
        finally:
            sock._write_scope = None
    if scope.cancelled_caught and core.state is not _CLOSED:  # silent past its heartbeat
        sock.lose(CloseReason.PING_TIMEOUT)
