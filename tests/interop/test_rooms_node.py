"""Issue 15, what users expect of the library, through the real socket.io-client under Node (pinned in
tests/interop/package-lock.json): rooms and broadcasts (several rooms, rooms excluded, a socket id as
a room, ``socket.to`` and ``socket.broadcast``), broadcast acks with a timeout, the server-wide
operations (fetch_sockets, sockets_join / sockets_leave, disconnect_sockets), ``on_any_outgoing``,
class-based handlers (``app.register``) and dynamic namespaces (``app.of(pattern)`` / ``app.of(fn)``).

Each test serves an app here (loopback, port 0) and drives several clients of one
``node rooms.mjs`` process line by line (commands on its stdin, what the clients see on its stdout),
so the test acts on the server between the clients' steps, as an application would. "Exactly these
clients got it" is checked after a flush: a marker emitted to each client after the operation, which
arrives after everything sent to it before (one connection keeps its order).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import msgspec
import pytest
import trio

from _interop import NEEDS_NODE, NODE, LineScript, StartServer
from _raw import eventually
from callbox import ConnectionRefused, Namespace, Socket, SocketIO

pytestmark = NEEDS_NODE

WAIT = 5.0  # s: the longest any one step may take
TRANSPORT_MODES = ["websocket", "polling"]


class Clients(LineScript):
    """One ``node rooms.mjs`` process: its clients by name, what they saw, and commands for them."""

    def __init__(self, proc: trio.Process, argv: list[str], app: SocketIO) -> None:
        super().__init__(proc, argv)
        self.app = app
        self.namespace: dict[str, str] = {}  # client name -> the namespace it asked for
        self._flushes = 0

    def find(self, kind: str, name: str, **fields: Any) -> dict[str, Any] | None:
        for line in self.lines:
            if line["type"] == kind and line.get("name") == name and all(line.get(k) == v for k, v in fields.items()):
                return line
        return None

    async def attempt(self, name: str, nsp: str = "/", auth: Any = None, *, answer: bool = True) -> dict[str, Any]:
        """A new client ``name`` connects to ``nsp``: its "connected" or "connect_error" line."""
        self.namespace[name] = nsp
        await self.send(cmd="connect", name=name, nsp=nsp, auth=auth, answer=answer)
        line: dict[str, Any] = await self.until(
            lambda: self.find("connected", name) or self.find("connect_error", name), f"{name} connecting to {nsp}"
        )
        if line["type"] == "connected":
            self.ids[name] = line["id"]
        return line

    async def connect(self, name: str, nsp: str = "/", auth: Any = None, *, answer: bool = True) -> str:
        """A new client ``name`` connected to ``nsp``: its socket id."""
        line = await self.attempt(name, nsp, auth, answer=answer)
        assert line["type"] == "connected", f"{name}: {line}\n{self.transcript()}"
        return str(line["id"])

    async def emit(self, name: str, event: str, *args: Any) -> list[Any]:
        """``name`` emits ``event`` with an ack callback: the answer (after the handler ran)."""
        before = sum(1 for line in self.lines if line["type"] in ("ack", "ack_timeout") and line["name"] == name)
        await self.send(cmd="emit", name=name, event=event, args=list(args), ack=True)

        def answered() -> dict[str, Any] | None:
            acks = [line for line in self.lines if line["type"] in ("ack", "ack_timeout") and line["name"] == name]
            return acks[before] if len(acks) > before else None

        line: dict[str, Any] = await self.until(answered, f"the ack of {name}'s {event}", WAIT + 2)
        assert line["type"] == "ack", f"{name}'s {event} was not answered\n{self.transcript()}"
        return list(line["answer"])

    async def close(self, name: str) -> None:
        await self.send(cmd="close", name=name)

    async def flush(self, *names: str) -> None:
        """Emit a marker to each of ``names`` (every connected client, if none) from the server, and
        wait until each got it: whatever the server sent them before has arrived."""
        self._flushes += 1
        mark = self._flushes
        names = names or tuple(name for name in self.ids if self.find("disconnect", name) is None)
        for name in names:
            sock = self.app.namespaces[self.namespace[name]].sockets[self.ids[name]]
            assert sock.emit("flush", mark), name
        await self.until(
            lambda: all(self.find("got", name, event="flush", args=[mark]) for name in names),
            f"flush {mark} at {names}",
        )

    def got(self, name: str) -> list[tuple[str, list[Any]]]:
        """The events ``name`` got, in order, but the flush markers."""
        return [
            (line["event"], line["args"])
            for line in self.lines
            if line["type"] == "got" and line["name"] == name and line["event"] != "flush"
        ]

    def events(self, name: str) -> list[str]:
        return [event for event, _ in self.got(name)]



async def clients(nursery: trio.Nursery, app: SocketIO, port: int, mode: str = "websocket") -> Clients:
    """Start ``node rooms.mjs`` against the app on ``port`` (killed when the test ends)."""
    assert NODE is not None
    argv = [NODE, "rooms.mjs", f"http://127.0.0.1:{port}", mode]
    node = Clients(await Clients.start(nursery, argv), argv, app)
    nursery.start_soon(node.read)
    return node


def joining_app() -> SocketIO:
    """An app whose clients join rooms with a "join" event (its ack: the socket's rooms)."""
    app = SocketIO()

    @app.on("join")
    def join(socket: Socket, *rooms: str) -> list[str]:
        for room in rooms:
            socket.join(room)
        return sorted(socket.rooms)

    return app


# -- 1. rooms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", TRANSPORT_MODES)
async def test_rooms_except_socket_id_to_and_broadcast(
    start_server: StartServer, nursery: trio.Nursery, mode: str
) -> None:
    """to(["a", "b"]).except_("c") reaches exactly the sockets in a or b and not in c, once each
    (also in both); the chained form is the same; a socket id is a room of one; socket.to(room)
    leaves out the sender; socket.broadcast reaches all but the sender."""
    app = joining_app()

    @app.on("shout")
    def shout(socket: Socket, room: str, text: str) -> int:
        return socket.to(room).emit("shouted", text)

    @app.on("announce")
    def announce(socket: Socket, text: str) -> int:
        return socket.broadcast.emit("announced", text)

    port = await start_server(app)
    node = await clients(nursery, app, port, mode)
    memberships = {"in_a": ["a"], "in_b": ["b"], "in_ab": ["a", "b"], "in_ac": ["a", "c"], "in_c": ["c"], "none": []}
    for name, rooms in memberships.items():
        await node.connect(name)
        assert await node.emit(name, "join", *rooms) == [sorted(rooms)]
    names = list(memberships)

    assert app.to(["a", "b"]).except_("c").emit("news", 1) == 3
    assert app.to("a").to("b").except_(["c"]).emit("chained", 2) == 3
    assert app.in_("a", "b").emit("both", 3) == 4
    assert app.except_("a").emit("not-a", 4) == 3
    assert app.to(node.ids["in_b"]).emit("private", "for b") == 1
    assert app.to(node.ids["in_c"], "a").except_(node.ids["in_ab"]).emit("mixed", 5) == 3
    await node.flush()
    expected = {
        "in_a": ["news", "chained", "both", "mixed"],
        "in_b": ["news", "chained", "both", "not-a", "private"],
        "in_ab": ["news", "chained", "both"],
        "in_ac": ["both", "mixed"],
        "in_c": ["not-a", "mixed"],
        "none": ["not-a"],
    }
    assert {name: node.events(name) for name in names} == expected
    assert node.got("in_ab")[:3] == [("news", [1]), ("chained", [2]), ("both", [3])]
    assert node.got("in_b")[-1] == ("private", ["for b"])

    # From a handler: the sender is left out of its own room, and out of a broadcast.
    assert await node.emit("in_ab", "shout", "a", "hello a") == [2]
    assert await node.emit("in_c", "announce", "hi all") == [5]
    await node.flush()
    for name in names:
        later = node.got(name)[len(expected[name]):]
        want = []
        if name in ("in_a", "in_ac"):
            want.append(("shouted", ["hello a"]))
        if name != "in_c":
            want.append(("announced", ["hi all"]))
        assert later == want, name
    await node.end()


# -- 2. broadcast acks ---------------------------------------------------------------------------


async def test_broadcast_acks_with_a_timeout(start_server: StartServer, nursery: trio.Nursery) -> None:
    """app.timeout(1).emit_with_ack: the answers of those that answered, by socket id; with one
    client silent it returns after the timeout (not sooner, not much later), with every client
    answering it returns at once; the same on a room of a namespace."""
    app = joining_app()
    port = await start_server(app)
    node = await clients(nursery, app, port)
    for name in ("p", "q"):
        await node.connect(name)
        await node.emit(name, "join", "talkers")
    await node.connect("silent", answer=False)
    await node.emit("silent", "join", "talkers")
    ids = node.ids

    start = trio.current_time()
    answers = await app.timeout(1).emit_with_ack("ask", 7, {"x": [1]})
    took = trio.current_time() - start
    assert answers == {ids["p"]: ("p", 7, {"x": [1]}), ids["q"]: ("q", 7, {"x": [1]})}
    assert 1.0 <= took < 1.5, took
    await node.flush()
    for name in ("p", "q", "silent"):  # each was asked once, with an ack callback
        assert [line["acked"] for line in node.lines if line["type"] == "got" and line["name"] == name
                and line["event"] == "ask"] == [True], name

    # Everyone asked answers: no waiting for the timeout.
    start = trio.current_time()
    answers = await app.except_(ids["silent"]).timeout(3).emit_with_ack("ask", "quick")
    took = trio.current_time() - start
    assert answers == {ids["p"]: ("p", "quick"), ids["q"]: ("q", "quick")}
    assert took < 0.5, took

    # On a room of a namespace, with the silent one in it.
    start = trio.current_time()
    answers = await app.of("/").to("talkers").timeout(0.5).emit_with_ack("ask")
    took = trio.current_time() - start
    assert answers == {ids["p"]: ("p",), ids["q"]: ("q",)}
    assert 0.5 <= took < 1.0, took

    # No one to ask: at once, nothing.
    start = trio.current_time()
    assert await app.to("nobody").timeout(2).emit_with_ack("ask") == {}
    assert trio.current_time() - start < 0.1
    await node.end()


# -- 3. server-wide operations -------------------------------------------------------------------


async def test_fetch_join_leave_and_disconnect_sockets(start_server: StartServer, nursery: trio.Nursery) -> None:
    """fetch_sockets gives the sockets of a room (the ids the clients hold); sockets_join and
    sockets_leave move them (a room emit after shows it); disconnect_sockets disconnects the room's
    clients ("io server disconnect") and no one else."""
    app = joining_app()
    port = await start_server(app)
    node = await clients(nursery, app, port)
    for name, rooms in {"x1": ["team"], "x2": ["team"], "y": ["other"], "z": []}.items():
        await node.connect(name)
        await node.emit(name, "join", *rooms)
    ids = node.ids

    def names_of(sockets: list[Socket]) -> set[str]:
        by_id = {v: k for k, v in ids.items()}
        assert all(isinstance(s, Socket) for s in sockets), sockets
        return {by_id[s.id] for s in sockets}

    assert names_of(await app.in_("team").fetch_sockets()) == {"x1", "x2"}
    assert names_of(await app.fetch_sockets()) == {"x1", "x2", "y", "z"}
    assert names_of(await app.to(ids["z"]).fetch_sockets()) == {"z"}
    assert names_of(await app.except_("team").fetch_sockets()) == {"y", "z"}
    assert names_of(await app.of("/").to("team", "other").except_(ids["x1"]).fetch_sockets()) == {"x2", "y"}
    assert await app.to("nobody").fetch_sockets() == []

    await app.in_("team").sockets_join("blue")
    await app.to(ids["y"]).sockets_join(["blue", "green"])
    assert names_of(await app.in_("blue").fetch_sockets()) == {"x1", "x2", "y"}
    app.to("blue").emit("blue-1")
    app.to("green").emit("green-1")
    await node.flush()
    assert {name: node.events(name) for name in ids} == {
        "x1": ["blue-1"], "x2": ["blue-1"], "y": ["blue-1", "green-1"], "z": []}

    await app.in_("blue").sockets_leave("team")
    await app.to(ids["x1"]).sockets_leave(["blue"])
    assert await app.in_("team").fetch_sockets() == []
    app.to("team").emit("team-2")
    app.to("blue").emit("blue-2")
    await node.flush()
    assert {name: node.events(name)[1:] for name in ("x1", "x2", "z")} == {"x1": [], "x2": ["blue-2"], "z": []}
    assert node.events("y")[2:] == ["blue-2"]
    assert sorted(app.namespaces["/"].sockets[ids["x1"]].rooms) == []

    await app.in_("blue").disconnect_sockets()
    await node.until(lambda: node.find("disconnect", "x2") and node.find("disconnect", "y"), "x2 and y disconnected")
    assert node.find("disconnect", "x2", reason="io server disconnect")
    assert node.find("disconnect", "y", reason="io server disconnect")
    await node.flush("x1", "z")  # still connected, and told nothing
    assert node.find("disconnect", "x1") is None and node.find("disconnect", "z") is None
    assert names_of(await app.fetch_sockets()) == {"x1", "z"}
    assert "blue" not in app.namespaces["/"].rooms

    await app.disconnect_sockets()
    await node.until(lambda: node.find("disconnect", "x1") and node.find("disconnect", "z"), "everyone disconnected")
    assert node.find("disconnect", "z", reason="io server disconnect")
    assert await app.fetch_sockets() == []
    await node.end()


# -- 4. on_any_outgoing --------------------------------------------------------------------------


async def test_on_any_outgoing_sees_every_event_sent(start_server: StartServer, nursery: trio.Nursery) -> None:
    """The app's on_any_outgoing hook sees each event sent to any socket of any namespace (from the
    connect handler, a handler's emit, a broadcast, a room, emit_with_ack), with the socket and its
    arguments: exactly what the clients got. A namespace's own hook sees only its own."""
    app = joining_app()
    chat = app.of("/chat")
    seen: list[tuple[str, str, list[Any]]] = []
    seen_chat: list[tuple[str, str]] = []

    @app.on_any_outgoing
    def record(socket: Socket, event: str, args: tuple[Any, ...]) -> None:
        seen.append((socket.id, event, list(args)))

    @chat.on_any_outgoing
    def record_chat(socket: Socket, event: str, args: tuple[Any, ...]) -> None:
        assert socket.namespace is chat
        seen_chat.append((socket.id, event))

    @app.on_connect
    def welcome(socket: Socket, auth: Any) -> None:
        socket.emit("welcome", socket.id)

    @app.on("ping")
    def ping(socket: Socket, n: int) -> None:
        socket.emit("pong", n + 1)

    @chat.on("say")
    def say(socket: Socket, text: str) -> None:
        chat.emit("said", text)

    port = await start_server(app)
    node = await clients(nursery, app, port)
    for name in ("u1", "u2"):
        await node.connect(name)
    await node.emit("u1", "join", "r")
    await node.connect("c1", "/chat")
    await node.emit("u2", "ping", 1)
    assert await node.emit("c1", "say", "hey") == []
    app.emit("all", {"k": "v"})
    app.to("r").emit("room", 2)
    answers = await app.timeout(2).emit_with_ack("ask", 3)
    assert set(answers) == {node.ids["u1"], node.ids["u2"]}
    await node.flush()

    got = Counter((node.ids[line["name"]], line["event"], json.dumps(line["args"]))
                  for line in node.lines if line["type"] == "got")
    hooked = Counter((sid, event, json.dumps(args)) for sid, event, args in seen)
    assert hooked == got
    u1, u2, c1 = node.ids["u1"], node.ids["u2"], node.ids["c1"]
    assert [(e, a) for s, e, a in seen if s == u1 and e != "flush"] == [
        ("welcome", [u1]), ("all", [{"k": "v"}]), ("room", [2]), ("ask", [3])]
    assert [(e, a) for s, e, a in seen if s == u2 and e != "flush"] == [
        ("welcome", [u2]), ("pong", [2]), ("all", [{"k": "v"}]), ("ask", [3])]
    assert seen_chat == [(c1, "said"), (c1, "flush")]
    await node.end()


# -- 5. class-based handlers ---------------------------------------------------------------------


class Chat:
    """Handlers for "/chat" as methods (python-socketio's AsyncNamespace style)."""

    def __init__(self) -> None:
        self.unknown: list[tuple[str, list[Any]]] = []
        self.disconnected: list[tuple[str, str]] = []
        self.not_an_event = 0

    async def on_connect(self, socket: Socket, auth: Any) -> None:
        if auth.get("user") == "mallory":
            raise ConnectionRefused("no mallory", {"code": 4031})
        socket.state = auth["user"]
        socket.join("lobby")
        socket.emit("hello", socket.state)

    def on_say(self, socket: Socket, text: str) -> tuple[str, int]:
        socket.to("lobby").emit("said", socket.state, text)
        return "ok", len(text)

    async def on_add(self, socket: Socket, *numbers: int) -> int:
        await trio.sleep(0.01)
        return sum(numbers)

    def on_any(self, socket: Socket, event: str, *args: msgspec.Raw) -> None:  # raw: see Namespace.on_any
        self.unknown.append((event, [msgspec.json.decode(arg) for arg in args]))

    async def on_disconnect(self, socket: Socket, reason: str) -> None:
        self.disconnected.append((socket.state, reason))

    def helper(self, socket: Socket) -> None:  # not on_*: not an event
        self.not_an_event += 1


async def test_class_based_namespace(start_server: StartServer, nursery: trio.Nursery) -> None:
    """app.register(obj, "/chat"): on_<event> methods handle the events and their return values are
    the acks; on_connect refusing with ConnectionRefused is the client's connect_error (message and
    data); on_any gets the rest; on_disconnect runs with the reason."""
    app = SocketIO()
    handlers = Chat()
    assert app.register(handlers, "/chat") is app.of("/chat")
    port = await start_server(app)
    node = await clients(nursery, app, port)
    await node.connect("alice", "/chat", {"user": "alice"})
    await node.connect("bob", "/chat", {"user": "bob"})
    refused = await node.attempt("mallory", "/chat", {"user": "mallory"})
    assert refused["type"] == "connect_error"
    assert (refused["message"], refused["data"]) == ("no mallory", {"code": 4031})
    assert "mallory" not in node.ids

    assert await node.emit("alice", "say", "hello") == ["ok", 5]
    assert await node.emit("bob", "add", 1, 2, 3) == [6]
    await node.send(cmd="emit", name="bob", event="helper", args=[1])
    await node.send(cmd="emit", name="bob", event="on_say", args=["x"])
    await eventually(lambda: len(handlers.unknown) == 2, WAIT, "on_any got helper and on_say")
    assert handlers.unknown == [("helper", [1]), ("on_say", ["x"])]
    assert handlers.not_an_event == 0
    await node.flush()
    assert node.got("alice") == [("hello", ["alice"])]
    assert node.got("bob") == [("hello", ["bob"]), ("said", ["alice", "hello"])]

    await node.close("bob")
    await eventually(lambda: handlers.disconnected, WAIT, "bob's on_disconnect")
    assert handlers.disconnected == [("bob", "client namespace disconnect")]
    await node.end()


# -- 6. dynamic namespaces -----------------------------------------------------------------------


def tenant_app() -> tuple[SocketIO, Namespace, Namespace]:
    """Parents: /tenant-<word> (a pattern) and /vip-... with auth.token "ok" (a function)."""
    app = SocketIO()
    tenants = app.of(re.compile(r"^/tenant-\w+$"))
    vips = app.of(lambda name, auth: name.startswith("/vip-") and isinstance(auth, dict) and auth.get("token") == "ok")
    for parent in (tenants, vips):

        @parent.on_connect
        def welcome(socket: Socket, auth: Any) -> None:
            socket.emit("welcome", socket.namespace.name)

        @parent.on("where")
        def where(socket: Socket) -> str:
            assert socket.namespace.parent is not None
            return socket.namespace.name

    return app, tenants, vips


async def test_dynamic_namespaces(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A pattern parent serves /tenant-a and /tenant-b with its handlers, each its own namespace;
    /other is "Invalid namespace"; a function parent decides by auth; the parent's emit reaches every
    child's clients; a child goes when its last client does, and comes back with the next."""
    app, tenants, vips = tenant_app()
    port = await start_server(app)
    node = await clients(nursery, app, port)
    for name, nsp in (("a1", "/tenant-a"), ("a2", "/tenant-a"), ("b1", "/tenant-b")):
        await node.connect(name, nsp)
        assert node.find("connected", name)["nsp"] == nsp  # type: ignore[index]
        assert await node.emit(name, "where") == [nsp]
    await node.connect("v1", "/vip-1", {"token": "ok"})
    assert await node.emit("v1", "where") == ["/vip-1"]
    for name, nsp, auth in (("o", "/other", None), ("t", "/tenant-a-b", None), ("v2", "/vip-2", {"token": "bad"}),
                            ("v3", "/vip-3", None)):
        refused = await node.attempt(name, nsp, auth)
        assert (refused["type"], refused["message"]) == ("connect_error", "Invalid namespace"), name
    for name in ("a1", "a2", "b1"):
        sock = app.namespaces[node.namespace[name]].sockets[node.ids[name]]
        assert sock.namespace.name == node.namespace[name]
        assert sock.namespace.parent is tenants
    assert set(tenants.children) == {"/tenant-a", "/tenant-b"}
    assert set(vips.children) == {"/vip-1"}
    assert {"/other", "/tenant-a-b", "/vip-2", "/vip-3"}.isdisjoint(app.namespaces)

    assert tenants.emit("news", "to tenants") == 3
    await node.flush()
    for name in ("a1", "a2", "b1"):
        assert node.got(name) == [("welcome", [node.namespace[name]]), ("news", ["to tenants"])], name
    assert node.got("v1") == [("welcome", ["/vip-1"])]

    # The child goes with its last client, not before.
    await node.close("a1")
    await eventually(lambda: node.ids["a1"] not in app.namespaces["/tenant-a"].sockets, WAIT, "a1 to leave /tenant-a")
    await node.close("a2")
    await eventually(lambda: "/tenant-a" not in app.namespaces, WAIT, "/tenant-a to go")
    assert set(tenants.children) == {"/tenant-b"}
    assert "/tenant-b" in app.namespaces
    # And comes back, with the parent's handlers, for the next client.
    await node.connect("a3", "/tenant-a")
    assert await node.emit("a3", "where") == ["/tenant-a"]
    assert set(tenants.children) == {"/tenant-a", "/tenant-b"}
    await node.end()
    await eventually(lambda: not tenants.children and not vips.children, WAIT, "every child to go")
    assert set(app.namespaces) == {"/"}



# -- dynamic namespaces at their edges (each was a server bug, fixed) ----------------------------------


async def test_refused_connects_leave_no_child_namespace(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A client refused by a dynamic namespace's connect handler leaves nothing behind: the child
    made for it goes (else any client can fill app.namespaces with names of its choosing)."""
    app = SocketIO()
    tenants = app.of(re.compile(r"^/tenant-\w+$"))

    @tenants.on_connect
    def check(socket: Socket, auth: Any) -> None:
        if auth.get("key") != "k":
            raise ConnectionRefused("bad key")

    port = await start_server(app)
    node = await clients(nursery, app, port)
    for i in range(3):
        refused = await node.attempt(f"r{i}", f"/tenant-x{i}")
        assert (refused["type"], refused["message"]) == ("connect_error", "bad key")
    await node.connect("ok", "/tenant-y", {"key": "k"})
    assert sorted(app.namespaces) == ["/", "/tenant-y"]
    assert list(tenants.children) == ["/tenant-y"]
    await node.end()


async def test_parent_room_emit_reaches_children(start_server: StartServer, nursery: trio.Nursery) -> None:
    """parent.to(room).emit reaches the sockets in that room of every child (Node's parent
    namespace broadcasts through each child's adapter)."""
    app = SocketIO()
    tenants = app.of(re.compile(r"^/tenant-\w+$"))

    @tenants.on("join")
    def join(socket: Socket, room: str) -> None:
        socket.join(room)

    port = await start_server(app)
    node = await clients(nursery, app, port)
    for name, nsp in (("a", "/tenant-a"), ("b", "/tenant-b"), ("c", "/tenant-b")):
        await node.connect(name, nsp)
    await node.emit("a", "join", "vip")
    await node.emit("b", "join", "vip")
    sent = tenants.to("vip").emit("vip-news")
    await node.flush()
    assert {name: node.events(name) for name in ("a", "b", "c")} == {"a": ["vip-news"], "b": ["vip-news"], "c": []}
    assert sent == 2
    await node.end()


async def test_slow_connect_while_the_child_goes(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A client whose connect handler is still running when the child's last socket ends is
    served by the namespace the app holds: the parent's emit reaches it, with the next client."""
    app = SocketIO()
    tenants = app.of(re.compile(r"^/tenant-\w+$"))

    @tenants.on_connect
    async def check(socket: Socket, auth: Any) -> None:
        if auth.get("slow"):
            await trio.sleep(1)  # an auth lookup, say

    port = await start_server(app)
    node = await clients(nursery, app, port)
    await node.connect("first", "/tenant-a")
    node.namespace["slow"] = "/tenant-a"
    await node.send(cmd="connect", name="slow", nsp="/tenant-a", auth={"slow": True})
    await trio.sleep(0.3)  # its connect handler runs
    await node.close("first")
    line = await node.until(lambda: node.find("connected", "slow"), "slow to connect", WAIT)
    node.ids["slow"] = line["id"]
    await node.connect("next", "/tenant-a")
    held = app.namespaces.get("/tenant-a")
    assert held is not None and set(held.sockets) == {node.ids["slow"], node.ids["next"]}, (
        f"/tenant-a holds {held and list(held.sockets)}; slow is {node.ids['slow']}")
    assert tenants.emit("hi") == 2
    await node.flush("slow", "next")
    assert node.events("slow") == ["hi"]
    await node.end()
