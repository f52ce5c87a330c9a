"""Running ``python -m callbox`` as a real process in tests."""

from __future__ import annotations

import os
import select
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


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


