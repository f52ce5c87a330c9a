"""The user and call state machines: every transition in the tables, every refused one, and the
registry steps that move them (with the error code each refusal answers)."""

from __future__ import annotations

import itertools

import pytest

from callbox.signalling import (
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    ErrorCode,
    MemoryRegistry,
    Outcome,
    Role,
    SignallingError,
    TransitionError,
    UserEvent,
    UserState,
)
from callbox.signalling._state import call_allows, end_event, transition

U, UE = UserState, UserEvent
C, CE = CallState, CallEvent

# The protocol's rules restated edge by edge, independently of the tables they check.
USER_EDGES = {
    (U.OFFLINE, UE.JOIN): U.ONLINE,
    (U.ONLINE, UE.CALL_START): U.IN_CALL,
    (U.IN_CALL, UE.CALL_END): U.ONLINE,
    (U.ONLINE, UE.LEAVE): U.OFFLINE,
    (U.IN_CALL, UE.DETACH): U.RECONNECTING,
    (U.RECONNECTING, UE.RETURN): U.IN_CALL,
    (U.RECONNECTING, UE.CALL_END): U.ONLINE,
}
LIVE = (C.RINGING, C.CONNECTING, C.CONNECTED)
CALL_EDGES = {
    (C.INITIATING, CE.RING): C.RINGING,
    (C.RINGING, CE.ACCEPT): C.CONNECTING,
    (C.RINGING, CE.MERGE): C.CONNECTING,
    (C.RINGING, CE.REJECT): C.ENDING,
    (C.CONNECTING, CE.ANSWER): C.CONNECTED,
    **{(s, e): s for s in LIVE for e in (CE.OFFER, CE.CANDIDATE)},
    (C.RINGING, CE.ANSWER): C.RINGING,
    (C.CONNECTED, CE.ANSWER): C.CONNECTED,
    (C.INITIATING, CE.CANCEL): C.ENDING,
    (C.RINGING, CE.CANCEL): C.ENDING,
    **{(s, CE.HANGUP): C.ENDING for s in (C.INITIATING, *LIVE)},
    (C.RINGING, CE.TIMEOUT): C.ENDING,
    **{(s, CE.DROP): C.ENDING for s in (C.INITIATING, *LIVE)},
    (C.ENDING, CE.CLOSE): C.ENDED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(UserState, UserEvent)))
def test_user_machine(state: UserState, event: UserEvent) -> None:
    expected = USER_EDGES.get((state, event))
    if expected is None:
        with pytest.raises(TransitionError):
            transition(USER_TRANSITIONS, state, event)
    else:
        assert transition(USER_TRANSITIONS, state, event) is expected


@pytest.mark.parametrize(("state", "event"), list(itertools.product(CallState, CallEvent)))
def test_call_machine(state: CallState, event: CallEvent) -> None:
    expected = CALL_EDGES.get((state, event))
    if expected is None:
        with pytest.raises(TransitionError, match=f"{state.name} has no transition on {event.name}"):
            transition(CALL_TRANSITIONS, state, event)
    else:
        assert transition(CALL_TRANSITIONS, state, event) is expected


def test_who_may_fire_what() -> None:
    callee_only = {CE.ACCEPT, CE.REJECT, CE.MERGE}
    server_only = {CE.RING, CE.TIMEOUT, CE.DROP, CE.CLOSE}
    for state, event, role in itertools.product(CallState, CallEvent, [*Role, None]):
        in_table = (state, event) in CALL_EDGES
        if event in callee_only:
            allowed = role is Role.CALLEE
        elif event in server_only:
            allowed = role is Role.SERVER
        elif event is CE.CANCEL:
            allowed = role is Role.CALLER
        else:  # relays and hang-up: either party
            allowed = role in (Role.CALLER, Role.CALLEE)
        assert call_allows(state, event, role) is (in_table and allowed), (state, event, role)


