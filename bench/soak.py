"""Soak: a bounded churn of signalling clients against one in-process callbox, then a check that
nothing is left over.

For a set time, at a set rate, scenarios start (at most ``--concurrency`` at once), each on fresh
connections, over WebSocket or long-polling at random: a whole call (ring, accept, offer, answer,
candidates, hang-up), a rejected call, a cancelled one, one that rings out, a busy callee, a user id
taken over from another connection, a partner that vanishes mid-call (TCP reset), a client that
freezes (stops reading and answering pings), and a client that sends garbage. Every scenario checks
what its users see (``call:ended`` and its reason, ``call:reconnecting`` for a partner that
vanishes or freezes, whose call ends when the reconnect grace does, error codes).

Afterwards the server must hold zero sessions, sockets, users, calls and ring timers, the trio task
count must be back to its baseline, and nothing may have been logged at ERROR. RSS is reported
(baseline, peak, final). The server runs in this process so that its registries can be inspected;
the clients share the process (and its RSS).

    .venv/bin/python -m bench.soak --seconds 600 --rate 20      # the long soak (about 10 minutes)
    .venv/bin/python -m bench.soak --seconds 30                 # what CI runs (tests/hardening/test_soak.py)

It prints one JSON object of figures and exits non-zero if anything was left over or a scenario failed.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import callbox  # noqa: E402
from callbox.server.engine import EngineServer  # noqa: E402
from callbox.signalling import MemoryRegistry, Signalling, install  # noqa: E402
from hardening._sig import Peer, joined, raw_user, unique  # noqa: E402
from hardening._wire import text  # noqa: E402

# Short timers so that what a scenario leaves to them (a frozen client, a call left ringing) is over
# well within the settle time at the end.
PING_INTERVAL = 2.0
PING_TIMEOUT = 2.0
RING_TIMEOUT = 2.0
GRACE = 1.0  # the reconnect grace: a vanished or frozen partner's call waits this long, then ends
SETTLE = PING_INTERVAL + PING_TIMEOUT + RING_TIMEOUT + GRACE + 6.0
SCENARIOS = ("call", "call", "call", "reject", "cancel", "ringout", "busy", "takeover", "vanish", "freeze",
             "garbage")


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_tasks() -> int:
    """Every task in this trio run (walked from the root task through its nurseries)."""
    total = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        total += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return total


class ErrorLog(logging.Handler):
    """Keeps the records of the server's loggers at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}" + (" (traceback)" if record.exc_info else ""))


@dataclass
class Server:
    port: int
    app: callbox.SocketIO
    signalling: Signalling
    engine: EngineServer

    def leftovers(self) -> dict[str, int]:
        ns = self.app.namespaces["/"]
        registry = self.signalling.registry
        assert isinstance(registry, MemoryRegistry)
        return {"sessions": len(self.engine.sessions), "sockets": len(ns.sockets), "rooms": len(ns.rooms),
                "users": len(registry.users), "calls": len(registry.calls), "timers": len(self.signalling.timers),
                "pending_connects": len(self.app._pending), "tcp": self.engine.admission.connections}


@dataclass
class Stats:
    started: collections.Counter[str] = field(default_factory=collections.Counter)
    passed: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0


async def start_server(nursery: trio.Nursery, **overrides: Any) -> Server:
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "ping_interval": PING_INTERVAL, "ping_timeout": PING_TIMEOUT,
        "ring_timeout": RING_TIMEOUT, "initiate_burst": 1000, "initiate_per_minute": 60_000.0,
        "connection_rate_per_address": 100_000.0, "connection_burst_per_address": 100_000,
        "max_sessions_per_address": 100_000, "max_connections_per_address": 100_000,
        "connect_timeout": 5.0, "reconnect_grace": GRACE,
    }
    fields = set(callbox.Config.__struct_fields__)
    config = callbox.Config(**{k: v for k, v in {**settings, **overrides}.items() if k in fields})
    app = callbox.SocketIO(config)
    signalling = install(app)
    engine = EngineServer(app, config)
    listeners = await nursery.start(engine.serve)
    return Server(int(listeners[0].socket.getsockname()[1]), app, signalling, engine)


# -- scenarios -------------------------------------------------------------------------------------


async def _pair(nursery: trio.Nursery, port: int, rng: random.Random) -> tuple[Peer, Peer]:
    ta, tb = rng.choice(["websocket", "polling"]), rng.choice(["websocket", "websocket", "polling"])
    return await joined(nursery, port, "sa", ta), await joined(nursery, port, "sb", tb)


