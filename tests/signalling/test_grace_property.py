"""The reconnect grace (issue 12, layer 2) under random sequences, on the service driven directly.

Three users, all joined at first; then random steps: call, accept, reject, hang up, relay (offer,
answer, ICE candidate) to the partner, a party's connection *lost* ("transport close", "transport
error", "ping timeout"), a *clean* leave ("client close", a Socket.IO DISCONNECT), a new connection
joining with the current resumeToken (a return, or the half-open case when the old connection is
still up), with a stale or a wrong token or none (a take-over), and the virtual clock moving on
(past ring timeouts and graces, or not). A small model says who holds each user id, who is away
since when, and which relays were accepted for whom while away.

After every step:

- ring timers exist for exactly the ringing calls; grace timers (``signalling.graces``) for exactly
  the users that are away and whose grace has not passed: no timer outlives its call or user;
- nothing is queued for a user that is not away (the queue lives in its grace);
- a user whose grace passed is not in the registry, nor in any call: a call never outlives the grace
  of a party that is away;
- a call that ends tells each party: at once if its connection is up, queued if it is away;
- every relay accepted (``{ok: true}``) for an away party is delivered, in order, once, right after
  ``user:joined {resumed: true}`` when it returns; otherwise its call ended and the sender was told.

At the end everyone leaves and the graces pass: nothing is left (no user, call, timer, grace, task).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import msgspec
import trio
import trio.testing
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import callbox
from callbox.engineio import CONNECTION_LOST
from callbox.signalling import CallState, MemoryRegistry, Session, Signalling

USERS = ["u0", "u1", "u2"]
RING = 30.0
GRACE = 20.0
LOST = sorted(reason.value for reason in CONNECTION_LOST)  # "ping timeout", "transport close", "transport error"
CLEAN = ["client close", "client namespace disconnect", "server namespace disconnect"]
# Virtual seconds the clock moves on by: within a grace, within a ring, past a grace, past both.
WAITS = [0.37, 4.1, 13.9, 31.3]
RELAYS = ["call:offer", "ice:candidate", "call:answer"]
ENDS = ("call:ended", "call:timeout", "call:rejected")
# A deadline this close to "now" may or may not have fired yet: not judged at that step.
EPS = 1e-6

# Weighted so that calls get answered and parties get lost and come back often.
KINDS = [
    "call", "call", "call", "accept", "accept", "accept", "reject", "end", "relay", "relay", "relay", "relay",
    "lost", "lost", "lost", "lost", "leave", "return", "return", "return", "join", "wait", "wait", "wait",
]

steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, len(USERS) - 1),
        st.integers(0, len(USERS) - 1),
        st.integers(0, 3),
    ),
    min_size=8,
    max_size=60,
)


class World:
    """The fake transport: connected sessions by id, and every event each one was ever sent."""

    def __init__(self, nursery: trio.Nursery, max_events: int) -> None:
        self.nursery = nursery
        self.config = callbox.Config(
            ring_timeout=RING, reconnect_grace=GRACE, recovery_max_events=max_events, initiate_burst=10_000,
        )
        self.registry = MemoryRegistry()
        self.service = Signalling(self, self.registry, lambda: self.config)
        self.connected: dict[str, Session] = {}
        self.log: dict[str, list[tuple[str, Any]]] = {}
        self.server_closed: list[str] = []  # sessions the server disconnected (take-over, resume)
        self._n = 0

    # Transport
    def send(self, socket_id: str, event: str, payload: msgspec.Struct) -> bool:
        if socket_id not in self.connected:
            return False
        self.log[socket_id].append((event, json.loads(msgspec.json.encode(payload))))
        return True

    async def disconnect(self, socket_id: str) -> None:
        session = self.connected.pop(socket_id, None)
        if session is not None:
            self.server_closed.append(socket_id)
            await closed(self.service, session, "server namespace disconnect")

    def start_soon(self, fn: Any, *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    # driving it
    def connect(self) -> Session:
        self._n += 1
        session = Session(f"s{self._n}")
        self.connected[session.socket_id] = session
        self.log[session.socket_id] = []
        return session

    async def close(self, session: Session, reason: str) -> None:
        del self.connected[session.socket_id]
        await closed(self.service, session, reason)

    async def emit(self, session: Session, event: str, payload: Any) -> dict[str, Any]:
        result = await self.service.handle(session, event, [msgspec.Raw(msgspec.json.encode(payload))], ack=True)
        ack: dict[str, Any] = json.loads(msgspec.json.encode(result))
        return ack

    def graces(self) -> dict[str, Any]:
        """The reconnect graces running, by the user id that is away."""
        return {getattr(grace, "user_id", key): grace for key, grace in self.service.graces.items()}


async def closed(service: Signalling, session: Session, reason: str) -> None:
    """The session's connection went, for ``reason`` (the Engine.IO / Socket.IO disconnect reason)."""
    if "lost" in inspect.signature(service.closed).parameters:
        await service.closed(session, lost=reason in LOST)  # type: ignore[call-arg,unused-ignore]
    else:
        await service.closed(session, reason)  # type: ignore[call-arg,unused-ignore]


