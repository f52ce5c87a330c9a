"""The reconnect grace, driven directly: a party of a call whose connection is lost is waited for;
what is sent to it meanwhile waits and goes out, in order, when it comes back (recovered, or with
its resume token); the grace's end ends the call for the peer. Times run on trio's autojump clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import callbox
from _signalling import TOKEN, Harness
from callbox.signalling import Session

GRACE = 10.0
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 54400 typ host", "sdpMid": "0"}


@pytest.fixture
def h(nursery: trio.Nursery) -> Harness:
    return Harness(nursery, callbox.Config(reconnect_grace=GRACE, recovery_max_events=5))


async def live(h: Harness) -> tuple[Session, Session, str]:
    alice, bob = await h.join("alice"), await h.join("bob")
    return alice, bob, await h.live_call(alice, bob)


def token_of(h: Harness, session: Session) -> str:
    device = h.registry.users[session.user_id or ""].device(session.socket_id)
    assert device is not None and device.resume_token is not None
    return device.resume_token


async def test_join_gives_a_resume_token_only_with_a_grace(nursery: trio.Nursery) -> None:
    with_grace = Harness(nursery, callbox.Config(reconnect_grace=GRACE))
    s = with_grace.connect()
    await with_grace.emit(s, "user:join", {"userId": "alice"})
    assert with_grace.take(s) == [("user:joined", {"userId": "alice", "socketId": s.socket_id, "resumeToken": TOKEN})]
    without = Harness(nursery, callbox.Config(reconnect_grace=0))
    s = without.connect()
    await without.emit(s, "user:join", {"userId": "alice"})
    assert without.take(s) == [("user:joined", {"userId": "alice", "socketId": s.socket_id})]


async def test_a_lost_party_is_waited_for_and_gets_what_was_sent_meanwhile(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    assert h.take(alice) == [("call:reconnecting", {"callId": call_id, "userId": "bob"})]
    assert h.registry.users["bob"].state.name == "RECONNECTING"
    offer = {"type": "offer", "sdp": "v=0 restart"}
    assert await h.emit(alice, "call:offer", {"to": "bob", "offer": offer}) == {"ok": True, "callId": call_id}
    for i in range(3):
        ack = await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": {**CANDIDATE, "n": i}})
        assert ack == {"ok": True, "callId": call_id}
    assert h.take(bob) == []  # nothing went out while away
    await h.recover(bob)
    got = h.take(bob)
    assert [e for e, _ in got] == ["call:offer", "ice:candidate", "ice:candidate", "ice:candidate", "call:reconnected"]
    assert got[0][1]["offer"] == offer and [p["candidate"]["n"] for _, p in got[1:4]] == [0, 1, 2]
    assert got[4][1] == {"callId": call_id, "userId": "bob"}
    assert h.take(alice) == [("call:reconnected", {"callId": call_id, "userId": "bob"})]
    assert h.service.graces == {} and h.registry.users["bob"].state.name == "IN_CALL"
    # the call goes on
    assert (await h.emit(bob, "call:end", {"callId": call_id}))["ok"]


async def test_the_grace_ends_the_call_at_its_end(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    h.take(alice)
    await trio.sleep(GRACE - 0.01)  # the autojump clock: virtual seconds
    assert h.take(alice) == [] and "bob" in h.registry.users
    await trio.sleep(0.02)
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "disconnected"})]
    assert "bob" not in h.registry.users and h.registry.calls == {} and h.service.graces == {}
    ack = await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}, ack=True)
    assert ack["code"] == "USER_OFFLINE"
    assert h.service.observe.graces.get("expired") == 1


async def test_a_clean_leave_ends_the_call_at_once(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    await h.leave(bob)
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "disconnected"})]
    assert h.service.graces == {} and "bob" not in h.registry.users


async def test_a_user_not_in_a_call_goes_offline_at_once(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    await h.lose(bob)
    assert "bob" not in h.registry.users and h.service.graces == {}
    ack = await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}, ack=True)
    assert ack["code"] == "USER_OFFLINE"
    # a recovered connection holds its user id again (nobody took it meanwhile)
    await h.recover(bob)
    assert [d.socket_id for d in h.registry.users["bob"].devices] == [bob.socket_id]


async def test_no_grace_means_the_call_ends_at_once(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(reconnect_grace=0))
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "disconnected"})]


async def test_calling_a_user_that_is_away(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    carol = await h.join("carol")
    await h.lose(bob)
    ack = await h.emit(carol, "call:initiate", {"to": "bob", "callType": "audio"}, ack=True)
    assert ack["code"] == "USER_BUSY"  # its call waits for it
    await h.emit(alice, "call:end", {"callId": call_id})
    bob_user = h.registry.users["bob"]
    assert bob_user.state.name == "ONLINE" and bob_user.devices[0].away  # no call; its device still away
    ack = await h.emit(carol, "call:initiate", {"to": "bob", "callType": "audio"}, ack=True)
    assert ack["code"] == "USER_OFFLINE"  # nobody rings a user whose connection is gone
    await h.recover(bob)
    assert h.take(bob) == [("call:ended", {"callId": call_id, "by": "alice", "reason": "hangup"})]
    assert h.registry.users["bob"].state.name == "ONLINE"


async def test_the_ring_timeout_keeps_running_while_the_callee_is_away(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(nursery, callbox.Config(reconnect_grace=GRACE, ring_timeout=GRACE / 2))
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.ringing_call(alice, bob)
    await h.lose(bob)
    assert h.take(alice) == [("call:reconnecting", {"callId": call_id, "userId": "bob"})]
    await trio.sleep(h.config.ring_timeout + 0.1)
    assert h.take(alice) == [("call:timeout", {"callId": call_id})]
    await h.recover(bob)
    assert h.take(bob) == [("call:timeout", {"callId": call_id})]


async def test_what_waits_is_bounded(h: Harness) -> None:
    alice, bob, _ = await live(h)
    await h.lose(bob)
    for i in range(5):  # recovery_max_events
        assert (await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": {**CANDIDATE, "n": i}}))["ok"]
    ack = await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE}, ack=True)
    assert ack == {"ok": False, "code": "PEER_QUEUE_FULL",
                   "message": "The other party is reconnecting and too much is waiting for it"}
    await h.recover(bob)
    assert [p["candidate"]["n"] for e, p in h.take(bob) if e == "ice:candidate"] == [0, 1, 2, 3, 4]


async def resume(h: Harness, token: str, user_id: str = "bob") -> tuple[Session, dict[str, Any]]:
    new = h.connect()
    ack = await h.emit(new, "user:join", {"userId": user_id, "resumeToken": token})
    return new, ack


async def test_resume_with_the_token_from_a_new_connection(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    token = token_of(h, bob)
    await h.lose(bob)
    h.take(alice)
    await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE})
    bob2, ack = await resume(h, token)
    assert ack == {"ok": True, "userId": "bob", "socketId": bob2.socket_id, "resumed": True}
    got = h.take(bob2)
    assert got[0] == ("user:joined", {
        "userId": "bob", "socketId": bob2.socket_id, "resumeToken": TOKEN, "resumed": True,
        "call": {"callId": call_id, "peer": "alice", "role": "callee", "state": "connecting", "callType": "video"},
    })
    assert got[0][1]["resumeToken"] != token  # a new secret for the new connection
    assert [e for e, _ in got[1:]] == ["ice:candidate", "call:reconnected"]
    assert h.take(alice) == [("call:reconnected", {"callId": call_id, "userId": "bob"})]
    # the call now reaches bob on his new connection
    await h.emit(alice, "ice:candidate", {"to": "bob", "candidate": CANDIDATE})
    assert [e for e, _ in h.take(bob2)] == ["ice:candidate"]
    assert (await h.emit(bob2, "call:end", {"callId": call_id}))["ok"]
    assert h.service.observe.graces.get("returned") == 1


async def test_resume_while_the_old_connection_still_looks_alive(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    token = token_of(h, bob)
    bob2, ack = await resume(h, token)  # the server has not noticed the old one went (half-open)
    assert ack["resumed"] is True
    assert h.disconnected == [bob.socket_id]  # the old connection is let go, and that ends nothing
    assert h.take(alice) == [("call:reconnected", {"callId": call_id, "userId": "bob"})]
    assert h.registry.calls[call_id].callee_socket == bob2.socket_id


async def test_a_wrong_token_or_none_is_a_take_over(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    h.take(alice)
    bob2, ack = await resume(h, "not-the-token-not-the-token")
    assert ack == {"ok": True, "userId": "bob", "socketId": bob2.socket_id}
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "replaced"})]
    assert h.service.graces == {}


async def test_a_token_after_the_grace_is_a_plain_join(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    _, bob, _ = await live(h)
    token = token_of(h, bob)
    await h.lose(bob)
    await trio.sleep(GRACE + 1)
    bob2, ack = await resume(h, token)
    assert "resumed" not in ack
    assert h.take(bob2) == [("user:joined", {"userId": "bob", "socketId": bob2.socket_id, "resumeToken": TOKEN})]


async def test_both_parties_away(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    await trio.sleep(1)
    await h.lose(alice)
    await h.recover(alice)
    # alice missed bob's reconnecting notice? No: it was sent before she went. She gets reconnected.
    assert [e for e, _ in h.take(alice)] == ["call:reconnecting", "call:reconnected"]
    await trio.sleep(GRACE)  # bob's grace ends first: the call ends, alice is told
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "disconnected"})]
    assert list(h.registry.users) == ["alice"] and h.service.graces == {} and h.registry.calls == {}


async def test_shutdown_while_away(h: Harness) -> None:
    alice, bob, call_id = await live(h)
    await h.lose(bob)
    h.take(alice)
    await h.service.shutdown()
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": None, "reason": "server_shutdown"})]
    await h.leave(alice)
    # the detached socket's end comes with the server's shutdown
    await h.service.closed(bob)
    assert h.idle() and h.service.graces == {}


def test_resume_token_is_bounded() -> None:
    from callbox.signalling._payloads import Join

    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"userId": "bob", "resumeToken": "' + b"x" * 65 + b'"}', type=Join)
