"""The benchmark runner: callbox side by side with python-socketio and Node socket.io.

    .venv/bin/python -m bench                 # the full suite (about 25 minutes), results to bench/results/
    .venv/bin/python -m bench --smoke         # every server, every scenario, tiny sizes (under a minute)
    .venv/bin/python -m bench setup           # only install the bench's pinned packages
    .venv/bin/python -m bench profile         # py-spy on callbox during relay saturation
    .venv/bin/python -m bench generators      # the load generator's own cost, per candidate
    .venv/bin/python -m bench report          # the table and chart again from bench/results/latest.json

Each server runs alone and fresh for each scenario, pinned to core 0 (taskset); the load generator
(bench/loadgen/gen.mjs) runs pinned to core 1, and so does this runner. Servers alternate within
each scenario and their order rotates from round to round; the table gives medians over the rounds
and, for callbox, the median of the per-round ratios to each peer (the same round's figures).

The scenarios whose clients send several events at once (flows, relay) run in two write modes
(--write-mode, default both): "batched", the frames a socket sends in one event-loop turn leave in
one socket write (scenario names flows, relay), and "each", every event in its own write as a
browser sends them (flows-each, relay-each).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import install, report

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
GEN = BENCH / "loadgen" / "gen.mjs"
SERVERS = ("callbox", "pysio", "node")
LABELS = {"callbox": "callbox", "pysio": "python-socketio", "node": "Node socket.io"}
# flows and relay run per write mode (report.WRITE_MODES): see with_write_modes.
WRITE_MODES = report.WRITE_MODES
BATCHABLE = report.BATCHABLE
split_write_mode = report.split_write_mode

def _cores() -> tuple[str, str]:
    """The server's core and the generator's: the first two this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("bench: needs two cores (one for the server, one for the load generator)")
    return str(allowed[0]), str(allowed[1])


SERVER_CORE, GEN_CORE = _cores()
# Rate limiting is part of every server, but a benchmark calls far more often than a person:
# every server gets the same generous bucket, so that it is exercised and never refuses.
BUCKET = ["--initiate-burst", "1000000000", "--initiate-per-minute", "1000000000"]


@dataclass
class Plan:
    """Sizes and durations of one run."""

    rounds: int = 5
    ramps: list[tuple[str, int, bool]] = field(
        default_factory=lambda: [
            ("ramp-1k", 1000, False),
            ("ramp-5k", 5000, False),
            ("ramp-10k", 10000, False),
            ("ramp-10k-deflate", 10000, True),
        ]
    )
    concurrency: int = 100  # handshakes in flight during a ramp
    settle: float = 2.0  # seconds between the end of a ramp and the RSS reading
    idle_settle: float = 1.0
    warmup: float = 1.0
    duration: float = 5.0
    calls: int = 20
    ice: int = 10
    pairs: int = 20
    window: int = 4
    rate: int = 4000
    timeout: int = 180  # per generator run

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            rounds=1,
            ramps=[("ramp-1k", 40, False), ("ramp-10k-deflate", 40, True)],
            concurrency=20,
            settle=0.2,
            idle_settle=0.2,
            warmup=0.2,
            duration=0.6,
            calls=4,
            ice=3,
            pairs=4,
            rate=400,
            timeout=30,
        )

    def scenarios(self, write_modes: tuple[str, ...] = WRITE_MODES) -> list[str]:
        return with_write_modes(["idle", *(name for name, _, _ in self.ramps), "flows", "relay", "fixed"],
                                write_modes)


def with_write_modes(scenarios: list[str], write_modes: tuple[str, ...]) -> list[str]:
    """flows and relay once per write mode: "relay" (batched) and/or "relay-each"; a name given
    with its mode ("relay-each") stays as it is."""
    out: list[str] = []
    for name in scenarios:
        if name in BATCHABLE:
            out += [name if mode == "batched" else f"{name}-{mode}" for mode in write_modes]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(name: str, port: int, ring_timeout: float) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--ring-timeout", str(ring_timeout), *BUCKET]
    if name == "callbox":
        exe = Path(sys.executable).with_name("callbox")
        lifted = [arg for flag, value in {**CALLBOX_LIMITS, **CALLBOX_AS_PEERS}.items() if flag in callbox_flags()
                  for arg in (flag, value)]
        return [str(exe), *common, "--log-level", "warning", *lifted]
    if name == "pysio":
        return [sys.executable, str(BENCH / "peers" / "pysio" / "server.py"), *common]
    if name == "node":
        return [node(), str(BENCH / "peers" / "node" / "server.js"), *common]
    raise ValueError(name)


