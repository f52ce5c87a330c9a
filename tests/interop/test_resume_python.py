"""python-socketio (a client without connection state recovery) takes its call back with the
``resumeToken`` of ``user:joined`` after its connection was cut (issue 12, layer 2).

Alice and bob are python-socketio ``AsyncClient``s in one live call. Bob reaches the server through
a small TCP proxy (asyncio, in the client thread) that can drop every connection through it at once
with a TCP reset: the server loses bob's transport without a goodbye ("transport close" / "transport
error"), so the call waits for him (``reconnect_grace``). Bob comes back as a new Socket.IO socket and
sends ``user:join {userId, resumeToken}``.

As in test_python_client.py, the server runs on Trio in the test's thread and the clients on their
own asyncio loop in a worker thread; every wait in the scenario is bounded (``asyncio.wait_for``)
and so is the whole thread (``trio.fail_after``). What the server holds afterwards is checked on the
Trio side.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import socketio
import trio

import _interop
from _interop import StartServer, settled
from callbox.signalling import Signalling

T = TypeVar("T")

# One bound for every single wait inside a client scenario (a connect, an event, an ack).
CLIENT_WAIT = 5.0
# The whole scenario thread.
SCENARIO_WAIT = 45.0
# Long next to the test: the call waits for bob for as long as the scenario needs.
GRACE = 20.0
# Short: the grace passes within the scenario.
SHORT_GRACE = 1.0

TRANSPORTS: dict[str, list[str]] = {"websocket": ["websocket"], "polling": ["polling"]}
# Short heartbeats: whatever way the server notices the cut (an aborted request, a reset, at worst
# a missed pong), it does so within a CLIENT_WAIT.
SERVER_SETTINGS: dict[str, Any] = {"ping_interval": 1.0, "ping_timeout": 1.0}

pytestmark = pytest.mark.parametrize("case", list(TRANSPORTS))


# -- the proxy ----------------------------------------------------------------------------------------


class CutProxy:
    """A TCP proxy on 127.0.0.1 to ``127.0.0.1:target``, on the client thread's asyncio loop.
    :meth:`cut` drops every connection through it at that moment, both ends, with a TCP reset (no
    FIN, no WebSocket close frame, no Engine.IO close): a network that went away. :meth:`freeze`
    keeps them open but forwards nothing more either way (half-open: each end still thinks the
    other is there). New connections are proxied as before."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.frozen: set[asyncio.StreamWriter] = set()
        self.cuts = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut()
        if self.tasks:  # every link ends once its sockets are gone
            await asyncio.wait(self.tasks, timeout=CLIENT_WAIT)

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        links = list(self.links)
        for pair in links:
            for writer in pair:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self.links.clear()
        self.cuts += 1
        return len(links)

    def freeze(self) -> int:
        """Forward nothing more on the open connections, and close none; how many there were."""
        for pair in self.links:
            self.frozen.update(pair)
        return len(self.links)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.links.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self.links.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if writer in self.frozen:
                continue  # swallowed: read so that the sender never blocks, never delivered
            writer.write(data)
            await writer.drain()
        if writer not in self.frozen and writer.can_write_eof():
            writer.write_eof()


# -- the clients --------------------------------------------------------------------------------------


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


class Peer:
    """A python-socketio client playing one user: every event it receives, in order, read one by one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.read = 0  # events[:read] were looked at
        self._arrived = asyncio.Event()
        self.gone = asyncio.Event()

        @self.sio.on("*")
        async def any_event(event: str, *args: Any) -> None:
            self.events.append((event, args[0] if len(args) == 1 else args))
            self._arrived.set()

        @self.sio.on("disconnect")
        async def disconnect(*args: Any) -> None:
            self.gone.set()

    async def connect(self, port: int, case: str) -> None:
        await asyncio.wait_for(
            self.sio.connect(url(port), transports=TRANSPORTS[case], wait_timeout=CLIENT_WAIT), CLIENT_WAIT * 2
        )

    async def call(self, event: str, payload: Any) -> Any:
        return await self.sio.call(event, payload, timeout=CLIENT_WAIT)

    async def next(self) -> tuple[str, Any]:
        """The next event this client received (waiting for it)."""
        async def arrived() -> None:
            while self.read >= len(self.events):
                self._arrived.clear()
                await self._arrived.wait()

        try:
            await asyncio.wait_for(arrived(), CLIENT_WAIT)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no event after {self.events[: self.read]}") from None
        event = self.events[self.read]
        self.read += 1
        return event

    async def expect(self, name: str) -> Any:
        """The next event must be ``name``: its payload."""
        event, payload = await self.next()
        assert event == name, f"{self.name} expected {name}, got {event} {payload!r}"
        return payload

    def unread(self) -> list[tuple[str, Any]]:
        return self.events[self.read :]

    async def join(self, user_id: str, token: str | None = None) -> tuple[Any, Any]:
        """user:join (with a resumeToken if given): (the ack, the user:joined payload)."""
        body: dict[str, Any] = {"userId": user_id}
        if token is not None:
            body["resumeToken"] = token
        ack = await self.call("user:join", body)
        joined = await self.expect("user:joined")
        return ack, joined

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), CLIENT_WAIT)


async def in_client_thread(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario()`` to completion on a fresh asyncio loop in a worker thread."""

    def run() -> T:
        return asyncio.run(scenario())

    with trio.fail_after(SCENARIO_WAIT):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


