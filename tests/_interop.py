"""The signalling app served on loopback for the end-to-end suites in tests/interop: serve it, run a
Node scenario script (socket.io-client) against it, and check that it let go of everything once
every client has gone."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from _paths import INTEROP
from _raw import eventually
from callbox import SocketIO
from callbox.signalling import MemoryRegistry, Signalling, install

StartServer = Callable[..., Awaitable[int]]

NODE = shutil.which("node")

# pytestmark of a suite that runs the Node scripts of tests/interop.
NEEDS_NODE = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (INTEROP / "node_modules" / "socket.io-client").is_dir(), reason="tests/interop: run `npm ci` first"
    ),
]


async def run_script(script: Path, limit: float, *args: str) -> str:
    """``node script args...`` within ``limit`` seconds; it must exit 0. Its stdout."""
    assert NODE is not None
    argv = [NODE, str(script), *args]
    with trio.fail_after(limit):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, f"{' '.join(argv)}\n{out}{done.stderr.decode()}"
    return out


async def serve(start_server: StartServer, **settings: Any) -> tuple[int, Signalling]:
    """The signalling app on a free loopback port: (the port, its Signalling)."""
    app = SocketIO()
    signalling = install(app)
    port = await start_server(app, **settings)
    return port, signalling


async def settled(signalling: Signalling, *, graces: bool = True) -> None:
    """Every client has gone: the server lets go of everything (disconnects may lag the exit): no
    user, no call, no timer and, unless ``graces`` is false, no reconnect grace."""
    registry = signalling.registry
    assert isinstance(registry, MemoryRegistry)

    def held() -> tuple[dict[Any, Any], ...]:
        tables = (registry.users, registry.calls, signalling.timers)
        return (*tables, signalling.graces) if graces else tables

    with contextlib.suppress(AssertionError):  # the assertion below says what is left
        await eventually(lambda: not any(held()), 5)
    left = held()
    assert left == ({},) * len(left)
