"""Several callbox nodes on one Redis (issue 14): what a relay and a call flow cost across nodes.

    .venv/bin/python -m bench.cluster                 # 3 rounds, about 5 minutes; tables on stdout
    .venv/bin/python -m bench.cluster --smoke         # tiny sizes, one round: checks that it works
    .venv/bin/python -m bench.cluster --setups memory,cross --scenarios relay --rounds 5

Not part of ``python -m bench`` (its default list and its smoke test stay as they are). The same load
generator (bench/loadgen/gen.mjs) and the same scenarios and sizes as the suite (``relay``: 20 call
pairs at saturation, 4 candidates in flight per direction; ``fixed``: the same pairs at 1,000
candidates/s in all, ``--rate`` (the suite's 4,000/s is past what two nodes relay across each other
here); ``flows``: 20 calls at once, ``--calls``, each a whole flow with 10 candidates each way), in
batched writes, against four setups:

- ``memory``: one node, no Redis: the suite's callbox. Node on core 0, generator on core 1.
- ``redis-1``: one node on Redis, every user on it (a relay: the node and one script in Redis).
  Node on core 0; redis-server and the generator on core 1.
- ``cross``: two nodes on one Redis, each pair's first user on n1 and second on n2: every call spans
  the two nodes (a relay: one script from the sender's node that checks the call and appends to the
  other node's inbox, a Redis stream; that node's read). n1 on core 0,
  n2 on core 1, redis-server and the generator wherever the kernel puts them: two cores for four
  processes, which is the machine.
- ``split``: the same two nodes, each pair on one of them (pairs alternate): every call within one
  node, half the calls on each. Pinned as ``cross``.

Every run starts a fresh redis-server (as tests/_redis.py does: free port, nothing persisted) and fresh
nodes (``callbox --redis-url ... --node-id n1|n2``, with the suite's settings: limits lifted,
``--recovery-window 0 --reconnect-grace 0``; loaded once ``/readyz`` says 200), and stops them after.
CPU is each process's user + system time from /proc/PID/stat over the measured window (the generator
reads it: ``--pid`` and ``--pids``), so "CPU per relay" is the sum of both nodes' and redis-server's CPU
over the relays received. Setups alternate within a round and rotate across rounds; the tables give
medians over the rounds and, for ratios, the median of the same round's ratios. Each run records the
1-minute load average before it, how long each process waited for a core (run_delay,
/proc/PID/schedstat), and the CPU the machine spent on other processes meanwhile (/proc/stat less this
run's processes): a run where that passes ``--max-others`` of a core is run again (``--retries``).

Before the rounds the suite's protocol check runs on every setup (across the nodes in ``cross``:
x and z on n1, y on n2, and y taken over from n1).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import report, runner
from .runner import BENCH, GEN, GEN_CORE, ROOT, SERVER_CORE, Plan

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from _redis import RedisServer  # tests/_redis.py: how the tests start a real redis-server

SCENARIOS = ("relay", "fixed", "flows")
# The fixed rate, in candidates per second in all: moderate for every setup (two nodes on this
# machine relay about 2,500-3,000/s across them at saturation), where the suite's 4,000/s is not.
RATE = 1000


@dataclass(frozen=True)
class Setup:
    name: str
    nodes: int  # 0: one node without Redis
    layout: str  # gen.mjs --layout
    cores: tuple[str | None, ...]  # per node (None: any core)
    redis_core: str | None
    gen_core: str | None
    what: str


SETUPS = {
    s.name: s for s in (
        Setup("memory", 0, "one", (SERVER_CORE,), None, GEN_CORE, "1 node, in memory (no Redis)"),
        Setup("redis-1", 1, "one", (SERVER_CORE,), GEN_CORE, GEN_CORE, "1 node on Redis"),
        Setup("cross", 2, "cross", (SERVER_CORE, GEN_CORE), None, None, "2 nodes, every call across them"),
        Setup("split", 2, "split", (SERVER_CORE, GEN_CORE), None, None, "2 nodes, every call within one"),
    )
}


def _pinned(core: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if core is not None else command


TICK = os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core; /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _ours_s(pids: list[int]) -> float:
    """What this run's processes have used: the servers, this runner, and its finished children
    (the generator once it has exited)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(_cpu_s(pid) for pid in pids) + own.ru_utime + own.ru_stime + children.ru_utime
            + children.ru_stime)