@dataclasses.dataclass
class Away:
    socket_id: str  # the session whose connection was lost
    deadline: float
    call_id: str | None  # its call when it went
    pending: list[tuple[str, Any]] = dataclasses.field(default_factory=list)  # relays accepted for it
    ends: set[str] = dataclasses.field(default_factory=set)  # calls that ended while it was away


class Model:
    def __init__(self) -> None:
        self.holder: dict[str, str] = {}  # user id -> the session id holding it (up, or away)
        self.away: dict[str, Away] = {}
        self.token_of: dict[str, str] = {}  # session id -> the resumeToken its user:joined carried
        self.old_tokens: dict[str, list[str]] = {u: [] for u in USERS}  # tokens no longer current
        self.relay_no = 0
        self.ring_ends: dict[str, float] = {}  # call id -> when its ringing times out


def parties(call: Any) -> list[tuple[str, str]]:
    """Each party of a call and the session it takes part from (a ringing callee: the one rung)."""
    callee_socket = call.callee_socket
    if callee_socket is None:  # a registry that rings several sessions of the callee records them apart
        (callee_socket,) = call.ringing
    return [(call.caller, call.caller_socket), (call.callee, callee_socket)]


def note(what: str) -> None:
    """What a sequence did, for ``pytest --hypothesis-show-statistics``."""
    event(what)


def end_events(log: list[tuple[str, Any]], call_id: str) -> list[tuple[str, Any]]:
    return [(e, p) for e, p in log if e in ENDS and p.get("callId") == call_id]


def since(log: list[tuple[str, Any]], mark: int) -> list[tuple[str, Any]]:
    return log[mark:]


