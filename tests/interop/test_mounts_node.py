"""Several applications on one port, each at its own path (issue 15), with the real socket.io-client:
``serve(app, config, mounts={"/other/": other})``. Each client reaches the app at its path, over
WebSocket and over long-polling, and a session of one app is unknown at the other's path."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

import callbox
from _interop import NEEDS_NODE, run_script
from _paths import INTEROP
from _raw import parse_open, request

pytestmark = NEEDS_NODE


def _app(name: str) -> callbox.SocketIO:
    app = callbox.SocketIO()

    @app.on("who")
    async def who(socket: callbox.Socket) -> str:
        return name

    return app


async def _serve(nursery: trio.Nursery) -> tuple[int, callbox.SocketIO, callbox.SocketIO]:
    main, other = _app("main"), _app("other")
    config = callbox.Config(host="127.0.0.1", port=0)
    listeners: Any = await nursery.start(lambda task_status: callbox.serve(
        main, config, mounts={"/other/": other}, task_status=task_status))
    return int(listeners[0].socket.getsockname()[1]), main, other


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_each_client_reaches_the_app_at_its_path(nursery: trio.Nursery, transport: str) -> None:
    port, _, _ = await _serve(nursery)
    out = await run_script(INTEROP / "mounts.mjs", 30, f"http://127.0.0.1:{port}", transport)
    assert out.strip().endswith("OK")


async def test_a_session_is_unknown_at_another_apps_path(nursery: trio.Nursery) -> None:
    port, _, _ = await _serve(nursery)
    opened = await request(port, "GET", "/socket.io/?EIO=4&transport=polling")
    assert opened.status == 200
    sid = parse_open(opened.text)["sid"]
    elsewhere = await request(port, "GET", f"/other/?EIO=4&transport=polling&sid={sid}")
    assert elsewhere.status == 400
    assert json.loads(elsewhere.text) == {"code": 1, "message": "Session ID unknown"}
    there = await request(port, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", b"40")
    assert (there.status, there.body) == (200, b"ok")


def test_two_apps_at_one_path_are_refused() -> None:
    app = _app("main")
    with pytest.raises(ValueError, match="two applications"):
        callbox.EngineServer(app, callbox.Config(), mounts={"/socket.io/": _app("other")})