def _waited_ns(pid: int) -> int:
    """How long the process's main thread was runnable but waited for a core, in ns (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class Node(runner.Server):
    """One callbox process (a node with ``redis_url``), started like the suite's servers, and with
    Redis, waited for until ready."""

    def __init__(self, logs: Path, core: str | None, ring_timeout: float, redis_url: str = "",
                 node_id: str = "") -> None:
        extra = ("--redis-url", redis_url, "--node-id", node_id) if redis_url else ()
        super().__init__("callbox", logs, ring_timeout, core=core, extra=extra, label=node_id or "memory")
        # A node listens before Redis has answered it, and is ready (/readyz 200) once it has.
        deadline = time.monotonic() + 30
        while redis_url and not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready within 30 s: {self.tail()}")
            time.sleep(0.02)

    def ready(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                                                  timeout=1) as answer:
            return bool(answer.status == 200)
        return False


@contextlib.contextmanager
def started(setup: Setup, logs: Path, ring_timeout: float = 30.0) -> Iterator[tuple[list[Node], RedisServer | None]]:
    """A fresh redis-server (unless ``memory``) and the setup's nodes, pinned; stopped at the end."""
    redis: RedisServer | None = None
    nodes: list[Node] = []
    try:
        if setup.nodes:
            folder = Path(tempfile.mkdtemp(prefix="redis-", dir=logs))
            redis = RedisServer(folder)
            redis.start()
            assert redis.proc is not None
            if setup.redis_core is not None:  # every thread of it (-a)
                subprocess.run(["taskset", "-a", "-p", "-c", setup.redis_core, str(redis.proc.pid)],
                               check=True, capture_output=True)
            for i, core in enumerate(setup.cores):
                nodes.append(Node(logs, core, ring_timeout, redis.url, f"n{i + 1}"))
        else:
            nodes.append(Node(logs, setup.cores[0], ring_timeout))
        yield nodes, redis
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait()
        if redis is not None:
            redis._end()


def generate(scenario: str, setup: Setup, nodes: list[Node], redis: RedisServer | None, plan: Plan,
             **options: Any) -> dict[str, Any]:
    """One generator run; its JSON result, with each process's CPU under its role."""
    roles = {f"n{i + 1}": node.pid for i, node in enumerate(nodes)}
    if redis is not None and redis.proc is not None:
        roles["redis"] = redis.proc.pid
    pids = list(roles.values())
    command = _pinned(setup.gen_core, [runner.node(), str(GEN), scenario, "--port", str(nodes[0].port),
                                       "--pid", str(pids[0]), "--timeout", str(plan.timeout)])
    if len(pids) > 1:
        command += ["--pids", ",".join(map(str, pids[1:]))]
    if len(nodes) > 1:
        command += ["--port2", str(nodes[1].port), "--layout", setup.layout]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    waited = {role: _waited_ns(pid) for role, pid in roles.items()}
    busy, ours = _busy_s(), _ours_s(pids)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=plan.timeout + 60, check=False,
                              preexec_fn=runner._die_with_parent)
    except subprocess.TimeoutExpired:
        return {"error": f"generator did not finish in {plan.timeout + 60} s"}
    elapsed = time.perf_counter() - t0
    # The noise: CPU the machine spent on anything but this run (other processes), per second.
    others = max(0.0, (_busy_s() - busy) - (_ours_s(pids) - ours)) / elapsed
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"generator exited with {done.returncode}: {done.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    by_pid = result.pop("cpu_by_pid", None) or {str(pids[0]): result.get("server_cpu")}
    result["cpu"] = {role: by_pid.get(str(pid)) for role, pid in roles.items()}
    result["cpu"]["gen"] = result.get("gen_cpu")
    # the share of the generator run each process spent waiting for a core (other processes)
    result["waited"] = {role: round((_waited_ns(pid) - waited[role]) / 1e9 / elapsed, 4)
                        for role, pid in roles.items()}
    result["others"] = round(others, 3)
    dead = [f"{n.log_path.name}: {n.tail()}" for n in nodes if n.proc.poll() is not None]
    if dead:
        result["error"] = f"a node died: {dead}"
    return result


