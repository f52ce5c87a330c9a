"""Several ``python -m callbox`` nodes on one real ``redis-server``, for the multi-node tests (issue 14).

``with cluster(tmp_path, "--reconnect-grace", "10") as c:`` starts a redis-server (``tests/_redis.py``)
and the nodes ``n1`` and ``n2`` (their ``--node-id``) on 127.0.0.1 and free ports, each with the
settings in ``NODE_DEFAULTS`` then the extra arguments, and returns once every node has printed its
"callbox listening on" line. At the end every node still running is killed (SIGKILL: the tests do
not wait for a drain) and Redis stops.

- ``c.nodes["n2"].kill()`` is ``kill -9``; ``.terminate()`` is SIGTERM; ``.url`` is where a client
  connects; ``.metrics()`` reads its ``/metrics``.
- ``c.run(scenario, **env)`` runs ``tests/interop/cluster.mjs SCENARIO URL1 URL2`` and answers its
  requests ("@@ kill n2" on its stdout: that node is killed, "ok" on its stdin); it must exit 0.
  When it does not, the failure carries the script's output and the tail of every node's log.
- ``c.restart("n2")`` (or the script's "@@ restart n2", answered ``ok {"url": ...}``) starts a
  killed node again under its name, on the port it had, as a supervisor does; ``.wait_ready()`` waits
  for a node's ``/readyz`` 200 (a node listens before Redis has answered it).
- ``c.handlers["name"] = fn``: the script's "@@ name ARGS..." is answered with ``fn([ARGS...])``
  (an answer line, "ok [JSON]" or "fail WHY"), for what only one test knows how to do.

Every node writes its stdout and stderr to ``<tmp_path>/<node id>.log``; a failing test prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from _interop import NODE, printed_times
from _paths import INTEROP
from _proc import _env, get, wait_until
from _redis import RedisServer, redis_server

__all__ = ["Cluster", "Node", "cluster", "NODE_DEFAULTS", "NODE_TIMEOUT", "RING_TIMEOUT"]

SCRIPT = INTEROP / "cluster.mjs"
# Settings short enough for a test: a dead node is claimed within about 3 s, a call rings 3 s.
NODE_TIMEOUT = 2.0
RING_TIMEOUT = 3.0
NODE_DEFAULTS = ("--node-timeout", str(NODE_TIMEOUT), "--ring-timeout", str(RING_TIMEOUT), "--shutdown-timeout", "3")
# How long past --node-timeout a claim of a dead node may take (the spec: "+ ~1 s", and a margin).
CLAIM = 3.0
# How long a node may take from its start to its "listening" line (import, Redis connect).
STARTUP = 15.0
# The longest one scenario may run (cluster.mjs gives up by itself after 40 s).
SCENARIO_LIMIT = 50.0
# How much of a node's log a failure shows.
LOG_TAIL = 6000
# How long a node may take, once it listens, to be ready (its first heartbeat answered by Redis).
READY = 10.0

LISTENING = re.compile(r"callbox listening on (http://127\.0\.0\.1:(\d+)/socket\.io/)")


class Node:
    """One ``python -m callbox`` process with ``--node-id name``."""

    def __init__(self, name: str, log: pathlib.Path, argv: list[str]) -> None:
        self.name = name
        self.log = log
        self.argv = argv
        self.url = ""
        self.port = 0
        self._log_file: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=_env(None))

    def wait_listening(self) -> None:
        def listening() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited ({self.proc.returncode}) before it listened:\n"
                                     f"{' '.join(self.argv)}\n{self.log_tail()}")
            return LISTENING.search(self.log.read_text(errors="replace"))

        found = wait_until(listening, STARTUP, f"node {self.name}'s listening line")
        self.url = f"http://127.0.0.1:{found.group(2)}"
        self.port = int(found.group(2))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = READY) -> None:
        """Until its /readyz answers 200."""
        wait_until(lambda: get(f"{self.url}/readyz")[0] == 200, timeout, f"node {self.name}'s /readyz 200")

    def kill(self) -> None:
        """``kill -9``: no goodbye to anyone, not to its clients and not to Redis."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM (a drain, as its --drain-mode says); does not wait for the exit."""
        self.proc.send_signal(signal.SIGTERM)

    def metrics(self) -> dict[str, float]:
        """Its /metrics, as {"name{labels}": value}."""
        status, body = get(f"{self.url}/metrics")
        assert status == 200, (status, body)
        values: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def log_tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-LOG_TAIL:]

    def close(self) -> None:
        if self.alive:
            self.kill()
        self._log_file.close()


