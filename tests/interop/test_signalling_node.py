"""Signalling end to end with the real socket.io-client under Node: each test serves the signalling
app here (loopback, port 0) and runs one scenario of ``tests/interop/signalling.mjs``, which plays
two or three users and asserts what each receives. Afterwards the server must hold nothing: no
user, no call, no ring timer. One test runs the ``callbox`` command itself, as a new user would."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest

from _interop import NEEDS_NODE, NODE, StartServer, run_script, serve
from _interop import settled as _settled
from _paths import INTEROP

SCRIPT = INTEROP / "signalling.mjs"
SCENARIO_LIMIT = 40  # s: a scenario waits 5 s at most per step, 15 s for a killed peer

pytestmark = NEEDS_NODE

# Here the server is held to no user, no call and no ring timer afterwards.
settled = partial(_settled, graces=False)


async def run_scenario(port: int, scenario: str, mode: str = "websocket") -> None:
    await run_script(SCRIPT, SCENARIO_LIMIT, f"http://127.0.0.1:{port}", scenario, mode)


@pytest.mark.parametrize("mode", ["websocket", "polling", "default"])
async def test_complete_call(start_server: StartServer, mode: str) -> None:
    port, signalling = await serve(start_server)
    await run_scenario(port, "call", mode)
    await settled(signalling)


@pytest.mark.parametrize("scenario", ["reject", "cancel", "busy", "offline", "relays", "takeover", "acks", "invalid"])
async def test_scenario(start_server: StartServer, scenario: str) -> None:
    port, signalling = await serve(start_server)
    await run_scenario(port, scenario)
    await settled(signalling)


async def test_ring_timeout(start_server: StartServer) -> None:
    port, signalling = await serve(start_server, ring_timeout=0.5)
    await run_scenario(port, "timeout")
    await settled(signalling)


async def test_rate_limit(start_server: StartServer) -> None:
    port, signalling = await serve(start_server, initiate_burst=2)
    await run_scenario(port, "ratelimit")
    await settled(signalling)


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_peer_killed_mid_call(start_server: StartServer, mode: str) -> None:
    # Over polling the server notices the dead peer by its aborted GET or, at worst, its missed
    # heartbeat: short pings keep that within the scenario's wait.
    port, signalling = await serve(start_server, ping_interval=1, ping_timeout=1, reconnect_grace=1)
    await run_scenario(port, "killed", mode)
    await settled(signalling)


async def test_acked_refusal_is_not_also_an_error_event(start_server: StartServer) -> None:
    port, _ = await serve(start_server)
    await run_scenario(port, "acks-only")


@pytest.mark.process
def test_the_callbox_command_serves_signalling() -> None:
    """`callbox` with no flags but a free port: two clients place a whole call through it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "callbox", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        assert NODE is not None
        done = subprocess.run(
            [NODE, str(SCRIPT), f"http://127.0.0.1:{port}", "call", "default"],
            capture_output=True,
            text=True,
            timeout=SCENARIO_LIMIT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