def run_one(setup: Setup, scenario: str, plan: Plan, logs: Path) -> dict[str, Any]:
    load1 = os.getloadavg()[0]
    try:
        with started(setup, logs) as (nodes, redis):
            if scenario == "relay":
                result = generate("relay", setup, nodes, redis, plan, pairs=plan.pairs, window=plan.window,
                                  warmup=plan.warmup, duration=plan.duration)
            elif scenario == "fixed":
                result = generate("fixed", setup, nodes, redis, plan, pairs=plan.pairs, rate=plan.rate,
                                  warmup=plan.warmup, duration=plan.duration)
            elif scenario == "flows":
                result = generate("flows", setup, nodes, redis, plan, calls=plan.calls, ice=plan.ice,
                                  warmup=plan.warmup, duration=plan.duration)
            else:
                raise ValueError(scenario)
    except RuntimeError as exc:
        result = {"error": str(exc)}
    result["load1"] = load1
    result.pop("scenario", None)
    return result


def check(setup: Setup, logs: Path, plan: Plan) -> dict[str, Any]:
    try:
        with started(setup, logs, ring_timeout=0.5) as (nodes, redis):
            return generate("check", setup, nodes, redis, plan)
    except RuntimeError as exc:
        return {"error": str(exc)}


# -- figures ---------------------------------------------------------------------------------------


def ops(scenario: str, r: dict[str, Any]) -> float | None:
    """What one unit of work is: a relayed candidate, or a whole call flow."""
    n = r.get("flows") if scenario == "flows" else r.get("relayed")
    return float(n) if n else None


def per_op_us(scenario: str, r: dict[str, Any], *roles: str) -> float | None:
    n = ops(scenario, r)
    cpu = r.get("cpu") or {}
    if not n or any(cpu.get(role) is None for role in roles) or not roles:
        return None
    return float(sum(cpu[role] for role in roles)) / n * 1e6


def share(r: dict[str, Any], role: str) -> float | None:
    cpu = (r.get("cpu") or {}).get(role)
    return cpu / r["wall"] if cpu is not None and r.get("wall") else None


def server_roles(r: dict[str, Any]) -> tuple[str, ...]:
    return tuple(role for role in (r.get("cpu") or {}) if role != "gen")


def node_roles(r: dict[str, Any]) -> tuple[str, ...]:
    return tuple(role for role in server_roles(r) if role != "redis")


@dataclass
class Row:
    label: str
    unit: str
    digits: int
    get: Any  # (scenario, result) -> float | None
    ratio: bool = False  # also the same round's ratio to the memory setup
    values: dict[str, list[float]] = field(default_factory=dict)


