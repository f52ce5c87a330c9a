"""Issue 15, the library features, through the real clients under Node (engine.io-client and
socket.io-client, pinned in tests/interop/package-lock.json): each test serves an app here (loopback,
port 0), runs one scenario of ``tests/interop/library.mjs`` against it, and checks what the client
printed and what the app's handlers saw.

forceBase64 both ways, the handshake the app sees, a cookie set on the handshake, a deferred ack, a
request refused by ``allow_request``, middleware (order, refusal with data) and the connect
handler's ``{}`` when the client sends no auth. The wire details (raw HTTP and WebSocket) are in
tests/socketio/test_library_wire.py.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import trio

import callbox
from _interop import NEEDS_NODE, StartServer, run_script
from _paths import INTEROP
from callbox import Ack, ConnectionRefused, EngineSocket, Socket, SocketIO

SCRIPT = INTEROP / "library.mjs"
LIMIT = 20  # s: for one script; each of its steps gives up after 5 s itself
BYTES = bytes([0, 1, 2, 127, 128, 254, 255])

pytestmark = NEEDS_NODE


def _from_json(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"$bytes"}:
        return bytes.fromhex(obj["$bytes"])
    return obj


async def scenario(port: int, name: str, mode: str = "default") -> dict[str, list[dict[str, Any]]]:
    """Run ``library.mjs name`` (exit 0 and an "end" line); its JSON lines by type."""
    out = await run_script(SCRIPT, LIMIT, name, f"http://127.0.0.1:{port}", mode)
    lines = [json.loads(line, object_hook=_from_json) for line in out.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["type"] == "end", out
    by_type: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_type.setdefault(line["type"], []).append(line)
    return by_type


# -- 1. forceBase64 -------------------------------------------------------------------------------


class EchoApp:
    """An Engine.IO app that echoes every message and records what it got."""

    def __init__(self) -> None:
        self.got: list[str | bytes] = []
        self.base64: list[bool] = []

    async def on_open(self, sock: EngineSocket) -> None:
        self.base64.append(sock.core.base64)

    async def on_message(self, sock: EngineSocket, data: str | bytes) -> None:
        self.got.append(data)
        sock.send(data)

    async def on_close(self, sock: EngineSocket, reason: callbox.CloseReason) -> None:
        pass

    async def run(self) -> None:
        await trio.sleep_forever()


@pytest.mark.parametrize("mode", ["websocket", "polling", "default"])
async def test_engineio_client_force_base64(start_server: StartServer, mode: str) -> None:
    """engine.io-client with forceBase64 sends binary as b + base64 text (b64=1 in its query): the
    app gets bytes and echoes bytes, which reach the client as binary (sent to it as text too)."""
    app = EchoApp()
    port = await start_server(app)
    lines = await scenario(port, "eio-base64", mode)
    (transport,) = lines["transport"]
    assert transport == {"type": "transport", "name": "polling" if mode == "polling" else "websocket",
                         "supportsBinary": False}
    assert app.got == [BYTES, "hello", bytes([9, 8, 7])]
    assert app.base64 == [True], "the client asked for b64=1"
    (echoes,) = lines["echoes"]
    assert echoes["values"] == [BYTES, "hello", bytes([9, 8, 7])]
    assert echoes["kinds"][1] == "string"
    assert {echoes["kinds"][0], echoes["kinds"][2]} <= {"ArrayBuffer", "Buffer"}, echoes


@pytest.mark.parametrize("mode", ["websocket", "polling", "default"])
async def test_socketio_client_force_base64(start_server: StartServer, mode: str) -> None:
    """socket.io-client with forceBase64: an event with Buffer arguments round trips (the ack), and
    a binary event from the server arrives as binary."""
    app = SocketIO()
    received: list[tuple[Any, ...]] = []

    @app.on("echo")
    def echo(socket: Socket, *args: Any) -> tuple[Any, ...]:
        received.append(args)
        socket.emit("download", b"\xff\x00binary")
        return args

    port = await start_server(app)
    lines = await scenario(port, "sio-base64", mode)
    assert received == [(BYTES, {"nested": b"hi"})]
    (echo_line,) = lines["echo"]
    assert echo_line["transport"] == ("polling" if mode == "polling" else "websocket")
    assert echo_line["answer"] == [BYTES, {"nested": b"hi"}]
    assert echo_line["kinds"][0] in ("ArrayBuffer", "Buffer"), echo_line
    assert echo_line["download"] == b"\xff\x00binary"
    assert echo_line["downloadKind"] in ("ArrayBuffer", "Buffer"), echo_line


# -- 2. the handshake the app sees ------------------------------------------------------------------


def handshake_app() -> SocketIO:
    app = SocketIO()

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        hs = socket.handshake
        socket.emit("handshake", {
            "query": hs.query, "user_agent": hs.headers.get("user-agent"), "cookies": hs.cookies,
            "address": hs.address, "remote_address": socket.remote_address, "secure": hs.secure,
            "url": hs.url, "time": hs.time, "issued": hs.issued,
        })

    return app


@pytest.mark.parametrize("mode", ["websocket", "polling"])
@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted-proxy"])
async def test_handshake_seen_by_the_app(start_server: StartServer, mode: str, trusted: bool) -> None:
    """query, user agent, cookies, address (X-Forwarded-For only past a trusted proxy), secure, url
    and time of the request that opened the connection."""
    settings = {"trusted_proxies": ("127.0.0.1",)} if trusted else {}
    port = await start_server(handshake_app(), **settings)
    before = datetime.datetime.now(datetime.UTC)
    lines = await scenario(port, "handshake", mode)
    (line,) = lines["handshake"]
    seen = line["seen"]
    assert seen["query"]["tenant"] == "acme"
    assert seen["query"]["EIO"] == "4" and seen["query"]["transport"] == mode
    assert seen["user_agent"] == "callbox-library-test/1.0"
    assert seen["cookies"] == {"session": "s3cr3t", "theme": "dark"}
    address = "203.0.113.7" if trusted else "127.0.0.1"
    assert (seen["address"], seen["remote_address"]) == (address, address)
    assert seen["secure"] is False
    assert seen["url"].startswith("/socket.io/?") and "tenant=acme" in seen["url"], seen["url"]
    when = datetime.datetime.fromisoformat(seen["time"])
    assert when.tzinfo is not None and abs((when - before).total_seconds()) < 10, seen["time"]


# -- 3. a cookie set on the handshake -------------------------------------------------------------


@pytest.mark.parametrize("form", ["list", "dict"])
async def test_initial_headers_cookie(start_server: StartServer, form: str) -> None:
    """@app.initial_headers: its Set-Cookie (and another header) reach the client on the polling
    handshake (engine.io-client's cookie jar keeps it) and on a direct WebSocket's 101."""
    app = SocketIO()
    asked: list[str] = []

    @app.initial_headers
    def headers(handshake: callbox.Handshake) -> Any:
        asked.append(handshake.query["transport"])
        cookie = "sticky=node-a; Path=/; HttpOnly"
        if form == "dict":
            return {"Set-Cookie": cookie, "X-Node": "a"}
        return [("Set-Cookie", cookie), ("X-Node", "a")]

    port = await start_server(app)
    lines = await scenario(port, "sticky")
    (raw,) = lines["polling-raw"]
    assert (raw["status"], raw["setCookie"], raw["tag"]) == (200, ["sticky=node-a; Path=/; HttpOnly"], "a")
    (jar,) = lines["polling-jar"]
    assert jar["cookies"] == {"sticky": "node-a"}
    (ws,) = lines["websocket"]
    assert ws == {"type": "websocket", "status": 101, "setCookie": ["sticky=node-a; Path=/; HttpOnly"],
                  "tag": "a", "first": "0"}
    assert asked == ["polling", "polling", "websocket"], "once per new connection, not per request"


# -- 4. a deferred ack ---------------------------------------------------------------------------


async def test_deferred_ack(start_server: StartServer) -> None:
    """A's ack is answered after B replied (from a task started with app.start_soon); an ack never
    answered makes the client's timeout(500).emitWithAck reject; a second call raises RuntimeError;
    defer_ack() is None for an event sent without an ack callback."""
    app = SocketIO()
    answerer: list[Socket] = []
    kept: list[Ack] = []  # the never-answered ack, kept alive on purpose
    record: dict[str, Any] = {}

    @app.on("answerer")
    def register(socket: Socket) -> bool:
        answerer.append(socket)
        return True

    @app.on("ask")
    def ask(socket: Socket, question: str) -> str:
        ack = socket.defer_ack()
        assert ack is not None

        async def relay() -> None:
            answer = await answerer[0].call("question", question, timeout=5)
            record["relay"] = ack(*answer)

        app.start_soon(relay)
        return "not sent: the handler deferred its ack"

    @app.on("never")
    def never(socket: Socket) -> None:
        ack = socket.defer_ack()
        assert ack is not None
        kept.append(ack)

    @app.on("noack")
    def noack(socket: Socket, value: str) -> str:
        record["noack"] = (socket.defer_ack(), value)
        return "nobody asked"

    @app.on("twice")
    def twice(socket: Socket) -> None:
        ack = socket.defer_ack()
        assert ack is not None
        record["first"] = ack(b"\x00first")  # binary: a BINARY_ACK
        try:
            ack("second")
        except RuntimeError as exc:
            record["second"] = str(exc)

    @app.on("ping")
    def ping(socket: Socket) -> str:
        return "pong"

    port = await start_server(app)
    lines = await scenario(port, "deferred", "websocket")
    assert lines["relayed"][0]["answer"] == ["B says: why?", 42]
    (never_line,) = lines["never"]
    assert never_line["rejected"] is True and never_line["message"] == "operation has timed out", never_line
    assert 400 <= never_line["ms"] < 2000, never_line
    assert lines["twice"][0]["answer"] == b"\x00first"
    assert lines["after"][0]["answer"] == "pong", "no stray ack confused the client's ids"
    assert record == {"relay": True, "noack": (None, "x"), "first": True, "second": "this ack was answered already"}
    assert len(kept) == 1 and kept[0].sent is False


# -- 5. a refused request ------------------------------------------------------------------------


async def test_allow_request_refuses_and_may_wait(start_server: StartServer) -> None:
    """An async allow_request that waits (trio.sleep): False (by a query value or a header) is a 403
    {"code":4,"message":"Forbidden"} before any session, so socket.io-client gets connect_error; a
    request it allows connects, on polling and then on the upgrade's WebSocket."""
    app = SocketIO()
    asked: list[tuple[str, str | None, str | None]] = []
    connects: list[str] = []

    @app.allow_request
    async def allow(handshake: callbox.Handshake) -> bool:
        await trio.sleep(0.2)
        deny_q, deny_h = handshake.query.get("deny"), handshake.headers.get("x-deny")
        asked.append((handshake.query["transport"], deny_q, deny_h))
        return deny_q is None and deny_h is None

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        connects.append(socket.id)

    port = await start_server(app)
    lines = await scenario(port, "refused")
    for name in ("by-query", "by-header"):
        (line,) = lines[name]
        assert line["ok"] is False and line["connected"] is False, line
        assert line["message"] == "xhr poll error" and line["description"] == 403, line
    (raw,) = lines["raw"]
    assert (raw["status"], json.loads(raw["body"]), raw["contentType"]) == (403, {"code": 4, "message": "Forbidden"},
                                                                     "application/json")
    (allowed,) = lines["allowed"]
    assert allowed["ok"] is True and allowed["transport"] == "websocket", allowed
    assert allowed["ms"] >= 200, "the check waited"
    assert asked == [("polling", "1", None), ("polling", None, "yes"), ("polling", "1", None), ("polling", None, None)]
    assert connects == [allowed["id"]], "refused requests reached no handler"


async def test_allow_request_refuses_websocket(start_server: StartServer) -> None:
    """A direct WebSocket refused by allow_request: socket.io-client gets connect_error."""
    app = SocketIO()

    @app.allow_request
    def allow(handshake: callbox.Handshake) -> bool:
        return "deny" not in handshake.query and "x-deny" not in handshake.headers

    port = await start_server(app)
    lines = await scenario(port, "refused", "websocket")
    for name in ("by-query", "by-header"):
        (line,) = lines[name]
        assert line["ok"] is False and line["connected"] is False and line["message"] == "websocket error", line
    assert lines["allowed"][0]["ok"] is True


# -- 6. middleware -------------------------------------------------------------------------------


async def test_middleware_order_and_refusal_with_data(start_server: StartServer) -> None:
    """app.use runs first for every namespace, then the namespace's own, then the connect handler;
    ConnectionRefused("nope", {"reason": "x"}) reaches socket.io-client as err.message / err.data,
    and nothing after the refusing middleware runs."""
    app = SocketIO()
    admin = app.of("/admin")
    order: list[tuple[str, str, str]] = []

    @app.use
    async def app_mw(socket: Socket, auth: Any) -> None:
        order.append(("app", socket.namespace.name, auth["user"]))
        if auth.get("deny"):
            raise ConnectionRefused("nope", {"reason": "x"})

    @app.of("/").use
    def root_mw(socket: Socket, auth: Any) -> None:
        order.append(("ns", "/", auth["user"]))

    @admin.use
    def admin_mw(socket: Socket, auth: Any) -> None:
        order.append(("ns", "/admin", auth["user"]))
        if auth["user"] == "mallory":
            raise ConnectionRefused("admins only", {"reason": "role", "need": ["admin"]})

    @admin.use
    def admin_mw2(socket: Socket, auth: Any) -> None:
        order.append(("ns2", "/admin", auth["user"]))

    for ns in (app.of("/"), admin):

        @ns.on_connect
        def connect(socket: Socket, auth: Any) -> None:
            order.append(("connect", socket.namespace.name, auth["user"]))

    port = await start_server(app)
    lines = await scenario(port, "middleware", "websocket")
    assert [line["ok"] for line in lines["ok"]] == [True, True]
    for line in lines["app-refused"]:
        assert (line["ok"], line["connected"], line["message"], line["data"]) == (False, False, "nope", {"reason": "x"})
    (ns_refused,) = lines["ns-refused"]
    assert (ns_refused["message"], ns_refused["data"]) == ("admins only", {"reason": "role", "need": ["admin"]})
    assert order == [
        ("app", "/", "ada"), ("ns", "/", "ada"), ("connect", "/", "ada"),
        ("app", "/", "eve"),
        ("app", "/admin", "ada"), ("ns", "/admin", "ada"), ("ns2", "/admin", "ada"), ("connect", "/admin", "ada"),
        ("app", "/admin", "eve"),
        ("app", "/admin", "mallory"), ("ns", "/admin", "mallory"),
    ]
    assert not app.of("/").sockets and not admin.sockets


# -- 7. auth: {} when none ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_connect_handler_auth_empty_or_given(start_server: StartServer, mode: str) -> None:
    app = SocketIO()
    seen: list[Any] = []

    @app.use
    def mw(socket: Socket, auth: Any) -> None:
        seen.append(("use", auth))

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        seen.append(("connect", auth))

    @app.on("auth")
    def auth(socket: Socket) -> Any:
        return socket.auth

    port = await start_server(app)
    lines = await scenario(port, "auth", mode)
    assert [(line["name"], line["seen"]) for line in lines["auth"]] == [("none", {}), ("given", {"token": "t", "n": 1})]
    assert seen == [("use", {}), ("connect", {}), ("use", {"token": "t", "n": 1}), ("connect", {"token": "t", "n": 1})]
