"""The server's alarms (server/alarms.py): each session's reader is woken at its deadline, once, by
the one alarm task; setting again replaces the alarm; a session whose alarm is cancelled is no
longer held. On trio's virtual clock, so the times asserted are exact. How a real session's
heartbeat rides on them: tests/server/test_heartbeat.py."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio
import trio.testing

from callbox.server.alarms import Alarms


class Reader:
    """What the alarms see of a session: its ``_alarm`` slot and ``wake()``."""

    def __init__(self, name: str, woken: list[tuple[str, float]]) -> None:
        self.name = name
        self.woken = woken
        self._alarm: Any = None

    def wake(self) -> None:
        self.woken.append((self.name, trio.current_time()))


@pytest.fixture
def alarms(nursery: trio.Nursery) -> Alarms:
    """A server's alarms, with the task that rings them running."""
    running = Alarms()
    nursery.start_soon(running.run)
    return running


async def settle(until: float) -> None:
    """Let virtual time pass to ``until`` (the alarm task rings what is due on the way)."""
    await trio.sleep_until(until)
    await trio.testing.wait_all_tasks_blocked()


async def test_alarms_ring_in_order_each_at_its_time(alarms: Alarms, autojump_clock: Any) -> None:
    woken: list[tuple[str, float]] = []
    a, b, c = Reader("a", woken), Reader("b", woken), Reader("c", woken)
    t0 = trio.current_time()
    alarms.set(a, t0 + 5)
    alarms.set(b, t0 + 3)
    alarms.set(c, t0 + 3)
    await settle(t0 + 10)
    assert [(n, t - t0) for n, t in woken] == [("b", 3), ("c", 3), ("a", 5)]
    assert a._alarm is None and b._alarm is None  # rung: a reader parking again sets a new one
    assert len(alarms) == 0


async def test_setting_again_replaces_the_alarm_later_or_earlier(alarms: Alarms, autojump_clock: Any) -> None:
    woken: list[tuple[str, float]] = []
    later, earlier = Reader("later", woken), Reader("earlier", woken)
    t0 = trio.current_time()
    alarms.set(later, t0 + 5)
    alarms.set(earlier, t0 + 10)
    await trio.testing.wait_all_tasks_blocked()  # the alarm task sleeps until t0 + 5
    alarms.set(later, t0 + 8)  # a pong moved the next ping
    alarms.set(earlier, t0 + 2)  # earlier than the task sleeps: it wakes sooner
    alarms.set(earlier, t0 + 2)  # the same time again: nothing new
    await settle(t0 + 20)
    assert [(n, t - t0) for n, t in woken] == [("earlier", 2), ("later", 8)]


async def test_a_cancelled_alarm_neither_rings_nor_holds_its_session(alarms: Alarms, autojump_clock: Any) -> None:
    woken: list[tuple[str, float]] = []
    gone, kept = Reader("gone", woken), Reader("kept", woken)
    t0 = trio.current_time()
    alarms.set(gone, t0 + 5)
    alarms.set(kept, t0 + 6)
    alarms.cancel(gone)  # its session ended
    alarms.cancel(gone)  # twice is harmless
    ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert ref() is None  # the heap entry, still there until its time, no longer holds it
    await settle(t0 + 10)
    assert [(n, t - t0) for n, t in woken] == [("kept", 6)]