def rows_for(scenario: str) -> list[Row]:
    def lat(key: str) -> Any:
        if scenario == "flows":
            return lambda s, r: (r.get("relay") or {}).get(key)
        return lambda s, r: r.get(key)

    common = [
        Row("CPU per op, nodes + Redis", "us", 0, lambda s, r: per_op_us(s, r, *server_roles(r)), ratio=True),
        Row("CPU per op, nodes", "us", 0, lambda s, r: per_op_us(s, r, *node_roles(r))),
        Row("CPU per op, redis-server", "us", 0, lambda s, r: per_op_us(s, r, "redis") if "redis" in r.get("cpu", {})
            else None),
        Row("n1 CPU (share of a core)", "%", 0, lambda s, r: _pct(share(r, "n1"))),
        Row("n2 CPU", "%", 0, lambda s, r: _pct(share(r, "n2"))),
        Row("redis-server CPU", "%", 0, lambda s, r: _pct(share(r, "redis"))),
        Row("generator CPU", "%", 0, lambda s, r: _pct(share(r, "gen"))),
    ]
    if scenario == "flows":
        head = [Row("call flows per second", "flows/s", 0, lambda s, r: r.get("flows_per_s"), ratio=True),
                Row("set-up p50", "ms", 1, lambda s, r: (r.get("setup") or {}).get("p50_ms")),
                Row("set-up p99", "ms", 1, lambda s, r: (r.get("setup") or {}).get("p99_ms"))]
    elif scenario == "relay":
        head = [Row("relayed msgs/s", "msgs/s", 0, lambda s, r: r.get("rate"), ratio=True)]
    else:
        head = [Row("achieved rate", "msgs/s", 0, lambda s, r: r.get("rate"))]
    return [*head, Row("relay p50", "ms", 2, lat("p50_ms"), ratio=scenario == "fixed"),
            Row("relay p99", "ms", 2, lat("p99_ms"), ratio=scenario == "fixed"), *common]


