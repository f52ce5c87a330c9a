"""Issue 14 at its edges, as a user or an operator meets them: a long-polling request that reaches
the wrong node, the cluster's metrics, the settings of several nodes at their limits, a node that
starts before Redis does, and a node started again under its name after a ``kill -9``.

Nodes are real ``python -m callbox`` processes on a real redis-server (``_cluster.py``), with
``--node-timeout 2``; clients are raw HTTP (urllib) or the real socket.io-client
(``tests/interop/cluster.mjs``).
"""

from __future__ import annotations

import json
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TypeVar

import pytest
from _cluster import Cluster, cluster

from _interop import NEEDS_NODE
from _proc import callbox, get, run_fail, wait_until
from _redis import redis_server

T = TypeVar("T")


def on_nodes(test: T) -> T:
    """The marks of a test with callbox nodes, Redis and Node scripts (the settings tests need
    neither Node nor, mostly, Redis)."""
    for mark in (*NEEDS_NODE, pytest.mark.redis, pytest.mark.process):
        test = mark(test)
    return test


# How soon a node is ready once Redis, which was down when it started, answers: it tries again
# every 0.2 s (_cluster.RETRY); a few seconds with the connect and a loaded machine.
READY_AGAIN = 5.0


def request(url: str, data: bytes | None = None) -> tuple[int, str]:
    """One HTTP request (a POST when ``data`` is given): its status and body."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain;charset=UTF-8"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """n1 and n2, both ready and counting each other (shared by the tests that change nothing)."""
    with cluster(tmp_path_factory.mktemp("two")) as c:
        for node in c.nodes.values():
            node.wait_ready()
            wait_until(lambda n=node: n.metrics()["callbox_cluster_nodes"] == 2, 5, f"{node.name} sees 2 nodes")
        yield c


# -- 1. long-polling without sticky sessions ----------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@on_nodes
def test_polling_request_at_the_wrong_node(two: Cluster, method: str) -> None:
    """A session opened on n1, then a request of it at n2 (a load balancer without sticky
    sessions): Engine.IO's "Session ID unknown" 400, and n2's log says the likely cause. The same
    session goes on at n1."""
    n1, n2 = two.nodes["n1"], two.nodes["n2"]
    status, body = get(f"{n1.url}/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith("0"), (status, body)
    sid = json.loads(body[1:])["sid"]
    query = f"/socket.io/?EIO=4&transport=polling&sid={sid}"

    data = b"40" if method == "POST" else None
    status, body = request(n2.url + query, data)
    assert (status, json.loads(body)) == (400, {"code": 1, "message": "Session ID unknown"})
    wait_until(lambda: [line for line in n2.log.read_text(errors="replace").splitlines()
                        if "unknown session id" in line and sid in line and "another node" in line
                        and "sticky sessions" in line], 5, "n2's log line on the unknown session id")

    # at n1, its own node, the session is fine: the namespace connects
    assert request(n1.url + query, b"40") == (200, "ok")
    status, body = request(n1.url + query)
    assert status == 200 and body.startswith("40{"), (status, body)
    assert "unknown session id" not in n1.log.read_text(errors="replace")  # n1 had nothing to complain of


# -- 2. what /metrics show of the cluster ---------------------------------------------------------


def relays(metrics: dict[str, float], direction: str) -> float:
    return metrics[f'callbox_cluster_relays_total{{direction="{direction}"}}']


@on_nodes
def test_cluster_metrics(two: Cluster) -> None:
    """Redis up, two nodes, round trips to Redis; in a live call alice (n1) sends bob (n2) 5
    candidates: n1's relays out and n2's relays in grow by 5, n2's lag histogram by 5 observations,
    and nothing moves the other way."""
    for node in two.nodes.values():
        metrics = node.metrics()
        assert metrics["callbox_redis_up"] == 1
        assert metrics["callbox_cluster_nodes"] == 2
        assert metrics["callbox_redis_seconds_count"] > 0
        assert metrics['callbox_redis_seconds_bucket{le="+Inf"}'] == metrics["callbox_redis_seconds_count"]

    snapshots: list[dict[str, dict[str, float]]] = []

    def snapshot(args: list[str]) -> str:
        snapshots.append({name: node.metrics() for name, node in two.nodes.items()})
        return "ok"

    two.handlers["snapshot"] = snapshot
    try:
        two.run("oneway")
    finally:
        del two.handlers["snapshot"]
    before, after = snapshots
    n1 = {d: relays(after["n1"], d) - relays(before["n1"], d) for d in ("out", "in")}
    n2 = {d: relays(after["n2"], d) - relays(before["n2"], d) for d in ("out", "in")}
    assert n1 == {"out": 5, "in": 0}, (n1, before, after)
    assert n2 == {"out": 0, "in": 5}, (n2, before, after)
    lag = {name: after[name]["callbox_cluster_lag_seconds_count"] - before[name]["callbox_cluster_lag_seconds_count"]
           for name in after}
    assert lag == {"n1": 0, "n2": 5}, lag
    assert after["n2"]["callbox_cluster_lag_seconds_sum"] >= before["n2"]["callbox_cluster_lag_seconds_sum"]


# -- 3. settings at their edges -------------------------------------------------------------------

# An address where no Redis listens: a bad setting stops the start before anything connects.
NOWHERE = "redis://127.0.0.1:1/0"


@pytest.mark.process
@pytest.mark.parametrize(("args", "named"), [
    (["--drain-mode", "handover"], "drain_mode: handover needs redis_url"),
    (["--redis-url", NOWHERE, "--drain-mode", "bogus"], "drain_mode: 'bogus' is out of range (handover, end-calls)"),
    (["--redis-url", NOWHERE, "--node-id", "a.b"], "node_id: 'a.b' is out of range (1-32 of A-Z a-z 0-9 _ -)"),
    (["--redis-url", NOWHERE, "--node-id", "n" * 33], f"node_id: '{'n' * 33}' is out of range"),
    (["--redis-url", NOWHERE, "--node-timeout", "0"], "node_timeout: 0.0 is out of range (1-3600 s)"),
    (["--redis-url", NOWHERE, "--redis-prefix", "x{y"], "redis_prefix: 'x{y' is out of range"),
    (["--redis-url", NOWHERE, "--redis-timeout", "0"], "redis_timeout: 0.0 is out of range (> 0)"),
], ids=["handover-without-redis", "drain-mode", "node-id-dot", "node-id-33", "node-timeout-0", "prefix-brace",
        "redis-timeout-0"])
def test_a_bad_cluster_setting_stops_the_start(args: list[str], named: str) -> None:
    result = run_fail("--host", "127.0.0.1", "--port", "0", *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "listening" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


@pytest.mark.process
@pytest.mark.redis
def test_the_longest_names_start_a_node_on_redis(tmp_path: pathlib.Path) -> None:
    """--redis-url with coredis installed: the node starts and serves; a 32-character node id and
    prefix (the most allowed) are fine, and its keys carry the prefix as their hash tag."""
    import coredis  # noqa: F401  (the redis extra: installed, or this test fails here)

    name, prefix = "N" * 31 + "-", "p_" * 16
    with redis_server(tmp_path) as redis, callbox("--redis-url", redis.url, "--node-id", name,
                                                   "--redis-prefix", prefix, "--node-timeout", "2") as server:
        assert get(f"{server.base}/healthz") == (200, "ok\n")
        wait_until(lambda: get(f"{server.base}/readyz") == (200, "ready\n"), READY_AGAIN, "/readyz 200")
        assert redis.command("ZSCORE", f"{{{prefix}}}:nodes", name).startswith(b"$")  # it beats, by name


# -- 4. Redis down when the nodes start ------------------------------------------------------------


@on_nodes
def test_nodes_started_before_redis(tmp_path: pathlib.Path) -> None:
    """Both nodes start while Redis is down: they serve /healthz, /readyz is 503 "redis
    unavailable", a user:join is refused UNAVAILABLE on a connection that stays open. Redis starts:
    within a few seconds both are ready, and on the same connections users join and call across
    the nodes, without a restart."""
    with cluster(tmp_path, nodes=()) as c:
        c.redis.stop()
        for name in ("n1", "n2"):
            c.start(name)
        for node in c.nodes.values():
            node.wait_listening()
        for node in c.nodes.values():
            assert get(f"{node.url}/healthz") == (200, "ok\n")
            assert get(f"{node.url}/readyz") == (503, "redis unavailable\n")
            metrics = node.metrics()
            assert (metrics["callbox_redis_up"], metrics["callbox_cluster_nodes"]) == (0, 0)

        def redis_start(args: list[str]) -> str:
            started = time.monotonic()
            c.redis.start()
            for node in c.nodes.values():
                node.wait_ready(READY_AGAIN)
            return "ok " + json.dumps({"seconds": round(time.monotonic() - started, 2)})

        c.handlers["redis-start"] = redis_start
        c.run("redis-late")
        for node in c.nodes.values():
            assert node.alive
            assert node.metrics()["callbox_redis_up"] == 1
            log = node.log.read_text(errors="replace")
            assert log.count("heartbeat failed") == 1, log  # once per outage
            assert "redis available" in log


# -- 5. a node started again under its name after kill -9 ----------------------------------------


def online(c: Cluster, args: list[str]) -> str:
    """"online n2 K": until node n2's gauge of users online is K (it went through its sessions)."""
    node, want = c.nodes[args[0]], float(args[1])
    wait_until(lambda: node.metrics()["callbox_users_online"] == want, 5, f"{node.name}'s callbox_users_online {want}")
    return "ok"


