"""A real ``redis-server`` (Debian's, installed by .ci/run) for tests marked ``pytest.mark.redis``.

``with redis_server(directory) as redis:`` starts one on 127.0.0.1 and a free port, in ``directory``
(its working dir and log), with nothing persisted (``--save ''``, ``--appendonly no``); it returns
once the server answers PING (within ``READY`` seconds, or the test fails with its log), and stops it
at the end. ``redis.url`` / ``redis.port`` say where it is.

Mid-test, for "Redis is down" tests:

- ``redis.stop()``: the process ends (SIGTERM): connections are closed, new ones refused;
  ``redis.start()`` brings a fresh, empty one back on the same port.
- ``redis.freeze()`` / ``redis.thaw()``: SIGSTOP / SIGCONT. Connections stay open and nothing
  answers: what a client's deadline is for.

``redis.command("FLUSHDB")`` sends one command over a connection of its own (synchronous, no client
library) and returns the raw reply line: enough to empty the database between examples.

A missing ``redis-server`` fails the test (it does not skip): CI installs it.

A fixture in a test module::

    @pytest.fixture
    def redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
        with redis_server(tmp_path) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

__all__ = ["RedisServer", "redis_server", "READY"]

# How long a starting redis-server may take to answer PING.
READY = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _encode(*args: str | bytes) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisServer:
    def __init__(self, directory: pathlib.Path) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed (.ci/run installs Debian's redis-server)"
        self.executable = executable
        self.directory = directory
        self.log = directory / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on a free port the first time, then on the same one) and wait for PING."""
        assert self.proc is None, "redis-server is running already"
        for attempt in range(5):
            port = self.port or _free_port()
            self.proc = subprocess.Popen(
                [self.executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.directory),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log),
                 "--databases", "1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            if self._wait_ready(port):
                self.port = port
                return
            self._end()
            if self.port:  # the same port again (a restart): give the old one's socket a moment
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError(f"redis-server did not answer PING within {READY} s:\n{self._log_tail()}")

    def _wait_ready(self, port: int) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # it exited: the port was taken meanwhile, or a bad option (see the log)
            try:
                if self._send(port, _encode("PING"), timeout=0.5).startswith(b"+PONG"):
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    @staticmethod
    def _send(port: int, request: bytes, timeout: float) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return reply

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        """One command, its reply's first line (``+OK``, ``:3``, ``-ERR ...``)."""
        return self._send(self.port, _encode(*args), timeout).split(b"\r\n", 1)[0]

    def _end(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.frozen = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop it: its connections close, new ones are refused (until ``start()``)."""
        assert self.proc is not None, "redis-server is not running"
        self._end()

    def freeze(self) -> None:
        """SIGSTOP: it keeps its connections and answers nothing (until ``thaw()``)."""
        assert self.proc is not None and not self.frozen
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None and self.frozen
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def redis_server(directory: pathlib.Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server._end()
