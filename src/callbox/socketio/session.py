"""The Socket.IO v5 state of one Engine.IO session, sans-IO.

Theory of operation
-------------------
Over one Engine.IO session a client connects to namespaces; each connection is a socket with its
own id. This core holds, for one session: the decoder (a binary packet waits here for its
attachments), the state of each namespace the client asked for, the ack ids the server waits on,
and the connect deadline (a client that connects to no namespace within ``connect_timeout`` of its
handshake is closed). The shell (``server/api.py``) runs the application's handlers and sends; it
asks this core what each packet means and tells it what the handlers decided. No I/O, no clock.

Each namespace's socket moves by ``NAMESPACE_TRANSITIONS`` (state, input) -> state. A client's
repeated or stray packet is a row that changes nothing (socket.io ignores a second CONNECT, and a
DISCONNECT for a namespace it is not in); a move with no row is a bug of ours and raises
:class:`IllegalTransition`::

    ABSENT --CONNECT--> CONNECTING --accepted--> CONNECTED --DISCONNECT / server disconnect--> ABSENT
    CONNECTING --refused, or DISCONNECT while the connect handler runs--> ABSENT
"""

from __future__ import annotations

from ..enums import TableEnum
from .packet import Decoder, Packet, PacketType

__all__ = ["IllegalTransition", "NAMESPACE_TRANSITIONS", "NsInput", "NsState", "SocketIOSession"]

# Ack ids are counted up from 0; the JS client keeps them in a Number, and so do we below 2**53.
MAX_ACK_ID = (1 << 53) - 1


class IllegalTransition(RuntimeError):
    """Our own code asked for a move the namespace table does not allow."""


class NsState(TableEnum):
    ABSENT = "absent"
    CONNECTING = "connecting"  # the connect handler (or middleware) is deciding
    CONNECTED = "connected"


class NsInput(TableEnum):
    CONNECT = "CONNECT from the client"
    ACCEPTED = "the connect handler let it in"
    REFUSED = "the connect handler refused it"
    DISCONNECT = "DISCONNECT from the client, or the server disconnects it"


_N, _NI = NsState, NsInput
NAMESPACE_TRANSITIONS: dict[tuple[NsState, NsInput], NsState] = {
    (_N.ABSENT, _NI.CONNECT): _N.CONNECTING,
    (_N.CONNECTING, _NI.CONNECT): _N.CONNECTING,  # a second CONNECT while deciding: ignored
    (_N.CONNECTED, _NI.CONNECT): _N.CONNECTED,  # already connected: ignored, as socket.io does
    (_N.CONNECTING, _NI.ACCEPTED): _N.CONNECTED,
    (_N.CONNECTING, _NI.REFUSED): _N.ABSENT,
    # The client left (DISCONNECT, or its session ended) while the connect handler ran: the
    # handler's verdict changes nothing.
    (_N.ABSENT, _NI.ACCEPTED): _N.ABSENT,
    (_N.ABSENT, _NI.REFUSED): _N.ABSENT,
    (_N.CONNECTING, _NI.DISCONNECT): _N.ABSENT,
    (_N.CONNECTED, _NI.DISCONNECT): _N.ABSENT,
    (_N.ABSENT, _NI.DISCONNECT): _N.ABSENT,  # not connected there: ignored
}


class SocketIOSession:
    """The Socket.IO side of one Engine.IO session. Times are the caller's monotonic seconds."""

    __slots__ = ("decoder", "namespaces", "connect_by", "_next_ack_id", "_acks")

    def __init__(self, *, now: float, connect_timeout: float) -> None:
        self.decoder = Decoder()
        self.namespaces: dict[str, NsState] = {}  # only the ones not ABSENT
        # Until a namespace is connected: the client is closed if none is by then.
        self.connect_by: float | None = now + connect_timeout
        self._next_ack_id = 0
        # Ids of the server's events still waiting for the client's ack (made on first use: most
        # clients are never asked for one).
        self._acks: set[int] | None = None

    def receive(self, message: str | bytes) -> Packet | None:
        """One Engine.IO message; the packet it completes, or None (a binary packet waits for more).
        Malformed input raises :class:`SocketIOProtocolError`."""
        if isinstance(message, str):
            return self.decoder.receive_text(message)
        return self.decoder.receive_binary(message)

    # -- namespaces -----------------------------------------------------------------------------

    def state_of(self, namespace: str) -> NsState:
        return self.namespaces.get(namespace, _N.ABSENT)

    def _move(self, namespace: str, what: NsInput) -> NsState:
        """Apply ``what`` to ``namespace``; returns the state it was in."""
        old = self.namespaces.get(namespace, _N.ABSENT)
        new = NAMESPACE_TRANSITIONS.get((old, what))
        if new is None:
            raise IllegalTransition(f"namespace {namespace!r} {old.value}: {what.value}")
        if new is _N.ABSENT:
            self.namespaces.pop(namespace, None)
        else:
            self.namespaces[namespace] = new
            if new is _N.CONNECTED:
                self.connect_by = None
        return old

    def connect(self, namespace: str) -> bool:
        """The client sent CONNECT. True: run the connect handler; False: ignore it (already
        connected, or being decided)."""
        return self._move(namespace, _NI.CONNECT) is _N.ABSENT

    def accepted(self, namespace: str) -> bool:
        """The connect handler let it in. False: the client left meanwhile (send no answer)."""
        return self._move(namespace, _NI.ACCEPTED) is _N.CONNECTING

    def refused(self, namespace: str) -> bool:
        """The connect handler refused it. False: the client left meanwhile (send no answer)."""
        return self._move(namespace, _NI.REFUSED) is _N.CONNECTING

    def disconnect(self, namespace: str) -> bool:
        """The client or the server ends this namespace. True if it was connected (the app's
        disconnect handler runs)."""
        return self._move(namespace, _NI.DISCONNECT) is _N.CONNECTED

    def connect_overdue(self, now: float) -> bool:
        """True once the connect deadline has passed with no namespace connected."""
        return self.connect_by is not None and now >= self.connect_by

    # -- acks -----------------------------------------------------------------------------------

    def new_ack_id(self) -> int:
        """An id for a server event that wants the client's ack; it is pending until answered or
        abandoned."""
        ack_id = self._next_ack_id
        self._next_ack_id = 0 if ack_id >= MAX_ACK_ID else ack_id + 1
        if self._acks is None:
            self._acks = set()
        self._acks.add(ack_id)
        return ack_id

    def ack_received(self, packet: Packet) -> bool:
        """An ACK from the client: True if it answers an id still pending (it is no longer)."""
        assert packet.type is PacketType.ACK or packet.type is PacketType.BINARY_ACK
        if self._acks is not None and packet.id in self._acks:
            self._acks.discard(packet.id)
            return True
        return False  # late (after a timeout), or never asked: dropped

    def ack_abandoned(self, ack_id: int) -> None:
        """The server stopped waiting (timeout, or the socket went)."""
        if self._acks is not None:
            self._acks.discard(ack_id)

    @property
    def pending_acks(self) -> frozenset[int]:
        return frozenset(self._acks or ())
