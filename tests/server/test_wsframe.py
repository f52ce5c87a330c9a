"""Frame conformance (RFC 6455, server side), run against both codecs behind the seam: our
FrameCodec and wsproto. Bytes in, events or the close code out; and the exact bytes we send."""

from __future__ import annotations

import os

import pytest

from callbox.server.wsframe import BINARY, CLOSE, CODECS, PING, TEXT, WSCodec, WSEvent, WSProtocolError

MAX = 100_000


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame (masked, as clients must)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, (0x80 if masked else 0) | n))
    elif n < 1 << 16:
        head = bytes((b0, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, (0x80 if masked else 0) | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> WSCodec:
    return CODECS[request.param](MAX)  # type: ignore[no-any-return]


def feed_all(codec: WSCodec, data: bytes, step: int | None = None) -> list[WSEvent]:
    if step is None:
        return codec.feed(data)
    events: list[WSEvent] = []
    for i in range(0, len(data), step):
        events.extend(codec.feed(data[i:i + step]))
    return events


def refused(codec: WSCodec, data: bytes) -> int:
    with pytest.raises(WSProtocolError) as err:
        for _ in range(2):  # some codecs answer on the next read
            codec.feed(data)
            data = b""
    return err.value.code


# -- what arrives -------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 1, 3])
def test_messages_whole_and_byte_by_byte(codec: WSCodec, step: int | None) -> None:
    data = (frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff") + frame(TEXT, b"")
            + frame(TEXT, b"x" * 200) + frame(BINARY, b"y" * 70_000))
    assert feed_all(codec, data, step) == [
        (TEXT, "héllo"), (BINARY, b"\x00\xff"), (TEXT, ""), (TEXT, "x" * 200), (BINARY, b"y" * 70_000)]


def test_fragmented_message_with_a_ping_between(codec: WSCodec) -> None:
    data = (frame(TEXT, b"ab", fin=False) + frame(PING, b"are you there") + frame(0, b"c", fin=False)
            + frame(0, "dé".encode()))
    assert codec.feed(data) == [(PING, b"are you there"), (TEXT, "abcdé")]


def test_utf8_split_across_fragments_is_fine(codec: WSCodec) -> None:
    raw = "é".encode()
    assert codec.feed(frame(TEXT, raw[:1], fin=False) + frame(0, raw[1:])) == [(TEXT, "é")]


def test_pongs_are_ignored(codec: WSCodec) -> None:
    assert codec.feed(frame(10, b"late pong") + frame(TEXT, b"a")) == [(TEXT, "a")]


@pytest.mark.parametrize(("payload", "code"), [(b"", 1005), (close_payload(1000), 1000),
                                               (close_payload(1001, b"bye"), 1001), (close_payload(4000), 4000)])
def test_close_is_reported_with_its_code(codec: WSCodec, payload: bytes, code: int) -> None:
    events = codec.feed(frame(CLOSE, payload))
    assert events == [(CLOSE, code)]


# -- what is refused, with which close code -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("unmasked client frame", frame(TEXT, b"hi", masked=False), 1002),
        ("reserved bit set", frame(TEXT, b"hi", rsv=0x40), 1002),
        ("unknown data opcode", frame(3, b"hi"), 1002),
        ("unknown control opcode", frame(11, b""), 1002),
        ("fragmented ping", frame(PING, b"x", fin=False), 1002),
        ("control frame over 125 bytes", frame(PING, b"x" * 126), 1002),
        ("continuation with nothing to continue", frame(0, b"x"), 1002),
        ("new message inside a fragmented one", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
        ("invalid UTF-8 text", frame(TEXT, b"\xff\xfe"), 1007),
        ("invalid UTF-8 across fragments", frame(TEXT, b"\xe2\x82", fin=False) + frame(0, b"x"), 1007),
        ("close code 1005 on the wire", frame(CLOSE, close_payload(1005)), 1002),
        ("close code 999", frame(CLOSE, close_payload(999)), 1002),
        ("close code 5000", frame(CLOSE, close_payload(5000)), 1002),
        ("one-byte close payload", frame(CLOSE, b"\x03"), 1002),
        ("message over max_payload", frame(BINARY, b"z" * (MAX + 1)), 1009),
        ("fragments over max_payload", frame(BINARY, b"z" * 60_000, fin=False) + frame(0, b"z" * 60_000), 1009),
    ],
)
def test_violations_get_their_close_code(codec: WSCodec, name: str, data: bytes, code: int) -> None:
    assert refused(codec, data) == code, name


# -- what we send -------------------------------------------------------------------------------


def test_outgoing_frames_are_exact(codec: WSCodec) -> None:
    assert codec.message("hi") == b"\x81\x02hi"
    assert codec.message(b"\x01\x02") == b"\x82\x02\x01\x02"
    assert codec.message("x" * 200) == b"\x81\x7e\x00\xc8" + b"x" * 200
    assert codec.message(b"y" * 70_000) == b"\x82\x7f" + (70_000).to_bytes(8, "big") + b"y" * 70_000
    assert codec.message("é") == b"\x81\x02" + "é".encode()
    assert codec.pong(b"p") == b"\x8a\x01p"
    assert codec.open
    assert codec.close(1000) == b"\x88\x02\x03\xe8"
    assert not codec.open
    assert codec.close(1000) == b""  # only one close frame, ever


def test_a_ping_just_before_a_close_is_answered_safely(codec: WSCodec) -> None:
    # Found by atheris: wsproto refused to send the pong once it had read the close behind the ping.
    events = codec.feed(frame(PING, b"") + frame(CLOSE, close_payload(1000)))
    assert events == [(PING, b""), (CLOSE, 1000)]
    codec.pong(b"")
    assert codec.close(1000) == b"\x88\x02\x03\xe8"


def test_our_close_answers_theirs(codec: WSCodec) -> None:
    assert codec.feed(frame(CLOSE, close_payload(1001))) == [(CLOSE, 1001)]
    assert codec.close(1001) == b"\x88\x02\x03\xe9"
    assert not codec.open