async def _ring(a: Peer, b: Peer) -> str:
    answer = await a.emit("call:initiate", {"to": b.user_id, "callType": "video"})
    assert answer["ok"] is True, answer
    call_id: str = answer["callId"]
    await b.expect("call:incoming", callId=call_id)
    await a.expect("call:initiated", callId=call_id)
    return call_id


async def scenario(kind: str, port: int, rng: random.Random) -> None:
    async with trio.open_nursery() as nursery:
        a, b = await _pair(nursery, port, rng)
        if kind == "call":
            call_id = await _ring(a, b)
            assert (await b.emit("call:accept", {"callId": call_id}))["ok"] is True
            await a.expect("call:accepted", callId=call_id)
            await a.emit("call:offer", {"to": b.user_id, "offer": {"type": "offer", "sdp": "v=0\r\n" * 200}}, ack=False)
            await b.expect("call:offer", callId=call_id)
            await b.emit("call:answer", {"to": a.user_id, "answer": {"type": "answer", "sdp": "v=0\r\n"}}, ack=False)
            await a.expect("call:answer", callId=call_id)
            for i in range(rng.randint(1, 8)):
                await a.emit("ice:candidate", {"to": b.user_id, "candidate": {"candidate": str(i)}}, ack=False)
                await b.expect("ice:candidate", callId=call_id)
            await trio.sleep(rng.random() * 0.5)
            ender, other = (a, b) if rng.random() < 0.5 else (b, a)
            assert (await ender.emit("call:end", {"callId": call_id}))["ok"] is True
            for p in (ender, other):
                assert (await p.expect("call:ended", callId=call_id))["reason"] == "hangup"
        elif kind == "reject":
            call_id = await _ring(a, b)
            assert (await b.emit("call:reject", {"callId": call_id, "from": a.user_id}))["ok"] is True
            await a.expect("call:rejected", callId=call_id)
        elif kind == "cancel":
            call_id = await _ring(a, b)
            assert (await a.emit("call:end", {"callId": call_id}))["ok"] is True
            assert (await b.expect("call:ended", callId=call_id))["reason"] == "cancelled"
        elif kind == "ringout":
            call_id = await _ring(a, b)
            await a.expect("call:timeout", timeout=RING_TIMEOUT + 5, callId=call_id)
            await b.expect("call:timeout", timeout=RING_TIMEOUT + 5, callId=call_id)
        elif kind == "busy":
            call_id = await _ring(a, b)
            c = await joined(nursery, port, "sc")
            assert (await c.emit("call:initiate", {"to": b.user_id, "callType": "audio"}))["code"] == "USER_BUSY"
            offline = await c.emit("call:initiate", {"to": unique("nobody"), "callType": "audio"})
            assert offline["code"] == "USER_OFFLINE"
            await c.close()
            assert (await a.emit("call:end", {"callId": call_id}))["ok"] is True
        elif kind == "takeover":
            call_id = await _ring(a, b)
            b2 = await Peer.open(nursery, port, rng.choice(["websocket", "polling"]))
            await b2.join(b.user_id)
            assert (await a.expect("call:ended", callId=call_id))["reason"] == "replaced"
            await b.expect("error", code="SESSION_REPLACED")
            await b2.close()
        elif kind == "vanish":
            call_id = await _ring(a, b)
            assert (await b.emit("call:accept", {"callId": call_id}))["ok"] is True
            if b.transport == "websocket":
                await b.abort()  # a TCP reset
            else:
                b._stop.cancel()  # a polling client that is killed: its pending GET's connection closes
            await a.expect("call:reconnecting", timeout=PING_INTERVAL + PING_TIMEOUT + 3, callId=call_id)
            ended = await a.expect("call:ended", timeout=GRACE + 3, callId=call_id)
            assert ended["reason"] == "disconnected", ended
        elif kind == "freeze":
            ws, _ = await raw_user(port)  # it calls a, then reads nothing and answers no ping
            await ws.send(text("42" + json.dumps(["call:initiate", {"to": a.user_id, "callType": "audio"}])))
            call_id = (await a.expect("call:incoming"))["callId"]
            assert (await a.emit("call:accept", {"callId": call_id}))["ok"] is True
            await a.expect("call:reconnecting", timeout=PING_INTERVAL + PING_TIMEOUT + 3, callId=call_id)
            ended = await a.expect("call:ended", timeout=GRACE + 3, callId=call_id)
            assert ended["reason"] == "disconnected", ended
            await ws.aclose()
        elif kind == "garbage":
            call_id = await _ring(a, b)
            await b.send(rng.choice(["4" + "[" * 5000, "7", '42["connect"]', "451-[]", "4" + "x" * 100]))
            ended = await a.expect("call:ended", callId=call_id)
            assert ended["reason"] == "disconnected", ended
        for p in (a, b):
            await p.close()
        nursery.cancel_scope.cancel()


