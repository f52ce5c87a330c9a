"""Raw Engine.IO clients for the wire tests: a small HTTP/1.1 client (h11 over a trio TCP stream)
and helpers around trio-websocket. Nothing here is clever on purpose: the tests assert the bytes
the server writes, so the client must not interpret them."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import h11
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    connect_websocket_url,
    open_websocket_url,
)

from _proc import tcp_end

PATH = "/socket.io/"
RS = "\x1e"
# Every single network wait in these helpers is bounded by this (real or virtual) time.
WAIT = 5.0
# How often ``eventually`` looks again: short next to any timer under test, long next to a loopback
# round trip.
POLL = 0.01

T = TypeVar("T")


@overload
async def eventually(check: Callable[[], Awaitable[T | None]],
                     timeout: float = ..., what: str = ...) -> T: ...  # noqa: ASYNC109
@overload
async def eventually(check: Callable[[], T | None], timeout: float = ..., what: str = ...) -> T: ...  # noqa: ASYNC109


async def eventually(check: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:  # noqa: ASYNC109
    """The one bounded wait on state that tests use instead of a fixed sleep: call ``check`` (a
    function or a coroutine function) every ``POLL`` seconds until it returns something truthy, and
    return that. Fails with an AssertionError naming ``what`` and the last value after ``timeout``
    (real seconds, or virtual ones under a MockClock)."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            await trio.sleep(POLL)
    raise AssertionError(f"waited {timeout} s for {what or check!r}; last: {last!r}")


def unread_by_server(stream: trio.SocketStream) -> int | None:
    """How many of the bytes sent on ``stream`` (a TCP connection to a server on this host, IPv4)
    the server has not read yet: the receive queue of the server's end of the connection, as
    /proc/net/tcp shows it. None if the kernel has no such connection (any more)."""
    end = tcp_end(stream.socket.getpeername(), stream.socket.getsockname())
    return None if end is None else end[1]


async def server_has_read(stream: trio.SocketStream, timeout: float = WAIT) -> None:  # noqa: ASYNC109
    """Wait until the server has read everything sent on ``stream``. For a request the server
    holds (a polling GET with nothing to send), this is the moment it is pending: the server
    registers a GET it has read without any further I/O."""
    await eventually(lambda: unread_by_server(stream) == 0, timeout, "the server to read the request")


