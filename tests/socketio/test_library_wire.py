"""Issue 15 on the wire, with raw HTTP and WebSocket clients (tests/_raw.py): the exact bytes and
headers the server answers for forceBase64 (``b`` + base64 text, ``b64=1``), a second POST while
one is handled, CORS with ``*`` and with named origins, ``allow_request`` and ``initial_headers``,
and the client address past trusted proxies. What the real clients make of the same features is
tested in tests/interop/test_library_node.py.

Rules (tests/conftest.py): loopback only, port 0, every wait bounded.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

import callbox
from _raw import (
    RS,
    HTTPConnection,
    Recorder,
    eio_target,
    open_ws,
    parse_open,
    poll,
    post_ok,
    request,
    wait_session_gone,
    ws_recv,
    ws_send,
)
from callbox import Ack, CloseReason, EngineSocket, SocketIO

StartServer = Callable[..., Awaitable[int]]  # the conftest fixture: port = await start_server(app, **config)

BYTES = bytes([0, 1, 2, 127, 128, 254, 255])
B64 = "b" + b64encode(BYTES).decode()  # how forceBase64 sends them


class EchoApp:
    """An Engine.IO app: echoes each message; a message "slow" is held until ``release`` is set.
    Records what it got, the handshakes and the close reasons."""

    def __init__(self) -> None:
        self.got = Recorder()
        self.handshakes: list[callbox.Handshake] = []
        self.closed = Recorder()
        self.release = trio.Event()

    async def on_open(self, sock: EngineSocket) -> None:
        self.handshakes.append(sock.handshake)

    async def on_message(self, sock: EngineSocket, data: str | bytes) -> None:
        self.got.append(data)
        if data == "slow":
            await self.release.wait()
        sock.send(data)

    async def on_close(self, sock: EngineSocket, reason: CloseReason) -> None:
        self.closed.append((sock.sid, reason))

    async def run(self) -> None:
        await trio.sleep_forever()


async def open_session(port: int, extra: str = "", headers: list[tuple[str, str]] | None = None) -> str:
    resp = await request(port, "GET", eio_target("polling", extra=extra), headers=headers)
    assert resp.status == 200, resp
    return str(parse_open(resp.text)["sid"])


# -- forceBase64 ------------------------------------------------------------------------------------


async def test_websocket_binary_frames_without_b64(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A WebSocket without b64=1 gets binary messages as binary frames, whether the client sent a
    binary frame or ``b`` + base64 text (taken on every transport)."""
    app = EchoApp()
    port = await start_server(app)
    ws = await open_ws(nursery, port)
    assert isinstance(await ws_recv(ws), str)  # the open packet
    await ws_send(ws, BYTES)
    assert await ws_recv(ws) == BYTES
    await ws_send(ws, B64)
    assert await ws_recv(ws) == BYTES, "a binary frame, not text"
    await ws_send(ws, "4text")
    assert await ws_recv(ws) == "4text"
    assert app.got.items == [BYTES, BYTES, "text"]
    await ws.aclose()


async def test_websocket_b64_gets_base64_text(start_server: StartServer, nursery: trio.Nursery) -> None:
    """b64=1 on a direct WebSocket: every binary message the server sends is a text frame b + base64."""
    app = EchoApp()
    port = await start_server(app)
    url = f"ws://127.0.0.1:{port}{eio_target('websocket', extra='b64=1')}"
    with trio.fail_after(5):
        async with open_websocket_url(url) as ws:
            assert parse_open(await ws_recv(ws))  # type: ignore[arg-type]
            await ws_send(ws, B64)
            assert await ws_recv(ws) == B64
            await ws_send(ws, BYTES)  # a binary frame from it is still taken
            assert await ws_recv(ws) == B64
    assert app.got.items == [BYTES, BYTES]


async def test_polling_b64_and_bad_base64(start_server: StartServer) -> None:
    """Polling with b64=1: b + base64 both ways. Base64 that does not decode closes the session."""
    app = EchoApp()
    port = await start_server(app)
    sid = await open_session(port, "b64=1")
    await post_ok(port, sid, B64 + RS + "4after")
    assert await poll(port, sid) == [B64, "4after"]
    assert app.got.items == [BYTES, "after"]
    resp = await request(port, "POST", eio_target("polling", sid), b"b!!notbase64")
    assert resp.status == 400, resp
    await wait_session_gone(port, sid)
    assert (await app.closed.wait_for(1))[0] == (sid, CloseReason.PARSE_ERROR)


# -- a second POST while one is handled ------------------------------------------------------------


