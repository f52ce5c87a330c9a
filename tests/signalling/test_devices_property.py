"""Several devices per user, and glare (issue 13), under random sequences: a Hypothesis state machine
driving the signalling service directly through the fake transport of ``_signalling.Harness``.

Three users (alice, bob, carol), ``max_devices`` 3, device ids d1..d4 (or none: the connection's
own id), a reconnect grace. Rules: a new connection joins (a new device, a reload of a device, a
device past the limit), a connection closes cleanly or is lost (and maybe recovered within its
grace), call:initiate (to anyone; and both directions in one tick: glare), call:accept,
call:reject, call:end (mostly on calls that mean something to that connection, else on any call
id), relays (offer, answer, candidate) to anyone, and virtual time passing (past ring timeouts and
graces, or not).

Each rule checks what the spec says of that request (the ack; who is told what, exactly); after
every step, whatever happened:

- at most one device of a user is in a call: a user has at most one ``call_id``, a call's
  ``caller_socket`` is a device of its caller, its ``callee_socket`` (None while it rings) a device
  of its callee, the devices it rings are devices of the callee;
- every device that was rung (got ``call:incoming``) is told exactly once how the ringing ended for
  it (``call:accepted`` if it answered; ``call:ended`` answered_elsewhere, rejected_elsewhere,
  cancelled, disconnected, replaced, hangup; ``call:rejected``; ``call:timeout``), and the caller
  how the call ended, unless its connection went away meanwhile (then at most once);
- nothing leaks: a ring timer exactly for each ringing call, a grace only for a device still
  registered whose connection is gone (and every registered device is connected or in its
  grace), no call whose parties are gone, no deadline passed that did not fire;
- ``deviceId`` never leaves the server.

At the end everyone leaves and the graces pass: no user, call, timer or grace is left.

Below the machine, what it found, as plain examples.

Trio runs in a thread of its own for each example (the state machine is synchronous); its clock is
a ``MockClock`` that moves only when a rule says so.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as statistic
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import callbox
from _signalling import Harness
from callbox.signalling import CallState, Session

USERS = ("alice", "bob", "carol")
DEVICES = ("d1", "d2", "d3", "d4")
MAX_DEVICES = 3
RING = 30.0
GRACE = 20.0
WAITS = (1.0, 8.0, 21.0, 31.0)
RELAYS = {"call:offer": "offer", "call:answer": "answer", "ice:candidate": "candidate"}
# What may follow a call:initiate at once, while the call rings.
THEN = (None, "accept", "reject", "lose", "join", "call:offer", "ice:candidate", "time out")
RING_ENDS = ("call:accepted", "call:ended", "call:rejected", "call:timeout")
FINAL = ("call:ended", "call:rejected", "call:timeout")
RING_END_REASONS = {"answered_elsewhere", "rejected_elsewhere", "cancelled", "disconnected", "replaced", "hangup"}
EPS = 1e-6


class TrioThread:
    """A Trio run in a thread of its own, with a nursery and a clock that moves only when told."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self.error: BaseException | None = None
        ready = threading.Event()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.token = trio.lowlevel.current_trio_token()
                ready.set()
                await trio.sleep_forever()

        def run() -> None:
            try:
                trio.run(main, clock=self.clock)
            except BaseException as exc:  # a task of the service crashed: the test fails on it
                self.error = exc
            finally:
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()
        if self.error is not None:
            raise self.error

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        try:
            return trio.from_thread.run(fn, *args, trio_token=self.token)
        except trio.RunFinishedError:
            assert self.error is not None
            raise self.error from None

    def stop(self) -> None:
        if self.thread.is_alive() and self.error is None:
            try:
                trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
            except trio.RunFinishedError:
                pass
        self.thread.join(5)


@dataclasses.dataclass
class Conn:
    session: Session
    user: str | None = None  # once its user:join was answered ok
    device: str | None = None  # the deviceId it joined with (None: its own id)


def sockets(rec: Any) -> list[str]:
    return [d.socket_id for d in rec.devices]


def is_away(device: Any) -> bool:
    return bool(getattr(device, "away", False))


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


