"""A signalling client in a process of its own, for the fault tests to kill (SIGKILL) or freeze
(SIGSTOP): ``python _victim.py PORT USER_ID TRANSPORT``. It joins as USER_ID, prints ``JOINED``,
accepts the first incoming call, prints ``ACCEPTED <callId>``, then keeps the connection alive
(answering pings) for at most 120 s."""

from __future__ import annotations

import pathlib
import sys

import trio

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1])]

from hardening._sig import Peer  # noqa: E402


async def main(port: int, user_id: str, transport: str) -> None:
    with trio.move_on_after(120):
        async with trio.open_nursery() as nursery:
            peer = await Peer.open(nursery, port, transport)
            await peer.join(user_id)
            print("JOINED", flush=True)
            incoming = await peer.expect("call:incoming", timeout=60)
            assert (await peer.emit("call:accept", {"callId": incoming["callId"]}))["ok"] is True
            print("ACCEPTED", incoming["callId"], flush=True)
            await peer.closed.wait()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], sys.argv[3])
