"""Issue 12 end to end with the real socket.io-client 4.8 under Node: a call survives a network blip
(Socket.IO connection state recovery and the signalling reconnect grace). Each test serves the
signalling app here (loopback, port 0) with recovery on, puts a TCP proxy (``tests/_tcpproxy.py``)
in front of it for bob, and runs one scenario of ``tests/interop/recovery.mjs``, which plays alice
(straight to the server) and bob (through the proxy) and asserts what each receives.

The script asks this side for what only it can do or see, one line at a time ("@@ COMMAND" on its
stdout, "ok [JSON]" or "fail WHY" on its stdin): cut bob's connections, keep the network down,
and wait (bounded) for the server to reach a state (sockets gone, sessions closed). Its "TIME"
lines are the measured times; they are printed (``pytest -s`` shows them).

Afterwards the server must hold nothing: no user, no call, no timer, no socket, no session.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest
import trio

from _interop import NEEDS_NODE, NODE, StartServer, run_controlled
from _paths import INTEROP
from _raw import eventually
from _tcpproxy import TcpProxy
from callbox import SocketIO
from callbox.signalling import MemoryRegistry, Signalling, install

SCRIPT = INTEROP / "recovery.mjs"
SCENARIO_LIMIT = 60  # s: the script gives up by itself after 45
STATE_WAIT = 3.0  # s: the longest the server may take to reach a state the script waits for
MODES = ["websocket", "polling", "default"]

pytestmark = NEEDS_NODE


class Served:
    """The signalling app served on loopback, the proxy in front of it for bob, and the answers to
    the script's commands."""

    def __init__(self, app: SocketIO, signalling: Signalling, port: int, proxy: TcpProxy) -> None:
        self.app = app
        self.signalling = signalling
        self.port = port
        self.proxy = proxy
        self.times: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, start_server: StartServer, nursery: trio.Nursery, **settings: Any) -> Served:
        app = SocketIO()
        signalling = install(app)
        port = await start_server(app, **settings)
        proxy = TcpProxy(port)
        await nursery.start(proxy.serve)
        return cls(app, signalling, port, proxy)

    # -- what the server holds ---------------------------------------------------------------------

    def metric(self, name: str, *labels: str) -> float:
        metric: Any = self.app.metrics.metrics.get(name)
        return 0.0 if metric is None else float(metric.get(*labels))

    def sessions(self) -> int:
        return int(sum(self.metric("callbox_connections", t) for t in ("polling", "websocket")))

    def sockets(self) -> dict[str, Any]:
        return self.app.namespaces["/"].sockets

    def state(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions(),
            "recoveredElsewhere": self.metric("callbox_sessions_closed_total", "recovered elsewhere"),
            "sockets": sorted(self.sockets()),
            "staleTcp": len(self.proxy.stale),
        }

    def window(self) -> float:
        return float(self.app.config.recovery_window)

    async def settled(self) -> None:
        """Every client has gone: the server lets go of everything (a detached socket within its
        recovery window at most)."""
        registry = self.signalling.registry
        assert isinstance(registry, MemoryRegistry)

        def left() -> dict[str, Any]:
            return {
                k: v
                for k, v in {
                    "users": dict(registry.users),
                    "calls": dict(registry.calls),
                    "timers": dict(self.signalling.timers),
                    "graces": dict(self.signalling.graces),
                    "sockets": list(self.sockets()),
                    "pids": list(self.app.namespaces["/"].by_pid),
                    "sessions": self.sessions(),
                }.items()
                if v
            }

        with contextlib.suppress(AssertionError):  # the assertion below says what is left
            await eventually(lambda: not left(), max(5.0, self.window() + STATE_WAIT))
        assert left() == {}

    # -- the script's commands ---------------------------------------------------------------------

    async def command(self, line: str) -> str:
        name, *args = line.split()
        try:
            if name == "cut":
                return "ok " + json.dumps({"links": self.proxy.cut(args[0])})  # type: ignore[arg-type]
            if name == "hold":
                self.proxy.hold()
            elif name == "release":
                self.proxy.release()
            elif name == "socket-gone":
                # the detached socket goes when its recovery window has passed
                await eventually(lambda: args[0] not in self.sockets(), self.window() + STATE_WAIT,
                                 f"socket {args[0]} to go")
            elif name == "all-gone":
                await eventually(lambda: not self.sockets(), max(STATE_WAIT, self.window() + STATE_WAIT),
                                 "every socket to go")
            elif name == "sessions":
                sessions, elsewhere = int(args[0]), float(args[1])

                def reached() -> bool:
                    return self.sessions() == sessions and self.metric(
                        "callbox_sessions_closed_total", "recovered elsewhere") == elsewhere

                await eventually(reached, STATE_WAIT, f"{sessions} sessions, {elsewhere} recovered elsewhere")
                return "ok " + json.dumps(self.state())
            else:
                return f"fail unknown command {line!r}"
        except AssertionError as exc:
            return f"fail {' '.join(str(exc).split())}; server: {json.dumps(self.state())}"
        return "ok"

    async def run(self, scenario: str, mode: str, **env: str) -> list[dict[str, Any]]:
        """Run one scenario; the times it measured."""
        assert NODE is not None
        argv = [NODE, str(SCRIPT), f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.proxy.port}",
                scenario, mode]
        times = await run_controlled(
            argv, self.command, SCENARIO_LIMIT, label="recovery time (ms)", env={**os.environ, **env}
        )
        self.times.extend(times)
        return times