async def run_soak(seconds: float, rate: float, *, concurrency: int = 40, seed: int = 7,
                   progress: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    errors = ErrorLog()
    server_logger = logging.getLogger("callbox")
    server_logger.addHandler(errors)
    stats = Stats()
    try:
        async with trio.open_nursery() as outer:
            server = await start_server(outer)
            await scenario("call", server.port, rng)  # warm-up: first-use allocations
            await trio.sleep(0.2)
            gc.collect()
            base_tasks, base_rss, base_objects = count_tasks(), rss_kb(), len(gc.get_objects())
            peak_rss = base_rss
            limiter = trio.CapacityLimiter(concurrency)
            started_at = time.monotonic()

            async def run_one(kind: str, seed: int) -> None:
                nonlocal stats
                async with limiter:
                    stats.in_flight += 1
                    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                    try:
                        with trio.fail_after(30):
                            await scenario(kind, server.port, random.Random(seed))
                        stats.passed[kind] += 1
                    except Exception as exc:  # a failure is a finding: recorded, the soak goes on
                        stats.failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                    finally:
                        stats.in_flight -= 1

            async with trio.open_nursery() as churn:
                n = 0
                deadline = started_at + seconds
                max_ops = int(seconds * rate) + 1
                while time.monotonic() < deadline and n < max_ops:
                    kind = rng.choice(SCENARIOS)
                    stats.started[kind] += 1
                    churn.start_soon(run_one, kind, rng.randrange(1 << 30))
                    n += 1
                    peak_rss = max(peak_rss, rss_kb())
                    if progress and n % max(1, int(rate * 10)) == 0:
                        print(json.dumps({"t": round(time.monotonic() - started_at), "ops": n,
                                          "in_flight": stats.in_flight, "rss_kb": rss_kb(),
                                          "failures": len(stats.failures)}), file=sys.stderr, flush=True)
                    await trio.sleep(rng.expovariate(rate))
            churn_seconds = time.monotonic() - started_at
            # Everything that is left to timers (frozen clients, ringing calls) is over by now.
            left = server.leftovers()
            with trio.move_on_after(SETTLE):
                while any(left.values()):
                    await trio.sleep(0.1)
                    left = server.leftovers()
            for _ in range(50):  # connection tasks finish their close just after the last session
                if count_tasks() <= base_tasks:
                    break
                await trio.sleep(0.05)
            gc.collect()
            tasks = count_tasks()
            final_rss = rss_kb()
            objects = len(gc.get_objects())
            outer.cancel_scope.cancel()
    finally:
        server_logger.removeHandler(errors)
    return {
        "seconds": round(churn_seconds, 1),
        "rate_per_s": rate,
        "operations": sum(stats.started.values()),
        "passed": sum(stats.passed.values()),
        "by_scenario": dict(sorted(stats.started.items())),
        "failures": stats.failures[:20],
        "failure_count": len(stats.failures),
        "peak_in_flight": stats.peak_in_flight,
        "left_over": left,
        "tasks": {"baseline": base_tasks, "final": tasks},
        "rss_kb": {"baseline": base_rss, "peak": peak_rss, "final": final_rss},
        "gc_objects": {"baseline": base_objects, "final": objects},
        "error_log": errors.records[:20],
    }


def ok(figures: dict[str, Any]) -> bool:
    return (not figures["failure_count"] and not any(figures["left_over"].values())
            and figures["tasks"]["final"] <= figures["tasks"]["baseline"] and not figures["error_log"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the churn runs (default 600)")
    parser.add_argument("--rate", type=float, default=20.0, help="scenarios started per second (default 20)")
    parser.add_argument("--concurrency", type=int, default=40, help="scenarios at once at most (default 40)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    figures = trio.run(lambda: run_soak(args.seconds, args.rate, concurrency=args.concurrency, seed=args.seed,
                                        progress=True))
    print(json.dumps(figures, indent=2))
    return 0 if ok(figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
