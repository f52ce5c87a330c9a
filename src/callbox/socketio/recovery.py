"""Connection state recovery (socket.io-client >= 4.6): what one socket was sent, kept so that a
client that lost its connection can come back and get what it missed. Sans-IO: the caller passes
the time and the limits.

Theory of operation
-------------------
With recovery on, every event the server sends a socket without asking for an ack carries one more
last argument, its **offset**: the socket's own count of such events, as a decimal string ("1",
"2", ...). socket.io-client remembers the last offset it received and, when it reconnects, sends it
with the socket's private id (``pid``) in its CONNECT payload. The server answers with the same
socket id and pid and sends every kept event after that offset, in order, once.

The buffer keeps events while the socket is connected, too: a write the kernel took may never have
reached a client whose connection was already dead. While connected, an event is dropped once it is
older than ``keep_for`` (by then a heartbeat has proved the client read past it) or past the count
and byte limits; once the socket is **detached** (its connection lost, the window running) nothing
more is dropped, and going past a limit ends the socket instead (the client gets a fresh one).

Three failures of socket.io's own scheme cannot happen here, by construction:

- *Nothing was emitted before the drop*: socket.io compares the client's offset with ids in a
  shared list, and a client that never received an event sends none, so it is never recovered.
  Here an absent offset means 0 ("nothing received"), which matches a socket that sent nothing.
- *The offset ages out*: socket.io drops packets older than the window from that list, so a client
  whose last event is older than the window is refused although it missed nothing. Here the offset
  is a count, and a client at the last count needs nothing kept at all.
- *A stale half-open socket persists itself again*: in socket.io the old socket's late disconnect
  saves a second session over the recovered one. Here a recovered socket is moved off its old
  connection before that connection is closed, so the old connection has nothing left to save.
"""

from __future__ import annotations

import collections

__all__ = ["RecoveryBuffer", "missed_offset"]

Messages = list[str | bytes]  # one packet as Engine.IO messages (a binary packet is several)


def missed_offset(offset: object) -> int | None:
    """The offset a client says it last received, as a count: absent is 0; garbage is None."""
    if offset is None:
        return 0
    if isinstance(offset, str) and 0 < len(offset) <= 20 and offset.isascii() and offset.isdigit():
        return int(offset)
    return None


class RecoveryBuffer:
    """The events of one socket that a reconnecting client may still need, with their offsets."""

    __slots__ = ("last", "_events", "_bytes")

    def __init__(self) -> None:
        self.last = 0  # the offset of the last event sent
        self._events: collections.deque[tuple[int, float, Messages, int]] = collections.deque()
        self._bytes = 0

    def next_offset(self) -> str:
        """The offset for the next event; :meth:`keep` it once encoded."""
        self.last += 1
        return str(self.last)

    def keep(self, messages: Messages, now: float, *, max_events: int, max_bytes: int,
             keep_for: float | None) -> bool:
        """Keep the event just given :attr:`last` as its offset. ``keep_for`` None: the socket is
        detached, nothing may be dropped; False if this goes past a limit (the socket must end)."""
        size = sum(len(m.encode()) if isinstance(m, str) else len(m) for m in messages)
        events = self._events
        events.append((self.last, now, messages, size))
        self._bytes += size
        if keep_for is None:
            return len(events) <= max_events and self._bytes <= max_bytes
        horizon = now - keep_for
        while events and (len(events) > max_events or self._bytes > max_bytes or events[0][1] < horizon):
            self._bytes -= events.popleft()[3]
        return True

    def after(self, offset: int) -> list[Messages] | None:
        """Every event after ``offset``, in order; None when some of them are no longer kept (or the
        offset was never given)."""
        if not 0 <= offset <= self.last:
            return None
        if offset == self.last:
            return []
        events = self._events
        if not events or events[0][0] > offset + 1:
            return None
        return [messages for number, _, messages, _ in events if number > offset]

    def __len__(self) -> int:
        return len(self._events)

    @property
    def nbytes(self) -> int:
        return self._bytes
