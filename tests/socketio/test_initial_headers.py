"""``initial_headers`` at its edges (issue 15): it may be async; if it raises or returns something
that is not an HTTP header (a name that is not a token, a value with a line break, which would split
the answer), the request is refused 403 as ``allow_request`` refuses, and no session opens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import callbox
from _raw import eio_target, parse_open, request
from callbox import SocketIO

StartServer = Callable[..., Awaitable[int]]


async def test_an_async_initial_headers_is_awaited(start_server: StartServer) -> None:
    app = SocketIO()

    @app.initial_headers
    async def headers(handshake: callbox.Handshake) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return {"Set-Cookie": "node=n1; Path=/"}

    port = await start_server(app)
    resp = await request(port, "GET", eio_target("polling"))
    assert resp.status == 200 and resp.headers["set-cookie"] == "node=n1; Path=/"
    assert parse_open(resp.text)["sid"]


@pytest.mark.parametrize("bad", [
    "raise",
    [("Set-Cookie", "a=1\r\nX-Injected: yes")],
    [("Bad Name", "x")],
    [("X-Nul", "a\x00b")],
])
async def test_a_failing_initial_headers_refuses_the_request(start_server: StartServer, bad: Any) -> None:
    app = SocketIO()
    opened: list[object] = []

    @app.initial_headers
    def headers(handshake: callbox.Handshake) -> Any:
        if bad == "raise":
            raise RuntimeError("broken")
        return bad

    @app.on_connect
    def connect(socket: callbox.Socket, auth: object) -> None:
        opened.append(socket)

    port = await start_server(app)
    resp = await request(port, "GET", eio_target("polling"))
    assert (resp.status, resp.json()) == (403, {"code": 4, "message": "Forbidden"})
    assert "x-injected" not in resp.headers
    assert opened == []
