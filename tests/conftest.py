"""Shared fixtures. Rules for every I/O test (as trio-websocket's): loopback only, port 0, a
``fail_after`` around anything that waits on the network.

Layout: tests/engineio, tests/socketio, tests/server and tests/signalling mirror src/callbox/ (plus
tests/test_<module>.py for its top-level modules); tests/operations runs ``python -m callbox`` as a
real process; tests/interop and tests/browser drive it with real clients (Node socket.io-client,
python-socketio, coturn, Chromium); tests/hardening abuses it.

Imports: pyproject's ``pythonpath = ["tests"]`` puts this folder on sys.path, so the helpers here
(``_paths``, ``_proc``, ``_raw``) and the ``hardening`` package import by name from any folder. The
folders below are not packages (so that tests/socketio cannot hide python-socketio): each test
module's own folder is put on sys.path too, and test file names must be unique across tests/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import callbox

StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``port = await start_server(app, **config)``: serve ``app`` on 127.0.0.1 and a free port,
    in this test's nursery (cancelled when the test ends)."""

    async def start(app: Any, **settings: Any) -> int:
        config = callbox.Config(**{"host": "127.0.0.1", "port": 0, **settings})
        listeners = await nursery.start(callbox.serve, app, config)
        return int(listeners[0].socket.getsockname()[1])

    return start