async def serve(start_server: StartServer, **settings: Any) -> tuple[int, Signalling]:
    return await _interop.serve(start_server, **{**SERVER_SETTINGS, **settings})


async def live_call(alice: Peer, bob: Peer) -> str:
    """alice calls bob, bob accepts, offer and answer: the call is CONNECTED. Its id."""
    ack = await alice.call("call:initiate", {"to": "bob", "callType": "video"})
    assert ack["ok"], ack
    call_id: str = ack["callId"]
    assert await bob.expect("call:incoming") == {"from": "alice", "callType": "video", "callId": call_id}
    assert await alice.expect("call:initiated") == {"callId": call_id, "to": "bob"}
    assert await bob.call("call:accept", {"callId": call_id, "from": "alice"}) == {"ok": True, "callId": call_id}
    accepted = {"callId": call_id, "by": "bob"}
    assert await alice.expect("call:accepted") == accepted
    assert await bob.expect("call:accepted") == accepted
    offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
    assert await alice.call("call:offer", {"to": "bob", "offer": offer}) == {"ok": True, "callId": call_id}
    assert await bob.expect("call:offer") == {"offer": offer, "from": "alice", "callType": "video", "callId": call_id}
    answer = {"type": "answer", "sdp": "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\n"}
    assert await bob.call("call:answer", {"to": "alice", "answer": answer}) == {"ok": True, "callId": call_id}
    assert await alice.expect("call:answer") == {"answer": answer, "from": "bob", "callId": call_id}
    return call_id


async def both_joined(port: int, proxy_port: int, case: str) -> tuple[Peer, Peer, str]:
    """alice (direct) and bob (through the proxy) joined: (alice, bob, bob's resumeToken)."""
    alice, bob = Peer("alice"), Peer("bob")
    await alice.connect(port, case)
    await bob.connect(proxy_port, case)
    ack, joined = await alice.join("alice")
    assert ack == {"ok": True, "userId": "alice", "socketId": alice.sio.get_sid("/")}
    assert isinstance(joined.get("resumeToken"), str) and joined["resumeToken"], joined
    ack, joined = await bob.join("bob")
    assert ack == {"ok": True, "userId": "bob", "socketId": bob.sio.get_sid("/")}
    assert "resumed" not in joined and "call" not in joined, joined
    token = joined.get("resumeToken")
    assert isinstance(token, str) and token, joined
    assert token != alice.events[0][1]["resumeToken"]  # a secret for each connection
    return alice, bob, token


async def hang_up(alice: Peer, bob: Peer, call_id: str) -> None:
    """alice ends the live call: both are told, and neither has anything else unread."""
    assert await alice.call("call:end", {"callId": call_id}) == {"ok": True, "callId": call_id}
    ended = {"callId": call_id, "by": "alice", "reason": "hangup"}
    assert await alice.expect("call:ended") == ended
    assert await bob.expect("call:ended") == ended
    assert alice.unread() == [] and bob.unread() == []


@dataclass
class Scene:
    """A scenario under way: alice (straight to the server) and bob (through ``proxy``) in a live
    call; bob's resumeToken; every client made so far (closed at the end)."""

    port: int
    case: str
    proxy: CutProxy
    alice: Peer
    bob: Peer
    token: str
    call_id: str
    peers: list[Peer]

    async def cut_bob(self) -> None:
        """Drop bob's connection; the server notices, and alice hears that bob is reconnecting."""
        assert self.proxy.cut() >= 1
        await asyncio.wait_for(self.bob.gone.wait(), CLIENT_WAIT)
        assert await self.alice.expect("call:reconnecting") == {"callId": self.call_id, "userId": "bob"}

    async def bob_again(self, name: str, *, direct: bool = False) -> Peer:
        """bob on a new connection: through the proxy again, or (``direct``) straight to the server."""
        peer = Peer(name)
        self.peers.append(peer)
        await peer.connect(self.port if direct else self.proxy.port, self.case)
        return peer


