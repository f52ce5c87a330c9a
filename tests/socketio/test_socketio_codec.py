"""Socket.IO v5 codec: the wire vectors in protocol/vectors/socketio.json, bytes in and bytes out, and
properties over arbitrary input (malformed input raises SocketIOProtocolError and nothing else)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _paths import PROTOCOL
from callbox.socketio import (
    MAX_ACK_ID_DIGITS,
    MAX_ATTACHMENTS,
    MAX_NAMESPACE_LENGTH,
    RESERVED_EVENTS,
    Decoder,
    Packet,
    PacketType,
    SocketIOProtocolError,
    encode_binary_packet,
    encode_packet,
    has_binary,
)

VECTORS_PATH = PROTOCOL / "vectors" / "socketio.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text("utf-8"))
ERRORS = {"SocketIOProtocolError": SocketIOProtocolError}
BINARY_TYPES = (PacketType.BINARY_EVENT, PacketType.BINARY_ACK)

Message = str | bytes


def _messages(case: dict[str, Any]) -> list[Message]:
    out: list[Message] = []
    for m in case["messages"]:
        out.append(m["text"] if "text" in m else base64.b64decode(m["base64"], validate=True))
    return out


def _from_json(value: Any) -> Any:
    """Vector data to Python: ``{"$bytes": "<base64>"}`` stands for bytes."""
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if list(value) == ["$bytes"]:
            return base64.b64decode(value["$bytes"], validate=True)
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _assert_same(actual: Any, expected: Any) -> None:
    """Equality that also checks types (True == 1 and 1 == 1.0 in Python) and dict key order."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, list):
        assert len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_same(a, e)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), (actual, expected)
        for k in expected:
            _assert_same(actual[k], expected[k])
    else:
        assert actual == expected


def _feed(decoder: Decoder, message: Message) -> Packet | None:
    if isinstance(message, bytes):
        return decoder.receive_binary(message)
    return decoder.receive_text(message)


def _select(*directions: str, errors: bool | None = None) -> list[Any]:
    return [
        pytest.param(c, id=c["name"])
        for c in VECTORS
        if c["direction"] in directions and (errors is None or ("error" in c) == errors)
    ]


def _plain_data(packet: Packet) -> Any:
    """The packet's data as plain Python, as on the wire: EVENT/ACK arguments arrive as msgspec.Raw,
    and an event's name, decoded once by the decoder, is ``packet.event``."""
    if packet.type in (PacketType.EVENT, PacketType.ACK):
        assert isinstance(packet.data, list)
        assert all(isinstance(arg, msgspec.Raw) for arg in packet.data)
        data = [msgspec.json.decode(arg) for arg in packet.data]
    else:
        data = packet.data
    if packet.type in (PacketType.EVENT, PacketType.BINARY_EVENT):
        assert isinstance(packet.event, str)
        return [packet.event, *data]
    assert packet.event == ""
    return data


# -- the vector file itself --------------------------------------------------------------------