async def scenario(plan: list[tuple[str, int, int, int]], max_events: int) -> None:
    async with trio.open_nursery() as nursery:
        w = World(nursery, max_events)
        m = Model()
        registry, service = w.registry, w.service

        def up(user: str) -> Session | None:
            """The user's session, if it is held and its connection is up."""
            socket_id = m.holder.get(user)
            if socket_id is None or user in m.away:
                return None
            return w.connected[socket_id]

        async def join(user: str, token: str | None) -> tuple[Session, dict[str, Any]]:
            session = w.connect()
            body: dict[str, Any] = {"userId": user}
            if token is not None:
                body["resumeToken"] = token
            ack = await w.emit(session, "user:join", body)
            assert ack["ok"] is True and ack["userId"] == user and ack["socketId"] == session.socket_id, ack
            first = w.log[session.socket_id][0]
            assert first[0] == "user:joined", w.log[session.socket_id]
            joined = first[1]
            assert joined["userId"] == user and joined["socketId"] == session.socket_id
            assert isinstance(joined.get("resumeToken"), str) and joined["resumeToken"], joined
            assert joined["resumeToken"] not in m.token_of.values(), "a token is new for each connection"
            m.token_of[session.socket_id] = joined["resumeToken"]
            return session, ack

        def partner(user: str) -> str | None:
            call = registry.calls.get(registry.users[user].call_id or "")
            return None if call is None else call.callee if user == call.caller else call.caller

        def actor(kind: str, i: int) -> str:
            """Mostly someone for whom the step means something (``i`` picks among them), else anyone."""
            if kind in ("accept", "reject"):
                fits = [c.callee for c in registry.calls.values() if c.state is CallState.RINGING]
            elif kind in ("relay", "end", "lost"):
                fits = [u for u in USERS if up(u) is not None and registry.users[u].call_id is not None]
                if kind == "relay":  # mostly to a partner that is away
                    fits = [u for u in fits if partner(u) in m.away] or fits
            elif kind == "call":
                fits = [u for u in USERS if up(u) is not None and registry.users[u].call_id is None]
            elif kind == "return":
                fits = sorted(m.away)
            else:
                fits = []
            if fits and i < len(USERS) - 1:
                return sorted(fits)[i % len(fits)]
            return USERS[i]

        for user in USERS:
            session, _ = await join(user, None)
            m.holder[user] = session.socket_id

        for kind, i, j, k in plan:
            a = actor(kind, i)
            b = USERS[j] if kind != "call" else [u for u in USERS if u != a][j % (len(USERS) - 1)]
            me = up(a)
            before = dict(registry.calls)
            marks = {sid: len(log) for sid, log in w.log.items()}
            w.server_closed.clear()
            closed_by_us: set[str] = set()

            if kind == "call" and me is not None:
                ack = await w.emit(me, "call:initiate", {"to": b, "callType": "audio" if k % 2 else "video"})
                if ack["ok"]:
                    m.ring_ends[ack["callId"]] = trio.current_time() + RING
                if b in m.away and a != b:
                    # an away user cannot be called: busy while its call waits, offline after
                    waiting = m.away[b].call_id in registry.calls
                    # glare: calling back the away caller of the call that rings here answers it
                    assert ack["ok"] is False or ack.get("merged") is True, ack
                    if registry.users.get(a) and registry.users[a].call_id is None:
                        assert ack["code"] == ("USER_BUSY" if waiting else "USER_OFFLINE"), (ack, waiting)

            elif kind in ("accept", "reject", "end") and me is not None:
                call_id = registry.users[a].call_id
                if call_id is None and before:
                    call_id = sorted(before)[k % len(before)]  # someone else's: refused
                await w.emit(me, f"call:{kind}", {"callId": call_id or "none"})

            elif kind == "relay" and me is not None:
                call_id = registry.users[a].call_id
                call = registry.calls.get(call_id) if call_id else None
                if call is not None:
                    to = call.callee if a == call.caller else call.caller
                    m.relay_no += 1
                    n = m.relay_no
                    event = RELAYS[k % len(RELAYS)]
                    if event == "call:offer":
                        sdp = {"type": "offer", "sdp": f"v=0 {n}"}
                        body, out = {"offer": sdp}, {"offer": sdp, "from": a, "callType": call.call_type}
                    elif event == "call:answer":
                        sdp = {"type": "answer", "sdp": f"v=0 {n}"}
                        body, out = {"answer": sdp}, {"answer": sdp, "from": a}
                    else:
                        cand = {"candidate": f"candidate:{n} 1 udp 1 10.0.0.1 {n} typ host", "sdpMid": "0"}
                        body, out = {"candidate": cand}, {"candidate": cand, "from": a}
                    out["callId"] = call.id
                    ack = await w.emit(me, event, {"to": to, **body})
                    if to in m.away:
                        if ack["ok"]:
                            assert ack == {"ok": True, "callId": call.id}, ack
                            m.away[to].pending.append((event, out))
                            note("relay queued")
                        else:
                            note("relay refused: queue full")
                            assert ack["code"] == "PEER_QUEUE_FULL", ack
                            assert max_events < 1000, (ack, m.away[to])
                    else:
                        assert ack == {"ok": True, "callId": call.id}, ack
                        assert w.log[m.holder[to]][-1] == (event, out)
                    if to in m.away:
                        assert len(m.away[to].pending) <= max_events

            elif kind == "lost" and me is not None:
                rec = registry.users[a]
                call_id = rec.call_id
                closed_by_us.add(me.socket_id)
                await w.close(me, LOST[k % len(LOST)])
                if call_id is not None:
                    # the call waits; the other party hears that a is away (queued if it is away too)
                    call = registry.calls[call_id]
                    m.away[a] = Away(me.socket_id, trio.current_time() + GRACE, call_id)
                    other = call.callee if a == call.caller else call.caller
                    if up(other) is not None:
                        assert since(w.log[m.holder[other]], marks[m.holder[other]]) == [
                            ("call:reconnecting", {"callId": call_id, "userId": a})
                        ]
                else:
                    # not in a call: offline at once
                    assert a not in registry.users
                    del m.holder[a]

            elif kind == "leave" and me is not None:
                call_id = registry.users[a].call_id
                closed_by_us.add(me.socket_id)
                await w.close(me, CLEAN[k % len(CLEAN)])
                assert a not in registry.users and (call_id is None or call_id not in registry.calls)
                del m.holder[a]
                if call_id is not None:
                    call = before[call_id]
                    other = call.callee if a == call.caller else call.caller
                    if up(other) is not None:
                        assert since(w.log[m.holder[other]], marks[m.holder[other]]) == [
                            ("call:ended", {"callId": call_id, "by": a, "reason": "disconnected"})
                        ]

            elif kind in ("return", "join"):
                old = m.holder.get(a)
                current = m.token_of.get(old) if old is not None else None
                if kind == "return":
                    token = current if k < 3 else None
                else:
                    stale = m.old_tokens[a] + [t for u in USERS if u != a for t in m.old_tokens[u]]
                    token = [None, "not-a-token", stale[0] if stale else None, m.token_of.get(m.holder.get(b, ""))][k]
                    if token is not None and token == current:
                        token = None  # "join" never resumes: that is "return"'s
                was_away = m.away.get(a)
                old_up = old is not None and a not in m.away
                old_call = registry.users[a].call_id if a in registry.users else None
                session, ack = await join(a, token)
                log = w.log[session.socket_id]
                joined = log[0][1]
                resumes = token is not None and token == current
                if resumes:
                    assert ack == {"ok": True, "userId": a, "socketId": session.socket_id, "resumed": True}, ack
                    assert joined["resumed"] is True, joined
                    rec = registry.users[a]
                    assert [d.socket_id for d in rec.devices] == [session.socket_id]
                    call = registry.calls.get(rec.call_id) if rec.call_id else None
                    if call is None:
                        assert "call" not in joined, joined
                    else:
                        role = "caller" if call.caller == a else "callee"
                        assert joined["call"] == {
                            "callId": call.id,
                            "peer": call.callee if role == "caller" else call.caller,
                            "role": role,
                            "state": call.state.value,
                            "callType": call.call_type,
                        }, joined
                    rest = log[1:]
                    relays = [(e, p) for e, p in rest if e in RELAYS]
                    expected = was_away.pending if was_away is not None else []
                    assert relays == expected, (relays, expected)  # in order, once
                    note("resumed" + (" (half-open)" if old_up else "") + (" with relays" if expected else "")
                         + (" in a call" if call else ""))
                    if was_away is not None:
                        for ended in was_away.ends:
                            told = end_events(rest, ended)
                            if not told and max_events < 1000 and "call" not in joined:
                                # The end of a call did not fit in a full queue: the service drops it
                                # (the spec bounds relays only); user:joined without a call says it.
                                note("an end was dropped from a full queue")
                                continue
                            assert len(told) == 1, (ended, rest)
                    if call is not None and was_away is not None:
                        back = ("call:reconnected", {"callId": call.id, "userId": a})
                        assert rest[-1] == back, rest
                        other = call.callee if a == call.caller else call.caller
                        if up(other) is not None:
                            assert back in since(w.log[m.holder[other]], marks[m.holder[other]])
                    if old_up:
                        assert old in w.server_closed  # the half-open one is let go
                        assert old_call is None or old_call in registry.calls  # and its call goes on
                else:
                    assert ack == {"ok": True, "userId": a, "socketId": session.socket_id}, ack
                    assert "resumed" not in joined or joined["resumed"] is False, joined
                    assert "call" not in joined and log == [log[0]], log  # nothing queued comes to a new session
                    note("plain join" + (" (take-over of a call)" if old_call else ""))
                    if old_call is not None:
                        # a take-over: the call it held ends, "replaced", for the other party at once
                        assert old_call not in registry.calls
                        call = before[old_call]
                        other = call.callee if a == call.caller else call.caller
                        if up(other) is not None:
                            assert end_events(since(w.log[m.holder[other]], marks[m.holder[other]]), old_call) == [
                                ("call:ended", {"callId": old_call, "by": a, "reason": "replaced"})
                            ]
                if old is not None:
                    m.old_tokens[a].append(m.token_of[old])
                m.away.pop(a, None)
                m.holder[a] = session.socket_id

            elif kind == "wait":
                await trio.sleep(WAITS[k])

            await trio.testing.wait_all_tasks_blocked()
            now = trio.current_time()

            # graces that passed: the user is offline, its call ended "disconnected" for the other party
            expired = {user for user, away in m.away.items() if away.deadline < now - EPS}
            for user, away in list(m.away.items()):
                if user in expired:
                    assert user not in registry.users, (user, registry.users.get(user))
                    for call in registry.calls.values():
                        assert user not in (call.caller, call.callee), call
                    gone = before.get(away.call_id or "")
                    if gone is not None:
                        assert gone.id not in registry.calls
                        other = gone.callee if user == gone.caller else gone.caller
                        if up(other) is not None:
                            told = end_events(since(w.log[m.holder[other]], marks[m.holder[other]]), gone.id)
                            assert len(told) == 1, told
                            if gone.state is CallState.RINGING and m.ring_ends[gone.id] < away.deadline:
                                assert told[0][0] in ("call:timeout", "call:ended"), told  # which came first
                            else:
                                assert told[0][0] == "call:ended", told
                            if told[0][0] == "call:ended":
                                assert told[0][1]["reason"] == "disconnected", told
                                assert told[0][1]["by"] in expired, told
                    note("grace expired" + (" in a call" if gone else ""))
                    del m.away[user]
                    del m.holder[user]
                    closed_by_us.add(away.socket_id)

            # calls that ended in this step told each party: at once if up, on its return if away
            for call_id, call in before.items():
                if call_id in registry.calls:
                    continue
                for party, socket_id in parties(call):
                    if socket_id in w.connected or socket_id in w.server_closed:
                        assert len(end_events(w.log[socket_id], call_id)) == 1, (party, w.log[socket_id])
                    elif party in m.away and m.away[party].socket_id == socket_id:
                        m.away[party].ends.add(call_id)
                        note("a call ended while a party was away")
                    else:
                        assert socket_id in closed_by_us or m.holder.get(party) != socket_id, (party, socket_id)

            check(w, m, now)

        # Everyone still up leaves cleanly, then every grace passes: nothing is left.
        for user in USERS:
            session = up(user)
            if session is not None:
                await w.close(session, "client close")
                del m.holder[user]
        assert set(registry.users) <= set(m.away)
        await trio.sleep(GRACE + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert (registry.users, registry.calls, service.timers, w.graces()) == ({}, {}, {}, {})
        assert nursery.child_tasks == set()


def check(w: World, m: Model, now: float) -> None:
    registry, service = w.registry, w.service
    calls = registry.calls
    # ring timers: exactly the ringing calls
    assert set(service.timers) == {c.id for c in calls.values() if c.state is CallState.RINGING}
    # grace timers (and their queues): exactly the users away whose grace has not passed
    graces = w.graces()
    assert set(graces) == set(m.away), (graces, m.away)
    for grace in graces.values():
        queued = getattr(grace, "queue", None)
        if queued is not None:
            # the bound holds for relays; the server's own events (a few per call) always wait
            relays = [event for event, _ in queued if event in ("call:offer", "call:answer", "ice:candidate")]
            assert len(relays) <= w.config.recovery_max_events
    # who holds each user id
    for user in USERS:
        if user in m.away:
            assert m.away[user].deadline > now - EPS
            rec = registry.users.get(user)
            assert rec is None or [d.socket_id for d in rec.devices] == [m.away[user].socket_id], rec
        elif user in m.holder:
            assert [d.socket_id for d in registry.users[user].devices] == [m.holder[user]]
        else:
            assert user not in registry.users
    # a call's parties are held by the sessions it names; an away party's grace has not passed
    for call in calls.values():
        for party, socket_id in parties(call):
            assert m.holder.get(party) == socket_id, (call, m.holder)
            assert registry.users[party].call_id == call.id
            if party in m.away:
                assert m.away[party].deadline > now - EPS


LIVE = [("call", 0, 0, 0), ("accept", 0, 0, 0)]  # u0 calls u1, u1 accepts


@settings(max_examples=600, deadline=None)
@given(steps, st.sampled_from([3, 1000]))
# the callee's connection is lost; relays for it wait; it comes back with its token
@example([*LIVE, ("lost", 1, 0, 0), ("relay", 0, 0, 0), ("relay", 0, 0, 1), ("relay", 0, 0, 1), ("return", 0, 0, 0)],
         1000)
# the same past the bound: the fourth relay is refused
@example(LIVE + [("lost", 1, 0, 1)] + [("relay", 0, 0, 1)] * 4 + [("return", 0, 0, 0)], 3)
# the caller hangs up while the callee is away: it learns so when it comes back
@example([*LIVE, ("lost", 1, 0, 2), ("relay", 0, 0, 1), ("end", 0, 0, 0), ("return", 0, 0, 0)], 1000)
# nobody comes back: the grace ends the call
@example([*LIVE, ("lost", 1, 0, 0), ("relay", 0, 0, 1), ("wait", 0, 0, 2), ("wait", 0, 0, 3)], 1000)
# both away: the first grace to pass ends the call
@example([*LIVE, ("lost", 0, 0, 0), ("wait", 0, 0, 1), ("lost", 0, 0, 0), ("wait", 0, 0, 3)], 1000)
# a join without the token while away is a take-over
@example([*LIVE, ("lost", 1, 0, 0), ("relay", 0, 0, 0), ("join", 1, 0, 0)], 1000)
# half-open: the token while the old connection still looks up
@example([*LIVE, ("return", 1, 0, 0), ("relay", 0, 0, 1)], 1000)
def test_random_sequences_keep_the_grace_invariants(plan: list[tuple[str, int, int, int]], max_events: int) -> None:
    trio.run(scenario, plan, max_events, clock=trio.testing.MockClock(autojump_threshold=0))
