"""Redis trouble fails closed (issue 14): with the registry in a real Redis that stops answering, a
request is refused with ``UNAVAILABLE`` within the registry's deadline (as an ack, or an ``error``
event), nothing is done from local state, and service resumes by itself when Redis answers again,
with the call as it was."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import trio

import callbox
from _redis import RedisServer, redis_server
from _signalling import Harness
from callbox.signalling import Signalling
from callbox.signalling._redis import open_redis_registry

pytestmark = pytest.mark.redis

DEADLINE = 0.5
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 54400 typ host", "sdpMid": "0"}
UNAVAILABLE = {"ok": False, "code": "UNAVAILABLE",
               "message": "The server cannot reach its shared state; nothing was done, try again"}


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


async def test_a_frozen_redis_refuses_requests_then_service_resumes(redis: RedisServer, nursery: trio.Nursery) -> None:
    async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
        h = Harness(nursery, callbox.Config())
        h.registry = registry  # type: ignore[assignment]
        h.service = Signalling(h, registry, lambda: h.config)
        alice, bob = await h.join("alice"), await h.join("bob")
        call_id = await h.live_call(alice, bob)

        redis.freeze()
        try:
            before = trio.current_time()
            ack = await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE}, ack=True)
            assert ack == UNAVAILABLE
            assert trio.current_time() - before < DEADLINE + 0.5  # bounded by the deadline
            await h.emit(alice, "call:end", {"callId": call_id})  # no ack asked: an error event
            assert h.take(alice) == [("error", {"message": UNAVAILABLE["message"], "code": "UNAVAILABLE"})]
            assert h.take(bob) == []  # nothing was relayed, nothing ended
        finally:
            redis.thaw()

        # Redis answers again: the same call goes on, with no restart.
        ack = await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE})
        assert ack == {"ok": True, "callId": call_id}
        assert [e for e, _ in h.take(bob)] == ["ice:candidate"]
        assert (await h.emit(bob, "call:end", {"callId": call_id}))["ok"]
        assert h.service.observe.errors.get("UNAVAILABLE") == 2
