"""Alarms: many deadlines in one heap, rung by one task, instead of a cancel scope or a task each.

trio has deadlines only on cancel scopes: entering and leaving one costs about 5 us of CPU here (a
micro-benchmark), and a task per deadline costs more again (spawning, cancelling and ending it).
Two things keep many deadlines, and both keep them here:

- the server, for the sessions that WebSocket readers run (``server/websocket.py``): a ping due, a
  pong overdue, a close or an upgrade timing out. The alarm wakes the reader, which acts on it;
- the signalling service, for the calls that ring (``signalling/_service.py``): the alarm times the
  call out.

Each key has at most one alarm. Setting it again, or cancelling it, empties its old heap entry,
which stays in the heap, holding nothing, until it comes to the top. The task that rings the alarms
runs only while any alarm is set: it starts (through the owner's ``start_soon``) with the first and
ends once none is left, so that a service with nothing pending leaves no task behind.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

__all__ = ["Alarms"]

K = TypeVar("K")


class Alarms(Generic[K]):
    """Alarms by key: ``ring(key)`` is awaited, in the alarms' own task, when the key's time comes."""

    __slots__ = ("entries", "_heap", "_order", "_ring", "_start_soon", "_sleep")

    def __init__(self, start_soon: Callable[[Callable[[], Awaitable[None]]], None],
                 ring: Callable[[K], Awaitable[object]]) -> None:
        # key -> its heap entry, [when, order, key or None once emptied]: a list, so that setting
        # again or cancelling empties it in place; ``order`` keeps the heap from comparing keys.
        self.entries: dict[K, list[Any]] = {}
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._ring = ring
        self._start_soon = start_soon
        self._sleep: trio.CancelScope | None = None  # where the task sleeps (None: no task runs)

    def set(self, key: K, when: float) -> None:
        """Ring ``key`` at ``when``, instead of at its alarm so far (if it had one)."""
        old = self.entries.get(key)
        if old is not None:
            if old[0] == when:
                return
            old[2] = None
        entry = [when, next(self._order), key]
        self.entries[key] = entry
        heapq.heappush(self._heap, entry)
        sleep = self._sleep
        if sleep is None:
            self._sleep = trio.CancelScope(deadline=when)
            self._start_soon(self._run)
        elif when < sleep.deadline:
            sleep.deadline = when

    def cancel(self, key: K) -> None:
        """``key`` needs no alarm: it will not ring, and the heap no longer holds it."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        entry[2] = None
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        if not heap and self._sleep is not None:
            self._sleep.cancel()  # nothing is set: the task ends

    async def _run(self) -> None:
        heap = self._heap
        while True:
            assert self._sleep is not None
            with self._sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and (heap[0][2] is None or heap[0][0] <= now):
                key = heapq.heappop(heap)[2]
                if key is not None:
                    del self.entries[key]
                    await self._ring(key)
            if not heap:
                self._sleep = None
                return
            self._sleep = trio.CancelScope(deadline=heap[0][0])
