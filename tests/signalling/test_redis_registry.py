"""RedisRegistry on a real redis-server: the steps of a call answer as MemoryRegistry's do, the
scripts decide by the Python tables, and a Redis that is gone or stuck fails each step within its
deadline (RegistryUnavailable), then serves again when it is back, without a new client.

(The broad comparison, random sequences on both registries, is test_registry_differential.py.)
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import msgspec
import pytest
import trio

from _redis import RedisServer, redis_server
from callbox.signalling._errors import SignallingError
from callbox.signalling._redis import SCRIPTS, RegistryUnavailable, open_redis_registry, state_tables
from callbox.signalling._registry import MemoryRegistry
from callbox.signalling._state import (
    CALL_ACTORS,
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    Outcome,
    Role,
    UserEvent,
    UserState,
    end_event,
)

pytestmark = pytest.mark.redis

# A step here takes well under a millisecond: a short deadline keeps the "Redis is stuck" tests short.
DEADLINE = 0.5


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def test_the_scripts_decide_by_the_python_tables() -> None:
    tables = state_tables()
    assert {UserState(s): {UserEvent(e): UserState(t) for e, t in row.items()}
            for s, row in tables["user"].items()} == USER_TRANSITIONS
    assert {CallState(s): {CallEvent(e): CallState(t) for e, t in row.items()}
            for s, row in tables["call"].items()} == CALL_TRANSITIONS
    assert {CallEvent(e): frozenset(Role(r) for r in roles) for e, roles in tables["actors"].items()} == CALL_ACTORS
    assert all(tables["end_event"][r.value][s.value] == end_event(s, r).value
               for r in (Role.CALLER, Role.CALLEE) for s in CallState)
    tables_json = msgspec.json.encode(tables).decode()
    assert all(tables_json in script for script in SCRIPTS.values())


async def _both(memory: MemoryRegistry, other: object, name: str, *args: object) -> bytes:
    """The same step on both registries: the same snapshot (as JSON) or the same refusal."""
    results = []
    for registry in (memory, other):
        try:
            results.append(msgspec.json.encode(await getattr(registry, name)(*args)))
        except SignallingError as exc:
            results.append(f"{exc.code}: {exc.message}".encode())
    assert results[0] == results[1], (name, args)
    return results[0]


async def test_a_call_with_devices_glare_and_a_resume_answers_as_the_memory_registry(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
            memory = MemoryRegistry()
            steps: list[tuple[object, ...]] = [
                ("join", "alice", "a1", "laptop", 2, "ta1"),
                ("join", "bob", "b1", "phone", 2, "tb1"),
                ("join", "bob", "b2", "desk", 2, "tb2"),
                ("join", "bob", "b2", "desk", 2, "tb2"),  # the same session again: nothing changes
                ("initiate", "alice", "a1", "alice", "audio", "self"),  # INVALID_TARGET
                ("initiate", "alice", "a1", "carol", "audio", "nobody"),  # USER_OFFLINE
                ("initiate", "alice", "a1", "bob", "video", "c1"),
                ("relay", "alice", "a1", "bob", CallEvent.OFFER),  # INITIATING: not yet
                ("ring", "c1"),
                ("join", "bob", "b3", "tablet", 3, None),  # rings too
                ("initiate", "bob", "b1", "alice", "video", "c2"),  # glare: merged, answered from b1
                ("accept", "c1", "bob", "b2", None),  # too late: answered elsewhere
                ("relay", "bob", "b1", "alice", CallEvent.ANSWER),
                ("relay", "alice", "a1", "carol", CallEvent.CANDIDATE),  # NOT_IN_CALL, User not found
                ("detach", "bob", "b1"),
                ("initiate", "carol", "c1s", "bob", "audio", "c3"),  # NOT_JOINED
                ("reattach", "bob", "b9", "tb1", "tb9"),  # resumed on a new session
                ("counts",),
                ("hang_up", "c1", "bob", "b9"),
                ("hang_up", "c1", "bob", "b9"),  # gone: "Call not found"
                ("initiate", "alice", "a1", "bob", "audio", "c4"),
                ("ring", "c4"),
                ("reject", "c4", "bob", "b2", "alice"),
                ("initiate", "alice", "a1", "bob", "audio", "c5"),
                ("ring", "c5"),
                ("time_out", "c5"),
                ("initiate", "bob", "b3", "alice", "audio", "c6"),
                ("join", "alice", "a2", "laptop", 2, None),  # the same device id: replaces a1, ends c6
                ("initiate", "alice", "a2", "bob", "audio", "c7"),
                ("initiate", "bob", "b2", "alice", "video", "c8"),
                ("end_all", Outcome.SERVER_SHUTDOWN),
                ("leave", "bob", "b2"),
                ("leave", "bob", "nobody"),
                ("counts",),
            ]
            for name, *args in steps:
                await _both(memory, registry, str(name), *args)
            for user_id in ("alice", "bob", "carol"):
                await _both(memory, registry, "user", user_id)
            for call_id in ("c1", "c2", "c4", "c5", "c6", "c7", "c8"):
                await _both(memory, registry, "call", call_id)


async def test_two_prefixes_on_one_server_are_two_registries(redis: RedisServer) -> None:
    with trio.fail_after(10):
        async with (open_redis_registry(redis.url, prefix="one") as one,
                    open_redis_registry(redis.url, prefix="two") as two):
            await one.join("alice", "a1")
            assert await one.counts() == (1, 0)
            assert await two.counts() == (0, 0)
            assert await two.user("alice") is None


async def test_a_stopped_redis_fails_each_step_within_its_deadline_then_serves_again(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
            await registry.join("alice", "a1")
            redis.stop()
            for step in (registry.join("bob", "b1"), registry.user("alice"), registry.counts()):
                started = trio.current_time()
                with pytest.raises(RegistryUnavailable):
                    await step
                assert trio.current_time() - started < DEADLINE + 0.25
            redis.start()  # a fresh, empty one on the same port
            joined = await registry.join("bob", "b1")
            assert joined.user.id == "bob"
            assert await registry.counts() == (1, 0)


async def test_a_stuck_redis_fails_each_step_at_its_deadline_and_no_reply_goes_astray(redis: RedisServer) -> None:
    with trio.fail_after(20):
        async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
            await registry.join("alice", "a1")
            redis.freeze()
            started = trio.current_time()
            with pytest.raises(RegistryUnavailable):
                await registry.join("bob", "b1")
            assert DEADLINE <= trio.current_time() - started < DEADLINE + 0.25
            with pytest.raises(RegistryUnavailable):
                await registry.user("alice")
            redis.thaw()
            # The replies to the steps given up on (a Joined, a User) must not answer the next ones.
            assert await registry.counts() in ((1, 0), (2, 0))
            assert (await registry.user("carol")) is None
            alice = await registry.user("alice")
            assert alice is not None and [d.socket_id for d in alice.devices] == ["a1"]
            assert (await registry.call("c1")) is None
