"""The short soak (the long one is ``python -m bench.soak``, see bench/soak.py): about half a minute of
churn at 15 scenarios a second against an in-process server, then nothing may be left over: zero
sessions, sockets, users, calls and ring timers, the trio task count back to its baseline, no ERROR
logged, and RSS back near its baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.soak import run_soak  # noqa: E402

pytestmark = pytest.mark.socket  # bench.soak serves callbox in this run, on loopback

SECONDS = 30.0
RATE = 15.0


async def test_short_soak_leaves_nothing_behind() -> None:
    figures = await run_soak(SECONDS, RATE, concurrency=40, seed=11)
    print("\nFIGURES soak: " + json.dumps(figures))
    assert figures["failures"] == [], figures["failures"]
    assert figures["operations"] >= SECONDS * RATE * 0.5, figures
    assert not any(figures["left_over"].values()), figures["left_over"]
    assert figures["tasks"]["final"] <= figures["tasks"]["baseline"], figures["tasks"]
    assert figures["error_log"] == [], figures["error_log"]
    rss = figures["rss_kb"]
    # RSS back near its baseline: Python keeps freed arenas, so "near" is generous; a leak of one
    # session per operation would show as many MB here.
    assert rss["final"] - rss["baseline"] < 40_000, rss
