"""For the operations tests of several nodes (test_outage.py, test_handover.py): ``callbox`` nodes
as real processes on one Redis, and the Node script ``ops_cluster.mjs`` with its control channel.

``async with nodes(directory, redis_url, ["n1", "n2"], *flags) as cluster:`` starts one
``python -m callbox`` per id (``--node-id`` that id, port 0, loopback), all at once, and returns once
each has printed its listening line (its port is read from it); each one's stdout and stderr go to
``directory/<id>.out`` / ``.err`` (shown when something fails); then until each one's ``/readyz``
says 200 (Redis answered it). Those still running at the end are killed.

``await play(scenario, config, command)`` runs ``node ops_cluster.mjs scenario config`` and answers
each "@@ COMMAND" line it prints with ``await command(COMMAND)`` ("ok [JSON]" or "fail WHY"); it must
exit 0. Its "TIME" lines are printed (``pytest -s``) and returned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio

from _interop import NODE, run_controlled
from _proc import get

SCRIPT = Path(__file__).resolve().parent / "ops_cluster.mjs"
# How long a node may take to start (an import of callbox and coredis on a loaded 2-core machine).
NODE_START = 20.0
# The script gives up by itself after 60 s; this is the test's own bound on top.
SCENARIO_LIMIT = 75.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALLBOX_")}


class CallboxNode:
    def __init__(self, node_id: str, proc: trio.Process, directory: Path) -> None:
        self.node_id = node_id
        self.proc = proc
        self.out = directory / f"{node_id}.out"
        self.err = directory / f"{node_id}.err"
        self.port = 0
        self.terminated_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        def tail(path: Path) -> str:
            with contextlib.suppress(OSError):
                return path.read_text(errors="replace")[-4000:]
            return ""

        return f"--- {self.node_id} stdout:\n{tail(self.out)}--- {self.node_id} stderr:\n{tail(self.err)}"

    def assert_no_traceback(self) -> None:
        """An operator reads the log: what it says about an expected condition (Redis away, a drain)
        is a line, not a stack trace (from callbox or a library it logs through)."""
        text = self.err.read_text(errors="replace")
        at = text.find("Traceback")
        if at >= 0:
            start = text.rfind("\n", 0, max(0, at - 200)) + 1
            raise AssertionError(f"{self.node_id} logged a traceback:\n{text[start:at + 1500]}")

    async def listening(self) -> None:
        """Wait for the listening line; its port."""
        with trio.move_on_after(NODE_START):
            while True:
                text = self.out.read_text(errors="replace") if self.out.exists() else ""
                for line in text.splitlines():
                    if "listening on" in line:
                        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                        return
                if self.proc.returncode is not None or self.proc.poll() is not None:
                    raise AssertionError(f"{self.node_id} exited {self.proc.returncode} at start\n{self.logs()}")
                await trio.sleep(0.02)
        raise AssertionError(f"{self.node_id} printed no listening line in {NODE_START} s\n{self.logs()}")

    async def ready(self) -> None:
        """Wait for ``/readyz`` 200: a node listens at once and is ready once Redis answers (a load
        balancer's health check waits for the same)."""
        last: tuple[int, str] = (0, "")
        with trio.move_on_after(NODE_START):
            while True:
                last = await trio.to_thread.run_sync(get, f"{self.url}/readyz")
                if last[0] == 200:
                    return
                await trio.sleep(0.05)
        raise AssertionError(f"{self.node_id}: /readyz {last} after {NODE_START} s\n{self.logs()}")

    def terminate(self) -> None:
        """SIGTERM: a drain (hand-over with Redis)."""
        self.terminated_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self, limit: float) -> tuple[int, float]:
        """Wait (at most ``limit`` s after the SIGTERM) for the exit: (exit code, seconds from SIGTERM)."""
        assert self.terminated_at is not None
        left = self.terminated_at + limit - time.monotonic()
        with trio.move_on_after(max(left, 0)):
            code = await self.proc.wait()
            return code, round(time.monotonic() - self.terminated_at, 3)
        raise AssertionError(f"{self.node_id} still running {limit} s after SIGTERM\n{self.logs()}")


def _log_files(directory: Path, node_id: str) -> tuple[BinaryIO, BinaryIO]:
    """Where a node's stdout and stderr go (the child has its own descriptors: close these after)."""
    return open(directory / f"{node_id}.out", "wb"), open(directory / f"{node_id}.err", "wb")


@contextlib.asynccontextmanager
async def nodes(directory: Path, redis_url: str, ids: list[str], *flags: str) -> AsyncIterator[dict[str, CallboxNode]]:
    started: dict[str, CallboxNode] = {}
    try:
        for node_id in ids:
            argv = [sys.executable, "-m", "callbox", "--host", "127.0.0.1", "--port", "0",
                    "--redis-url", redis_url, "--node-id", node_id, *flags]
            out, err = _log_files(directory, node_id)
            with out, err:
                proc = await trio.lowlevel.open_process(argv, stdout=out, stderr=err, env=_env())
            started[node_id] = CallboxNode(node_id, proc, directory)
        async with trio.open_nursery() as nursery:
            for node in started.values():
                nursery.start_soon(node.listening)
        async with trio.open_nursery() as nursery:
            for node in started.values():
                nursery.start_soon(node.ready)
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for node in started.values():
                if node.proc.returncode is None:
                    node.proc.kill()
                await node.proc.wait()


Command = Callable[[str], Awaitable[str]]


async def play(
    scenario: str, config: dict[str, Any], command: Command, logs: Callable[[], str]
) -> list[dict[str, Any]]:
    """Run one scenario of ops_cluster.mjs, answering its commands; its TIME lines. ``logs()`` is
    added to the failure message (the nodes' logs)."""
    assert NODE is not None
    argv = [NODE, str(SCRIPT), scenario, json.dumps(config)]
    return await run_controlled(argv, command, SCENARIO_LIMIT, label=f"{scenario} (ms)", logs=logs)
