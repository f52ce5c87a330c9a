"""The registry shared by several nodes: :class:`RedisRegistry`, the :class:`Registry` of
:mod:`._registry` kept in Redis (or Valkey), needing the ``callbox[redis]`` extra (coredis).

Theory of operation
===================

It behaves exactly as :class:`MemoryRegistry` does: same methods, same snapshots, same refusals.
Each method is **one Lua script** (EVALSHA), and Redis runs a script alone, so a method is one
atomic step over all the state, as a method of the memory registry is in its process: the first
accept wins, a glare merges once, a busy check and the call it guards cannot be split by another node.

Keys (``{callbox}`` is the hash tag; the prefix is a setting so that tests can share a server)::

    {callbox}:user:<user id>   a User as JSON (its devices inside)         GET/SET/DEL
    {callbox}:call:<call id>   a Call as JSON                              GET/SET/DEL
    {callbox}:users            the set of user ids online                  counts()
    {callbox}:calls            live call ids, scored by creation order     counts(), end_all()
    {callbox}:clock            the activity counter (INCR): Device.active, "least recently active"
    {callbox}:seq              the creation counter scoring {callbox}:calls (end_all ends calls in
                               the order they were made, as the memory registry's dict does)

Every key carries the same hash tag, so every key is in **one hash slot**: a script may touch any
user or call it finds on its way (the peer, the call of a replaced device), which Redis only allows
within one slot. So it runs unchanged on one Redis, a Sentinel pair, Valkey, or a Cluster (where all
of it lives on the node that owns that slot: the registry is one shard's worth of work, by design).

What each script reads and writes is what the memory method of the same name reads and writes:
the body of each script below follows :class:`MemoryRegistry` line by line (the same helpers, same
names: ``holder``, ``touch``, ``user_moves``, ``call_moves``, ``end_``, ``takes_part``,
``remove_device``, ``answer``), keeping a record of a user or a call in a Lua table for the length of
the script and writing it back (SET) wherever the memory one assigns to its dicts. A refusal is raised
before anything is written, as there. ``user`` and ``call`` are a GET; ``counts`` a script of two
reads.

The rules are not written twice. The scripts look every move up in ``_state.py``'s tables
(``USER_TRANSITIONS``, ``CALL_TRANSITIONS``, ``CALL_ACTORS``, and ``end_event`` for every state and
party), serialised to JSON by :func:`state_tables` and built into the scripts' text when this module
is imported: a change of the tables changes the scripts, and their SHA, with no step to forget.
A move the tables do not allow raises :class:`TransitionError` here too (a bug, as there).

Records are JSON: cjson in the scripts, msgspec (the snapshot structs of :mod:`._registry`) here.
Lua's cjson writes an empty table as ``{}``; the scripts write the three array fields that may be
empty (``ringing``, ``elsewhere``, ``devices``) back as ``[]``.

Every call to Redis runs under a deadline (``timeout``); a Redis error, a lost connection or the
deadline raises :class:`RegistryUnavailable`, never an answer from anywhere else. After a deadline the
step may or may not have been applied (Redis may have run the script and its reply been lost): the
caller refuses the request it was serving, and the state stays consistent either way, since a
script is applied whole or not at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, TypeVar

import anyio
import coredis
import coredis.exceptions
import msgspec
import trio

from ._errors import ErrorCode, SignallingError
from ._payloads import CallType
from ._registry import Accepted, Call, Ended, Joined, RegistryUnavailable, Returned, User
from ._state import (
    CALL_ACTORS,
    CALL_TRANSITIONS,
    USER_TRANSITIONS,
    CallEvent,
    CallState,
    Outcome,
    Role,
    TransitionError,
    UserEvent,
    UserState,
    end_event,
)

__all__ = ["RedisRegistry", "RegistryUnavailable", "open_redis_registry", "state_tables", "TIMEOUT"]

# How long one step may take in Redis, round trip included. A script here runs in microseconds and a
# round trip on a LAN in well under a millisecond: 2 s means Redis is stuck or unreachable, and the
# request waiting for it (a user's ack) should fail rather than hang.
TIMEOUT: Final = 2.0

T = TypeVar("T")


def state_tables() -> dict[str, dict[str, dict[str, str | bool]]]:
    """The state machine tables as the scripts see them (plain strings: the enums' values)."""
    return {
        "user": {s.value: {e.value: t.value for e, t in row.items()} for s, row in USER_TRANSITIONS.items()},
        "call": {s.value: {e.value: t.value for e, t in row.items()} for s, row in CALL_TRANSITIONS.items()},
        "actors": {e.value: {r.value: True for r in sorted(roles, key=lambda r: r.value)}
                   for e, roles in CALL_ACTORS.items()},
        "end_event": {r.value: {s.value: end_event(s, r).value for s in CallState}
                      for r in (Role.CALLER, Role.CALLEE)},
    }


_TABLES_JSON: Final = msgspec.json.encode(state_tables()).decode()
assert "]==]" not in _TABLES_JSON  # it sits in a Lua long string below

# The helpers every script shares: the memory registry's private methods, over Lua tables.
# ARGV[1] is the key prefix ("{callbox}:"), ARGV[2] the method's arguments as a JSON array, ARGV[4]
# the Redis time (ms) past which the step is not to be done ("": always): the caller gave up waiting
# by then and refused the request it served (a frozen Redis runs what it had buffered once it thaws).
_PRELUDE = """
local P = ARGV[1]
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[4]) then return {'late'} end
end
local A = cjson.decode(ARGV[2])
local NULL = cjson.null
local T = cjson.decode([==[""" + _TABLES_JSON + """]==])

local users, calls = {}, {}  -- the records read or written by this script; false: known absent

local function refuse(code, message)
  error({refusal = true, code = code, message = message})
end

local function encode(record)
  local text = cjson.encode(record)
  text = string.gsub(text, '"ringing":{}', '"ringing":[]')
  text = string.gsub(text, '"elsewhere":{}', '"elsewhere":[]')
  text = string.gsub(text, '"devices":{}', '"devices":[]')
  return text
end

local function replace(record, changes)  -- msgspec.structs.replace
  local copy = {}
  for k, v in pairs(record) do copy[k] = v end
  for k, v in pairs(changes) do copy[k] = v end
  return copy
end

local function contains(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end

local function without(list, value)
  local out = {}
  for _, v in ipairs(list) do if v ~= value then table.insert(out, v) end end
  return out
end

local function same_secret(a, b)  -- hmac.compare_digest: the time does not tell how much matched
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i))) end
  return diff == 0
end

local function transition(machine, state, event)
  local row = T[machine][state]
  local moved = row and row[event]
  if moved == nil then
    error({err = 'callbox TransitionError ' .. machine .. ' ' .. state .. ' ' .. event})
  end
  return moved
end

local function allows(state, event, role)  -- call_allows
  return role ~= nil and T.actors[event][role] == true and T.call[state][event] ~= nil
end

local function tick()
  return redis.call('INCR', P .. 'clock')
end

-- users

local function load(cache, kind, id)  -- a record, read from Redis once per script
  local record = cache[id]
  if record == nil then
    local raw = redis.call('GET', P .. kind .. ':' .. id)
    record = raw and cjson.decode(raw) or false
    cache[id] = record
  end
  return record or nil
end

local function get_user(id) return load(users, 'user', id) end

local function put_user(user)
  users[user.id] = user
  redis.call('SET', P .. 'user:' .. user.id, encode(user))
  redis.call('SADD', P .. 'users', user.id)
  return user
end

local function device_of(user, socket_id)
  for _, d in ipairs(user.devices) do if d.socket_id == socket_id then return d end end
  return nil
end

local function replace_device(user, which, changes)
  local out = {}
  for _, d in ipairs(user.devices) do
    table.insert(out, d.socket_id == which and replace(d, changes) or d)
  end
  return out
end

local function user_moves(user, event, call_id)
  local state = transition('user', user.state, event)
  if state == 'offline' then
    users[user.id] = false
    redis.call('DEL', P .. 'user:' .. user.id)
    redis.call('SREM', P .. 'users', user.id)
  else
    put_user(replace(user, {state = state, call_id = call_id}))
  end
end

local function holder(user_id, socket_id)
  local user = get_user(user_id)
  if user == nil or device_of(user, socket_id) == nil then refuse('NOT_JOINED') end
  return user
end

local function touch(user, socket_id)
  put_user(replace(user, {devices = replace_device(user, socket_id, {active = tick()})}))
end

-- calls

local function get_call(id) return load(calls, 'call', id) end

local function put_call(call)
  calls[call.id] = call
  redis.call('SET', P .. 'call:' .. call.id, encode(call))
  return call
end

local function role_of(call, user_id, socket_id)
  if user_id == call.caller and socket_id == call.caller_socket then return 'caller' end
  if user_id == call.callee then
    if call.callee_socket ~= NULL then
      if socket_id == call.callee_socket then return 'callee' end
    elseif contains(call.ringing, socket_id) then
      return 'callee'
    end
  end
  return nil
end

local function peer_of(call, role)
  if role == 'caller' then return call.callee end
  return call.caller
end

local function sockets_of(call, user_id)
  if user_id == call.caller then return {call.caller_socket} end
  if call.callee_socket ~= NULL then return {call.callee_socket} end
  return call.ringing
end

local function carrier(call, user_id)
  if user_id == call.caller then return call.caller_socket end
  return call.callee_socket
end

local function call_moves(call, event, changes)
  local state = transition('call', call.state, event)
  if state == call.state and changes == nil then return call end
  local moved = replace(call, changes or {})
  moved.state = state
  return put_call(moved)
end

local function end_(call, event, outcome, by, device)  -- ENDING: release both parties; CLOSE: gone
  local ending = call_moves(call, event)
  for _, party in ipairs({call.caller, call.callee}) do
    local user = get_user(party)
    if user ~= nil and user.call_id == call.id then user_moves(user, 'call_end', NULL) end
  end
  transition('call', ending.state, 'close')
  calls[call.id] = false
  redis.call('DEL', P .. 'call:' .. call.id)
  redis.call('ZREM', P .. 'calls', call.id)
  return {call = call, outcome = outcome, by = by, device = device or NULL}
end

local function takes_part(user, socket_id)
  if user.call_id == NULL then return nil end
  local call = get_call(user.call_id)
  local sockets = sockets_of(call, user.id)
  if #sockets == 1 and sockets[1] == socket_id then return call end
  return nil
end

local function remove_device(user, socket_id, outcome)
  local ended = NULL
  local call = takes_part(user, socket_id)
  if call ~= nil then
    ended = end_(call, 'drop', outcome, user.id, socket_id)
  elseif user.call_id ~= NULL then
    local rung = get_call(user.call_id)
    if contains(rung.ringing, socket_id) then
      put_call(replace(rung, {ringing = without(rung.ringing, socket_id)}))
    end
  end
  user = get_user(user.id)
  local devices = {}
  for _, d in ipairs(user.devices) do
    if d.socket_id ~= socket_id then table.insert(devices, d) end
  end
  if #devices > 0 then
    put_user(replace(user, {devices = devices}))
  else
    user_moves(user, 'leave', NULL)
  end
  return ended
end

local function answer(call, user_id, socket_id, event)
  local elsewhere = without(call.ringing, socket_id)
  local user = get_user(user_id)
  if user.state == 'reconnecting' then
    -- The call rang at a device that is away; another one answers: the user is back in it.
    user_moves(user, 'return', user.call_id)
  end
  touch(get_user(user_id), socket_id)
  return {call = call_moves(call, event, {callee_socket = socket_id, ringing = {}}), elsewhere = elsewhere}
end

local function answerable(call_id, user_id, socket_id, caller, event)
  holder(user_id, socket_id)
  local call = get_call(call_id)
  if call == nil or (caller ~= NULL and caller ~= call.caller)
      or not allows(call.state, event, role_of(call, user_id, socket_id)) then
    refuse('CALL_NOT_FOUND')
  end
  return call
end

"""

# What a script returns: {"ok", json} (or {"accepted", json} for a glare merge), or a refusal
# {"err", code[, message]}. A method's body returns a record (a Lua table), NULL, or JSON text.
_EPILOGUE = """
local ok, result, kind = pcall(main)
if ok then
  if type(result) ~= 'string' then result = encode(result) end
  return {kind or 'ok', result}
end
if type(result) == 'table' and result.refusal then return {'err', result.code, result.message} end
error(result)
"""

# The methods' bodies: each the memory method of the same name.
_BODIES: Final[dict[str, str]] = {
    "join": """
local user_id, socket_id, device_id, max_devices, resume_token = A[1], A[2], A[3], A[4], A[5]
local current = get_user(user_id)
if device_id == NULL then device_id = socket_id end
local device = {socket_id = socket_id, device_id = device_id, active = tick(), resume_token = resume_token,
                away = false}
if current == nil then
  local state = transition('user', 'offline', 'join')
  local user = put_user({id = user_id, state = state, devices = {device}, call_id = NULL})
  return {user = user, replaced_socket = NULL, ended = NULL, ringing = NULL}
end
if device_of(current, socket_id) ~= nil then
  return {user = current, replaced_socket = NULL, ended = NULL, ringing = NULL}
end
local replaced = nil
for _, d in ipairs(current.devices) do
  if d.device_id == device_id then replaced = d; break end
end
if replaced == nil and #current.devices >= max_devices then
  -- The least recently active device not in a call (ringing is not being in it): with one
  -- device allowed, that one, in a call or not.
  local held = NULL
  if current.call_id ~= NULL then held = carrier(get_call(current.call_id), user_id) end
  for _, d in ipairs(current.devices) do
    if (d.socket_id ~= held or max_devices == 1) and (replaced == nil or d.active < replaced.active) then
      replaced = d
    end
  end
end
local ended = NULL
if replaced ~= nil then
  if #current.devices == 1 then
    -- The user's only device is replaced: it leaves first (its call, if any, ends).
    ended = remove_device(current, replaced.socket_id, 'replaced')
    local state = transition('user', 'offline', 'join')
    local user = put_user({id = user_id, state = state, devices = {device}, call_id = NULL})
    return {user = user, replaced_socket = replaced.socket_id, ended = ended, ringing = NULL}
  end
  ended = remove_device(current, replaced.socket_id, 'replaced')
  current = get_user(user_id)
end
local devices = replace(current.devices, {})
table.insert(devices, device)
local user = put_user(replace(current, {devices = devices}))
local ringing = NULL
if user.call_id ~= NULL then
  local call = get_call(user.call_id)
  if call.callee == user_id and call.callee_socket == NULL then  -- it rings: the new device too
    local rung = replace(call.ringing, {})
    table.insert(rung, socket_id)
    ringing = put_call(replace(call, {ringing = rung}))
  end
end
return {user = user, replaced_socket = replaced and replaced.socket_id or NULL, ended = ended, ringing = ringing}
""",
    "leave": """
local user_id, socket_id, away_only = A[1], A[2], A[3]
local user = get_user(user_id)
local device = user and device_of(user, socket_id)
if device == nil or (away_only and not device.away) then return NULL end  -- taken over already (or back)
return remove_device(user, socket_id, 'disconnected')
""",
    "detach": """
local user_id, socket_id = A[1], A[2]
local user = get_user(user_id)
if user == nil or device_of(user, socket_id) == nil then return NULL end
local call = takes_part(user, socket_id)
if call == nil then return NULL end
if user.state ~= 'reconnecting' then
  user_moves(user, 'detach', user.call_id)
  user = get_user(user_id)
end
put_user(replace(user, {devices = replace_device(user, socket_id, {away = true})}))
return call
""",
    "reattach": """
local user_id, socket_id, resume_token, new_token = A[1], A[2], A[3], A[4]
local user = get_user(user_id)
if user == nil then return NULL end
local device = nil
if resume_token == NULL then
  device = device_of(user, socket_id)
  if device == nil or not device.away then return NULL end
else
  for _, d in ipairs(user.devices) do
    if d.resume_token ~= NULL and same_secret(d.resume_token, resume_token) then device = d; break end
  end
  if device == nil then return NULL end
end
local previous = device.socket_id
local call = takes_part(user, previous)
if user.state == 'reconnecting' and call ~= nil then
  user_moves(user, 'return', user.call_id)
  user = get_user(user_id)
end
local token = new_token
if token == NULL or token == '' then token = device.resume_token end
local devices = replace_device(user, previous, {socket_id = socket_id, away = false, resume_token = token,
                                                active = tick()})
user = put_user(replace(user, {devices = devices}))
if call ~= nil and previous ~= socket_id then  -- the call reaches it on its new session
  if call.caller == user_id then
    call = put_call(replace(call, {caller_socket = socket_id}))
  elseif call.callee_socket ~= NULL then
    call = put_call(replace(call, {callee_socket = socket_id}))
  else
    local rung = {}
    for _, s in ipairs(call.ringing) do table.insert(rung, s == previous and socket_id or s) end
    call = put_call(replace(call, {ringing = rung}))
  end
end
return {user = user, socket_id = socket_id, previous_socket = previous, call = call or NULL}
""",
    "initiate": """
local caller, socket_id, callee, call_type, call_id = A[1], A[2], A[3], A[4], A[5]
local from_user = holder(caller, socket_id)
if callee == caller then refuse('INVALID_TARGET') end
if from_user.state ~= 'online' then
  local glare = get_call(from_user.call_id == NULL and '' or from_user.call_id)
  if glare ~= nil and glare.caller == callee and glare.callee == caller
      and contains(glare.ringing, socket_id) and allows(glare.state, 'merge', 'callee') then
    return answer(glare, caller, socket_id, 'merge'), 'accepted'
  end
  refuse('ALREADY_IN_CALL')
end
local to_user = get_user(callee)
if to_user == nil then refuse('USER_OFFLINE') end
if to_user.state ~= 'online' then refuse('USER_BUSY') end  -- its call rings, goes on, or waits for it
local rung = {}
for _, d in ipairs(to_user.devices) do
  if not d.away then table.insert(rung, d.socket_id) end
end
if #rung == 0 then refuse('USER_OFFLINE') end  -- nobody rings a device whose connection is gone
local call = put_call({id = call_id, caller = caller, caller_socket = socket_id, callee = callee,
                       callee_socket = NULL, ringing = rung, call_type = call_type, state = 'initiating'})
redis.call('ZADD', P .. 'calls', 'NX', redis.call('INCR', P .. 'seq'), call_id)
touch(from_user, socket_id)
user_moves(get_user(caller), 'call_start', call_id)
user_moves(to_user, 'call_start', call_id)
return call
""",
    "ring": """
local call = get_call(A[1])
if call == nil or not allows(call.state, 'ring', 'server') then return NULL end
return call_moves(call, 'ring')
""",
    "accept": """
local call_id, user_id, socket_id, caller = A[1], A[2], A[3], A[4]
local call = answerable(call_id, user_id, socket_id, caller, 'accept')
return answer(call, user_id, socket_id, 'accept')
""",
    "reject": """
local call_id, user_id, socket_id, caller = A[1], A[2], A[3], A[4]
local call = answerable(call_id, user_id, socket_id, caller, 'reject')
touch(get_user(user_id), socket_id)
return end_(call, 'reject', 'rejected', user_id, socket_id)
""",
    "hang_up": """
local call_id, user_id, socket_id = A[1], A[2], A[3]
holder(user_id, socket_id)
local call = get_call(call_id)
local role = call and role_of(call, user_id, socket_id)
if call == nil or role == nil then refuse('CALL_NOT_FOUND', 'Call not found') end
local event = T.end_event[role][call.state]
if not allows(call.state, event, role) then refuse('CALL_NOT_FOUND', 'Call not found') end
local outcome = 'hangup'
if event == 'cancel' then outcome = 'cancelled' end
touch(get_user(user_id), socket_id)
return end_(call, event, outcome, user_id, socket_id)
""",
    "time_out": """
local call = get_call(A[1])
if call == nil or not allows(call.state, 'timeout', 'server') then return NULL end
return end_(call, 'timeout', 'timeout', NULL)
""",
    "relay": """
local user_id, socket_id, target, event, forward = A[1], A[2], A[3], A[4], A[5]
local user = holder(user_id, socket_id)
if get_user(target) == nil then refuse('NOT_IN_CALL', 'User not found') end
local call = nil
if user.call_id ~= NULL then call = get_call(user.call_id) end
local role = call and role_of(call, user_id, socket_id)
if call == nil or role == nil or peer_of(call, role) ~= target or not allows(call.state, event, role) then
  refuse('NOT_IN_CALL')
end
call = call_moves(call, event)
if forward and forward ~= NULL then
  -- forward = {this node, event name, with callType, inbox maxlen}; ARGV[3] the payload's JSON up to
  -- its callId (and callType when with_type), which are added here: the relay for the target's
  -- sessions on other nodes, appended to their inboxes in this same step.
  local node, name, with_type, maxlen = forward[1], forward[2], forward[3], forward[4]
  local body = ARGV[3]
  if with_type then body = body .. ',"callType":"' .. call.call_type .. '"' end
  body = body .. ',"callId":"' .. call.id .. '"}'
  for _, s in ipairs(sockets_of(call, target)) do
    local at = string.match(s, '^([^.]+)%.')
    if at ~= nil and at ~= node then
      redis.call('XADD', P .. 'inbox:' .. at, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, '*',
                 's', s, 'k', 'm', 'e', name, 'p', body)
    end
  end
end
return call
""",
    "end_all": """
local ended = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'calls', 0, -1)) do
  table.insert(ended, encode(end_(get_call(id), 'drop', A[1], NULL)))
end
return '[' .. table.concat(ended, ',') .. ']'
""",
    "counts": """
return '[' .. redis.call('SCARD', P .. 'users') .. ',' .. redis.call('ZCARD', P .. 'calls') .. ']'
""",
}

SCRIPTS: Final[dict[str, str]] = {
    name: _PRELUDE + "local function main()\n" + body + "end\n" + _EPILOGUE for name, body in _BODIES.items()
}

# Redis (or the network) failing, as opposed to a script refusing: the registry is unavailable.
_UNAVAILABLE = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _transition_error(message: str) -> TransitionError | None:
    """Our scripts' TransitionError (``callbox TransitionError <machine> <state> <event>``), if it is one."""
    words = message.split("callbox TransitionError ", 1)
    if len(words) != 2:
        return None
    machine, state, event = words[1].split()[:3]
    if machine == "user":
        return TransitionError(UserState(state), UserEvent(event))
    return TransitionError(CallState(state), CallEvent(event))


class RedisRegistry:
    """The registry in Redis: each method one Lua script. See the module docstring.

    ``client`` is a coredis client already entered (``async with client``), or use
    :func:`open_redis_registry`. ``timeout`` bounds every call to Redis; ``prefix`` names the hash tag
    of every key (``{prefix}:...``).
    """

    def __init__(self, client: coredis.Redis[bytes], *, timeout: float = TIMEOUT, prefix: str = "callbox") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"the prefix is put inside a hash tag, {{prefix}}: no braces in {prefix!r}")
        self.client = client
        self.timeout = timeout
        self.prefix = "{" + prefix + "}:"
        self._scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}
        self.observe: Callable[[float, bool], None] = lambda seconds, ok: None
        # Redis's clock minus ours, in ms, once known (a node's heartbeat measures it): each step
        # then carries the Redis time past which it is not to be done (see _PRELUDE).
        self.offset_ms: float | None = None

    def late_after(self) -> str:
        """The Redis time (ms) past which a step sent now is given up ("" while the offset is unknown)."""
        if self.offset_ms is None:
            return ""
        return str(int(time.time() * 1000 + self.offset_ms + self.timeout * 1000))

    async def _redis(self, request: object, *, timed: bool = True) -> object:
        """One call to Redis under the deadline; its failures are :class:`RegistryUnavailable`.
        ``observe(seconds, ok)`` hears of each (a blocking read is not ``timed``: only its failure)."""
        start = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                reply = await request  # type: ignore[misc]
        except trio.TooSlowError:
            self.observe(self.timeout, False)
            raise RegistryUnavailable(f"Redis did not answer within {self.timeout} s") from None
        except coredis.exceptions.ResponseError as exc:
            error = _transition_error(str(exc))  # Redis answered: with our scripts' own error, or its
            if error is not None:
                raise error from None
            self.observe(trio.current_time() - start, False)
            raise RegistryUnavailable(f"Redis: {exc}") from exc
        except _UNAVAILABLE as exc:
            self.observe(trio.current_time() - start, False)
            raise RegistryUnavailable(f"Redis: {exc!r}") from exc
        if timed:
            self.observe(trio.current_time() - start, True)
        return reply

    async def _run(self, name: str, result: type[T], *args: object, raw: bytes = b"") -> T:
        reply = await self._redis(self._scripts[name](
            keys=[self.prefix + "clock"],  # any key of the slot: what routes the script on a Cluster
            args=[self.prefix, msgspec.json.encode(args), raw, self.late_after()],
        ))
        assert isinstance(reply, list)
        if reply[0] == b"late":
            raise RegistryUnavailable("Redis ran the step past its deadline: not done")
        if reply[0] == b"err":
            code = ErrorCode(reply[1].decode())
            raise SignallingError(code, reply[2].decode() if len(reply) > 2 else None)
        if reply[0] == b"accepted":
            return msgspec.json.decode(reply[1], type=Accepted)  # type: ignore[return-value]
        return msgspec.json.decode(reply[1], type=result)

    async def join(self, user_id: str, socket_id: str, device_id: str | None = None, max_devices: int = 1,
                   resume_token: str | None = None) -> Joined:
        return await self._run("join", Joined, user_id, socket_id, device_id, max_devices, resume_token)

    async def leave(self, user_id: str, socket_id: str, away_only: bool = False) -> Ended | None:
        return await self._run("leave", Ended | None, user_id, socket_id, away_only)  # type: ignore[arg-type]

    async def detach(self, user_id: str, socket_id: str) -> Call | None:
        return await self._run("detach", Call | None, user_id, socket_id)  # type: ignore[arg-type]

    async def reattach(self, user_id: str, socket_id: str, resume_token: str | None,
                       new_token: str | None) -> Returned | None:
        return await self._run("reattach", Returned | None,  # type: ignore[arg-type]
                               user_id, socket_id, resume_token, new_token)

    async def initiate(self, caller: str, socket_id: str, callee: str, call_type: CallType,
                       call_id: str) -> Call | Accepted:
        return await self._run("initiate", Call, caller, socket_id, callee, call_type, call_id)

    async def ring(self, call_id: str) -> Call | None:
        return await self._run("ring", Call | None, call_id)  # type: ignore[arg-type]

    async def accept(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Accepted:
        return await self._run("accept", Accepted, call_id, user_id, socket_id, caller)

    async def reject(self, call_id: str, user_id: str, socket_id: str, caller: str | None) -> Ended:
        return await self._run("reject", Ended, call_id, user_id, socket_id, caller)

    async def hang_up(self, call_id: str, user_id: str, socket_id: str) -> Ended:
        return await self._run("hang_up", Ended, call_id, user_id, socket_id)

    async def time_out(self, call_id: str) -> Ended | None:
        return await self._run("time_out", Ended | None, call_id)  # type: ignore[arg-type]

    async def relay(self, user_id: str, socket_id: str, target: str, event: CallEvent,
                    forward: tuple[str, str, bytes, bool, int] | None = None) -> Call:
        """:meth:`Registry.relay`; with ``forward`` (this node, the event's name, its payload's JSON up to
        the callId, whether the callType is added too, the inboxes' length), the relay also goes to
        the target's sessions on other nodes, in the same step (:mod:`._cluster`)."""
        if forward is None:
            return await self._run("relay", Call, user_id, socket_id, target, event)
        node, name, head, with_type, maxlen = forward
        return await self._run("relay", Call, user_id, socket_id, target, event, (node, name, with_type, maxlen),
                               raw=head)

    async def end_all(self, outcome: Outcome) -> list[Ended]:
        return await self._run("end_all", list[Ended], outcome)

    async def user(self, user_id: str) -> User | None:
        raw = await self._redis(self.client.get(self.prefix + "user:" + user_id))
        return None if raw is None else msgspec.json.decode(raw, type=User)  # type: ignore[call-overload]

    async def call(self, call_id: str) -> Call | None:
        raw = await self._redis(self.client.get(self.prefix + "call:" + call_id))
        return None if raw is None else msgspec.json.decode(raw, type=Call)  # type: ignore[call-overload]

    async def counts(self) -> tuple[int, int]:
        return await self._run("counts", tuple[int, int])


@contextlib.asynccontextmanager
async def open_redis_registry(url: str, *, timeout: float = TIMEOUT,  # noqa: ASYNC109 (each step's, not the block's)
                              prefix: str = "callbox") -> AsyncIterator[RedisRegistry]:
    """A :class:`RedisRegistry` on its own coredis client for ``url`` (``redis://host:port/db``), for the
    length of the block. Its connections (opened lazily) share the deadline: a connect or a read that
    hangs fails like any call."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url, connect_timeout=timeout, stream_timeout=timeout
    )
    async with client:
        yield RedisRegistry(client, timeout=timeout, prefix=prefix)
