"""Heartbeat, connect timeout and upgrade timing, on trio's virtual clock: a 25 s ping interval
takes milliseconds. Both the server and the raw clients run in the test's own Trio run, over real
loopback sockets, so every timer (the server's pings, its timeouts, our ``fail_after``) is virtual.

The clock: ``MockClock(autojump_threshold=AUTOJUMP)`` rather than pytest-trio's
``autojump_clock`` (threshold 0). With threshold 0 the clock jumps to the next deadline the moment
no task is runnable and a zero-timeout poll of the sockets shows nothing, including the instant
between a write on one end of a loopback connection and the kernel marking the other end
readable. On Linux that delivery almost always completes inside the ``send`` call, but not always
under load, and a jump in that window skips a whole ping interval and makes the test flaky. A few
milliseconds of real idleness before each jump closes the window at a cost of milliseconds per
jump; virtual time still moves only by jumps, so the times asserted below are exact.

The same rules without sockets or a clock, on :class:`EngineSession` with explicit ``now`` values:
tests/engineio/test_engineio_session.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

import callbox
from _raw import (
    RS,
    HTTPConnection,
    eio_target,
    handshake,
    open_ws,
    parse_open,
    poll,
    post,
    post_ok,
    request,
    wait_session_gone,
    ws_recv,
    ws_send,
)
from callbox.engineio import CloseReason

AUTOJUMP = 0.005  # real seconds of idleness before the virtual clock jumps (see above)

PING_INTERVAL = 25.0  # the defaults, in virtual seconds
PING_TIMEOUT = 20.0
CONNECT_TIMEOUT = 10.0  # shorter than a ping interval, so the two cannot be confused
# Virtual slack on timing assertions: nothing here should take any virtual time at all.
EPS = 0.01
# A bound on waits that the server ends by a timer: longer than any timer under test.
LONG = 200.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP)


class Echo:
    def __init__(self) -> None:
        self.closed: list[tuple[str, CloseReason, float]] = []

    async def on_open(self, sock: callbox.EngineSocket) -> None:
        pass

    async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
        sock.send(data)

    async def on_close(self, sock: callbox.EngineSocket, reason: CloseReason) -> None:
        self.closed.append((sock.sid, reason, trio.current_time()))

    async def run(self) -> None:
        await trio.sleep_forever()


def now() -> float:
    return trio.current_time()


async def alive(port: int, sid: str) -> bool:
    """A noop POST: "ok" while the session lives (and it changes nothing), 400 once it is gone."""
    resp = await post(port, sid, "6")
    if resp.status == 200:
        return True
    assert resp.json()["code"] == 1, resp
    return False


# -- the server pings --------------------------------------------------------------------------


async def test_pings_every_interval_over_polling(start_server: Any, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    last = now()
    for _ in range(10):  # 250 s: far past ping_interval + ping_timeout
        assert await poll(port, sid, timeout=LONG) == ["2"]
        assert now() - last == pytest.approx(PING_INTERVAL, abs=EPS)
        await post_ok(port, sid, "3")
        last = now()
    await post_ok(port, sid, "4still here")
    assert await poll(port, sid) == ["4still here"]
    assert app.closed == []


async def test_pings_every_interval_over_websocket(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    ws = await open_ws(nursery, port)
    parse_open(str(await ws_recv(ws)))
    last = now()
    for _ in range(10):
        assert await ws_recv(ws, timeout=LONG) == "2"
        assert now() - last == pytest.approx(PING_INTERVAL, abs=EPS)
        await ws_send(ws, "3")
        last = now()
    await ws_send(ws, "4still here")
    assert await ws_recv(ws) == "4still here"
    assert app.closed == []


async def test_late_pong_within_timeout_keeps_session(start_server: Any, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    assert await poll(port, sid, timeout=LONG) == ["2"]
    await trio.sleep(PING_TIMEOUT - 0.5)  # virtual: answer just before the deadline
    await post_ok(port, sid, "3")
    pong = now()
    assert pong - t0 == pytest.approx(PING_INTERVAL + PING_TIMEOUT - 0.5, abs=EPS)
    # The next ping comes a whole interval after the pong.
    assert await poll(port, sid, timeout=LONG) == ["2"]
    assert now() - pong == pytest.approx(PING_INTERVAL, abs=EPS)
    assert app.closed == []


async def test_messages_do_not_replace_pongs(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    # Traffic is not a heartbeat: only a pong answers a ping.
    app = Echo()
    port = await start_server(app)
    ws = await open_ws(nursery, port)
    sid = parse_open(str(await ws_recv(ws)))["sid"]
    t0 = now()
    assert await ws_recv(ws, timeout=LONG) == "2"
    with pytest.raises(ConnectionClosed):
        while True:
            await trio.sleep(1)  # virtual: chatter every second, no pong
            await ws_send(ws, "4chatter")
            assert await ws_recv(ws, timeout=LONG) == "4chatter"
    assert [(s, r) for s, r, _ in app.closed] == [(sid, CloseReason.PING_TIMEOUT)]
    assert app.closed[0][2] - t0 == pytest.approx(PING_INTERVAL + PING_TIMEOUT, abs=EPS)


async def test_a_handler_that_waits_past_the_ping_is_not_cancelled(
    start_server: Any, nursery: trio.Nursery, clock: Any
) -> None:
    # The reader runs the handlers inside the cancel scope that wakes it (callbox/alarms.py); only a
    # parked reader is woken, so a handler that waits (for a store, for another client) finishes
    # even though the session's alarm rings meanwhile. The ping goes once the reader is free.
    class Slow(Echo):
        async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
            await trio.sleep(PING_INTERVAL + 5)  # past the ping's deadline
            sock.send(f"done {data!s}")

    app = Slow()
    port = await start_server(app)
    ws = await open_ws(nursery, port)
    parse_open(str(await ws_recv(ws)))
    t0 = now()
    await ws_send(ws, "4slow")
    assert await ws_recv(ws, timeout=LONG) == "4done slow"
    assert now() - t0 == pytest.approx(PING_INTERVAL + 5, abs=EPS)
    assert await ws_recv(ws, timeout=LONG) == "2"
    assert now() - t0 == pytest.approx(PING_INTERVAL + 5, abs=EPS)
    await ws_send(ws, "3")
    assert app.closed == []


# -- a silent client is dropped ----------------------------------------------------------------


async def test_silent_polling_session_is_gone_by_interval_plus_timeout(start_server: Any, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    await trio.sleep_until(t0 + PING_INTERVAL - EPS)
    assert await alive(port, sid)  # not before ping_interval
    await trio.sleep_until(t0 + PING_INTERVAL + PING_TIMEOUT + EPS)
    assert not await alive(port, sid)
    assert [(s, r) for s, r, _ in app.closed] == [(sid, CloseReason.PING_TIMEOUT)]
    assert app.closed[0][2] - t0 == pytest.approx(PING_INTERVAL + PING_TIMEOUT, abs=EPS)


async def test_silent_session_with_pending_poll(start_server: Any, clock: Any) -> None:
    # A client that keeps polling but never answers the ping: its pending GET is released when the
    # session times out, and the session is gone.
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    assert await poll(port, sid, timeout=LONG) == ["2"]
    resp = await request(port, "GET", eio_target("polling", sid), timeout=LONG)
    assert now() - t0 == pytest.approx(PING_INTERVAL + PING_TIMEOUT, abs=EPS)
    assert resp.status == 200
    # engine.io answers a GET pending at a ping timeout with a close packet ("1"); a noop ("6")
    # followed by 400s ends the client's session as well.
    assert resp.body in (b"1", b"6")
    await wait_session_gone(port, sid)
    assert [(s, r) for s, r, _ in app.closed] == [(sid, CloseReason.PING_TIMEOUT)]


async def test_silent_websocket_session_is_closed(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    ws = await open_ws(nursery, port)
    sid = parse_open(str(await ws_recv(ws)))["sid"]
    t0 = now()
    assert await ws_recv(ws, timeout=LONG) == "2"
    assert now() - t0 == pytest.approx(PING_INTERVAL, abs=EPS)
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws, timeout=LONG)
    assert now() - t0 == pytest.approx(PING_INTERVAL + PING_TIMEOUT, abs=EPS)
    assert [(s, r) for s, r, _ in app.closed] == [(sid, CloseReason.PING_TIMEOUT)]


async def test_unsolicited_pong_does_not_delay_the_ping(start_server: Any, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    await trio.sleep(10)  # virtual: well inside the first interval
    await post_ok(port, sid, "3")  # nothing asked for it
    assert await poll(port, sid, timeout=LONG) == ["2"]
    assert now() - t0 == pytest.approx(PING_INTERVAL, abs=EPS)


# -- heartbeat across an upgrade -----------------------------------------------------------------


async def _upgrade(nursery: trio.Nursery, port: int, sid: str) -> Any:
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    await ws_send(ws, "5")
    return ws


async def test_heartbeat_carries_over_an_upgrade(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    await trio.sleep(10)  # virtual: upgrade in the middle of the first interval
    ws = await _upgrade(nursery, port, sid)
    # The timer started at the handshake: the first ping comes 25 s after it, on the WebSocket.
    assert await ws_recv(ws, timeout=LONG) == "2"
    assert now() - t0 == pytest.approx(PING_INTERVAL, abs=EPS)
    await ws_send(ws, "3")
    pong = now()
    assert await ws_recv(ws, timeout=LONG) == "2"
    assert now() - pong == pytest.approx(PING_INTERVAL, abs=EPS)
    # ...and no answer closes it.
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws, timeout=LONG)
    assert now() - pong == pytest.approx(PING_INTERVAL + PING_TIMEOUT, abs=EPS)
    assert [(s, r) for s, r, _ in app.closed] == [(sid, CloseReason.PING_TIMEOUT)]


async def test_ping_queued_on_polling_is_flushed_on_the_websocket(
    start_server: Any, nursery: trio.Nursery, clock: Any
) -> None:
    # The ping falls due while the client is not polling; it upgrades afterwards and must still
    # get it (on the WebSocket), and answering it there keeps the session.
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    await trio.sleep(PING_INTERVAL + 5)  # virtual: the ping falls due, nobody polls
    ws = await _upgrade(nursery, port, sid)
    assert await ws_recv(ws) == "2"
    await ws_send(ws, "3")
    await trio.sleep_until(t0 + PING_INTERVAL + PING_TIMEOUT + 5)
    await ws_send(ws, "4alive")
    assert await ws_recv(ws) == "4alive"
    assert app.closed == []


async def test_stalled_upgrade_of_a_silent_client(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    # The client probes, gets 3probe, then neither sends "5" nor polls: the session must not stay
    # in the middle of an upgrade forever. It is gone by ping_interval + ping_timeout at the latest,
    # and the probe WebSocket is closed.
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    with pytest.raises(ConnectionClosed):
        msg = await ws_recv(ws, timeout=LONG)
        raise AssertionError(f"the probe WebSocket got {msg!r}")
    assert now() - t0 <= PING_INTERVAL + PING_TIMEOUT + EPS
    # The session itself may outlive its probe (back on polling), but not its heartbeat.
    await trio.sleep_until(t0 + PING_INTERVAL + PING_TIMEOUT + EPS)
    await wait_session_gone(port, sid)
    assert len(app.closed) == 1 and app.closed[0][0] == sid
    assert app.closed[0][2] - t0 <= PING_INTERVAL + PING_TIMEOUT + EPS


async def test_stalled_upgrade_of_a_polling_client(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    # The probe WebSocket hangs after "3probe" (its "5" never comes) while the client goes on
    # polling and answering pings, as engine.io-client does until its probe is answered. engine.io
    # gives up on such an upgrade after upgradeTimeout (10 s): it closes the probe WebSocket and the
    # session carries on over polling, with its pings. The session must survive the stall.
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    pings = noops = 0
    while now() - t0 < 2 * (PING_INTERVAL + PING_TIMEOUT):
        resp = await request(port, "GET", eio_target("polling", sid), timeout=LONG)
        assert resp.status == 200, (now() - t0, resp.status, resp.body)
        packets = resp.text.split(RS)
        for packet in packets:
            if packet == "2":
                pings += 1
                await post_ok(port, sid, "3")
            elif packet == "6":
                noops += 1
            else:
                raise AssertionError(f"unexpected {packet!r}")
        if packets == ["6"]:
            await trio.sleep(0.5)  # virtual; a real client polls again at once: this keeps the loop finite
    assert pings >= 3, (pings, noops)
    assert app.closed == []
    # The stalled probe was given up on: its WebSocket is closed.
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws, timeout=1)


async def test_abandoned_probe_falls_back_to_polling(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    # The probe WebSocket is closed after 3probe: the session goes on polling, heartbeat included.
    app = Echo()
    port = await start_server(app)
    sid, _ = await handshake(port)
    t0 = now()
    ws = await open_ws(nursery, port, sid)
    await ws_send(ws, "2probe")
    assert await ws_recv(ws) == "3probe"
    await ws.aclose()
    assert await poll(port, sid, timeout=LONG) == ["2"]
    assert now() - t0 == pytest.approx(PING_INTERVAL, abs=EPS)
    await post_ok(port, sid, "3")
    await post_ok(port, sid, "4polling")
    assert await poll(port, sid) == ["4polling"]
    # And a later upgrade works.
    ws2 = await _upgrade(nursery, port, sid)
    await ws_send(ws2, "4ws")
    assert await ws_recv(ws2) == "4ws"


# -- Socket.IO connect timeout -----------------------------------------------------------------


def sio_app() -> callbox.SocketIO:
    app = callbox.SocketIO()

    @app.on_connect
    async def connect(socket: callbox.Socket, auth: Any) -> None:
        if auth == {"refuse": True}:
            raise callbox.ConnectionRefused("no")

    app.of("/admin")
    return app


async def test_connect_timeout_over_polling(start_server: Any, clock: Any) -> None:
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    sid, _ = await handshake(port)
    t0 = now()
    assert await poll(port, sid, timeout=LONG) == ["1"]
    assert now() - t0 == pytest.approx(CONNECT_TIMEOUT, abs=EPS)
    await wait_session_gone(port, sid)


async def test_connect_timeout_over_websocket(start_server: Any, nursery: trio.Nursery, clock: Any) -> None:
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    ws = await open_ws(nursery, port)
    parse_open(str(await ws_recv(ws)))
    t0 = now()
    assert await ws_recv(ws, timeout=LONG) == "1"
    assert now() - t0 == pytest.approx(CONNECT_TIMEOUT, abs=EPS)
    with pytest.raises(ConnectionClosed):
        await ws_recv(ws)


async def test_connect_timeout_is_not_applied_before_its_time(start_server: Any, clock: Any) -> None:
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    sid, _ = await handshake(port)
    t0 = now()
    await trio.sleep_until(t0 + CONNECT_TIMEOUT - 0.5)
    await post_ok(port, sid, "40")  # just in time
    packets = await poll(port, sid)
    assert len(packets) == 1 and packets[0].startswith('40{"sid":"'), packets
    await trio.sleep_until(t0 + CONNECT_TIMEOUT + 5)
    assert await alive(port, sid)


async def test_refused_connect_does_not_stop_the_connect_timeout(start_server: Any, clock: Any) -> None:
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    sid, _ = await handshake(port)
    t0 = now()
    await post_ok(port, sid, '40{"refuse":true}')
    assert await poll(port, sid) == ['44{"message":"no"}']
    await post_ok(port, sid, "40/nope,")
    assert await poll(port, sid) == ['44/nope,{"message":"Invalid namespace"}']
    assert await poll(port, sid, timeout=LONG) == ["1"]
    assert now() - t0 == pytest.approx(CONNECT_TIMEOUT, abs=EPS)
    await wait_session_gone(port, sid)


async def test_connected_to_another_namespace_counts(start_server: Any, clock: Any) -> None:
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    sid, _ = await handshake(port)
    t0 = now()
    await post_ok(port, sid, "40/admin,")
    packets = await poll(port, sid)
    assert packets[0].startswith('40/admin,{"sid":"'), packets
    await trio.sleep_until(t0 + CONNECT_TIMEOUT + 5)
    assert await alive(port, sid)


async def test_pending_poll_is_released_at_connect_timeout(start_server: Any, clock: Any) -> None:
    # Same as the first, with the GET held from the start on one keep-alive connection.
    port = await start_server(sio_app(), connect_timeout=CONNECT_TIMEOUT)
    sid, _ = await handshake(port)
    t0 = now()
    conn = await HTTPConnection.open(port)
    try:
        await conn.send_request("GET", eio_target("polling", sid))
        resp = await conn.receive_response(timeout=LONG)
    finally:
        await conn.aclose()
    assert (resp.status, resp.body) == (200, b"1")
    assert now() - t0 == pytest.approx(CONNECT_TIMEOUT, abs=EPS)
