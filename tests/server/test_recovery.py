"""Socket.IO connection state recovery on the wire, with a raw polling client: the pid and the
offsets, a lost connection's socket kept and taken back with what it missed, and every refusal
(unknown pid, throttled guesses, an offset no longer covered, the limits, the window's end)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import callbox
from _raw import (
    HTTPConnection,
    eio_target,
    eventually,
    handshake,
    poll,
    post_ok,
    server_has_read,
    wait_session_gone,
)
from callbox import SocketIO
from callbox.server.api import Socket

pytestmark = pytest.mark.socket

WINDOW = 5.0


class App:
    """A Socket.IO app that records what happens to its sockets; ``push`` sends events to one."""

    def __init__(self, decline: bool = False) -> None:
        self.app = SocketIO()
        ns = self.app.of("/")
        self.log: list[tuple[str, str, str]] = []  # (what, socket id, reason)

        @ns.on_connect
        def connect(socket: Socket, auth: Any) -> None:
            if decline:
                socket.recovering = None

        @ns.on_detach
        def detached(socket: Socket, reason: str) -> None:
            self.log.append(("detach", socket.id, reason))

        @ns.on_recover
        def recovered(socket: Socket) -> None:
            self.log.append(("recover", socket.id, ""))

        @ns.on_disconnect
        def gone(socket: Socket, reason: str) -> None:
            self.log.append(("disconnect", socket.id, reason))

    def push(self, socket_id: str, *texts: str) -> list[bool]:
        socket = self.app.of("/").sockets[socket_id]
        return [socket.emit("msg", text) for text in texts]


async def start(start_server: Any, app: App, **settings: Any) -> int:
    port: int = await start_server(app.app, **{"recovery_window": WINDOW, **settings})
    return port


async def connect(port: int, auth: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], list[str]]:
    """A polling session and a CONNECT: (eio sid, the CONNECT answer, the packets after it)."""
    sid, _ = await handshake(port)
    await post_ok(port, sid, "40" + (json.dumps(auth) if auth is not None else ""))
    packets = await poll(port, sid)
    assert packets[0].startswith("40{"), packets
    return sid, json.loads(packets[0][2:]), packets[1:]


def events(packets: list[str]) -> list[list[Any]]:
    out = []
    for p in packets:
        assert p.startswith("42"), p
        out.append(json.loads(p[2:]))
    return out


async def lose(port: int, sid: str, *, unread: bool = False) -> None:
    """The client's connection is lost: its pending GET is dropped without a goodbye. ``unread``:
    what the server had queued is taken first, as a GET the client never got the answer of."""
    if unread:
        await poll(port, sid)
    conn = await HTTPConnection.open(port)
    await conn.send_request("GET", eio_target("polling", sid))
    await server_has_read(conn.stream)
    await conn.aclose()
    await wait_session_gone(port, sid)


async def test_off_the_wire_is_as_before(start_server: Any) -> None:
    app = App()
    port = await start_server(app.app)
    sid, answer, _ = await connect(port)
    assert list(answer) == ["sid"]
    app.push(answer["sid"], "a")
    assert await poll(port, sid) == ['42["msg","a"]']


async def test_on_every_event_carries_its_offset(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    assert sorted(answer) == ["pid", "sid"] and answer["pid"] != answer["sid"]
    app.push(answer["sid"], "a", "b")
    assert events(await poll(port, sid)) == [["msg", "a", "1"], ["msg", "b", "2"]]


async def test_a_lost_connection_is_recovered_with_what_it_missed(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    socket_id, pid = answer["sid"], answer["pid"]
    app.push(socket_id, "a")
    assert events(await poll(port, sid)) == [["msg", "a", "1"]]
    await lose(port, sid)
    assert app.log == [("detach", socket_id, "transport close")]
    assert app.push(socket_id, "b", "c", "d") == [True, True, True]  # kept for its return
    sid2, answer2, missed = await connect(port, {"pid": pid, "offset": "1"})
    assert answer2 == {"sid": socket_id, "pid": pid}
    assert events(missed) == [["msg", "b", "2"], ["msg", "c", "3"], ["msg", "d", "4"]]
    assert app.log[1:] == [("recover", socket_id, "")]
    socket = app.app.of("/").sockets[socket_id]
    assert socket.recovered and socket.connected and not socket.detached  # its window task is cancelled
    app.push(socket_id, "e")
    assert events(await poll(port, sid2)) == [["msg", "e", "5"]]
    assert app.app.recoveries.get("recovered") == 1


async def test_no_offset_means_nothing_was_received(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    _, answer2, missed = await connect(port, {"pid": answer["pid"]})
    assert answer2["sid"] == answer["sid"] and missed == []
    app.push(answer["sid"], "a")
    await lose(port, _, unread=True)
    _, answer3, missed = await connect(port, {"pid": answer["pid"]})
    assert answer3["sid"] == answer["sid"] and events(missed) == [["msg", "a", "1"]]


async def test_a_client_that_closed_its_engine_is_recovered(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    await post_ok(port, sid, "1")  # socket.io.engine.close()
    await wait_session_gone(port, sid)
    assert app.log == [("detach", answer["sid"], "client close")]
    _, answer2, _ = await connect(port, {"pid": answer["pid"], "offset": "0"})
    assert answer2["sid"] == answer["sid"]


async def test_a_namespace_disconnect_is_not_recoverable(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    await post_ok(port, sid, "41")
    await eventually(lambda: app.log or None)
    assert app.log == [("disconnect", answer["sid"], "client namespace disconnect")]
    _, answer2, _ = await connect(port, {"pid": answer["pid"]})
    assert answer2["sid"] != answer["sid"] and answer2["pid"] != answer["pid"]
    assert app.app.recoveries.get("unknown") == 1


async def test_the_window_ends_the_socket(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app, recovery_window=0.3)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    await eventually(lambda: len(app.log) == 2 or None)
    assert app.log == [("detach", answer["sid"], "transport close"), ("disconnect", answer["sid"], "transport close")]
    assert answer["sid"] not in app.app.of("/").sockets
    _, answer2, _ = await connect(port, {"pid": answer["pid"]})
    assert answer2["sid"] != answer["sid"]


async def test_past_the_kept_events_a_detached_socket_ends(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app, recovery_max_events=3)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    assert app.push(answer["sid"], "a", "b", "c") == [True, True, True]  # at the limit: kept
    assert app.push(answer["sid"], "d") == [False]  # past it: refused, and the socket ends
    await eventually(lambda: len(app.log) == 2 or None)
    assert app.log[1] == ("disconnect", answer["sid"], "transport close")
    _, answer2, _ = await connect(port, {"pid": answer["pid"]})
    assert answer2["sid"] != answer["sid"]


async def test_an_offset_no_longer_covered_gets_a_fresh_socket(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app, recovery_max_events=2)
    sid, answer, _ = await connect(port)
    app.push(answer["sid"], "a", "b", "c")  # connected: the oldest is dropped past the limit
    await lose(port, sid, unread=True)
    _, refused, _ = await connect(port, {"pid": answer["pid"], "offset": "0"})  # needs "1": gone
    assert refused["sid"] != answer["sid"]
    assert app.app.recoveries.get("expired_offset") == 1
    # one past what is kept is exactly covered
    _, answer2, missed = await connect(port, {"pid": answer["pid"], "offset": "1"})
    assert answer2["sid"] == answer["sid"] and events(missed) == [["msg", "b", "2"], ["msg", "c", "3"]]


@pytest.mark.parametrize("offset", ["4", "-1", "1.0", "x", 3, None, "\u0661"])
async def test_a_bad_offset_gets_a_fresh_socket(start_server: Any, offset: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    app.push(answer["sid"], "a", "b", "c")
    await lose(port, sid, unread=True)
    auth = {"pid": answer["pid"], "offset": offset} if offset is not None else {"pid": answer["pid"], "offset": "3"}
    _, answer2, _ = await connect(port, auth)
    assert (answer2["sid"] == answer["sid"]) is (offset is None)


async def test_guessing_pids_is_throttled_per_address(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app, recovery_attempts_burst=2, recovery_attempts_per_minute=1)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    for guess in ("guess-1", "guess-2"):
        _, fresh, _ = await connect(port, {"pid": guess})
        assert fresh["sid"] != answer["sid"]
    # out of attempts: even the right pid gets a fresh socket now
    _, fresh, _ = await connect(port, {"pid": answer["pid"]})
    assert fresh["sid"] != answer["sid"]
    assert app.app.recoveries.get("unknown") == 2 and app.app.recoveries.get("throttled") == 1


async def test_a_half_open_connection_is_replaced(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    old_sid, answer, _ = await connect(port)
    app.push(answer["sid"], "a")  # never read by the client, whose connection died silently
    # the server still believes in old_sid (no heartbeat has failed yet)
    sid2, answer2, missed = await connect(port, {"pid": answer["pid"]})
    assert answer2 == {"sid": answer["sid"], "pid": answer["pid"]} and events(missed) == [["msg", "a", "1"]]
    await wait_session_gone(port, old_sid)  # closed: "recovered elsewhere"
    assert app.log == [("recover", answer["sid"], "")]  # no detach, no disconnect
    app.push(answer["sid"], "b")
    assert events(await poll(port, sid2)) == [["msg", "b", "2"]]


async def test_the_app_may_decline(start_server: Any) -> None:
    app = App(decline=True)
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    _, answer2, _ = await connect(port, {"pid": answer["pid"]})
    assert answer2["sid"] != answer["sid"]
    assert app.app.recoveries.get("declined") == 1
    assert answer["sid"] in app.app.of("/").sockets  # still waiting for its window


async def test_shutdown_ends_detached_sockets(start_server: Any) -> None:
    app = App()
    port = await start(start_server, app)
    sid, answer, _ = await connect(port)
    await lose(port, sid)
    await app.app.shutdown()
    assert app.log[-1] == ("disconnect", answer["sid"], callbox.CloseReason.SERVER_SHUTDOWN.value)
    assert app.app.of("/").sockets == {} and app.app.of("/").by_pid == {}


async def test_a_reconnect_is_checked_like_a_new_connection(start_server: Any) -> None:
    """With token auth the CONNECT's token is verified again: a token for another user takes nothing
    back (a fresh socket), a bad one is refused, the right one recovers."""
    import time

    import jwt

    from callbox.signalling import create_app

    secret = "s" * 32
    app = create_app(callbox.Config(auth_secret=secret))
    port = await start_server(app, auth_secret=secret, recovery_window=WINDOW)

    def auth(user: str, **more: Any) -> dict[str, Any]:
        claims = {"sub": user, "exp": int(time.time()) + 600}
        return {"token": jwt.encode(claims, secret, algorithm="HS256"), **more}

    sid, answer, _ = await connect(port, auth("alice"))
    await lose(port, sid)
    _, other, _ = await connect(port, auth("mallory", pid=answer["pid"]))
    assert other["sid"] != answer["sid"]  # someone else's token: a fresh socket of its own
    assert app.recoveries.get("declined") == 1
    refused_sid, _ = await handshake(port)
    await post_ok(port, refused_sid, "40" + json.dumps({"token": "nonsense", "pid": answer["pid"]}))
    assert (await poll(port, refused_sid))[0].startswith("44")  # connect_error: Unauthorized
    _, mine, _ = await connect(port, auth("alice", pid=answer["pid"]))
    assert mine == {"sid": answer["sid"], "pid": answer["pid"]}
