"""The signalling service driven directly (no sockets): what each session receives, byte for byte,
for every request, refusal and timer. Ring timeouts run on trio's autojump clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import callbox
from _signalling import RING, TOKEN, Harness
from callbox.config import parse_args
from callbox.signalling import ErrorCode, _service
from callbox.signalling._errors import SignallingError
from callbox.signalling._payloads import Answer, Candidate, Initiate, Offer


@pytest.fixture
def h(nursery: trio.Nursery) -> Iterator[Harness]:
    yield Harness(nursery)


def err(code: ErrorCode, message: str | None = None) -> Any:
    return _ErrorMatch(code, message)


class _ErrorMatch:
    def __init__(self, code: ErrorCode, message: str | None) -> None:
        self.code, self.message = code, message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, tuple)
            and other[0] == "error"
            and other[1]["code"] == self.code.value
            and (self.message is None or other[1]["message"] == self.message)
        )

    def __repr__(self) -> str:
        return f"error({self.code}, {self.message!r})"


# -- a whole call -----------------------------------------------------------------------------------


async def test_complete_call(h: Harness) -> None:
    alice = h.connect()
    assert await h.emit(alice, "user:join", {"userId": "alice"}) == {"ok": True, "userId": "alice", "socketId": "s1"}
    assert h.take(alice) == [("user:joined", {"userId": "alice", "socketId": "s1", "resumeToken": TOKEN})]
    bob = await h.join("bob")

    ack = await h.emit(alice, "call:initiate", {"to": "bob", "callType": "video"})
    call_id = ack["callId"]
    assert ack == {"ok": True, "callId": call_id} and len(call_id) == 22
    assert h.take(bob) == [("call:incoming", {"from": "alice", "callType": "video", "callId": call_id})]
    assert h.take(alice) == [("call:initiated", {"callId": call_id, "to": "bob"})]
    assert list(h.service.timers) == [call_id]

    assert await h.emit(bob, "call:accept", {"callId": call_id, "from": "alice"}) == {"ok": True, "callId": call_id}
    accepted = ("call:accepted", {"callId": call_id, "by": "bob"})
    assert h.take(alice) == [accepted] and h.take(bob) == [accepted]
    assert h.service.timers == {}

    # Bodies go through byte for byte: odd spacing, key order, unicode escapes, nothing re-encoded.
    sdp = b'{ "type":"offer",  "sdp":"v=0\\r\\no=- 1 2 IN IP4 127.0.0.1\\r\\n\\u00e9" }'
    await h.emit(alice, "call:offer", b'{"to":"bob","offer":' + sdp + b"}")
    cid = call_id.encode()
    relayed = b'{"offer":' + sdp + b',"from":"alice","callType":"video","callId":"' + cid + b'"}'
    assert h.take_raw(bob) == [("call:offer", relayed)]
    answer = b'{"sdp":"v=0\\r\\n","type":"answer"}'
    await h.emit(bob, "call:answer", b'{"answer":' + answer + b',"to":"alice"}')
    assert h.take_raw(alice) == [("call:answer", b'{"answer":' + answer + b',"from":"bob","callId":"' + cid + b'"}')]
    candidate = b'{"candidate":"candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}'
    await h.emit(alice, "ice:candidate", b'{"to":"bob","candidate":' + candidate + b"}")
    await h.emit(bob, "ice:candidate", {"to": "alice", "candidate": None})  # end of candidates
    relayed = b'{"candidate":' + candidate + b',"from":"alice","callId":"' + cid + b'"}'
    assert h.take_raw(bob) == [("ice:candidate", relayed)]
    assert h.take(alice) == [("ice:candidate", {"candidate": None, "from": "bob", "callId": call_id})]
    assert (await h.registry.call(call_id)).state.name == "CONNECTED"  # type: ignore[union-attr]

    assert await h.emit(bob, "call:end", {"callId": call_id}) == {"ok": True, "callId": call_id}
    ended = ("call:ended", {"callId": call_id, "by": "bob", "reason": "hangup"})
    assert h.take(alice) == [ended] and h.take(bob) == [ended]
    await h.leave(alice)
    await h.leave(bob)
    assert h.idle()


async def test_offer_call_type(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.live_call(alice, bob)
    await h.emit(alice, "call:offer", {"to": "bob", "offer": {"type": "offer", "sdp": "x"}})
    await h.emit(alice, "call:offer", {"to": "bob", "offer": {"type": "offer", "sdp": "y"}, "callType": "audio"})
    assert [body["callType"] for _, body in h.take(bob)] == ["video", "audio"]
    assert (await h.registry.call(call_id)) is not None


async def test_reject(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.ringing_call(alice, bob)
    assert await h.emit(bob, "call:reject", {"callId": call_id, "from": "alice"}) == {"ok": True, "callId": call_id}
    rejected = ("call:rejected", {"callId": call_id, "by": "bob"})
    assert h.take(alice) == [rejected] and h.take(bob) == [rejected]
    assert h.registry.calls == {} and h.service.timers == {}
    # the call is gone: a late accept is refused
    await h.emit(bob, "call:accept", {"callId": call_id})
    assert h.take(bob) == [err(ErrorCode.CALL_NOT_FOUND, "Call not found or expired")]


async def test_cancel_while_ringing(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.ringing_call(alice, bob)
    await h.emit(alice, "call:end", {"callId": call_id})
    ended = ("call:ended", {"callId": call_id, "by": "alice", "reason": "cancelled"})
    assert h.take(alice) == [ended] and h.take(bob) == [ended]
    assert h.service.timers == {}


async def test_ring_timeout(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    start = trio.current_time()
    call_id = await h.ringing_call(alice, bob)
    await trio.sleep(RING - 0.1)  # virtual (autojump), as every sleep in this module
    assert h.take(alice) == [] and h.take(bob) == []
    await trio.sleep(0.2)
    timeout = ("call:timeout", {"callId": call_id})
    assert h.take(alice) == [timeout] and h.take(bob) == [timeout]
    assert h.registry.calls == {} and h.service.timers == {}
    assert trio.current_time() - start == pytest.approx(RING + 0.1)
    # both are free again
    await h.emit(bob, "call:accept", {"callId": call_id})
    assert h.take(bob) == [err(ErrorCode.CALL_NOT_FOUND)]
    assert (await h.emit(bob, "call:initiate", {"to": "alice", "callType": "audio"}))["ok"]


@pytest.mark.parametrize("how", ["accept", "reject", "cancel", "callee-hangs-up", "caller-leaves", "callee-leaves"])
async def test_ringing_that_ends_stops_its_timer(
    h: Harness, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.ringing_call(alice, bob)
    await trio.sleep(RING / 2)
    if how == "accept":
        await h.emit(bob, "call:accept", {"callId": call_id})
    elif how == "reject":
        await h.emit(bob, "call:reject", {"callId": call_id})
    elif how == "cancel":
        await h.emit(alice, "call:end", {"callId": call_id})
    elif how == "callee-hangs-up":
        await h.emit(bob, "call:end", {"callId": call_id})
    else:
        await h.leave(alice if how == "caller-leaves" else bob)
    assert h.service.timers == {}
    await trio.testing.wait_all_tasks_blocked()
    # the timer task is gone, not merely disarmed: nothing of the service is left in the nursery
    assert h.nursery.child_tasks == set()
    h.take(alice)
    h.take(bob)
    await trio.sleep(RING * 2)
    assert h.take(alice) == [] and h.take(bob) == []
    assert (await h.registry.call(call_id) is not None) is (how == "accept")


async def test_many_calls_time_out_on_their_own_deadlines(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    pairs = [(await h.join(f"a{i}"), await h.join(f"b{i}")) for i in range(5)]
    calls, rang = [], []
    for caller, callee in pairs:
        calls.append(await h.ringing_call(caller, callee))
        rang.append(trio.current_time())
        await trio.sleep(1)
    assert len(h.service.timers) == 5
    await h.emit(pairs[2][1], "call:accept", {"callId": calls[2]})
    h.take(pairs[2][0])
    seen = []
    for i, (caller, _) in enumerate(pairs):
        if i == 2:
            continue
        await trio.sleep_until(rang[i] + RING - 0.01)
        assert h.take(caller) == []  # not before its own deadline
        await trio.sleep_until(rang[i] + RING + 0.01)
        seen.append(h.take(caller))
    assert seen == [[("call:timeout", {"callId": calls[i]})] for i in (0, 1, 3, 4)]
    assert h.service.timers == {} and list(h.registry.calls) == [calls[2]]


async def test_a_shorter_ring_timeout_rings_first_and_the_timers_task_ends_with_the_ringing(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    # The ring timers are one heap and one task (while any call rings): a call set to ring for
    # less time than one already ringing (the setting changed meanwhile) still times out first.
    (a, b), (c, d) = [(await h.join(f"a{i}"), await h.join(f"b{i}")) for i in range(2)]
    t0 = trio.current_time()
    first = await h.ringing_call(a, b)
    h.config = msgspec.structs.replace(h.config, ring_timeout=5.0)
    second = await h.ringing_call(c, d)
    await trio.sleep_until(t0 + 5 + 0.01)
    assert h.take(c) == [("call:timeout", {"callId": second})] and h.take(a) == []
    await trio.sleep_until(t0 + RING + 0.01)
    assert h.take(a) == [("call:timeout", {"callId": first})]
    await trio.testing.wait_all_tasks_blocked()
    assert h.service.timers == {} and h.nursery.child_tasks == set()
    # A call answered before its deadline stops its timer; the task ends with the last one.
    third = await h.ringing_call(a, b)
    assert len(h.nursery.child_tasks) == 1
    await h.emit(b, "call:accept", {"callId": third})
    await trio.testing.wait_all_tasks_blocked()
    assert h.service.timers == {} and h.nursery.child_tasks == set()


# -- refusals -------------------------------------------------------------------------------------


EVERY_EVENT = ["call:initiate", "call:accept", "call:reject", "call:offer", "call:answer", "ice:candidate", "call:end"]


@pytest.mark.parametrize("event", EVERY_EVENT)
async def test_nothing_before_join(h: Harness, event: str) -> None:
    s = h.connect()
    ack = await h.emit(s, event, {"to": "bob", "callId": "x", "callType": "audio"})
    assert ack == {"ok": False, "code": "NOT_JOINED", "message": "Join first with user:join"}
    assert h.take(s) == [("error", {"message": "Join first with user:join", "code": "NOT_JOINED"})]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (..., "User ID is required"),
        ({}, "User ID is required"),
        ({"userId": None}, "User ID is required"),
        ({"userId": ""}, "User ID is required"),
        ("alice", "User ID is required"),
        ({"userId": 42}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
        ({"userId": "a" * 129}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
        ({"userId": "al ice"}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
        ({"userId": "alice\n"}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
        ({"userId": "alicé"}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
        ({"userId": "a/b"}, "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"),
    ],
)
async def test_join_validation(h: Harness, payload: Any, message: str) -> None:
    s = h.connect()
    ack = await h.emit(s, "user:join", payload)
    assert ack == {"ok": False, "code": "INVALID_PAYLOAD", "message": message}
    assert s.user_id is None and h.registry.users == {}


@pytest.mark.parametrize(
    "user_id", ["a", "a" * 128, "Alice_Smith-1.2", "alice@example.com", "sip:bob@host", "+15551234567"]
)
async def test_join_accepts_user_ids(h: Harness, user_id: str) -> None:
    s = h.connect()
    assert (await h.emit(s, "user:join", {"userId": user_id}))["ok"]
    assert [d.socket_id for d in h.registry.users[user_id].devices] == [s.socket_id]


async def test_join_twice(h: Harness) -> None:
    s = await h.join("alice")
    assert (await h.emit(s, "user:join", {"userId": "alice"}))["ok"]  # the same id again: fine
    assert h.take(s) == [("user:joined", {"userId": "alice", "socketId": s.socket_id, "resumeToken": TOKEN})]
    ack = await h.emit(s, "user:join", {"userId": "bob"})
    assert ack["code"] == "ALREADY_JOINED" and list(h.registry.users) == ["alice"]


@pytest.mark.parametrize(
    ("event", "payload", "fragment"),
    [
        ("call:initiate", {"to": "bob"}, "missing required field `callType`"),
        ("call:initiate", {"to": "bob", "callType": "fax"}, "Invalid enum value 'fax' - at `$.callType`"),
        ("call:initiate", {"to": "b b", "callType": "audio"}, "at `$.to`"),
        ("call:initiate", [], "Expected `object`, got `array`"),
        ("call:accept", {}, "missing required field `callId`"),
        ("call:accept", {"callId": "x" * 65}, "length <= 64"),
        ("call:accept", {"callId": "c", "from": 1}, "at `$.from`"),
        ("call:offer", {"to": "bob"}, "missing required field `offer`"),
        ("call:offer", {"to": "bob", "offer": None}, "offer is required"),
        ("call:answer", {"to": "bob", "answer": None}, "answer is required"),
        ("call:offer", {"to": "bob", "offer": {}, "callType": "x"}, "at `$.callType`"),
        ("ice:candidate", {"to": "bob"}, "missing required field `candidate`"),
        ("call:end", {"callId": 5}, "Expected `str`, got `int` - at `$.callId`"),
        ("call:end", ..., "A payload object is required"),
        ("call:end", "c1", "Expected `object`, got `str`"),
        ("call:dance", {}, "Unknown event 'call:dance'"),
        ("x" * 100, {}, "Unknown event '" + "x" * 64 + "...'"),
    ],
)
async def test_malformed_payloads(h: Harness, event: str, payload: Any, fragment: str) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    await h.live_call(alice, bob)
    ack = await h.emit(alice, event, payload)
    assert ack["ok"] is False and ack["code"] == "INVALID_PAYLOAD" and fragment in ack["message"], ack
    assert h.take(alice) == [err(ErrorCode.INVALID_PAYLOAD, ack["message"])]
    assert h.take(bob) == []


@pytest.mark.parametrize(
    ("event", "body"),
    [("call:offer", {"offer": {}}), ("call:answer", {"answer": {}}), ("ice:candidate", {"candidate": None}),
     ("call:initiate", {"callType": "audio"})],
)
async def test_the_user_id_a_payload_goes_to_is_checked_every_time(h: Harness, event: str, body: Any) -> None:
    # Ids that passed the pattern are remembered (the payload is then decoded without it): one that
    # never passed is refused however often it comes, before and after valid ones.
    alice, bob = await h.join("alice"), await h.join("bob")
    await h.live_call(alice, bob)
    for to in ["b b", "bob", "bob\n", "bob", "b\u00f3b", "bob", "b b"]:
        ack = await h.emit(alice, event, {"to": to, **body})
        if to == "bob":
            assert ack.get("code") != "INVALID_PAYLOAD", ack
        else:
            assert ack["code"] == "INVALID_PAYLOAD" and "matching regex" in ack["message"], (to, ack)


@pytest.mark.parametrize("kind", [Initiate, Offer, Answer, Candidate])
@pytest.mark.parametrize("payload", [
    {"to": "bob", "callType": "audio", "offer": {"sdp": "v=0"}, "answer": {}, "candidate": None},
    {"to": "bob", "callType": "video", "offer": None, "answer": [1], "candidate": {"c": 1}, "extra": 1},
    {"to": "bob"},
    {"to": "bob", "callType": "fax", "offer": 1, "answer": "a", "candidate": True},
    {"to": "x" * 129, "callType": "audio", "offer": {}, "answer": {}, "candidate": None},
    {"to": 5, "callType": "audio", "offer": {}, "answer": {}, "candidate": None},
    {"callType": "audio", "offer": {}, "answer": {}, "candidate": None},
])
def test_the_decoders_without_the_pattern_read_as_the_payload_types_do(kind: type[Any], payload: Any) -> None:
    # With a valid id (or none at all), the decoder that leaves the pattern out reads (or refuses)
    # every payload exactly as the type itself does.
    raw = msgspec.json.encode(payload)

    def outcome(decoder: msgspec.json.Decoder[Any]) -> Any:
        try:
            return msgspec.structs.asdict(decoder.decode(raw))
        except msgspec.ValidationError as exc:
            return str(exc)

    assert outcome(_service._to_decoders[kind]) == outcome(_service._decoders[kind])


def test_the_user_ids_remembered_as_checked_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_service, "MAX_CHECKED_USER_IDS", 3)
    monkeypatch.setattr(_service, "_checked_user_ids", set())

    def candidate(to: str) -> Any:
        return _service._payload([msgspec.Raw(msgspec.json.encode({"to": to, "candidate": None}))], Candidate)

    for n, to in enumerate(["a", "b", "c"], 1):
        assert candidate(to).to == to and len(_service._checked_user_ids) == n
    assert candidate("a").to == "a" and len(_service._checked_user_ids) == 3  # known: nothing added
    assert candidate("d").to == "d" and _service._checked_user_ids == {"d"}  # the fourth: the rest forgotten
    with pytest.raises(SignallingError, match="matching regex"):
        candidate("a a")
    assert _service._checked_user_ids == {"d"}


async def test_binary_payload_is_refused(h: Harness) -> None:
    s = await h.join("alice")
    result = await h.service.handle(s, "call:end", [{"callId": b"\x00"}])
    assert result.ok is False and result.code == "INVALID_PAYLOAD"


async def test_sizes_are_bounded(nursery: trio.Nursery) -> None:
    h = Harness(nursery, callbox.Config(max_sdp_bytes=1000, max_candidate_bytes=200))
    alice, bob = await h.join("alice"), await h.join("bob")
    await h.live_call(alice, bob)
    fits = {"type": "offer", "sdp": "x" * (1000 - len('{"type":"offer","sdp":""}'))}
    assert len(msgspec.json.encode(fits)) == 1000
    assert (await h.emit(alice, "call:offer", {"to": "bob", "offer": fits}))["ok"]
    too_big = {"type": "offer", "sdp": "x" * 1000}
    ack = await h.emit(alice, "call:offer", {"to": "bob", "offer": too_big})
    assert ack["message"] == "offer is larger than 1000 bytes"
    assert (await h.emit(bob, "call:answer", {"to": "alice", "answer": too_big}))["code"] == "INVALID_PAYLOAD"
    candidate = {"candidate": "c" * 200}
    assert (await h.emit(bob, "ice:candidate", {"to": "alice", "candidate": candidate}))["message"] == (
        "candidate is larger than 200 bytes"
    )
    assert [event for event, _ in h.take(bob)] == ["call:offer", "error", "error"]


async def test_initiate_refusals(h: Harness) -> None:
    alice, bob, carol = await h.join("alice"), await h.join("bob"), await h.join("carol")
    not_available = "User not available"
    cases = [
        (alice, "alice", "INVALID_TARGET", "You cannot call yourself"),
        (alice, "dave", "USER_OFFLINE", not_available),
    ]
    for who, to, code, message in cases:
        ack = await h.emit(who, "call:initiate", {"to": to, "callType": "audio"})
        assert ack == {"ok": False, "code": code, "message": message}
    await h.ringing_call(alice, bob)
    ack = await h.emit(carol, "call:initiate", {"to": "bob", "callType": "audio"})
    assert ack == {"ok": False, "code": "USER_BUSY", "message": not_available}
    ack = await h.emit(carol, "call:initiate", {"to": "alice", "callType": "audio"})
    assert ack["code"] == "USER_BUSY"
    ack = await h.emit(bob, "call:initiate", {"to": "carol", "callType": "audio"})
    assert ack["code"] == "ALREADY_IN_CALL"
    assert h.take(carol) == [err(ErrorCode.USER_BUSY)] * 2
    assert len(h.registry.calls) == 1


async def test_relays_only_between_the_parties(h: Harness) -> None:
    alice, bob, carol = await h.join("alice"), await h.join("bob"), await h.join("carol")
    offer = {"type": "offer", "sdp": "v=0"}
    # not in any call
    ack = await h.emit(alice, "call:offer", {"to": "bob", "offer": offer})
    assert ack == {"ok": False, "code": "NOT_IN_CALL", "message": "You are not in a call with this user"}
    ack = await h.emit(alice, "ice:candidate", {"to": "nobody", "candidate": None})
    assert ack == {"ok": False, "code": "NOT_IN_CALL", "message": "User not found"}
    await h.live_call(alice, bob)
    relays: list[tuple[str, dict[str, Any]]] = [("call:offer", {"offer": offer}), ("call:answer", {"answer": offer})]
    relays.append(("ice:candidate", {"candidate": None}))
    for sender, to in [(carol, "alice"), (alice, "carol"), (alice, "alice"), (carol, "carol")]:
        for event, body in relays:
            ack = await h.emit(sender, event, {"to": to, **body})
            assert ack["code"] == "NOT_IN_CALL", (sender.user_id, to, event)
    assert h.take(bob) == [] and [e for e, _ in h.take(alice) if e != "error"] == []
    assert all(e == "error" for e, _ in h.take(carol))


async def test_call_end_of_a_call_you_are_not_in(h: Harness) -> None:
    alice, bob, carol = await h.join("alice"), await h.join("bob"), await h.join("carol")
    call_id = await h.live_call(alice, bob)
    for call in (call_id, "unknown"):
        assert await h.emit(carol, "call:end", {"callId": call}) == {
            "ok": False, "code": "CALL_NOT_FOUND", "message": "Call not found"
        }
    assert h.take(alice) == [] and h.take(bob) == []


async def test_acked_refusal_is_not_also_an_error_event(h: Harness) -> None:
    s = h.connect()
    ack = await h.emit(s, "call:end", {"callId": "x"}, ack=True)
    assert ack["code"] == "NOT_JOINED"
    assert h.take(s) == []


async def test_rate_limit(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    codes = []
    # ten attempts of every kind (offline callee, self, malformed, a real call and its cancel) ...
    for i in range(10):
        payload: Any = [{"to": "zed", "callType": "audio"}, {"to": "alice", "callType": "audio"}, {"to": 1}][i % 3]
        if i == 9:
            payload = {"to": "bob", "callType": "audio"}
        ack = await h.emit(alice, "call:initiate", payload)
        codes.append(ack.get("code", "ok"))
        if ack["ok"]:
            await h.emit(alice, "call:end", {"callId": ack["callId"]})
    assert "RATE_LIMITED" not in codes and codes[-1] == "ok"
    # ... leave none for the eleventh
    ack = await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"})
    assert ack == {"ok": False, "code": "RATE_LIMITED", "message": "Too many calls started, try again later"}
    # reconnecting does not refill the bucket
    await h.leave(alice)
    alice = await h.join("alice")
    assert (await h.emit(alice, "call:initiate", {"to": "bob", "callType": "audio"}))["code"] == "RATE_LIMITED"
    # others are not affected
    assert (await h.emit(bob, "call:initiate", {"to": "zed", "callType": "audio"}))["code"] == "USER_OFFLINE"
    # one token comes back every 6 s
    await trio.sleep(6.01)
    assert (await h.emit(alice, "call:initiate", {"to": "zed", "callType": "audio"}))["code"] == "USER_OFFLINE"
    assert (await h.emit(alice, "call:initiate", {"to": "zed", "callType": "audio"}))["code"] == "RATE_LIMITED"
    # and buckets that have refilled are forgotten
    await trio.sleep(120)
    await h.emit(bob, "call:initiate", {"to": "zed", "callType": "audio"})
    assert len(h.service.limiter) == 1


# -- sessions -------------------------------------------------------------------------------------


async def test_disconnect_mid_call(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.live_call(alice, bob)
    await h.leave(alice)
    assert h.take(bob) == [("call:ended", {"callId": call_id, "by": "alice", "reason": "disconnected"})]
    assert h.take(alice) == []  # gone: nothing was sent
    assert list(h.registry.users) == ["bob"] and h.registry.users["bob"].state.name == "ONLINE"
    await h.leave(bob)
    assert h.idle()


async def test_take_over(h: Harness) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.live_call(alice, bob)
    alice2 = h.connect()
    assert (await h.emit(alice2, "user:join", {"userId": "alice"}))["ok"]
    ended = ("call:ended", {"callId": call_id, "by": "alice", "reason": "replaced"})
    assert h.take(alice) == [
        ("error", {"message": "This user joined from another connection", "code": "SESSION_REPLACED"}),
        ended,
    ]
    assert h.disconnected == [alice.socket_id]
    assert h.take(bob) == [ended]
    assert h.take(alice2) == [("user:joined", {"userId": "alice", "socketId": alice2.socket_id, "resumeToken": TOKEN})]
    assert [d.socket_id for d in h.registry.users["alice"].devices] == [alice2.socket_id]
    # the new session can call at once
    assert (await h.emit(alice2, "call:initiate", {"to": "bob", "callType": "audio"}))["ok"]


async def test_take_over_while_ringing_stops_the_timer(h: Harness, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob = await h.join("alice"), await h.join("bob")
    call_id = await h.ringing_call(alice, bob)
    bob2 = h.connect()
    await h.emit(bob2, "user:join", {"userId": "bob"})
    assert h.take(alice) == [("call:ended", {"callId": call_id, "by": "bob", "reason": "replaced"})]
    assert h.service.timers == {}
    await trio.sleep(RING * 2)
    assert h.take(alice) == []


async def test_shutdown_ends_every_call(h: Harness) -> None:
    alice, bob, carol, dave = [await h.join(u) for u in ("alice", "bob", "carol", "dave")]
    live = await h.live_call(alice, bob)
    ringing = await h.ringing_call(carol, dave)
    await h.service.shutdown()
    assert h.take(alice) == h.take(bob) == [("call:ended", {"callId": live, "by": None, "reason": "server_shutdown"})]
    assert h.take(dave) == [("call:ended", {"callId": ringing, "by": None, "reason": "server_shutdown"})]
    assert h.registry.calls == {} and h.service.timers == {}


def test_limits_are_settings() -> None:
    config = parse_args(
        ["--max-sdp-bytes", "2048", "--max-candidate-bytes", "512", "--initiate-burst", "3"],
        {"CALLBOX_INITIATE_PER_MINUTE": "1.5"},
    )
    assert (config.max_sdp_bytes, config.max_candidate_bytes, config.initiate_burst, config.initiate_per_minute) == (
        2048, 512, 3, 1.5,
    )
    defaults = callbox.Config()
    assert (defaults.max_sdp_bytes, defaults.max_candidate_bytes) == (65536, 4096)
    assert (defaults.initiate_burst, defaults.initiate_per_minute, defaults.ring_timeout) == (10, 10.0, 30.0)
    with pytest.raises(callbox.ConfigError, match="max_sdp_bytes"):
        callbox.Config(max_sdp_bytes=10)
