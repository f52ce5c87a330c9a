"""Figures out of the bench's raw results: medians, per-round ratios, the table, the targets, the chart."""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABELS = {"callbox": "callbox", "pysio": "python-socketio", "node": "Node socket.io"}
COLORS = {"callbox": "#2a7ab0", "pysio": "#e0a030", "node": "#5a9e4b"}

# How the load generator writes (gen.mjs --write). The scenarios whose clients send several events in
# one event-loop turn run in both: "relay" and "flows" batched (the frames of one turn in one socket
# write, as before), "relay-each" and "flows-each" with each event in its own write, as a browser
# sends them. (In the ramps and at the fixed rate a socket sends one frame per turn anyway.)
WRITE_MODES = ("batched", "each")
BATCHABLE = ("flows", "relay")
WRITE_LABELS = {"batched": "batched writes", "each": "each event its own write"}


def split_write_mode(scenario: str) -> tuple[str, str]:
    """("relay", "each") for "relay-each"; ("relay", "batched") for "relay" (and any other name)."""
    for mode in WRITE_MODES:
        base = scenario.removesuffix(f"-{mode}")
        if base != scenario and base in BATCHABLE:
            return base, mode
    return scenario, "batched"


def write_label(scenario: str) -> str:
    """" (each event its own write)" or " (batched writes)" for flows and relay; "" for the others."""
    base, mode = split_write_mode(scenario)
    return f" ({WRITE_LABELS[mode]})" if base in BATCHABLE else ""


@dataclass(frozen=True)
class Metric:
    key: str
    scenario: str
    label: str
    unit: str
    get: Callable[[dict[str, Any]], float | None]
    better: str  # "higher" or "lower"
    digits: int = 0


