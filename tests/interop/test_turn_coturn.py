"""TURN credentials from user:joined, proven against a real coturn (Debian's ``coturn``).

callbox runs with --turn-secret/--turn-urls; a socket.io-client joins and receives iceServers; then
coturn's own test client allocates a relay with those credentials. The same allocation with a
credential made from the wrong secret, or with an expired username, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from _paths import INTEROP
from _proc import callbox

pytestmark = [pytest.mark.coturn, pytest.mark.node, pytest.mark.process]

SECRET = "turn-shared-secret-for-tests"
JOIN = """
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"], reconnection: false });
s.on("connect", () => s.emit("user:join", { userId: "alice" }));
s.on("user:joined", (data) => { console.log(JSON.stringify(data)); process.exit(0); });
s.on("connect_error", (e) => { console.error(e.message); process.exit(1); });
setTimeout(() => process.exit(2), 10000);
"""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1: coturn listens on both (a port free for UDP
    alone may be taken for TCP by another test's server, and coturn then never comes up)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both UDP and TCP on 127.0.0.1")


@pytest.fixture
def coturn(tmp_path: pathlib.Path) -> Iterator[int]:
    assert shutil.which("turnserver"), "coturn is not installed (.ci/run installs Debian's coturn)"
    port = free_port()
    log = tmp_path / "turnserver.log"
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=callbox.test", "--no-tls", "--no-dtls",
         "--no-cli", "--allow-loopback-peers", "--log-file=stdout", "--simple-log"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def wait_ready(port: int, log: pathlib.Path) -> None:
    """Until coturn answers a STUN Binding request (it takes a moment to open its listeners)."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(request, ("127.0.0.1", port))
            try:
                if s.recv(2048)[:2] == b"\x01\x01":  # Binding success response
                    return
            except TimeoutError:
                pass
    raise AssertionError("coturn did not answer STUN within 20 s:\n" + log.read_text()[-3000:])


def allocate(port: int, username: str, credential: str) -> bool:
    """coturn's client: allocate a relay, send a few packets through it to itself."""
    out = subprocess.run(
        ["turnutils_uclient", "-p", str(port), "-u", username, "-w", credential, "-e", "127.0.0.1",
         "-n", "1", "-m", "1", "-y", "-c", "127.0.0.1"],
        capture_output=True, text=True, timeout=30,
    )
    return out.returncode == 0 and "Cannot complete Allocation" not in out.stdout + out.stderr


def test_issued_turn_credentials_work_on_coturn(coturn: int) -> None:
    with callbox("--turn-secret", SECRET, "--turn-urls", f"turn:127.0.0.1:{coturn}",
                 "--stun-urls", f"stun:127.0.0.1:{coturn}", "--turn-ttl", "600") as s:
        out = subprocess.run(["node", "-e", JOIN, s.base], cwd=INTEROP, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    joined = json.loads(out.stdout)
    assert joined["userId"] == "alice"
    stun, turn = joined["iceServers"]
    assert stun == {"urls": [f"stun:127.0.0.1:{coturn}"]}
    assert turn["urls"] == [f"turn:127.0.0.1:{coturn}"]
    expiry, user = turn["username"].split(":")
    assert user == "alice" and 590 <= int(expiry) - time.time() <= 610
    assert allocate(coturn, turn["username"], turn["credential"])

    wrong = base64.b64encode(hmac.new(b"not-the-secret", turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert not allocate(coturn, turn["username"], wrong)
    expired = f"{int(time.time()) - 60}:alice"
    expired_cred = base64.b64encode(hmac.new(SECRET.encode(), expired.encode(), hashlib.sha1).digest()).decode()
    assert not allocate(coturn, expired, expired_cred)