def _pct(v: float | None) -> float | None:
    return None if v is None else v * 100


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def summarise(results: list[dict[str, Any]], setups: list[str], scenarios: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in scenarios:
        rows = rows_for(scenario)
        table = []
        for row in rows:
            line: dict[str, Any] = {"label": row.label, "unit": row.unit, "digits": row.digits}
            for setup in setups:
                vals = [v for r in results if r["config"] == setup and r["scenario"] == scenario and not r.get("error")
                        if (v := row.get(scenario, r)) is not None]
                line[setup] = statistics.median(vals) if vals else None
                if row.ratio and setup != "memory":
                    ratios = []
                    for rnd in {r["round"] for r in results}:
                        mine = [row.get(scenario, r) for r in results if (r["config"], r["scenario"], r["round"])
                                == (setup, scenario, rnd) and not r.get("error")]
                        base = [row.get(scenario, r) for r in results if (r["config"], r["scenario"], r["round"])
                                == ("memory", scenario, rnd) and not r.get("error")]
                        if mine and base and mine[0] is not None and base[0]:
                            ratios.append(mine[0] / base[0])
                    line[f"{setup}/memory"] = statistics.median(ratios) if ratios else None
            table.append(line)
        loads = [r["load1"] for r in results if r["scenario"] == scenario]
        others = [r["others"] for r in results if r["scenario"] == scenario and r.get("others") is not None]
        out[scenario] = {"rows": table, "load1": [min(loads), max(loads)] if loads else None,
                         "others_max": max(others) if others else None}
    return out


def nodes_per_redis(summary: dict[str, Any]) -> dict[str, float | None]:
    """On paper: with k nodes each at one full core, Redis does k x (its CPU per op / the nodes' CPU
    per op) cores' worth; it is the limit at k = nodes' CPU per op / Redis's CPU per op."""
    out: dict[str, float | None] = {}
    for scenario, what in (("relay", "relay"), ("flows", "flows")):
        rows = {row["label"]: row for row in summary.get(scenario, {}).get("rows", [])}
        for setup in ("cross", "redis-1"):
            nodes = rows.get("CPU per op, nodes", {}).get(setup)
            redis = rows.get("CPU per op, redis-server", {}).get(setup)
            out[f"{what}, {setup}"] = nodes / redis if nodes and redis else None
    return out


def table(summary: dict[str, Any], setups: list[str]) -> str:
    lines: list[str] = []
    for scenario, s in summary.items():
        ratio_cols = [x for x in setups if x != "memory"] if "memory" in setups else []
        head = ["figure", *(f"{x} ({SETUPS[x].what})" for x in setups), *(f"{x}/memory" for x in ratio_cols)]
        op = "call flow" if scenario == "flows" else "relayed candidate"
        lines += [f"### {scenario} (an op: one {op})", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for row in s["rows"]:
            cells = [f"{row['label']} ({row['unit']})", *(_fmt(row.get(x), row["digits"]) for x in setups)]
            cells += [("-" if row.get(f"{x}/memory") is None else f"{row[f'{x}/memory']:.2f}x")
                      if f"{x}/memory" in row else "" for x in ratio_cols]
            lines.append("| " + " | ".join(cells) + " |")
        load = s["load1"]
        others = s["others_max"]
        lines += ["", f"1-min load average before the runs: {load[0]:.2f}-{load[1]:.2f}; the most other processes "
                  f"took during a run: {(others or 0):.0%} of a core" if load else "", ""]
    per = nodes_per_redis(summary)
    if any(per.values()):
        lines.append("On paper, nodes one Redis core serves (nodes' CPU per op / Redis's CPU per op):")
        for key, value in per.items():
            if value:
                lines.append(f"- {key}: {value:.1f}")
    return "\n".join(lines)


def profile(spec: str, plan: Plan, logs: Path, out: Path) -> int:
    """py-spy (200 Hz) on node n1 during one scenario of one setup (``cross:flows``): where a node's
    CPU goes; written to bench/results/profile-callbox-cluster-SETUP-SCENARIO.txt."""
    name, _, scenario = spec.partition(":")
    setup = SETUPS[name]
    raw = logs / "profile.txt"
    plan.warmup, plan.duration = 1.0, 12.0
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    with started(setup, logs) as (nodes, redis):
        spy = subprocess.Popen(["sh", "-c", f"sleep 4; exec {py_spy} record --pid {nodes[0].pid} --duration 8 "
                                f"--rate 200 --format raw --output {raw}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        options = {"relay": {"pairs": plan.pairs, "window": plan.window}, "fixed": {"pairs": plan.pairs,
                   "rate": plan.rate}, "flows": {"calls": plan.calls, "ice": plan.ice}}[scenario]
        result = generate(scenario, setup, nodes, redis, plan, warmup=plan.warmup, duration=plan.duration,
                          **options)
        spy.wait(30)
    text = report.profile_summary(raw, f"callbox node n1 ({setup.what})", scenario, result)
    path = out.parent / f"profile-callbox-cluster-{name}-{scenario}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text[:3000])
    print(f"bench.cluster: wrote {path}")
    return 0


def callbox_source() -> str:
    """Where the nodes' callbox comes from (PYTHONPATH may put a snapshot of src/ in front of the
    checkout, as bench/README.md does while src/ is being edited)."""
    exe = Path(sys.executable).with_name("callbox")
    done = subprocess.run([str(exe.with_name("python")), "-c", "import callbox; print(callbox.__file__)"],
                          capture_output=True, text=True, check=False)
    return str(Path(done.stdout.strip()).parent.parent) if done.returncode == 0 else "?"


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, runner._terminated)
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3; smoke 1)")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma separated: " + ",".join(SETUPS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma separated: " + ",".join(SCENARIOS))
    parser.add_argument("--rate", type=int, default=0, help=f"fixed: candidates per second in all (default {RATE})")
    parser.add_argument("--calls", type=int, default=0, help="flows: calls at once (default the suite's, 20)")
    parser.add_argument("--out", default="", help="results file (default bench/results/cluster.json; smoke: a temp "
                        "file)")
    parser.add_argument("--no-check", action="store_true", help="skip the protocol check")
    parser.add_argument("--note", default="", help="what is measured, kept with the results (e.g. the commit of a "
                        "snapshot of src/ put in front with PYTHONPATH)")
    parser.add_argument("--profile", default="", metavar="SETUP:SCENARIO", help="instead: py-spy on node n1 during "
                        "one run (e.g. cross:flows)")
    parser.add_argument("--max-others", type=float, default=0.1, help="a run during which other processes took "
                        "more than this share of a core is run again (default 0.1)")
    parser.add_argument("--retries", type=int, default=3, help="how many times a noisy run is run again (default 3)")
    args = parser.parse_args(argv)
    plan = Plan.smoke() if args.smoke else Plan()
    plan.rounds = args.rounds or (1 if args.smoke else 3)
    plan.rate = args.rate or (plan.rate if args.smoke else RATE)
    if args.calls:
        plan.calls = args.calls
    setups = [s for s in args.setups.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in setups:
        if s not in SETUPS:
            raise SystemExit(f"bench.cluster: unknown setup {s!r} (have: {', '.join(SETUPS)})")
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"bench.cluster: unknown scenario {s!r} (have: {', '.join(SCENARIOS)})")
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="bench-cluster-")) / "cluster.json"
                                           if args.smoke else BENCH / "results" / "cluster.json")
    runner.raise_fd_limit()
    logs = Path(tempfile.mkdtemp(prefix="bench-cluster-logs-"))
    if args.profile:
        return profile(args.profile, plan, logs, out)
    command = " ".join([".venv/bin/python -m bench.cluster", shlex.join(argv if argv is not None else sys.argv[1:])])
    print(f"bench.cluster: {len(setups)} setups x {len(scenarios)} scenarios x {plan.rounds} rounds; logs in {logs}",
          flush=True)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command,
        "machine": runner.machine(), "plan": asdict(plan), "setups": {s: asdict(SETUPS[s]) for s in setups},
        "load_before": os.getloadavg(), "callbox_source": callbox_source(), "note": args.note,
    }
    print(f"bench.cluster: callbox from {meta['callbox_source']}", flush=True)
    checks: dict[str, Any] = {}
    if not args.no_check:
        for name in setups:
            checks[name] = check(SETUPS[name], logs, plan)
            bad = checks[name].get("error") or checks[name].get("failures")
            print(f"  check {name:8s} {'FAILED: ' + str(bad) if bad else 'ok'}", flush=True)
    results: list[dict[str, Any]] = []
    for rnd in range(plan.rounds):
        order = setups[rnd % len(setups):] + setups[: rnd % len(setups)]
        for scenario in scenarios:
            for name in order:
                for attempt in range(args.retries + 1):
                    result = run_one(SETUPS[name], scenario, plan, logs)
                    result["attempt"] = attempt
                    if result.get("error") or (result.get("others") or 0) <= args.max_others or attempt == args.retries:
                        break
                    print(f"  round {rnd + 1}/{plan.rounds} {scenario:6s} {name:8s} noisy: other processes "
                          f"took {result['others']:.0%} of a core; again", flush=True)
                results.append({**result, "round": rnd, "config": name, "scenario": scenario})
                total = per_op_us(scenario, result, *server_roles(result))
                shares = ", ".join(f"{role} {v:.0%}" for role in (*server_roles(result), "gen")
                                   if (v := share(result, role)) is not None)
                print(f"  round {rnd + 1}/{plan.rounds} {scenario:6s} {name:8s} load {result['load1']:.2f}, "
                      f"others {result.get('others') or 0:.0%}  "
                      f"{report.brief(scenario, result)}  | {_fmt(total, 0)} us CPU per op; {shares}",
                      flush=True)
    meta["load_after"] = os.getloadavg()
    summary = summarise(results, setups, scenarios)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "checks": checks, "results": results, "summary": summary},
                              separators=(",", ":")) + "\n")
    print()
    print(table(summary, setups))
    note = f"{args.note} · " if args.note else ""
    print(f"\n{meta['date']} · {note}load average before {meta['load_before'][0]:.2f}, "
          f"after {meta['load_after'][0]:.2f} "
          f"· `{command}`\nbench.cluster: wrote {out}")
    failed = [f"{r['config']}/{r['scenario']}: {r['error']}" for r in results if r.get("error")]
    failed += [f"{s}/check: {c.get('error') or c.get('failures')}" for s, c in checks.items()
               if c.get("error") or c.get("failures")]
    for line in failed:
        print(f"bench.cluster: FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
