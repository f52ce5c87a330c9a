"""Bad input at the Engine.IO layer, against a real ``python -m callbox``.

The abuser is a user in a live call. For each case the test checks what the abuser gets (the POST's
status and body over polling), whether its session survives, and what its partner sees: either the
call goes on (a candidate relays both ways) or the partner gets ``call:ended`` (reason
``disconnected``). The bystanders' call keeps relaying throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
from trio_websocket import ConnectionClosed

from _raw import HTTPConnection, eio_target

from ._sig import call_pair, check_call
from ._wire import BINARY, CLOSE, Proc, RawWS, close_code, frame, spawn, text

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

MAX_PAYLOAD = 100_000
EVENT_BURST = 200  # this module's server: --event-burst 200, --event-rate 50


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--max-payload", str(MAX_PAYLOAD), "--event-burst", str(EVENT_BURST), "--event-rate", "50",
               "--connection-rate-per-address", "100000", "--connection-burst-per-address", "100000") as proc:
        yield proc


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    transport: str
    send: list[str | bytes]  # polling: POST bodies (bytes as is, str encoded); websocket: messages
    status: int | None  # polling: the last POST's status
    body: bytes | None  # polling: the last POST's body
    ends: bool  # the abuser's session ends (and its partner is told)
    # It ends as a lost connection ("transport error"): its call waits, the partner hears call:reconnecting.
    lost: bool = False


def error(code: int) -> bytes:
    messages = {1: "Session ID unknown", 3: "Bad request"}
    return f'{{"code":{code},"message":"{messages[code]}"}}'.encode()


OK = b"ok"
RS = "\x1e"
CASES = [
    Case("EIO-01", "unknown packet type 7 (polling)", "polling", ["7"], 400, error(3), True),
    Case("EIO-02", "unknown packet type 7 (websocket)", "websocket", ["7"], None, None, True),
    Case("EIO-03", "empty POST body", "polling", [b""], 400, error(3), True),
    Case("EIO-04", "empty record inside a payload", "polling", [f"6{RS}{RS}6"], 400, error(3), True),
    Case("EIO-05", "open packet 0 from a client (polling)", "polling", ["0"], 400, error(3), True),
    Case("EIO-06", "open packet 0 from a client (websocket)", "websocket", ["0"], None, None, True),
    Case("EIO-07", "ping 2 from a client (v4: only the server pings)", "polling", ["2"], 400, error(3), True),
    Case("EIO-08", "upgrade 5 outside an upgrade (websocket)", "websocket", ["5"], None, None, True),
    Case("EIO-09", "empty text frame (websocket)", "websocket", [""], None, None, True),
    Case("EIO-10", "binary record with bad base64", "polling", ["b!!!"], 400, error(3), True),
    Case("EIO-11", "binary record with base64 missing its padding", "polling", ["bAA"], 400, error(3), True),
    Case("EIO-12", "POST body that is not UTF-8", "polling", [b"4\xff\xfe"], 400, error(3), True),
    Case("EIO-13", "POST body over max_payload", "polling", [b"4" + b"a" * (MAX_PAYLOAD + 1)], 413, error(3), True,
         lost=True),
    Case("EIO-14", "a message after a close in the same payload is not handled", "polling",
         [f'1{RS}42["call:end",{{"callId":"CALL"}}]'], 200, OK, True),
    Case("EIO-15", "a POST after the session closed", "polling", ["1", "6"], 400, error(1), True),
    Case("EIO-16", "1,000 unsolicited pongs in one POST: cut off (rate limit)", "polling", [RS.join(["3"] * 1000)],
         200, OK, True),
    Case("EIO-17", "1,000 unsolicited pongs over WebSocket: cut off (rate limit)", "websocket", ["3"] * 1000,
         None, None, True),
    Case("EIO-18", "1,000 noops in one POST: cut off (rate limit)", "polling", [RS.join(["6"] * 1000)], 200, OK, True),
    Case("EIO-19", "100 unsolicited pongs (within the burst): nothing happens", "websocket", ["3"] * 100,
         None, None, False),
    Case("EIO-20", "a close packet with data", "websocket", ["1junk"], None, None, True),
]

OTHER_IDS = ["EIO-21", "EIO-22", "EIO-23", "EIO-24", "EIO-25", "EIO-26", "EIO-27", "EIO-28"]
CASE_IDS = [c.id for c in CASES] + OTHER_IDS


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_eio_case(case: Case, server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    a, b, call_id = await call_pair(nursery, server.port, "eio", (case.transport, "websocket"))
    status = None
    for item in case.send:
        item = item.replace("CALL", call_id) if isinstance(item, str) else item
        if case.transport == "polling":
            status, body = await raw_post(server.port, a.eio_sid, item.encode() if isinstance(item, str) else item)
        else:
            assert a._ws is not None
            try:
                await a._ws.send_message(item)
            except ConnectionClosed:  # cut off part way (the rate limit): the rest is not sent
                break
    if case.transport == "polling":
        assert (status, body) == (case.status, case.body)
    if case.lost:
        await b.expect("call:reconnecting", callId=call_id)
    elif case.ends:
        ended = await b.expect("call:ended", callId=call_id)
        assert ended["reason"] == "disconnected", ended
        if case.transport == "polling":
            assert await raw_post(server.port, a.eio_sid, b"6") == (400, error(1))
        else:
            await a.wait_closed()
    else:
        await check_call(a, b, call_id)
        await a.close()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]


async def raw_post(port: int, sid: str, body: bytes) -> tuple[int, bytes]:
    conn = await HTTPConnection.open(port)
    try:
        resp = await conn.request("POST", eio_target("polling", sid), body)
    finally:
        await conn.aclose()
    return resp.status, resp.body


# -- the upgrade -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case_id", "frames"), [
    ("EIO-21", [b"BINARY"]),
    ("EIO-22", ["2probX"]),
    ("EIO-23", ["5"]),
    ("EIO-24", ["2probe", "3"]),
])
async def test_bad_upgrade_probe_keeps_polling(case_id: str, frames: list[str | bytes], server: Proc,
                                               bystanders: object, nursery: trio.Nursery) -> None:
    """EIO-21..24: a probe WebSocket that sends a binary frame, a wrong probe, ``5`` before the probe,
    or a pong while probing is closed; the polling session it tried to upgrade goes on, in its call."""
    a, b, call_id = await call_pair(nursery, server.port, "upg", ("polling", "websocket"))
    ws, _ = await RawWS.open(server.port, a.eio_sid)
    for f in frames:
        if f == b"BINARY":
            await ws.send(frame(BINARY, b"\x01"))
        else:
            assert isinstance(f, str)
            await ws.send(text(f))
    await ws.until_closed(timeout=3)
    await ws.aclose()
    await check_call(a, b, call_id)
    await a.close()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]


async def test_upgrade_of_a_websocket_session_is_refused(server: Proc, bystanders: object,
                                                         nursery: trio.Nursery) -> None:
    """EIO-25: a WebSocket for a sid already on WebSocket is closed (1008); the owner's call goes on."""
    a, b, call_id = await call_pair(nursery, server.port, "upw")
    ws, _ = await RawWS.open(server.port, a.eio_sid)
    frames = await ws.until_closed(timeout=3)
    await ws.aclose()
    assert [close_code(p) for op, p in frames if op == CLOSE] == [1008]
    await check_call(a, b, call_id)
    await a.close()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]