def test_vectors_are_well_formed() -> None:
    names = [c["name"] for c in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    for c in VECTORS:
        assert c["direction"] in ("decode", "encode", "both"), c["name"]
        assert ("packet" in c) != ("error" in c), c["name"]
        for m in c["messages"]:
            assert list(m) in (["text"], ["base64"]), c["name"]
        if "error" in c:
            assert c["direction"] == "decode" and c["error"] in ERRORS, c["name"]
        else:
            assert set(c["packet"]) == {"type", "namespace", "id", "data"}, c["name"]
            assert c["packet"]["type"] in PacketType.__members__, c["name"]
    encoded = {c["packet"]["type"] for c in VECTORS if c["direction"] in ("encode", "both")}
    assert encoded == set(PacketType.__members__)
    decoded = {c["packet"]["type"] for c in VECTORS if c["direction"] in ("decode", "both") and "packet" in c}
    assert decoded == set(PacketType.__members__) - {"CONNECT_ERROR"}


def test_reserved_event_names() -> None:
    assert frozenset(RESERVED_EVENTS) == {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    }


# -- decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _select("decode", "both", errors=False))
def test_decode_vector(case: dict[str, Any]) -> None:
    decoder = Decoder()
    *head, last = _messages(case)
    for message in head:  # a binary packet's header and all but its last attachment
        assert _feed(decoder, message) is None
    packet = _feed(decoder, last)
    assert packet is not None
    expected = case["packet"]
    assert packet.type is PacketType[expected["type"]]
    assert packet.namespace == expected["namespace"]
    _assert_same(packet.id, expected["id"])
    _assert_same(_plain_data(packet), _from_json(expected["data"]))
    if "raw" in case:  # the arguments after the event name, byte for byte
        assert [bytes(arg).decode("utf-8") for arg in packet.data] == case["raw"][1:]
    # The decoder is ready for the next packet.
    assert decoder.receive_text('2["next"]') is not None


@pytest.mark.parametrize("case", _select("decode", errors=True))
def test_decode_error_vector(case: dict[str, Any]) -> None:
    decoder = Decoder()
    *head, last = _messages(case)
    for message in head:  # the messages before the faulty one are accepted
        _feed(decoder, message)
    with pytest.raises(ERRORS[case["error"]]):
        _feed(decoder, last)


# -- encode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _select("encode", "both"))
def test_encode_vector(case: dict[str, Any]) -> None:
    p = case["packet"]
    ptype = PacketType[p["type"]]
    data = _from_json(p["data"])
    if ptype in BINARY_TYPES:
        base = PacketType.EVENT if ptype is PacketType.BINARY_EVENT else PacketType.ACK
        out: list[Message] = encode_binary_packet(base, p["namespace"], data, p["id"])
    else:
        out = [encode_packet(ptype, p["namespace"], data, p["id"])]
    assert out == _messages(case)
    assert [type(m) for m in out] == [type(m) for m in _messages(case)]


def test_encode_forwards_raw_arguments_byte_for_byte() -> None:
    packet = Decoder().receive_text('2["a" , {"b": 1,"c" : [1, 2]}]')
    assert packet is not None
    encoded = encode_packet(PacketType.EVENT, "/chat", [packet.event, *packet.data], 4)
    assert encoded == '2/chat,4["a",{"b": 1,"c" : [1, 2]}]'


def test_encode_binary_packet_accepts_bytearray_memoryview_and_tuples() -> None:
    out = encode_binary_packet(PacketType.EVENT, "/", ("e", bytearray(b"ab"), (memoryview(b"cd"),)))
    assert out == ['52-["e",{"_placeholder":true,"num":0},[{"_placeholder":true,"num":1}]]', b"ab", b"cd"]
    assert all(type(m) is bytes for m in out[1:])


def test_has_binary() -> None:
    assert not has_binary(["a", {"b": [1, None, "x"]}])
    assert has_binary(["a", {"b": [1, b"x"]}])
    assert has_binary(("a", bytearray(b"")))
    assert has_binary({"k": memoryview(b"m")})
    assert has_binary(b"")


# -- decoder state ------------------------------------------------------------------------------


def test_decoder_sequence_of_packets() -> None:
    decoder = Decoder()
    assert decoder.receive_text('51-["a",{"_placeholder":true,"num":0}]') is None
    first = decoder.receive_binary(b"1")
    assert first is not None and _plain_data(first) == ["a", b"1"]
    second = decoder.receive_text('2["b"]')
    assert second is not None and second.type is PacketType.EVENT
    assert decoder.receive_text('61-3[{"_placeholder":true,"num":0}]') is None
    third = decoder.receive_binary(b"3")
    assert third is not None and third.type is PacketType.BINARY_ACK and third.id == 3 and third.data == [b"3"]
    with pytest.raises(SocketIOProtocolError):
        decoder.receive_binary(b"extra")


def test_decoders_are_independent() -> None:
    a, b = Decoder(), Decoder()
    assert a.receive_text('51-["a",{"_placeholder":true,"num":0}]') is None
    assert b.receive_text('2["b"]') is not None
    with pytest.raises(SocketIOProtocolError):
        b.receive_binary(b"x")
    assert a.receive_binary(b"x") is not None


# -- hostile input ------------------------------------------------------------------------------

_DEEP = 100_000


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(["2" + "[" * _DEEP + "]" * _DEEP], id="event-array-100000-deep"),
        pytest.param(['2["a",' + "[" * 2000 + "]" * 2000 + "]"], id="event-argument-2000-deep"),
        pytest.param(["3" + "1" + "[" * 2000 + "]" * 2000], id="ack-argument-2000-deep"),
        pytest.param(["0" + '{"a":' * 2000 + "1" + "}" * 2000], id="connect-auth-2000-deep"),
        pytest.param(['51-["a",' + "[" * 2000 + "]" * 2000 + "]", b"x"], id="binary-header-2000-deep"),
        pytest.param(['51-["a",' + "[" * 900 + "]" * 900 + "]", b"x"], id="binary-fill-900-deep"),
        pytest.param(['51-["a",' + '{"k":' * 900 + "1" + "}" * 900 + "]", b"x"], id="binary-fill-900-deep-objects"),
    ],
)
def test_deeply_nested_json_is_a_protocol_error(messages: list[Message]) -> None:
    """A few kB of brackets must not get past the codec as RecursionError: either the packet is
    accepted or it is refused with SocketIOProtocolError."""
    decoder = Decoder()
    try:
        for message in messages:
            _feed(decoder, message)
    except SocketIOProtocolError:
        pass


