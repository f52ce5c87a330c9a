"""Issue 15 with python-socketio's AsyncClient (an independent Socket.IO client, on asyncio and
aiohttp, in a worker thread as in tests/interop/test_python_client.py): the handshake the app sees
(query, headers, ``{}`` as auth when none is given), a middleware refusal with data, and a deferred
ack, answered late or never."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import socketio
import trio

from callbox import Ack, ConnectionRefused, Socket, SocketIO

StartServer = Callable[..., Awaitable[int]]  # the conftest fixture: port = await start_server(app, **config)
T = TypeVar("T")

CLIENT_WAIT = 5.0  # every single wait in the client thread
SCENARIO_WAIT = 30.0  # the whole client thread

pytestmark = pytest.mark.parametrize("transport", ["websocket", "polling"])


async def in_client_thread(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with trio.fail_after(SCENARIO_WAIT):
        return await trio.to_thread.run_sync(lambda: asyncio.run(scenario()), abandon_on_cancel=True)


def make_app() -> tuple[SocketIO, dict[str, Any]]:
    app = SocketIO()
    seen: dict[str, Any] = {"kept": []}

    @app.use
    def gate(socket: Socket, auth: Any) -> None:
        seen.setdefault("auths", []).append(auth)
        if auth.get("deny"):
            raise ConnectionRefused("nope", {"reason": "x"})

    @app.on_connect
    def connect(socket: Socket, auth: Any) -> None:
        hs = socket.handshake
        seen["handshake"] = {"query": hs.query, "tenant_header": hs.headers.get("x-tenant"),
                             "cookies": hs.cookies, "address": hs.address, "secure": hs.secure}

    @app.on("later")
    def later(socket: Socket, value: int) -> None:
        ack = socket.defer_ack()
        assert ack is not None

        async def answer(ack: Ack) -> None:
            await trio.sleep(0.1)
            seen["later"] = ack(value * 2, "late")

        app.start_soon(answer, ack)

    @app.on("never")
    def never(socket: Socket) -> None:
        seen["kept"].append(socket.defer_ack())

    return app, seen


async def test_handshake_auth_and_deferred_acks(start_server: StartServer, transport: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> dict[str, Any]:
        sio = socketio.AsyncClient(reconnection=False)
        await asyncio.wait_for(sio.connect(
            f"http://127.0.0.1:{port}?tenant=acme", transports=[transport], wait_timeout=CLIENT_WAIT,
            headers={"X-Tenant": "acme-header", "Cookie": "session=s1"}), CLIENT_WAIT * 2)
        try:
            answer = await sio.call("later", 21, timeout=CLIENT_WAIT)
            try:
                await sio.call("never", timeout=0.5)
                never = "answered"
            except socketio.exceptions.TimeoutError:
                never = "timed out"
            return {"answer": answer, "never": never}
        finally:
            await sio.disconnect()

    out = await in_client_thread(scenario)
    assert out == {"answer": (42, "late"), "never": "timed out"}
    assert seen["auths"] == [{}], "no auth from the client: {} as in Node"
    hs = seen["handshake"]
    assert hs["query"]["tenant"] == "acme" and hs["query"]["transport"] == transport
    assert (hs["tenant_header"], hs["cookies"], hs["address"], hs["secure"]) == (
        "acme-header", {"session": "s1"}, "127.0.0.1", False)
    assert seen["later"] is True
    assert len(seen["kept"]) == 1 and isinstance(seen["kept"][0], Ack) and not seen["kept"][0].sent


async def test_middleware_refusal_with_data(start_server: StartServer, transport: str) -> None:
    app, seen = make_app()
    port = await start_server(app)

    async def scenario() -> tuple[str, list[Any]]:
        sio = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []

        @sio.on("connect_error")
        async def connect_error(data: Any) -> None:
            errors.append(data)

        try:
            await asyncio.wait_for(sio.connect(f"http://127.0.0.1:{port}", transports=[transport],
                                               auth={"deny": True}, wait_timeout=CLIENT_WAIT), CLIENT_WAIT * 2)
        except socketio.exceptions.ConnectionError as exc:
            return str(exc), errors
        await sio.disconnect()
        raise AssertionError("the refused connect succeeded")

    message, errors = await in_client_thread(scenario)
    assert errors == [{"message": "nope", "data": {"reason": "x"}}], (message, errors)
    assert seen["auths"] == [{"deny": True}]
    assert "handshake" not in seen, "the connect handler did not run"


