"""Slow consumers against a real ``python -m callbox``: a client that stops reading while its call
partner keeps sending. Its bounded outbox fills, it is disconnected, its partner is told, server
memory stays bounded (RSS sampled every 10 ms), and a call beside it keeps relaying.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from ._sig import call_pair, check_call, joined, percentile, raw_user
from ._wire import PING, Proc, frame, metrics, read_until_closed, spawn, text, wall

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

MAX_OUTBOX = 1 << 20
PING_INTERVAL = 2.0
PING_TIMEOUT = 2.0
OFFER = {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 8_000}  # 56 KB as JSON


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--max-outbox", str(MAX_OUTBOX), "--ping-interval", str(PING_INTERVAL),
               "--ping-timeout", str(PING_TIMEOUT), "--connection-rate-per-address", "1000",
               "--connection-burst-per-address", "1000", "--reconnect-grace", "1") as proc:
        yield proc


def figure(name: str, **values: object) -> None:
    print(f"\nFIGURES {name}: " + json.dumps(values))


async def sample_rss(server: Proc, out: list[int], stop: trio.Event, limit: int = 3000) -> None:
    for _ in range(limit):
        if stop.is_set():
            return
        out.append(server.rss_kb())
        await trio.sleep(0.01)  # the sampling period


async def test_reader_that_stops_is_cut_off_and_memory_stays_bounded(server: Proc, nursery: trio.Nursery) -> None:
    by_a, by_b, by_call = await call_pair(nursery, server.port, "scby")
    slow, slow_user = await raw_user(server.port, rcvbuf=4096)
    sender = await joined(nursery, server.port, "scsend")
    await slow.send(text("42" + json.dumps(["call:initiate", {"to": sender.user_id, "callType": "video"}])))
    call_id = (await sender.expect("call:incoming"))["callId"]
    assert (await sender.emit("call:accept", {"callId": call_id}))["ok"] is True
    for _ in range(10):  # the server has processed the accept: the caller is told
        _, payload = await slow.next_frame()
        if b'"call:accepted"' in payload:
            break
    else:
        raise AssertionError("the slow client was not told call:accepted")
    # From here on the slow client reads nothing.
    rss_before = server.rss_kb()
    samples: list[int] = []
    latencies: list[float] = []
    stop = trio.Event()
    nursery.start_soon(sample_rss, server, samples, stop)
    start = wall()
    sent = 0
    offers = 120  # 6 MB: well past the outbox and both kernel buffers; within the event burst
    for _ in range(offers):
        answer = await sender.emit("call:offer", {"to": slow_user, "offer": OFFER})
        if not answer["ok"]:
            break
        sent += 1
        latencies.append(await check_call(by_a, by_b, by_call))
    ended = await sender.expect("call:ended", timeout=PING_INTERVAL + PING_TIMEOUT + 10, callId=call_id)
    told_after = wall() - start
    assert ended["reason"] == "disconnected"
    for _ in range(10):
        latencies.append(await check_call(by_a, by_b, by_call))
    # The server has let the slow client go: it closes that connection once the kernel has sent
    # what was already written (the client reads it all now).
    _, closed = await read_until_closed(slow.stream, limit=1 << 30)
    assert closed, "the server kept the slow client's connection open"
    stop.set()
    rss_after = server.rss_kb()
    m = await metrics(server.port)
    figure("slow consumer", offers_sent=sent, offer_bytes=len(json.dumps(OFFER)),
           partner_told_after_s=round(told_after, 2),
           bound_s=PING_INTERVAL + PING_TIMEOUT,
           rss_kb={"before": rss_before, "peak": max(samples), "after": rss_after},
           bystander_rtt_ms={"p50": round(percentile(latencies, 0.5) * 1000, 2),
                             "max": round(max(latencies) * 1000, 2)},
           websocket_sessions_after=m['callbox_connections{transport="websocket"}'])
    # The outbox bound: the server holds at most max_outbox (+ one message) for the slow client, and
    # what it is writing; RSS may not grow by more than a few outboxes' worth.
    assert max(samples) - rss_before < 8 * MAX_OUTBOX // 1024, (rss_before, max(samples))
    # Told at once once the outbox overflowed: well before a missed heartbeat would end it.
    assert told_after < 2.0, told_after
    assert max(latencies) < 0.5
    await slow.aclose()
    assert server.errors() == []


async def test_ping_flood_without_reading_is_cut_off(server: Proc, nursery: trio.Nursery) -> None:
    """A client that floods WebSocket pings and never reads their pongs: the server's writes stall;
    the session is cut off within ping_interval + ping_timeout (+ one interval: the ping that would
    go out waits behind the stalled write), as a lost connection (its partner hears
    ``call:reconnecting``, then ``call:ended`` when the 1 s grace ends), and a call beside it keeps
    relaying."""
    by_a, by_b, by_call = await call_pair(nursery, server.port, "pfby")
    ws, _ = await raw_user(server.port, rcvbuf=4096)
    partner = await joined(nursery, server.port, "pfp")
    await ws.send(text("42" + json.dumps(["call:initiate", {"to": partner.user_id, "callType": "audio"}])))
    call_id = (await partner.expect("call:incoming"))["callId"]
    rss_before = server.rss_kb()
    start = wall()
    pings = frame(PING, b"p" * 125) * 100
    written = 0
    with trio.move_on_after(PING_INTERVAL * 2 + PING_TIMEOUT + 3):
        async with trio.open_nursery() as n:

            async def write() -> None:
                nonlocal written
                try:
                    while written < 1_000_000:
                        await ws.stream.send_all(pings)
                        written += 100
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            n.start_soon(write)
            await partner.expect("call:reconnecting", timeout=PING_INTERVAL * 2 + PING_TIMEOUT + 3, callId=call_id)
            n.cancel_scope.cancel()
    told_after = wall() - start
    assert (await partner.expect("call:ended", timeout=3, callId=call_id))["reason"] == "disconnected"
    rtt = await check_call(by_a, by_b, by_call)
    figure("ping flood, not reading", pings_written=written, partner_told_after_s=round(told_after, 2),
           rss_kb={"before": rss_before, "after": server.rss_kb()}, bystander_rtt_ms=round(rtt * 1000, 2))
    assert told_after < PING_INTERVAL * 2 + PING_TIMEOUT + 1
    assert server.rss_kb() - rss_before < 20_000
    await ws.aclose()


async def test_the_outbox_bound_is_what_cuts_it_off(inproc: Any, nursery: trio.Nursery) -> None:
    """In process, to see the reason: with a 64 KiB outbox and a heartbeat far away (10 s + 10 s),
    the slow client's session ends with reason "outbox full" within a second of the overflow, its
    partner is told, and the server lets go of everything."""
    server = await inproc(max_outbox=65536, ping_interval=10.0, ping_timeout=10.0)
    reasons: list[str] = []
    ns = server.app.namespaces["/"]
    handler = ns._disconnect
    assert handler is not None

    async def record(socket: Any, reason: str) -> None:
        reasons.append(reason)
        await handler(socket, reason)

    ns._disconnect = record
    slow, callee = await raw_user(server.port, rcvbuf=4096)
    sender = await joined(nursery, server.port, "obsend")
    answer = await sender.emit("call:initiate", {"to": callee, "callType": "video"})
    call_id = answer["callId"]
    start = wall()
    for _ in range(60):  # 3.4 MB: past 64 KiB and both kernel buffers
        if not (await sender.emit("call:offer", {"to": callee, "offer": OFFER}))["ok"]:
            break
    await sender.expect("call:ended", timeout=5, callId=call_id)
    took = wall() - start
    figure("outbox bound", reasons=reasons, partner_told_after_s=round(took, 3), max_outbox=65536)
    assert reasons == ["outbox full"], reasons
    assert took < 2.0
    await slow.aclose()
    await sender.close()
    left = await server.settled()
    assert not any(left.values()), left
