"""Bad input at the WebSocket layer, against a real ``python -m callbox``.

Handshake cases (WS-01..) write a raw upgrade request. Frame cases (WS-10..) are sent by a client
that has joined as a user and is ringing another user (a ``Peer``): the test checks the close code
the abuser gets, that its session is gone, that the user it was calling is told
(``call:ended``, reason ``disconnected``), and that the bystanders' call keeps relaying.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from ._sig import ringing
from ._wire import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Proc,
    RawWS,
    close_code,
    close_frame,
    exchange,
    frame,
    parse_reply,
    spawn,
    text,
    ws_upgrade_request,
)

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

MAX_PAYLOAD = 100_000


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--max-payload", str(MAX_PAYLOAD),
               env={"CALLBOX_CONNECTION_RATE_PER_ADDRESS": "100000", "CALLBOX_CONNECTION_BURST_PER_ADDRESS": "100000"}
               ) as proc:
        yield proc


# -- the handshake -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    id: str
    title: str
    request: bytes
    status: int
    header: tuple[str, str] | None = None
    bug: str = ""


HANDSHAKES = [
    Handshake("WS-01", "Sec-WebSocket-Version 8", ws_upgrade_request(version="8"), 426,
              ("sec-websocket-version", "13"), bug="H7"),
    Handshake("WS-02", "no Sec-WebSocket-Key", ws_upgrade_request(key=None), 400),
    Handshake("WS-03", "a key that is not base64 of 16 bytes", ws_upgrade_request(key="x"), 400, bug="H7"),
    Handshake("WS-04", "no Connection: Upgrade", ws_upgrade_request(connection="keep-alive"), 400, bug="H7"),
    Handshake("WS-05", "upgrade with POST", ws_upgrade_request().replace(b"GET ", b"POST ", 1), 400),
    Handshake("WS-06", "upgrade for a sid that does not exist", ws_upgrade_request("nope"), 400),
]


@pytest.mark.parametrize("case", HANDSHAKES, ids=[c.id for c in HANDSHAKES])
async def test_handshake_case(case: Handshake, server: Proc, bystanders: object) -> None:
    data, _ = await exchange(server.port, case.request, timeout=1)
    reply = parse_reply(data)
    assert reply is not None, data[:200]
    assert reply.status == case.status, data[:300]
    if case.header:
        assert reply.headers.get(case.header[0]) == case.header[1], reply.headers
    assert b"\x81" not in reply.rest[:2], "a session was opened anyway"
    await bystanders.check()  # type: ignore[attr-defined]


# -- frames --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    id: str
    title: str
    data: bytes
    close: int | str | None  # the close code the server sends; None: a close frame without a code;
    #                          "none": the TCP connection just closes; "open": the session stays
    socketio_close: bool = False  # the Engine.IO close packet "1" comes before the close frame


FRAMES = [
    Frames("WS-10", "unmasked client frame", frame(TEXT, b"40", masked=False), 1002),
    Frames("WS-11", "frame announcing 2^63-1 bytes, then 200 KB", frame(BINARY, length=(1 << 63) - 1) + bytes(200_000),
           1009),
    Frames("WS-12", "message over max_payload in two fragments",
           frame(TEXT, b"4" + b"a" * 60_000, fin=False) + frame(CONT, b"a" * 60_000), 1009),
    Frames("WS-13", "invalid UTF-8 in a text frame", frame(TEXT, b"4\xff\xfe"), 1007),
    Frames("WS-14", "invalid UTF-8 split across fragments", frame(TEXT, b"4\xe2\x82", fin=False) + frame(CONT, b"x"),
           1007),
    Frames("WS-15", "fragmented ping", frame(PING, b"x", fin=False), 1002),
    Frames("WS-16", "ping with 126 bytes of payload", frame(PING, b"x" * 126), 1002),
    Frames("WS-17", "reserved opcode 0x3", frame(0x3, b"x"), 1002),
    Frames("WS-18", "reserved control opcode 0xB", frame(0xB, b"x"), 1002),
    Frames("WS-19", "RSV1 set with no extension", frame(TEXT, b"40", rsv=4), 1002),
    Frames("WS-20", "RSV3 set", frame(TEXT, b"40", rsv=1), 1002),
    Frames("WS-21", "continuation frame with no message started", frame(CONT, b"x"), 1002),
    Frames("WS-22", "new text frame inside a fragmented message", frame(TEXT, b"4a", fin=False) + frame(TEXT, b"4b"),
           1002),
    Frames("WS-23", "close code 1005 (reserved, never on the wire)", close_frame(1005), 1002),
    Frames("WS-24", "close code 1006 (reserved)", close_frame(1006), 1002),
    Frames("WS-25", "close code 1015 (reserved)", close_frame(1015), 1002),
    Frames("WS-26", "close code 999", close_frame(999), 1002),
    Frames("WS-27", "close code 5000", close_frame(5000), 1002),
    Frames("WS-28", "close payload of one byte", close_frame(raw=b"\x03"), 1002),
    Frames("WS-29", "close reason that is not UTF-8", close_frame(1000, b"\xff"), 1007),
    Frames("WS-30", "close 1000, then a message", close_frame(1000) + text('42["user:join",{"userId":"x"}]'), 1000),
    Frames("WS-31", "close 4999 (application range): echoed", close_frame(4999), 4999),
    Frames("WS-32", "close with no payload: echoed empty", close_frame(), None),
    Frames("WS-33", "a ping with data gets its pong; the session stays", frame(PING, b"hi"), "open"),
    Frames("WS-34", "an unsolicited pong frame is ignored", frame(PONG, b"x"), "open"),
    Frames("WS-35", "a binary frame where no attachment was announced", frame(BINARY, b"\x00\x01"), 1000,
           socketio_close=True),
    Frames("WS-36", "half a frame, then the TCP connection is reset", b"RESET:" + frame(TEXT, b"4" * 100)[:50],
           "reset"),
]

CASE_IDS = [c.id for c in HANDSHAKES] + [c.id for c in FRAMES]


@pytest.mark.parametrize("case", FRAMES, ids=[c.id for c in FRAMES])
async def test_frame_case(case: Frames, server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    ws, callee, call_id = await ringing(nursery, server.port)
    if case.close == "reset":
        await ws.send(case.data.removeprefix(b"RESET:"))
        sock = ws.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await ws.aclose()
    else:
        await ws.send(case.data)
    if case.close == "open":
        if case.data[0] & 0x0F == PING:
            for _ in range(3):
                opcode, payload = await ws.next_frame()
                if not payload.startswith(b'42["call:initiated"'):
                    break
            assert (opcode, payload) == (PONG, b"hi")
        # Still a user in a ringing call: the callee can accept, and the raw user hears of it.
        assert (await callee.emit("call:accept", {"callId": call_id}))["ok"] is True
        for _ in range(3):
            opcode, payload = await ws.next_frame()
            if not payload.startswith(b'42["call:initiated"'):
                break
        assert payload.startswith(b'42["call:accepted"'), payload
        await ws.aclose()
    elif case.close != "reset":
        frames = await ws.until_closed(timeout=3)
        closes = [p for op, p in frames if op == CLOSE]
        messages = [p for op, p in frames if op != CLOSE and not p.startswith(b'42["call:initiated"')]
        if case.close == "none":
            assert closes == [], frames
        else:
            assert len(closes) == 1, frames
            assert close_code(closes[0]) == case.close, frames
        assert messages == ([b"1"] if case.socketio_close else []), frames
        await ws.aclose()
    if case.close == "reset":  # not bad input but a lost connection: the call waits for it
        await callee.expect("call:reconnecting", callId=call_id)
    elif case.close != "open":
        ended = await callee.expect("call:ended", callId=call_id)
        assert ended["reason"] == "disconnected", ended
    await callee.close()
    await bystanders.check()  # type: ignore[attr-defined]


async def test_session_ends_on_engineio_errors_with_a_close(server: Proc) -> None:
    """WS-37 (minor defect W1): an Engine.IO protocol error on a WebSocket drops the TCP connection
    with no close frame, where a close frame (1002) would tell the client it was refused, not cut."""
    ws, _ = await RawWS.open(server.port)
    await ws.send(text("7"))
    frames = await ws.until_closed(timeout=3)
    await ws.aclose()
    assert [close_code(p) for op, p in frames if op == CLOSE] == [1002], frames


CASE_IDS.append("WS-37")
