"""python-socketio's AsyncClient (an independent Socket.IO v5 implementation, on asyncio + aiohttp)
against the real server, over WebSocket only, polling only, and polling upgraded to WebSocket.

The server runs on Trio in the test's thread. The client runs with its own asyncio event loop in a
worker thread (``trio.to_thread.run_sync(asyncio.run, ...)``): asyncio never runs inside the Trio
thread. Each scenario is one coroutine run to completion there; it bounds each of its own waits
with ``asyncio.wait_for``, and the Trio side bounds the whole thread with ``fail_after``. What the
server saw is recorded by its handlers (in the Trio thread) and checked once the client is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import socketio
import trio

import callbox

T = TypeVar("T")

# One bound for every single wait inside a client scenario (a connect, an event, an ack).
CLIENT_WAIT = 5.0
# The whole scenario thread: several waits, plus aiohttp's start-up and shut-down.
SCENARIO_WAIT = 30.0
# Waiting on the Trio side for something the client has already caused (a disconnect handler).
SERVER_WAIT = 5.0

TRANSPORTS: dict[str, list[str] | None] = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": None,  # the client's default: polling, then an upgrade to WebSocket
}
# The transport each case ends up on.
FINAL_TRANSPORT = {"websocket": "websocket", "polling": "polling", "upgrade": "websocket"}

GOOD_AUTH = {"token": "secret", "user": "ada"}


class Seen:
    """What the server's handlers saw, in order."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, Any]] = []
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []
        self.disconnects: list[tuple[str, str]] = []
        self.transports: list[str] = []
        self.answers: list[tuple[Any, ...]] = []
        self.disconnected = trio.Event()


def make_app() -> tuple[callbox.SocketIO, Seen]:
    app = callbox.SocketIO()
    seen = Seen()
    admin = app.of("/admin")

    @app.on_connect
    async def connect(socket: callbox.Socket, auth: Any) -> None:
        seen.connects.append(("/", auth))

    @admin.on_connect
    async def admin_connect(socket: callbox.Socket, auth: Any) -> None:
        if not isinstance(auth, dict) or auth.get("token") != "secret":
            raise callbox.ConnectionRefused("Not authorized", {"hint": "log in"})
        seen.connects.append(("/admin", auth))

    @app.on("echo")
    async def echo(socket: callbox.Socket, *args: Any) -> tuple[Any, ...]:
        seen.events.append(("/", "echo", args))
        seen.transports.append(socket.transport)
        return args  # the ack: every argument back

    @app.on("shout")
    async def shout(socket: callbox.Socket, *args: Any) -> None:
        seen.events.append(("/", "shout", args))
        socket.emit("heard", *args)  # an event back, no ack

    @app.on("ask")
    async def ask(socket: callbox.Socket, *args: Any) -> None:
        async def question() -> None:
            answer = await socket.call("question", *args, timeout=CLIENT_WAIT)
            seen.answers.append(answer)
            socket.emit("answered", *answer)

        app.start_soon(question)  # waiting for this client's ack must not block its reader

    @admin.on("whoami")
    async def whoami(socket: callbox.Socket) -> Any:
        seen.events.append(("/admin", "whoami", ()))
        return {"auth": socket.auth, "id": socket.id}

    async def gone(socket: callbox.Socket, reason: str) -> None:
        seen.disconnects.append((socket.namespace.name, reason))
        if len(seen.disconnects) >= len(seen.connects):
            seen.disconnected.set()

    app.on_disconnect(gone)
    admin.on_disconnect(gone)
    return app, seen


