"""Alarms: the deadlines of parked WebSocket readers, kept by one task and one heap for the server.

A reader that runs its session (:func:`.websocket.run_websocket_session`) parks in
``wait_readable`` inside one cancel scope that lives until something wakes it. trio has deadlines
only on cancel scopes, and entering and leaving a scope with a deadline costs about 5 us of CPU
here (a micro-benchmark), which every wait paid. So the session's next deadline (a ping due, a pong
overdue, a close or an upgrade timing out) is an alarm here instead, which wakes the reader when it
comes (:meth:`.session.EngineSocket.wake`). A reader that is busy when its alarm rings is not woken
(only a parked reader is); it sees the deadline itself before it parks again.

Each session has at most one alarm that counts. Setting another leaves the old entry in the heap,
emptied, until its time: deadlines change about twice per ping interval, so the heap holds about
two entries per session, and an emptied entry holds no session.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .session import EngineSocket

__all__ = ["Alarms"]


class Alarms:
    """The alarms of one server's sessions; :meth:`run` rings them, in the server's nursery."""

    __slots__ = ("_heap", "_order", "_sleep")

    def __init__(self) -> None:
        # [when, order, session or None]: a list, so that cancelling empties it in place; ``order``
        # keeps the heap from ever comparing sessions.
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        """Entries in the heap, emptied ones included."""
        return len(self._heap)

    def set(self, sock: EngineSocket, when: float) -> None:
        """Wake ``sock``'s reader at ``when``, instead of at its alarm so far (if it had one)."""
        old = sock._alarm
        if old is not None:
            if old[0] == when:
                return
            old[2] = None
        entry = [when, next(self._order), sock]
        sock._alarm = entry
        heapq.heappush(self._heap, entry)
        sleep = self._sleep
        if sleep is not None and when < sleep.deadline:
            sleep.deadline = when

    def cancel(self, sock: EngineSocket) -> None:
        """``sock`` needs no alarm (its session is over): its entry no longer holds it."""
        old = sock._alarm
        if old is not None:
            old[2] = None
            sock._alarm = None

    async def run(self) -> None:
        """Ring each alarm when its time comes, for ever."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, sock = heapq.heappop(heap)
                if sock is not None:
                    sock._alarm = None
                    sock.wake()
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._sleep:
                await trio.sleep_forever()
