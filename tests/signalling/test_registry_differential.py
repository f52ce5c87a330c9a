"""``RedisRegistry`` against ``MemoryRegistry`` (issue 14): the same random sequences of registry
calls on both, the same results and the same state after every step.

A real ``redis-server`` (tests/_redis.py) serves the whole module; each example starts from an empty
database (FLUSHDB) and a new ``MemoryRegistry``, in a Trio run of its own.

The calls: ``join`` (users u0..u2, a new session or one of the user's own, device d0..d3 or none,
with a resume token or not), ``leave`` (also with ``away_only``, as a grace's end does: mostly at a
device away, else at one of the user's devices), ``detach``, ``reattach`` (recovered on
its own session; or from a new session with the right token, a stale one, a wrong one; a new token
or not), ``initiate`` (anyone to anyone, and glare: the callee of a ringing call calls its caller back
from a device it rings), ``ring``, ``accept`` / ``reject`` (by the callee, the caller or anyone, with
the right ``from``, a wrong one or none), ``hang_up``, ``time_out``, ``relay`` (offer, answer,
candidate; to the peer, to another user, to nobody) and ``end_all``; and three short stories that
random steps seldom tell: a device in a call loses its connection (detach) and its call then ends
(it stays away, and is not rung); a call rings at one device of its callee, that device is lost,
another joins (rung too) and answers or declines; a device in a call is lost and its grace ends
(``leave`` with ``away_only``), after it came back or not. ``max_devices`` (1..3) is drawn once per
example, as it is a server's setting. Users, sessions and call ids are mostly taken where they mean
something (a user online or in a call, the user's devices, the call's parties, a live call), so
that calls ring, get answered and merge, and sometimes anywhere.

What is compared: each call's return value as msgspec JSON (``end_all``'s list in its order: the calls' creation), or
the refusal (``SignallingError`` code and message, or any other exception's type and text); after
every step, ``user()`` for every user, ``call()`` for every call id seen, and ``counts()``. A
difference fails with the whole sequence so far, Hypothesis having shrunk it.

Plus plain tests: the tables the scripts use are the Python tables; a stopped or frozen Redis makes a
method raise ``RegistryUnavailable`` within its deadline, and service resumes when Redis is back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Iterator
from typing import Any

import coredis
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _redis import RedisServer, redis_server
from callbox.signalling import (
    CALL_ACTORS,
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    MemoryRegistry,
    Outcome,
    Role,
    SignallingError,
)
from callbox.signalling._redis import SCRIPTS, RegistryUnavailable, open_redis_registry
from callbox.signalling._state import end_event

pytestmark = pytest.mark.redis

USERS = ("u0", "u1", "u2")
DEVICES = ("d0", "d1", "d2", "d3", None)
RELAYS = (CallEvent.OFFER, CallEvent.ANSWER, CallEvent.CANDIDATE)
TIMEOUT = 2.0  # each Redis call's deadline in these tests
# How often a pick lands where it means something (see Twin.sock / Twin.call_id): below this of 16.
LIKELY = 14


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


async def outcome(call: Awaitable[Any]) -> str:
    """What a registry call gave, as text that compares."""
    try:
        value = await call
    except SignallingError as error:
        return f"SignallingError({error.code.value}, {error.message!r})"
    except Exception as error:  # a bug either side: still compared, so that it shows
        return f"{type(error).__name__}: {error}"
    return msgspec.json.encode(value).decode()


# -- the sequences ------------------------------------------------------------------------------

pick = st.integers(0, 15)


def mostly(usual: Any, *others: Any) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else one of ``others``."""
    n = len(others)
    return st.integers(0, 4 * n - 1).map(lambda i: usual if i < 3 * n else others[i - 3 * n])