def eio_target(transport: str = "polling", sid: str | None = None, *, eio: str | None = "4",
               extra: str = "") -> str:
    query = []
    if eio is not None:
        query.append(f"EIO={eio}")
    if transport:
        query.append(f"transport={transport}")
    if sid is not None:
        query.append(f"sid={sid}")
    if extra:
        query.append(extra)
    return PATH + "?" + "&".join(query)


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class ServerClosed(Exception):
    """The server closed the connection before (or instead of) a whole response."""


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection. ``send_request`` and ``receive_response`` are separate
    so that a test can leave a GET pending while doing other things."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HTTPConnection:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream, port)

    async def send_request(self, method: str, target: str, body: bytes = b"",
                           headers: list[tuple[str, str]] | None = None) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", f"127.0.0.1:{self.port}"), *(headers or [])]
        if method in ("POST", "PUT") or body:
            hdrs.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        with trio.fail_after(WAIT):
            await self.stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError as exc:
                    raise ServerClosed("connection reset") from exc
                self.conn.receive_data(data)
                continue
            return event

    async def receive_response(self, timeout: float = WAIT) -> Response:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                raise ServerClosed("closed before a response")
            if not isinstance(event, h11.Response):
                raise AssertionError(f"unexpected event {event!r}")
            resp = Response(event.status_code, {k.decode().lower(): v.decode() for k, v in event.headers})
            chunks = []
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ServerClosed("closed in the middle of a response")
            resp.body = b"".join(chunks)
            return resp

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None, timeout: float = WAIT) -> Response:  # noqa: ASYNC109
        await self.send_request(method, target, body, headers)
        return await self.receive_response(timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def request(port: int, method: str, target: str, body: bytes = b"",
                  headers: list[tuple[str, str]] | None = None, timeout: float = WAIT) -> Response:  # noqa: ASYNC109
    """One request on a fresh connection."""
    conn = await HTTPConnection.open(port)
    try:
        return await conn.request(method, target, body, headers, timeout)
    finally:
        await conn.aclose()


class Recorder:
    """A list that a test can wait on: an application's handlers append, the test awaits a count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = trio.Event()

    def append(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while len(self.items) < count:
                await self._changed.wait()
        return self.items


def parse_open(packet: str) -> dict[str, Any]:
    assert packet[0] == "0", packet
    data: dict[str, Any] = json.loads(packet[1:])
    return data


async def handshake(port: int, headers: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, Any]]:
    """Open a polling session; returns (sid, open packet data)."""
    resp = await request(port, "GET", eio_target("polling"), headers=headers)
    assert resp.status == 200, resp
    data = parse_open(resp.text)
    return data["sid"], data


async def poll(port: int, sid: str, timeout: float = WAIT) -> list[str]:  # noqa: ASYNC109
    """One GET; returns the packets of its payload."""
    resp = await request(port, "GET", eio_target("polling", sid), timeout=timeout)
    assert resp.status == 200, (resp.status, resp.body)
    return resp.text.split(RS)


async def post(port: int, sid: str, body: str | bytes) -> Response:
    data = body.encode() if isinstance(body, str) else body
    return await request(port, "POST", eio_target("polling", sid), data,
                         headers=[("Content-Type", "text/plain;charset=UTF-8")])


async def post_ok(port: int, sid: str, body: str | bytes) -> None:
    resp = await post(port, sid, body)
    assert (resp.status, resp.body) == (200, b"ok"), resp


async def wait_session_gone(port: int, sid: str, timeout: float = 2.0) -> Response:  # noqa: ASYNC109
    """Wait until a request with ``sid`` gets 400 "Session ID unknown" (a noop POST, which changes
    nothing on a live session). Returns that response; fails (AssertionError) if it stays."""

    async def gone() -> Response | None:
        resp = await post(port, sid, "6")
        unknown = resp.status == 400 and resp.json() == {"code": 1, "message": "Session ID unknown"}
        return resp if unknown else None

    return await eventually(gone, timeout, f"session {sid} to be gone")


async def open_ws(nursery: trio.Nursery, port: int, sid: str | None = None,
                  extra_headers: list[tuple[bytes, bytes]] | None = None) -> WebSocketConnection:
    url = f"ws://127.0.0.1:{port}{eio_target('websocket', sid)}"
    with trio.fail_after(WAIT):
        return await connect_websocket_url(nursery, url, extra_headers=extra_headers)


async def ws_refused(port: int, sid: str | None = None,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> ConnectionRejected | ConnectionClosed:
    """Open a WebSocket that the server must refuse: either it rejects the handshake (an HTTP error
    status) or it accepts and closes at once without sending a message. Returns what happened."""
    url = f"ws://127.0.0.1:{port}{eio_target('websocket', sid)}"
    with trio.fail_after(WAIT):
        try:
            async with open_websocket_url(url, extra_headers=extra_headers) as ws:
                try:
                    msg = await ws.get_message()
                except ConnectionClosed as closed:
                    return closed
                raise AssertionError(f"the WebSocket was accepted and got {msg!r}")
        except ConnectionRejected as rejected:
            return rejected


async def ws_recv(ws: WebSocketConnection, timeout: float = WAIT) -> str | bytes:  # noqa: ASYNC109
    with trio.fail_after(timeout):
        msg: str | bytes = await ws.get_message()
        return msg


async def ws_send(ws: WebSocketConnection, data: str | bytes) -> None:
    with trio.fail_after(WAIT):
        await ws.send_message(data)


async def ws_open_session(nursery: trio.Nursery, port: int) -> tuple[WebSocketConnection, str]:
    """A direct WebSocket session: returns (ws, sid) after reading the open packet."""
    ws = await open_ws(nursery, port)
    first = await ws_recv(ws)
    assert isinstance(first, str)
    return ws, parse_open(first)["sid"]


async def sio_connect_polling(port: int, namespace: str = "/", auth: str = "") -> tuple[str, str]:
    """Engine.IO handshake over polling, then a Socket.IO CONNECT. Returns (eio sid, SIO CONNECT answer)."""
    sid, _ = await handshake(port)
    prefix = "" if namespace == "/" else namespace + ","
    await post_ok(port, sid, "40" + prefix + auth)
    packets = await poll(port, sid)
    assert len(packets) == 1, packets
    return sid, packets[0]
