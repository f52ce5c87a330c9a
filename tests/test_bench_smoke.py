"""The benchmark suite keeps working: its smoke run (every server, every scenario, tiny sizes).

Runs ``python -m bench --smoke`` (bench/README.md) and checks that callbox, python-socketio and
Node socket.io each passed the protocol check and produced figures for every scenario. The
figures themselves are not judged here: CI machines are noisy and the sizes are tiny.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("callbox", "pysio", "node")
# scenario -> the figures it must produce
FIGURES = {
    "idle": ("startup_s", "idle_rss"),
    "ramp": ("rate", "p50_ms", "p99_ms", "rss_per_conn"),
    "flows": ("flows_per_s", "setup", "relay"),
    "relay": ("rate", "per_server_cpu_s", "p50_ms", "p99_ms"),
    "fixed": ("rate", "p50_ms", "p99_ms"),
}


@pytest.mark.process
@pytest.mark.node
def test_bench_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-setup", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.png").stat().st_size > 10_000

    for server in SERVERS:
        check = data["checks"][server]
        assert not check.get("error") and check["failures"] == [], (server, check)

    scenarios = data["meta"]["plan"]
    expected = ["idle", *(name for name, _, _ in scenarios["ramps"]), "flows", "relay", "fixed"]
    assert any("deflate" in name for name in expected)
    for scenario in expected:
        for server in SERVERS:
            rows = [r for r in data["results"] if r["server"] == server and r["scenario"] == scenario]
            assert rows, (server, scenario)
            for r in rows:
                assert not r.get("error") and not r.get("failures"), (server, scenario, r)
                kind = "ramp" if scenario.startswith("ramp") else scenario
                for key in FIGURES[kind]:
                    assert r.get(key) is not None, (server, scenario, key, r)
                if kind == "ramp":
                    assert r["count"] == r["n"] > 0
                if kind in ("relay", "fixed"):
                    assert r["relayed"] > 0
                if kind == "flows":
                    assert r["flows"] > 0

    summary = data["summary"]
    for key in ("relay.per_cpu", "flows.rate", "fixed.p99", "idle_rss_mib"):
        for server in SERVERS:
            assert summary[key][server]["median"] is not None, (key, server)
        assert summary[key]["callbox/node"]["median"] is not None
