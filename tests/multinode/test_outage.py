"""Issue 14: Redis unreachable for 3 s in the middle of a live call across two nodes.

Two ``callbox`` processes on one real ``redis-server``; alice and carol (Node socket.io-client,
WebSocket) on node n1, bob and dave on n2; alice and bob in a live call. Each sends the other a
burst of candidates, every one acked ``{ok: true}``; the moment the last ack is in, Redis is frozen
(SIGSTOP: its connections stay open and nothing answers, as a partition or a stalled Redis does;
the state it holds stays, unlike a restart of a fresh, empty one). It stays frozen 3 s at least.

While it is, ``ops_cluster.mjs`` checks what users and operators see: ``/readyz`` 503 naming Redis
on both nodes (``/healthz`` still 200, ``callbox_redis_up`` 0); a new call (carol to dave), a relay in
the live call and the join of a new user (erin, connecting to n2 now) are refused
``{ok: false, code: "UNAVAILABLE"}`` (fast: ``--redis-timeout 0.5``); nobody is disconnected (pings
every second go on: ``--ping-interval 1``), and nobody is rung by the refused call.

After the thaw, without a restart: ``/readyz`` 200 on both within 5 s; every relay acked before the
freeze arrived exactly once and in order, the refused relay never (each sender's next relay comes
right after its burst); relays flow both ways; erin joins; carol calls dave (a new call, across nodes,
that connects); erin calls carol; and nobody ever got ``call:reconnecting``, ``call:ended`` or a
disconnect.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _ops_nodes import CallboxNode, nodes, play

from _interop import NEEDS_NODE
from _redis import RedisServer, redis_server

pytestmark = [*NEEDS_NODE, pytest.mark.redis, pytest.mark.process]

OUTAGE = 3.0  # s: the least time Redis stays frozen
FLAGS = [
    "--redis-timeout", "0.5",  # refusals within half a second
    "--reconnect-grace", "10",  # a resume token in user:joined, as a real deployment has
    "--ping-interval", "1", "--ping-timeout", "3",  # heartbeats go on during the outage
    "--log-level", "info",
]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


async def test_redis_outage_refuses_new_work_keeps_the_call_and_loses_nothing(redis: RedisServer,
                                                                              tmp_path: Path) -> None:
    async with nodes(tmp_path, redis.url, ["n1", "n2"], *FLAGS) as cluster:
        frozen_at: float | None = None

        def logs() -> str:
            return "\n".join(node.logs() for node in cluster.values())

        async def command(line: str) -> str:
            nonlocal frozen_at
            if line == "freeze":
                redis.freeze()
                frozen_at = time.monotonic()
                return "ok"
            if line == "thaw":
                assert frozen_at is not None
                # The outage lasts OUTAGE seconds whatever the script took to check it.
                await trio.sleep(max(0.0, frozen_at + OUTAGE - time.monotonic()))
                seconds = round(time.monotonic() - frozen_at, 2)
                redis.thaw()
                return "ok " + json.dumps({"seconds": seconds})
            return f"fail unknown command {line!r}"

        try:
            await play("outage", {"nodes": {k: n.url for k, n in cluster.items()}}, command, logs)
        finally:
            if redis.frozen:
                redis.thaw()
        # Both nodes served through it all.
        for node in cluster.values():
            assert_running(node)
            node.assert_no_traceback()


def assert_running(node: CallboxNode) -> None:
    assert node.proc.poll() is None, f"{node.node_id} exited {node.proc.returncode}\n{node.logs()}"