# callbox's abuse limits, which the peers do not have, lifted (they still run; they never refuse): all
# the bench's clients come from one address, and a relay client sends thousands of packets a second.
CALLBOX_LIMITS = {
    "--max-connections": "15000",
    "--max-connections-per-address": "15000",
    "--max-sessions": "15000",
    "--max-sessions-per-address": "15000",
    "--connection-rate-per-address": "1000000000",
    "--connection-burst-per-address": "1000000000",
    "--event-rate": "1000000000",
    "--event-burst": "1000000000",
}
# What the peers do not have, off here too so that each server does the same work per event and the
# same protocol check passes: connection state recovery (an offset per event, the events kept per
# socket) is off in Node's socket.io unless asked for, and the peers end a call at once when a
# party's connection drops (no reconnect grace); the callbox command turns both on by default.
CALLBOX_AS_PEERS = {"--recovery-window": "0", "--reconnect-grace": "0"}
_flags: set[str] = set()


def callbox_flags() -> set[str]:
    """The flags this callbox knows (a limit it does not have yet is not passed)."""
    if not _flags:
        exe = Path(sys.executable).with_name("callbox")
        help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
        _flags.update(word.strip("[],") for word in help_text.split() if word.startswith(("--", "[--")))
    return _flags


def node() -> str:
    path = shutil.which("node")
    if path is None:
        raise SystemExit("bench: node is not on PATH")
    return path


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _die_with_parent() -> None:
    """In the child: SIGKILL when the runner dies, however it dies (no server outlives a run)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """One server process, started fresh and pinned (by default to the server core), once it accepts
    connections. ``extra``: more command-line flags; ``label``: in its log's name and messages."""

    def __init__(self, name: str, logs: Path, ring_timeout: float = 30.0, wrap: tuple[str, ...] = (), *,
                 core: str | None = SERVER_CORE, extra: tuple[str, ...] = (), label: str = "") -> None:
        self.name = f"{name} {label}" if label else name
        self.port = free_port()
        self.log_path = logs / f"{name}{'-' + label if label else ''}-{self.port}.log"
        self.log = open(self.log_path, "wb")  # closed in wait()
        command = [*wrap, *server_command(name, self.port, ring_timeout), *extra]
        if core is not None:
            command = ["taskset", "-c", core, *command]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        deadline = t0 + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start-up: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not accept connections within 30 s") from None
                time.sleep(0.002)
        self.startup = time.perf_counter() - t0
        self.started = t0

    def waited(self) -> float | None:
        """The share of the time since start-up that the server's main thread was ready to run
        but waited for its core (/proc/PID/schedstat): what other processes took from it."""
        try:
            with open(f"/proc/{self.pid}/schedstat") as f:
                run_delay_ns = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return round(run_delay_ns / 1e9 / max(1e-9, time.perf_counter() - self.started), 4)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 8) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return " | ".join(text[-lines:])

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM); :meth:`wait` for it. Several servers stop at once this way."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 5.0) -> None:
        """Wait for it to exit (killed past ``timeout``) and close its log."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        self.terminate()
        self.wait()


@contextlib.contextmanager
def running(name: str, logs: Path, ring_timeout: float = 30.0, wrap: tuple[str, ...] = ()) -> Iterator[Server]:
    server = Server(name, logs, ring_timeout, wrap)
    try:
        yield server
    finally:
        server.stop()


def generate(scenario: str, server: Server, plan: Plan, **options: Any) -> dict[str, Any]:
    """One generator run against ``server``; its JSON result."""
    command = ["taskset", "-c", GEN_CORE, node(), str(GEN), scenario, "--port", str(server.port),
               "--pid", str(server.pid), "--timeout", str(plan.timeout)]
    for key, value in options.items():
        command += [f"--{key}", str(int(value) if isinstance(value, bool) else value)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=plan.timeout + 60, check=False,
                              preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        return {"error": f"generator did not finish in {plan.timeout + 60} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"generator exited with {done.returncode}: {done.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if not server.alive():
        result["error"] = f"server died: {server.tail()}"
    return result


# -- scenarios ------------------------------------------------------------------------------------


def run_scenario(name: str, scenario: str, plan: Plan, logs: Path) -> dict[str, Any]:
    base, write = split_write_mode(scenario)
    load_before = os.getloadavg()[0]
    waited = None
    t0 = time.perf_counter()
    try:
        with running(name, logs) as server:
            if scenario == "idle":
                time.sleep(plan.idle_settle)
                result: dict[str, Any] = {"startup_s": server.startup, "idle_rss": rss_of(server.pid)}
            elif scenario.startswith("ramp"):
                _, n, deflate = next(r for r in plan.ramps if r[0] == scenario)
                result = generate("ramp", server, plan, n=n, deflate=deflate, concurrency=plan.concurrency,
                                  settle=plan.settle)
            elif base == "flows":
                result = generate("flows", server, plan, calls=plan.calls, ice=plan.ice,
                                  warmup=plan.warmup, duration=plan.duration, write=write)
            elif base == "relay":
                result = generate("relay", server, plan, pairs=plan.pairs, window=plan.window,
                                  warmup=plan.warmup, duration=plan.duration, write=write)
            elif scenario == "fixed":
                result = generate("fixed", server, plan, pairs=plan.pairs, rate=plan.rate,
                                  warmup=plan.warmup, duration=plan.duration)
            else:
                raise ValueError(scenario)
            result["startup_s"] = server.startup
            waited = server.waited() if server.alive() else None
    except RuntimeError as exc:
        result = {"error": str(exc)}
    result["machine"] = {
        "load1": load_before,
        # the share of its life the server spent runnable but waiting for its core: other processes
        "server_waited": waited,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    result.pop("scenario", None)
    return result


def check(name: str, logs: Path, plan: Plan) -> dict[str, Any]:
    """The protocol rules, once per server (with a short ring timeout)."""
    try:
        with running(name, logs, ring_timeout=0.5) as server:
            return generate("check", server, plan)
    except RuntimeError as exc:
        return {"error": str(exc)}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node_version = subprocess.run([node(), "--version"], capture_output=True, text=True).stdout.strip()
    versions = {}
    for dist in ("callbox", "trio", "wsproto", "h11", "msgspec", *install.pins()):
        with contextlib.suppress(Exception):
            import importlib.metadata

            versions[dist] = importlib.metadata.version(dist)
    for folder, package in (("peers/node", "socket.io"), ("peers/node", "engine.io"), ("peers/node", "ws"),
                            ("loadgen", "ws")):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((BENCH / folder / "node_modules" / package / "package.json").read_text())
            versions[f"npm:{package}" + (" (loadgen)" if folder == "loadgen" else "")] = meta["version"]
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {
        "commit": commit,
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node_version,
        "versions": versions,
    }


def raise_fd_limit(wanted: int = 65536) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(wanted, hard), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target) if target > hard else (target, hard))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> int:
    plan = Plan.smoke() if args.smoke else Plan()
    if args.rounds:
        plan.rounds = args.rounds
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit(f"bench: unknown server {s!r} (have: {', '.join(SERVERS)})")
    write_modes = WRITE_MODES if args.write_mode == "both" else (args.write_mode,)
    scenarios = plan.scenarios(write_modes) if not args.scenarios else with_write_modes(
        [s for s in args.scenarios.split(",") if s], write_modes)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke
                                           else BENCH / "results")
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_setup:
        install.ensure()
    fds = raise_fd_limit()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(GEN_CORE)})
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    started = datetime.datetime.now(datetime.UTC)
    command = " ".join([".venv/bin/python -m bench", *sys.argv[1:]])
    print(f"bench: {len(servers)} servers x {len(scenarios)} scenarios x {plan.rounds} rounds "
          f"({', '.join(scenarios)}; write modes: {', '.join(write_modes)}); "
          f"servers on core {SERVER_CORE}, generator on core {GEN_CORE}; fd limit {fds}; logs in {logs}", flush=True)
    meta = {"date": started.isoformat(timespec="seconds"), "command": command, "smoke": args.smoke,
            "machine": machine(), "plan": asdict(plan), "write_modes": list(write_modes), "scenarios": scenarios,
            "load_before": os.getloadavg()}

    checks = {}
    for name in servers:
        checks[name] = check(name, logs, plan)
        bad = checks[name].get("error") or checks[name].get("failures")
        print(f"  check {LABELS[name]:16s} {'FAILED: ' + str(bad) if bad else 'ok'}", flush=True)

    results: list[dict[str, Any]] = []
    for r in range(plan.rounds):
        order = servers[r % len(servers):] + servers[: r % len(servers)]
        for scenario in scenarios:
            for name in order:
                result = run_scenario(name, scenario, plan, logs)
                results.append({"round": r, "server": name, "scenario": scenario, **result})
                where = f"round {r + 1}/{plan.rounds} {scenario:17s} {LABELS[name]:16s}"
                print(f"  {where} {report.brief(scenario, result)}", flush=True)
    meta["load_after"] = os.getloadavg()
    meta["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    data = {"meta": meta, "checks": checks, "results": results}
    data["summary"] = report.summarise(data, servers, scenarios)
    data["targets"] = report.targets(data)
    (out / "latest.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print()
    print(report.table(data))
    try:
        report.chart(data, out / "latest.png")
    except ImportError as exc:
        print(f"bench: no chart ({exc})")
    print(f"\nbench: wrote {out / 'latest.json'} and {out / 'latest.png'}")
    failed = [f"{r['server']}/{r['scenario']}: {r['error']}" for r in results if r.get("error")]
    failed += [f"{s}/check: {c.get('error') or c.get('failures')}" for s, c in checks.items()
               if c.get("error") or c.get("failures")]
    for line in failed:
        print(f"bench: FAILED {line}")
    return 1 if failed else 0


# -- profile ----------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> int:
    """py-spy on a Python server during relay saturation (or flows, fixed, or a 10,000-client ramp)."""
    if not args.no_setup:
        install.ensure()
    raise_fd_limit()
    py_spy = Path(sys.executable).with_name("py-spy")
    out = Path(args.out) if args.out else BENCH / "results"
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    plan = Plan(warmup=1.0, duration=args.duration + 2.0)
    raw = logs / "profile.txt"
    write = "each" if args.write_mode == "each" else "batched"  # "both": the batched one, as before
    with running(args.server, logs) as server:
        command = ["taskset", "-c", GEN_CORE, node(), str(GEN), args.scenario, "--port", str(server.port),
                   "--pid", str(server.pid), "--warmup", str(plan.warmup), "--duration", str(plan.duration),
                   "--n", "10000", "--write", write]
        gen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        # a ramp starts at once; the others once connected, calls set up, pumping
        time.sleep(0.3 if args.scenario == "ramp" else plan.warmup + 1.5)
        spy = ["taskset", "-c", GEN_CORE, str(py_spy), "record", "--pid", str(server.pid),
               "--duration", str(round(args.duration)), "--rate", "200", "--format", "raw", "--output", str(raw)]
        subprocess.run(spy, check=True, capture_output=True)
        stdout, _ = gen.communicate(timeout=plan.duration + 60)
    result = json.loads(stdout.strip().splitlines()[-1])
    text = report.profile_summary(raw, args.server, args.scenario, result)
    suffix = "-each" if write == "each" and args.scenario in ("relay", "flows", "fixed") else ""
    path = out / f"profile-{args.server}-{args.scenario}{suffix}.txt"
    path.write_text(text)
    print(text)
    print(f"bench: wrote {path}")
    return 0


# What one unit of a scenario is: the handler run once per relayed message (relay) and once per call
# flow (flows), which `calls` counts with cProfile like everything else; the client event that
# `instructions` counts in the server's own /metrics; and the unit's name.
UNIT_OF = {"relay": ("_candidate", "ice:candidate", "relayed message"),
           "flows": ("_initiate", "call:initiate", "call flow")}


def _per_unit(args: argparse.Namespace, command: str) -> tuple[tuple[str, str, str], Path, str]:
    """What ``calls`` and ``instructions`` start with: the bench's packages, the scenario's unit
    (UNIT_OF), a folder for the logs, the write mode."""
    if not args.no_setup:
        install.ensure()
    if args.scenario not in UNIT_OF:
        raise SystemExit(f"{command}: --scenario is relay or flows, not {args.scenario}")
    write = "each" if args.write_mode == "each" else "batched"
    return UNIT_OF[args.scenario], Path(tempfile.mkdtemp(prefix="bench-logs-")), write


def _load(scenario: str, plan: Plan) -> dict[str, int]:
    """The generator's sizes for relay (pairs, in flight) or flows (calls at once, candidates)."""
    if scenario == "relay":
        return {"pairs": plan.pairs, "window": plan.window}
    return {"calls": plan.calls, "ice": plan.ice}


