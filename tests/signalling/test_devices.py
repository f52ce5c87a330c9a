"""Several devices per user and glare, driven directly: ring all, the first accept wins, the others
are told how the ringing ended for them; a device replaces only itself; calls that cross merge."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import callbox
from _signalling import TOKEN, Harness
from callbox.signalling import Session

CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 54400 typ host", "sdpMid": "0"}


@pytest.fixture
def h(nursery: trio.Nursery) -> Harness:
    return Harness(nursery, callbox.Config(max_devices=3, ring_timeout=30))


async def device(h: Harness, user_id: str, device_id: str) -> Session:
    session = h.connect()
    ack = await h.emit(session, "user:join", {"userId": user_id, "deviceId": device_id})
    assert ack["ok"], ack
    h.take(session)
    return session


async def bob_devices(h: Harness) -> tuple[Session, Session, Session, Session, str]:
    alice = await device(h, "alice", "laptop")
    d1, d2, d3 = [await device(h, "bob", f"d{i}") for i in (1, 2, 3)]
    ack = await h.emit(alice, "call:initiate", {"to": "bob", "callType": "video"})
    call_id: str = ack["callId"]
    h.take(alice)
    return alice, d1, d2, d3, call_id


async def test_every_device_rings_and_the_first_accept_wins(h: Harness) -> None:
    alice, d1, d2, d3, call_id = await bob_devices(h)
    incoming = ("call:incoming", {"from": "alice", "callType": "video", "callId": call_id})
    assert h.take(d1) == h.take(d2) == h.take(d3) == [incoming]
    assert await h.emit(d2, "call:accept", {"callId": call_id}) == {"ok": True, "callId": call_id}
    accepted = ("call:accepted", {"callId": call_id, "by": "bob"})
    assert h.take(alice) == [accepted] and h.take(d2) == [accepted]
    elsewhere = ("call:ended", {"callId": call_id, "by": "bob", "reason": "answered_elsewhere"})
    assert h.take(d1) == [elsewhere] and h.take(d3) == [elsewhere]
    # only the answering device is in the call now
    await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE})
    assert [e for e, _ in h.take(d2)] == ["ice:candidate"] and h.take(d1) == h.take(d3) == []
    refused = await h.emit(d1, "ice:candidate", {"to": "alice", "candidate": CANDIDATE}, ack=True)
    assert refused["code"] == "NOT_IN_CALL"
    late = await h.emit(d3, "call:accept", {"callId": call_id}, ack=True)
    assert late["code"] == "CALL_NOT_FOUND"
    assert h.take(alice) == []


async def test_early_relays_reach_every_ringing_device(h: Harness) -> None:
    alice, d1, d2, d3, _call_id = await bob_devices(h)
    for d in (d1, d2, d3):
        h.take(d)
    offer = {"type": "offer", "sdp": "v=0"}
    assert (await h.emit(alice, "call:offer", {"to": "bob", "offer": offer}))["ok"]
    assert [e for e, _ in h.take(d1)] == [e for e, _ in h.take(d2)] == [e for e, _ in h.take(d3)] == ["call:offer"]
    # a ringing device may answer the caller's early media
    assert (await h.emit(d3, "ice:candidate", {"to": "alice", "candidate": CANDIDATE}))["ok"]
    assert [e for e, _ in h.take(alice)] == ["ice:candidate"]


async def test_a_reject_ends_the_ringing_everywhere(h: Harness) -> None:
    alice, d1, d2, d3, call_id = await bob_devices(h)
    for d in (d1, d2, d3):
        h.take(d)
    assert (await h.emit(d1, "call:reject", {"callId": call_id}))["ok"]
    rejected = ("call:rejected", {"callId": call_id, "by": "bob"})
    assert h.take(alice) == [rejected] and h.take(d1) == [rejected]
    elsewhere = ("call:ended", {"callId": call_id, "by": "bob", "reason": "rejected_elsewhere"})
    assert h.take(d2) == [elsewhere] and h.take(d3) == [elsewhere]
    assert h.registry.calls == {} and h.service.timers == {}


async def test_cancel_and_timeout_reach_every_ringing_device(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    alice, d1, d2, d3, call_id = await bob_devices(h)
    for d in (d1, d2, d3):
        h.take(d)
    await h.emit(alice, "call:end", {"callId": call_id})
    cancelled = ("call:ended", {"callId": call_id, "by": "alice", "reason": "cancelled"})
    assert h.take(d1) == h.take(d2) == h.take(d3) == [cancelled]
    second = (await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}))["callId"]
    for d in (d1, d2, d3):
        h.take(d)
    await trio.sleep(31)
    assert h.take(d1) == h.take(d2) == h.take(d3) == [("call:timeout", {"callId": second})]


async def test_busy_is_per_user(h: Harness) -> None:
    _alice, d1, d2, _d3, call_id = await bob_devices(h)
    carol = await device(h, "carol", "c")
    assert (await h.emit(carol, "call:initiate", {"to": "bob", "callType": "audio"}, ack=True))["code"] == "USER_BUSY"
    other = await h.emit(d1, "call:initiate", {"to": "carol", "callType": "audio"}, ack=True)
    assert other["code"] == "ALREADY_IN_CALL"
    await h.emit(d2, "call:accept", {"callId": call_id})
    other = await h.emit(d1, "call:initiate", {"to": "carol", "callType": "audio"}, ack=True)
    assert other["code"] == "ALREADY_IN_CALL"


async def test_a_device_that_joins_while_the_call_rings_rings_too(h: Harness) -> None:
    _alice, d1, _d2, d3, call_id = await bob_devices(h)
    h.take(d1)
    await h.leave(d3)
    d4 = h.connect()
    await h.emit(d4, "user:join", {"userId": "bob", "deviceId": "d4"})
    got = h.take(d4)
    assert [e for e, _ in got] == ["user:joined", "call:incoming"] and got[1][1]["callId"] == call_id
    assert (await h.emit(d4, "call:accept", {"callId": call_id}))["ok"]
    assert h.take(d1) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "answered_elsewhere"})]


async def test_the_same_device_id_replaces_that_device_only(h: Harness) -> None:
    d1 = await device(h, "bob", "d1")
    d2 = await device(h, "bob", "d2")
    d1_again = h.connect()
    assert (await h.emit(d1_again, "user:join", {"userId": "bob", "deviceId": "d1"}))["ok"]
    replaced = {"message": "This user joined from another connection", "code": "SESSION_REPLACED"}
    assert h.take(d1) == [("error", replaced)]
    assert h.disconnected == [d1.socket_id] and h.take(d2) == []
    assert [d.socket_id for d in h.registry.users["bob"].devices] == [d2.socket_id, d1_again.socket_id]


async def test_past_max_devices_the_least_recently_active_idle_device_goes(h: Harness) -> None:
    alice = await device(h, "alice", "a")
    d1, d2, _d3 = [await device(h, "bob", f"d{i}") for i in (1, 2, 3)]
    call_id = (await h.emit(d1, "call:initiate", {"to": "alice", "callType": "audio"}))["callId"]
    await h.emit(alice, "call:accept", {"callId": call_id})
    await h.emit(d2, "call:end", {"callId": "nope"}, ack=True)  # refused: not activity
    d4 = h.connect()
    await h.emit(d4, "user:join", {"userId": "bob", "deviceId": "d4"})
    # d1 is in the call: d2 (joined before d3) goes
    assert h.disconnected == [d2.socket_id]
    assert {d.device_id for d in h.registry.users["bob"].devices} == {"d1", "d3", "d4"}
    assert call_id in h.registry.calls


async def test_one_device_keeps_the_take_over(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(max_devices=1))
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.live_call(alice, bob)
    bob2 = h.connect()
    await h.emit(bob2, "user:join", {"userId": "bob", "deviceId": "phone"})
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "replaced"})]
    assert h.disconnected == [bob.socket_id]


async def glare(h: Harness, first: Session, second: Session, first_to: str, second_to: str) -> tuple[Any, Any]:
    one = await h.emit(first, "call:initiate", {"to": first_to, "callType": "video"})
    two = await h.emit(second, "call:initiate", {"to": second_to, "callType": "audio"})
    return one, two


async def test_glare_merges_the_two_calls(h: Harness) -> None:
    alice = await device(h, "alice", "a")
    bob = await device(h, "bob", "b")
    one, two = await glare(h, alice, bob, "bob", "alice")
    call_id = one["callId"]
    assert two == {"ok": True, "callId": call_id, "merged": True}
    assert list(h.registry.calls) == [call_id]
    accepted = ("call:accepted", {"callId": call_id, "by": "bob", "merged": True})
    assert h.take(alice)[-1] == accepted
    assert h.take(bob) == [("call:incoming", {"from": "alice", "callType": "video", "callId": call_id}), accepted]
    assert h.service.timers == {}
    # the caller of the kept call offers; the call goes on as any other
    assert (await h.emit(alice, "call:offer", {"to": "bob", "offer": {"type": "offer", "sdp": "v=0"}}))["ok"]


async def test_glare_with_devices_answers_from_the_device_that_called(h: Harness) -> None:
    _alice, d1, d2, d3, call_id = await bob_devices(h)
    for d in (d1, d2, d3):
        h.take(d)
    merged = await h.emit(d3, "call:initiate", {"to": "alice", "callType": "audio"})
    assert merged == {"ok": True, "callId": call_id, "merged": True}
    assert h.registry.calls[call_id].callee_socket == d3.socket_id
    elsewhere = ("call:ended", {"callId": call_id, "by": "bob", "reason": "answered_elsewhere"})
    assert h.take(d1) == h.take(d2) == [elsewhere]


async def test_the_grace_waits_for_the_device_in_the_call_only(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(max_devices=3, reconnect_grace=10))
    alice, d1, d2, d3, call_id = await bob_devices(h)
    await h.emit(d2, "call:accept", {"callId": call_id})
    h.take(alice)
    h.take(d3)
    await h.lose(d1)  # not in the call: it just leaves
    assert h.take(alice) == [] and len(h.registry.users["bob"].devices) == 2
    await h.lose(d2)
    assert h.take(alice) == [("call:reconnecting", {"callId": call_id, "userId": "bob"})]
    token = next(d.resume_token for d in h.registry.users["bob"].devices if d.device_id == "d2")
    assert token is not None
    back = h.connect()
    ack = await h.emit(back, "user:join", {"userId": "bob", "resumeToken": token})
    assert ack["resumed"] is True
    assert h.take(back)[0] == ("user:joined", {
        "userId": "bob", "socketId": back.socket_id, "resumeToken": TOKEN, "resumed": True,
        "call": {"callId": call_id, "peer": "alice", "role": "callee", "state": "connecting", "callType": "video"},
    })
    assert h.registry.calls[call_id].callee_socket == back.socket_id
    assert h.take(d3) == []  # the other device was never part of it


async def test_a_new_device_past_the_limit_while_every_device_rings(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(max_devices=2))
    alice = await device(h, "alice", "a")
    d1, d2 = await device(h, "bob", "d1"), await device(h, "bob", "d2")
    call_id = (await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}))["callId"]
    d3 = h.connect()
    assert (await h.emit(d3, "user:join", {"userId": "bob", "deviceId": "d3"}))["ok"]
    assert h.disconnected == [d1.socket_id]  # ringing is not being in the call: the oldest goes
    assert h.registry.calls[call_id].ringing == (d2.socket_id, d3.socket_id)
    assert [e for e, _ in h.take(d3)] == ["user:joined", "call:incoming"]


async def test_another_device_answers_while_the_rung_one_is_away(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(max_devices=2, reconnect_grace=10))
    alice = await device(h, "alice", "a")
    d1 = await device(h, "bob", "d1")
    call_id = (await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}))["callId"]
    await h.lose(d1)  # the only device it rang: the call waits for it
    assert h.registry.users["bob"].state.name == "RECONNECTING"
    d2 = await device(h, "bob", "d2")  # rings too, and answers
    assert (await h.emit(d2, "call:accept", {"callId": call_id}))["ok"]
    assert h.registry.users["bob"].state.name == "IN_CALL"
    assert h.registry.calls[call_id].callee_socket == d2.socket_id
