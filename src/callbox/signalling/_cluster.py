"""Several callbox nodes on one Redis: delivery between nodes, shared deadlines, node deaths.

Needs the ``callbox[redis]`` extra. :func:`open_cluster` gives a :class:`Cluster` that
:func:`callbox.signalling.install` takes; ``callbox --redis-url`` does it all.

Theory of operation
===================

The users and calls are in the :class:`~._redis.RedisRegistry` (one Lua script per protocol step).
What is left for a node to share is what happens between its sessions and the other nodes':

- **Where a session is.** A node's Socket.IO socket ids start with its node id and a dot
  (``n1.3kT...``), so any node knows where an event for a session goes without asking anyone.
- **Delivery.** An event for a session of another node is appended to that node's **inbox**, a Redis
  stream (``{callbox}:inbox:<node>``). A node's one writer task appends what its requests and timers
  produced, in the order they did, several at once in one script; its one reader task reads its inbox
  from the last id it read (``XREAD BLOCK``), so a lost connection to Redis loses nothing of it, and
  hands each event to the service (:meth:`Signalling.deliver`). Streams are capped (``MAXLEN ~``).
  Sessions on the same node never touch the stream. An inbox entry is an event (``m``), a request to
  end a grace held there (``g``), or to disconnect a session there (``d``, a take-over).
- **Deadlines** (a call's ringing, an away user's grace) are one sorted set scored in Redis time
  (``TIME``). Every node pops what is due, every ``TICK`` seconds, in one script, so each fires on
  exactly one node, whichever is alive: a call rings out even if the node that started it died.
- **Rate limits** that follow a user (``call:initiate``) are token buckets in Redis, in its time.
  Those that follow an address or a node (connections, recovery attempts) stay on the node.
- **Liveness.** Each node scores itself in ``{callbox}:nodes`` with Redis time every
  ``node_timeout / 4`` (at most ``BEAT`` s). The same script looks for a node silent past
  ``node_timeout`` and, finding one, takes it off the set (so exactly one node claims it) and returns
  its users' sessions and the end of its inbox. The claimer treats each as a connection lost without
  a goodbye (:meth:`Signalling.closed`): with a reconnect grace, a call waits for its user to come
  back through any node; without, it ends (``disconnected``). It then reads the dead node's inbox
  too, for the graces it now holds, and answers for its sessions (:meth:`here`).
- **Redis trouble.** Every call has the registry's deadline. While Redis fails, :meth:`unready` says
  so (``/readyz`` 503), requests are refused ``UNAVAILABLE``, the writer keeps what waits and tries
  again, and sessions that closed meanwhile leave once Redis answers (:meth:`later`). Nothing falls
  back to this node's own memory.
- **Hand-over.** A node that drains in hand-over mode closes its connections as lost, waits (at
  most its shutdown timeout) for its away users to come back elsewhere (each return ends its grace
  here, through its inbox), then scores itself as long dead, so that another node claims what is
  left at once (:meth:`leave`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import coredis
import msgspec
import trio

from ..config import Config
from ..metrics import Counter, Gauge, Histogram
from ..metrics import Registry as MetricsRegistry
from ._payloads import AnswerRelay, CandidateRelay, OfferRelay
from ._redis import RedisRegistry
from ._registry import Call, RegistryUnavailable
from ._service import Payload, Sent, Session, Transport
from ._state import CallEvent

if TYPE_CHECKING:
    from ._service import Signalling

__all__ = ["Cluster", "ClusterTransport", "open_cluster", "node_of"]

log = logging.getLogger("callbox.cluster")

# How often a node pops due deadlines: the granularity of a ring timeout or a grace, in seconds.
TICK: Final = 0.1
# The longest gap between heartbeats (shorter with a short node timeout: a quarter of it).
BEAT: Final = 1.0
# After a failed call to Redis, a loop waits this long before trying again.
RETRY: Final = 0.2
# What one inbox holds at most (approximately): far more than a reader left behind by a blip.
INBOX_MAXLEN: Final = 100_000
# Events one write appends at most; one read takes at most as many.
BATCH: Final = 500
# Events waiting for Redis on one node at most; past it the oldest are dropped (and logged).
OUTBOX_LIMIT: Final = 100_000
# Round trips take well under a millisecond on a LAN; seconds mean trouble.
RTT_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1)

# Every script here begins with _NOW: ARGV[1] is the key prefix, ARGV[2] the Redis time (ms) past
# which the step is not to be done ("": always do it): the node gave up waiting for it by then and
# treated it as failed (a frozen Redis runs what it had buffered once it thaws).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '' and now > tonumber(ARGV[2]) then return 'late' end
"""