def calls(args: argparse.Namespace) -> int:
    """Python function calls per relayed message (or per call flow): callbox runs under cProfile
    while the generator drives the scenario, then stops (SIGINT) and the counts are read. Unlike
    times, counts hardly move with the machine's noise: a figure for how long the hot path is."""
    (marker, _, unit), logs, write = _per_unit(args, "calls")
    out = logs / "calls.prof"
    plan = Plan(warmup=1.0, duration=float(args.duration))
    wrap = (sys.executable, "-m", "cProfile", "-o", str(out))
    with running("callbox", logs, wrap=wrap) as server:
        result = generate(args.scenario, server, plan, warmup=plan.warmup, duration=plan.duration, write=write,
                          **_load(args.scenario, plan))
        server.proc.send_signal(signal.SIGINT)  # a clean exit, so that cProfile writes its counts
        server.proc.wait(30)
    if "error" in result or not out.exists():
        print(f"bench calls: {result.get('error', 'no profile written')}: {server.tail()}")
        return 1
    stats = pstats.Stats(str(out)).stats
    units = sum(v[1] for k, v in stats.items() if k[2] == marker and k[0].endswith("_service.py"))
    total = sum(v[1] for v in stats.values())
    ours = sum(v[1] for k, v in stats.items() if "/callbox/" in k[0])
    print(f"callbox under cProfile, {args.scenario} ({write} writes), {units:,} units ({unit}), whole run "
          f"(start-up and connecting included: a few % at this length)")
    print(f"function calls per {unit}: {total / units:.1f} in all, {ours / units:.1f} of them callbox's own")
    print(f"most called per {unit}:")
    top = sorted(stats.items(), key=lambda kv: kv[1][1], reverse=True)[:args.top]
    for (path, line, name), v in top:
        where = "built-in" if path == "~" else f"{path.split('site-packages/')[-1].split('/src/')[-1]}:{line}"
        print(f"  {v[1] / units:7.2f}  {name} ({where})")
    return 0


