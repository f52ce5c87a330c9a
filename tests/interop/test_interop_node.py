"""Interop with the real socket.io-client (4.x) under Node: each test builds a server app here,
runs one scenario of ``tests/interop/scenarios.mjs`` against it, and checks both what the client
observed (its JSON lines) and what the server's handlers recorded.

Every test runs in the three transport modes: WebSocket only, long-polling only, and the client's
default (polling, then an upgrade to WebSocket, which the client must end on).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

from _paths import INTEROP
from _raw import eventually
from callbox import ConnectionRefused, Socket, SocketIO

StartServer = Callable[..., Awaitable[int]]  # the conftest fixture: port = await start_server(app, **config)

NODE = shutil.which("node")

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (INTEROP / "node_modules" / "socket.io-client").is_dir(),
        reason="tests/interop: run `npm ci` first",
    ),
]

MODES = ["websocket", "polling", "default"]
# Which transport the client and the server must agree the session ended on.
FINAL = {"websocket": "websocket", "polling": "polling", "default": "websocket"}


def _from_json(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"$bytes"}:
        return bytes.fromhex(obj["$bytes"])
    return obj


class Node:
    """One running ``node scenarios.mjs`` process: its JSON lines as they arrive, and its exit."""

    def __init__(self, proc: trio.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []  # anything else it printed (warnings, a crash)
        self.raw: list[str] = []  # everything it printed, as printed
        self._buffer = b""
        self._read = 0  # lines already handed out by expect()
        self._eof = False
        self.context: Callable[[], str] = str  # more to show when it fails: what the server saw

    def transcript(self) -> str:
        shown = [line if len(line) < 500 else line[:500] + "..." for line in self.raw]
        return "\n".join([" ".join(self.argv), *shown, self.context()])

    async def _more(self) -> bool:
        """Read at least one more line; False at the end of the output."""
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                self._eof = True
                if self._buffer:
                    self.text.append(self._buffer.decode(errors="replace"))
                    self.raw.append(self.text[-1])
                    self._buffer = b""
                return False
            self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            self.raw.append(line)
            try:
                value = json.loads(line, object_hook=_from_json)
            except ValueError:
                self.text.append(line)
                continue
            if isinstance(value, dict) and "type" in value:
                self.lines.append(value)
                if value["type"] == "error":
                    raise AssertionError(f"the client failed:\n{self.transcript()}")
            else:
                self.text.append(line)
        return True

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next line of type ``kind`` (earlier lines of other types are kept in ``lines``)."""
        while True:
            while self._read < len(self.lines):
                line = self.lines[self._read]
                self._read += 1
                if line["type"] == kind:
                    return line
            if self._eof or not await self._more():
                raise AssertionError(f"the client ended without a {kind!r} line:\n{self.transcript()}")

    async def result(self) -> dict[str, list[dict[str, Any]]]:
        """Wait for a clean exit; every line printed, by type."""
        while not self._eof:
            await self._more()
        await self.proc.wait()
        assert self.proc.returncode == 0, f"the client exited with {self.proc.returncode}:\n{self.transcript()}"
        assert self.lines and self.lines[-1]["type"] == "end", self.transcript()
        by_type: dict[str, list[dict[str, Any]]] = {}
        for line in self.lines:
            by_type.setdefault(line["type"], []).append(line)
        return by_type

    def kill(self) -> None:
        self.proc.kill()


