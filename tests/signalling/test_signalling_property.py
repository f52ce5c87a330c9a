"""Random sequences of joins (and take-overs), calls, accepts, rejects, ends, relays, timeouts and
disconnects for a handful of users. After every step: no user is in two calls, every busy user has
exactly one live call (and the call has them), every ringing call has its one timer; after everyone
leaves, nothing is left: no user, no call, no timer, no task."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_signalling_service import RING, Harness

from callbox.signalling import CallState, UserState

USERS = ["u0", "u1", "u2", "u3"]
KINDS = ["join", "leave", "call", "call", "call", "accept", "accept", "reject", "end", "relay", "wait", "stray"]

steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, len(USERS) - 1),
        st.integers(0, len(USERS) - 1),
        st.booleans(),
    ),
    max_size=40,
)


def check(h: Harness, holders: dict[str, Any]) -> None:
    users, calls = h.registry.users, h.registry.calls
    # who holds each user id is what the sessions think
    assert {u: [s.socket_id] for u, s in holders.items()} == {u: [d.socket_id for d in rec.devices]
                                                              for u, rec in users.items()}
    in_calls: dict[str, list[str]] = {}
    for call in calls.values():
        assert call.state in (CallState.RINGING, CallState.CONNECTING, CallState.CONNECTED), call
        assert call.caller != call.callee
        for party in (call.caller, call.callee):
            in_calls.setdefault(party, []).append(call.id)
            assert call.sockets_of(party) == tuple(d.socket_id for d in users[party].devices)  # one device each
    for user in users.values():
        if user.state is UserState.IN_CALL:
            assert in_calls.get(user.id) == [user.call_id]  # exactly one live call, and it is theirs
        else:
            assert user.state is UserState.ONLINE and user.call_id is None and user.id not in in_calls
    assert all(len(ids) == 1 for ids in in_calls.values())  # nobody in two calls
    ringing = {c.id for c in calls.values() if c.state is CallState.RINGING}
    assert set(h.service.timers) == ringing


async def scenario(plan: list[tuple[str, int, int, bool]]) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        holders: dict[str, Any] = {}  # user id -> the session holding it
        seen_calls: list[str] = []
        for user in USERS:  # everyone starts online; "join" steps are take-overs, or come back after a leave
            holders[user] = await h.join(user)
        for kind, i, j, flag in plan:
            a, b = USERS[i], USERS[j]
            me = holders.get(a)
            if kind == "join":
                session = h.connect()
                ack = await h.emit(session, "user:join", {"userId": a})
                assert ack["ok"]
                holders[a] = session
            elif kind == "leave" and me is not None:
                await h.leave(holders.pop(a))
            elif kind == "call" and me is not None:
                ack = await h.emit(me, "call:initiate", {"to": b, "callType": "audio" if flag else "video"})
                if ack["ok"]:
                    seen_calls.append(ack["callId"])
            elif kind in ("accept", "reject", "end") and me is not None:
                rec = h.registry.users[a]
                # mostly the user's own call; sometimes any call ever seen (refused unless it fits)
                call_id = rec.call_id if flag or not seen_calls else seen_calls[j % len(seen_calls)]
                await h.emit(me, f"call:{kind}", {"callId": call_id or "none"})
            elif kind == "relay" and me is not None:
                relays: list[tuple[str, dict[str, Any]]] = [
                    ("call:offer", {"offer": {"sdp": "v=0"}}),
                    ("call:answer", {"answer": {}}),
                ]
                event, body = relays[flag]
                call = h.registry.calls.get(h.registry.users[a].call_id or "")
                # mostly to the partner, if any; else to anyone
                to = call.callee if call and j % 2 and a == call.caller else call.caller if call and j % 2 else b
                await h.emit(me, event, {"to": to, **body})
            elif kind == "wait":
                await trio.sleep(RING * (1.5 if flag else 0.3))  # virtual: past the ring timeout, or not
            elif kind == "stray":
                await h.emit(h.connect(), "call:end", {"callId": "x"})
            check(h, holders)
        for user in list(holders):
            await h.leave(holders.pop(user))
            check(h, holders)
        assert h.registry.users == {} and h.registry.calls == {} and h.service.timers == {}
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks == set()


@settings(max_examples=500, deadline=None)
@given(steps)
def test_random_sequences_keep_the_invariants(plan: list[tuple[str, int, int, bool]]) -> None:
    trio.run(scenario, plan, clock=trio.testing.MockClock(autojump_threshold=0))