async def test_concurrent_post_is_400_and_closes(start_server: StartServer) -> None:
    """While the first POST's message is still in the app's handler, a second POST gets 400 and the
    session closes; the second POST's message is never delivered."""
    app = EchoApp()
    port = await start_server(app)
    sid = await open_session(port)
    first = await HTTPConnection.open(port)
    try:
        await first.send_request("POST", eio_target("polling", sid), b"4slow",
                                 [("Content-Type", "text/plain;charset=UTF-8")])
        await app.got.wait_for(1)  # the first POST is being handled
        second = await request(port, "POST", eio_target("polling", sid), b"4second",
                               headers=[("Content-Type", "text/plain;charset=UTF-8")])
        assert (second.status, second.json()) == (400, {"code": 3, "message": "Bad request"})
        app.release.set()
        answer = await first.receive_response()
        assert (answer.status, answer.body) == (200, b"ok"), "the first POST's message was delivered"
    finally:
        await first.aclose()
    # Closed: nothing more is taken, and the next GET gets the close packet (nothing queued before
    # it: the echo of "slow" came after the close); then the session is gone.
    late = await request(port, "POST", eio_target("polling", sid), b"4third")
    assert (late.status, late.json()) == (400, {"code": 3, "message": "Bad request"})
    assert await poll(port, sid) == ["1"]
    gone = await wait_session_gone(port, sid)
    assert gone.json() == {"code": 1, "message": "Session ID unknown"}
    assert app.got.items == ["slow"], "the second POST's message was not delivered"
    (closed,) = await app.closed.wait_for(1)
    assert closed == (sid, CloseReason.TRANSPORT_ERROR)


async def test_sequential_posts_are_fine(start_server: StartServer) -> None:
    """POSTs one after the other (each answered before the next) are the normal case."""
    app = EchoApp()
    port = await start_server(app)
    sid = await open_session(port)
    for word in ("one", "two", "three"):
        await post_ok(port, sid, "4" + word)
    assert await poll(port, sid) == ["4one", "4two", "4three"]


# -- CORS -------------------------------------------------------------------------------------------