async def run_node(nursery: trio.Nursery, scenario: str, port: int, mode: str) -> Node:
    """Start ``scenarios.mjs scenario`` against the server on ``port`` (killed when the test ends)."""
    assert NODE is not None
    argv = [NODE, "scenarios.mjs", scenario, f"http://127.0.0.1:{port}", mode]
    proc = await nursery.start(
        partial(trio.run_process, argv, cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    )
    return Node(proc, argv)


class Record(dict[str, Any]):
    """What the server's handlers saw, by socket id, with a way to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
        with trio.move_on_after(seconds):
            while not predicate():
                await self._changed.wait()
        assert predicate(), f"not within {seconds} s: {what} (seen: {dict(self)})"


def app_with_basics() -> SocketIO:
    """An app whose namespaces "/" and "/admin" answer "transport" (the socket's transport, as
    the server sees it) and "whoami" (the namespace and auth the server holds for the socket)."""
    app = SocketIO()
    for ns in (app.of("/"), app.of("/admin")):

        @ns.on("transport")
        def transport(socket: Socket) -> str:
            return socket.transport

        @ns.on("whoami")
        def whoami(socket: Socket) -> dict[str, Any]:
            return {"nsp": socket.namespace.name, "auth": socket.auth, "id": socket.id}

    return app


def check_order(got: list[int], n: int) -> None:
    """``got`` is 0..n-1 in order; if not, say where it first goes wrong."""
    if got != list(range(n)):
        first = next((k for k, (a, b) in enumerate(zip(got, range(n), strict=False)) if a != b), min(len(got), n))
        missing = sorted(set(range(n)) - set(got))
        raise AssertionError(
            f"{len(got)} events, first out of place at index {first}: {got[max(0, first - 3) : first + 5]}; "
            f"missing: {missing[:10]}"
        )


def check_transports(lines: dict[str, list[dict[str, Any]]], mode: str, count: int = 1) -> None:
    """The client ended on the expected transport, and the server agrees."""
    seen = lines.get("transport", [])
    assert len(seen) == count, seen
    for line in seen:
        assert line["client"] == FINAL[mode], line
        assert line["server"] == FINAL[mode], line


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- 1, 2: namespaces, auth, refusals --------------------------------------------------------------


async def test_connect_namespaces_auth_and_refusals(
    start_server: StartServer, nursery: trio.Nursery, mode: str
) -> None:
    app = app_with_basics()
    connects: list[tuple[str, str, Any]] = []

    @app.on_connect
    def connect_root(socket: Socket, auth: Any) -> None:
        connects.append(("/", socket.id, auth))
        if isinstance(auth, dict) and auth.get("token") == "bad":
            raise ConnectionRefused("Not authorized", {"code": 42})

    @app.of("/admin").on_connect
    def connect_admin(socket: Socket, auth: Any) -> None:
        connects.append(("/admin", socket.id, auth))

    with trio.fail_after(20):
        port = await start_server(app)
        node = await run_node(nursery, "connect", port, mode)
        lines = await node.result()

    root, admin = lines["connect"]
    assert root["nsp"] == "/" and root["ok"] is True, root
    assert admin["nsp"] == "/admin" and admin["ok"] is True, admin
    assert root["engine"] == admin["engine"], "both namespaces share the client's one session"
    # The connect handlers saw the auth objects; the ids the client got are the server's.
    assert ("/", root["id"], {"token": "t-root", "user": "alice"}) in connects
    assert ("/admin", admin["id"], {"token": "t-admin", "level": 7}) in connects
    assert lines["whoami"][0]["answer"] == {
        "nsp": "/admin",
        "auth": {"token": "t-admin", "level": 7},
        "id": admin["id"],
    }

    (refused,) = lines["refused"]
    assert refused["ok"] is False and refused["connected"] is False, refused
    assert refused["message"] == "Not authorized"
    assert refused["data"] == {"code": 42}
    assert [a for ns, _, a in connects if ns == "/" and a == {"token": "bad"}] == [{"token": "bad"}]
    assert all(s.auth != {"token": "bad"} for s in app.of("/").sockets.values()), "a refused socket is not kept"

    (invalid,) = lines["invalid"]
    assert invalid["ok"] is False and invalid["connected"] is False, invalid
    assert invalid["message"] == "Invalid namespace"
    assert "/nope" not in app.namespaces, "a refused namespace is not created"

    check_transports(lines, mode, count=2)


# -- 3, 4, 5: events, acks and binary, both ways ------------------------------------------------


# What scenarios.mjs sends as its large binary argument: 200 kB, bytes 0..255 over and over.
BIG = bytes(range(256)) * 800


async def test_events_acks_and_binary(start_server: StartServer, nursery: trio.Nursery, mode: str) -> None:
    app = app_with_basics()
    received: list[tuple[str, tuple[Any, ...]]] = []
    answers: list[tuple[Any, ...]] = []

    @app.on("hello")
    def hello(socket: Socket, *args: Any) -> None:
        received.append(("hello", args))

    @app.on("poke")
    def poke(socket: Socket, word: str) -> None:
        socket.emit("greeting", "hi ü€😀", {"word": word, "n": [1, 2.5, None, False]})

    @app.on("add")
    def add(socket: Socket, a: int, b: int) -> int:
        return a + b

    @app.on("pair")
    def pair(socket: Socket) -> tuple[str, int]:
        return ("x", 2)

    @app.on("nothing")
    def nothing(socket: Socket) -> None:
        return None

    @app.on("ask")
    def ask(socket: Socket) -> None:
        async def question() -> None:
            answer = await socket.call("question", "ready?", timeout=5)
            answers.append(answer)
            socket.emit("got", *answer)

        app.start_soon(question)

    @app.on("upload")
    def upload(socket: Socket, *args: Any) -> None:
        received.append(("upload", args))
        socket.emit("download", b"\x00\xff", {"nested": {"blob": b"abc"}, "list": [b"x", 1]}, "text")

    @app.on("echo")
    def echo(socket: Socket, value: Any) -> Any:
        received.append(("echo", (value,)))
        return value

    with trio.fail_after(20):
        port = await start_server(app)
        node = await run_node(nursery, "events", port, mode)
        lines = await node.result()

    def one(kind: str) -> dict[str, Any]:
        (line,) = lines[kind]
        return line

    # client -> server events, text and binary (binary nested in objects and arrays)
    assert received[0] == ("hello", ("world", 42, {"nested": [1, None, True], "text": "é€😀"}))
    assert received[1] == (
        "upload",
        (b"\x00\x01\x02\xff", {"name": "f.bin", "blob": b"hi", "list": [b"\x07", "x"]}),
    )
    assert received[2] == ("echo", ({"data": b"\x01\x02\x03", "n": 1},))
    assert received[3] == ("echo", (BIG,))
    assert len(received) == 4
    # server -> client events, text and binary
    assert one("greeting")["args"] == ["hi ü€😀", {"word": "please", "n": [1, 2.5, None, False]}]
    assert one("download")["args"] == [b"\x00\xff", {"nested": {"blob": b"abc"}, "list": [b"x", 1]}, "text"]
    # client -> server acks: the handler's return value (a tuple: several arguments; None: none)
    assert one("ack")["value"] == 5
    assert one("ack-tuple")["args"] == ["x", 2]
    assert one("ack-none")["args"] == []
    assert one("echo")["value"] == {"data": b"\x01\x02\x03", "n": 1}
    assert one("echo-big") == {"type": "echo-big", "bytes": True, "length": len(BIG), "equal": True}
    # server -> client ack: socket.call() got the client's answer (with a binary argument)
    assert answers == [("yes: ready?", b"\x09\x08\x07")]
    assert one("got")["args"] == ["yes: ready?", b"\x09\x08\x07"]

    check_transports(lines, mode)


# -- 6: a thousand events each way, in order -------------------------------------------------------


async def test_thousand_events_in_order(start_server: StartServer, nursery: trio.Nursery, mode: str) -> None:
    app = app_with_basics()
    seq: list[int] = []

    @app.on("seq")
    async def on_seq(socket: Socket, i: int) -> None:
        if i % 100 == 0:
            await trio.sleep(0.02)  # as a handler doing I/O would: the next events must wait
        seq.append(i)

    @app.on("seq-done")
    def seq_done(socket: Socket) -> int:
        return len(seq)

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        app.start_soon(stream, socket)

    async def stream(socket: Socket) -> None:
        # From the moment the socket connects: 500 events paced over ~0.1 s (in the default
        # mode the transport is upgraded meanwhile), then 500 in one burst.
        await eventually(lambda: socket.connected, 5, "the socket to connect")
        for i in range(500):
            assert socket.emit("n", i)
            if i % 5 == 4:
                await trio.sleep(0.001)  # the pacing: what this part of the test is about
        for i in range(500, 1000):
            assert socket.emit("n", i)
        socket.emit("flood-end")

    with trio.fail_after(20):
        port = await start_server(app)
        node = await run_node(nursery, "flood", port, mode)
        lines = await node.result()

    check_order(seq, 1000)  # client -> server
    assert lines["seq-done"][0]["count"] == 1000
    check_order(lines["flood"][0]["received"], 1000)  # server -> client
    check_transports(lines, mode)


# -- 7: rooms ------------------------------------------------------------------------------------


async def test_rooms_and_skip(start_server: StartServer, nursery: trio.Nursery, mode: str) -> None:
    app = app_with_basics()

    @app.on("join")
    def join(socket: Socket, room: str) -> list[str]:
        socket.join(room)
        return sorted(socket.rooms)

    @app.on("leave")
    def leave(socket: Socket, room: str) -> list[str]:
        socket.leave(room)
        return sorted(socket.rooms)

    @app.on("say")
    def say(socket: Socket, room: str, text: str, tag: int) -> None:
        app.emit("said", text, room=room, skip=socket)  # the room but the sender
        app.emit("to-room", text, {"blob": text.encode()}, room=room)  # the whole room (binary: fanned out too)
        app.emit("barrier", tag)  # everyone: what came before it has arrived

    with trio.fail_after(20):
        port = await start_server(app)
        node = await run_node(nursery, "rooms", port, mode)
        lines = await node.result()

    assert lines["joined"][0] == {"type": "joined", "A": ["r"], "B": ["r"]}
    assert lines["left"][0] == {"type": "left", "B": []}
    logs = lines["logs"][0]
    one, two = ["to-room", "one", {"blob": b"one"}], ["to-room", "two", {"blob": b"two"}]
    assert logs["A"] == [one, ["barrier", 1], two, ["barrier", 2]]
    assert logs["B"] == [["said", "one"], one, ["barrier", 1], ["barrier", 2]]
    assert logs["C"] == [["barrier", 1], ["barrier", 2]]
    check_transports(lines, mode, count=3)


# -- 8: disconnect reasons -------------------------------------------------------------------------


async def test_disconnect_reasons(start_server: StartServer, nursery: trio.Nursery, mode: str) -> None:
    app = app_with_basics()
    gone = Record()

    @app.on_disconnect
    def root_gone(socket: Socket, reason: str) -> None:
        gone[socket.id] = reason

    @app.of("/admin").on_disconnect
    def admin_gone(socket: Socket, reason: str) -> None:
        gone[socket.id] = reason

    @app.on("kick-me")
    async def kick(socket: Socket) -> None:
        await socket.disconnect()

    with trio.fail_after(20):
        port = await start_server(app)
        node = await run_node(nursery, "disconnect", port, mode)
        ids = await node.expect("ids")
        await node.expect("ready")
        lines = {line["type"]: line for line in node.lines}
        closing, kicked = lines["closing"]["id"], lines["kicked"]["id"]
        await gone.until(lambda: {ids["root"], closing, kicked} <= gone.keys(), "the first three disconnects")
        assert ids["admin"] not in gone, "a namespace disconnect leaves the client's other namespaces"
        assert ids["admin"] in app.of("/admin").sockets
        node.kill()
        await gone.until(lambda: ids["admin"] in gone, "the killed client's disconnect")

    # What the server saw.
    assert gone[ids["root"]] == "client namespace disconnect"
    assert gone[closing] == "client close"  # socket.io.engine.close(): a close packet or frame
    assert gone[kicked] == "server namespace disconnect"
    assert gone[ids["admin"]] == "transport close"
    assert not app.of("/").sockets and not app.of("/admin").sockets
    # What the client saw.
    assert lines["root-disconnect"]["reason"] == "io client disconnect"
    assert lines["admin-alive"]["answer"]["id"] == ids["admin"]
    assert lines["closing-disconnect"]["reason"] == "forced close"
    assert lines["kicked-disconnect"]["reason"] == "io server disconnect"
    assert lines["transport"]["client"] == FINAL[mode] == lines["transport"]["server"], lines["transport"]


# -- 9: a client that stops answering pings --------------------------------------------------------

PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5


async def test_silent_client_dropped_by_ping_timeout(
    start_server: StartServer, nursery: trio.Nursery, mode: str
) -> None:
    app = app_with_basics()
    gone = Record()

    @app.on_disconnect
    def root_gone(socket: Socket, reason: str) -> None:
        gone[socket.id] = (reason, trio.current_time())

    with trio.fail_after(20):
        port = await start_server(app, ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
        node = await run_node(nursery, "silent", port, mode)
        node.context = lambda: f"server: disconnects {dict(gone)}, at {trio.current_time():.3f}"
        sid = (await node.expect("connect"))["id"]
        alive = await node.expect("alive")
        await node.expect("silenced")
        silenced_at = trio.current_time()
        assert sid not in gone, f"dropped while it still answered pings: {gone}"
        assert alive["connected"] is True, alive
        if mode != "default":
            assert alive["answer"] == mode, alive
        limit = PING_INTERVAL + PING_TIMEOUT + 0.5
        await gone.until(lambda: sid in gone, "the silent client's disconnect", seconds=limit + 2)
        reason, at = gone[sid]
        assert reason == "ping timeout"
        assert at - silenced_at <= limit, f"dropped {at - silenced_at:.2f} s after it went silent (limit {limit} s)"
        lines = await node.result()

    # The client noticed it was dropped, too.
    # (Polling: the server's close reaches it with its next request; or, if the machine is slow, its
    # own heartbeat check gets there first. Either way it knows.)
    assert lines["disconnect"][0]["reason"] in ("transport close", "transport error", "ping timeout")
    check_transports(lines, mode)
