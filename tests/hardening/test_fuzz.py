"""Property-based fuzzing (hypothesis) of the decoders the existing codec tests do not cover: the
signalling payloads (through the whole service), the WebSocket codec as the server drives it, and
the Engine.IO session feeding the Socket.IO decoder. Only the documented error types may come out.
(Engine.IO packets/payloads and Socket.IO packets alone are fuzzed in tests/engineio/test_engineio_codec.py
and tests/socketio/test_socketio_codec.py; the coverage-guided harnesses are in fuzz/.)"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbox import Config
from callbox.engineio import EngineIOProtocolError, EngineSession
from callbox.server.wsframe import CLOSE, CODECS, PING, WSCodec, WSProtocolError
from callbox.signalling import MemoryRegistry, Session, Signalling
from callbox.signalling._payloads import AckError, AckOk
from callbox.socketio import Decoder, SocketIOProtocolError

pytestmark = pytest.mark.fuzz  # up to 1,500 examples a test: not in the fast set

# -- signalling --------------------------------------------------------------------------------------

EVENTS = ["user:join", "call:initiate", "call:accept", "call:reject", "call:offer", "call:answer", "ice:candidate",
          "call:end"]
KEYS = ["userId", "to", "from", "callType", "callId", "offer", "answer", "candidate", "x"]
WEIRD = st.sampled_from(["alice", "bob", "", "a" * 129, "a\x00", "a\n", "\u202eb", "\u0430", "audio", "video",
                         "CALL", "ob", "x" * 70, "\ud800"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), WEIRD, st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)),
    max_leaves=12)
PAYLOAD = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6) | JSON


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, sid: str, event: str, payload: msgspec.Struct) -> bool:
        self.sent.append((sid, event, msgspec.json.encode(payload)))
        return True

    async def disconnect(self, sid: str) -> None:
        pass

    def start_soon(self, fn: Any, *args: Any) -> None:
        pass  # ring timers are not part of this property


_ARGS = msgspec.json.Decoder(list[msgspec.Raw])


def as_sent(args: list[Any], call_id: str) -> list[msgspec.Raw | bytes] | None:
    """The arguments as the Socket.IO layer hands them over (each JSON argument as msgspec.Raw, bytes
    as bytes), or None if that layer would refuse them (the connection closes; signalling never sees
    them). "CALL" stands for the id of a live call."""

    def fill(v: Any) -> Any:
        if v == "CALL":
            return call_id
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    values = [fill(a) for a in args]
    try:
        raws = _ARGS.decode(json.dumps([v for v in values if not isinstance(v, bytes)]))
    except msgspec.DecodeError:
        return None
    it = iter(raws)
    return [v if isinstance(v, bytes) else next(it) for v in values]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(["alice", "bob"]), st.sampled_from(EVENTS) | st.text(max_size=12),
                                st.lists(PAYLOAD | st.binary(max_size=4), max_size=2), st.booleans()),
                      min_size=1, max_size=6))
def test_signalling_handles_any_payload(steps: list[tuple[str, str, list[Any], bool]]) -> None:
    """Any sequence of events with any payloads gets an ack (ok or a documented error code) and
    never raises; relays carry exactly the relayed field; the registry stays consistent."""

    async def run() -> None:
        transport = Transport()
        config = Config(max_sdp_bytes=256, max_candidate_bytes=64)
        service = Signalling(transport, MemoryRegistry(), lambda: config)
        sessions = {"alice": Session("sid-alice"), "bob": Session("sid-bob")}
        for name, s in sessions.items():
            await service.handle(s, "user:join", [msgspec.Raw(json.dumps({"userId": name}).encode())])
        for who, event, args, ack in steps:
            registry = service.registry
            assert isinstance(registry, MemoryRegistry)
            sent = as_sent(args, next(iter(registry.calls), "none"))
            if sent is None:
                continue
            result = await service.handle(sessions[who], event, sent, ack=ack)
            assert isinstance(result, (AckOk, AckError)), result
        registry = service.registry
        assert isinstance(registry, MemoryRegistry)
        for call in registry.calls.values():
            for party in (call.caller, call.callee):
                assert registry.users[party].call_id == call.id
        for user in registry.users.values():
            assert user.call_id is None or user.call_id in registry.calls
        for _, _event, body in transport.sent:
            msgspec.json.decode(body)  # everything sent is valid JSON

    trio.run(run)


# -- the WebSocket codecs, as the server drives them -------------------------------------------------------

OPCODES = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF])


@st.composite
def frames(draw: Any) -> bytes:
    opcode = draw(OPCODES)
    payload = draw(st.binary(max_size=300))
    if opcode == 0x8 and draw(st.booleans()):
        payload = struct.pack("!H", draw(st.integers(0, 65535))) + draw(st.binary(max_size=20))
    fin = draw(st.booleans()) if opcode < 8 else draw(st.sampled_from([True, True, True, False]))
    rsv = draw(st.sampled_from([0, 0, 0, 1, 4]))
    masked = draw(st.sampled_from([True, True, True, False]))
    n = len(payload) if draw(st.integers(0, 9)) else draw(st.integers(0, 1 << 20))
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if masked else 0
    head += (bytes([mbit | n]) if n < 126 else bytes([mbit | 126]) + struct.pack("!H", n) if n < 65536
             else bytes([mbit | 127]) + struct.pack("!Q", n))
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def drive(codec: WSCodec, chunks: list[bytes]) -> None:
    """What engine._read_ws does with the codec seam: feed, answer pings, answer a close and stop."""
    for chunk in chunks:
        for kind, payload in codec.feed(chunk):
            if kind == PING:
                assert isinstance(payload, bytes)
                codec.pong(payload)
            elif kind == CLOSE:
                assert isinstance(payload, int)
                codec.close(payload)
                return


@settings(max_examples=1500, deadline=None)
@given(data=st.lists(frames(), min_size=1, max_size=6), cuts=st.lists(st.integers(1, 64), max_size=8),
       garbage=st.binary(max_size=16))
def test_websocket_codecs_raise_only_protocol_errors(data: list[bytes], cuts: list[int], garbage: bytes) -> None:
    stream = b"".join(data) + garbage
    chunks, i = [], 0
    for cut in cuts:
        chunks.append(stream[i:i + cut])
        i += cut
    chunks.append(stream[i:])
    for make in CODECS.values():  # both codecs behind the seam, ours and wsproto's
        try:
            drive(make(1024, b""), chunks)
        except WSProtocolError as exc:
            assert exc.code in (1002, 1007, 1009)


# -- Engine.IO session feeding the Socket.IO decoder --------------------------------------------------

SIO_PIECES = st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "/admin,", "/", ",", "12", '["x"]', '{"a":1}', "[",
                              "]", "-", "1-", '{"_placeholder":true,"num":0}', "\ud7ff", "null", '"s"', "99999999999"])


@settings(max_examples=1500, deadline=None)
@given(messages=st.lists(st.one_of(st.lists(SIO_PIECES, max_size=8).map("".join), st.text(max_size=30),
                                   st.binary(max_size=8)), max_size=10))
def test_engineio_session_and_socketio_decoder_raise_only_their_errors(messages: list[str | bytes]) -> None:
    session = EngineSession("s", websocket=True, now=0.0, ping_interval=25.0, ping_timeout=20.0,
                            max_outbox_bytes=1 << 16)
    decoder = Decoder()
    for i, m in enumerate(messages):
        try:
            if isinstance(m, bytes):
                msg: str | bytes | None = session.receive_ws_binary(m, float(i))  # type: ignore[call-arg]
            else:
                msg, _ = session.receive_ws_text(m, float(i))
            if msg is None:
                continue
            if isinstance(msg, str):
                decoder.receive_text(msg)
            else:
                decoder.receive_binary(msg)
        except (EngineIOProtocolError, SocketIOProtocolError):
            return
