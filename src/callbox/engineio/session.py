"""The Engine.IO v4 session state machine, sans-IO.

Theory of operation
-------------------
A session is made by a handshake, over long-polling or directly over WebSocket. It holds the
heartbeat clock, the outbox of encoded packets waiting for a transport, and which transport
carries it. The caller (the Trio shell) feeds it what arrived and the current time, asks it for
its next deadline, and takes the bytes it should write. It never reads a clock or does I/O.

What a call changed that the shell must act on is said, not left to be guessed: each call may add
:class:`Effect` values, which the shell takes with :meth:`EngineSession.take_effects` and applies
in one place (wake the writer or a pending poll, abandon a write, adopt or drop a probing
WebSocket, count a dropped packet). :meth:`EngineSession.send` answers with a :class:`Sent` that
says why a message was not queued.

The session's states and every move between them are the rows of ``TRANSITIONS`` (state, input)
-> next state. An input with no row in the current state is a bug of ours and raises
:class:`IllegalTransition`; a move that changes nothing (closing a closed session) is a row too::

    POLLING --ws attached--> PROBING --"2probe"--> PROBED --"5"--> WEBSOCKET
    PROBING / PROBED --probe gone or upgrade timeout--> POLLING
    any open state --close()--> CLOSING --close packet taken for writing--> CLOSED
    any state --lost (peer closed, transport lost, timeout, protocol error, too slow)--> CLOSED

Heartbeat (v4: the server pings), its own two-state table ``HEARTBEAT``: WAITING for
``ping_interval`` after the session was made and after each pong, then a ping is queued and the
session is AWAITING_PONG; no pong ``ping_timeout`` after the ping and the session is lost. A fresh
session that never answers is therefore gone ``ping_interval + ping_timeout`` after its handshake.

Outbox items are fully encoded: ``str`` is a text packet (type digit included), ``bytes`` is a
binary message. Polling turns bytes into ``b<base64>``; WebSocket sends them as binary frames.
"""

from __future__ import annotations

import enum
import math
from typing import Final, NoReturn

import msgspec

from ..enums import TableEnum
from ..ratelimit import refill
from .packet import (
    RECORD_SEPARATOR,
    EngineIOProtocolError,
    Packet,
    PacketType,
    decode_payload,
    decode_text_packet,
    encode_base64_message,
    encode_polling_packet,
)

__all__ = [
    "CONNECTION_LOST",
    "Beat",
    "CloseReason",
    "Effect",
    "EngineSession",
    "HEARTBEAT",
    "Handshake",
    "Heartbeat",
    "IllegalTransition",
    "Input",
    "PollConflict",
    "Sent",
    "SessionState",
    "TRANSITIONS",
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


class SessionState(TableEnum):
    POLLING = "polling"
    PROBING = "probing"  # a WebSocket is attached for the upgrade; "2probe" not yet seen
    PROBED = "probed"  # "3probe" answered; waiting for "5"
    WEBSOCKET = "websocket"
    CLOSING = "closing"  # the close packet is queued behind what was already queued
    CLOSED = "closed"


class Input(TableEnum):
    """What can happen to a session (the columns of ``TRANSITIONS``)."""

    WS_ATTACHED = "a WebSocket arrived for the upgrade"
    PROBE = "the client sent 2probe on it"
    UPGRADE = "the client sent 5 on it"
    UPGRADE_ABANDONED = "the probing WebSocket went away or took too long"
    CLOSE = "we close it (the close packet follows what is queued)"
    CLOSE_TAKEN = "the close packet was taken for writing"
    LOST = "it ends at once"


_S, _I = SessionState, Input
_OPEN_STATES = (_S.POLLING, _S.PROBING, _S.PROBED, _S.WEBSOCKET)
TRANSITIONS: dict[tuple[SessionState, Input], SessionState] = {
    (_S.POLLING, _I.WS_ATTACHED): _S.PROBING,
    (_S.PROBING, _I.PROBE): _S.PROBED,
    (_S.PROBED, _I.UPGRADE): _S.WEBSOCKET,
    (_S.PROBING, _I.UPGRADE_ABANDONED): _S.POLLING,
    (_S.PROBED, _I.UPGRADE_ABANDONED): _S.POLLING,
    # The probe may be reported gone after the session closed or after it was adopted: no move.
    **{(s, _I.UPGRADE_ABANDONED): s for s in (_S.POLLING, _S.WEBSOCKET, _S.CLOSING, _S.CLOSED)},
    **{(s, _I.CLOSE): _S.CLOSING for s in _OPEN_STATES},
    (_S.CLOSING, _I.CLOSE): _S.CLOSING,  # closing twice keeps the first reason
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSING, _I.CLOSE_TAKEN): _S.CLOSED,
    **{(s, _I.LOST): _S.CLOSED for s in (*_OPEN_STATES, _S.CLOSING)},
    (_S.CLOSED, _I.LOST): _S.CLOSED,  # the first reason stays
}