def _at(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        v: Any = r
        for p in path:
            if not isinstance(v, dict) or v.get(p) is None:
                return None
            v = v[p]
        return float(v)

    return get


def _scaled(get: Callable[[dict[str, Any]], float | None], k: float) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: None if (v := get(r)) is None else v * k


def _per(key: str, count: str) -> Callable[[dict[str, Any]], float | None]:
    """r[key] / r[count]: None if either is missing or the count is 0."""
    return lambda r: r[key] / r[count] if r.get(key) is not None and r.get(count) else None


def metrics(scenarios: list[str]) -> list[Metric]:
    out = []
    for s in scenarios:
        base, _ = split_write_mode(s)
        w = write_label(s)
        if s == "idle":
            out += [
                Metric("startup_ms", s, "start-up to accepting connections", "ms", _scaled(_at("startup_s"), 1e3),
                       "lower"),
                Metric("idle_rss_mib", s, "idle RSS after start-up", "MiB", _scaled(_at("idle_rss"), 2**-20),
                       "lower", 1),
            ]
        elif s.startswith("ramp"):
            out += [
                Metric(f"{s}.rate", s, "connect + user:join rate", "conn/s", _at("rate"), "higher"),
                Metric(f"{s}.p50", s, "connect + join p50", "ms", _at("p50_ms"), "lower", 1),
                Metric(f"{s}.p99", s, "connect + join p99", "ms", _at("p99_ms"), "lower", 1),
                Metric(f"{s}.rss_per_conn", s, "server RSS per connection", "KiB",
                       _scaled(_at("rss_per_conn"), 1 / 1024), "lower", 1),
                Metric(f"{s}.cpu_per_conn", s, "server CPU per connect + join", "us",
                       lambda r: r["server_cpu"] / r["n"] * 1e6 if r.get("n") and "server_cpu" in r else None,
                       "lower"),
            ]
        elif base == "flows":
            out += [
                Metric(f"{s}.rate", s, f"call flows per second{w}", "flows/s", _at("flows_per_s"), "higher"),
                Metric(f"{s}.cpu_per_flow", s, f"server CPU per call flow{w}", "us",
                       lambda r: r["server_cpu"] / r["flows"] * 1e6 if r.get("flows") else None, "lower"),
                # read-family and write-family system calls (/proc/PID/io syscr, syscw: not recv*/send*)
                Metric(f"{s}.reads_per_flow", s, f"server read system calls per call flow{w}", "syscalls",
                       _per("server_reads", "flows"), "lower", 2),
                Metric(f"{s}.writes_per_flow", s, f"server write system calls per call flow{w}", "syscalls",
                       _per("server_writes", "flows"), "lower", 2),
                Metric(f"{s}.setup_p50", s, f"set-up (initiate to answer) p50{w}", "ms", _at("setup", "p50_ms"),
                       "lower", 1),
                Metric(f"{s}.setup_p99", s, f"set-up p99{w}", "ms", _at("setup", "p99_ms"), "lower", 1),
                Metric(f"{s}.relay_p50", s, f"ICE relay p50{w}", "ms", _at("relay", "p50_ms"), "lower", 2),
                Metric(f"{s}.relay_p99", s, f"ICE relay p99{w}", "ms", _at("relay", "p99_ms"), "lower", 2),
            ]
        elif base == "relay":
            out += [
                Metric(f"{s}.rate", s, f"relayed msgs/s{w}", "msgs/s", _at("rate"), "higher"),
                Metric(f"{s}.per_cpu", s, f"relayed msgs per server CPU-second{w}", "msgs/CPU-s",
                       _at("per_server_cpu_s"), "higher"),
                Metric(f"{s}.reads_per_msg", s, f"server read system calls per relayed msg{w}", "syscalls",
                       _per("server_reads", "relayed"), "lower", 2),
                Metric(f"{s}.writes_per_msg", s, f"server write system calls per relayed msg{w}", "syscalls",
                       _per("server_writes", "relayed"), "lower", 2),
                Metric(f"{s}.p50", s, f"relay p50{w}", "ms", _at("p50_ms"), "lower", 2),
                Metric(f"{s}.p99", s, f"relay p99{w}", "ms", _at("p99_ms"), "lower", 2),
            ]
        elif s == "fixed":
            out += [
                Metric("fixed.rate", s, "achieved rate", "msgs/s", _at("rate"), "higher"),
                Metric("fixed.p50", s, "relay p50 at the fixed rate", "ms", _at("p50_ms"), "lower", 2),
                Metric("fixed.p99", s, "relay p99 at the fixed rate", "ms", _at("p99_ms"), "lower", 2),
            ]
    return out


def _usable(r: dict[str, Any]) -> bool:
    return not r.get("error")


def summarise(data: dict[str, Any], servers: list[str], scenarios: list[str]) -> dict[str, Any]:
    results = data["results"]
    summary: dict[str, Any] = {}
    for m in metrics(scenarios):
        per: dict[str, dict[int, float]] = {s: {} for s in servers}
        for r in results:
            if r["scenario"] == m.scenario and r["server"] in per and _usable(r):
                v = m.get(r)
                if v is not None:
                    per[r["server"]][r["round"]] = v
        entry: dict[str, Any] = {"label": m.label, "unit": m.unit, "better": m.better, "scenario": m.scenario}
        for s in servers:
            values = [per[s][k] for k in sorted(per[s])]
            entry[s] = {"median": statistics.median(values) if values else None, "rounds": values}
        if "callbox" in servers:
            for peer in servers:
                if peer == "callbox":
                    continue
                ratios = [per["callbox"][k] / per[peer][k] for k in sorted(per["callbox"])
                          if k in per[peer] and per[peer][k]]
                entry[f"callbox/{peer}"] = {"median": statistics.median(ratios) if ratios else None, "rounds": ratios}
        summary[m.key] = entry
    # the generator's and the server's own CPU, as a share of their core, per scenario
    usage: dict[str, Any] = {}
    for s in scenarios:
        for srv in servers:
            rows = [r for r in results if r["scenario"] == s and r["server"] == srv and r.get("wall")]
            if rows:
                fpw = [r["frames_per_write"] for r in rows if r.get("frames_per_write") is not None]
                usage.setdefault(s, {})[srv] = {
                    "gen_cpu_share": max(r["gen_cpu"] / r["wall"] for r in rows),
                    "server_cpu_share": statistics.median(r["server_cpu"] / r["wall"] for r in rows),
                    # WebSocket frames per socket write of the generator (gen.mjs --write)
                    "frames_per_write": statistics.median(fpw) if fpw else None,
                }
    summary["_cpu"] = usage
    return summary


def _largest_plain_ramp(summary: dict[str, Any]) -> str | None:
    ramps = [k[: -len(".rate")] for k in summary if k.startswith("ramp") and k.endswith(".rate") and "deflate" not in k]
    order = {"ramp-1k": 1, "ramp-5k": 5, "ramp-10k": 10}
    return max(ramps, key=lambda k: order.get(k, 0)) if ramps else None


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 11 (to resolve it) and the project's goal, from the summary: each a ratio
    of callbox to Node socket.io in the same run (idle RSS: absolute, issue 5's)."""
    s = data["summary"]
    ramp = _largest_plain_ramp(s)
    # (label, summary key, higher is better, issue 11's bound, the goal); flows per server CPU-second
    # is the inverse of the CPU-per-flow ratio.
    rows: list[tuple[str, str, bool, float, float]] = [
        (f"relay msgs per server CPU-second{write_label(scen)}", f"{scen}.per_cpu", True, 0.7, 1.0)
        for scen in ("relay", "relay-each")
    ]
    rows += [(f"call flows per server CPU-second{write_label(scen)}", f"{scen}.cpu_per_flow", True, 0.6, 1.0)
             for scen in ("flows", "flows-each")]
    rows += [
        (f"connect + join rate ({ramp})", f"{ramp}.rate", True, 0.7, 1.0),
        (f"RSS per idle connection ({ramp})", f"{ramp}.rss_per_conn", False, 0.6, 0.5),
        ("relay p99 at the fixed rate", "fixed.p99", False, 2.0, 1.0),
    ]
    out: list[dict[str, Any]] = []
    for label, key, higher, bound, goal in rows:
        if key not in s:
            continue  # a scenario this run did not have
        value = s[key].get("callbox/node", {}).get("median")
        if value is not None and key.endswith(".cpu_per_flow"):
            value = 1.0 / value
        op = ">=" if higher else "<="

        def meets(limit: float, v: float | None = value, up: bool = higher) -> bool | None:
            return None if v is None else (v >= limit if up else v <= limit)

        out.append({"target": label, "metric": key, "ratio_to_node": value, "goal": f"{op} {bound}x",
                    "met": meets(bound), "project_goal": f"{op} {goal}x", "project_goal_met": meets(goal)})
    if "idle_rss_mib" in s:
        idle = s["idle_rss_mib"].get("callbox", {}).get("median")
        out.append({"target": "idle RSS", "metric": "idle_rss_mib", "value_mib": idle, "goal": "<= 30 MiB",
                    "met": None if idle is None else idle <= 30})
    return out


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if digits == 0 and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{max(digits, 1) if abs(v) < 100 else digits}f}"


def table(data: dict[str, Any]) -> str:
    summary = data["summary"]
    meta = data["meta"]
    servers = [s for s in LABELS if any(s in e for k, e in summary.items() if not k.startswith("_"))]
    peers = [p for p in servers if p != "callbox"]
    head = ["scenario", "metric", *(LABELS[s] for s in servers), *(f"callbox/{LABELS[p]}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {m.key: m for m in metrics([*{e["scenario"] for k, e in summary.items() if not k.startswith("_")}])}
    results = data["results"]
    for key, e in summary.items():
        if key.startswith("_"):
            continue
        m = by_key[key]
        scen = e["scenario"]
        if scen.startswith("ramp"):
            n = next((r.get("n") for r in results if r["scenario"] == scen and r.get("n")), None)
            scen = f"{scen} (N={n:,})" if n else scen
        cells = [scen, f"{e['label']} ({e['unit']}, {e['better']} is better)"]
        cells += [_fmt(e[s]["median"], m.digits) for s in servers]
        cells += [_fmt(e.get(f"callbox/{p}", {}).get("median"), 2) + ("x" if e.get(f"callbox/{p}", {}).get(
            "median") is not None else "") for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    out = ["\n".join(lines)]
    cpu = summary.get("_cpu", {})
    if cpu:
        rows = ["", "CPU, as a share of one core (server: median; load generator: highest round), and in flows "
                "and relay the generator's WebSocket frames per socket write (median):", ""]
        rows.append("| scenario | " + " | ".join(f"{LABELS[s]} server / generator" for s in servers) + " |")
        rows.append("|" + "---|" * (1 + len(servers)))

        def cell(p: dict[str, Any], scen: str) -> str:
            text = f"{p['server_cpu_share']:.0%} / {p['gen_cpu_share']:.0%}"
            fpw = p.get("frames_per_write")
            return text + (f", {fpw:.2f} frames/write" if fpw is not None and split_write_mode(scen)[0] in BATCHABLE
                           else "")

        for scen, per in cpu.items():
            rows.append(f"| {scen}{write_label(scen)} | " + " | ".join(
                cell(per[s], scen) if s in per else "-" for s in servers) + " |")
        out.append("\n".join(rows))
    if data.get("targets"):
        rows = ["", "Targets (callbox, ratio to Node socket.io in the same run; issue 11's bound, and our goal):", ""]
        rows.append("| target | issue 11 | callbox | met | our goal | met |")
        rows.append("|---|---|---|---|---|---|")

        def yes(met: bool | None) -> str:
            return "-" if met is None else ("yes" if met else "no")

        for t in data["targets"]:
            value = (_fmt(t["ratio_to_node"], 2) + "x") if "ratio_to_node" in t and t["ratio_to_node"] is not None \
                else (_fmt(t.get("value_mib"), 1) + " MiB" if t.get("value_mib") is not None else "-")
            rows.append(f"| {t['target']} | {t['goal']} | {value} | {yes(t['met'])} | "
                        f"{t.get('project_goal', '-')} | {yes(t.get('project_goal_met'))} |")
        out.append("\n".join(rows))
    mach = meta["machine"]
    loads = meta.get("load_before"), meta.get("load_after")
    busy = _busy_summary(results)
    out.append(
        f"\n{meta['date']} · {mach['cpu']} · {mach['cores']} cores · Python {mach['python']} · Node {mach['node']} · "
        f"{meta['plan']['rounds']} rounds · `{meta['command']}`\n\n"
        f"Machine load: 1-min load average {loads[0][0]:.1f} before, {loads[1][0]:.1f} after"
        + (f"; {busy}" if busy else "")
    )
    return "\n".join(out)


def _busy_summary(results: list[dict[str, Any]]) -> str:
    """How much other processes held the servers up: the share of its life a server was ready to run
    but waited for its core."""
    waited = [r["machine"]["server_waited"] for r in results
              if r.get("machine", {}).get("server_waited") is not None]
    if not waited:
        return ""
    return (f"the servers waited for their core (other processes on it) {statistics.median(waited):.1%} of the "
            f"time (median over scenarios; highest {max(waited):.1%})")


def brief(scenario: str, r: dict[str, Any]) -> str:
    """One line for the progress output."""
    if r.get("error"):
        return f"ERROR {r['error'][:200]}"
    fails = f"  FAILURES {r['failures'][:2]}" if r.get("failures") else ""
    gen = f"  (server {r['server_cpu'] / r['wall']:.0%} CPU, generator {r['gen_cpu'] / r['wall']:.0%})" \
        if r.get("wall") else ""
    if scenario == "idle":
        return f"start-up {r['startup_s'] * 1e3:.0f} ms, idle RSS {r['idle_rss'] / 2**20:.1f} MiB"
    if scenario.startswith("ramp"):
        return (f"{r['rate']:.0f} conn/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"{r['rss_per_conn'] / 1024:.1f} KiB/conn, deflate {r['deflate_negotiated']}/{r['n']}{gen}{fails}")
    base, _ = split_write_mode(scenario)
    if r.get("frames_per_write") is not None and base in BATCHABLE:
        gen += f", {r['frames_per_write']:.2f} frames/write"
    if base == "flows":
        return (f"{r['flows_per_s']:.0f} flows/s, set-up p99 {r['setup']['p99_ms']:.1f} ms, "
                f"relay p99 {r['relay']['p99_ms']:.2f} ms{gen}{fails}")
    if base in ("relay", "fixed"):
        per = r.get("per_server_cpu_s") or 0
        lat = f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
        return f"{r['rate']:.0f} msgs/s, {per:.0f}/CPU-s, {lat}{gen}{fails}"
    return str(r)


# -- the chart ---------------------------------------------------------------------------------------


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = data["summary"]
    ramp = _largest_plain_ramp(summary)
    panels = [
        ("relay.per_cpu", "relay: msgs per server CPU-s\n(batched writes)"),
        ("relay-each.per_cpu", "relay: msgs per server CPU-s\n(each event its own write)"),
        ("relay.rate", "relay: msgs/s, one core\n(batched writes)"),
        ("relay-each.rate", "relay: msgs/s, one core\n(each event its own write)"),
        ("flows.rate", "full call flows/s, 20 at once\n(batched writes)"),
        ("flows-each.rate", "full call flows/s, 20 at once\n(each event its own write)"),
        ("fixed.p99", "relay p99 at fixed rate (ms)"),
        (f"{ramp}.rate", f"connect+join rate, {ramp} (conn/s)"),
        (f"{ramp}.rss_per_conn", f"RSS per connection, {ramp} (KiB)"),
        ("idle_rss_mib", "idle RSS (MiB)"),
        ("startup_ms", "start-up to accepting (ms)"),
    ]
    panels = [(k, t) for k, t in panels if k in summary]
    servers = [s for s in LABELS if any(s in summary[k] for k, _ in panels)]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows + 0.6), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        e = summary[key]
        medians = [e[s]["median"] or 0 for s in servers]
        xs = range(len(servers))
        ax.bar(xs, medians, color=[COLORS[s] for s in servers], width=0.65)
        for x, s in zip(xs, servers, strict=True):
            pts = e[s]["rounds"]
            ax.plot([x] * len(pts), pts, "o", color="black", markersize=2.5, alpha=0.6)
        ratio = e.get("callbox/node", {}).get("median")
        better = "higher" if e["better"] == "higher" else "lower"
        sub = f"\ncallbox/Node = {ratio:.2f}x ({better} is better)" if ratio is not None else f"\n({better} is better)"
        ax.set_title(title + sub, fontsize=9)
        ax.set_xticks(list(xs), [LABELS[s] for s in servers], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        # issue 5's target for callbox, where it has one (dashed red)
        goal = {"relay.per_cpu": 1.0, "relay-each.per_cpu": 1.0, "flows.rate": 1.0, "flows-each.rate": 1.0,
                "fixed.p99": 1.0, f"{ramp}.rate": 1.0, f"{ramp}.rss_per_conn": 0.7}.get(key)
        node_median = e.get("node", {}).get("median")
        if key == "idle_rss_mib":
            ax.axhline(30, color="red", linewidth=0.8, linestyle="--")
        elif goal is not None and node_median:
            ax.axhline(goal * node_median, color="red", linewidth=0.8, linestyle="--")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    meta = data["meta"]
    load = meta.get("load_before", [0])[0], meta.get("load_after", [0])[0]
    fig.suptitle(
        f"callbox vs python-socketio vs Node socket.io — server pinned to one core — medians of "
        f"{meta['plan']['rounds']} rounds (dots: rounds; dashed red: issue 5's target for callbox)\n"
        f"{meta['date']} · {meta['machine']['cpu']} · "
        f"load avg {load[0]:.1f} → {load[1]:.1f} · {meta['command']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- py-spy ------------------------------------------------------------------------------------------


def profile_summary(raw: Path, server: str, scenario: str, result: dict[str, Any]) -> str:
    """Self and inclusive time per function (and self time per module) from py-spy's raw output."""
    self_t: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    module: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        self_t[frames[-1]] += n
        by_line[_frame(stack.rsplit(";", 1)[-1], line=True)] += n
        module[_module(frames[-1])] += n
        for f in set(frames):
            incl[f] += n
    idle = sum(n for f, n in self_t.items() if _idle(f))
    busy = max(1, total - idle)
    lines = [
        f"py-spy on {server} during '{scenario}' ({total} samples, {idle / max(1, total):.0%} of them idle in the "
        f"event loop's wait); percentages are of the busy samples.",
        "scenario figures: " + ", ".join(
            f"{k} {result[k]:.6g}" for k in ("rate", "flows_per_s", "per_server_cpu_s", "p50_ms", "p99_ms",
                                              "server_cpu", "wall") if isinstance(result.get(k), (int, float))),
        "",
        "self time by module:",
    ]
    lines += [f"  {n / busy:6.1%}  {m}" for m, n in module.most_common(15) if not m.startswith("(idle")]
    lines += ["", "self time by function (top 30):"]
    lines += [f"  {n / busy:6.1%}  {f}" for f, n in self_t.most_common(40) if not _idle(f)][:30]
    lines += ["", "self time by line (top 25):"]
    lines += [f"  {n / busy:6.1%}  {f}" for f, n in by_line.most_common(25)]
    lines += ["", "inclusive time by function (top 40):"]
    lines += [f"  {n / busy:6.1%}  {f}" for f, n in incl.most_common(80) if not _idle(f)][:40]
    return "\n".join(lines) + "\n"


def _frame(f: str, line: bool = False) -> str:
    # "name (path/to/file.py:123)" -> "name (to/file.py)", or with line=True "name (to/file.py:123)"
    name, _, where = f.partition(" (")
    path = where.rstrip(")") if line else where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def _module(f: str) -> str:
    path = f.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    return path.rsplit("/", 1)[0] + "/" if "/" in path else path


def _idle(f: str) -> bool:
    return f.startswith(("select ", "poll ", "epoll ", "get_events ", "_epoll_wait", "(idle"))
