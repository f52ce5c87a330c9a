"""Issue 14 end to end: two ``python -m callbox`` nodes (n1, n2) sharing one real redis-server, and
the real socket.io-client (Node, WebSocket) on each. Each test starts its own Redis and nodes
(``_cluster.py``) and runs one scenario of ``tests/interop/cluster.mjs``, which plays the users and
asserts what each of them receives; it asks this side to ``kill -9`` a node when the story says so.

Settings for every node (``_cluster.NODE_DEFAULTS``): ``--node-timeout 2`` (a dead node is claimed
within about 3 s) and ``--ring-timeout 3``. The times the scenarios measure are printed (``-s``).
"""

from __future__ import annotations

import pathlib

import pytest
from _cluster import cluster

from _interop import NEEDS_NODE

pytestmark = [*NEEDS_NODE, pytest.mark.redis, pytest.mark.process]


# -- 1. the call across nodes ---------------------------------------------------------------------


def test_call_flow_across_nodes(tmp_path: pathlib.Path) -> None:
    """alice on n1 calls bob on n2: join (socket ids name the node), initiate, incoming, accept,
    offer and answer byte for byte (non-ASCII, escapes), 50 candidates each way in order, end; then
    bob calls back."""
    with cluster(tmp_path) as c:
        c.run("flow")
        # what an operator sees: two nodes, and the relays went through Redis both ways (each
        # side sent the other at least its 50 candidates and the end of candidates)
        for node in c.nodes.values():
            assert node.alive
            metrics = node.metrics()
            assert metrics["callbox_cluster_nodes"] == 2
            for direction in ("out", "in"):
                assert metrics[f'callbox_cluster_relays_total{{direction="{direction}"}}'] >= 51, metrics


def test_busy_across_nodes(tmp_path: pathlib.Path) -> None:
    """Users in a call (ringing, then live) are USER_BUSY to callers on either node."""
    with cluster(tmp_path) as c:
        c.run("busy")


def test_offline_across_nodes(tmp_path: pathlib.Path) -> None:
    """A user nobody joined as, and one who left n2, are USER_OFFLINE to a caller on n1."""
    with cluster(tmp_path) as c:
        c.run("offline")


def test_take_over_across_nodes(tmp_path: pathlib.Path) -> None:
    """A join on one node takes the user id from a connection on the other: SESSION_REPLACED,
    the call ends (replaced), and calls reach the new connection (n2 -> n1, then n1 -> n2)."""
    with cluster(tmp_path) as c:
        c.run("takeover")


def test_initiate_rate_limit_across_nodes(tmp_path: pathlib.Path) -> None:
    """--initiate-burst 2: alice's two attempts on n1 and her third on n2 share one allowance."""
    with cluster(tmp_path, "--initiate-burst", "2") as c:
        c.run("ratelimit")


# -- 2-4. a node dies ---------------------------------------------------------------------------


def test_ring_deadline_survives_the_callees_node(tmp_path: pathlib.Path) -> None:
    """kill -9 of bob's node while alice's call rings him: n1 fires the ring deadline, alice gets
    call:timeout within ring timeout + 1.5 s of her call:initiate, and is free to call again."""
    with cluster(tmp_path, "--reconnect-grace", "10") as c:
        c.run("ringkill")
        assert c.nodes["n1"].alive


def test_grace_resume_on_another_node(tmp_path: pathlib.Path) -> None:
    """--reconnect-grace 10, a live call alice (n1) - bob (n2), kill -9 n2: alice gets
    call:reconnecting once n1 has claimed n2; alice's ICE restart waits; bob joins n1 with his
    resumeToken and gets it, both get call:reconnected, and relays pass both ways again."""
    with cluster(tmp_path, "--reconnect-grace", "10") as c:
        c.run("resume")
        assert c.nodes["n1"].alive


def test_grace_resume_before_the_claim(tmp_path: pathlib.Path) -> None:
    """--reconnect-grace 10, kill -9 n2 in a live call and bob joins n1 with his resumeToken at
    once, before n1 claims n2: both get call:reconnected; after the claim the call goes on, and
    nobody hears of bob being away or of the call ending."""
    with cluster(tmp_path, "--reconnect-grace", "10") as c:
        c.run("resume-early")
        assert c.nodes["n1"].alive


def test_no_grace_ends_the_call_when_the_node_dies(tmp_path: pathlib.Path) -> None:
    """--reconnect-grace 0, a live call alice (n1) - bob (n2), kill -9 n2: alice gets call:ended
    {reason: "disconnected"} within node timeout + 2 s; bob is offline until he joins again."""
    with cluster(tmp_path, "--reconnect-grace", "0") as c:
        c.run("nograce")
        assert c.nodes["n1"].alive