PREFLIGHT = [("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "content-type")]


async def test_cors_star_allows_any_origin_without_credentials(start_server: StartServer) -> None:
    port = await start_server(EchoApp(), cors_origins=("*",))
    origin = [("Origin", "https://evil.example")]
    resp = await request(port, "GET", eio_target("polling"), headers=origin)
    assert resp.status == 200
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in resp.headers
    pre = await request(port, "OPTIONS", eio_target("polling"), headers=[*origin, *PREFLIGHT])
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in pre.headers
    assert pre.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert pre.headers["access-control-allow-headers"] == "content-type"
    # A POST and a GET on the session too, and an error answer.
    sid = parse_open(resp.text)["sid"]
    posted = await request(port, "POST", eio_target("polling", sid), b"4x", headers=origin)
    assert (posted.status, posted.headers["access-control-allow-origin"]) == (200, "*")
    assert "access-control-allow-credentials" not in posted.headers
    unknown = await request(port, "GET", eio_target("polling", "nope"), headers=origin)
    assert (unknown.status, unknown.headers.get("access-control-allow-origin")) == (400, "*")


async def test_cors_named_origin_gets_credentials(start_server: StartServer) -> None:
    port = await start_server(EchoApp(), cors_origins=("https://good.example",))
    good = [("Origin", "https://good.example")]
    resp = await request(port, "GET", eio_target("polling"), headers=good)
    assert resp.status == 200
    assert resp.headers["access-control-allow-origin"] == "https://good.example"
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert resp.headers["vary"] == "Origin"
    pre = await request(port, "OPTIONS", eio_target("polling"), headers=[*good, *PREFLIGHT])
    assert pre.status == 204
    assert pre.headers["access-control-allow-origin"] == "https://good.example"
    assert pre.headers["access-control-allow-credentials"] == "true"
    bad = await request(port, "GET", eio_target("polling"), headers=[("Origin", "https://evil.example")])
    assert (bad.status, bad.json()) == (403, {"code": 4, "message": "Forbidden"})
    assert "access-control-allow-origin" not in bad.headers


async def test_cors_star_with_named_origin_keeps_credentials_for_it(start_server: StartServer) -> None:
    """('*', named): the named origin keeps credentials, any other gets * without them."""
    port = await start_server(EchoApp(), cors_origins=("*", "https://good.example"))
    good = await request(port, "GET", eio_target("polling"), headers=[("Origin", "https://good.example")])
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    assert good.headers["access-control-allow-credentials"] == "true"
    other = await request(port, "GET", eio_target("polling"), headers=[("Origin", "https://other.example")])
    assert other.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in other.headers


# -- allow_request and initial_headers ----------------------------------------------------------


async def test_allow_request_403_before_any_session(start_server: StartServer, nursery: trio.Nursery) -> None:
    """False from allow_request: 403 {"code":4,"message":"Forbidden"} over polling and for a direct
    WebSocket, and no session was made; requests on an existing session are not asked again."""
    app = SocketIO()
    asked: list[str] = []

    @app.allow_request
    async def allow(handshake: callbox.Handshake) -> bool:
        await trio.sleep(0.05)
        asked.append(handshake.query["transport"])
        return handshake.headers.get("x-api-key") == "k"

    opened: list[str] = []

    @app.on_connect
    def connect(socket: callbox.Socket, auth: Any) -> None:
        opened.append(socket.id)

    port = await start_server(app)
    resp = await request(port, "GET", eio_target("polling"))
    assert (resp.status, resp.json(), resp.headers["content-type"]) == (
        403, {"code": 4, "message": "Forbidden"}, "application/json")
    url = f"ws://127.0.0.1:{port}{eio_target('websocket')}"
    with trio.fail_after(5), pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url):
            pass
    assert rejected.value.status_code == 403
    assert rejected.value.body is not None and b'"code":4' in rejected.value.body, rejected.value.body
    assert asked == ["polling", "websocket"]
    # Allowed: a session; its later requests (a POST, an upgrade) are not asked about.
    sid = await open_session(port, headers=[("X-Api-Key", "k")])
    await post_ok(port, sid, "40")
    assert (await poll(port, sid))[0].startswith("40{")
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    assert asked == ["polling", "websocket", "polling"]
    assert len(opened) == 1
    await ws.aclose()


async def test_allow_request_exception_refuses(start_server: StartServer) -> None:
    app = SocketIO()

    @app.allow_request
    def allow(handshake: callbox.Handshake) -> bool:
        raise ValueError("broken check")

    port = await start_server(app)
    resp = await request(port, "GET", eio_target("polling"))
    assert (resp.status, resp.json()) == (403, {"code": 4, "message": "Forbidden"})


async def test_initial_headers_on_handshake_and_101(start_server: StartServer, nursery: trio.Nursery) -> None:
    """The polling handshake's answer and a direct WebSocket's 101 carry the headers; an upgrade of
    an existing session (its own connection) and a plain poll do not: the session was opened."""
    app = SocketIO()

    @app.initial_headers
    def headers(handshake: callbox.Handshake) -> list[tuple[str, str]]:
        return [("Set-Cookie", f"sticky=a-{handshake.query['transport']}; Path=/")]

    port = await start_server(app)
    resp = await request(port, "GET", eio_target("polling"))
    assert resp.headers["set-cookie"] == "sticky=a-polling; Path=/"
    sid = parse_open(resp.text)["sid"]
    await post_ok(port, sid, "40")
    polled = await request(port, "GET", eio_target("polling", sid))
    assert "set-cookie" not in polled.headers
    direct = await open_ws(nursery, port)
    assert (b"set-cookie", b"sticky=a-websocket; Path=/") in [(n.lower(), v) for n, v in direct.handshake_headers]
    upgrade = await open_ws(nursery, port, sid)
    assert b"set-cookie" not in [n.lower() for n, _ in upgrade.handshake_headers]
    await direct.aclose()
    await upgrade.aclose()


# -- the client's address -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proxies", "forwarded", "address"),
    [
        ((), "203.0.113.7", "127.0.0.1"),  # not trusted: the header is a claim
        (("127.0.0.1",), "203.0.113.7", "203.0.113.7"),
        (("127.0.0.1", "10.0.0.0/8"), "198.51.100.1, 10.1.2.3", "198.51.100.1"),  # past two proxies
        (("127.0.0.1",), "198.51.100.1, 10.1.2.3", "10.1.2.3"),  # 10.1.2.3 not trusted: it is the client
    ],
)
async def test_handshake_address_past_trusted_proxies(
    start_server: StartServer, proxies: tuple[str, ...], forwarded: str, address: str
) -> None:
    app = EchoApp()
    port = await start_server(app, trusted_proxies=proxies)
    await open_session(port, "tenant=acme&tenant=beta", headers=[
        ("X-Forwarded-For", forwarded), ("Cookie", "a=1"), ("Cookie", "b=2"), ("User-Agent", "raw/1")])
    (hs,) = app.handshakes
    assert hs.address == address
    assert hs.secure is False
    assert hs.query["tenant"] == "beta", "a repeated parameter: its last value"
    assert hs.cookies == {"a": "1", "b": "2"}
    assert hs.headers["user-agent"] == "raw/1"


# -- Ack ------------------------------------------------------------------------------------------


async def test_ack_sends_once() -> None:
    """An Ack whose socket's connection has gone sends nothing (False); any second call raises."""

    class Gone:
        connected = False
        client = object()

    sock: Any = Gone()
    ack = Ack(sock, 7)
    assert (ack.sent, ack("x"), ack.sent) == (False, False, True)
    with pytest.raises(RuntimeError, match="answered already"):
        ack("y")