async def play(port: int, signalling: Signalling, case: str, scenario: Callable[[Scene], Awaitable[None]]) -> None:
    """In the client thread: alice and bob joined and in a live call, then ``scenario``; then the
    proxy and every client closed. Afterwards the server must hold nothing."""

    async def run() -> None:
        proxy = CutProxy(port)
        await proxy.start()
        peers: list[Peer] = []
        try:
            alice, bob, token = await both_joined(port, proxy.port, case)
            peers += [alice, bob]
            call_id = await live_call(alice, bob)
            await scenario(Scene(port, case, proxy, alice, bob, token, call_id, peers))
        finally:
            await proxy.close()
            for peer in peers:
                await peer.close()

    await in_client_thread(run)
    await settled(signalling)


# -- the tests ----------------------------------------------------------------------------------------


async def test_resume_with_token_after_a_cut(start_server: StartServer, case: str) -> None:
    port, signalling = await serve(start_server, reconnect_grace=GRACE)

    async def scenario(scene: Scene) -> None:
        alice, bob, token, call_id = scene.alice, scene.bob, scene.token, scene.call_id
        bob_sid = bob.sio.get_sid("/")

        await scene.cut_bob()

        # While bob is away: an ICE restart and three candidates, each accepted for him.
        restart = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=ice-options:trickle\r\n"}
        candidates = [
            {"candidate": f"candidate:{n} 1 udp 2122260223 127.0.0.1 {5000 + n} typ host",
             "sdpMid": "0", "sdpMLineIndex": 0}
            for n in range(3)
        ]
        ok = {"ok": True, "callId": call_id}
        assert await alice.call("call:offer", {"to": "bob", "offer": restart}) == ok
        for candidate in candidates:
            assert await alice.call("ice:candidate", {"to": "bob", "candidate": candidate}) == ok

        # Bob comes back: a new Socket.IO socket (through the proxy again), with his token.
        bob2 = await scene.bob_again("bob (back)")
        sid2 = bob2.sio.get_sid("/")
        assert sid2 != bob_sid
        ack, joined = await bob2.join("bob", token)
        assert ack == {"ok": True, "userId": "bob", "socketId": sid2, "resumed": True}
        new_token = joined.pop("resumeToken", None)
        assert isinstance(new_token, str) and new_token and new_token != token
        assert joined == {
            "userId": "bob",
            "socketId": sid2,
            "resumed": True,
            "call": {"callId": call_id, "peer": "alice", "role": "callee", "state": "connected",
                     "callType": "video"},
        }
        # What alice sent meanwhile, in order, once; then the call is back for both.
        assert await bob2.expect("call:offer") == {"offer": restart, "from": "alice", "callType": "video",
                                                   "callId": call_id}
        for candidate in candidates:
            assert await bob2.expect("ice:candidate") == {"candidate": candidate, "from": "alice",
                                                          "callId": call_id}
        back = {"callId": call_id, "userId": "bob"}
        assert await bob2.expect("call:reconnected") == back
        assert await alice.expect("call:reconnected") == back

        # The call goes on, both ways, on bob's new socket.
        candidate = {"candidate": "candidate:9 1 udp 1 127.0.0.1 6000 typ host", "sdpMid": "0",
                     "sdpMLineIndex": 0}
        assert await bob2.call("ice:candidate", {"to": "alice", "candidate": candidate}) == ok
        assert await alice.expect("ice:candidate") == {"candidate": candidate, "from": "bob", "callId": call_id}
        assert await alice.call("ice:candidate", {"to": "bob", "candidate": candidate}) == ok
        assert await bob2.expect("ice:candidate") == {"candidate": candidate, "from": "alice", "callId": call_id}

        # Alice hangs up: the call ends as usual, and nobody got anything else.
        await hang_up(alice, bob2, call_id)
        assert not any(name == "call:ended" for name, _ in bob.events)

    await play(port, signalling, case, scenario)


