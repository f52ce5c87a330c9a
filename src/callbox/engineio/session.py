"""The Engine.IO v4 session state machine, sans-IO.

Theory of operation
-------------------
A session is made by a handshake, over long-polling or directly over WebSocket. It holds the
heartbeat clock, the outbox of encoded packets waiting for a transport, and which transport
carries it. The caller (the Trio shell) feeds it what arrived and the current time, asks it for
its next deadline, and takes the bytes it should write. It never reads a clock or does I/O.

States and the only moves between them (``_TRANSITIONS``)::

    POLLING  --ws attach-->  UPGRADING  --"5" on the ws-->  WEBSOCKET
    UPGRADING --ws gone-->  POLLING
    POLLING / UPGRADING / WEBSOCKET  --close()-->  CLOSING  --close packet delivered-->  CLOSED
    any open state  --peer closed, transport lost, timeout, protocol error-->  CLOSED

Heartbeat (v4: the server pings): a ping is due ``ping_interval`` after the session was made and
after each pong; a session with no pong ``ping_timeout`` after the ping is closed. A fresh session
that never answers is therefore gone ``ping_interval + ping_timeout`` after its handshake.

Outbox items are fully encoded: ``str`` is a text packet (type digit included), ``bytes`` is a
binary message. Polling turns bytes into ``b<base64>``; WebSocket sends them as binary frames.
"""

from __future__ import annotations

import enum
import math

import msgspec

from .packet import (
    RECORD_SEPARATOR,
    EngineIOProtocolError,
    Packet,
    PacketType,
    decode_payload,
    decode_text_packet,
    encode_polling_packet,
)

__all__ = [
    "CloseReason",
    "EngineSession",
    "Handshake",
    "IllegalTransition",
    "PollConflict",
    "SessionState",
    "TransportMismatch",
]

# How long a session closed by the server waits for its close packet to be fetched by a poll (or
# written to its WebSocket) before it is dropped anyway. A polling client polls again at once, so
# a couple of seconds covers a slow link; longer only keeps dead sessions around.
CLOSE_FLUSH_TIMEOUT = 3.0
# An upgrade that has not finished (probe answered, then "5") within this is abandoned: the
# session stays on polling and the probing WebSocket is closed. engine.io's upgradeTimeout.
UPGRADE_TIMEOUT = 10.0

_PING = "2"
_CLOSE = "1"
_NOOP = "6"
_PROBE_ANSWER = "3probe"


def _wire_size(item: str | bytes) -> int:
    """Bytes an outbox item takes on the wire (str.isascii is O(1) for ASCII strings)."""
    if isinstance(item, bytes) or item.isascii():
        return len(item)
    return len(item.encode("utf-8"))


class SessionState(enum.Enum):
    POLLING = "polling"
    UPGRADING = "upgrading"
    WEBSOCKET = "websocket"
    CLOSING = "closing"
    CLOSED = "closed"


