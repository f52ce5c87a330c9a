"""Alarms (callbox/alarms.py): each key rings once, at its time, in order; setting again replaces
the alarm, later or earlier; a cancelled alarm neither rings nor holds its key; the task that rings
them runs only while any alarm is set. On trio's virtual clock, so the times asserted are exact.
How they carry the server's heartbeats and the calls' ring timeouts: tests/server/test_heartbeat.py
and tests/signalling/test_signalling_service.py."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio
import trio.testing

from callbox.alarms import Alarms


class Key:
    """A key (a session, say): its name."""

    def __init__(self, name: str) -> None:
        self.name = name


class Rung:
    """The alarms under test, started in ``nursery``, and what they rang, when (from the start)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.alarms: Alarms[Key] = Alarms(nursery.start_soon, self.ring)
        self.t0 = trio.current_time()
        self.times: list[tuple[str, float]] = []

    async def ring(self, key: Key) -> None:
        self.times.append((key.name, trio.current_time() - self.t0))

    async def until(self, offset: float) -> None:
        """Let virtual time pass to ``t0 + offset`` (the alarms ring what is due on the way)."""
        await trio.sleep_until(self.t0 + offset)
        await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def rung(nursery: trio.Nursery) -> Rung:
    return Rung(nursery)


async def test_alarms_ring_in_order_each_at_its_time(rung: Rung, autojump_clock: Any) -> None:
    a, b, c = Key("a"), Key("b"), Key("c")
    assert rung.nursery.child_tasks == set()  # no alarm, no task
    rung.alarms.set(a, rung.t0 + 5)
    rung.alarms.set(b, rung.t0 + 3)
    rung.alarms.set(c, rung.t0 + 3)
    assert len(rung.nursery.child_tasks) == 1
    await rung.until(10)
    assert rung.times == [("b", 3), ("c", 3), ("a", 5)]
    assert rung.alarms.entries == {} and rung.nursery.child_tasks == set()  # all rung: the task ended
    rung.alarms.set(a, rung.t0 + 12)  # a new one starts it again
    await rung.until(20)
    assert rung.times[-1] == ("a", 12)


async def test_setting_again_replaces_the_alarm_later_or_earlier(rung: Rung, autojump_clock: Any) -> None:
    later, earlier = Key("later"), Key("earlier")
    rung.alarms.set(later, rung.t0 + 5)
    rung.alarms.set(earlier, rung.t0 + 10)
    await trio.testing.wait_all_tasks_blocked()  # the task sleeps until t0 + 5
    rung.alarms.set(later, rung.t0 + 8)  # a pong moved the next ping
    rung.alarms.set(earlier, rung.t0 + 2)  # earlier than the task sleeps: it wakes sooner
    rung.alarms.set(earlier, rung.t0 + 2)  # the same time again: nothing new
    await rung.until(20)
    assert rung.times == [("earlier", 2), ("later", 8)]


async def test_a_cancelled_alarm_neither_rings_nor_holds_its_key(rung: Rung, autojump_clock: Any) -> None:
    gone, kept = Key("gone"), Key("kept")
    rung.alarms.set(gone, rung.t0 + 5)
    rung.alarms.set(kept, rung.t0 + 6)
    rung.alarms.cancel(gone)  # its session ended
    rung.alarms.cancel(gone)  # twice is harmless
    ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert ref() is None  # its heap entry, there until its time, no longer holds it
    await rung.until(10)
    assert rung.times == [("kept", 6)]
    # Cancelling the last alarm ends the task at once, not at that alarm's time.
    rung.alarms.set(kept, rung.t0 + 100)
    await trio.testing.wait_all_tasks_blocked()
    rung.alarms.cancel(kept)
    await trio.testing.wait_all_tasks_blocked()
    assert rung.nursery.child_tasks == set() and trio.current_time() < rung.t0 + 100