@pytest.mark.parametrize("token", ["none", "wrong"])
async def test_join_without_the_token_while_away_is_a_takeover(start_server: StartServer, case: str,
                                                               token: str) -> None:
    port, signalling = await serve(start_server, reconnect_grace=GRACE)

    async def scenario(scene: Scene) -> None:
        alice, good, call_id = scene.alice, scene.token, scene.call_id
        await scene.cut_bob()

        bob2 = await scene.bob_again("bob (again)")
        sid2 = bob2.sio.get_sid("/")
        ack, joined = await bob2.join("bob", None if token == "none" else good[::-1] + "x")
        assert ack == {"ok": True, "userId": "bob", "socketId": sid2}
        assert joined.get("resumed") in (None, False) and "call" not in joined, joined
        assert joined["userId"] == "bob" and joined["socketId"] == sid2
        assert isinstance(joined.get("resumeToken"), str) and joined["resumeToken"] != good
        # A take-over: the waiting call ends for alice at once, and bob gets nothing of it.
        assert await alice.expect("call:ended") == {"callId": call_id, "by": "bob", "reason": "replaced"}
        # The one who took over is in no call: a relay to alice is refused, alice can call him anew.
        refused = await bob2.call("ice:candidate", {"to": "alice", "candidate": None})
        assert refused["ok"] is False and refused["code"] == "NOT_IN_CALL", refused
        again = await alice.call("call:initiate", {"to": "bob", "callType": "audio"})
        assert again["ok"], again
        assert await bob2.expect("call:incoming") == {"from": "alice", "callType": "audio",
                                                      "callId": again["callId"]}
        assert await alice.expect("call:initiated") == {"callId": again["callId"], "to": "bob"}
        assert await alice.call("call:end", {"callId": again["callId"]}) == {"ok": True, "callId": again["callId"]}
        cancelled = {"callId": again["callId"], "by": "alice", "reason": "cancelled"}
        assert await alice.expect("call:ended") == cancelled
        assert await bob2.expect("call:ended") == cancelled
        assert alice.unread() == [] and bob2.unread() == []

    await play(port, signalling, case, scenario)


async def test_grace_passes_then_the_token_is_stale(start_server: StartServer, case: str) -> None:
    port, signalling = await serve(start_server, reconnect_grace=SHORT_GRACE)

    async def scenario(scene: Scene) -> None:
        alice, token, call_id = scene.alice, scene.token, scene.call_id
        loop = asyncio.get_running_loop()
        await scene.cut_bob()
        away = loop.time()
        # Nobody comes back: at the end of the grace the call ends for alice, by bob.
        assert await alice.expect("call:ended") == {"callId": call_id, "by": "bob", "reason": "disconnected"}
        waited = loop.time() - away  # alice heard of the cut a moment after the server noticed it
        assert SHORT_GRACE * 0.7 <= waited <= SHORT_GRACE + 0.5, waited
        # bob is offline now: calling him says so.
        offline = await alice.call("call:initiate", {"to": "bob", "callType": "video"})
        assert offline["ok"] is False and offline["code"] == "USER_OFFLINE", offline

        # His token has expired with the grace: a plain join, no call.
        bob2 = await scene.bob_again("bob (late)")
        ack, joined = await bob2.join("bob", token)
        assert ack == {"ok": True, "userId": "bob", "socketId": bob2.sio.get_sid("/")}
        assert joined.get("resumed") in (None, False) and "call" not in joined, joined
        assert alice.unread() == [] and bob2.unread() == []

    await play(port, signalling, case, scenario)


async def test_resume_while_the_old_connection_looks_alive(start_server: StartServer, case: str) -> None:
    """Half-open: bob's old connection is frozen (no reset, no FIN) and his heartbeat has not yet
    failed, so the server still thinks he is there; his token takes the session back all the same."""
    port, signalling = await serve(start_server, reconnect_grace=GRACE, ping_interval=25.0, ping_timeout=20.0)

    async def scenario(scene: Scene) -> None:
        alice, bob, token, call_id = scene.alice, scene.bob, scene.token, scene.call_id
        assert scene.proxy.freeze() >= 1

        bob2 = await scene.bob_again("bob (elsewhere)", direct=True)  # another network: straight to the server
        sid2 = bob2.sio.get_sid("/")
        ack, joined = await bob2.join("bob", token)
        assert ack == {"ok": True, "userId": "bob", "socketId": sid2, "resumed": True}
        assert joined.pop("resumeToken") != token
        assert joined == {
            "userId": "bob",
            "socketId": sid2,
            "resumed": True,
            "call": {"callId": call_id, "peer": "alice", "role": "callee", "state": "connected",
                     "callType": "video"},
        }
        back = {"callId": call_id, "userId": "bob"}
        assert await bob2.expect("call:reconnected") == back
        assert await alice.expect("call:reconnected") == back  # it never waited: no call:reconnecting

        ok = {"ok": True, "callId": call_id}
        candidate = {"candidate": "candidate:7 1 udp 1 127.0.0.1 7000 typ host", "sdpMid": "0"}
        assert await alice.call("ice:candidate", {"to": "bob", "candidate": candidate}) == ok
        assert await bob2.expect("ice:candidate") == {"candidate": candidate, "from": "alice", "callId": call_id}
        await hang_up(alice, bob2, call_id)
        assert bob.unread() == []  # the frozen connection delivered nothing more

    await play(port, signalling, case, scenario)
