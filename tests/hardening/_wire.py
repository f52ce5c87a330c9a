"""Wire-level tools for the hardening tests: a real ``python -m callbox`` process whose log goes to a
file (so that a flood of log lines can never block it on a full pipe), raw TCP exchanges, and raw
WebSocket frames (masked or not, any opcode, any length) with a parser for what the server sends.

Every wait is bounded: each helper takes a timeout, and loops stop on a count as well as a time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from _raw import eventually

HOST = "127.0.0.1"
WAIT = 5.0


# -- a real server process -----------------------------------------------------------------------


@dataclass
class Proc:
    """A running ``python -m callbox``; its log (stderr) is a file that tests read."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: pathlib.Path
    args: tuple[str, ...] = ()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, since: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def errors(self, since: int = 0) -> list[str]:
        """Log lines at ERROR or above, and tracebacks, written after offset ``since``. Fails if
        nothing at all was written since then: every test makes the server log something (a
        session opened or closed, a user joined or left), so an empty log means that it was not
        captured, and "no error in it" would prove nothing."""
        lines = self.log(since).splitlines()
        assert lines, f"the server logged nothing after offset {since}: its log was not captured"
        return [line for line in lines
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
                or '"level": "error"' in line]

    async def wait_log(self, pattern: str, since: int = 0, timeout: float = WAIT) -> str:  # noqa: ASYNC109
        """The first log line after offset ``since`` that matches the regular expression ``pattern``,
        once the server has written it (bounded)."""
        regex = re.compile(pattern)

        def line() -> str | None:
            return next((x for x in self.log(since).splitlines() if regex.search(x)), None)

        return await eventually(line, timeout, f"a log line matching {pattern!r}")

    def status(self, key: str) -> int:
        """A /proc/PID/status figure in kB (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_kb(self) -> int:
        return self.status("VmRSS")

    def peak_kb(self) -> int:
        return self.status("VmHWM")

    def threads_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBOX_")}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def spawn(*args: str, env: dict[str, str] | None = None) -> Iterator[Proc]:
    """Run the ``callbox`` command on loopback and a free port until the block ends (then SIGKILL).

    Settings the server may not have yet are best given in ``env`` (``CALLBOX_<NAME>``): an unknown
    variable is ignored, where an unknown flag stops start-up."""
    fd, name = tempfile.mkstemp(prefix="callbox-hardening-", suffix=".log")
    log_path = pathlib.Path(name)
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callbox", "--host", HOST, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=log_file, env=clean_env(env),
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        assert "listening on" in line, f"no listening line; log: {log_path.read_text()}"
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        yield Proc(proc, port, log_path, args)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log_path.unlink(missing_ok=True)


# -- raw TCP ---------------------------------------------------------------------------------------


async def tcp(port: int, *, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP connection to the server; ``rcvbuf`` shrinks its receive buffer (set before connecting,
    so that the window the server sees is small too): a client that stops reading then stalls the
    server's writes after a few kB instead of megabytes."""
    with trio.fail_after(WAIT):
        if rcvbuf is None:
            return await trio.open_tcp_stream(HOST, port)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect((HOST, port))
        return trio.SocketStream(sock)


async def read_until_closed(stream: trio.SocketStream, timeout: float = WAIT,  # noqa: ASYNC109
                            limit: int = 1 << 22) -> tuple[bytes, bool]:
    """Everything the server writes until it closes (True) or ``timeout`` passes (False)."""
    out = bytearray()
    with trio.move_on_after(timeout):
        while len(out) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # a reset is a close too
                return bytes(out), True
            if not chunk:
                return bytes(out), True
            out += chunk
    return bytes(out), False


async def exchange(port: int, data: bytes, timeout: float = WAIT) -> tuple[bytes, bool]:  # noqa: ASYNC109
    """Send raw bytes on a new connection; return what came back and whether the server closed."""
    stream = await tcp(port)
    try:
        with trio.fail_after(WAIT):
            await stream.send_all(data)
        return await read_until_closed(stream, timeout)
    finally:
        await stream.aclose()


@dataclass
class HTTPReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rest: bytes = b""  # what followed the first response (a second, pipelined one)


