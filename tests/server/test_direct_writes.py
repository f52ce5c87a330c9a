"""Writes from the sender's task (server/session.py): trio has no public try-send, so a WebSocket is
written with a non-blocking ``os.write`` on its descriptor, and what the kernel does not take goes
to whoever runs the session. Whatever the mix, the client gets every message once, in order."""

from __future__ import annotations

from typing import Any

import trio

import callbox
from callbox.engineio import CloseReason
from hardening._wire import TEXT, RawWS, text

COUNT = 400
SIZE = 20_000  # 8 MB in all: the kernel buffers fill, so direct writes leave leftovers


class Sender:
    """On "go": a background task sends COUNT numbered messages one by one, yielding between them
    (so each is its own direct write, not one batch), then "done"."""

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None

    async def on_open(self, sock: callbox.EngineSocket) -> None:
        pass

    async def on_message(self, sock: callbox.EngineSocket, data: str | bytes) -> None:
        if data == "go":
            assert self.nursery is not None
            self.nursery.start_soon(self.send_all, sock)

    async def send_all(self, sock: callbox.EngineSocket) -> None:
        for i in range(COUNT):
            assert sock.send(f"{i:05d}" + "y" * (SIZE - 5))
            await trio.lowlevel.checkpoint()
        sock.send("done")

    async def on_close(self, sock: callbox.EngineSocket, reason: CloseReason) -> None:
        pass

    async def run(self) -> None:
        async with trio.open_nursery() as self.nursery:
            await trio.sleep_forever()


async def test_messages_sent_one_by_one_to_a_slow_reader_arrive_once_and_in_order(start_server: Any) -> None:
    port = await start_server(Sender(), max_outbox=COUNT * SIZE * 2)
    ws, _ = await RawWS.open(port, rcvbuf=4096)
    await ws.send(text("4go"))
    got: list[bytes] = []
    with trio.fail_after(30):
        while not got or got[-1] != b"4done":
            opcode, payload = await ws.next_frame(timeout=30)
            if opcode == TEXT and payload[:1] == b"4":
                got.append(payload)
    numbers = [m[1:6] for m in got[:-1]]
    assert numbers == [f"{i:05d}".encode() for i in range(COUNT)]
    assert all(len(m) == SIZE + 1 for m in got[:-1])
