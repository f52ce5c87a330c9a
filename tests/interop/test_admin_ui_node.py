"""Issue 15, the Socket.IO Admin UI (``callbox.admin.instrument``), through the real socket.io-client
under Node (pinned in tests/interop/package-lock.json) speaking the UI's protocol: an admin client
connects to /admin with the options and the auth of the UI's own connection code (socket.io-admin-ui
ui/src/App.vue) and gets what the UI's listeners expect (``session``, ``config``, ``all_sockets``,
``server_stats``, ``socket_connected`` / ``socket_updated`` / ``socket_disconnected``,
``room_joined`` / ``room_left``, ``event_received`` / ``event_sent``), while application clients
come, talk and go; the UI's commands (``emit``, ``join``, ``leave``, ``_disconnect``) reach them.

Each test serves an instrumented app here (loopback, port 0) and drives the clients of one
``node admin_ui.mjs`` process line by line (commands on its stdin, what the clients see on its
stdout). "Nothing else arrived" is checked after a barrier: an event sent to that client later,
which arrives after everything sent before it (one connection keeps its order).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from _interop import NEEDS_NODE, NODE, LineScript, StartServer
from callbox import Socket, SocketIO
from callbox.admin import instrument

pytestmark = NEEDS_NODE

WAIT = 5.0  # s: the longest any one step may take
INTERVAL = 0.2  # s between two server_stats here (2 s by default)
CREDENTIALS = {"username": "admin", "password": "correct horse battery staple"}
ALL_FEATURES = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS",
                "ALL_EVENTS"]


class Clients(LineScript):
    """One ``node admin_ui.mjs`` process: what its clients saw, and commands for them."""

    transcript_width = 600

    def got(self, name: str, event: str) -> list[list[Any]]:
        """The arguments of each ``event`` that ``name`` got, in order."""
        return [line["args"] for line in self.lines
                if line["type"] == "got" and line["name"] == name and line["event"] == event]

    def events(self, name: str) -> list[str]:
        return [line["event"] for line in self.lines if line["type"] == "got" and line["name"] == name]

    def line(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((line for line in self.lines if line["type"] == kind and line.get("name") == name), None)

    async def wait_got(self, name: str, event: str, match: Callable[[list[Any]], bool] = lambda _: True,
                       what: str = "") -> list[Any]:
        """The arguments of the first ``event`` that ``name`` got and that ``match`` accepts."""
        [found] = await self.until(  # wrapped: an event without arguments is a falsy []
            lambda: next(([args] for args in self.got(name, event) if match(args)), None), what or f"{name}: {event}"
        )
        return list(found)

    async def attempt(self, name: str, cmd: str, **options: Any) -> dict[str, Any]:
        await self.send(cmd=cmd, name=name, **options)
        line: dict[str, Any] = await self.until(
            lambda: self.line("connected", name) or self.line("connect_error", name), f"{name} connecting"
        )
        if line["type"] == "connected":
            self.ids[name] = line["id"]
        return line

    async def connect(self, name: str, **options: Any) -> str:
        """An application client ``name`` connected: its socket id."""
        line = await self.attempt(name, "connect", **options)
        assert line["type"] == "connected", f"{name}: {line}\n{self.transcript()}"
        return str(line["id"])

    async def admin(self, name: str, auth: Any = None, **options: Any) -> dict[str, Any]:
        """An admin client, as the UI connects: its "connected" or "connect_error" line."""
        return await self.attempt(name, "admin", auth=CREDENTIALS if auth is None else auth, **options)

    async def emit(self, name: str, event: str, *args: Any, ack: bool = False) -> list[Any] | None:
        """``name`` emits ``event``; with ``ack``, the answer (once the handler ran)."""
        before = len([line for line in self.lines if line["type"] == "ack" and line["name"] == name])
        await self.send(cmd="emit", name=name, event=event, args=list(args), ack=ack)
        if not ack:
            return None
        line = await self.until(
            lambda: ([line for line in self.lines if line["type"] == "ack" and line["name"] == name][before:] or
                     [None])[0],
            f"the ack of {name}'s {event}",
        )
        return list(line["answer"])



async def clients(nursery: trio.Nursery, port: int) -> Clients:
    """Start ``node admin_ui.mjs`` against the server on ``port`` (killed when the test ends)."""
    assert NODE is not None
    argv = [NODE, "admin_ui.mjs", f"http://127.0.0.1:{port}"]
    node = Clients(await Clients.start(nursery, argv), argv)
    nursery.start_soon(node.read)
    return node


def chat_app() -> SocketIO:
    """An app whose clients join and leave rooms, ask for their rooms, and get their words echoed."""
    app = SocketIO()

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        socket.state = {"user": socket.handshake.query.get("user", "")}

    @app.on("enter")
    def enter(socket: Socket, room: str) -> list[str]:
        socket.join(room)
        return sorted(socket.rooms)

    @app.on("rooms")
    def rooms(socket: Socket) -> list[str]:
        return sorted(socket.rooms)

    @app.on("echo")
    def echo(socket: Socket, *args: Any) -> None:
        socket.emit("echo", *args)

    return app


# -- logging in -----------------------------------------------------------------------------------


async def test_login(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A wrong login is refused with the message the UI looks for; a right one gets a session id,
    with which the UI reconnects after a page reload instead of the password."""
    app = chat_app()
    instrument(app, auth=CREDENTIALS, server_stats_interval=INTERVAL)
    node = await clients(nursery, await start_server(app))

    for name, auth in [("wrong", {**CREDENTIALS, "password": "nope"}), ("stranger", {**CREDENTIALS, "username": "x"}),
                       ("nothing", {}), ("forged", {"sessionId": "0" * 32}),
                       ("typed", {"username": ["admin"], "password": {"p": 1}})]:
        line = await node.admin(name, auth)
        assert line == {"type": "connect_error", "name": name, "message": "invalid credentials"}, name
    assert not app.namespaces["/admin"].sockets

    line = await node.admin("ok")
    assert line["type"] == "connected" and line["nsp"] == "/admin"
    [[session]] = await node.until(lambda: node.got("ok", "session"), "the session id")
    [config] = await node.wait_got("ok", "config")
    assert config == {"supportedFeatures": ALL_FEATURES}
    # The UI's reload: only the session id.
    line = await node.admin("reloaded", {"sessionId": session})
    assert line["type"] == "connected", line
    await node.wait_got("reloaded", "config")
    assert not node.got("reloaded", "session")
    # What comes first, in the UI's order: its session, config, the sockets, the statistics.
    firsts = [e for e in node.events("ok") if e in ("session", "config", "all_sockets", "server_stats")][:4]
    assert firsts == ["session", "config", "all_sockets", "server_stats"]
    await node.end()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_login_by_function(start_server: StartServer, nursery: trio.Nursery, kind: str) -> None:
    """``auth`` may be a function of the CONNECT payload (async or not)."""
    app = SocketIO()
    seen: list[Any] = []

    def check(auth: Any) -> bool:
        seen.append(auth)
        return bool(auth.get("token") == "letmein")

    async def acheck(auth: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return check(auth)

    instrument(app, auth=check if kind == "sync" else acheck, server_stats_interval=INTERVAL)
    node = await clients(nursery, await start_server(app))
    assert (await node.admin("no", {"token": "guess"}))["message"] == "invalid credentials"
    assert (await node.admin("yes", {"token": "letmein"}))["type"] == "connected"
    await node.wait_got("yes", "config")
    assert seen == [{"token": "guess"}, {"token": "letmein"}]
    await node.end()


def test_instrument_refuses_what_would_be_unsafe_or_ambiguous() -> None:
    app = SocketIO()
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        instrument(app, auth=None)
    with pytest.raises(ValueError, match="username"):
        instrument(app, auth={"username": "admin", "password": ""})
    with pytest.raises(ValueError, match="mode"):
        instrument(app, auth=CREDENTIALS, mode="staging")  # type: ignore[arg-type]
    app.of("/admin")
    with pytest.raises(ValueError, match="in use"):
        instrument(app, auth=CREDENTIALS)
    with pytest.raises(ValueError, match="in use"):
        instrument(app, auth=CREDENTIALS, namespace="/")
    open_app = SocketIO()
    admin = instrument(open_app, auth=None, allow_unauthenticated=True, namespace="/ops", read_only=True)
    assert admin.namespace is open_app.namespaces["/ops"]
    assert admin.features == ["AGGREGATED_EVENTS", "ALL_EVENTS"]


# -- watching and acting, development mode ----------------------------------------------------------


async def test_watch_and_command(start_server: StartServer, nursery: trio.Nursery) -> None:
    app = chat_app()
    instrument(app, auth=CREDENTIALS, server_stats_interval=INTERVAL, server_id="node-1")
    node = await clients(nursery, await start_server(app))
    root = app.namespaces["/"]

    # alice was there before the admin: all_sockets shows her, with her handshake.
    alice = await node.connect("alice", query={"user": "alice"}, headers={"x-trace": "t-1"})
    assert (await node.admin("ui"))["type"] == "connected"
    [sockets] = await node.wait_got("ui", "all_sockets")
    by_id = {s["id"]: s for s in sockets}
    shown = by_id[alice]
    mine = root.sockets[alice]
    assert shown["nsp"] == "/" and shown["rooms"] == [alice]
    assert shown["clientId"] == mine.client.esock.sid[:12]
    assert shown["transport"] in ("polling", "websocket")
    assert shown["data"] == {"user": "alice"}
    hs = shown["handshake"]
    assert hs["address"] == "127.0.0.1" and hs["secure"] is False and hs["xdomain"] is False
    assert hs["query"]["user"] == "alice" and hs["query"]["EIO"] == "4"
    assert hs["headers"]["x-trace"] == "t-1"
    assert hs["url"].startswith("/socket.io/?") and "user=alice" in hs["url"]
    assert hs["issued"] == int(mine.handshake.issued * 1000) and abs(hs["issued"] / 1000 - time.time()) < 30
    assert hs["time"] == mine.handshake.time
    assert "auth" not in hs
    # The admin itself is listed (in its namespace), and its password is nowhere.
    [me] = [s for s in sockets if s["nsp"] == "/admin"]
    assert me["id"] == node.ids["ui"]
    assert CREDENTIALS["password"] not in json.dumps(sockets)

    [stats] = await node.wait_got("ui", "server_stats")
    assert stats["serverId"] == "node-1" and isinstance(stats["pid"], int) and stats["hostname"]
    assert stats["clientsCount"] == 2 and isinstance(stats["uptime"], float)
    assert {"name": "/", "socketsCount": 1} in stats["namespaces"]
    assert {"name": "/admin", "socketsCount": 1} in stats["namespaces"]

    # bob comes: socket_connected, with a timestamp; then his upgrade to WebSocket shows.
    bob = await node.connect("bob", query={"user": "bob"})
    connected, stamp = await node.wait_got("ui", "socket_connected", lambda a: a[0]["id"] == bob)
    assert connected["nsp"] == "/" and connected["rooms"] == [bob] and connected["data"] == {"user": "bob"}
    assert stamp.endswith("Z") and stamp[:4].isdigit()
    await node.until(lambda: node.line("upgrade", "bob"), "bob's upgrade")
    if connected["transport"] == "polling":
        update = await node.wait_got("ui", "socket_updated", lambda a: a[0]["id"] == bob)
        assert update == [{"id": bob, "nsp": "/", "transport": "websocket"}]
    stats = await node.wait_got("ui", "server_stats",
                                lambda a: a[0]["clientsCount"] == 3 and a[0]["pollingClientsCount"] == 0)
    assert {"name": "/", "socketsCount": 2} in stats[0]["namespaces"]

    # bob talks: what he sends and what he is sent; the rooms he joins.
    assert await node.emit("bob", "enter", "lobby", ack=True) == [["lobby"]]
    joined = await node.wait_got("ui", "room_joined", lambda a: a[1] == "lobby")
    assert joined[:3] == ["/", "lobby", bob]
    received = await node.wait_got("ui", "event_received", lambda a: a[2][0] == "enter")
    assert received[:3] == ["/", bob, ["enter", "lobby"]]
    await node.emit("bob", "echo", "hi", {"n": 1})
    sent = await node.wait_got("ui", "event_sent", lambda a: a[2][0] == "echo")
    assert sent[:3] == ["/", bob, ["echo", "hi", {"n": 1}]]
    assert await node.wait_got("bob", "echo") == ["hi", {"n": 1}]

    # The UI's commands: emit to one socket, then to all (the barrier for alice: she got only that).
    await node.emit("ui", "emit", "/", bob, "notice", {"from": "ops"})
    assert await node.wait_got("bob", "notice") == [{"from": "ops"}]
    await node.emit("ui", "emit", "/", None, "everyone", 1)
    await node.wait_got("alice", "everyone")
    await node.wait_got("bob", "everyone")
    assert "notice" not in node.events("alice")
    # An event name a client keeps for itself is not emitted.
    await node.emit("ui", "emit", "/", bob, "disconnect", "spoofed")
    await node.emit("ui", "emit", "/", bob, "after", 2)
    await node.wait_got("bob", "after")
    assert "disconnect" not in node.events("bob") and node.line("disconnect", "bob") is None

    # join / leave one socket, and all of a namespace (MJOIN).
    await node.emit("ui", "join", "/", "vip", bob)
    await node.wait_got("ui", "room_joined", lambda a: a[:3] == ["/", "vip", bob])
    assert await node.emit("bob", "rooms", ack=True) == [["lobby", "vip"]]
    await node.emit("ui", "leave", "/", "vip", bob)
    left = await node.wait_got("ui", "room_left", lambda a: a[:3] == ["/", "vip", bob])
    assert left[3].endswith("Z")
    assert await node.emit("bob", "rooms", ack=True) == [["lobby"]]
    await node.emit("ui", "join", "/", "all-hands")
    for who in (alice, bob):
        await node.wait_got("ui", "room_joined", lambda a, who=who: a[:3] == ["/", "all-hands", who])
    assert await node.emit("alice", "rooms", ack=True) == [["all-hands"]]
    assert await node.emit("bob", "rooms", ack=True) == [["all-hands", "lobby"]]
    # ... and of one room (the filter).
    await node.emit("ui", "leave", "/", "all-hands", "lobby")
    await node.wait_got("ui", "room_left", lambda a: a[:3] == ["/", "all-hands", bob])
    assert await node.emit("bob", "rooms", ack=True) == [["lobby"]]
    assert await node.emit("alice", "rooms", ack=True) == [["all-hands"]]

    # _disconnect: bob's socket only; his client is told (and would not reconnect).
    await node.emit("ui", "_disconnect", "/", False, bob)
    assert (await node.until(lambda: node.line("disconnect", "bob"), "bob's end"))["reason"] == "io server disconnect"
    gone = await node.wait_got("ui", "socket_disconnected", lambda a: a[1] == bob)
    assert gone[:3] == ["/", bob, "server namespace disconnect"]
    await node.wait_got("ui", "room_left", lambda a: a[:3] == ["/", "lobby", bob])
    # alice leaves by herself.
    await node.send(cmd="close", name="alice")
    gone = await node.wait_got("ui", "socket_disconnected", lambda a: a[1] == alice)
    assert gone[:3] == ["/", alice, "client namespace disconnect"]

    # _disconnect with close: the whole connection goes (its sessions count as closed by force).
    carol = await node.connect("carol", transports=["websocket"])
    sid = root.sockets[carol].client.esock.sid
    server = root.sockets[carol].client.esock.server
    await node.emit("ui", "_disconnect", "/", True, carol)
    ended = await node.until(lambda: node.line("disconnect", "carol"), "carol's end")
    assert ended["reason"] == "io server disconnect"
    await node.wait_got("ui", "socket_disconnected", lambda a: a[1] == carol)
    await node.until(lambda: sid not in server.sessions, "carol's session to close")
    await node.wait_got("ui", "server_stats", lambda a: any(
        e["type"] == "rawDisconnection" and e.get("subType") == "forced close" for e in a[0]["aggregatedEvents"]))

    # What the statistics counted meanwhile: every connection and disconnection, by the second.
    events = [e for args in node.got("ui", "server_stats") for e in args[0]["aggregatedEvents"]]
    assert sum(e["count"] for e in events if e["type"] == "rawConnection") >= 2  # bob, carol
    assert all(e["timestamp"] % 1000 == 0 for e in events)
    # The admin's own traffic is never reported.
    assert not [a for a in node.got("ui", "event_received") + node.got("ui", "event_sent") if a[0] == "/admin"]
    await node.end()


async def test_read_only(start_server: StartServer, nursery: trio.Nursery) -> None:
    """A read-only admin watches; its commands change nothing."""
    app = chat_app()
    instrument(app, auth=CREDENTIALS, server_stats_interval=INTERVAL, read_only=True)
    node = await clients(nursery, await start_server(app))
    alice = await node.connect("alice")
    assert await node.emit("alice", "enter", "lobby", ack=True) == [["lobby"]]
    await node.admin("ui")
    assert await node.wait_got("ui", "config") == [{"supportedFeatures": ["AGGREGATED_EVENTS", "ALL_EVENTS"]}]
    for command in (["emit", "/", alice, "notice", 1], ["emit", "/", None, "notice", 2], ["join", "/", "vip", alice],
                    ["leave", "/", "lobby", alice], ["_disconnect", "/", False, alice], ["_disconnect", "/", True]):
        await node.emit("ui", *command)
    await node.emit("ui", "emit", "/", alice, "hello?")  # after the rest: once it is not there, nor is the rest
    await node.wait_got("ui", "server_stats", lambda a: a[0]["clientsCount"] == 2)
    app.namespaces["/"].sockets[alice].emit("barrier")
    await node.wait_got("alice", "barrier")
    assert node.events("alice") == ["barrier"]
    assert node.line("disconnect", "alice") is None
    assert await node.emit("alice", "rooms", ack=True) == [["lobby"]]
    await node.end()


async def test_production_mode(start_server: StartServer, nursery: trio.Nursery) -> None:
    """Production: statistics and commands, no per-socket reports (nor the hooks that make them)."""
    app = chat_app()
    instrument(app, auth=CREDENTIALS, server_stats_interval=INTERVAL, mode="production")
    node = await clients(nursery, await start_server(app))
    await node.admin("ui")
    assert await node.wait_got("ui", "config") == [{"supportedFeatures": ALL_FEATURES[:-1]}]
    alice = await node.connect("alice")
    assert await node.emit("alice", "enter", "lobby", ack=True) == [["lobby"]]
    await node.emit("ui", "emit", "/", "lobby", "notice", "maintenance at noon")
    assert await node.wait_got("alice", "notice") == ["maintenance at noon"]
    stats = await node.wait_got("ui", "server_stats", lambda a: a[0]["clientsCount"] == 2)
    assert {"name": "/", "socketsCount": 1} in stats[0]["namespaces"]
    await node.emit("ui", "_disconnect", "/", False, alice)
    await node.until(lambda: node.line("disconnect", "alice"), "alice's end")
    # Her client then closes its connection (no socket left on it): one client, the admin.
    await node.wait_got("ui", "server_stats", lambda a: a[0]["clientsCount"] == 1 and
                        {"name": "/", "socketsCount": 0} in a[0]["namespaces"])
    assert set(node.events("ui")) == {"session", "config", "server_stats"}
    await node.end()