party = mostly("callee", "caller", "other")
caller_given = mostly("none", "right", "wrong")
WEIGHTED: list[tuple[int, st.SearchStrategy[tuple[Any, ...]]]] = [
    (5, st.tuples(st.just("join"), pick, st.booleans(), st.sampled_from(DEVICES), st.booleans(), pick)),
    (2, st.tuples(st.just("leave"), pick, pick)),
    (1, st.tuples(st.just("leave_away"), pick, pick)),
    (2, st.tuples(st.just("grace_end"), pick, mostly("away", "back"))),
    (2, st.tuples(st.just("detach"), pick, pick)),
    (2, st.tuples(st.just("reattach"), pick, pick, mostly("right", "recover", "stale", "wrong"), st.booleans())),
    (5, st.tuples(st.just("initiate"), pick, pick, pick, st.sampled_from(("audio", "video")), st.integers(0, 3))),
    (2, st.tuples(st.just("glare"), pick, pick)),
    (3, st.tuples(st.just("ring"), pick)),
    (3, st.tuples(st.just("accept"), pick, party, pick, caller_given)),
    (1, st.tuples(st.just("reject"), pick, party, pick, caller_given)),
    (1, st.tuples(st.just("hang_up"), pick, party, pick)),
    (1, st.tuples(st.just("time_out"), pick)),
    (2, st.tuples(st.just("relay"), pick, pick, st.sampled_from(("peer", "other", "nobody")),
                  st.sampled_from(RELAYS))),
    (2, st.tuples(st.just("lose"), pick, mostly("hang_up", "none", "time_out"))),
    (1, st.tuples(st.just("away_callee"), pick, st.sampled_from(DEVICES), mostly("accept", "reject", "none"))),
    (1, st.tuples(st.just("end_all"), st.sampled_from((Outcome.SERVER_SHUTDOWN, Outcome.DISCONNECTED)),
                  st.integers(0, 3))),
]
op = st.one_of([strategy for weight, strategy in WEIGHTED for _ in range(weight)])
# max_devices (the server's setting: the same for every join of an example); everyone joins first
# (else most steps meet nobody); then anything.
joins = st.tuples(*(st.lists(st.tuples(st.just("join"), st.just(i), st.just(True), st.sampled_from(DEVICES),
                                        st.booleans(), st.just(0)), min_size=1, max_size=2)
                    for i in range(len(USERS)))).map(lambda lists: [join for each in lists for join in each])
plans = st.tuples(st.integers(1, 3), joins, st.lists(op, min_size=10, max_size=40)).map(
    lambda plan: (plan[0], plan[1] + plan[2])
)