class Devices(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.h: Harness = self.trio.run(self._harness)
        self.conns: dict[str, Conn] = {}
        self.log: dict[str, list[tuple[str, Any]]] = {}
        self.dropped: set[str] = set()  # connections that went away at some point (closed, lost, replaced)
        self.lost: set[str] = set()  # lost, maybe within a grace (may be recovered)
        self.callers: dict[str, tuple[str, str, str]] = {}  # call id -> (caller, caller's socket, callee)
        self.answerer: dict[str, str] = {}  # call id -> the callee's device that answered (or merged)
        self.ring_deadline: dict[str, float] = {}
        self.grace_deadline: dict[str, float] = {}
        self.pending: dict[str, list[tuple[str, str]]] = {}  # away socket -> relays accepted for it (event, call id)
        self.active: dict[str, int] = {}  # socket id -> when it last joined or acted on a call
        self._tick = 0
        self.failed = False
        self.notes: list[str] = []  # for --hypothesis-show-statistics (recorded in the test's thread)

    async def _harness(self) -> Harness:
        config = callbox.Config(
            ring_timeout=RING, reconnect_grace=GRACE, max_devices=MAX_DEVICES, initiate_burst=10_000,
        )
        return Harness(self.trio.nursery, config)

    # -- plumbing ---------------------------------------------------------------------------------

    def step(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            self.trio.run(self._step, fn, *args)
        except BaseException:
            self.failed = True
            raise
        finally:
            for label in self.notes:
                statistic(label)
            self.notes.clear()

    def note(self, label: str) -> None:
        self.notes.append(label)

    async def _step(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        await fn(*args)
        await self.settle()
        self.check()

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        self.collect()
        for sid in list(self.conns):
            if sid not in self.h.sessions and sid not in self.dropped:
                self.dropped.add(sid)  # the server let it go (replaced)

    def collect(self) -> dict[str, list[tuple[str, Any]]]:
        """Every event sent since the last collect, by session; also kept in ``self.log``."""
        new: dict[str, list[tuple[str, Any]]] = {}
        for sid, inbox in self.h.inbox.items():
            if inbox:
                self.h.inbox[sid] = []
                events = [(event, json.loads(body)) for event, body in inbox]
                for event, payload in events:
                    assert "deviceId" not in strings_in(payload), (sid, event, payload)
                    assert not set(strings_in(payload)) & set(DEVICES), (sid, event, payload)
                self.log.setdefault(sid, []).extend(events)
                new[sid] = events
        return new

    async def now_new(self) -> dict[str, list[tuple[str, Any]]]:
        await trio.testing.wait_all_tasks_blocked()
        return self.collect()

    def touch(self, sid: str) -> None:
        self._tick += 1
        self.active[sid] = self._tick

    def up(self) -> list[str]:
        """Connected sessions that hold a user id."""
        return sorted((sid for sid, c in self.conns.items() if c.user is not None and sid in self.h.sessions),
                      key=lambda s: int(s[1:]))

    def connected_devices(self, user: str) -> set[str]:
        rec = self.h.registry.users.get(user)
        return set() if rec is None else {s for s in sockets(rec) if s in self.h.sessions}

    def call_of(self, user: str) -> Any:
        rec = self.h.registry.users.get(user)
        return None if rec is None or rec.call_id is None else self.h.registry.calls.get(rec.call_id)

    def carrier(self, call: Any, user: str) -> set[str]:
        """The device of ``user`` that carries ``call`` for it (the only ringing one counts)."""
        if user == call.caller:
            return {call.caller_socket}
        if call.callee_socket is not None:
            return {call.callee_socket}
        return set(call.ringing) if len(call.ringing) == 1 else set()

    async def emit(self, sid: str, event: str, payload: Any) -> dict[str, Any]:
        ack: dict[str, Any] = await self.h.emit(self.conns[sid].session, event, payload, ack=True)
        assert "deviceId" not in strings_in(ack) and not set(strings_in(ack)) & set(DEVICES), ack
        return ack

    # -- rules ------------------------------------------------------------------------------------

    @initialize(counts=st.tuples(*[st.integers(0, MAX_DEVICES)] * len(USERS)))
    def start(self, counts: tuple[int, ...]) -> None:
        """Each user starts with a few devices (d1, d2, ...)."""
        for user, n in zip(USERS, counts, strict=True):
            for device in DEVICES[:n]:
                self.step(self._join, user, device)

    @rule(user=st.sampled_from(USERS), device=st.sampled_from((*DEVICES, None)))
    def join(self, user: str, device: str | None) -> None:
        self.step(self._join, user, device)

    async def _join(self, user: str, device: str | None) -> None:
        h = self.h
        self.collect()
        before = h.registry.users.get(user)
        before_call = self.call_of(user)
        session = h.connect()
        sid = session.socket_id
        self.conns[sid] = Conn(session)
        body = {"userId": user} if device is None else {"userId": user, "deviceId": device}
        ack = await self.emit(sid, "user:join", body)
        new = await self.now_new()
        assert ack == {"ok": True, "userId": user, "socketId": sid}, ack
        self.conns[sid].user, self.conns[sid].device = user, device
        self.touch(sid)
        rec = h.registry.users[user]
        mine = [d for d in rec.devices if d.socket_id == sid]
        assert len(mine) == 1 and mine[0].device_id == (device or sid), rec
        assert new[sid][0][0] == "user:joined", new[sid]
        # who was replaced: the same device (a reload), else past max_devices the least recently
        # active device that does not carry the user's call
        old = [] if before is None else list(before.devices)
        gone = [d.socket_id for d in old if d.socket_id not in sockets(rec)]
        same = [d.socket_id for d in old if d.device_id == (device or sid)]
        if same:
            self.note("join: a device again (reload)" + (" in a call" if before_call is not None else ""))
            assert gone == same, (gone, same, old)
        elif len(old) >= MAX_DEVICES:
            assert len(gone) == 1, (gone, old)
            self.note("join: past max_devices" + (" while ringing" if before_call is not None
                                              and before_call.callee_socket is None and before_call.callee == user
                                              else " in a call" if before_call is not None else ""))
            # "not in a call": not the caller's device nor the answering one (ringing is not being in it)
            in_call = set() if before_call is None else {
                before_call.caller_socket if user == before_call.caller else before_call.callee_socket}
            assert gone[0] not in in_call, (gone, in_call)
            spare = [d.socket_id for d in old if d.socket_id not in in_call]
            lru = min(spare, key=lambda s: self.active.get(s, 0))
            assert gone == [lru], ("not the least recently active", gone, lru, {s: self.active.get(s) for s in spare})
        else:
            assert gone == [], (gone, old)
        assert len(rec.devices) <= MAX_DEVICES
        for old_sid in gone:
            self.dropped.add(old_sid)
            self.lost.discard(old_sid)
            assert old_sid not in h.sessions and old_sid not in h.service.graces
            if old_sid in h.disconnected:
                codes = [p.get("code") for e, p in new.get(old_sid, []) if e == "error"]
                assert codes == ["SESSION_REPLACED"], new.get(old_sid)
        # the user's call still rings: the new device rings too
        call = self.call_of(user)
        if call is not None and call.callee == user and call.callee_socket is None:
            self.note("join: rings at once")
            assert sid in call.ringing, call
            assert new[sid][1:] == [("call:incoming", {"from": call.caller, "callType": call.call_type,
                                                       "callId": call.id})], new[sid]
        else:
            assert new[sid][1:] == [], new[sid]

    @precondition(lambda self: self.up())
    @rule(data=st.data(), lost=st.booleans())
    def close(self, data: st.DataObject, lost: bool) -> None:
        sid = data.draw(st.sampled_from(self.up()), label="session")
        self.step(self._close, sid, lost)

    async def _close(self, sid: str, lost: bool) -> None:
        h = self.h
        self.collect()
        user = self.conns[sid].user
        assert user is not None
        call = self.call_of(user)
        carries = call is not None and sid in self.carrier(call, user)
        session = self.conns[sid].session
        self.dropped.add(sid)
        if lost:
            await h.lose(session)
            self.lost.add(sid)
            self.pending[sid] = []
        else:
            await h.leave(session)
        new = await self.now_new()
        rec = h.registry.users.get(user)
        if lost and carries:
            # the call waits for this device, and for it only
            assert sid in h.service.graces and rec is not None and sid in sockets(rec), (sid, rec)
            assert call.id in h.registry.calls
            self.grace_deadline[sid] = trio.current_time() + GRACE
            self.note("lost: the call waits" + (" (ringing)" if call.callee_socket is None else ""))
            peer = call.callee_socket if user == call.caller else call.caller_socket
            if peer is not None and peer in h.sessions:
                assert new.get(peer) == [("call:reconnecting", {"callId": call.id, "userId": user})], new.get(peer)
            elif call.caller_socket in h.sessions:  # its only ringing device: the caller may hear it is away
                away = [("call:reconnecting", {"callId": call.id, "userId": user})]
                assert new.get(call.caller_socket, away) == away, new.get(call.caller_socket)
        else:
            assert rec is None or sid not in sockets(rec), rec
            assert sid not in h.service.graces
            if call is not None and carries:
                # its call ended for everyone it reached: "disconnected"
                assert call.id not in h.registry.calls
                told = ("call:ended", {"callId": call.id, "by": user, "reason": "disconnected"})
                others = [call.caller_socket] if user == call.callee else (
                    [call.callee_socket] if call.callee_socket is not None else list(call.ringing))
                for other in others:
                    if other in h.sessions:
                        assert new.get(other) == [told], (other, new.get(other))
            elif call is not None:
                # a device that did not carry the call: the call goes on without it
                assert call.id in h.registry.calls
                now = h.registry.calls[call.id]
                assert sid not in now.ringing and sid != now.callee_socket

    @precondition(lambda self: any(sid in self.h.service.graces for sid in self.lost))
    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        lost = sorted((s for s in self.lost if s in self.h.service.graces), key=lambda s: int(s[1:]))
        sid = data.draw(st.sampled_from(lost), label="session")
        self.step(self._recover, sid)

    async def _recover(self, sid: str) -> None:
        h = self.h
        self.collect()
        self.lost.discard(sid)
        self.note("recovered")
        pending = self.pending.pop(sid, [])
        await h.recover(self.conns[sid].session)
        new = await self.now_new()
        self.touch(sid)
        user = self.conns[sid].user
        assert user is not None
        rec = h.registry.users[user]
        assert sid not in h.service.graces
        assert [is_away(d) for d in rec.devices if d.socket_id == sid] == [False], rec
        # what waited for it comes to it (and to no other device), then the call goes on
        got = new.get(sid, [])
        assert [(e, p["callId"]) for e, p in got if e in RELAYS] == pending, ("relays that waited", got, pending)
        call = self.call_of(user)
        if call is not None and sid in (call.caller_socket, call.callee_socket, *call.ringing):
            assert got[-1:] == [("call:reconnected", {"callId": call.id, "userId": user})], got
        for other, events in new.items():
            if other != sid:
                assert [e for e, _ in events] == ["call:reconnected"], ("sent to another device", other, events)

    @precondition(lambda self: self.up())
    @rule(data=st.data(), call_type=st.sampled_from(("audio", "video")), then=st.sampled_from(THEN))
    def initiate(self, data: st.DataObject, call_type: str, then: str | None) -> None:
        """A call; then (maybe), in the next step, something happens to it while it rings."""
        sid = data.draw(st.sampled_from(self.up()), label="session")
        user = self.conns[sid].user
        to = data.draw(st.sampled_from([u for u in USERS if u != user]), label="to")
        self.step(self._initiate, sid, to, call_type)
        call = self.call_of(to)
        if then is None or call is None or call.caller_socket != sid or call.callee_socket is not None:
            return
        rung = sorted((s for s in call.ringing if s in self.h.sessions), key=lambda s: int(s[1:]))
        if then in ("accept", "reject", "lose") and rung:
            device = data.draw(st.sampled_from(rung), label="device")
            if then == "lose":
                self.step(self._close, device, True)
            else:
                self.step(self._answer, device, call.id, then == "reject")
        elif then == "join":
            self.step(self._join, to, data.draw(st.sampled_from((*DEVICES, None)), label="device"))
        elif then in RELAYS:
            self.step(self._relay, sid, to, then)
        elif then == "time out":
            self.step(self._wait, RING + 1)

    @precondition(lambda self: len({self.conns[s].user for s in self.up()}) >= 2)
    @rule(data=st.data(), call_type=st.sampled_from(("audio", "video")))
    def glare(self, data: st.DataObject, call_type: str) -> None:
        """Two users call each other in the same tick."""
        a = data.draw(st.sampled_from(self.up()), label="one")
        b = data.draw(st.sampled_from([s for s in self.up() if self.conns[s].user != self.conns[a].user]),
                      label="other")
        self.step(self._glare, a, b, call_type)

    async def _glare(self, a: str, b: str, call_type: str) -> None:
        ua, ub = self.conns[a].user, self.conns[b].user
        assert ua is not None and ub is not None
        idle = self.call_of(ua) is None and self.call_of(ub) is None
        await self._initiate(a, ub, call_type)
        first = self.call_of(ua)
        await self._initiate(b, ua, call_type)
        if idle and first is not None and b in first.ringing:
            calls = [c for c in self.h.registry.calls.values() if {c.caller, c.callee} == {ua, ub}]
            assert len(calls) == 1 and calls[0].id == first.id, calls
            assert calls[0].callee_socket == b

    async def _initiate(self, sid: str, to: str, call_type: str) -> None:
        h = self.h
        self.collect()
        user = self.conns[sid].user
        assert user is not None
        mine, theirs = self.call_of(user), self.call_of(to)
        to_devices = self.connected_devices(to)
        ack = await self.emit(sid, "call:initiate", {"to": to, "callType": call_type})
        new = await self.now_new()
        if mine is not None and mine.caller == to and mine.callee_socket is None and sid in mine.ringing:
            # glare: answered as an accept of the call that rings here
            self.note("glare: merged" + (f" ({len(mine.ringing)} devices rang)"))
            assert ack == {"ok": True, "callId": mine.id, "merged": True}, ack
            self.touch(sid)
            await self._answered(mine, sid, new, merged=True)
            return
        if mine is not None:
            self.note("initiate: ALREADY_IN_CALL")
            assert ack["ok"] is False and ack["code"] == "ALREADY_IN_CALL", ack
        elif not to_devices:
            assert ack["ok"] is False and ack["code"] in ("USER_OFFLINE", "USER_BUSY"), ack
            if to not in h.registry.users:
                assert ack["code"] == "USER_OFFLINE", ack
        elif theirs is not None:
            self.note("initiate: USER_BUSY")
            assert ack["ok"] is False and ack["code"] == "USER_BUSY", ack
        else:
            assert ack["ok"] is True and set(ack) == {"ok", "callId"}, ack
            self.touch(sid)
            call_id = ack["callId"]
            call = h.registry.calls[call_id]
            assert call.state is CallState.RINGING and call.callee_socket is None, call
            assert (call.caller, call.caller_socket, call.callee) == (user, sid, to), call
            assert set(call.ringing) == to_devices, (call.ringing, to_devices)  # ring all
            self.note(f"initiate: rings {len(to_devices)} devices")
            self.callers[call_id] = (user, sid, to)
            self.ring_deadline[call_id] = trio.current_time() + RING
            assert new.get(sid) == [("call:initiated", {"callId": call_id, "to": to})], new.get(sid)
            incoming = ("call:incoming", {"from": user, "callType": call_type, "callId": call_id})
            for device in to_devices:
                assert new.get(device) == [incoming], (device, new.get(device))
            assert set(new) == {sid, *to_devices}, new
            return
        assert not new, new  # a refusal tells nobody (the ack carries it)

    def order(self, pair: tuple[str, str]) -> tuple[int, int]:
        """A session and a call id (or user id) in an order that does not depend on the random call ids."""
        sid, other = pair
        ranks = {key: n for n, key in enumerate((*USERS, *self.callers))}
        return int(sid[1:]), ranks.get(other, -1)

    def ringing_pairs(self) -> list[tuple[str, str]]:
        calls = self.h.registry.calls.values()
        return sorted(((sid, c.id) for c in calls for sid in c.ringing if sid in self.h.sessions), key=self.order)

    def any_call_ids(self) -> list[str]:
        return [*self.callers, "no-such-call"]  # in the order they were made

    def end_pairs(self) -> list[tuple[str, str]]:
        calls = self.h.registry.calls.values()
        pairs = {(sid, c.id) for c in calls for sid in (c.caller_socket, c.callee_socket, *c.ringing)}
        return sorted((p for p in pairs if p[0] in self.h.sessions), key=self.order)

    def relay_pairs(self) -> list[tuple[str, str]]:
        """(session, to) for the parties of each call, and for the callee's other devices (refused)."""
        pairs = set()
        for c in self.h.registry.calls.values():
            pairs.add((c.caller_socket, c.callee))
            for sid in self.connected_devices(c.callee):
                pairs.add((sid, c.caller))
        return sorted((p for p in pairs if p[0] in self.h.sessions), key=self.order)

    @precondition(lambda self: self.ringing_pairs())
    @rule(data=st.data(), reject=st.booleans())
    def answer(self, data: st.DataObject, reject: bool) -> None:
        sid, call_id = data.draw(st.sampled_from(self.ringing_pairs()), label="ringing")
        self.step(self._answer, sid, call_id, reject)

    @precondition(lambda self: self.end_pairs())
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        sid, call_id = data.draw(st.sampled_from(self.end_pairs()), label="party")
        self.step(self._end, sid, call_id)

    @precondition(lambda self: self.up())
    @rule(data=st.data(), what=st.sampled_from(("accept", "reject", "end")))
    def stray(self, data: st.DataObject, what: str) -> None:
        """An accept, reject or end from any connection, of any call id (mostly refused: late, not its call)."""
        sid = data.draw(st.sampled_from(self.up()), label="session")
        call_id = data.draw(st.sampled_from(self.any_call_ids()), label="call")
        if what == "end":
            self.step(self._end, sid, call_id)
        else:
            self.step(self._answer, sid, call_id, what == "reject")

    async def _answer(self, sid: str, call_id: str, reject: bool) -> None:
        h = self.h
        self.collect()
        user = self.conns[sid].user
        call = h.registry.calls.get(call_id)
        ack = await self.emit(sid, "call:reject" if reject else "call:accept", {"callId": call_id})
        new = await self.now_new()
        if call is None or call.callee != user or call.callee_socket is not None or sid not in call.ringing:
            self.note("answer: CALL_NOT_FOUND" + (" (late)" if call_id in self.answerer else ""))
            assert ack["ok"] is False and ack["code"] == "CALL_NOT_FOUND", ack  # late, or not its call
            assert not new, new
            return
        assert ack == {"ok": True, "callId": call_id}, ack
        self.touch(sid)
        self.note(("reject" if reject else "accept") + f" of {len(call.ringing)} ringing")
        if not reject:
            await self._answered(call, sid, new, merged=False)
            return
        # a reject from one device ends the ringing everywhere
        assert call_id not in h.registry.calls and call_id not in h.service.timers
        rejected = ("call:rejected", {"callId": call_id, "by": user})
        assert new.get(sid) == [rejected], new.get(sid)
        if call.caller_socket in h.sessions:
            assert new.get(call.caller_socket) == [rejected], new.get(call.caller_socket)
        for other in call.ringing:
            if other != sid and other in h.sessions:
                assert new.get(other) == [("call:ended", {"callId": call_id, "by": user,
                                                          "reason": "rejected_elsewhere"})], (other, new.get(other))

    async def _answered(self, call: Any, sid: str, new: dict[str, list[tuple[str, Any]]], *, merged: bool) -> None:
        """``sid`` answered the ringing ``call`` (an accept, or a merge): first accept wins."""
        h = self.h
        now = h.registry.calls[call.id]
        assert now.callee_socket == sid and now.state is CallState.CONNECTING, now
        assert call.id not in h.service.timers
        self.answerer[call.id] = sid
        accepted = ("call:accepted", {"callId": call.id, "by": call.callee, **({"merged": True} if merged else {})})
        assert new.get(sid) == [accepted], new.get(sid)
        if call.caller_socket in h.sessions:
            assert new.get(call.caller_socket) == [accepted], new.get(call.caller_socket)
        for other in call.ringing:
            if other != sid and other in h.sessions:
                assert new.get(other) == [("call:ended", {"callId": call.id, "by": call.callee,
                                                          "reason": "answered_elsewhere"})], (other, new.get(other))

    async def _end(self, sid: str, call_id: str) -> None:
        h = self.h
        self.collect()
        user = self.conns[sid].user
        call = h.registry.calls.get(call_id)
        ack = await self.emit(sid, "call:end", {"callId": call_id})
        new = await self.now_new()
        if call is not None and call.callee_socket is None and sid in call.ringing:
            # a ringing device hanging up: not said by the spec; either refused or the call ends
            if ack["ok"]:
                self.touch(sid)
                assert call_id not in h.registry.calls
            else:
                assert ack["code"] in ("CALL_NOT_FOUND", "NOT_IN_CALL"), ack
            return
        if call is None or sid not in (call.caller_socket, call.callee_socket):
            assert ack["ok"] is False and ack["code"] == "CALL_NOT_FOUND", ack
            assert not new, new
            return
        assert ack == {"ok": True, "callId": call_id}, ack
        self.touch(sid)
        assert call_id not in h.registry.calls and call_id not in h.service.timers
        reason = "cancelled" if sid == call.caller_socket and call.callee_socket is None else "hangup"
        told = ("call:ended", {"callId": call_id, "by": user, "reason": reason})
        for other in {call.caller_socket, *([call.callee_socket] if call.callee_socket else call.ringing)}:
            if other in h.sessions:
                assert new.get(other) == [told], (other, new.get(other))

    @precondition(lambda self: self.relay_pairs())
    @rule(data=st.data(), event=st.sampled_from(sorted(RELAYS)))
    def relay(self, data: st.DataObject, event: str) -> None:
        sid, to = data.draw(st.sampled_from(self.relay_pairs()), label="pair")
        self.step(self._relay, sid, to, event)

    @precondition(lambda self: self.up())
    @rule(data=st.data(), event=st.sampled_from(sorted(RELAYS)))
    def stray_relay(self, data: st.DataObject, event: str) -> None:
        sid = data.draw(st.sampled_from(self.up()), label="session")
        to = data.draw(st.sampled_from(USERS), label="to")
        self.step(self._relay, sid, to, event)

    async def _relay(self, sid: str, to: str, event: str) -> None:
        h = self.h
        self.collect()
        user = self.conns[sid].user
        assert user is not None
        call = self.call_of(user)
        key = RELAYS[event]
        body: Any = ({"candidate": f"candidate:{self._tick} 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"}
                     if key == "candidate" else {"type": key, "sdp": f"v=0 {self._tick}"})
        ack = await self.emit(sid, event, {"to": to, key: body})
        new = await self.now_new()
        recipients: tuple[str, ...] | None = None
        if call is not None and call.state is not CallState.INITIATING:
            if sid == call.caller_socket and to == call.callee:
                recipients = (call.callee_socket,) if call.callee_socket is not None else call.ringing
            elif user == call.callee and to == call.caller and (
                sid == call.callee_socket or (call.callee_socket is None and sid in call.ringing)
            ):
                recipients = (call.caller_socket,)
        self.note(f"relay to {len(recipients)}" if recipients is not None else "relay: NOT_IN_CALL")
        if recipients is None:
            assert ack["ok"] is False and ack["code"] == "NOT_IN_CALL", ack
            assert not new, new
            return
        assert ack == {"ok": True, "callId": call.id}, ack
        for other in recipients:
            if other in h.service.graces:
                self.pending.setdefault(other, []).append((event, call.id))  # waits for it
                self.note("relay waits for an away device")
            elif other in h.sessions:
                got = new.get(other, [])
                assert [e for e, _ in got] == [event], (other, got)
                assert got[0][1]["callId"] == call.id and got[0][1]["from"] == user and got[0][1][key] == body, got
        assert set(new) <= set(recipients), (new, recipients)

    @rule(seconds=st.sampled_from(WAITS))
    def wait(self, seconds: float) -> None:
        self.step(self._wait, seconds)

    async def _wait(self, seconds: float) -> None:
        h = self.h
        self.collect()
        before = dict(h.registry.calls)
        graces = set(h.service.graces)
        self.trio.clock.jump(seconds)
        new = await self.now_new()
        now = trio.current_time()
        if graces - set(h.service.graces):
            self.note("grace expired" + (" in a call" if set(before) - set(h.registry.calls) else ""))
        for call_id, call in before.items():
            if call.callee_socket is not None or call_id in h.registry.calls:
                continue
            if self.ring_deadline[call_id] <= now and not graces & {call.caller_socket, *call.ringing}:
                self.note("ring timeout")
                for other in (call.caller_socket, *call.ringing):  # the ring timeout reaches every device
                    if other in h.sessions:
                        assert new.get(other) == [("call:timeout", {"callId": call_id})], (other, new.get(other))

    # -- after every step -------------------------------------------------------------------------

    def check(self) -> None:
        h = self.h
        users, calls = h.registry.users, h.registry.calls
        now = trio.current_time()
        registered: dict[str, str] = {}
        for user_id, rec in users.items():
            assert rec.devices, rec  # a user goes with its last device
            assert len(rec.devices) <= MAX_DEVICES, rec
            assert len({d.device_id for d in rec.devices}) == len(rec.devices), rec
            for d in rec.devices:
                assert d.socket_id not in registered, (d, registered)
                registered[d.socket_id] = user_id
                assert self.conns[d.socket_id].user == user_id
                # connected, or away within its grace: never a device whose connection is gone for good
                if d.socket_id in h.sessions:
                    assert not is_away(d) and d.socket_id not in h.service.graces, d
                else:
                    assert d.socket_id in h.service.graces, ("a device whose connection is gone", d)
        for sid in self.up():
            assert registered.get(sid) == self.conns[sid].user, (sid, registered)  # a joined connection holds it
        # graces: for registered devices whose connection is gone, and not past their end
        for sid in h.service.graces:
            assert sid in registered and sid not in h.sessions, ("a grace for a gone device", sid)
            assert self.grace_deadline.get(sid, -1.0) > now - EPS, (sid, self.grace_deadline.get(sid), now)
        # at most one call per user, and one device of it in it
        parties: dict[str, list[str]] = {}
        for call in calls.values():
            assert call.caller != call.callee
            parties.setdefault(call.caller, []).append(call.id)
            parties.setdefault(call.callee, []).append(call.id)
            assert users[call.caller].call_id == call.id and users[call.callee].call_id == call.id, call
            assert call.caller_socket in sockets(users[call.caller]), ("a call whose caller is gone", call)
            if call.state is CallState.RINGING:
                assert call.callee_socket is None and call.ringing, ("a call that rings nowhere", call)
                assert set(call.ringing) <= set(sockets(users[call.callee])), ("rings a gone device", call)
                assert len(set(call.ringing)) == len(call.ringing), call
                assert self.ring_deadline[call.id] > now - EPS, ("a ring past its timeout", call)
            else:
                assert call.state in (CallState.CONNECTING, CallState.CONNECTED), call
                assert call.callee_socket in sockets(users[call.callee]), ("a call whose callee is gone", call)
                assert self.answerer.get(call.id) == call.callee_socket, (call, self.answerer.get(call.id))
        assert all(len(ids) == 1 for ids in parties.values()), parties
        for user_id, rec in users.items():
            assert (rec.call_id is None) == (user_id not in parties), rec
        # ring timers: exactly the ringing calls
        assert set(h.service.timers) == {c.id for c in calls.values() if c.state is CallState.RINGING}
        self.check_told()

    def check_told(self) -> None:
        """Every rung device heard once how its ringing ended; every caller, once how its call ended."""
        calls = self.h.registry.calls
        rung: dict[str, set[str]] = {}
        for sid, events in self.log.items():
            for event, payload in events:
                if event == "call:incoming":
                    assert sid not in rung.get(payload["callId"], set()), ("rung twice", sid, payload)
                    rung.setdefault(payload["callId"], set()).add(sid)
        for call_id, sids in rung.items():
            call = calls.get(call_id)
            answerer = self.answerer.get(call_id)
            for sid in sids:
                ends = [(e, p) for e, p in self.log[sid] if e in RING_ENDS and p.get("callId") == call_id]
                steady = sid not in self.dropped  # its connection never went
                if call is not None and call.callee_socket is None:
                    assert ends == [], (sid, ends)  # still ringing
                    if steady:
                        assert sid in call.ringing, ("a connected device no longer rung", sid, call)
                elif sid == answerer:
                    assert ends and ends[0][0] == "call:accepted", (sid, ends)
                    finals = [e for e, _ in ends[1:] if e in FINAL]
                    assert len(ends) == 1 + len(finals) and len(finals) <= 1, (sid, ends)
                    if steady and call is None:
                        assert len(finals) == 1, ("the answering device was not told the end", sid, ends)
                else:
                    assert len(ends) <= 1, ("told twice", sid, ends)
                    if steady:
                        assert len(ends) == 1, ("a rung device was never told how the ringing ended", sid, call_id)
                    if ends:
                        event, payload = ends[0]
                        assert event != "call:accepted", (sid, ends)
                        if event == "call:ended":
                            assert payload["reason"] in RING_END_REASONS, payload
                            if payload["reason"] == "answered_elsewhere":
                                assert answerer is not None and answerer != sid, (sid, payload, answerer)
        for call_id, (_, caller_sid, _) in self.callers.items():
            ends = [(e, p) for e, p in self.log.get(caller_sid, []) if e in RING_ENDS and p.get("callId") == call_id]
            accepted = [e for e, _ in ends if e == "call:accepted"]
            finals = [e for e, _ in ends if e in FINAL]
            assert len(accepted) <= 1 and len(finals) <= 1, ("the caller was told twice", caller_sid, ends)
            if caller_sid not in self.dropped:
                if call_id not in calls:
                    assert len(finals) == 1, ("the caller was not told the end", caller_sid, call_id, ends)
                if call_id in self.answerer:
                    assert len(accepted) == 1, ("the caller was not told the answer", caller_sid, call_id, ends)

    # -- the end: nothing is left -----------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.failed and self.trio.error is None:
                self.trio.run(self._everyone_leaves)
        finally:
            self.trio.stop()
        if self.trio.error is not None and not self.failed:
            raise self.trio.error

    async def _everyone_leaves(self) -> None:
        h = self.h
        for sid in self.up():
            self.dropped.add(sid)
            await h.leave(self.conns[sid].session)
        self.trio.clock.jump(GRACE + 1)
        await trio.testing.wait_all_tasks_blocked()
        self.collect()
        self.check_told()
        assert (h.registry.users, h.registry.calls, h.service.timers, h.service.graces) == ({}, {}, {}, {})


Devices.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestDevices = Devices.TestCase


# -- what the machine found, as plain examples ------------------------------------------------------


async def test_what_waited_for_a_recovered_device_goes_to_that_device(nursery: trio.Nursery) -> None:
    """Found by the machine: alice has two devices; d2 answers carol's call, then its connection is
    lost; carol's offer waits for d2; d2 is recovered. The offer must go to d2, not to d1 (not in
    the call, which must not even learn of it)."""
    h = Harness(nursery, callbox.Config(max_devices=3, reconnect_grace=GRACE, ring_timeout=RING))

    async def device(user: str, device_id: str) -> Session:
        session = h.connect()
        assert (await h.emit(session, "user:join", {"userId": user, "deviceId": device_id}))["ok"]
        return session

    carol, d1, d2 = await device("carol", "d1"), await device("alice", "d1"), await device("alice", "d2")
    call_id = (await h.emit(carol, "call:initiate", {"to": "alice", "callType": "audio"}))["callId"]
    assert (await h.emit(d2, "call:accept", {"callId": call_id}))["ok"]
    for session in (carol, d1, d2):
        h.take(session)
    await h.lose(d2)
    offer = {"type": "offer", "sdp": "v=0 restart"}
    assert await h.emit(carol, "call:offer", {"to": "alice", "offer": offer}) == {"ok": True, "callId": call_id}
    await h.recover(d2)
    assert h.take(d1) == []
    assert h.take(d2) == [
        ("call:offer", {"offer": offer, "from": "carol", "callType": "audio", "callId": call_id}),
        ("call:reconnected", {"callId": call_id, "userId": "alice"}),
    ]
