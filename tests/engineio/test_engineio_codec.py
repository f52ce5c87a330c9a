"""Engine.IO v4 codec: the wire vectors in protocol/vectors/engineio.json, bytes in and bytes out, and
properties over arbitrary input (malformed input raises EngineIOProtocolError and nothing else)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _paths import PROTOCOL
from callbox.engineio import (
    EngineIOProtocolError,
    PacketType,
    decode_payload,
    decode_text_packet,
    encode_payload,
    encode_text_packet,
)

VECTORS_PATH = PROTOCOL / "vectors" / "engineio.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text("utf-8"))
ERRORS = {"EngineIOProtocolError": EngineIOProtocolError}

Packet = tuple[PacketType, str | bytes]


def _wire(case: dict[str, Any]) -> bytes:
    if "wire_base64" in case:
        return base64.b64decode(case["wire_base64"], validate=True)
    return case["wire"].encode("utf-8")


def _packets(case: dict[str, Any]) -> list[Packet]:
    out: list[Packet] = []
    for p in case["packets"]:
        data = base64.b64decode(p["data_base64"], validate=True) if "data_base64" in p else p["data"]
        out.append((PacketType[p["type"]], data))
    return out


def _select(*directions: str, errors: bool | None = None) -> list[Any]:
    return [
        pytest.param(c, id=c["name"])
        for c in VECTORS
        if c["direction"] in directions and (errors is None or ("error" in c) == errors)
    ]


def _assert_same_packets(actual: list[Packet], expected: list[Packet]) -> None:
    assert len(actual) == len(expected)
    for (atype, adata), (etype, edata) in zip(actual, expected, strict=True):
        assert atype is etype
        assert type(adata) is type(edata)  # a text "4..." must not come back as bytes, nor b"" as ""
        assert adata == edata


# -- the vector file itself --------------------------------------------------------------------


def test_vectors_are_well_formed() -> None:
    names = [c["name"] for c in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"
    for c in VECTORS:
        assert c["op"] in ("packet", "payload"), c["name"]
        assert c["direction"] in ("decode", "encode", "both"), c["name"]
        assert ("wire" in c) != ("wire_base64" in c), c["name"]
        assert ("packets" in c) != ("error" in c), c["name"]
        if "error" in c:
            assert c["direction"] == "decode" and c["error"] in ERRORS, c["name"]
        if c["op"] == "packet":
            assert "wire" in c, c["name"]
            assert "error" in c or len(c["packets"]) == 1, c["name"]
    # The brief's coverage: every packet type, decoded and encoded, both as a frame and in a payload.
    for op in ("packet", "payload"):
        seen = {p["type"] for c in VECTORS if c["op"] == op and c["direction"] == "both" for p in c["packets"]}
        assert seen == {t.name for t in PacketType}, op


# -- decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _select("decode", "both", errors=False))
def test_decode_vector(case: dict[str, Any]) -> None:
    if case["op"] == "packet":
        actual = [decode_text_packet(case["wire"])]
    else:
        actual = decode_payload(_wire(case))
    _assert_same_packets(actual, _packets(case))


@pytest.mark.parametrize("case", _select("decode", errors=True))
def test_decode_error_vector(case: dict[str, Any]) -> None:
    with pytest.raises(ERRORS[case["error"]]):
        if case["op"] == "packet":
            decode_text_packet(case["wire"])
        else:
            decode_payload(_wire(case))


@pytest.mark.parametrize(
    "case",
    [p for p in _select("decode", errors=True) if p.values[0]["op"] == "packet" and p.values[0]["wire"][:1] != "b"],
)
def test_packet_errors_are_payload_errors_too(case: dict[str, Any]) -> None:
    """A record that is not a valid packet spoils the whole payload it is in ('b' records aside: in a
    payload they are binary messages)."""
    with pytest.raises(EngineIOProtocolError):
        decode_payload(("4ok\x1e" + case["wire"]).encode("utf-8"))


# -- encode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _select("encode", "both"))
def test_encode_vector(case: dict[str, Any]) -> None:
    packets = _packets(case)
    if case["op"] == "packet":
        ((ptype, data),) = packets
        assert isinstance(data, str)
        assert encode_text_packet(ptype, data) == case["wire"]
    else:
        encoded = encode_payload(packets)
        assert isinstance(encoded, bytes)
        assert encoded == _wire(case)


def test_encode_text_packet_default_data() -> None:
    assert encode_text_packet(PacketType.PING) == "2"
    assert encode_text_packet(PacketType.NOOP) == "6"


# -- properties ---------------------------------------------------------------------------------

_TYPE_CHARS = st.sampled_from([*"0123456789b", "", "x", "\x1e"])
_B64_CHARS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-_é", max_size=12)
# A record that is often well-formed: a type character, then text or base64-ish data.
_RECORDS = st.one_of(
    st.builds(lambda t, d: t + d, _TYPE_CHARS, st.text(max_size=10)),
    st.builds(lambda d: "b" + d, _B64_CHARS),
    st.text(max_size=10),
)


def _check_decoded_payload(packets: list[Packet]) -> None:
    assert packets, "a payload decodes to at least one packet"
    for ptype, data in packets:
        assert isinstance(ptype, PacketType)
        assert isinstance(data, str | bytes)
        if isinstance(data, bytes):
            assert ptype is PacketType.MESSAGE


@settings(max_examples=500)
@given(st.text())
def test_decode_text_packet_arbitrary_text(text: str) -> None:
    try:
        ptype, data = decode_text_packet(text)
    except EngineIOProtocolError:
        assert text == "" or text[0] not in "0123456"  # a "b" record: its base64 was bad
        return
    if text[0] == "b":  # a binary message as base64 text (forceBase64)
        assert ptype is PacketType.MESSAGE and isinstance(data, bytes)
        assert len(data) == len(text[1:].rstrip("=")) * 3 // 4
        return
    assert text[0] in "0123456"
    assert ptype is PacketType(int(text[0]))
    assert data == text[1:]


@settings(max_examples=500)
@given(st.binary())
def test_decode_payload_arbitrary_bytes(body: bytes) -> None:
    try:
        packets = decode_payload(body)
    except EngineIOProtocolError:
        return
    _check_decoded_payload(packets)


@settings(max_examples=500)
@given(st.lists(_RECORDS, min_size=1, max_size=6), st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_decode_payload_structured_records(records: list[str], codec: str) -> None:
    try:
        body = "\x1e".join(records).encode(codec)
    except UnicodeEncodeError:
        return
    try:
        packets = decode_payload(body)
    except EngineIOProtocolError:
        return
    _check_decoded_payload(packets)


_TEXT_NO_RS = st.text().filter(lambda s: "\x1e" not in s)
_PACKETS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(list(PacketType)), _TEXT_NO_RS),
        st.tuples(st.just(PacketType.MESSAGE), st.binary()),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300)
@given(_PACKETS)
def test_payload_round_trip(packets: list[Packet]) -> None:
    body = encode_payload(packets)
    _assert_same_packets(decode_payload(body), packets)


@given(st.sampled_from(list(PacketType)), st.text())
def test_text_packet_round_trip(ptype: PacketType, data: str) -> None:
    assert decode_text_packet(encode_text_packet(ptype, data)) == (ptype, data)
