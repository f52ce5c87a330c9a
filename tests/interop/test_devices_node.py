"""Issue 13 with the real socket.io-client under Node: several devices per user (``max_devices``) and
glare merged by the server. Each test serves the signalling app here (loopback, port 0) and runs one
scenario of ``tests/interop/devices.mjs``, which plays alice and bob's devices and asserts what each
connection receives. Afterwards the server must hold nothing: no user, no device, no call, no ring
timer. The races run 200 rounds each (a few seconds; the whole file stays well under a minute)."""

from __future__ import annotations

import pytest

from _interop import NEEDS_NODE, StartServer, run_script, serve, settled
from _paths import INTEROP

SCRIPT = INTEROP / "devices.mjs"
SCENARIO_LIMIT = 75  # s: the script gives up after 60 s itself
ROUNDS = 200
# Races initiate a call per round: far past the default per-user allowance of call attempts. And
# Node's socket.io-client polls without keep-alive: every GET and POST is a new TCP connection from
# 127.0.0.1, a few per round, far past the default allowance of new connections per address (a
# browser keeps its connections alive).
RACING = {
    "initiate_burst": 10 * ROUNDS,
    "connection_rate_per_address": 100.0 * ROUNDS,
    "connection_burst_per_address": 100 * ROUNDS,
}

pytestmark = NEEDS_NODE


async def run_scenario(port: int, scenario: str, mode: str = "websocket", rounds: int = ROUNDS) -> str:
    out = await run_script(SCRIPT, SCENARIO_LIMIT, f"http://127.0.0.1:{port}", scenario, mode, str(rounds))
    print(out)  # the races' STATS lines (pytest -s shows them)
    return out


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_ring_all_first_accept_wins(start_server: StartServer, mode: str) -> None:
    """Three devices of bob ring with one callId; d2 answers; d1 and d3 hear answered_elsewhere;
    alice's relays reach d2 only; d1's relay is NOT_IN_CALL; d3's late accept CALL_NOT_FOUND."""
    port, signalling = await serve(start_server, max_devices=3)
    await run_scenario(port, "ringall", mode)
    await settled(signalling)


async def test_simultaneous_accepts_one_wins(start_server: StartServer) -> None:
    """d1 and d3 accept in the same tick, 200 times: exactly one wins each time."""
    port, signalling = await serve(start_server, max_devices=3, **RACING)
    await run_scenario(port, "race")
    await settled(signalling)


async def test_reject_and_cancel_reach_every_device(start_server: StartServer) -> None:
    port, signalling = await serve(start_server, max_devices=3)
    await run_scenario(port, "reject")
    await settled(signalling)


async def test_ring_timeout_reaches_every_device(start_server: StartServer) -> None:
    port, signalling = await serve(start_server, max_devices=3, ring_timeout=0.5)
    await run_scenario(port, "timeout")
    await settled(signalling)


async def test_devices_join_rejoin_and_replace(start_server: StartServer) -> None:
    """A device joining while the call rings is rung; a same-deviceId rejoin replaces that device
    only; a device past max_devices replaces the least recently active one not in the call."""
    port, signalling = await serve(start_server, max_devices=3)
    await run_scenario(port, "joining")
    await settled(signalling)


@pytest.mark.parametrize("mode", ["websocket", "polling"])
async def test_glare_is_merged(start_server: StartServer, mode: str) -> None:
    """alice and bob call each other in the same tick, 200 times (one device each, the default
    max_devices): one call every time, the later initiate answered as its accept (merged)."""
    port, signalling = await serve(start_server, **RACING)
    await run_scenario(port, "glare", mode)
    await settled(signalling)


async def test_glare_with_devices(start_server: StartServer) -> None:
    """Glare between alice and bob's d1 while bob's d2 is online: d1 answers the merged call; d2,
    if alice's call rang it, hears answered_elsewhere, and is no party."""
    port, signalling = await serve(start_server, max_devices=3, **RACING)
    await run_scenario(port, "glare-devices", rounds=ROUNDS // 2)
    await settled(signalling)