class Heartbeat(TableEnum):
    WAITING = "waiting"  # a ping is due at the deadline
    AWAITING_PONG = "awaiting pong"  # the session is lost at the deadline


class Beat(TableEnum):
    """What can happen to the heartbeat (the columns of ``HEARTBEAT``)."""

    DEADLINE = "its deadline passed"
    PONG = "a pong came"


HEARTBEAT: dict[tuple[Heartbeat, Beat], Heartbeat] = {
    (Heartbeat.WAITING, Beat.DEADLINE): Heartbeat.AWAITING_PONG,  # a ping is queued
    (Heartbeat.WAITING, Beat.PONG): Heartbeat.WAITING,  # unsolicited: changes nothing
    (Heartbeat.AWAITING_PONG, Beat.PONG): Heartbeat.WAITING,  # next ping ping_interval from now
    # (AWAITING_PONG, "deadline") has no row: the session is lost instead.
}


class IllegalTransition(RuntimeError):
    """Our own code asked the session for a move its state machine does not allow."""


class CloseReason(enum.Enum):
    """Why a session ended; the Socket.IO layer passes these on as disconnect reasons."""

    CLIENT_CLOSE = "client close"  # the client said goodbye: a close packet, or a WebSocket close frame
    TRANSPORT_CLOSE = "transport close"  # the connection went away without a goodbye (EOF, reset)
    TRANSPORT_ERROR = "transport error"  # the transport failed: two polls at once, a bad POST, a handler
    PING_TIMEOUT = "ping timeout"
    PARSE_ERROR = "parse error"  # a packet that is not Engine.IO / Socket.IO
    OUTBOX_FULL = "outbox full"  # the client does not read fast enough
    RATE_LIMITED = "rate limited"  # the client kept sending far past its rate limit
    FORCED_CLOSE = "forced close"  # the application closed it
    SERVER_SHUTDOWN = "server shutting down"
    # The server drains in hand-over mode (several nodes): the client is closed without a Socket.IO
    # goodbye, so that it reconnects (to another node) and takes its session back there.
    HANDOVER = "server handover"
    RECOVERED_ELSEWHERE = "recovered elsewhere"  # its socket was taken back by a newer connection


# The connection went without the client saying goodbye: a network blip, a dead peer. The client
# may come back; everything else is a leave (the client's, or the server's decision).
# A "transport error" is one: two long-polls at once are what a client sends when its previous poll
# vanished with its connection (a cut the server has not noticed yet); a POST that breaks the limits
# or a handler's failure end the session the same way, and the call waits all the same.
CONNECTION_LOST: Final = frozenset(
    {CloseReason.TRANSPORT_CLOSE, CloseReason.TRANSPORT_ERROR, CloseReason.PING_TIMEOUT}
)


class Sent(enum.Enum):
    """What :meth:`EngineSession.send` did with a message."""

    QUEUED = "queued"
    NOT_OPEN = "not open"  # closing or closed: nothing queued, nothing else changed
    OUTBOX_FULL = "outbox full"  # the client is too slow: the session was lost (its outbox with it)


class Effect(enum.Enum):
    """What the shell must act on after a call into the session."""

    OUTPUT = "output queued"  # wake the WebSocket writer, or answer a pending poll
    LOST = "lost"  # ended at once: abandon any write in flight, wake everyone
    CLOSED = "closed"  # ended in order: its close packet was taken for writing
    UPGRADED = "upgraded"  # the probing WebSocket now carries the session
    UPGRADE_ABANDONED = "upgrade abandoned"  # close the probing WebSocket, if it is still there
    DROPPED = "dropped"  # the rate limit dropped one packet from the client


