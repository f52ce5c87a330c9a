"""examples/library/tour.py, the README's tour of the Socket.IO API, run against socket.io-client
(tests/interop/tour.mjs), and the README shows that file as it is."""

from __future__ import annotations

import importlib.util
from typing import Any

import trio

import callbox
from _interop import NEEDS_NODE, run_script
from _paths import INTEROP, ROOT

TOUR = ROOT / "examples" / "library" / "tour.py"

pytestmark = NEEDS_NODE


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("tour", TOUR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_tour_holds_with_socket_io_client(nursery: trio.Nursery) -> None:
    tour = _load()
    config = callbox.Config(host="127.0.0.1", port=0)
    listeners: Any = await nursery.start(
        lambda task_status: callbox.serve(tour.app, config, mounts={"/echo/": tour.echo}, task_status=task_status))
    port = listeners[0].socket.getsockname()[1]
    out = await run_script(INTEROP / "tour.mjs", 30, f"http://127.0.0.1:{port}")
    assert out.strip().endswith("OK")


def test_the_readme_shows_the_tour_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```python\n" + TOUR.read_text() + "```" in readme, "README: paste examples/library/tour.py"