_S = SessionState
_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.POLLING: frozenset({_S.UPGRADING, _S.CLOSING, _S.CLOSED}),
    _S.UPGRADING: frozenset({_S.POLLING, _S.WEBSOCKET, _S.CLOSING, _S.CLOSED}),
    _S.WEBSOCKET: frozenset({_S.CLOSING, _S.CLOSED}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """Our own code asked the session for a move its state machine does not allow."""


class CloseReason(enum.Enum):
    """Why a session ended; the Socket.IO layer passes these on as disconnect reasons."""

    TRANSPORT_CLOSE = "transport close"  # the client closed, or its connection went away
    TRANSPORT_ERROR = "transport error"  # the client broke the transport's rules
    PING_TIMEOUT = "ping timeout"
    PARSE_ERROR = "parse error"  # a packet that is not Engine.IO / Socket.IO
    OUTBOX_FULL = "outbox full"  # the client does not read fast enough
    RATE_LIMITED = "rate limited"  # the client kept sending far past its rate limit
    FORCED_CLOSE = "forced close"  # the application closed it
    SERVER_SHUTDOWN = "server shutting down"


class Handshake(msgspec.Struct, frozen=True):
    """The open packet's data: exactly these five keys, times in ms, size in bytes."""

    sid: str
    upgrades: list[str]
    pingInterval: int
    pingTimeout: int
    maxPayload: int


_handshake_encoder = msgspec.json.Encoder()


class TransportMismatch(EngineIOProtocolError):
    """A request for a transport this session is not on (e.g. a poll after the upgrade). The
    request is refused; the session is left alone (a stale or forged request must not end it)."""


class PollConflict(Exception):
    """A second GET arrived while one was pending: the session closes."""


class EngineSession:
    """One Engine.IO session. All times are seconds on the caller's monotonic clock."""

    __slots__ = (
        "sid",
        "state",
        "close_reason",
        "ping_interval",
        "ping_timeout",
        "max_outbox_bytes",
        "_outbox",
        "_outbox_bytes",
        "_ping_at",
        "_pong_by",
        "_close_by",
        "_poll_pending",
        "_probed",
        "_noop_sent",
        "_upgrade_by",
        "event_rate",
        "event_burst",
        "_tokens",
        "_tokens_at",
        "dropped",
    )

    def __init__(
        self,
        sid: str,
        *,
        websocket: bool,
        now: float,
        ping_interval: float,
        ping_timeout: float,
        max_outbox_bytes: int,
        event_rate: float = math.inf,
        event_burst: int = 1 << 30,
    ) -> None:
        self.sid = sid
        self.state = _S.WEBSOCKET if websocket else _S.POLLING
        self.close_reason: CloseReason | None = None
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_outbox_bytes = max_outbox_bytes
        self._outbox: list[str | bytes] = []
        self._outbox_bytes = 0
        self._ping_at: float = now + ping_interval
        self._pong_by: float | None = None
        self._close_by: float | None = None
        self._poll_pending = False
        self._probed = False
        self._noop_sent = False  # the GET pending at the probe was released with a noop
        self._upgrade_by: float | None = None
        # Rate limit: a token bucket of event_burst packets refilled at event_rate a second. A
        # packet with no token is dropped (counted in ``dropped`` for the caller to report); the
        # debt is kept, and a client event_burst packets in debt is closed.
        self.event_rate = event_rate
        self.event_burst = event_burst
        self._tokens = float(event_burst)
        self._tokens_at = now
        self.dropped = 0

    # -- state --------------------------------------------------------------------------------

    def _move(self, new: SessionState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"session {self.state.value} -> {new.value}")
        self.state = new

    @property
    def is_open(self) -> bool:
        """True until the session is closing or closed; only an open session takes messages."""
        state = self.state  # identity checks: cheaper than hashing the enum into a set
        return state is not _S.CLOSING and state is not _S.CLOSED

    def handshake_packet(self, *, upgrades: list[str], max_payload: int) -> str:
        data = Handshake(
            sid=self.sid,
            upgrades=upgrades,
            pingInterval=round(self.ping_interval * 1000),
            pingTimeout=round(self.ping_timeout * 1000),
            maxPayload=max_payload,
        )
        return "0" + _handshake_encoder.encode(data).decode("utf-8")

    # -- closing ------------------------------------------------------------------------------

    def close(self, reason: CloseReason, now: float) -> None:
        """Close from our side: the close packet goes after what is queued, then the session ends."""
        if not self.is_open:
            return
        self.close_reason = reason
        self._move(_S.CLOSING)
        self._outbox.append(_CLOSE)
        self._close_by = now + CLOSE_FLUSH_TIMEOUT

    def lost(self, reason: CloseReason) -> None:
        """The session ends at once: the peer left, broke the protocol, or timed out."""
        if self.state is _S.CLOSED:
            return
        if self.close_reason is None:
            self.close_reason = reason
        self._move(_S.CLOSED)
        self._outbox.clear()
        self._outbox_bytes = 0

    # -- heartbeat and deadlines --------------------------------------------------------------

    def next_deadline(self) -> float:
        if self.state is _S.CLOSED:
            return math.inf
        if self._close_by is not None:
            return self._close_by
        heartbeat = self._pong_by if self._pong_by is not None else self._ping_at
        return heartbeat if self._upgrade_by is None else min(heartbeat, self._upgrade_by)

    def dead_by(self) -> float:
        """When a client that stopped reading would be declared dead by the heartbeat: a write
        still stuck then has no reader to wait for."""
        return self._pong_by if self._pong_by is not None else self._ping_at + self.ping_timeout

    def handle_timeout(self, now: float) -> None:
        """Act on whatever deadline has passed: ping, declare the peer dead, or drop the session."""
        if self.state is _S.CLOSED:
            return
        if self._close_by is not None:
            if now >= self._close_by:
                self.lost(self.close_reason or CloseReason.FORCED_CLOSE)
            return
        if self._upgrade_by is not None and now >= self._upgrade_by:
            self.upgrade_failed()
        if self._pong_by is not None:
            if now >= self._pong_by:
                self.lost(CloseReason.PING_TIMEOUT)
            return
        if now >= self._ping_at:
            self._pong_by = now + self.ping_timeout
            self._enqueue(_PING, 1)

    def _pong(self, now: float) -> None:
        if self._pong_by is not None:  # an unsolicited pong changes nothing
            self._pong_by = None
            self._ping_at = now + self.ping_interval

    # -- outbox -------------------------------------------------------------------------------

    def _enqueue(self, item: str | bytes, size: int) -> None:
        self._outbox.append(item)
        self._outbox_bytes += size

    def send(self, data: str | bytes) -> bool:
        """Queue a message. False if the session is no longer open (nothing was queued).

        A client that lets more than ``max_outbox_bytes`` pile up is too slow to keep: the
        session is closed (the queued data with it) rather than let memory grow.
        """
        if not self.is_open:
            return False
        item = data if isinstance(data, bytes) else "4" + data
        size = _wire_size(item)
        if self._outbox_bytes + size > self.max_outbox_bytes and self._outbox:
            self.lost(CloseReason.OUTBOX_FULL)
            return False
        self._enqueue(item, size)
        return True

    @property
    def has_output(self) -> bool:
        return bool(self._outbox)

    def take_output(self) -> list[str | bytes]:
        """Everything queued, for one WebSocket write. A drained close packet ends the session."""
        out = self._outbox
        self._outbox = []
        self._outbox_bytes = 0
        if self.state is _S.CLOSING and out:
            self._move(_S.CLOSED)
        return out

    # -- receiving ----------------------------------------------------------------------------

    def _admit(self, now: float) -> bool:
        """Take a token for one packet from the client. False: drop the packet."""
        if self.event_rate == math.inf:
            return True
        tokens = self._tokens
        if now > self._tokens_at:
            tokens = min(float(self.event_burst), tokens + (now - self._tokens_at) * self.event_rate)
            self._tokens_at = now
        tokens -= 1.0
        self._tokens = tokens
        if tokens >= 0.0:
            return True
        self.dropped += 1
        if tokens <= -self.event_burst:
            self.close(CloseReason.RATE_LIMITED, now)
        return False

    def _receive_packet(self, packet: Packet, now: float, *, websocket: bool) -> str | bytes | None:
        ptype, data = packet
        if not self._admit(now):
            return None
        if ptype is PacketType.MESSAGE:
            return data if self.is_open else None
        if ptype is PacketType.PONG:
            if self.state is _S.UPGRADING and websocket:
                raise EngineIOProtocolError("pong on a WebSocket that is still probing")
            self._pong(now)
        elif ptype is PacketType.CLOSE:
            self.lost(CloseReason.TRANSPORT_CLOSE)
        elif ptype is PacketType.NOOP:
            pass
        else:
            raise EngineIOProtocolError(f"unexpected {ptype.name} packet from client")
        return None

    def receive_payload(self, body: bytes, now: float) -> list[str | bytes]:
        """A polling POST body. Returns the messages in it, in order."""
        if self.state not in (_S.POLLING, _S.UPGRADING):
            raise TransportMismatch("POST on a session that is not polling")
        messages = []
        for packet in decode_payload(body):
            msg = self._receive_packet(packet, now, websocket=False)
            if msg is not None:
                messages.append(msg)
        return messages

    def receive_ws_text(self, text: str, now: float) -> tuple[str | None, str | None]:
        """A WebSocket text frame. Returns (message or None, frame to answer directly or None)."""
        if self.state is _S.UPGRADING:
            return None, self._receive_upgrade_frame(text)
        if text[:1] == "4":  # the hot path: skip the general decoder for plain messages
            return (text[1:] if self.state is _S.WEBSOCKET and self._admit(now) else None), None
        msg = self._receive_packet(decode_text_packet(text), now, websocket=True)
        assert not isinstance(msg, bytes)
        return msg, None

    def receive_ws_binary(self, data: bytes, now: float) -> bytes | None:
        if self.state is _S.UPGRADING:
            raise EngineIOProtocolError("binary frame on a WebSocket that is still probing")
        return data if self.state is _S.WEBSOCKET and self._admit(now) else None

    # -- long-polling -------------------------------------------------------------------------

    def begin_poll(self, now: float) -> None:
        """A GET arrived. Two at once is a client bug: the session closes, the second gets 400."""
        if self.state not in (_S.POLLING, _S.UPGRADING, _S.CLOSING):
            raise TransportMismatch("GET on a session that is not polling")
        if self._poll_pending:
            if self.is_open:
                self.close_reason = CloseReason.TRANSPORT_ERROR
                self._move(_S.CLOSING)
                self._outbox = [_CLOSE]  # the first GET gets the close packet
                self._outbox_bytes = 1
                self._close_by = now + CLOSE_FLUSH_TIMEOUT
            raise PollConflict()
        self._poll_pending = True

    @property
    def poll_ready(self) -> bool:
        """True when a pending GET has something to return (or must be released)."""
        if self.state is _S.CLOSED:
            return True
        if self.state is _S.UPGRADING and self._probed and not self._noop_sent:
            return True
        return bool(self._outbox)

    def finish_poll(self) -> bytes:
        """The body for the pending GET: everything queued, or a noop to release it."""
        self._poll_pending = False
        if self.state is _S.UPGRADING and self._probed and not self._noop_sent:
            # Released once, so the client stops polling; later GETs get data as usual.
            self._noop_sent = True
            return _NOOP.encode()
        if self.state is _S.CLOSED:
            return _NOOP.encode()
        out = self.take_output()
        return RECORD_SEPARATOR.join(
            [x if isinstance(x, str) else encode_polling_packet((PacketType.MESSAGE, x)) for x in out]
        ).encode("utf-8")

    def abort_poll(self) -> None:
        """The client dropped its pending GET: it has gone."""
        self._poll_pending = False
        self.lost(CloseReason.TRANSPORT_CLOSE)

    # -- upgrade ------------------------------------------------------------------------------

    def begin_upgrade(self, now: float) -> None:
        """A WebSocket arrived for this polling session. Any other state refuses it."""
        if self.state is not _S.POLLING:
            raise EngineIOProtocolError(f"WebSocket for a session that is {self.state.value}")
        self._move(_S.UPGRADING)
        self._probed = False
        self._noop_sent = False
        self._upgrade_by = now + UPGRADE_TIMEOUT

    def _receive_upgrade_frame(self, text: str) -> str | None:
        if text == "2probe" and not self._probed:
            self._probed = True
            return _PROBE_ANSWER
        if text == "5" and self._probed:
            self._move(_S.WEBSOCKET)
            self._upgrade_by = None
            return None
        raise EngineIOProtocolError(f"unexpected frame during upgrade: {text[:16]!r}")

    def upgrade_failed(self) -> None:
        """The probing WebSocket went away, or took too long, before ``5``: stay on polling."""
        self._upgrade_by = None
        if self.state is _S.UPGRADING:
            self._move(_S.POLLING)
            self._probed = False