# One script appends a batch of inbox entries: ARGV[3] = maxlen, then (node, socket, kind, event,
# payload) for each entry, in order.
_FORWARD = _NOW + """
local P, maxlen = ARGV[1], ARGV[3]
for i = 4, #ARGV, 5 do
  redis.call('XADD', P .. 'inbox:' .. ARGV[i], 'NOMKSTREAM', 'MAXLEN', '~', maxlen, '*',
             's', ARGV[i + 1], 'k', ARGV[i + 2], 'e', ARGV[i + 3], 'p', ARGV[i + 4])
end
return #ARGV
"""

# A deadline: ARGV[3] = member, ARGV[4] = milliseconds from now. A member set again moves.
_DEADLINE = _NOW + """
redis.call('ZADD', ARGV[1] .. 'deadlines', now + tonumber(ARGV[4]), ARGV[3])
return now
"""

# Pop what is due (at most a batch): each member once, to whichever node asks first.
_DUE = _NOW + """
local due = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'deadlines', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
if #due > 0 then redis.call('ZREM', ARGV[1] .. 'deadlines', unpack(due)) end
return due
"""

# A token bucket: ARGV[3] = key, ARGV[4] = burst, ARGV[5] = tokens per millisecond. 1: taken, 0: empty.
_TAKE = _NOW + """
local key, burst, rate = ARGV[1] .. 'bucket:' .. ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local kept = redis.call('HMGET', key, 'tokens', 'at')
local tokens, at = tonumber(kept[1]) or burst, tonumber(kept[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then tokens = tokens - 1; taken = 1 end
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', key, math.ceil(burst / rate) + 1000)
return taken
"""

# A heartbeat: ARGV[3..7] = node id, node timeout (ms), "1" to claim the node's own id (a node
# that starts under the name of one that was not claimed), the last id the node read from its inbox
# ("" at its first beat, which makes its inbox), the inbox's length. Scores the node; claims at most
# one silent node. Returns {now, nodes alive, 1 if this node had been claimed} and, with a claim,
# {..., claimed node, where it had read its inbox to, its inbox's last id, {user id, session id,
# "1" if away, ...}}.
#
# No node is claimed for a silence that was Redis's own: when no node at all beat for half a timeout
# (Redis was down or frozen), claims wait until every node has had a whole timeout to beat again.
_BEAT = _NOW + """
local P, me, timeout, own, read = ARGV[1], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6]
local latest = redis.call('ZREVRANGE', P .. 'nodes', 0, 0, 'WITHSCORES')
if #latest > 0 and now - tonumber(latest[2]) > timeout / 2 then
  redis.call('SET', P .. 'claims-after', now + timeout)
end
local lost = 0
if read ~= '' and not redis.call('ZSCORE', P .. 'nodes', me) then lost = 1 end
redis.call('ZADD', P .. 'nodes', now, me)
local claimed = nil
if own then
  claimed = me
elseif now >= tonumber(redis.call('GET', P .. 'claims-after') or '0') then
  local silent = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now - timeout, 'LIMIT', 0, 1)
  if #silent > 0 then
    claimed = silent[1]
    redis.call('ZREM', P .. 'nodes', claimed)
  end
end
local alive = redis.call('ZCOUNT', P .. 'nodes', now - timeout, '+inf')
local reply = {now, alive, lost}
if claimed ~= nil then
  local sessions = {}
  local mark = claimed .. '.'
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'users')) do
    local raw = redis.call('GET', P .. 'user:' .. id)
    if raw then
      for _, d in ipairs(cjson.decode(raw).devices) do
        if string.sub(d.socket_id, 1, #mark) == mark then
          table.insert(sessions, id)
          table.insert(sessions, d.socket_id)
          table.insert(sessions, d.away and '1' or '0')
        end
      end
    end
  end
  local was_read = redis.call('GET', P .. 'read:' .. claimed) or ('0-0')
  local last = redis.call('XREVRANGE', P .. 'inbox:' .. claimed, '+', '-', 'COUNT', 1)
  if claimed ~= me then
    redis.call('DEL', P .. 'read:' .. claimed)
    redis.call('PEXPIRE', P .. 'inbox:' .. claimed, 3600000)  -- read by the claimer for its graces, then gone
  end
  reply = {now, alive, lost, claimed, was_read, #last > 0 and last[1][1] or was_read, sessions}
end
if read == '' then
  redis.call('XADD', P .. 'inbox:' .. me, 'MAXLEN', '~', ARGV[7], '*', 'k', 'h')  -- the inbox exists
  if own then read = reply[5] else read = now .. '-0' end
end
redis.call('SET', P .. 'read:' .. me, read)
return reply
"""

