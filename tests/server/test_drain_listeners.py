"""A draining server stops listening at once: while its sessions close (a hand-over waits for its
clients to come back elsewhere), a new connection is refused by the kernel, so a load balancer moves
on to another node instead of getting answers from this one."""

from __future__ import annotations

import errno

import pytest
import trio

import callbox
from _raw import eventually, handshake


async def _refused(port: int) -> bool:
    with trio.socket.socket() as sock:
        try:
            await sock.connect(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False


@pytest.mark.socket
async def test_a_draining_server_refuses_new_connections(nursery: trio.Nursery) -> None:
    gate = trio.Event()  # the app's shutdown handler holds the drain open until the test is done
    app = callbox.SocketIO()

    @app.on_shutdown
    async def hold(handover: bool) -> None:
        await gate.wait()

    server = callbox.EngineServer(app, callbox.Config(host="127.0.0.1", port=0))
    listeners = await nursery.start(server.serve)
    port = listeners[0].socket.getsockname()[1]
    await handshake(port)  # a session: the drain has something to close
    assert not await _refused(port)
    nursery.start_soon(server.shutdown)
    await eventually(lambda: server.draining or None, what="the drain to begin")
    assert await eventually(lambda: _refused(port), what="new connections to be refused")
    gate.set()
