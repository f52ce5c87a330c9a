"""WebSocket framing (RFC 6455, server side) behind one small seam, with two codecs.

The shell only needs: feed the bytes read, get whole messages, pings and a close back; turn
outgoing messages, pongs and a close into bytes. :class:`FrameCodec` does that in a few dozen lines
of straight-line Python (unmasking is one big-integer XOR); :class:`WsprotoCodec` does it with
wsproto's ``Connection``. The frame conformance tests (tests/server/test_wsframe.py) run against both;
``--ws-codec`` chooses (bench/README.md has the figures that made FrameCodec the default).

Violations raise :class:`WSProtocolError` with the close code to answer (1002 protocol error,
1007 invalid UTF-8, 1009 too big); a client's close is returned as a ``CLOSE`` event.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from wsproto.connection import Connection

__all__ = [
    "TEXT", "BINARY", "PING", "CLOSE", "WSEvent", "WSCodec", "WSProtocolError", "FrameCodec", "WsprotoCodec", "CODECS",
    "accept_token",
]

TEXT: Final = 1
BINARY: Final = 2
CLOSE: Final = 8
PING: Final = 9
_PONG: Final = 10
_CONT: Final = 0

# (kind, payload): TEXT str, BINARY bytes, PING bytes, CLOSE the close code (int).
WSEvent = tuple[int, str | bytes | int]

PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009
NORMAL: Final = 1000
NO_STATUS: Final = 1005  # "no code given": never sent on the wire


class WSProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class WSCodec(Protocol):
    def feed(self, data: bytes) -> list[WSEvent]:
        """The client's bytes in; whole messages, pings and a close out, in order."""
        ...

    def message(self, data: str | bytes) -> bytes:
        """A text (str) or binary (bytes) message as one unmasked frame."""
        ...

    def pong(self, payload: bytes) -> bytes: ...

    def close(self, code: int = NORMAL) -> bytes:
        """Our close frame; b"" if one was sent already."""
        ...

    @property
    def open(self) -> bool:
        """False once a close frame went either way."""
        ...


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4: codes a peer may send; 1004-1006 and 1015 are reserved, 1016-2999 unassigned.
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


_SHORT, _MEDIUM, _LONG = struct.Struct("!BB").pack, struct.Struct("!BBH").pack, struct.Struct("!BBQ").pack


def _header(opcode: int, length: int) -> bytes:
    # struct: 57 ns for a 2-byte length, against 204 for bytes(...) + to_bytes
    if length < 126:
        return _SHORT(0x80 | opcode, length)
    if length < 1 << 16:
        return _MEDIUM(0x80 | opcode, 126, length)
    return _LONG(0x80 | opcode, 127, length)


