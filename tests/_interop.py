"""The signalling app served on loopback for the end-to-end suites in tests/interop: serve it, run a
Node scenario script (socket.io-client) against it, and check that it let go of everything once
every client has gone."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
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


class LineScript:
    """A ``node`` script of tests/interop driven line by line (admin_ui.mjs, rooms.mjs): commands on
    its stdin, one JSON object a line, and what its clients see on its stdout, {"type": ...} lines.
    A subclass adds the commands and the look-ups of its script."""

    transcript_width = 500  # characters of each output line a failure shows

    def __init__(self, proc: trio.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.ids: dict[str, str] = {}  # client name -> its socket id
        self.eof = False
        self._changed = trio.Event()

    @classmethod
    async def start(cls, nursery: trio.Nursery, argv: list[str]) -> trio.Process:
        """Run ``argv`` in tests/interop (killed when the nursery's test ends): its process."""
        proc: trio.Process = await nursery.start(partial(
            trio.run_process, argv, cwd=INTEROP, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, check=False,
        ))
        return proc

    async def read(self) -> None:
        """Read the script's output until it ends (a task of the test's nursery)."""
        assert self.proc.stdout is not None
        buffer = b""
        while chunk := await self.proc.stdout.receive_some(65536):
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                self.raw.append(line)
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict) and "type" in value:
                    self.lines.append(value)
            self._wake()
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def transcript(self) -> str:
        return "\n".join([" ".join(self.argv), *(line[:self.transcript_width] for line in self.raw)])

    async def until(self, check: Callable[[], Any], what: str, seconds: float = 5.0) -> Any:
        """Wait (at most ``seconds``) for ``check()`` to be truthy; its value."""
        with trio.move_on_after(seconds):
            while True:
                if any(line["type"] == "error" for line in self.lines):
                    raise AssertionError(f"the clients failed:\n{self.transcript()}")
                if found := check():
                    return found
                if self.eof:
                    break
                await self._changed.wait()
        raise AssertionError(f"not within {seconds} s: {what}\n{self.transcript()}")

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all((json.dumps(command) + "\n").encode())

    async def end(self) -> None:
        """Every client leaves; the script exits 0."""
        await self.send(cmd="end")
        with trio.fail_after(5.0):
            await self.proc.wait()
        await self.until(lambda: self.eof, "the end of the output")
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{self.transcript()}"


def printed_times(out: list[str], label: str) -> list[dict[str, Any]]:
    """The measurements among a scenario script's output lines ("TIME {...}"), each printed (shown
    with ``pytest -s``) after ``label``."""
    times = [json.loads(line[5:]) for line in out if line.startswith("TIME ")]
    for t in times:
        print(f"{label}:", json.dumps(t))
    return times


async def run_controlled(
    argv: list[str], command: Callable[[str], Awaitable[str]], limit: float, *, label: str,
    env: dict[str, str] | None = None, logs: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """Run a scenario script with a control channel (recovery.mjs, tests/multinode/ops_cluster.mjs)
    within ``limit`` seconds, answering each "@@ COMMAND" line it prints with ``await
    command(COMMAND)`` ("ok [JSON]" or "fail WHY"; an AssertionError is a "fail"); it must exit 0.
    Its "TIME" lines, printed after ``label``. ``env``: its environment (this one's by default);
    ``logs()`` is added to the failure message."""
    out: list[str] = []
    errors = bytearray()
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(partial(
                trio.run_process, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                check=False, env=env,
            ))
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

            async def collect(stream: trio.abc.ReceiveStream) -> None:
                while chunk := await stream.receive_some(65536):
                    errors.extend(chunk)

            nursery.start_soon(collect, proc.stderr)
            pending = b""
            while chunk := await proc.stdout.receive_some(65536):
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode()
                    if not line.startswith("@@ "):
                        out.append(line)
                        continue
                    try:
                        answer = await command(line[3:])
                    except AssertionError as exc:
                        answer = f"fail {' '.join(str(exc).split())}"
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await proc.stdin.send_all(answer.encode() + b"\n")
            out.append(pending.decode())
    report = "\n".join(out) + errors.decode()
    assert proc.returncode == 0, f"{' '.join(argv)}\n{report}" + (f"\n{logs()}" if logs is not None else "")
    return printed_times(out, label)


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
