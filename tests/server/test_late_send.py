"""A send to a session during its final flush must not throw that flush away.

The defect this guards against: the shell took any refusal of a send as "cut off for being slow"
and cancelled the write in flight, so a partner's late message to a closing session (a rate-limit
cut, a forced close, shutdown) cost the client everything still queued, the close packet and the
WebSocket close frame. Reproduced through a real socket: a raw WebSocket client with a tiny receive
buffer asks for megabytes and then a close; the write stalls; the application sends once more.
"""

from __future__ import annotations

from typing import Any

import trio

import callbox
from _raw import eventually
from callbox.engineio import CloseReason
from hardening._wire import CLOSE, TEXT, RawWS, text

CHUNK = 100_000
CHUNKS = 160  # 16 MB: far more than the kernel buffers on both sides hold, so the write stalls


class BigThenClose:
    """On "big": queue CHUNKS messages, then close the session."""

    def __init__(self) -> None:
        self.socks: list[callbox.EngineSocket] = []

    async def on_open(self, sock: callbox.EngineSocket) -> None:
        self.socks.append(sock)

    async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
        if data == "big":
            for i in range(CHUNKS):
                assert sock.send(f"{i:04d}" + "x" * (CHUNK - 4))
            sock.close(CloseReason.FORCED_CLOSE)

    async def on_close(self, sock: callbox.EngineSocket, reason: CloseReason) -> None:
        pass

    async def run(self) -> None:
        await trio.sleep_forever()


async def _final_flush(start_server: Any, late_send: bool) -> list[tuple[int, bytes]]:
    app = BigThenClose()
    port = await start_server(app, max_outbox=CHUNKS * CHUNK * 2)
    ws, _ = await RawWS.open(port, rcvbuf=4096)
    await ws.send(text("4big"))
    sock = app.socks[0]
    # The session task is stuck writing the final batch.
    await eventually(lambda: sock._write_scope is not None, 5, "the final flush to stall")
    if late_send:
        assert sock.send("late") is False  # refused: the session is closing
    return await ws.until_closed(timeout=20, limit=CHUNKS + 10)


def _check_everything_arrived(frames: list[tuple[int, bytes]]) -> None:
    messages = [payload for opcode, payload in frames if opcode == TEXT]
    assert len(messages) == CHUNKS + 1
    assert [m[1:5] for m in messages[:-1]] == [f"{i:04d}".encode() for i in range(CHUNKS)]
    assert messages[-1] == b"1"  # the Engine.IO close packet
    assert frames[-1][0] == CLOSE  # and the WebSocket close frame


async def test_final_flush_arrives_whole(start_server: Any) -> None:
    _check_everything_arrived(await _final_flush(start_server, late_send=False))


async def test_a_late_send_does_not_throw_the_final_flush_away(start_server: Any) -> None:
    _check_everything_arrived(await _final_flush(start_server, late_send=True))