# Leaving: scored as long dead, so that another node claims what is left at once; ARGV[3] = node id,
# ARGV[4] = the last id it read from its inbox (what the claimer reads after).
_LEAVE = _NOW + """
redis.call('ZADD', ARGV[1] .. 'nodes', 0, ARGV[3])
redis.call('SET', ARGV[1] .. 'read:' .. ARGV[3], ARGV[4])
return 1
"""


async def _guarded(fn: Callable[..., Awaitable[object]], *args: Any, retry: Cluster | None = None) -> None:
    """One piece of a node's background work: its failure is logged, never the end of the loop
    that runs it. With ``retry``, a step Redis failed is tried again once it is back."""
    try:
        await fn(*args)
    except RegistryUnavailable:
        if retry is None:
            raise
        retry.later(fn, *args)
    except Exception:
        log.exception("cluster work failed: %r", fn)


_THEN: Final = msgspec.json.Decoder(list[tuple[str, str, msgspec.Raw]])


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def node_of(socket_id: str) -> str | None:
    """The node whose session ``socket_id`` is (None: not a node's: one node serves everything)."""
    node, dot, _ = socket_id.partition(".")
    return node if dot else None


class Cluster:
    """This node among the others on one Redis. See the module docstring."""

    def __init__(self, registry: RedisRegistry, reader: coredis.Redis[bytes], node_id: str, config: Config,
                 metrics: MetricsRegistry) -> None:
        self.registry = registry
        self.reader = reader  # a client of its own: its XREAD blocks
        self.node_id = node_id
        self.socket_id_prefix = node_id + "."
        self.node_timeout = config.node_timeout
        self.claim_own = bool(config.node_id)  # a name given may be the one of a node that died
        self.signalling: Signalling | None = None
        self.on_claimed: Callable[[], None] = lambda: None  # close every connection (see _beat)
        self.up = False  # Redis answered the last heartbeat
        self._beat_failed = False
        self.claimed: set[str] = set()  # dead nodes whose sessions this one answers for
        self.inboxes: dict[str, str] = {}  # inbox key -> the last id read
        self._outbox: list[tuple[str, str, str, str, bytes]] = []  # (node, socket, kind, event, payload)
        self._outbox_ready = trio.Event()
        # Entries ever queued, and ever written (or dropped); a write sets and replaces _progress.
        self._queued = 0
        self._written = 0
        self._in_flight = 0  # the outbox's first entries, being written now
        self._progress = trio.Event()
        self._reading = trio.CancelScope()  # the inbox read under way
        # Claimed inboxes read again up to an id: which of those entries are handled (see _claim).
        self._replay: dict[str, tuple[tuple[int, int], set[str]]] = {}
        self._later: list[tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]] = []
        self._scripts = {name: registry.client.register_script(text) for name, text in (
            ("forward", _FORWARD), ("deadline", _DEADLINE), ("due", _DUE), ("take", _TAKE),
            ("beat", _BEAT), ("leave", _LEAVE),
        )}
        registry.observe = self._round_trip
        self.nodes_alive = 0
        m = metrics
        m.add(Gauge("callbox_redis_up", "1 while Redis answers this node.", fn=lambda: {(): float(self.up)}))
        self.rtt = m.add(Histogram("callbox_redis_seconds", "Round trips to Redis.", RTT_BUCKETS))
        m.add(Gauge("callbox_cluster_nodes", "Nodes alive, as this node last saw.",
                    fn=lambda: {(): float(self.nodes_alive)}))
        self.relays = m.add(Counter("callbox_cluster_relays_total", "Events sent to or received from other nodes.",
                                    ["direction"], initial=[("out",), ("in",)]))
        self.lag = m.add(Histogram("callbox_cluster_lag_seconds", "From an event's append to another node's "
                                   "inbox to its read there (the two nodes' clocks apart included).", RTT_BUCKETS))
        self.dropped = m.add(Counter("callbox_cluster_dropped_total",
                                     "Events for other nodes dropped: Redis was away too long.", [],
                                     initial=[()]))

    # -- what the service asks (Shared) ------------------------------------------------------------

    def here(self, socket_id: str) -> bool:
        node = node_of(socket_id)
        return node is None or node == self.node_id or node in self.claimed

    async def deadline(self, kind: str, key: str, seconds: float) -> None:
        member = msgspec.json.encode([kind, key])
        await self._script("deadline", member, int(seconds * 1000))

    async def take(self, key: str, burst: int, per_second: float) -> bool:
        return bool(await self._script("take", key, burst, per_second / 1000))

    def own(self, socket_id: str) -> bool:
        return socket_id.startswith(self.socket_id_prefix)

    async def relay(self, user_id: str, socket_id: str, target: str, event: CallEvent, name: str,
                    relay: OfferRelay | AnswerRelay | CandidateRelay) -> Call:
        before = self._queued  # what this node sent before goes first (not what others queue meanwhile)
        if self._written < before:
            with trio.move_on_after(self.registry.timeout):
                while self._written < before:
                    await self._progress.wait()
            if self._written < before:
                raise RegistryUnavailable("Redis has not taken this node's earlier events")
        with_type = getattr(relay, "callType", None) is msgspec.UNSET
        head = msgspec.json.encode(relay)[:-1]  # up to the closing brace: the script adds the rest
        call = await self.registry.relay(user_id, socket_id, target, event,
                                         (self.node_id, name, head, with_type, INBOX_MAXLEN))
        remote = sum(1 for s in call.sockets_of(target) if not self.own(s))
        if remote:
            self.relays.inc("out", value=remote)
        return call

    def end_grace_at(self, socket_id: str, deliver_to: str | None,
                     then: Sequence[Sent]) -> None:
        self._forward(socket_id, "g", deliver_to or "", msgspec.json.encode(then))

    def later(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        self._later.append((fn, args))

    # -- what the transport asks -------------------------------------------------------------------

    def _forward(self, socket_id: str, kind: str, event: str, payload: bytes) -> None:
        node = node_of(socket_id)
        assert node is not None
        if len(self._outbox) >= OUTBOX_LIMIT:
            dropped = self._outbox.pop(self._in_flight)  # the oldest not being written
            self._written += 1  # as good as written: nothing waits for it any more
            self.dropped.inc()
            log.error("event for another node dropped: Redis has been away too long",
                      extra={"fields": {"node": dropped[0], "socket": dropped[1], "event": dropped[3]}})
        self._outbox.append((node, socket_id, kind, event, payload))
        self._queued += 1
        self._outbox_ready.set()

    def wrap(self, inner: Transport) -> ClusterTransport:
        """``inner`` (this node's sessions), and the other nodes' through their inboxes."""
        return ClusterTransport(inner, self)

    def unready(self) -> str | None:
        return None if self.up else "redis unavailable"

    # -- running -----------------------------------------------------------------------------------

    def _round_trip(self, seconds: float, ok: bool) -> None:
        self.rtt.observe(seconds)
        if not ok and self.up:
            self.up = False
            log.error("redis unavailable: requests are refused (UNAVAILABLE) until it is back")

    async def _script(self, name: str, *args: object, guarded: bool = True) -> Any:
        """Run one of this module's scripts (``guarded``: not done if Redis runs it past our deadline)."""
        late_after = self.registry.late_after() if guarded else ""
        reply = await self.registry._redis(self._scripts[name](
            keys=[self.registry.prefix + "clock"],
            args=[self.registry.prefix, late_after, *args],  # type: ignore[list-item]
        ))
        if reply == b"late":
            raise RegistryUnavailable("Redis ran the step past its deadline: not done")
        return reply

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node's tasks, until cancelled: heartbeats and claims, the inbox reader, the writer,
        the deadlines. Started at once: until Redis answers a first heartbeat, the node is not ready
        (and its requests are refused ``UNAVAILABLE``), but it serves /healthz and /readyz."""
        assert self.signalling is not None
        task_status.started()
        while not await self._beat(first=True):  # noqa: ASYNC110 (Redis is polled: nothing to wait on)
            await trio.sleep(RETRY)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._beats)
            nursery.start_soon(self._read)
            nursery.start_soon(self._write)
            nursery.start_soon(self._ticks)

    async def _beat(self, *, first: bool = False) -> bool:
        timeout_ms = int(self.node_timeout * 1000)
        read = "" if first else self.inboxes[self._inbox(self.node_id)]
        try:
            sent = time.time()
            reply = await self._script("beat", self.node_id, timeout_ms, "1" if first and self.claim_own else "0",
                                       read, INBOX_MAXLEN, guarded=False)
            self.registry.offset_ms = int(reply[0]) - (sent + time.time()) * 500  # Redis's clock - ours
        except RegistryUnavailable as exc:
            if not self._beat_failed:  # once per outage, not once per try
                self._beat_failed = True
                log.warning("heartbeat failed: this node is not ready until Redis answers",
                            extra={"fields": {"error": str(exc)}})
            return False
        self._beat_failed = False
        if not self.up:
            self.up = True
            log.info("redis available", extra={"fields": {"node": self.node_id}})
        self.nodes_alive = int(reply[1])
        if first:  # read from now on (a node that had this name: from where it had read to)
            own = len(reply) > 3 and reply[3].decode() == self.node_id
            self.inboxes[self._inbox(self.node_id)] = reply[4].decode() if own else f"{reply[0]}-0"
        if reply[2]:
            # Another node took this one for dead (it could not reach Redis for a node timeout) and
            # its users for lost: they are let go, to come back (resume) as from any lost connection.
            log.error("this node was claimed by another one: its connections close so that their clients "
                      "reconnect and take their sessions back", extra={"fields": {"node": self.node_id}})
            self.on_claimed()
        if len(reply) > 3:
            await self._claim(reply[3].decode(), reply[4].decode(), reply[5].decode(), [x.decode() for x in reply[6]])
        later, self._later = self._later, []
        for fn, args in later:
            await _guarded(fn, *args, retry=self)  # Redis failing again: again at the next beat
        return True

    async def _beats(self) -> None:
        period = min(BEAT, self.node_timeout / 4)
        while True:
            await trio.sleep(period)
            await self._beat()

    async def _claim(self, node: str, was_read: str, last: str, sessions: list[str]) -> None:
        """A dead node's sessions are this node's now: each was lost without a goodbye.

        Its inbox is read again from where it had read to at its last beat, up to ``last``, for
        what it may not have handled: the events for its sessions that were away (their queues died
        with it) and the ends of graces; not the events for sessions that were connected (it had
        sent them on already)."""
        assert self.signalling is not None
        if node != self.node_id or sessions:
            log.warning("node claimed", extra={"fields": {"node": node, "by": self.node_id,
                                                           "sessions": len(sessions) // 3}})
        inbox = self._inbox(node)
        self._replay[inbox] = (_stream_id(last), {s for s, away in zip(sessions[1::3], sessions[2::3],
                                                                       strict=True) if away == "1"})
        if node != self.node_id:
            self.claimed.add(node)
            self.inboxes[inbox] = was_read
            self._reading.cancel()  # the read under way does not cover that inbox: a new one does
        for user_id, socket_id in zip(sessions[::3], sessions[1::3], strict=True):
            session = Session(socket_id)
            session.user_id = user_id
            await _guarded(self.signalling.closed, session, True)

    def _inbox(self, node: str) -> str:
        return f"{self.registry.prefix}inbox:{node}"

    async def _read(self) -> None:
        assert self.signalling is not None
        block = int(min(1.0, self.registry.timeout / 2) * 1000)
        while True:
            reply = None
            with trio.CancelScope() as self._reading:
                try:
                    reply = await self.registry._redis(
                        self.reader.xread(dict(self.inboxes), count=BATCH, block=block), timed=False)
                except RegistryUnavailable:
                    await trio.sleep(RETRY)
                    continue
            for key, entries in (reply or {}).items():  # type: ignore[attr-defined]
                inbox = key.decode()
                replay = self._replay.get(inbox)
                for entry in entries:
                    self.inboxes[inbox] = entry.identifier.decode()
                    fields = entry.field_values
                    if replay is not None:
                        if _stream_id(entry.identifier.decode()) > replay[0]:
                            replay = self._replay.pop(inbox, None)
                        elif fields[b"k"] == b"m" and fields[b"s"].decode() not in replay[1]:
                            continue  # handled by the dead node already (see _claim)
                    await _guarded(self._apply, entry.identifier, fields)

    async def _apply(self, identifier: bytes, fields: dict[bytes, bytes]) -> None:
        assert self.signalling is not None
        kind = fields[b"k"]
        if kind == b"h":
            return  # the entry that made the inbox
        socket_id = fields[b"s"].decode()
        if kind == b"m":
            self.relays.inc("in")
            self.lag.observe(max(0.0, time.time() - int(identifier.split(b"-")[0]) / 1000))
            self.signalling.deliver(socket_id, fields[b"e"].decode(), msgspec.Raw(fields[b"p"]))
        elif kind == b"g":
            then = _THEN.decode(fields[b"p"])
            self.signalling.end_grace_here(socket_id, fields[b"e"].decode() or None, then)
        elif kind == b"d":
            await self.signalling.transport.disconnect(socket_id)

    async def _write(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            while self._outbox:
                batch = self._outbox[:BATCH]
                self._in_flight = len(batch)
                args: list[str | bytes | int] = [INBOX_MAXLEN]
                for entry in batch:
                    args.extend(entry)
                try:
                    await self._script("forward", *args)
                except RegistryUnavailable:
                    await trio.sleep(RETRY)
                    continue
                finally:
                    self._in_flight = 0
                del self._outbox[:len(batch)]
                self._written += len(batch)
                self._progress.set()
                self._progress = trio.Event()
                self.relays.inc("out", value=len(batch))

    async def _ticks(self) -> None:
        assert self.signalling is not None
        while True:
            await trio.sleep(TICK)
            try:
                due = await self._script("due", BATCH)
            except RegistryUnavailable:
                continue
            for member in due:
                kind, key = msgspec.json.decode(member, type=tuple[str, str])
                await _guarded(self.signalling.deadline_passed, kind, key, retry=self)

    async def drained(self, *, handover: bool) -> None:
        """After this node's connections closed: wait until what it still had to send went out and,
        in hand-over mode, its away users came back elsewhere (bound it by a cancel scope)."""
        assert self.signalling is not None
        # Polled (once a tick, for a few seconds at the end of a node's life) rather than signalled
        # from each place a grace ends or the outbox empties.
        while (handover and self.signalling.graces) or self._outbox:  # noqa: ASYNC110
            await trio.sleep(TICK)

    async def leave(self) -> None:
        """This node stops: what it still holds is claimed by another one at once."""
        with trio.move_on_after(self.registry.timeout):
            with contextlib.suppress(RegistryUnavailable):
                await self._script("leave", self.node_id, self.inboxes[self._inbox(self.node_id)])


class ClusterTransport:
    """Sends to this node's sessions through ``inner``, and to other nodes' through their inboxes."""

    def __init__(self, inner: Transport, cluster: Cluster) -> None:
        self.inner = inner
        self.cluster = cluster

    def send(self, socket_id: str, event: str, payload: Payload) -> bool:
        if self.cluster.here(socket_id):
            return self.inner.send(socket_id, event, payload)
        self.cluster._forward(socket_id, "m", event, msgspec.json.encode(payload))
        return True

    async def disconnect(self, socket_id: str) -> None:
        if self.cluster.here(socket_id):
            await self.inner.disconnect(socket_id)
        else:
            self.cluster._forward(socket_id, "d", "", b"")

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        self.inner.start_soon(fn, *args)


@contextlib.asynccontextmanager
async def open_cluster(config: Config, metrics: MetricsRegistry) -> AsyncIterator[Cluster]:
    """This node on ``config.redis_url`` for the length of the block: its registry and its reader."""
    node_id = config.node_id or secrets.token_hex(4)
    # coredis tells at INFO of each script it loads again after a NOSCRIPT (routine, not news), and at
    # ERROR, with a traceback, of each connection attempt that fails while Redis is away: this
    # module says that once per outage (callbox.cluster), with the error.
    logging.getLogger("coredis").setLevel(logging.CRITICAL)
    timeout = config.redis_timeout
    registry_client: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.redis_url, connect_timeout=timeout, stream_timeout=timeout)
    reader: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.redis_url, connect_timeout=timeout, stream_timeout=timeout + 1)
    async with registry_client, reader:
        registry = RedisRegistry(registry_client, timeout=timeout, prefix=config.redis_prefix)
        yield Cluster(registry, reader, node_id, config, metrics)