class Twin:
    """Runs each call on both registries; picks sessions and calls from the memory one's state
    (the same as the other's, or the test has failed already)."""

    def __init__(self, memory: MemoryRegistry, other: Any, max_devices: int) -> None:
        self.memory = memory
        self.max_devices = max_devices
        self.other = other
        self.sockets: list[str] = []  # every session seen
        self.calls: list[str] = []  # every call id made
        self.tokens: list[str] = []  # every resume token handed out
        self.count = 0
        self.log: list[str] = []

    def fresh(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def failure(self, what: str) -> str:
        return "\n".join(["the sequence:", *self.log, what])

    async def both(self, method: str, *args: Any) -> str:
        expected = await outcome(getattr(self.memory, method)(*args))
        got = await outcome(getattr(self.other, method)(*args))
        shown = ", ".join(repr(a.value if isinstance(a, CallEvent | Outcome) else a) for a in args)
        self.log.append(f"  {method}({shown}) -> {expected}")
        assert got == expected, self.failure(f"RedisRegistry gave: {got}")
        return expected

    async def same_state(self) -> None:
        for name in (*USERS, "nobody"):
            expected, got = await outcome(self.memory.user(name)), await outcome(self.other.user(name))
            assert got == expected, self.failure(f"then user({name!r}):\n  memory {expected}\n  redis  {got}")
        for call_id in (*self.calls, "c-none"):
            expected, got = await outcome(self.memory.call(call_id)), await outcome(self.other.call(call_id))
            assert got == expected, self.failure(f"then call({call_id!r}):\n  memory {expected}\n  redis  {got}")
        expected, got = await outcome(self.memory.counts()), await outcome(self.other.counts())
        assert got == expected, self.failure(f"then counts():\n  memory {expected}\n  redis  {got}")

    # -- picks ----------------------------------------------------------------------------------

    def someone(self, k: int, besides: str | None = None) -> str:
        """Mostly a user online (other than ``besides``); else anyone."""
        online = [u for u in self.memory.users if u != besides]
        if online and k < LIKELY:
            return online[k % len(online)]
        return USERS[k % len(USERS)]

    def busy(self, k: int) -> str:
        """Mostly a user in a call (else as ``someone``)."""
        in_call = [u.id for u in self.memory.users.values() if u.call_id is not None]
        return in_call[k % len(in_call)] if in_call and k < LIKELY else self.someone(k)

    def own(self, user_id: str) -> list[str]:
        user = self.memory.users.get(user_id)
        return [] if user is None else [d.socket_id for d in user.devices]

    def sock(self, user_id: str, k: int, likely: tuple[str, ...] = ()) -> str:
        """Mostly a session that means something (``likely``, else the user's devices); else any."""
        for choice in (likely, self.own(user_id)):
            if choice and k < LIKELY:
                return choice[k % len(choice)]
        return self.sockets[k % len(self.sockets)] if self.sockets else "s-none"

    def call_id(self, k: int) -> str:
        live = list(self.memory.calls)
        if live and k < LIKELY:
            return live[k % len(live)]
        return self.calls[k % len(self.calls)] if self.calls and k < 15 else "c-none"

    def party(self, call_id: str, kind: str, k: int) -> tuple[str, str]:
        call = self.memory.calls.get(call_id)
        if call is None or kind == "other":
            user_id = USERS[k % len(USERS)]
            return user_id, self.sock(user_id, k)
        if kind == "caller":
            return call.caller, self.sock(call.caller, k, (call.caller_socket,))
        return call.callee, self.sock(call.callee, k, call.sockets_of(call.callee))

    def token(self) -> str:
        token = self.fresh("t")
        self.tokens.append(token)
        return token

    # -- steps ----------------------------------------------------------------------------------

    async def step(self, plan: tuple[Any, ...]) -> None:
        name, *args = plan
        await getattr(self, f"do_{name}")(*args)

    async def do_join(self, i: int, new: bool, device: str | None, token: bool, k: int) -> None:
        user_id = self.busy(i) if i % 2 else USERS[i % len(USERS)]
        own = self.own(user_id)
        if new or not own:
            socket_id = self.fresh("s")
            self.sockets.append(socket_id)
        else:
            socket_id = own[k % len(own)]
        await self.both("join", user_id, socket_id, device, self.max_devices, self.token() if token else None)

    def in_its_call(self, user_id: str) -> tuple[str, ...]:
        """The sessions a user takes part in its call from (the ones it rings at, or its carrier)."""
        user = self.memory.users.get(user_id)
        call = self.memory.calls.get(user.call_id or "") if user else None
        return call.sockets_of(user_id) if call else ()

    async def do_leave(self, i: int, k: int) -> None:
        user_id = self.busy(i) if i % 2 else self.someone(i)
        await self.both("leave", user_id, self.sock(user_id, k, self.in_its_call(user_id) if k % 2 else ()))

    async def do_leave_away(self, i: int, k: int) -> None:
        """A grace's end: ``leave`` only if the device is still away (mostly one that is; else any of
        the user's devices, one that came back among them)."""
        away_users = [u.id for u in self.memory.users.values() if any(d.away for d in u.devices)]
        user_id = away_users[i % len(away_users)] if away_users and i < LIKELY else self.someone(i)
        user = self.memory.users.get(user_id)
        away = tuple(d.socket_id for d in user.devices if d.away) if user and k % 2 == 0 else ()
        await self.both("leave", user_id, self.sock(user_id, k, away), True)

    async def do_grace_end(self, i: int, then: str) -> None:
        """A device in a call loses its connection (detach); its grace ends (``leave`` with
        ``away_only``) while it is away (the call ends), or after it came back (nothing happens)."""
        user_id = self.busy(i)
        sockets = self.in_its_call(user_id)
        if len(sockets) != 1:
            return
        await self.both("detach", user_id, sockets[0])
        if then == "back":
            await self.both("reattach", user_id, sockets[0], None, None)
        await self.both("leave", user_id, sockets[0], True)

    async def do_detach(self, i: int, k: int) -> None:
        user_id = self.busy(i)
        user = self.memory.users.get(user_id)
        call = self.memory.calls.get(user.call_id or "") if user else None
        await self.both("detach", user_id, self.sock(user_id, k, call.sockets_of(user_id) if call else ()))

    async def do_reattach(self, i: int, k: int, kind: str, new_token: bool) -> None:
        away_users = [u.id for u in self.memory.users.values() if any(d.away for d in u.devices)]
        user_id = away_users[i % len(away_users)] if away_users and i < LIKELY else self.someone(i)
        user = self.memory.users.get(user_id)
        devices = () if user is None else user.devices
        socket_id = self.fresh("s")
        token: str | None
        if kind == "recover":
            away = tuple(d.socket_id for d in devices if d.away)
            socket_id, token = self.sock(user_id, k, away), None
        elif kind == "right":
            held = [d.resume_token for d in sorted(devices, key=lambda d: not d.away) if d.resume_token is not None]
            token = held[k % len(held)] if held else "t-none"
        elif kind == "stale":
            held_now = {d.resume_token for u in self.memory.users.values() for d in u.devices}
            stale = [t for t in self.tokens if t not in held_now]
            token = stale[k % len(stale)] if stale else "t-stale"
        else:
            token = "wrong-token"
        if socket_id not in self.sockets:
            self.sockets.append(socket_id)
        await self.both("reattach", user_id, socket_id, token, self.token() if new_token else None)

    async def do_initiate(self, i: int, k: int, j: int, call_type: str, ring: int) -> None:
        """A call, mostly rung at once as the service does (else it waits, INITIATING)."""
        caller = self.someone(i)
        callee = self.someone(j, besides=caller) if j else caller
        call_id = self.fresh("c")
        self.calls.append(call_id)
        await self.both("initiate", caller, self.sock(caller, k), callee, call_type, call_id)
        if ring < 3:
            await self.both("ring", call_id)

    async def do_glare(self, k: int, j: int) -> None:
        """The callee of a ringing (or just initiated) call calls its caller back from a device rung."""
        rung = [c for c in self.memory.calls.values() if c.callee_socket is None and c.ringing]
        if not rung:
            return
        call = rung[k % len(rung)]
        call_id = self.fresh("c")
        self.calls.append(call_id)
        await self.both("initiate", call.callee, call.ringing[j % len(call.ringing)], call.caller,
                        call.call_type, call_id)

    async def do_ring(self, k: int) -> None:
        await self.both("ring", self.call_id(k))

    def _from(self, call_id: str, kind: str) -> str | None:
        call = self.memory.calls.get(call_id)
        if kind == "none":
            return None
        if kind == "right" and call is not None:
            return call.caller
        return "u-wrong"

    async def do_accept(self, k: int, kind: str, j: int, caller: str) -> None:
        call_id = self.call_id(k)
        user_id, socket_id = self.party(call_id, kind, j)
        await self.both("accept", call_id, user_id, socket_id, self._from(call_id, caller))

    async def do_reject(self, k: int, kind: str, j: int, caller: str) -> None:
        call_id = self.call_id(k)
        user_id, socket_id = self.party(call_id, kind, j)
        await self.both("reject", call_id, user_id, socket_id, self._from(call_id, caller))

    async def do_hang_up(self, k: int, kind: str, j: int) -> None:
        call_id = self.call_id(k)
        user_id, socket_id = self.party(call_id, kind, j)
        await self.both("hang_up", call_id, user_id, socket_id)

    async def do_time_out(self, k: int) -> None:
        await self.both("time_out", self.call_id(k))

    async def do_relay(self, i: int, k: int, kind: str, event: CallEvent) -> None:
        in_call = [u.id for u in self.memory.users.values() if u.call_id is not None]
        user_id = in_call[i % len(in_call)] if in_call and i < LIKELY else self.someone(i)
        user = self.memory.users.get(user_id)
        call = self.memory.calls.get(user.call_id or "") if user else None
        socket_id = self.sock(user_id, k, (call.carrier(user_id) or "",) if call and call.carrier(user_id) else ())
        if kind == "peer" and call is not None:
            target = call.callee if call.caller == user_id else call.caller
        elif kind == "nobody":
            target = "nobody"
        else:
            target = USERS[(USERS.index(user_id) + 1 + k % 2) % len(USERS)]
        await self.both("relay", user_id, socket_id, target, event)

    async def do_lose(self, i: int, then: str) -> None:
        """A device in a call loses its connection (detach), then maybe its call ends meanwhile: the
        device stays away, and is not rung."""
        user_id = self.busy(i)
        sockets = self.in_its_call(user_id)
        if len(sockets) != 1:
            return
        await self.both("detach", user_id, sockets[0])
        user = self.memory.users.get(user_id)
        call = self.memory.calls.get(user.call_id or "") if user else None
        if call is None:
            return
        if then == "hang_up":
            peer = call.callee if call.caller == user_id else call.caller
            for socket_id in call.sockets_of(peer)[:1]:
                await self.both("hang_up", call.id, peer, socket_id)
        elif then == "time_out":
            await self.both("time_out", call.id)

    async def do_away_callee(self, k: int, device: str | None, then: str) -> None:
        """A call rings at one device of its callee, whose connection is lost; another device joins
        (rung too) and answers it, declines it, or not."""
        rung = [c for c in self.memory.calls.values() if c.callee_socket is None and len(c.ringing) == 1]
        if not rung:
            return
        call = rung[k % len(rung)]
        await self.both("detach", call.callee, call.ringing[0])
        socket_id = self.fresh("s")
        self.sockets.append(socket_id)
        await self.both("join", call.callee, socket_id, device, self.max_devices, self.token())
        if then != "none":
            await self.both(then, call.id, call.callee, socket_id, None)

    async def do_end_all(self, why: Outcome, gate: int) -> None:
        if gate == 3:  # a shutdown is rare: most draws of it do nothing
            await self.both("end_all", why)


async def run_plan(url: str, max_devices: int, plan: list[tuple[Any, ...]]) -> None:
    async with open_redis_registry(url, timeout=TIMEOUT) as other:
        twin = Twin(MemoryRegistry(), other, max_devices)
        for step in plan:
            await twin.step(step)
            await twin.same_state()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_redis_registry_agrees_with_memory(redis: RedisServer, plan: tuple[int, list[tuple[Any, ...]]]) -> None:
    assert redis.command("FLUSHDB") == b"+OK"
    trio.run(run_plan, redis.url, *plan)


# -- plain tests --------------------------------------------------------------------------------


def python_tables() -> dict[str, Any]:
    """_state.py's tables, written out here from the enums (not with the module's own serialiser)."""
    return {
        "user": {s.value: {e.value: t.value for e, t in row.items()} for s, row in USER_TRANSITIONS.items()},
        "call": {s.value: {e.value: t.value for e, t in row.items()} for s, row in CALL_TRANSITIONS.items()},
        "actors": {e.value: {r.value: True for r in roles} for e, roles in CALL_ACTORS.items()},
        "end_event": {r.value: {s.value: end_event(s, r).value for s in CallState} for r in (Role.CALLER, Role.CALLEE)},
    }


def test_the_scripts_use_the_python_tables(redis: RedisServer) -> None:
    """Every script carries the tables, as JSON in a Lua long string: they are _state.py's, every
    state and every event (none missing, none added); and Redis's cjson reads them back the same."""
    expected = python_tables()
    assert set(SCRIPTS) >= {"join", "leave", "detach", "reattach", "initiate", "ring", "accept", "reject",
                            "hang_up", "time_out", "relay", "end_all", "counts"}
    for name, script in SCRIPTS.items():
        found = re.findall(r"cjson\.decode\(\[==\[(.*?)\]==\]\)", script, re.S)
        assert len(found) == 1, f"{name}: the tables once, in a long string"
        assert json.loads(found[0]) == expected, name
        # What the script sees is what cjson makes of that text, in this Redis.
        echo = "return cjson.encode(cjson.decode(ARGV[1]))"
        reply = trio.run(eval_in, redis.url, echo, found[0])
        assert json.loads(reply) == expected, name
    # Every move the tables do not have is absent from the scripts' tables too (no default rows).
    for state in CallState:
        assert set(expected["call"][state.value]) == {e.value for e in CALL_TRANSITIONS[state]}


async def eval_in(url: str, script: str, *args: str) -> str:
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        reply = await client.eval(script, keys=[], args=list(args))
    assert isinstance(reply, str)
    return reply


DEADLINE = 0.5  # the registry's timeout in the tests below
SLACK = 0.5  # what a refusal may take beyond it


async def unavailable_within(call: Awaitable[Any], at_least: float = 0.0) -> float:
    start = trio.current_time()
    with pytest.raises(RegistryUnavailable):
        await call
    took = trio.current_time() - start
    assert at_least <= took <= DEADLINE + SLACK, took
    return took


async def test_a_stopped_redis_is_unavailable_and_service_resumes(redis: RedisServer) -> None:
    redis.command("FLUSHDB")
    async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
        await registry.join("u0", "s1")
        redis.stop()
        try:
            await unavailable_within(registry.join("u1", "s2"))  # a script
            await unavailable_within(registry.user("u0"))  # a plain GET
            await unavailable_within(registry.counts())
        finally:
            redis.start()  # a new, empty Redis on the same port
        # Back by itself: the same registry, no restart (the scripts are loaded again as needed).
        joined = await registry.join("u1", "s2")
        assert joined.user.id == "u1"
        assert await registry.counts() == (1, 0)


async def test_a_frozen_redis_is_unavailable_at_the_deadline_and_service_resumes(redis: RedisServer) -> None:
    redis.command("FLUSHDB")
    async with open_redis_registry(redis.url, timeout=DEADLINE) as registry:
        await registry.join("u0", "s1")
        redis.freeze()  # connections open, nothing answers: only the deadline ends the wait
        try:
            await unavailable_within(registry.join("u1", "s2"), at_least=DEADLINE * 0.9)
            await unavailable_within(registry.user("u0"), at_least=DEADLINE * 0.9)
        finally:
            redis.thaw()
        # Each step is one script, all or nothing: the join that timed out may have been applied
        # once Redis woke up, but nothing else changed, and the registry serves again.
        user = await registry.user("u0")
        assert user is not None and user.devices[0].socket_id == "s1"
        await registry.join("u2", "s3")
        assert (await registry.counts())[0] in (2, 3)