@pytest.fixture
async def served(start_server: StartServer, nursery: trio.Nursery, request: pytest.FixtureRequest) -> Served:
    return await Served.start(start_server, nursery, **request.param)


# Recovery and grace long next to a test. Heartbeats far apart: the cuts come while the clients are
# idle, when a polling client always has a GET waiting (only a ping would answer it), so the server
# sees every cut on the wire at once, over either transport, before bob's client is back.
BLIP = {"reconnect_grace": 10, "recovery_window": 10, "ping_interval": 25, "ping_timeout": 20}
# The grace passes during the test. The server sees the cut on the wire at once unless it came while
# a polling client had no request open; then the longest it may take to notice is a missed
# heartbeat, ping_interval + ping_timeout: short, but not so short that a loaded machine misses a
# pong of alice's (a ping timeout of 0.5 s did, with three runs at once on two CPUs).
GRACE = {"reconnect_grace": 1, "recovery_window": 1, "ping_interval": 1, "ping_timeout": 2}
# Half-open: heartbeats far apart, so that only the recovery can close bob's old session in time.
HALF_OPEN = {"reconnect_grace": 10, "recovery_window": 10, "ping_interval": 25, "ping_timeout": 20}
# A clean leave: recovery on, a short window so that a detached socket goes within the test.
LEAVE = {"reconnect_grace": 10, "recovery_window": 2}


@pytest.mark.parametrize("served", [BLIP], indirect=True, ids=["blip"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_blip_keeps_the_call(served: Served, mode: str) -> None:
    """bob's connection is cut (a reset, then a close with the network down while alice sends an
    ICE restart offer and three candidates); his client recovers its socket by itself both times,
    gets the four events exactly, and both are told he is back; the call never ends."""
    await served.run("blip", mode)
    assert served.metric("callbox_recoveries_total", "recovered") == 2
    assert served.metric("callbox_reconnect_graces_total", "returned") == 2
    assert served.metric("callbox_reconnect_graces_total", "expired") == 0
    await served.settled()


@pytest.mark.parametrize("served", [GRACE], indirect=True, ids=["grace"])
@pytest.mark.parametrize("away", ["manual", "held"])
@pytest.mark.parametrize("mode", MODES)
async def test_the_grace_expires(served: Served, mode: str, away: str) -> None:
    """bob stays away past the grace (his client connects again only when told to, or keeps trying
    while the network stays down): alice gets call:ended at its end; bob is a new socket later."""
    cfg = served.app.config
    detect = cfg.ping_interval + cfg.ping_timeout
    await served.run("grace", mode, GRACE=str(cfg.reconnect_grace), DETECT=str(detect), AWAY=away)
    assert served.metric("callbox_reconnect_graces_total", "expired") == 1
    assert served.metric("callbox_reconnect_graces_total", "returned") == 0
    # bob's client offered his old pid: the socket had gone with its window
    assert served.metric("callbox_recoveries_total", "unknown") == 1
    assert served.metric("callbox_recoveries_total", "recovered") == 0
    await served.settled()


@pytest.mark.parametrize("served", [HALF_OPEN], indirect=True, ids=["half-open"])
@pytest.mark.parametrize("mode", MODES)
async def test_half_open_blips_all_recover(served: Served, mode: str) -> None:
    """Three times, the server keeps bob's old connection (open and silent) while his client
    reconnects: the socket moves to the new connection each time, with what alice sent into the
    old one, and the server closes the old session as "recovered elsewhere"."""
    await served.run("halfopen", mode)
    assert served.metric("callbox_recoveries_total", "recovered") == 3
    assert served.metric("callbox_sessions_closed_total", "recovered elsewhere") == 3
    assert served.metric("callbox_reconnect_graces_total", "expired") == 0
    await served.settled()


@pytest.mark.parametrize("served", [LEAVE], indirect=True, ids=["leave"])
@pytest.mark.parametrize("how", ["disconnect", "engine-close"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_clean_leave_ends_the_call_at_once(served: Served, mode: str, how: str) -> None:
    """bob's socket.disconnect() (a Socket.IO DISCONNECT), or his Engine.IO session closed by his
    client (a close packet over polling, a close frame over WebSocket): the call ends at once."""
    await served.run("leave", mode, LEAVE=how)
    assert served.metric("callbox_reconnect_graces_total", "returned") == 0
    assert served.metric("callbox_reconnect_graces_total", "expired") == 0
    await served.settled()