_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_KEYS = st.text(max_size=6).filter(lambda k: k != "_placeholder")
_JSON = st.recursive(
    _JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12
)


@st.composite
def _packet_texts(draw: st.DrawFn) -> str:
    """Text that often gets far into the decoder: a plausible header, then JSON or junk."""
    ptype = draw(st.sampled_from([*"0123456", "7", "", "x", "-"]))
    if ptype in ("5", "6") or draw(st.integers(0, 9)) == 0:
        attachments = draw(st.sampled_from(["", "1-", "2-", "0-", "65-", "64-", "-", "a-", "999-"]))
    else:
        attachments = ""
    namespace = draw(st.sampled_from(["", "/", "/admin,", "/admin", "/a?x=1,", "/a?b", "/,", "//,"]))
    ack = draw(st.sampled_from(["", "0", "12", "9" * 15, "9" * 16, "-1"]))
    body = draw(
        st.one_of(
            _JSON.map(lambda v: json.dumps(v, separators=(",", ":"))),
            st.lists(_JSON, max_size=3).map(lambda v: json.dumps(["e", *v])),
            st.just('["e",{"_placeholder":true,"num":0}]'),
            st.builds(lambda n: f'["e",{{"_placeholder":true,"num":{n}}}]', st.integers(-2, 3)),
            st.text(max_size=12),
        )
    )
    cut = draw(st.integers(min_value=0, max_value=3))
    text = ptype + attachments + namespace + ack + body
    return text[: len(text) - cut] if draw(st.booleans()) else text


_MESSAGES = st.lists(st.one_of(st.text(max_size=30), _packet_texts(), st.binary(max_size=8)), min_size=1, max_size=6)


@settings(max_examples=1000)
@given(st.text())
def test_receive_text_arbitrary_text(text: str) -> None:
    try:
        packet = Decoder().receive_text(text)
    except SocketIOProtocolError:
        return
    assert packet is None or isinstance(packet, Packet)


