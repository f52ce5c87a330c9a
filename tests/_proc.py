"""Running ``python -m callbox`` as a real process in tests."""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, scheme: str) -> None:
        self.proc = proc
        self.port = port
        self.base = f"{scheme}://127.0.0.1:{port}"


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBOX_")}
    env.update(extra or {})
    return env


@contextmanager
def callbox(*args: str, env: dict[str, str] | None = None, tls: bool = False) -> Iterator[Server]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "callbox", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        assert "listening on" in line, f"no listening line; stderr: {proc.stderr.read() if proc.stderr else ''}"
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        yield Server(proc, port, "https" if tls else "http")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


T = TypeVar("T")

# The TCP states of /proc/net/tcp (include/net/tcp_states.h) that a server's end of a connection is
# in before the server has closed it.
TCP_ESTABLISHED, TCP_CLOSE_WAIT = 0x01, 0x08


def tcp_end(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int] | None:
    """The kernel's view of the end of a TCP connection (IPv4, this host's network namespace) at
    ``local`` whose peer is ``remote``: (state, bytes received and not yet read by its owner), from
    /proc/net/tcp; None if there is no such socket (any more)."""

    def hexed(address: tuple[str, int]) -> str:
        # An IPv4 address as the 32-bit word in host byte order, and the port, in hex.
        (word,) = struct.unpack("=I", socket.inet_aton(address[0]))
        return f"{word:08X}:{address[1]:04X}"

    want_local, want_remote = hexed(local), hexed(remote)
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                return int(fields[3], 16), int(fields[4].split(":")[1], 16)
    return None


def server_let_go(server_end: tuple[str, int], client_end: tuple[str, int]) -> bool:
    """Whether the server has closed its end of a connection (after the client closed its own)."""
    end = tcp_end(server_end, client_end)
    return end is None or end[0] not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)


def wait_until(check: Callable[[], T | None], timeout: float = 5.0, what: str = "") -> T:
    """For tests that drive a process without trio, the same bounded wait on state as
    ``_raw.eventually``: call ``check`` every 10 ms until it returns something truthy, and return
    that; an AssertionError naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what or check!r}; last: {last!r}")
        time.sleep(0.01)


def run_fail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callbox", *args], capture_output=True, text=True,
                          env=_env(env), timeout=20)


def get(url: str, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