async def test_poll_on_a_websocket_session_is_refused(server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    """EIO-26: a polling GET or POST with the sid of a WebSocket session gets 400 code 3; the session
    and its call are untouched (a forged or stale request must not end it)."""
    a, b, call_id = await call_pair(nursery, server.port, "pws")
    conn = await HTTPConnection.open(server.port)
    resp = await conn.request("GET", eio_target("polling", a.eio_sid))
    await conn.aclose()
    assert (resp.status, resp.body) == (400, error(3))
    assert await raw_post(server.port, a.eio_sid, b'42["call:end",{"callId":"' + call_id.encode() + b'"}]') == (
        400, error(3))
    await check_call(a, b, call_id)
    await a.close()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]


async def test_second_concurrent_poll_ends_the_session(server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    """EIO-27: a second GET while one is pending gets 400 code 3 and ends the session (the first GET
    gets the close packet): a transport error, a lost connection (what a client whose previous poll
    vanished with a cut sends), so the partner gets call:reconnecting."""
    a, b, call_id = await call_pair(nursery, server.port, "dbl", ("polling", "websocket"))
    # The Peer's own poll loop holds a GET pending: this one is the second.
    await a.poll_pending()
    conn = await HTTPConnection.open(server.port)
    resp = await conn.request("GET", eio_target("polling", a.eio_sid))
    await conn.aclose()
    assert (resp.status, resp.body) == (400, error(3))
    await b.expect("call:reconnecting", callId=call_id)
    await a.wait_closed()
    assert "1" in a.raw
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]



async def test_second_concurrent_post_ends_the_session(server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    """EIO-28: a second POST while the first is still being handled (its body not all sent yet)
    gets 400 code 3 and ends the session, as a second GET does (Engine.IO v4): a transport error,
    so the partner gets call:reconnecting."""
    a, b, call_id = await call_pair(nursery, server.port, "dpo", ("polling", "websocket"))
    first = await trio.open_tcp_stream("127.0.0.1", server.port)
    head = (f"POST {eio_target('polling', a.eio_sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 10\r\n\r\n6")
    await first.send_all(head.encode())  # 1 byte of 10: the server is reading this POST's body
    try:
        conn = await HTTPConnection.open(server.port)
        resp = await conn.request("POST", eio_target("polling", a.eio_sid), b"6",
                                  [("Content-Type", "text/plain;charset=UTF-8")])
        await conn.aclose()
        assert (resp.status, resp.body) == (400, error(3))
        await b.expect("call:reconnecting", callId=call_id)
        await a.wait_closed()
    finally:
        await first.aclose()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]