def _events_received(port: int, event: str) -> float:
    """callbox's count of ``event`` received so far (callbox_events_received_total, from /metrics)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        body = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    wanted = f'callbox_events_received_total{{event="{event}"}}'
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(wanted))


def _callgrind_control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def instructions(args: argparse.Namespace) -> int:
    """Instructions per relayed message (or per call flow), counted by valgrind's callgrind: callbox
    runs under valgrind with the count off while the generator connects and warms up, then counts for
    ``--duration`` seconds of the scenario. Like ``calls``, a figure that does not move with the
    machine's noise (repeatable to about 1% here), for comparing two versions of the code; unlike
    it, built-ins and C code count by what they cost. Not a time: a byte-by-byte loop in C runs many
    instructions a cycle, the interpreter's jumps few."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("instructions: needs valgrind (Debian: apt install valgrind)")
    (_, event, unit), logs, write = _per_unit(args, "instructions")
    out = logs / "callgrind.out"
    plan = Plan()
    wrap = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    with running("callbox", logs, wrap=wrap) as server:
        # The generator runs far longer than needed; it is stopped once the count is taken.
        command = ["taskset", "-c", GEN_CORE, node(), str(GEN), args.scenario, "--port", str(server.port),
                   "--pid", str(server.pid), "--timeout", "300", "--warmup", "600", "--duration", "600",
                   "--write", write]
        for key, value in _load(args.scenario, plan).items():
            command += [f"--{key}", str(value)]
        gen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + 300
            while _events_received(server.port, event) < 100:  # connected, calls set up, running
                if time.monotonic() > deadline or gen.poll() is not None or not server.alive():
                    print(f"bench instructions: the scenario did not start: {server.tail()}")
                    return 1
                time.sleep(0.5)
            _callgrind_control("--instr=on", server.pid)
            before = _events_received(server.port, event)
            time.sleep(args.duration)
            after = _events_received(server.port, event)
            _callgrind_control("--instr=off", server.pid)
            _callgrind_control("--dump", server.pid)
        finally:
            gen.kill()
            gen.wait()
    dumps = sorted(logs.glob("callgrind.out.*"))
    if not dumps:
        print("bench instructions: callgrind wrote no dump")
        return 1
    total = next(int(line.split()[1]) for line in dumps[0].read_text().splitlines() if line.startswith("totals:"))
    units = after - before
    print(f"callbox under callgrind, {args.scenario} ({write} writes), {units:,.0f} units ({unit}) "
          f"in {args.duration} s (under valgrind the server runs some 30 times slower)")
    print(f"instructions per {unit}: {total / max(units, 1):,.0f}")
    return 0