def parse_reply(data: bytes) -> HTTPReply | None:
    """The first HTTP/1.1 response in ``data`` (Content-Length framed, as the server writes)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not match:
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    size = int(headers.get("content-length", "0"))
    return HTTPReply(int(match.group(1)), headers, rest[:size], rest[size:])


def get_request(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode()


def eio_target(transport: str = "polling", sid: str | None = None) -> str:
    return f"/socket.io/?EIO=4&transport={transport}" + (f"&sid={sid}" if sid else "")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``name{label="v"} value`` lines into a dict keyed by ``name{label="v"}``."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


async def metrics(port: int, headers: str = "") -> dict[str, float]:
    data, _ = await exchange(port, get_request("/metrics", "Connection: close\r\n" + headers))
    reply = parse_reply(data)
    assert reply is not None and reply.status == 200, data[:200]
    return parse_metrics(reply.body.decode())


async def wait_metrics(port: int, want: dict[str, float], timeout: float = WAIT) -> dict[str, float]:  # noqa: ASYNC109
    """Poll /metrics until every ``want`` figure is reached (the connection polling counts itself:
    ``callbox_tcp_connections`` includes the /metrics request's own connection)."""
    m: dict[str, float] = {}

    async def reached() -> dict[str, float] | None:
        nonlocal m
        m = await metrics(port)
        return m if all(m.get(k) == v for k, v in want.items()) else None

    try:
        return await eventually(reached, timeout)
    except AssertionError:
        raise AssertionError(f"metrics never reached {want}: {({k: m.get(k) for k in want})}") from None


# -- raw WebSocket frames --------------------------------------------------------------------------

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
MASK_KEY = b"\x12\x34\x56\x78"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """One WebSocket frame as a client writes it. ``length`` overrides the announced payload length
    (to lie about it); ``rsv`` sets the three reserved bits (0-7)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK_KEY[i % 4] for i, b in enumerate(payload))
    return head + MASK_KEY + body


def text(s: str) -> bytes:
    return frame(TEXT, s.encode())


def close_frame(code: int | None = None, reason: bytes = b"", *, raw: bytes | None = None) -> bytes:
    payload = raw if raw is not None else (b"" if code is None else struct.pack("!H", code) + reason)
    return frame(CLOSE, payload)


def parse_one(data: bytes) -> tuple[int, bytes, int] | None:
    """The first whole server frame (unmasked) in ``data``: (opcode, payload, bytes used), or None."""
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    n = b1 & 0x7F
    j = 2
    if n == 126:
        if len(data) < 4:
            return None
        n = struct.unpack("!H", data[2:4])[0]
        j = 4
    elif n == 127:
        if len(data) < 10:
            return None
        n = struct.unpack("!Q", data[2:10])[0]
        j = 10
    if j + n > len(data):
        return None
    return b0 & 0x0F, data[j:j + n], j + n


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Every whole server frame in ``data``: [(opcode, payload)], and the incomplete tail."""
    frames = []
    while (one := parse_one(data)) is not None:
        frames.append((one[0], one[1]))
        data = data[one[2]:]
    return frames, data


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


WS_KEY = base64.b64encode(b"hardening-key-16").decode()


def ws_upgrade_request(sid: str | None = None, extra: str = "", *, key: str | None = WS_KEY,
                       version: str | None = "13", connection: str = "Upgrade") -> bytes:
    lines = [f"GET {eio_target('websocket', sid)} HTTP/1.1", f"Host: {HOST}", "Upgrade: websocket",
             f"Connection: {connection}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class RawWS:
    """A WebSocket opened by hand: the test writes any bytes and reads the server's frames."""

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self.stream = stream
        self.buffer = buffered
        self.closed = False

    @classmethod
    async def open(cls, port: int, sid: str | None = None, *, rcvbuf: int | None = None) -> tuple[RawWS, str]:
        """A direct WebSocket session (or an upgrade probe when ``sid`` is given). Returns the socket
        and, for a new session, its sid (else "")."""
        stream = await tcp(port, rcvbuf=rcvbuf)
        with trio.fail_after(WAIT):
            await stream.send_all(ws_upgrade_request(sid))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed during the handshake: {data!r}"
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = cls(stream, rest)
        if sid is not None:
            return ws, ""
        opcode, payload = await ws.next_frame()
        assert opcode == TEXT and payload.startswith(b"0{"), payload
        return ws, json.loads(payload[1:])["sid"]

    async def send(self, data: bytes) -> None:
        with trio.fail_after(WAIT):
            await self.stream.send_all(data)

    async def next_frame(self, timeout: float = WAIT) -> tuple[int, bytes]:  # noqa: ASYNC109
        """The next frame; (-1, b"") if the server closed the TCP connection first."""
        with trio.fail_after(timeout):
            while True:
                one = parse_one(self.buffer)
                if one is not None:
                    self.buffer = self.buffer[one[2]:]
                    return one[0], one[1]
                if self.closed:
                    return -1, b""
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    self.closed = True
                    continue
                self.buffer += chunk

    async def until_closed(self, timeout: float = WAIT, limit: int = 10_000) -> list[tuple[int, bytes]]:  # noqa: ASYNC109
        """Every frame up to the end of the TCP connection (fails if it stays open past ``timeout``)."""
        frames = []
        with trio.fail_after(timeout):
            for _ in range(limit):
                f = await self.next_frame(timeout)
                if f[0] == -1:
                    return frames
                frames.append(f)
        raise AssertionError(f"more than {limit} frames")

    async def aclose(self) -> None:
        await self.stream.aclose()


def wall() -> float:
    return time.monotonic()