def test_call_end_is_a_cancel_only_from_the_caller_before_an_answer() -> None:
    for state in CallState:
        early = state in (C.INITIATING, C.RINGING)
        assert end_event(state, Role.CALLER) is (CE.CANCEL if early else CE.HANGUP)
        assert end_event(state, Role.CALLEE) is CE.HANGUP


# -- the registry moves the machines --------------------------------------------------------------


async def _two_online(reg: MemoryRegistry) -> None:
    await reg.join("alice", "sa")
    await reg.join("bob", "sb")


async def _refused(code: ErrorCode, coro: object) -> SignallingError:
    with pytest.raises(SignallingError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code is code
    return info.value


async def test_registry_call_lifecycle_moves_both_machines() -> None:
    reg = MemoryRegistry()
    await _two_online(reg)
    call = await reg.initiate("alice", "sa", "bob", "video", "c1")
    assert call.state is C.INITIATING
    assert {u.id: (u.state, u.call_id) for u in reg.users.values()} == {
        "alice": (U.IN_CALL, "c1"),
        "bob": (U.IN_CALL, "c1"),
    }
    # relays wait for the ring
    await _refused(ErrorCode.NOT_IN_CALL, reg.relay("alice", "sa", "bob", CE.OFFER))
    assert (ringing := await reg.ring("c1")) is not None and ringing.state is C.RINGING
    assert await reg.ring("c1") is None  # once
    assert (await reg.relay("alice", "sa", "bob", CE.OFFER)).state is C.RINGING
    assert (await reg.accept("c1", "bob", "sb", "alice")).call.state is C.CONNECTING
    assert (await reg.relay("bob", "sb", "alice", CE.CANDIDATE)).state is C.CONNECTING
    assert (await reg.relay("bob", "sb", "alice", CE.ANSWER)).state is C.CONNECTED
    assert (await reg.relay("alice", "sa", "bob", CE.OFFER)).state is C.CONNECTED
    ended = await reg.hang_up("c1", "bob", "sb")
    assert (ended.outcome, ended.by, ended.call.state) == (Outcome.HANGUP, "bob", C.CONNECTED)
    assert reg.calls == {}
    assert {u.state for u in reg.users.values()} == {U.ONLINE}
    assert await reg.leave("alice", "sa") is None
    assert await reg.leave("bob", "sb") is None
    assert await reg.counts() == (0, 0)


async def test_registry_refusals() -> None:
    reg = MemoryRegistry()
    await reg.join("alice", "sa")
    await _refused(ErrorCode.NOT_JOINED, reg.initiate("carol", "sc", "alice", "audio", "x"))
    await _refused(ErrorCode.NOT_JOINED, reg.initiate("alice", "other-socket_id", "bob", "audio", "x"))
    await _refused(ErrorCode.INVALID_TARGET, reg.initiate("alice", "sa", "alice", "audio", "x"))
    await _refused(ErrorCode.USER_OFFLINE, reg.initiate("alice", "sa", "bob", "audio", "x"))
    await reg.join("bob", "sb")
    await reg.join("carol", "sc")
    await reg.initiate("alice", "sa", "bob", "audio", "c1")
    await reg.ring("c1")
    await _refused(ErrorCode.ALREADY_IN_CALL, reg.initiate("alice", "sa", "carol", "audio", "x"))
    await _refused(ErrorCode.USER_BUSY, reg.initiate("carol", "sc", "bob", "audio", "x"))
    # only the callee accepts or rejects, with the right caller if it names one
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.accept("c1", "alice", "sa", None))
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.accept("c1", "carol", "sc", None))
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.accept("c1", "bob", "sb", "carol"))
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.reject("c1", "alice", "sa", None))
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.accept("nope", "bob", "sb", None))
    # relays: unknown target, a stranger, yourself
    error = await _refused(ErrorCode.NOT_IN_CALL, reg.relay("alice", "sa", "zed", CE.OFFER))
    assert error.message == "User not found"
    await _refused(ErrorCode.NOT_IN_CALL, reg.relay("alice", "sa", "carol", CE.OFFER))
    await _refused(ErrorCode.NOT_IN_CALL, reg.relay("carol", "sc", "alice", CE.OFFER))
    await _refused(ErrorCode.NOT_IN_CALL, reg.relay("alice", "sa", "alice", CE.OFFER))
    # call:end of a call you are not in
    error = await _refused(ErrorCode.CALL_NOT_FOUND, reg.hang_up("c1", "carol", "sc"))
    assert error.message == "Call not found"
    await reg.accept("c1", "bob", "sb", "alice")
    # accepted: no second accept, no reject, no timeout
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.accept("c1", "bob", "sb", None))
    await _refused(ErrorCode.CALL_NOT_FOUND, reg.reject("c1", "bob", "sb", None))
    assert await reg.time_out("c1") is None
    assert (await reg.call("c1")) is not None