# -- which load generator --------------------------------------------------------------------------


def compare_generators(args: argparse.Namespace) -> int:
    """The generator's own CPU per relayed message and per connection, for the candidates: the lean
    Node client (gen.mjs), the same scenarios through the `ws` package, and the lean Python/Trio
    client (loadgen/pyprobe.py, relays only). Against the Node peer, which is the fastest server."""
    if not args.no_setup:
        install.ensure()
    raise_fd_limit()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(GEN_CORE)})
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    rows = []
    for r in range(args.rounds or 3):
        for label, kind in (("Node, lean client (gen.mjs)", "raw"), ("Node, ws package", "ws"),
                            ("Python/Trio, lean client (pyprobe.py)", "py")):
            with running("node", logs) as server:
                if kind == "py":
                    command = ["taskset", "-c", GEN_CORE, sys.executable, str(BENCH / "loadgen" / "pyprobe.py"),
                               "--port", str(server.port), "--pid", str(server.pid), "--duration", "5"]
                    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
                    res = json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    res = generate("relay", server, Plan(), client=kind, warmup=1, duration=5)
            relay = res["gen_cpu"] / res["relayed"] * 1e6 if res.get("relayed") else None
            ramp = None
            if kind != "py":
                with running("node", logs) as server:
                    res2 = generate("ramp", server, Plan(), client=kind, n=5000, settle=0.1)
                ramp = res2["gen_cpu"] / res2["n"] * 1e6 if res2.get("n") else None
                server_ramp = res2["server_cpu"] / res2["n"] * 1e6 if res2.get("n") else None
            else:
                server_ramp = None
            server_relay = res["server_cpu"] / res["relayed"] * 1e6 if res.get("relayed") else None
            rows.append({"round": r, "generator": label, "gen_us_per_relay": relay,
                         "server_us_per_relay": server_relay, "gen_us_per_conn": ramp,
                         "server_us_per_conn": server_ramp})
            print(f"  {rows[-1]}", flush=True)
    print("\n| generator | its CPU per relayed msg (us) | Node server's (us) | its CPU per connect+join (us) | "
          "Node server's (us) |\n|---|---|---|---|---|")
    for label in dict.fromkeys(row["generator"] for row in rows):
        mine = [row for row in rows if row["generator"] == label]

        def med(key: str, mine: list[dict[str, Any]] = mine) -> str:
            values = [row[key] for row in mine if row[key] is not None]
            return f"{statistics.median(values):.1f}" if values else "-"

        print(f"| {label} | {med('gen_us_per_relay')} | {med('server_us_per_relay')} | {med('gen_us_per_conn')} | "
              f"{med('server_us_per_conn')} |")
    print(f"\n{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}, load average {os.getloadavg()}")
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "setup", "profile", "calls", "instructions", "generators", "report"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that the suite works")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 5; smoke 1)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma separated: callbox,pysio,node")
    parser.add_argument("--scenarios", default="", help="comma separated subset (default: all); flows and relay "
                        "run once per write mode (or name one: relay-each)")
    parser.add_argument("--write-mode", default="both", choices=["both", "batched", "each"],
                        help="how the generator writes in flows and relay: batched (the frames of one event-loop "
                        "turn in one socket write), each (every event its own write, as browsers do), or both "
                        "(default; profile: batched unless each)")
    parser.add_argument("--out", default="", help="results folder (default bench/results; smoke: a temp folder)")
    parser.add_argument("--no-setup", action="store_true", help="do not install missing bench packages")
    parser.add_argument("--server", default="callbox", help="profile: the Python server to profile")
    parser.add_argument("--scenario", default="relay",
                        help="profile: relay, fixed, flows or ramp; calls, instructions: relay or flows")
    parser.add_argument("--duration", type=int, default=10, help="profile, calls, instructions: seconds of sampling")
    parser.add_argument("--top", type=int, default=40, help="calls: how many functions to list")
    args = parser.parse_args(argv)
    if args.command == "setup":
        install.ensure()
        return 0
    if args.command == "profile":
        return profile(args)
    if args.command == "calls":
        return calls(args)
    if args.command == "instructions":
        return instructions(args)
    if args.command == "generators":
        return compare_generators(args)
    if args.command == "report":  # the table and the chart again, from a run's JSON
        out = Path(args.out) if args.out else BENCH / "results"
        data = json.loads((out / "latest.json").read_text())
        data["targets"] = report.targets(data)  # against today's targets
        print(report.table(data))
        report.chart(data, out / "latest.png")
        return 0
    return run(args)
