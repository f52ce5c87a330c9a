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

Fast and slow: a test that needs more than this process carries a mark saying what (pyproject lists
them): ``socket`` (callbox served on loopback in the test's own run: every test that uses the
``start_server`` or hardening's ``inproc`` fixture gets it here), ``process``, ``node``,
``browser``, ``coturn``, ``redis`` (a module's ``pytestmark`` or a test's decorator); so does
``fuzz``, a long property-based run that stays in this process. Any of them adds ``slow``, so
``pytest -m "not slow"`` runs the short in-process tests alone, in seconds. A test without such a
mark that starts a process or opens a connection fails, naming the mark to add.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn

import pytest
import trio

import callbox

StartServer = Callable[..., Awaitable[int]]

# The marks that make a test slow: what it needs beyond this process, or a long fuzzing run.
SLOW = ("socket", "process", "node", "browser", "coturn", "redis", "fuzz")
# Fixtures that serve callbox on real loopback sockets in the test's own Trio run.
SOCKET_FIXTURES = frozenset({"start_server", "inproc"})


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SOCKET_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.socket)
        if any(item.get_closest_marker(mark) for mark in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_stay_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test without ``slow`` may not start a process or connect or bind a socket (trio's own
    socketpair is neither): a missing mark fails the test rather than slowing the fast set."""
    if request.node.get_closest_marker("slow"):
        yield
        return

    def refuse(what: str, mark: str) -> Callable[..., NoReturn]:
        def refused(*args: Any, **kwargs: Any) -> NoReturn:
            raise AssertionError(f"this test {what}: mark it @pytest.mark.{mark} (see tests/conftest.py)")

        return refused

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", refuse("starts a process", "process"))
        mp.setattr(socket.socket, "connect", refuse("opens a connection", "socket"))
        mp.setattr(socket.socket, "bind", refuse("binds a socket", "socket"))
        yield


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``port = await start_server(app, **config)``: serve ``app`` on 127.0.0.1 and a free port,
    in this test's nursery (cancelled when the test ends)."""

    async def start(app: Any, **settings: Any) -> int:
        config = callbox.Config(**{"host": "127.0.0.1", "port": 0, **settings})
        listeners = await nursery.start(callbox.serve, app, config)
        return int(listeners[0].socket.getsockname()[1])

    return start
