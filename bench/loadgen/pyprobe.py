"""The Python candidate for the load generator, kept so that the choice of Node can be re-measured.

The relay-saturation scenario only (20 call pairs, 4 candidates in flight each way), on Trio with a
lean hand-written WebSocket client: one raw socket per client, frames built and parsed by hand,
the outgoing frames of one wake-up sent with one ``send_all``. It prints the same figures as
``gen.mjs relay``: relayed messages per second and the generator's own CPU per relayed message.

    .venv/bin/python bench/loadgen/pyprobe.py --port P --pid SERVER_PID [--duration 5]

bench/README.md ("Why the generator is Node") has the figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import time

import trio

CANDIDATE = (
    '{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.5 rport 46154 '
    'generation 0 ufrag sH2k network-cost 999","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"'
)
STAMP = b'"usernameFragment":"'


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = b""
        self.out: list[bytes] = []
        self.stream: trio.SocketStream

    async def connect(self, port: int) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        await self.stream.send_all(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self.stream.receive_some(65536)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]

    def frame(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        mask = os.urandom(4)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        m = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
        self.out.append(head + mask + masked)

    async def flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            await self.stream.send_all(data)

    async def messages(self):  # type: ignore[no-untyped-def]
        while True:
            buf = self.buf
            at = 0
            batch = []
            while len(buf) - at >= 2:
                size = buf[at + 1] & 0x7F
                head = 2
                if size == 126:
                    if len(buf) - at < 4:
                        break
                    size = int.from_bytes(buf[at + 2 : at + 4], "big")
                    head = 4
                elif size == 127:
                    if len(buf) - at < 10:
                        break
                    size = int.from_bytes(buf[at + 2 : at + 10], "big")
                    head = 10
                if len(buf) - at < head + size:
                    break
                batch.append(buf[at + head : at + head + size])
                at += head + size
            self.buf = buf[at:]
            for m in batch:
                yield m
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.buf += data


async def main(port: int, pid: int, duration: float, pairs_n: int, window: int) -> None:
    tag = f"py{os.getpid()}"
    names = [(f"{tag}-a{i}", f"{tag}-b{i}") for i in range(pairs_n)]
    clients = {}
    for a, b in names:
        for n in (a, b):
            c = clients[n] = Client(n)
            await c.connect(port)
    state = {"measuring": False, "running": True, "received": 0, "lat": []}
    ready = trio.Event()
    established = [0]

    def ice(to: str) -> str:
        return f'42["ice:candidate",{{"to":"{to}","candidate":{CANDIDATE}{time.perf_counter() * 1000:.3f}"}}}}]'

    async def run(c: Client, peer: Client, caller: bool) -> None:
        async for m in c.messages():
            if m[:1] == b"2":
                c.frame("3")
            elif m[:1] == b"0":
                c.frame("40")
            elif m[:2] == b"40":
                c.frame(f'42["user:join",{{"userId":"{c.name}"}}]')
            elif m.startswith(b'42["ice:candidate"'):
                i = m.index(STAMP) + len(STAMP)
                t = float(m[i : m.index(b'"', i)])
                if state["measuring"]:
                    state["received"] += 1
                    state["lat"].append(time.perf_counter() * 1000 - t)
                if state["running"]:
                    peer.frame(ice(c.name))
                    await peer.flush()
            elif m.startswith(b"42"):
                event, p = json.loads(m[2:])
                if event == "user:joined" and caller:
                    await trio.sleep(0.3)
                    c.frame("42" + json.dumps(["call:initiate", {"to": peer.name, "callType": "video"}]))
                elif event == "call:incoming":
                    c.frame("42" + json.dumps(["call:accept", {"callId": p["callId"]}]))
                elif event == "call:accepted" and caller:
                    offer = {"to": peer.name, "offer": {"type": "offer", "sdp": "v=0"}}
                    c.frame("42" + json.dumps(["call:offer", offer]))
                elif event == "call:offer":
                    answer = {"to": peer.name, "answer": {"type": "answer", "sdp": "v=0"}}
                    c.frame("42" + json.dumps(["call:answer", answer]))
                elif event == "call:answer":
                    established[0] += 1
                    if established[0] == pairs_n:
                        ready.set()
            await c.flush()

    async with trio.open_nursery() as nursery:
        for a, b in names:
            nursery.start_soon(run, clients[a], clients[b], True)
            nursery.start_soon(run, clients[b], clients[a], False)
        with trio.fail_after(30):
            await ready.wait()
        for a, b in names:
            for _ in range(window):
                clients[b].frame(ice(a))
                clients[a].frame(ice(b))
            await clients[a].flush()
            await clients[b].flush()
        await trio.sleep(1)
        state["measuring"] = True
        t0, s0, g0 = time.perf_counter(), cpu_of(pid), time.process_time()
        await trio.sleep(duration)
        state["measuring"] = False
        wall, server, gen = time.perf_counter() - t0, cpu_of(pid) - s0, time.process_time() - g0
        state["running"] = False
        nursery.cancel_scope.cancel()
    n = state["received"]
    lat = sorted(state["lat"])
    print(json.dumps({
        "scenario": "relay (python probe)", "relayed": n, "rate": n / wall, "server_cpu": server, "gen_cpu": gen,
        "gen_us_per_msg": gen / n * 1e6 if n else None, "server_us_per_msg": server / n * 1e6 if n else None,
        "p50_ms": lat[len(lat) // 2] if lat else None, "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--window", type=int, default=4)
    a = parser.parse_args()
    trio.run(main, a.port, a.pid, a.duration, a.pairs, a.window)