# The members the per-message code compares with, as module names (why: callbox/enums.py).
_WEBSOCKET, _CLOSING, _CLOSED = SessionState.WEBSOCKET, SessionState.CLOSING, SessionState.CLOSED
_OUTPUT, _QUEUED = Effect.OUTPUT, Sent.QUEUED


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
    """A second GET arrived while one was pending, or a second POST while one was being handled:
    the session closes."""


class EngineSession:
    """One Engine.IO session. All times are seconds on the caller's monotonic clock."""

    __slots__ = (
        "sid",
        "state",
        "close_reason",
        "ping_interval",
        "ping_timeout",
        "max_outbox_bytes",
        "heartbeat",
        "_heartbeat_at",
        "_outbox",
        "_outbox_bytes",
        "_effects",
        "_close_by",
        "_poll_pending",
        "_post_pending",
        "base64",
        "_noop_owed",
        "_upgrade_by",
        "event_rate",
        "event_burst",
        "_tokens",
        "_tokens_at",
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
        base64: bool = False,
    ) -> None:
        self.sid = sid
        # The client asked (b64=1) for binary messages as text, b + base64, on every transport.
        self.base64 = base64
        self.state = _S.WEBSOCKET if websocket else _S.POLLING
        self.close_reason: CloseReason | None = None
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_outbox_bytes = max_outbox_bytes
        self.heartbeat = Heartbeat.WAITING
        self._heartbeat_at = now + ping_interval
        self._outbox: list[str | bytes] = []
        self._outbox_bytes = 0
        self._effects: list[Effect] = []
        self._close_by: float | None = None
        self._poll_pending = False
        self._post_pending = False
        self._noop_owed = False  # the first GET after the probe is answered at once with a noop
        self._upgrade_by: float | None = None
        # Rate limit: a token bucket of event_burst packets refilled at event_rate a second. A
        # packet with no token is dropped (an Effect.DROPPED each); the debt is kept, and a client
        # event_burst packets in debt is closed.
        self.event_rate = event_rate
        self.event_burst = event_burst
        self._tokens = float(event_burst)
        self._tokens_at = now

    # -- state --------------------------------------------------------------------------------

    def _move(self, what: Input) -> SessionState:
        new = TRANSITIONS.get((self.state, what))
        if new is None:
            raise IllegalTransition(f"session {self.state.value}: {what.value}")
        old, self.state = self.state, new
        return old

    def _beat(self, what: Beat) -> None:
        new = HEARTBEAT.get((self.heartbeat, what))
        if new is None:
            raise IllegalTransition(f"heartbeat {self.heartbeat.value}: {what.value}")
        self.heartbeat = new

    @property
    def is_open(self) -> bool:
        """True until the session is closing or closed; only an open session takes messages."""
        state = self.state  # identity checks: cheaper than hashing the enum into a set
        return state is not _CLOSING and state is not _CLOSED

    def take_effects(self) -> list[Effect]:
        """What changed since the last call, in order, for the shell to act on."""
        effects, self._effects = self._effects, []
        return effects

    @property
    def has_effects(self) -> bool:
        return bool(self._effects)

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
        if self._move(_I.CLOSE) in _OPEN_STATES:
            self.close_reason = reason
            self._enqueue(_CLOSE, 1)
            self._close_by = now + CLOSE_FLUSH_TIMEOUT

    def lost(self, reason: CloseReason) -> None:
        """The session ends at once: the peer left, broke the protocol, timed out or is too slow."""
        if self._move(_I.LOST) is _S.CLOSED:
            return
        if self.close_reason is None:
            self.close_reason = reason
        self._outbox.clear()
        self._outbox_bytes = 0
        self._effects.append(Effect.LOST)

    def goodbye(self, now: float) -> None:
        """The client closed the session (a close packet, or a WebSocket close frame). A goodbye
        while our ping has waited half its timeout for a pong is a client giving up on a broken
        link (socket.io-client closes its transport on its own ping timeout, which falls when ours
        does): that is a lost connection, not a leave."""
        giving_up = self.heartbeat is Heartbeat.AWAITING_PONG and now >= self._heartbeat_at - self.ping_timeout / 2
        self.lost(CloseReason.TRANSPORT_CLOSE if giving_up else CloseReason.CLIENT_CLOSE)

    # -- heartbeat and deadlines --------------------------------------------------------------

    def next_deadline(self) -> float:
        if self.state is _S.CLOSED:
            return math.inf
        if self._close_by is not None:
            return self._close_by
        if self._upgrade_by is None:
            return self._heartbeat_at
        return min(self._heartbeat_at, self._upgrade_by)

    def dead_by(self) -> float:
        """When a client that stopped reading would be declared dead by the heartbeat: a write
        still stuck then has no reader to wait for."""
        if self.heartbeat is Heartbeat.AWAITING_PONG:
            return self._heartbeat_at
        return self._heartbeat_at + self.ping_timeout

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
        if now >= self._heartbeat_at:
            if self.heartbeat is Heartbeat.AWAITING_PONG:
                self.lost(CloseReason.PING_TIMEOUT)
                return
            self._beat(Beat.DEADLINE)
            self._heartbeat_at = now + self.ping_timeout
            self._enqueue(_PING, 1)

    def _pong(self, now: float) -> None:
        if self.heartbeat is Heartbeat.AWAITING_PONG:
            self._heartbeat_at = now + self.ping_interval
        self._beat(Beat.PONG)

    # -- outbox -------------------------------------------------------------------------------

    def _enqueue(self, item: str | bytes, size: int) -> None:
        if not self._outbox:
            self._effects.append(_OUTPUT)  # one wake-up per batch, not per message
        self._outbox.append(item)
        self._outbox_bytes += size

    def send(self, data: str | bytes) -> Sent:
        """Queue a message.

        A client that lets more than ``max_outbox_bytes`` pile up is too slow to keep: the
        session is lost (the queued data with it) rather than let memory grow.
        """
        if not self.is_open:
            return Sent.NOT_OPEN
        if isinstance(data, bytes):
            item: str | bytes = encode_base64_message(data) if self.base64 else data
        else:
            item = "4" + data
        size = _wire_size(item)
        if self._outbox_bytes + size > self.max_outbox_bytes and self._outbox:
            self.lost(CloseReason.OUTBOX_FULL)
            return Sent.OUTBOX_FULL
        self._enqueue(item, size)
        return _QUEUED

    @property
    def has_output(self) -> bool:
        return bool(self._outbox)

    def take_output(self) -> list[str | bytes]:
        """Everything queued, for one WebSocket write. A drained close packet ends the session."""
        out = self._outbox
        self._outbox = []
        self._outbox_bytes = 0
        if self.state is _S.CLOSING and out:
            self._move(_I.CLOSE_TAKEN)
            self._effects.append(Effect.CLOSED)
        return out

    # -- receiving ----------------------------------------------------------------------------

    def _admit(self, now: float) -> bool:
        """Take a token for one packet from the client. False: drop the packet."""
        if self.event_rate == math.inf:
            return True
        tokens = refill(self._tokens, self._tokens_at, now, self.event_burst, self.event_rate) - 1.0
        self._tokens_at = max(now, self._tokens_at)
        self._tokens = tokens
        if tokens >= 0.0:
            return True
        self._effects.append(Effect.DROPPED)
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
            if websocket and self.state in (_S.PROBING, _S.PROBED):
                raise EngineIOProtocolError("pong on a WebSocket that is still probing")
            self._pong(now)
        elif ptype is PacketType.CLOSE:
            self.goodbye(now)
        elif ptype is PacketType.NOOP:
            pass
        else:
            raise EngineIOProtocolError(f"unexpected {ptype.name} packet from client")
        return None

    def begin_post(self, now: float) -> None:
        """A POST arrived. One while another is being handled is a client bug (Engine.IO v4: the
        server answers 400 and closes the session), as for GETs."""
        if self.state not in (_S.POLLING, _S.PROBING, _S.PROBED):
            raise TransportMismatch("POST on a session that is not polling")
        if self._post_pending:
            self._conflict(now)
        self._post_pending = True

    def _conflict(self, now: float) -> NoReturn:
        """A second GET, or POST, while the first is being handled: the session closes (the first
        GET gets the close packet, and nothing that was queued before it)."""
        if self.is_open:
            self._outbox.clear()
            self._outbox_bytes = 0
            self.close(CloseReason.TRANSPORT_ERROR, now)
        raise PollConflict()

    def end_post(self) -> None:
        """The POST begun with :meth:`begin_post` was answered (or failed)."""
        self._post_pending = False

    def receive_payload(self, body: bytes, now: float) -> list[str | bytes]:
        """A polling POST body. Returns the messages in it, in order."""
        if self.state not in (_S.POLLING, _S.PROBING, _S.PROBED):
            raise TransportMismatch("POST on a session that is not polling")
        messages = []
        for packet in decode_payload(body):
            msg = self._receive_packet(packet, now, websocket=False)
            if msg is not None:
                messages.append(msg)
        return messages

    def receive_ws_text(self, text: str, now: float) -> tuple[str | bytes | None, str | None]:
        """A WebSocket text frame. Returns (message or None, frame to answer directly or None); a
        message sent as ``b`` + base64 is bytes."""
        state = self.state
        if state is _WEBSOCKET and text[:1] == "4":  # the hot path: skip the general decoder for messages
            return (text[1:] if self._admit(now) else None), None
        if state is _S.PROBING or state is _S.PROBED:
            return None, self._receive_upgrade_frame(text)
        if text[:1] == "4":
            return None, None  # a message on a session that is closing (or polling): dropped
        return self._receive_packet(decode_text_packet(text), now, websocket=True), None

    def receive_ws_binary(self, data: bytes, now: float) -> bytes | None:
        if self.state is _S.PROBING or self.state is _S.PROBED:
            raise EngineIOProtocolError("binary frame on a WebSocket that is still probing")
        return data if self.state is _S.WEBSOCKET and self._admit(now) else None

    # -- long-polling -------------------------------------------------------------------------

    def begin_poll(self, now: float) -> None:
        """A GET arrived. Two at once is a client bug: the session closes, the second gets 400."""
        if self.state not in (_S.POLLING, _S.PROBING, _S.PROBED, _S.CLOSING):
            raise TransportMismatch("GET on a session that is not polling")
        if self._poll_pending:
            self._conflict(now)
        self._poll_pending = True

    @property
    def poll_ready(self) -> bool:
        """True when a pending GET has something to return (or must be released)."""
        return self.state is _S.CLOSED or self._noop_owed or bool(self._outbox)

    def finish_poll(self) -> bytes:
        """The body for the pending GET: everything queued, or a noop to release it."""
        self._poll_pending = False
        if self._noop_owed:
            # Released once, so the client stops polling; later GETs get data as usual.
            self._noop_owed = False
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
        self._move(_I.WS_ATTACHED)
        self._upgrade_by = now + UPGRADE_TIMEOUT

    def _receive_upgrade_frame(self, text: str) -> str | None:
        if text == "2probe" and self.state is _S.PROBING:
            self._move(_I.PROBE)
            # The client now pauses polling: the GET it has out (pending here or still on its way)
            # must come back, with a noop, before it sends "5".
            self._noop_owed = True
            self._effects.append(Effect.OUTPUT)
            return _PROBE_ANSWER
        if text == "5" and self.state is _S.PROBED:
            self._move(_I.UPGRADE)
            self._upgrade_by = None
            self._noop_owed = False
            self._effects.append(Effect.UPGRADED)
            if self._outbox:
                self._effects.append(Effect.OUTPUT)  # what waited during the upgrade
            return None
        raise EngineIOProtocolError(f"unexpected frame during upgrade: {text[:16]!r}")

    def upgrade_failed(self) -> None:
        """The probing WebSocket went away, or took too long, before ``5``: stay on polling."""
        self._upgrade_by = None
        self._noop_owed = False
        if self._move(_I.UPGRADE_ABANDONED) in (_S.PROBING, _S.PROBED):
            self._effects.append(Effect.UPGRADE_ABANDONED)