class FrameCodec:
    """RFC 6455 server-side framing. Client frames must be masked; no extensions are accepted, so
    any RSV bit is an error."""

    __slots__ = ("_buf", "_parts", "_size", "_opcode", "_open", "max_message")

    def __init__(self, max_message: int, trailing: bytes = b"") -> None:
        self.max_message = max_message
        self._buf = trailing
        self._parts: list[bytes] = []  # fragments of the message being received
        self._size = 0
        self._opcode = 0  # TEXT or BINARY while a fragmented message is open
        self._open = True

    @property
    def open(self) -> bool:
        return self._open

    def feed(self, data: bytes) -> list[WSEvent]:
        buf = self._buf + data if self._buf else data
        events: list[WSEvent] = []
        pos, end = 0, len(buf)
        while end - pos >= 2 and self._open:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 6
            if length == 126:
                head = 8
                if end - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif length == 127:
                head = 14
                if end - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if length >> 63:
                    raise WSProtocolError(PROTOCOL_ERROR, "frame length has its top bit set")
            if b0 & 0x70:
                raise WSProtocolError(PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise WSProtocolError(PROTOCOL_ERROR, "client frames must be masked")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 8:
                if not fin or length > 125:
                    raise WSProtocolError(PROTOCOL_ERROR, "control frames are short and never fragmented")
            elif self._size + length > self.max_message:
                raise WSProtocolError(MESSAGE_TOO_BIG, "message larger than max_payload")
            if end - pos < head + length:
                break
            mask = buf[pos + head - 4:pos + head]
            start = pos + head
            pos = start + length
            if length:
                payload = (
                    int.from_bytes(buf[start:pos], "little")
                    ^ int.from_bytes((mask * ((length >> 2) + 1))[:length], "little")
                ).to_bytes(length, "little")
            else:
                payload = b""
            if opcode == TEXT or opcode == BINARY:
                if self._opcode:
                    raise WSProtocolError(PROTOCOL_ERROR, "new message inside a fragmented one")
                if fin:
                    events.append((opcode, _text(payload) if opcode == TEXT else payload))
                else:
                    self._opcode, self._parts, self._size = opcode, [payload], length
            elif opcode == _CONT:
                if not self._opcode:
                    raise WSProtocolError(PROTOCOL_ERROR, "continuation with no message to continue")
                self._parts.append(payload)
                self._size += length
                if fin:
                    whole = b"".join(self._parts)
                    events.append((self._opcode, _text(whole) if self._opcode == TEXT else whole))
                    self._opcode, self._parts, self._size = 0, [], 0
            elif opcode == PING:
                events.append((PING, payload))
            elif opcode == _PONG:
                pass
            elif opcode == CLOSE:
                events.append((CLOSE, _close_code(payload)))
                break  # nothing after a close frame counts
            else:
                raise WSProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._buf = buf[pos:] if pos < end else b""
        return events

    def message(self, data: str | bytes) -> bytes:
        if isinstance(data, str):
            raw = data.encode("utf-8")
            return _header(TEXT, len(raw)) + raw
        return _header(BINARY, len(data)) + data

    def pong(self, payload: bytes) -> bytes:
        return _header(_PONG, len(payload)) + payload

    def close(self, code: int = NORMAL) -> bytes:
        if not self._open:
            return b""
        self._open = False
        if code == NO_STATUS:
            return _header(CLOSE, 0)
        return _header(CLOSE, 2) + code.to_bytes(2, "big")


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WSProtocolError(INVALID_DATA, "text message is not valid UTF-8") from None


def _close_code(payload: bytes) -> int:
    if not payload:
        return NO_STATUS
    if len(payload) == 1:
        raise WSProtocolError(PROTOCOL_ERROR, "close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise WSProtocolError(PROTOCOL_ERROR, f"invalid close code {code}")
    _text(payload[2:])  # the reason must be UTF-8 too
    return code


class WsprotoCodec:
    """The same seam over wsproto's frame-level ``Connection`` (imported only when chosen)."""

    __slots__ = ("_ws", "_parts", "_size", "max_message")

    def __init__(self, max_message: int, trailing: bytes = b"") -> None:
        from wsproto.connection import Connection, ConnectionType

        self._ws: Connection = Connection(ConnectionType.SERVER, trailing_data=trailing)
        self._parts: list[str | bytes] = []
        self._size = 0
        self.max_message = max_message

    @property
    def open(self) -> bool:
        from wsproto.connection import ConnectionState

        return self._ws.state is ConnectionState.OPEN

    def feed(self, data: bytes) -> list[WSEvent]:
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection, Message, Ping, TextMessage

        self._ws.receive_data(data)
        events: list[WSEvent] = []
        for event in self._ws.events():
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > self.max_message:
                    raise WSProtocolError(MESSAGE_TOO_BIG, "message larger than max_payload")
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    if isinstance(event, TextMessage):
                        events.append((TEXT, "".join(p for p in parts if isinstance(p, str))))
                    else:
                        events.append((BINARY, b"".join(p for p in parts if isinstance(p, bytes))))
            elif isinstance(event, Ping):
                events.append((PING, bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.OPEN:
                    # A violation wsproto found comes as a close event while the connection is
                    # still open (the peer's own close moves it to REMOTE_CLOSING).
                    raise WSProtocolError(int(event.code), event.reason or "protocol error")
                events.append((CLOSE, int(event.code)))
                break
        return events

    def message(self, data: str | bytes) -> bytes:
        from wsproto.events import BytesMessage, TextMessage

        return self._ws.send(TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data))

    def pong(self, payload: bytes) -> bytes:
        from wsproto.connection import ConnectionState
        from wsproto.events import Ping

        if self._ws.state is not ConnectionState.OPEN:
            return b""  # a ping that came just before the peer's close: the close answers it
        return self._ws.send(Ping(payload=payload).response())

    def close(self, code: int = NORMAL) -> bytes:
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        return self._ws.send(CloseConnection(code=code))


def accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


CODECS: Final[dict[str, Callable[[int, bytes], WSCodec]]] = {"callbox": FrameCodec, "wsproto": WsprotoCodec}
