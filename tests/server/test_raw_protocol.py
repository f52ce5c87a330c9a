"""Engine.IO v4 / Socket.IO v5 on the wire: raw HTTP requests and raw WebSocket frames against the
real server, asserting the exact bytes a client receives.

Rules (as trio-websocket's tests): loopback only, port 0, every network wait under ``fail_after``
(the helpers in ``_raw`` bound each wait; tests add their own around waits they start themselves).
"""

from __future__ import annotations

import json
import re
from base64 import b64encode
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

import callbox
from _raw import (
    RS,
    HTTPConnection,
    Recorder,
    eio_target,
    eventually,
    handshake,
    open_ws,
    parse_open,
    poll,
    post,
    post_ok,
    request,
    server_has_read,
    sio_connect_polling,
    wait_session_gone,
    ws_open_session,
    ws_recv,
    ws_refused,
    ws_send,
)
from callbox.engineio import SessionState

# How long a raw test lets the server act on something that needs no timer (a close, a release).
# Loopback round trips take milliseconds; this only bounds a failure.
SETTLE = 2.0


class Echo:
    """An Engine.IO application that sends every message back, and records closes."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, callbox.CloseReason]] = []
        self.closes = Recorder()
        self.socks: dict[str, callbox.EngineSocket] = {}

    async def on_open(self, sock: callbox.EngineSocket) -> None:
        self.socks[sock.sid] = sock

    async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
        sock.send(data)

    async def on_close(self, sock: callbox.EngineSocket, reason: callbox.CloseReason) -> None:
        self.closed.append((sock.sid, reason))
        self.closes.append(sock.sid)

    async def run(self) -> None:
        await trio.sleep_forever()


def sio_app(disconnects: Recorder | None = None) -> callbox.SocketIO:
    app = callbox.SocketIO()

    @app.on("echo")
    async def echo(socket: callbox.Socket, *args: Any) -> tuple[Any, ...]:
        return args

    admin = app.of("/admin")
    if disconnects is not None:

        async def gone(socket: callbox.Socket, reason: str) -> None:
            disconnects.append((socket.namespace.name, reason))

        app.on_disconnect(gone)
        admin.on_disconnect(gone)
    return app


def error(code: int) -> dict[str, Any]:
    messages = {
        0: "Transport unknown",
        1: "Session ID unknown",
        2: "Bad handshake method",
        3: "Bad request",
        4: "Forbidden",
        5: "Unsupported protocol version",
    }
    return {"code": code, "message": messages[code]}


def assert_error(resp: Any, status: int, code: int) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/json")
    # Exact bytes: compact JSON, "code" first (as engine.io writes it).
    assert resp.body == json.dumps(error(code), separators=(",", ":")).encode()


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eio", ["3", "5", "abc", None])
async def test_bad_eio_version_is_400_code_5(start_server: Any, eio: str | None) -> None:
    port = await start_server(Echo())
    resp = await request(port, "GET", eio_target("polling", eio=eio))
    assert_error(resp, 400, 5)


@pytest.mark.parametrize("transport", ["flashsocket", "", "POLLING"])
async def test_bad_transport_is_400_code_0(start_server: Any, transport: str) -> None:
    port = await start_server(Echo())
    resp = await request(port, "GET", eio_target(transport))
    assert_error(resp, 400, 0)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_sid_is_400_code_1(start_server: Any, method: str) -> None:
    port = await start_server(Echo())
    body = b"4hello" if method == "POST" else b""
    resp = await request(port, method, eio_target("polling", "AAAAAAAAAAAAAAAAAAAA"), body)
    assert_error(resp, 400, 1)


async def test_unknown_sid_on_websocket_is_refused(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    refused = await ws_refused(port, "AAAAAAAAAAAAAAAAAAAA")
    assert isinstance(refused, ConnectionRejected)
    assert refused.status_code == 400
    assert refused.body is not None and json.loads(refused.body) == error(1)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_post_without_sid_is_400_code_2(start_server: Any, method: str) -> None:
    port = await start_server(Echo())
    resp = await request(port, method, eio_target("polling"), b"4hello")
    assert_error(resp, 400, 2)


async def test_oversize_post_is_refused_and_closes_the_session(start_server: Any) -> None:
    app = Echo()
    port = await start_server(app, max_payload=1000)
    sid, opened = await handshake(port)
    assert opened["maxPayload"] == 1000
    # Exactly maxPayload bytes is allowed...
    await post_ok(port, sid, "4" + "x" * 999)
    assert await poll(port, sid) == ["4" + "x" * 999]
    # ...one more is not.
    resp = await post(port, sid, "4" + "x" * 1000)
    assert resp.status == 413, (resp.status, resp.body)
    await wait_session_gone(port, sid)
    assert [r for s, r in app.closed if s == sid] == [callbox.CloseReason.TRANSPORT_ERROR]


async def test_oversize_websocket_message_closes_the_session(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo(), max_payload=1000)
    ws, _sid = await ws_open_session(nursery, port)
    await ws_send(ws, "4" + "x" * 999)
    assert await ws_recv(ws) == "4" + "x" * 999
    await ws_send(ws, "4" + "x" * 1000)
    with pytest.raises(ConnectionClosed) as info:
        await ws_recv(ws)
    assert info.value.reason is not None and info.value.reason.code == 1009  # message too big


class Fragile(Echo):
    """Echo, except that the message "boom" makes its handler raise."""

    async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
        if data == "boom":
            raise RuntimeError("a bug in the application's handler")
        sock.send(data)


async def test_a_failing_handler_closes_its_own_session_only(start_server: Any, nursery: trio.Nursery) -> None:
    # Over a WebSocket (the reader hands the message to the application itself) and over polling:
    # the session whose handler raised is closed as a transport error; the others go on.
    app = Fragile()
    port = await start_server(app)
    ws, ws_sid = await ws_open_session(nursery, port)
    bystander, _ = await ws_open_session(nursery, port)
    polled, _ = await handshake(port)
    await ws_send(ws, "4boom")
    with pytest.raises(ConnectionClosed):
        while True:  # the close packet, then the close frame
            await ws_recv(ws)
    await post_ok(port, polled, "4boom")
    await wait_session_gone(port, polled)
    assert sorted(await app.closes.wait_for(2)) == sorted([ws_sid, polled])
    assert dict(app.closed) == {ws_sid: callbox.CloseReason.TRANSPORT_ERROR,
                                polled: callbox.CloseReason.TRANSPORT_ERROR}
    await ws_send(bystander, "4still here")
    assert await ws_recv(bystander) == "4still here"


async def test_two_concurrent_polls(start_server: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    first = await HTTPConnection.open(port)
    try:
        await first.send_request("GET", eio_target("polling", sid))
        await server_has_read(first.stream)  # pending: this GET is the first
        second = await request(port, "GET", eio_target("polling", sid, extra="t=burst"))
        assert second.status == 400, (second.status, second.body)
        assert second.json() == error(3)
        resp = await first.receive_response()
        assert (resp.status, resp.body) == (200, b"1")
    finally:
        await first.aclose()
    await wait_session_gone(port, sid)
    assert [r for s, r in app.closed if s == sid] == [callbox.CloseReason.TRANSPORT_ERROR]


async def test_aborted_poll_closes_the_session(start_server: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    conn = await HTTPConnection.open(port)
    await conn.send_request("GET", eio_target("polling", sid))
    await server_has_read(conn.stream)  # pending
    await conn.aclose()  # the client gives up on its pending GET
    resp = await wait_session_gone(port, sid)
    assert_error(resp, 400, 1)
    assert [r for s, r in app.closed if s == sid] == [callbox.CloseReason.TRANSPORT_CLOSE]


async def _upgrade(nursery: trio.Nursery, port: int, sid: str) -> Any:
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    await ws_send(ws, "5")
    return ws


async def test_second_websocket_for_upgraded_sid_is_closed(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    ws = await _upgrade(nursery, port, sid)
    await ws_send(ws, "4one")
    assert await ws_recv(ws) == "4one"
    refused = await ws_refused(port, sid)  # refusing the handshake or closing at once: both fine
    assert isinstance(refused, ConnectionClosed) or refused.status_code == 400
    # The first one is untouched.
    await ws_send(ws, "4hello")
    assert await ws_recv(ws) == "4hello"


async def test_second_websocket_while_upgrading_is_closed(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    refused = await ws_refused(port, sid)
    assert isinstance(refused, ConnectionClosed) or refused.status_code == 400
    await ws_send(ws, "5")
    await ws_send(ws, "4hello")
    assert await ws_recv(ws) == "4hello"


async def test_polling_get_on_upgraded_sid_is_400_code_3(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    ws = await _upgrade(nursery, port, sid)
    resp = await request(port, "GET", eio_target("polling", sid))
    assert_error(resp, 400, 3)
    # The session carries on over its WebSocket.
    await ws_send(ws, "4still here")
    assert await ws_recv(ws) == "4still here"


async def test_polling_post_on_upgraded_sid_is_400_code_3(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    ws = await _upgrade(nursery, port, sid)
    await ws_send(ws, "4first")
    assert await ws_recv(ws) == "4first"  # the upgrade is complete on the server
    resp = await post(port, sid, "4stale")
    assert_error(resp, 400, 3)
    # As engine.io does: a stray polling request is refused, the upgraded session is not harmed.
    await ws_send(ws, "4still here")
    assert await ws_recv(ws) == "4still here"


async def test_malformed_engineio_post_closes_the_session(start_server: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    resp = await post(port, sid, "abc")
    assert resp.status == 400
    await wait_session_gone(port, sid)
    assert [r for s, r in app.closed if s == sid] == [callbox.CloseReason.PARSE_ERROR]


async def test_malformed_engineio_frame_closes_the_websocket(start_server: Any, nursery: trio.Nursery) -> None:
    app = Echo()
    port = await start_server(app)
    ws, sid = await ws_open_session(nursery, port)
    await ws_send(ws, "abc")
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws)
    await app.closes.wait_for(1, SETTLE)
    assert app.closed == [(sid, callbox.CloseReason.PARSE_ERROR)]


# -- happy paths on the wire -------------------------------------------------------------------

SID_RE = r'[A-Za-z0-9_-]{20,}'


async def test_handshake_body_is_exact(start_server: Any) -> None:
    port = await start_server(Echo())
    resp = await request(port, "GET", eio_target("polling", extra="t=Pq1x2"))
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert re.fullmatch(
        r'0\{"sid":"' + SID_RE + r'","upgrades":\["websocket"\],"pingInterval":25000,'
        r'"pingTimeout":20000,"maxPayload":1000000\}',
        resp.text,
    ), resp.text
    data = parse_open(resp.text)
    assert list(data) == ["sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"]
    sid2, _ = await handshake(port)
    assert sid2 != data["sid"]


async def test_handshake_reflects_config(start_server: Any) -> None:
    port = await start_server(Echo(), ping_interval=1.5, ping_timeout=0.25, max_payload=4096)
    _, data = await handshake(port)
    assert (data["pingInterval"], data["pingTimeout"], data["maxPayload"]) == (1500, 250, 4096)


async def test_direct_websocket_first_frame_is_open_packet(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    ws = await open_ws(nursery, port)
    first = await ws_recv(ws)
    assert isinstance(first, str)
    assert re.fullmatch(
        r'0\{"sid":"' + SID_RE + r'","upgrades":\[\],"pingInterval":25000,'
        r'"pingTimeout":20000,"maxPayload":1000000\}',
        first,
    ), first
    await ws_send(ws, "4hello")
    assert await ws_recv(ws) == "4hello"


async def test_upgrade_sequence(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    await post_ok(port, sid, "4before")
    assert await poll(port, sid) == ["4before"]
    pending = await HTTPConnection.open(port)
    await pending.send_request("GET", eio_target("polling", sid))
    await server_has_read(pending.stream)  # pending before the probe comes
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    resp = await pending.receive_response()  # released with a noop so that the client stops polling
    assert (resp.status, resp.body) == (200, b"6")
    await pending.aclose()
    # Sent while upgrading: must wait for the WebSocket, and come first once it is ready.
    await post_ok(port, sid, "4during")
    await ws_send(ws, "5")
    assert await ws_recv(ws) == "4during"
    await ws_send(ws, "4after")
    assert await ws_recv(ws) == "4after"
    await ws_send(ws, b"\x00\x01")
    assert await ws_recv(ws) == b"\x00\x01"


async def test_upgrade_probe_answered_before_get(start_server: Any, nursery: trio.Nursery) -> None:
    # The reference test suite's order: probe first, then a GET, which gets a noop at once.
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    resp = await request(port, "GET", eio_target("polling", sid))
    assert (resp.status, resp.body) == (200, b"6")
    await ws_send(ws, "5")
    await ws_send(ws, "4hello")
    assert await ws_recv(ws) == "4hello"


async def test_failed_probe_keeps_polling(start_server: Any, nursery: trio.Nursery) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    await ws.aclose()
    core = app.socks[sid].core
    await eventually(lambda: core.state is SessionState.POLLING, SETTLE, "the upgrade to be given up")
    await post_ok(port, sid, "4still polling")
    assert await poll(port, sid) == ["4still polling"]


async def test_payloads_are_joined_by_record_separator(start_server: Any) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    await post_ok(port, sid, "4test1\x1e4test2\x1e4test3")
    resp = await request(port, "GET", eio_target("polling", sid))
    assert resp.body == b"4test1\x1e4test2\x1e4test3"


async def test_client_close_packet_over_polling(start_server: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    pending = await HTTPConnection.open(port)
    await pending.send_request("GET", eio_target("polling", sid))
    await server_has_read(pending.stream)  # pending, so the close releases it
    await post_ok(port, sid, "1")
    resp = await pending.receive_response()
    assert (resp.status, resp.body) == (200, b"6")
    await pending.aclose()
    await wait_session_gone(port, sid)
    assert app.closed == [(sid, callbox.CloseReason.CLIENT_CLOSE)]


async def test_binary_over_polling(start_server: Any) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    blob = bytes(range(256))
    b64 = b64encode(blob).decode()
    await post_ok(port, sid, f"4hello{RS}bAQIDBA=={RS}b{b64}")
    resp = await request(port, "GET", eio_target("polling", sid))
    assert resp.body == f"4hello{RS}bAQIDBA=={RS}b{b64}".encode()


async def test_binary_over_polling_invalid_base64_closes(start_server: Any) -> None:
    port = await start_server(Echo())
    sid, _ = await handshake(port)
    resp = await post(port, sid, "b!!!")
    assert resp.status == 400
    await wait_session_gone(port, sid)


async def test_socketio_binary_over_polling(start_server: Any) -> None:
    port = await start_server(sio_app())
    sid, connected = await sio_connect_polling(port)
    assert re.fullmatch(r'40\{"sid":"' + SID_RE + r'"\}', connected), connected
    await post_ok(port, sid, '451-1["echo",{"_placeholder":true,"num":0},"x"]' + RS + "bAQID")
    packets = await poll(port, sid)
    assert packets == ['461-1[{"_placeholder":true,"num":0},"x"]', "bAQID"]


async def test_raw_binary_websocket_frames(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo())
    ws, _ = await ws_open_session(nursery, port)
    blob = bytes(range(256)) * 4
    await ws_send(ws, blob)
    assert await ws_recv(ws) == blob
    await ws_send(ws, b"")
    assert await ws_recv(ws) == b""


async def test_socketio_binary_over_websocket(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(sio_app())
    ws, _ = await ws_open_session(nursery, port)
    await ws_send(ws, "40")
    connected = await ws_recv(ws)
    assert isinstance(connected, str) and connected.startswith('40{"sid":"')
    await ws_send(ws, '452-7["echo",{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}]')
    await ws_send(ws, b"\xff\x00")
    await ws_send(ws, b"\x01")
    assert await ws_recv(ws) == '462-7[{"_placeholder":true,"num":0},{"b":{"_placeholder":true,"num":1}}]'
    assert await ws_recv(ws) == b"\xff\x00"
    assert await ws_recv(ws) == b"\x01"


async def test_socketio_invalid_namespace(start_server: Any) -> None:
    port = await start_server(sio_app())
    sid, answer = await sio_connect_polling(port, "/nope")
    assert answer == '44/nope,{"message":"Invalid namespace"}'
    # The session stays usable for other namespaces.
    await post_ok(port, sid, "40/admin,")
    packets = await poll(port, sid)
    assert len(packets) == 1 and re.fullmatch(r'40/admin,\{"sid":"' + SID_RE + r'"\}', packets[0]), packets


async def test_socketio_namespace_disconnect_keeps_session(start_server: Any) -> None:
    port = await start_server(sio_app())
    sid, _ = await sio_connect_polling(port, "/admin")
    await post_ok(port, sid, "41/admin,")
    await post_ok(port, sid, '42/admin,["echo"]')  # dropped: not connected to /admin any more
    await post_ok(port, sid, "40")
    packets = await poll(port, sid)
    assert len(packets) == 1 and packets[0].startswith('40{"sid":"'), packets


async def test_socketio_disconnect_reasons_over_polling(start_server: Any) -> None:
    disconnects = Recorder()
    port = await start_server(sio_app(disconnects))
    sid, _ = await sio_connect_polling(port)
    await post_ok(port, sid, "40/admin,")
    assert (await poll(port, sid))[0].startswith('40/admin,{"sid":"')
    await post_ok(port, sid, "41/admin,")
    assert await disconnects.wait_for(1, SETTLE) == [("/admin", "client namespace disconnect")]
    await post_ok(port, sid, "1")  # Engine.IO close: the rest go with the transport
    await wait_session_gone(port, sid)
    assert await disconnects.wait_for(2, SETTLE) == [
        ("/admin", "client namespace disconnect"),
        ("/", "client close"),
    ]


async def test_socketio_disconnect_reasons_over_websocket(start_server: Any, nursery: trio.Nursery) -> None:
    disconnects = Recorder()
    port = await start_server(sio_app(disconnects))
    ws, _ = await ws_open_session(nursery, port)
    for ns in ("", "/admin,"):
        await ws_send(ws, "40" + ns)
        assert str(await ws_recv(ws)).startswith("40" + ns + '{"sid":"')
    await ws_send(ws, "41/admin,")
    await ws_send(ws, '421["echo","x"]')  # the session and "/" are still up
    assert await ws_recv(ws) == '431["x"]'
    assert disconnects.items == [("/admin", "client namespace disconnect")]
    await ws.aclose()  # the WebSocket's close frame, without an Engine.IO close: a goodbye all the same
    assert await disconnects.wait_for(2, SETTLE) == [
        ("/admin", "client namespace disconnect"),
        ("/", "client close"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "42{}",  # an event whose payload is not an array
        '42abc["x"]',  # garbage before the payload
        "42[]",  # no event name
        "42[1]",  # an event name that is not a string
        '42["disconnect"]',  # a reserved event name
        "49",  # unknown Socket.IO packet type
        '43["no ack id"]',  # an ACK without its id
    ],
)
async def test_socketio_malformed_packet_closes_polling(start_server: Any, bad: str) -> None:
    port = await start_server(sio_app())
    sid, _ = await sio_connect_polling(port)
    await post_ok(port, sid, bad)
    packets = await poll(port, sid)
    assert packets == ["1"], packets
    await wait_session_gone(port, sid)


@pytest.mark.parametrize("bad", ["42{}", "49", '42["connect"]'])
async def test_socketio_malformed_packet_closes_websocket(
    start_server: Any, nursery: trio.Nursery, bad: str
) -> None:
    port = await start_server(sio_app())
    ws, _ = await ws_open_session(nursery, port)
    await ws_send(ws, "40")
    assert str(await ws_recv(ws)).startswith('40{"sid":"')
    await ws_send(ws, bad)
    assert await ws_recv(ws) == "1"
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws)


# -- CORS ----------------------------------------------------------------------------------------

GOOD = "http://good.example"
EVIL = "http://evil.example"


async def test_cors_allowed_origin_is_echoed(start_server: Any) -> None:
    port = await start_server(Echo(), cors_origins=(GOOD,))
    resp = await request(port, "GET", eio_target("polling"), headers=[("Origin", GOOD)])
    assert resp.status == 200
    assert resp.headers["access-control-allow-origin"] == GOOD
    assert resp.headers["access-control-allow-credentials"] == "true"
    sid = parse_open(resp.text)["sid"]
    resp = await request(port, "POST", eio_target("polling", sid), b"4x", headers=[("Origin", GOOD)])
    assert (resp.status, resp.body) == (200, b"ok")
    assert resp.headers["access-control-allow-origin"] == GOOD


async def test_cors_preflight(start_server: Any) -> None:
    port = await start_server(Echo(), cors_origins=(GOOD,))
    resp = await request(
        port, "OPTIONS", eio_target("polling"),
        headers=[("Origin", GOOD), ("Access-Control-Request-Method", "POST"),
                 ("Access-Control-Request-Headers", "content-type")],
    )
    assert resp.status == 204
    assert resp.body == b""
    assert resp.headers["access-control-allow-origin"] == GOOD
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert resp.headers["access-control-allow-headers"].lower() == "content-type"


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
async def test_cors_disallowed_origin_on_polling(start_server: Any, method: str) -> None:
    port = await start_server(Echo(), cors_origins=(GOOD,))
    sid, _ = await handshake(port)  # no Origin: not a browser, allowed
    target = eio_target("polling", None if method != "POST" else sid)
    resp = await request(port, method, target, b"4x" if method == "POST" else b"", headers=[("Origin", EVIL)])
    assert_error(resp, 403, 4)
    assert "access-control-allow-origin" not in resp.headers


async def test_cors_disallowed_origin_on_websocket(start_server: Any, nursery: trio.Nursery) -> None:
    port = await start_server(Echo(), cors_origins=(GOOD,))
    refused = await ws_refused(port, extra_headers=[(b"Origin", EVIL.encode())])
    assert isinstance(refused, ConnectionRejected)
    assert refused.status_code == 403
    assert refused.body is not None and json.loads(refused.body) == error(4)
    # ...and an upgrade of an existing session from a bad origin too.
    sid, _ = await handshake(port)
    refused = await ws_refused(port, sid, extra_headers=[(b"Origin", EVIL.encode())])
    assert isinstance(refused, ConnectionRejected)
    assert refused.status_code == 403
    # The allowed origin gets its WebSocket.
    ws = await open_ws(nursery, port, extra_headers=[(b"Origin", GOOD.encode())])
    assert str(await ws_recv(ws)).startswith('0{"sid":')


async def test_cors_default_is_same_origin(start_server: Any) -> None:
    port = await start_server(Echo())
    same = f"http://127.0.0.1:{port}"
    resp = await request(port, "GET", eio_target("polling"), headers=[("Origin", same)])
    assert resp.status == 200
    assert resp.headers["access-control-allow-origin"] == same
    resp = await request(port, "GET", eio_target("polling"), headers=[("Origin", EVIL)])
    assert_error(resp, 403, 4)