async def test_registry_endings() -> None:
    reg = MemoryRegistry()
    await _two_online(reg)

    async def ringing(call_id: str) -> None:
        await reg.initiate("alice", "sa", "bob", "audio", call_id)
        await reg.ring(call_id)

    await ringing("reject")
    ended = await reg.reject("reject", "bob", "sb", "alice")
    assert (ended.outcome, ended.by) == (Outcome.REJECTED, "bob")
    await ringing("cancel")
    ended = await reg.hang_up("cancel", "alice", "sa")
    assert (ended.outcome, ended.by) == (Outcome.CANCELLED, "alice")
    await ringing("callee-ends")
    ended = await reg.hang_up("callee-ends", "bob", "sb")
    assert (ended.outcome, ended.by) == (Outcome.HANGUP, "bob")
    await ringing("timeout")
    ended_or_none = await reg.time_out("timeout")
    assert ended_or_none is not None and (ended_or_none.outcome, ended_or_none.by) == (Outcome.TIMEOUT, None)
    assert await reg.time_out("timeout") is None
    await ringing("shutdown")
    assert [(e.outcome, e.by) for e in await reg.end_all(Outcome.SERVER_SHUTDOWN)] == [(Outcome.SERVER_SHUTDOWN, None)]
    assert reg.calls == {} and {u.state for u in reg.users.values()} == {U.ONLINE}
    # a call that was never rung can still be dropped (its caller left meanwhile)
    await reg.initiate("alice", "sa", "bob", "audio", "initiating")
    ended_or_none = await reg.leave("alice", "sa")
    assert ended_or_none is not None and (ended_or_none.outcome, ended_or_none.by) == (Outcome.DISCONNECTED, "alice")
    assert ended_or_none.call.state is C.INITIATING
    assert list(reg.users) == ["bob"] and reg.users["bob"].state is U.ONLINE


async def test_registry_take_over() -> None:
    reg = MemoryRegistry()
    await _two_online(reg)
    assert (await reg.join("alice", "sa")).replaced_socket is None  # the same session again: nothing
    await reg.initiate("alice", "sa", "bob", "audio", "c1")
    await reg.ring("c1")
    joined = await reg.join("alice", "sa2")
    assert joined.replaced_socket == "sa"
    assert joined.ended is not None and (joined.ended.outcome, joined.ended.by) == (Outcome.REPLACED, "alice")
    assert joined.user == reg.users["alice"]
    alice = reg.users["alice"]
    devices = [(d.socket_id, d.away) for d in alice.devices]
    assert (alice.state, alice.call_id, devices) == (U.ONLINE, None, [("sa2", False)])
    assert reg.users["bob"].state is U.ONLINE and reg.calls == {}
    # the replaced session's own leave is too late to matter
    assert await reg.leave("alice", "sa") is None
    assert "alice" in reg.users
    # and it can no longer act as alice
    await _refused(ErrorCode.NOT_JOINED, reg.initiate("alice", "sa", "bob", "audio", "x"))
