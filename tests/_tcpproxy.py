"""A TCP proxy for tests that need a client's connection to drop under it: the client connects to
the proxy, the proxy to the server, and the test cuts every connection passing through at once.

What a cut looks like (``TcpProxy.cut``):

- ``"close"``: both sides are closed (a FIN each way), nothing else is sent: the client sees its
  connection end and the server sees TCP EOF without a WebSocket close frame or Engine.IO close
  packet, which is what a NAT rebinding or a proxy restart looks like to both ends.
- ``"reset"``: the same with a TCP reset each way (``SO_LINGER`` 0), as a crashed middlebox gives.
- ``"half-open"``: forwarding stops and only the client side is closed. The server side stays open
  and silent: what the server writes there is read and dropped, nothing is ever written to it,
  so for the server the connection looks alive (the phone that walked out of Wi-Fi range). It stays
  until the server closes it; ``stale`` counts those still open.

``hold()`` makes the network stay down after a cut: new connections are reset at once (counted in
``refused``) until ``release()``, so that a reconnecting client keeps failing and retrying.

Everything is loopback and port 0 (tests/conftest.py's rules). The proxy runs in the test's nursery:
``proxy_port = await nursery.start(proxy.serve)``; cancelling the nursery closes everything.
"""

from __future__ import annotations

import socket
import struct
from typing import Literal

import trio

__all__ = ["Cut", "TcpProxy"]

Cut = Literal["close", "reset", "half-open"]

# Bytes read at once on either side: one read takes a burst of frames or a whole polling payload.
CHUNK = 64 * 1024


def _abort(stream: trio.SocketStream) -> None:
    """Close with a TCP reset (no FIN, unread data dropped): SO_LINGER on, with a zero timeout."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed or never connected: nothing left to reset
    stream.socket.close()


class _Link:
    """One client connection and the proxy's connection to the server for it (None while it is
    being made: a cut then gets the client side alone)."""

    def __init__(self, client: trio.SocketStream) -> None:
        self.client = client
        self.server: trio.SocketStream | None = None
        self.scope = trio.CancelScope()
        self.cut: Cut | None = None

    async def pump(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        """Forward src to dst; an EOF is passed on as one (a half-close), an error ends the link."""
        try:
            while data := await src.receive_some(CHUNK):
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.scope.cancel()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0  # known once serve() has started
        self.links: set[_Link] = set()
        self.stale: set[trio.SocketStream] = set()  # server sides of half-open cuts, still open
        self.accepted = 0  # connections forwarded, over the proxy's life
        self.refused = 0  # connections reset while held
        self.holding = False
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1, a free port (given to ``task_status.started``), until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.port)
        finally:
            for link in list(self.links):
                _abort(link.client)
                if link.server is not None:
                    _abort(link.server)
            for stream in list(self.stale):
                _abort(stream)

    def hold(self) -> None:
        """Keep the network down: reset every new connection until :meth:`release`."""
        self.holding = True

    def release(self) -> None:
        self.holding = False

    def cut(self, how: Cut = "close") -> int:
        """Cut every connection passing through now; returns how many there were. Synchronous: when
        it returns, the client sides are closed (and, but for a half-open cut, the server sides)."""
        links = list(self.links)
        for link in links:
            link.cut = how
            link.scope.cancel()
            self.links.discard(link)
            server = link.server
            if how == "reset":
                _abort(link.client)
                if server is not None:
                    _abort(server)
            else:
                link.client.socket.close()
                if server is None:
                    pass
                elif how == "close":
                    server.socket.close()
                else:
                    self.stale.add(server)
        return len(links)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.holding:
            self.refused += 1
            _abort(client)
            return
        # The link counts from the moment the client is accepted: a cut while the connection to
        # the server is still being made gets it too.
        link = _Link(client)
        self.links.add(link)
        try:
            with link.scope:
                try:
                    server = link.server = await trio.open_tcp_stream(*self.target)
                except OSError:
                    _abort(client)
                    return
                self.accepted += 1
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link.pump, client, server)
                    nursery.start_soon(link.pump, server, client)
        finally:
            self.links.discard(link)
            if link.cut == "half-open" and link.server is not None:
                assert self._nursery is not None
                self._nursery.start_soon(self._silent, link.server)
            else:
                client.socket.close()
                if link.server is not None:
                    link.server.socket.close()

    async def _silent(self, server: trio.SocketStream) -> None:
        """The server side of a half-open cut: read and drop until the server closes it."""
        try:
            while await server.receive_some(CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.stale.discard(server)
            server.socket.close()