class Cluster:
    def __init__(self, redis: RedisServer, directory: pathlib.Path) -> None:
        self.redis = redis
        self.directory = directory
        self.nodes: dict[str, Node] = {}
        self.gone: list[Node] = []  # nodes restarted since: their logs
        self.times: list[dict[str, Any]] = []
        self.handlers: dict[str, Callable[[list[str]], str]] = {}

    def start(self, name: str, *args: str) -> Node:
        argv = [sys.executable, "-m", "callbox", "--host", "127.0.0.1", "--port", "0",
                "--redis-url", self.redis.url, "--node-id", name, *NODE_DEFAULTS, *args]
        node = Node(name, self.directory / f"{name}.log", argv)
        self.nodes[name] = node
        return node

    def restart(self, name: str) -> Node:
        """Start the node ``name``, which has died, again: its settings, its port; once it listens."""
        old = self.nodes[name]
        assert not old.alive, f"node {name} is running"
        old.close()
        self.gone.append(old)
        argv = list(old.argv)
        argv[argv.index("--port") + 1] = str(old.port)
        node = Node(name, self.directory / f"{name}.{len(self.gone)}.log", argv)
        self.nodes[name] = node
        node.wait_listening()
        return node

    def logs(self) -> str:
        return "".join(f"\n--- node {n.name} ({'running' if n.alive else f'exited {n.proc.returncode}'}) "
                       f"{' '.join(n.argv[2:])}\n{n.log_tail()}" for n in [*self.gone, *self.nodes.values()])

    def command(self, line: str) -> str:
        """One request of the script: its answer line."""
        name, *args = line.split()
        try:
            if name == "kill":
                self.nodes[args[0]].kill()
                return "ok"
            if name == "claimed":  # "claimed n2 by n1": n1 no longer counts n2 among the nodes alive
                dead, by = self.nodes[args[0]], self.nodes[args[2]]
                assert not dead.alive
                alive = sum(n.alive for n in self.nodes.values())
                wait_until(lambda: by.metrics().get("callbox_cluster_nodes") == alive, NODE_TIMEOUT + CLAIM,
                           f"{by.name}'s callbox_cluster_nodes to be {alive}")
                return "ok"
            if name == "restart":  # "restart n2": started again under its name, listening
                return "ok " + json.dumps({"url": self.restart(args[0]).url})
            if name in self.handlers:
                return self.handlers[name](args)
            return f"fail unknown command {line!r}"
        except (AssertionError, KeyError, OSError, subprocess.SubprocessError) as exc:
            return f"fail {' '.join(str(exc).split())}"

    def run(self, scenario: str, **env: str) -> list[dict[str, Any]]:
        """Run one scenario of cluster.mjs against n1 and n2: the times it measured."""
        assert NODE is not None
        argv = [NODE, str(SCRIPT), scenario, self.nodes["n1"].url, self.nodes["n2"].url]
        environ = {**os.environ, "NODE_TIMEOUT": str(NODE_TIMEOUT), "RING_TIMEOUT": str(RING_TIMEOUT), **env}
        errors = self.directory / f"{scenario}.stderr"
        with errors.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    text=True, env=environ)
        assert proc.stdin is not None and proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stream: IO[str]) -> None:
            for line in stream:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
        reader.start()
        out: list[str] = []
        deadline = time.monotonic() + SCENARIO_LIMIT
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(f"{scenario} ran past {SCENARIO_LIMIT} s\n" + "\n".join(out)) from None
                if line is None:
                    break
                if not line.startswith("@@ "):
                    out.append(line)
                    continue
                answer = self.command(line[3:])
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(answer + "\n")
                    proc.stdin.flush()
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            proc.stdout.close()
        report = "\n".join(out) + errors.read_text(errors="replace")
        assert proc.returncode == 0, f"{' '.join(argv)}\n{report}\n{self.logs()}"
        times = printed_times(out, "cluster time (ms)")
        self.times.extend(times)
        return times


@contextlib.contextmanager
def cluster(directory: pathlib.Path, *args: str, nodes: tuple[str, ...] = ("n1", "n2")) -> Iterator[Cluster]:
    """redis-server, and the nodes ``nodes`` with the settings ``args``, all listening."""
    with redis_server(directory) as redis:
        c = Cluster(redis, directory)
        try:
            for name in nodes:
                c.start(name, *args)
            for node in c.nodes.values():
                node.wait_listening()
            yield c
        finally:
            print(c.logs())  # shown when the test failed
            for node in c.nodes.values():
                node.close()
