"""Shared fixtures. Rules for every I/O test (as trio-websocket's): loopback only, port 0, a
``fail_after`` around anything that waits on the network."""

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
