"""Flooders in a process of their own (so that the test process, which measures a normal call's
latency, does not share their CPU): ``python _flood.py PORT N``. Each of N users rings another user,
then writes unknown events as fast as its socket takes them, reading what comes back, until the
server cuts it off. Prints a JSON list of what each saw."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import trio

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1])]

from hardening._sig import ringing  # noqa: E402
from hardening._wire import CLOSE, TEXT, text, wall  # noqa: E402


async def flood(port: int, nursery: trio.Nursery, *, batch: int = 100, max_frames: int = 200_000,
                max_seconds: float = 10.0) -> dict[str, Any]:
    """A user in a ringing call writes unknown events (each would earn an ``error`` answer) as fast
    as the socket takes them, reading what comes back, until the server cuts it off."""
    ws, callee, call_id = await ringing(nursery, port)
    packet = text('42["call:dance",{}]')
    answers = 0
    got_close_packet = False
    close_codes: list[int] = []
    sent = 0
    cut = trio.Event()

    async def read() -> None:
        nonlocal answers, got_close_packet
        for _ in range(max_frames + 10):
            opcode, payload = await ws.next_frame(timeout=max_seconds + 5)
            if opcode == -1:
                break
            if opcode == TEXT and payload.startswith(b'42["error"'):
                answers += 1
            elif opcode == TEXT and payload == b"1":
                got_close_packet = True
            elif opcode == CLOSE:
                close_codes.append(int.from_bytes(payload[:2], "big"))
        cut.set()

    start = wall()
    async with trio.open_nursery() as inner:
        inner.start_soon(read)
        with trio.move_on_after(max_seconds):
            while sent < max_frames and not cut.is_set():
                try:
                    await ws.stream.send_all(packet * batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                sent += batch
            await cut.wait()
        cut_after = wall() - start
        inner.cancel_scope.cancel()
    await ws.aclose()
    ended = await callee.expect("call:ended", callId=call_id)
    await callee.close()
    return {"written": sent, "answered": answers, "seconds": round(cut_after, 3), "close_packet": got_close_packet,
            "close_codes": close_codes, "partner_told": ended["reason"]}


async def main(port: int, count: int) -> None:
    results: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            results.append(await flood(port, nursery))

        async with trio.open_nursery() as floods:
            for _ in range(count):
                floods.start_soon(one)
        nursery.cancel_scope.cancel()
    print(json.dumps(results))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