@on_nodes
@pytest.mark.parametrize("grace", ["0", "10"])
def test_a_node_restarted_under_its_name_cleans_up(tmp_path: pathlib.Path, grace: str) -> None:
    """kill -9 of n2 (bob in a call with alice on n1; carol idle) and n2 started again under the same
    --node-id before n1 would claim it (n1's --node-timeout is 10 s here): at its start the new n2
    takes the old one's sessions as lost. --reconnect-grace 0: alice's call ends (disconnected),
    bob and carol are offline. --reconnect-grace 10: alice hears bob is reconnecting, carol is
    offline, bob resumes on the new n2 with his resumeToken. Calls cross the nodes again."""
    with cluster(tmp_path, "--reconnect-grace", grace, "--node-timeout", "10") as c:
        for node in c.nodes.values():
            node.wait_ready()
        c.handlers["online"] = lambda args: online(c, args)
        times = c.run("restart", GRACE=grace)
        assert all(node.alive for node in c.nodes.values())
        assert len(c.gone) == 1
        restarted = c.nodes["n2"].log.read_text(errors="replace")
        assert "node claimed" in restarted and "sessions=2" in restarted, restarted
        # n1 never claimed n2: the new n2 cleaned up after the old one itself
        assert "node claimed" not in c.nodes["n1"].log.read_text(errors="replace")
        assert times and times[0]["restartToTold"] < 3000, times
