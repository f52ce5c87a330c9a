"""Echo round-trip rate over WebSocket: the first reference figure for later work.

Starts a callbox server process (Engine.IO echo, or Socket.IO echo with ``--socketio``), connects
one raw WebSocket client (trio-websocket) and measures, for several rounds:

- sequential round trips (send one, wait for it back): rate and p50/p99 latency;
- pipelined round trips (``--window`` in flight): rate, and messages per server CPU-second.

    .venv/bin/python bench/echo.py [--messages 20000] [--rounds 5] [--window 32] [--socketio]

These machines are noisy: the figures printed are medians over the rounds, and the CPU figure is
what the server process itself used (from /proc), not wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import trio
from trio_websocket import open_websocket_url

SERVER = r"""
import sys, trio, callbox

class Echo:
    async def on_open(self, sock): pass
    async def on_message(self, sock, data): sock.send(data)
    async def on_close(self, sock, reason): pass
    async def run(self): await trio.sleep_forever()

def sio_app():
    app = callbox.SocketIO()
    @app.on("echo", raw=True)
    async def echo(socket, arg):
        socket.emit("echo", arg)
    return app

app = sio_app() if sys.argv[1] == "sio" else Echo()
async def main():
    async with trio.open_nursery() as n:
        # The per-session rate limit is lifted: this measures the echo path, not the limiter.
        config = callbox.Config(host="127.0.0.1", port=0, event_rate=1e9, event_burst=1 << 30)
        ls = await n.start(callbox.serve, app, config)
        print(ls[0].socket.getsockname()[1], flush=True)
trio.run(main)
"""

PAYLOAD = '{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.5 rport 46154 generation 0 ufrag sH2k network-cost 999","sdpMid":"0","sdpMLineIndex":0}'  # noqa: E501


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_round(port: int, pid: int, n: int, window: int, sio: bool) -> dict[str, float]:
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    with trio.fail_after(120):  # bounded: a lost message must not hang the bench
        return await _run_round(url, pid, n, window, sio)


async def _run_round(url: str, pid: int, n: int, window: int, sio: bool) -> dict[str, float]:
    msg = f'42["echo",{PAYLOAD}]' if sio else "4" + PAYLOAD
    async with open_websocket_url(url) as ws:
        await ws.get_message()  # open packet
        if sio:
            await ws.send_message("40")
            await ws.get_message()  # CONNECT answer

        async def get() -> str:
            while True:
                m = await ws.get_message()
                if m == "2":
                    await ws.send_message("3")
                    continue
                return str(m)

        lat = []
        t0 = time.perf_counter()
        for _ in range(n // 10):
            s = time.perf_counter()
            await ws.send_message(msg)
            await get()
            lat.append(time.perf_counter() - s)
        seq_rate = (n // 10) / (time.perf_counter() - t0)

        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        for _ in range(window):
            await ws.send_message(msg)
        for i in range(n):
            await get()
            if i + window < n:
                await ws.send_message(msg)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
    lat.sort()
    return {
        "seq_rate": seq_rate,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "pipe_rate": n / wall,
        "per_cpu_s": n / cpu if cpu > 0 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--socketio", action="store_true", help="echo a Socket.IO event instead")
    args = parser.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "sio" if args.socketio else "eio"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        rounds = [
            trio.run(run_round, port, proc.pid, args.messages, args.window, args.socketio)
            for _ in range(args.rounds)
        ]
    finally:
        proc.terminate()
        proc.wait()
    kind = "Socket.IO event" if args.socketio else "Engine.IO message"
    print(f"echo of a {len(PAYLOAD)}-byte {kind} over WebSocket, {args.rounds} rounds, medians:")
    for key, label in [
        ("seq_rate", "sequential round trips/s"),
        ("p50_us", "sequential p50 latency (us)"),
        ("p99_us", "sequential p99 latency (us)"),
        ("pipe_rate", f"pipelined round trips/s (window {args.window})"),
        ("per_cpu_s", "pipelined messages per server CPU-second"),
    ]:
        values = [r[key] for r in rounds]
        print(f"  {label:48s} {statistics.median(values):10.0f}   (rounds: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
