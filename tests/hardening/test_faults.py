"""Faults against a real ``python -m callbox`` (ping interval 1 s, timeout 1 s: a silent peer is
declared dead within 2 s): a call partner killed with SIGKILL, frozen with SIGSTOP (a half-open
connection), or whose connection is reset in the middle of a frame, an upgrade, a poll or a POST.
Each is a lost connection: the other party must get ``call:reconnecting`` as soon as the server
notices (at once for a reset, within pingInterval + pingTimeout for silence), then ``call:ended``
(reason ``disconnected``) when the reconnect grace (1 s here) ends; afterwards the server holds no
user, no call and no session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from _raw import HTTPConnection, eio_target, server_has_read

from ._sig import Peer, call_pair, joined, ringing, unique
from ._wire import TEXT, Proc, RawWS, clean_env, frame, spawn, text, wait_metrics, wall

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

PING_INTERVAL = 1.0
PING_TIMEOUT = 1.0
BOUND = PING_INTERVAL + PING_TIMEOUT
GRACE = 1.0
VICTIM = Path(__file__).with_name("_victim.py")


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT),
               "--reconnect-grace", str(GRACE),
               "--connection-rate-per-address", "1000", "--connection-burst-per-address", "1000") as proc:
        yield proc


def figure(name: str, **values: Any) -> None:
    print(f"\nFIGURES {name}: " + json.dumps(values))


def rst(stream: Any) -> None:
    """Make the next close of this trio stream a TCP reset (SO_LINGER 0)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def empty(server: Proc) -> None:
    """The server holds nothing: no user, no call, no Engine.IO session (the /metrics request's own
    TCP connection is the only one open)."""
    await wait_metrics(server.port, {"callbox_users_online": 0, "callbox_calls_active": 0,
                                     'callbox_connections{transport="polling"}': 0,
                                     'callbox_connections{transport="websocket"}': 0,
                                     "callbox_tcp_connections": 1}, timeout=BOUND + 5)


async def told_lost(peer: Peer, call_id: str, start: float, timeout: float) -> float:  # noqa: ASYNC109
    """The partner hears of the loss (``call:reconnecting``, when the server notices it), then of the
    end (``call:ended``, disconnected) when the grace ends. Returns the seconds to the first."""
    await peer.expect("call:reconnecting", timeout=timeout, callId=call_id)
    noticed = wall() - start
    ended = await peer.expect("call:ended", timeout=GRACE + 1, callId=call_id)
    assert ended["reason"] == "disconnected", ended
    assert wall() - start >= GRACE, "the call waited for the grace"
    return noticed


