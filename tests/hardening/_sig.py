"""A small signalling client for the hardening tests: Socket.IO v5 over a raw WebSocket or over
long-polling, written against the wire protocol (no client library), so that the tests see exactly
what a client receives. It answers pings, records every event with its arrival time, and waits for
events and acks with a bound on every wait.

``Peer`` is what a test uses: ``join``, ``call``, ``relay`` and ``expect``. ``call_pair`` makes two
joined users in a live call; ``check_call`` proves a call still relays both ways and returns the
round-trip latency, which is how every hardening test shows that other clients keep working.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket as socketlib
import struct
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from _raw import HTTPConnection, eio_target, eventually, open_ws, parse_open, unread_by_server

from ._wire import TEXT, WAIT, RawWS, text

RS = "\x1e"
_names = itertools.count()


def unique(prefix: str) -> str:
    """A user id no other test uses on a shared server."""
    return f"{prefix}{next(_names)}"


class Peer:
    """One Socket.IO connection to the default namespace, joined (after ``join``) as a user."""

    def __init__(self, port: int, transport: str) -> None:
        self.port = port
        self.transport = transport
        self.eio_sid = ""
        self.socket_id = ""
        self.user_id = ""
        self.events: list[tuple[str, Any, float]] = []  # (name, payload, arrival time), not yet taken
        self.all_events: list[tuple[str, Any, float]] = []
        self.acks: dict[int, Any] = {}
        self.raw: list[str | bytes] = []  # every Engine.IO message received, as received
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.disconnected = False  # Socket.IO DISCONNECT from the server
        self._changed = trio.Event()
        self._ack_ids = itertools.count()
        self._ws: WebSocketConnection | None = None
        self._stop = trio.CancelScope()
        self._get_out: HTTPConnection | None = None  # polling: the connection of the GET sent and not yet answered

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    async def open(cls, nursery: trio.Nursery, port: int, transport: str = "websocket",
                   headers: list[tuple[str, str]] | None = None) -> Peer:
        peer = cls(port, transport)
        peer._headers = headers or []
        if transport == "websocket":
            ws = await open_ws(nursery, port, extra_headers=[(k.encode(), v.encode()) for k, v in peer._headers])
            peer._ws = ws
            with trio.fail_after(WAIT):
                first = await ws.get_message()
            assert isinstance(first, str)
            peer.eio_sid = parse_open(first)["sid"]
            nursery.start_soon(peer._read_ws)
        else:
            conn = await HTTPConnection.open(port)
            resp = await conn.request("GET", eio_target("polling"), headers=peer._headers)
            await conn.aclose()
            assert resp.status == 200, resp
            peer.eio_sid = parse_open(resp.text)["sid"]
            nursery.start_soon(peer._poll_loop)
        await peer.send("40")
        connected = await peer.wait_raw(lambda m: isinstance(m, str) and m.startswith("40"))
        assert isinstance(connected, str)
        peer.socket_id = json.loads(connected[2:])["sid"]
        return peer

    _headers: list[tuple[str, str]]

    # -- transport ---------------------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        """Send one Engine.IO packet (text with its type digit, or a binary message)."""
        if self._ws is not None:
            with trio.fail_after(WAIT):
                await self._ws.send_message(message)
            return
        body = message.encode() if isinstance(message, str) else b"b" + base64.b64encode(message)
        await self.post(body)

    async def post(self, body: bytes) -> int:
        conn = await HTTPConnection.open(self.port)
        try:
            resp = await conn.request("POST", eio_target("polling", self.eio_sid), body,
                                      headers=[("Content-Type", "text/plain;charset=UTF-8"), *self._headers])
        finally:
            await conn.aclose()
        if resp.status != 200:
            self.closed.set()
        return resp.status

    async def _read_ws(self) -> None:
        assert self._ws is not None
        with self._stop:
            try:
                for _ in range(10_000_000):  # a bound no test comes near; the test's nursery ends it
                    msg = await self._ws.get_message()
                    await self._handle(msg)
            except ConnectionClosed as exc:
                self.close_code = exc.reason.code if exc.reason is not None else None
            finally:
                self.closed.set()
                self._notify()

    async def _poll_loop(self) -> None:
        with self._stop:
            try:
                conn = await HTTPConnection.open(self.port)
                try:
                    for _ in range(1_000_000):
                        await conn.send_request("GET", eio_target("polling", self.eio_sid), headers=self._headers)
                        self._get_out = conn
                        resp = await conn.receive_response(timeout=3600)
                        self._get_out = None
                        if resp.status != 200:
                            return
                        for packet in resp.text.split(RS):
                            if packet.startswith("b"):
                                await self._handle(base64.b64decode(packet[1:]))
                            else:
                                await self._handle(packet)
                        if "1" in resp.text.split(RS):
                            return
                finally:
                    await conn.aclose()
            except Exception:  # the server went away mid-poll: this peer is closed
                return
            finally:
                self.closed.set()
                self._notify()

    async def _handle(self, msg: str | bytes) -> None:
        self.raw.append(msg)
        if msg == "2":
            if self._ws is not None:
                try:
                    await self._ws.send_message("3")
                except ConnectionClosed:
                    pass
            else:
                with trio.move_on_after(WAIT):
                    try:
                        await self.post(b"3")
                    except Exception:
                        pass
        elif isinstance(msg, str) and msg.startswith("42"):
            body = msg[2:]
            i = 0
            while i < len(body) and body[i].isdigit():
                i += 1
            name, *args = json.loads(body[i:])
            item = (name, args[0] if args else None, trio.current_time())
            self.events.append(item)
            self.all_events.append(item)
        elif isinstance(msg, str) and msg.startswith("43"):
            body = msg[2:]
            i = 0
            while i < len(body) and body[i].isdigit():
                i += 1
            self.acks[int(body[:i])] = json.loads(body[i:])
        elif msg == "41":
            self.disconnected = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def close(self) -> None:
        """Leave cleanly: Engine.IO close packet, then close the transport."""
        try:
            if self._ws is not None:
                with trio.move_on_after(1):
                    await self._ws.send_message("1")
                    await self._ws.aclose()
            else:
                with trio.move_on_after(1):
                    await self.post(b"1")
        except Exception:
            pass
        self._stop.cancel()

    async def abort(self) -> None:
        """Vanish: drop the TCP connection without a word (a crashed or unplugged client)."""
        if self._ws is not None:
            stream = self._ws._stream  # the TCP stream under trio-websocket
            sock = getattr(stream, "socket", None)
            if sock is not None:
                # SO_LINGER 0: close sends RST, as a killed process's kernel would for unread data.
                sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
        self._stop.cancel()

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_raw(self, pred: Any, timeout: float = WAIT) -> str | bytes:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for msg in self.raw[seen:]:
                    if pred(msg):
                        return msg
                seen = len(self.raw)
                if self.closed.is_set():
                    raise AssertionError(f"{self.user_id or self.eio_sid}: closed; got {self.raw[-5:]!r}")
                await self._changed.wait()

    async def expect(self, name: str, timeout: float = WAIT, **fields: Any) -> Any:  # noqa: ASYNC109
        """The first event ``name`` (whose payload has ``fields``) not yet taken; it is taken."""
        with trio.fail_after(timeout):
            while True:
                for i, (n, payload, _) in enumerate(self.events):
                    if n == name and all(isinstance(payload, dict) and payload.get(k) == v
                                         for k, v in fields.items()):
                        del self.events[i]
                        return payload
                if self.closed.is_set():
                    raise AssertionError(f"{self.user_id}: closed while waiting for {name}; events {self.events}")
                await self._changed.wait()

    async def poll_pending(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Polling: wait until this peer's GET is out and the server has read it, so that it is
        pending there (it stays so until the server has something to send this peer)."""

        def pending() -> bool:
            conn = self._get_out
            return conn is not None and unread_by_server(conn.stream) == 0

        await eventually(pending, timeout, f"{self.user_id or self.eio_sid}: a pending GET")

    async def wait_closed(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            await self.closed.wait()

    # -- signalling --------------------------------------------------------------------------------

    async def emit(self, event: str, *args: Any, ack: bool = True, timeout: float = WAIT) -> Any:  # noqa: ASYNC109
        """Emit; with ``ack`` wait for and return the ack's first argument."""
        body = json.dumps([event, *args], separators=(",", ":"))
        if not ack:
            await self.send("42" + body)
            return None
        ack_id = next(self._ack_ids)
        await self.send(f"42{ack_id}{body}")
        with trio.fail_after(timeout):
            while ack_id not in self.acks:
                if self.closed.is_set():
                    raise AssertionError(f"{self.user_id}: closed while waiting for the ack of {event}")
                await self._changed.wait()
        answer = self.acks.pop(ack_id)
        return answer[0] if answer else None

    async def join(self, user_id: str) -> None:
        answer = await self.emit("user:join", {"userId": user_id})
        assert answer == {"ok": True, "userId": user_id, "socketId": self.socket_id}, answer
        await self.expect("user:joined", userId=user_id)
        self.user_id = user_id


async def joined(nursery: trio.Nursery, port: int, prefix: str, transport: str = "websocket",
                 headers: list[tuple[str, str]] | None = None) -> Peer:
    peer = await Peer.open(nursery, port, transport, headers)
    await peer.join(unique(prefix))
    return peer


async def call_pair(nursery: trio.Nursery, port: int, prefix: str = "by",
                    transports: tuple[str, str] = ("websocket", "websocket"),
                    headers: list[tuple[str, str]] | None = None) -> tuple[Peer, Peer, str]:
    """Two users in an accepted call: (caller, callee, call id)."""
    a = await joined(nursery, port, prefix + "a", transports[0], headers)
    b = await joined(nursery, port, prefix + "b", transports[1], headers)
    answer = await a.emit("call:initiate", {"to": b.user_id, "callType": "audio"})
    assert answer["ok"] is True, answer
    call_id = answer["callId"]
    await b.expect("call:incoming", callId=call_id)
    await a.expect("call:initiated", callId=call_id)
    assert (await b.emit("call:accept", {"callId": call_id, "from": a.user_id}))["ok"] is True
    await a.expect("call:accepted", callId=call_id)
    await b.expect("call:accepted", callId=call_id)
    return a, b, call_id


async def check_call(a: Peer, b: Peer, call_id: str, timeout: float = WAIT) -> float:  # noqa: ASYNC109
    """One candidate each way through the server; the round-trip time in seconds (a -> b -> a)."""
    start = trio.current_time()
    mark = f"{start:.6f}"
    await a.emit("ice:candidate", {"to": b.user_id, "candidate": {"candidate": mark}}, ack=False)
    got = await b.expect("ice:candidate", timeout, callId=call_id)
    assert got == {"candidate": {"candidate": mark}, "from": a.user_id, "callId": call_id}, got
    await b.emit("ice:candidate", {"to": a.user_id, "candidate": {"candidate": mark}}, ack=False)
    got = await a.expect("ice:candidate", timeout, callId=call_id)
    assert got["candidate"] == {"candidate": mark}, got
    return trio.current_time() - start


async def hang_up(a: Peer, b: Peer, call_id: str) -> None:
    assert (await a.emit("call:end", {"callId": call_id}))["ok"] is True
    await a.expect("call:ended", callId=call_id, reason="hangup")
    await b.expect("call:ended", callId=call_id, reason="hangup")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_user(port: int, *, rcvbuf: int | None = None) -> tuple[RawWS, str]:
    """A direct WebSocket session connected to ``/`` and joined as a new user, by hand."""
    ws, _ = await RawWS.open(port, rcvbuf=rcvbuf)
    await ws.send(text("40"))
    opcode, payload = await ws.next_frame()
    assert opcode == TEXT and payload.startswith(b"40{"), payload
    user = unique("raw")
    await ws.send(text(json.dumps(["user:join", {"userId": user}]).join(["42", ""])))
    opcode, payload = await ws.next_frame()
    assert payload.startswith(b'42["user:joined"'), payload
    return ws, user


async def ringing(nursery: trio.Nursery, port: int) -> tuple[RawWS, Peer, str]:
    """A raw user calling a ``Peer``: (the raw socket, the callee, the call id)."""
    ws, user = await raw_user(port)
    callee = await joined(nursery, port, "callee")
    await ws.send(text("42" + json.dumps(["call:initiate", {"to": callee.user_id, "callType": "video"}])))
    incoming = await callee.expect("call:incoming")
    assert incoming["from"] == user
    return ws, callee, incoming["callId"]