@settings(max_examples=1000)
@given(_MESSAGES)
def test_decoder_arbitrary_message_sequences(messages: list[Message]) -> None:
    """Whatever a client sends, one message after another: packets, None, or SocketIOProtocolError."""
    decoder = Decoder()
    for message in messages:
        try:
            packet = _feed(decoder, message)
        except SocketIOProtocolError:
            return  # the connection closes here
        if packet is not None:
            assert isinstance(packet, Packet)
            assert isinstance(packet.type, PacketType)
            assert packet.type is not PacketType.CONNECT_ERROR
            assert isinstance(packet.namespace, str) and packet.namespace.startswith("/")
            assert len(packet.namespace) <= MAX_NAMESPACE_LENGTH
            assert packet.id is None or 0 <= packet.id < 10**MAX_ACK_ID_DIGITS


_NAMESPACES = st.one_of(
    st.just("/"),
    st.text(alphabet=st.characters(exclude_characters=",?{[\x1e", exclude_categories=("Cs",)), max_size=20).map(
        lambda s: "/" + s
    ),
)
_EVENT_NAMES = st.text(max_size=10).filter(lambda s: s not in RESERVED_EVENTS)
_ACK_IDS = st.none() | st.integers(min_value=0, max_value=10**MAX_ACK_ID_DIGITS - 1)


@settings(max_examples=300)
@given(_NAMESPACES, _EVENT_NAMES, st.lists(_JSON, max_size=4), _ACK_IDS)
def test_event_round_trip(namespace: str, name: str, args: list[Any], ack_id: int | None) -> None:
    text = encode_packet(PacketType.EVENT, namespace, [name, *args], ack_id)
    packet = Decoder().receive_text(text)
    assert packet is not None
    assert (packet.type, packet.namespace, packet.id) == (PacketType.EVENT, namespace, ack_id)
    assert _plain_data(packet) == [name, *args]


@settings(max_examples=300)
@given(_NAMESPACES, st.lists(_JSON, max_size=4), st.integers(min_value=0, max_value=10**MAX_ACK_ID_DIGITS - 1))
def test_ack_round_trip(namespace: str, args: list[Any], ack_id: int) -> None:
    packet = Decoder().receive_text(encode_packet(PacketType.ACK, namespace, args, ack_id))
    assert packet is not None
    assert (packet.type, packet.namespace, packet.id) == (PacketType.ACK, namespace, ack_id)
    assert _plain_data(packet) == args


_WITH_BYTES = st.recursive(
    _JSON_LEAVES | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
).filter(has_binary)


@settings(max_examples=300)
@given(_NAMESPACES, st.booleans(), _EVENT_NAMES, _WITH_BYTES, _ACK_IDS)
def test_binary_round_trip(namespace: str, event: bool, name: str, payload: Any, ack_id: int | None) -> None:
    if event:
        ptype, data = PacketType.EVENT, [name, payload]
    else:
        ptype, data, ack_id = PacketType.ACK, [payload], ack_id or 0
    messages = encode_binary_packet(ptype, namespace, data, ack_id)
    if len(messages) - 1 > MAX_ATTACHMENTS:
        return
    decoder = Decoder()
    results = [_feed(decoder, m) for m in messages]
    assert results[:-1] == [None] * (len(messages) - 1)
    packet = results[-1]
    assert packet is not None
    expected_type = PacketType.BINARY_EVENT if event else PacketType.BINARY_ACK
    assert (packet.type, packet.namespace, packet.id) == (expected_type, namespace, ack_id)
    assert _plain_data(packet) == data


@settings(max_examples=300)
@given(_NAMESPACES, st.none() | st.dictionaries(_KEYS, _JSON, max_size=4))
def test_connect_round_trip(namespace: str, auth: dict[str, Any] | None) -> None:
    packet = Decoder().receive_text(encode_packet(PacketType.CONNECT, namespace, auth))
    assert packet is not None
    assert (packet.type, packet.namespace, packet.id, packet.data) == (PacketType.CONNECT, namespace, None, auth)