async def victim_in_call(nursery: trio.Nursery, port: int, transport: str) -> tuple[subprocess.Popen[str], Peer, str]:
    user = unique("victim")
    proc = subprocess.Popen([sys.executable, str(VICTIM), str(port), user, transport],  # noqa: ASYNC220
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout is not None
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    assert line.strip() == "JOINED", (line, proc.stderr.read() if proc.stderr else "")
    caller = await joined(nursery, port, "caller")
    answer = await caller.emit("call:initiate", {"to": user, "callType": "video"})
    assert answer["ok"] is True, answer
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    assert line.split() == ["ACCEPTED", answer["callId"]], line
    await caller.expect("call:accepted", callId=answer["callId"])
    return proc, caller, answer["callId"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_partner_process_killed_or_frozen(how: str, transport: str, server: Proc, nursery: trio.Nursery) -> None:
    proc, caller, call_id = await victim_in_call(nursery, server.port, transport)
    try:
        start = wall()
        os.kill(proc.pid, getattr(signal, how))
        took = await told_lost(caller, call_id, start, BOUND + 3)
        figure(f"{how} {transport}", partner_told_after_s=round(took, 3), bound_s=BOUND)
        # SIGKILL: the kernel closes the socket, the server knows at once (a GET aborted, a WebSocket
        # ended). SIGSTOP: the connection stays open and silent; only the heartbeat can tell.
        assert took < (0.5 if how == "SIGKILL" else BOUND + 0.5), took
        if how == "SIGSTOP":
            assert took > PING_TIMEOUT - 0.1, took  # it was the heartbeat, not something else
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    await caller.close()
    await empty(server)


async def test_reset_in_the_middle_of_a_frame(server: Proc, nursery: trio.Nursery) -> None:
    ws, callee, call_id = await ringing(nursery, server.port)
    await ws.send(text("42" + json.dumps(["ice:candidate", {"to": callee.user_id, "candidate": "x" * 500}]))[:100])
    start = wall()
    rst(ws.stream)
    await ws.aclose()
    took = await told_lost(callee, call_id, start, BOUND + 1)
    figure("reset mid-frame", partner_told_after_s=round(took, 3))
    assert took < 0.5
    await callee.close()
    await empty(server)


async def test_reset_in_the_middle_of_an_upgrade(server: Proc, nursery: trio.Nursery) -> None:
    """A polling client probing a WebSocket vanishes after ``3probe`` (the probe and its pending GET
    are both reset): the session ends at once; its partner is told."""
    a, b, call_id = await call_pair(nursery, server.port, "upg", ("polling", "websocket"))
    ws, _ = await RawWS.open(server.port, a.eio_sid)
    await ws.send(text("2probe"))
    opcode, payload = await ws.next_frame()
    assert (opcode, payload) == (TEXT, b"3probe")
    # The Peer's pending GET is on a connection of its own: reset it too, as a dead client's kernel would.
    a._stop.cancel()
    start = wall()
    rst(ws.stream)
    await ws.aclose()
    took = await told_lost(b, call_id, start, BOUND + 2)
    figure("reset mid-upgrade", partner_told_after_s=round(took, 3), bound_s=BOUND)
    assert took < BOUND + 0.5
    await b.close()
    await empty(server)


async def test_reset_in_the_middle_of_a_poll(server: Proc, nursery: trio.Nursery) -> None:
    """A polling client's pending GET is reset: the client has gone, its partner is told at once."""
    b = await joined(nursery, server.port, "mpb")
    conn = await HTTPConnection.open(server.port)
    resp = await conn.request("GET", eio_target("polling"))
    sid = json.loads(resp.text[1:])["sid"]
    user = unique("mpa")
    for body in ("40", '42["user:join",{"userId":"' + user + '"}]',
                 '42["call:initiate",{"to":"' + b.user_id + '","callType":"audio"}]'):
        await conn.request("POST", eio_target("polling", sid), body.encode())
    call_id = (await b.expect("call:incoming"))["callId"]
    await conn.request("GET", eio_target("polling", sid))  # drain what is queued
    await conn.send_request("GET", eio_target("polling", sid))
    await server_has_read(conn.stream)  # now pending
    start = wall()
    rst(conn.stream)
    await conn.aclose()
    took = await told_lost(b, call_id, start, BOUND + 1)
    figure("reset mid-poll", partner_told_after_s=round(took, 3))
    assert took < 0.5
    await b.close()
    await empty(server)


async def test_reset_in_the_middle_of_a_post_then_silence(server: Proc, nursery: trio.Nursery) -> None:
    """A polling client resets a POST half way and never comes back (no GET either): the half POST
    changes nothing, and the heartbeat ends the session within the bound."""
    b = await joined(nursery, server.port, "mpob")
    conn = await HTTPConnection.open(server.port)
    resp = await conn.request("GET", eio_target("polling"))
    sid = json.loads(resp.text[1:])["sid"]
    user = unique("mpoa")
    for body in ("40", '42["user:join",{"userId":"' + user + '"}]',
                 '42["call:initiate",{"to":"' + b.user_id + '","callType":"audio"}]'):
        await conn.request("POST", eio_target("polling", sid), body.encode())
    call_id = (await b.expect("call:incoming"))["callId"]
    await conn.aclose()
    half = await trio.open_tcp_stream("127.0.0.1", server.port)
    await half.send_all((f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         '42["call:end",').encode())
    start = wall()
    rst(half)
    await half.aclose()
    took = await told_lost(b, call_id, start, BOUND + 3)  # ended "disconnected", not "cancelled":
    figure("reset mid-POST, then silence", partner_told_after_s=round(took, 3), bound_s=BOUND)  # the half POST
    assert took < BOUND + 0.5  # was not handled
    await b.close()
    await empty(server)


_ = frame