async def in_client_thread(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario()`` to completion on a fresh asyncio loop in a worker thread."""

    def run() -> T:
        return asyncio.run(scenario())

    with trio.fail_after(SCENARIO_WAIT):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


class Inbox:
    """Events the client received, awaitable one by one (asyncio side)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()

    def add(self, name: str, args: tuple[Any, ...]) -> None:
        self.queue.put_nowait((name, args))

    async def next(self) -> tuple[str, tuple[Any, ...]]:
        return await asyncio.wait_for(self.queue.get(), CLIENT_WAIT)


async def connect(sio: socketio.AsyncClient, port: int, case: str, namespaces: list[str],
                  auth: Any = GOOD_AUTH) -> None:
    await asyncio.wait_for(
        sio.connect(url(port), transports=TRANSPORTS[case], namespaces=namespaces, auth=auth,
                    wait_timeout=CLIENT_WAIT),
        CLIENT_WAIT * 2,
    )


async def wait_disconnected(seen: Seen) -> None:
    with trio.fail_after(SERVER_WAIT):
        await seen.disconnected.wait()


pytestmark = pytest.mark.parametrize("case", list(TRANSPORTS))


async def test_connect_to_two_namespaces_with_auth(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> dict[str, Any]:
        sio = socketio.AsyncClient(reconnection=False)
        await connect(sio, port, case, ["/", "/admin"])
        try:
            me = await sio.call("whoami", namespace="/admin", timeout=CLIENT_WAIT)
            return {
                "transport": sio.transport(),
                "namespaces": sorted(sio.namespaces),
                "sids": (sio.get_sid("/"), sio.get_sid("/admin")),
                "me": me,
            }
        finally:
            await sio.disconnect()

    out = await in_client_thread(scenario)
    assert out["transport"] == FINAL_TRANSPORT[case]
    assert out["namespaces"] == ["/", "/admin"]
    root_sid, admin_sid = out["sids"]
    assert root_sid and admin_sid and root_sid != admin_sid
    assert out["me"] == {"auth": GOOD_AUTH, "id": admin_sid}
    assert sorted(seen.connects, key=lambda c: c[0]) == [("/", GOOD_AUTH), ("/admin", GOOD_AUTH)]
    await wait_disconnected(seen)


async def test_refused_connect(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> tuple[str, list[Any], bool]:
        sio = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []

        @sio.on("connect_error", namespace="/admin")
        async def connect_error(data: Any) -> None:
            errors.append(data)

        try:
            await connect(sio, port, case, ["/admin"], auth={"token": "wrong"})
        except socketio.exceptions.ConnectionError as exc:
            return str(exc), errors, sio.connected
        await sio.disconnect()
        raise AssertionError("the refused connect succeeded")

    message, errors, connected = await in_client_thread(scenario)
    assert "/admin" in message
    assert errors == [{"message": "Not authorized", "data": {"hint": "log in"}}]
    assert not connected
    assert seen.connects == []


async def test_refused_namespace_leaves_others_usable(start_server: Any, case: str) -> None:
    app, _seen = make_app()
    port = await start_server(app)

    async def scenario() -> tuple[list[Any], Any]:
        # One Engine.IO session: "/" accepted, "/admin" refused (no auth), "/nope" unknown.
        sio = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []

        @sio.on("connect_error", namespace="/nope")
        async def nope_error(data: Any) -> None:
            errors.append(("/nope", data))

        @sio.on("connect_error", namespace="/admin")
        async def admin_error(data: Any) -> None:
            errors.append(("/admin", data))

        try:
            await connect(sio, port, case, ["/", "/admin", "/nope"], auth=None)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            raise AssertionError("connect did not fail")
        return sorted(errors, key=lambda e: e[0]), sio.connected

    errors, connected = await in_client_thread(scenario)
    assert errors == [
        ("/admin", {"message": "Not authorized", "data": {"hint": "log in"}}),
        ("/nope", {"message": "Invalid namespace"}),
    ]
    assert not connected


async def test_events_both_ways(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)
    payload = {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "n": [1, 2.5, None, True], "ü": "☎"}

    async def scenario() -> list[tuple[str, tuple[Any, ...]]]:
        sio = socketio.AsyncClient(reconnection=False)
        inbox = Inbox()

        @sio.on("heard")
        async def heard(*args: Any) -> None:
            inbox.add("heard", args)

        await connect(sio, port, case, ["/"])
        try:
            await sio.emit("shout", ("one", payload))
            await sio.emit("shout", "two")
            await sio.emit("shout")
            return [await inbox.next() for _ in range(3)]
        finally:
            await sio.disconnect()

    got = await in_client_thread(scenario)
    # In order, each as sent.
    assert got == [("heard", ("one", payload)), ("heard", ("two",)), ("heard", ())]
    assert seen.events == [("/", "shout", ("one", payload)), ("/", "shout", ("two",)), ("/", "shout", ())]


async def test_acks_both_ways(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> dict[str, Any]:
        sio = socketio.AsyncClient(reconnection=False)
        inbox = Inbox()

        @sio.on("question")
        async def question(*args: Any) -> tuple[Any, ...]:
            return ("yes", *args)  # the client's ack to the server's call

        @sio.on("answered")
        async def answered(*args: Any) -> None:
            inbox.add("answered", args)

        await connect(sio, port, case, ["/"])
        try:
            # client -> server with an ack (the handler's return value)
            one = await sio.call("echo", "hi", timeout=CLIENT_WAIT)
            several = await sio.call("echo", ("a", 1, {"b": [2]}), timeout=CLIENT_WAIT)
            empty = await sio.call("echo", timeout=CLIENT_WAIT)
            # server -> client with an ack: the server awaits socket.call(...)
            await sio.emit("ask", ("ready?", 7))
            back = await inbox.next()
            return {"one": one, "several": several, "empty": empty, "back": back, "transport": sio.transport()}
        finally:
            await sio.disconnect()

    out = await in_client_thread(scenario)
    assert out["one"] == "hi"
    # python-socketio's call() returns one value, or a tuple for several.
    assert out["several"] == ("a", 1, {"b": [2]})
    assert out["empty"] is None
    assert seen.answers == [("yes", "ready?", 7)]
    assert out["back"] == ("answered", ("yes", "ready?", 7))
    assert set(seen.transports) == {FINAL_TRANSPORT[case]}


async def test_binary_both_ways(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)
    blob = bytes(range(256)) * 3
    small = b"\x00"

    async def scenario() -> dict[str, Any]:
        sio = socketio.AsyncClient(reconnection=False)
        inbox = Inbox()

        @sio.on("heard")
        async def heard(*args: Any) -> None:
            inbox.add("heard", args)

        @sio.on("question")
        async def question(*args: Any) -> tuple[Any, ...]:
            return (b"answer:" + args[0], {"nested": [args[0]]})

        @sio.on("answered")
        async def answered(*args: Any) -> None:
            inbox.add("answered", args)

        await connect(sio, port, case, ["/"])
        try:
            # client -> server binary event, server -> client binary event
            await sio.emit("shout", (blob, {"k": small, "text": "t"}))
            event = await inbox.next()
            # client -> server binary event with an ack; binary ack back
            acked = await sio.call("echo", (small, [blob]), timeout=CLIENT_WAIT)
            # server -> client binary call; the client's binary ack
            await sio.emit("ask", b"q")
            answered = await inbox.next()
            return {"event": event, "acked": acked, "answered": answered}
        finally:
            await sio.disconnect()

    out = await in_client_thread(scenario)
    assert seen.events[0] == ("/", "shout", (blob, {"k": small, "text": "t"}))
    assert out["event"] == ("heard", (blob, {"k": small, "text": "t"}))
    assert seen.events[1] == ("/", "echo", (small, [blob]))
    assert out["acked"] == (small, [blob])
    assert seen.answers == [(b"answer:q", {"nested": [b"q"]})]
    assert out["answered"] == ("answered", (b"answer:q", {"nested": [b"q"]}))


async def test_disconnect_reason_seen_by_server(start_server: Any, case: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> None:
        sio = socketio.AsyncClient(reconnection=False)
        await connect(sio, port, case, ["/", "/admin"])
        await sio.disconnect()

    await in_client_thread(scenario)
    await wait_disconnected(seen)
    # python-socketio 5.18's disconnect() queues a DISCONNECT per namespace and an Engine.IO close,
    # then changes state (its write loop stops sending) and closes its WebSocket / HTTP session in
    # the same step: the packets never leave the client, and the server sees the transport go (with
    # the WebSocket's close frame, "client close"; a polling client's dropped request, "transport
    # close"). A client that does flush them gets "client namespace disconnect" (test_raw_protocol).
    assert [ns for ns, _ in sorted(seen.disconnects)] == ["/", "/admin"]
    reasons = {reason for _, reason in seen.disconnects}
    assert reasons in ({"client close"}, {"transport close"}, {"client namespace disconnect"}), seen.disconnects


async def test_server_disconnect_seen_by_client(start_server: Any, case: str) -> None:
    app, seen = make_app()

    @app.on("leave")
    async def leave(socket: callbox.Socket) -> None:
        await socket.disconnect()

    port = await start_server(app)

    async def scenario() -> list[tuple[str, tuple[Any, ...]]]:
        sio = socketio.AsyncClient(reconnection=False)
        inbox = Inbox()

        @sio.on("disconnect", namespace="/admin")
        async def admin_gone(*args: Any) -> None:
            inbox.add("admin gone", args)

        @sio.on("disconnect")
        async def root_gone(*args: Any) -> None:
            inbox.add("root gone", args)

        await connect(sio, port, case, ["/", "/admin"])
        try:
            await sio.emit("leave")
            first = await inbox.next()
            # The Engine.IO session and the other namespace stay up.
            me = await sio.call("whoami", namespace="/admin", timeout=CLIENT_WAIT)
            return [first, ("whoami", (me,))]
        finally:
            await sio.disconnect()

    got = await in_client_thread(scenario)
    assert got[0] == ("root gone", ("server disconnect",))  # python-socketio's words
    assert got[1][0] == "whoami"
    await wait_disconnected(seen)
    assert seen.disconnects[0] == ("/", "server namespace disconnect")
    # The client's own disconnect() at the end: see test_disconnect_reason_seen_by_server.
    assert seen.disconnects[1][0] == "/admin"
    assert seen.disconnects[1][1] in ("client close", "transport close", "client namespace disconnect")
    assert len(seen.disconnects) == 2
