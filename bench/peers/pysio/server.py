"""The callbox signalling protocol (issue 3) on python-socketio: a peer of callbox in the benchmark.

An ``AsyncServer`` (ASGI) on uvicorn, the common Python choice, with uvicorn's fast parts installed
(uvloop, httptools, websockets) and no access log. Same events, payloads, error codes and call rules
as callbox; written the way a python-socketio developer would (dicts, one handler per event,
``loop.call_later`` for the ringing).

    python server.py --host 127.0.0.1 --port 3000 [--ring-timeout 30] [--initiate-burst 10]
                     [--initiate-per-minute 10] [--max-sdp-bytes 65536] [--max-candidate-bytes 4096]

Prints "listening on http://HOST:PORT/socket.io/" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import time
from typing import Any

import socketio
import uvicorn

USER_ID = re.compile(r"[A-Za-z0-9_.@:+-]{1,128}")
USER_ID_RULE = "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"
MESSAGES = {
    "INVALID_PAYLOAD": "Invalid payload",
    "NOT_JOINED": "Join first with user:join",
    "ALREADY_JOINED": "This connection has already joined as another user",
    "SESSION_REPLACED": "This user joined from another connection",
    "USER_OFFLINE": "User not available",
    "USER_BUSY": "User not available",
    "ALREADY_IN_CALL": "You are already in a call",
    "INVALID_TARGET": "You cannot call yourself",
    "CALL_NOT_FOUND": "Call not found or expired",
    "NOT_IN_CALL": "You are not in a call with this user",
    "RATE_LIMITED": "Too many calls started, try again later",
}


class Refused(Exception):
    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or MESSAGES[code])
        self.code = code
        self.message = message or MESSAGES[code]


class Call:
    __slots__ = ("id", "caller", "caller_sid", "callee", "callee_sid", "call_type", "state", "timer")

    def __init__(self, caller: str, caller_sid: str, callee: str, callee_sid: str, call_type: str) -> None:
        self.id = secrets.token_urlsafe(16)
        self.caller, self.caller_sid = caller, caller_sid
        self.callee, self.callee_sid = callee, callee_sid
        self.call_type = call_type
        self.state = "ringing"
        self.timer: asyncio.TimerHandle | None = None

    def role_of(self, user_id: str, sid: str) -> str | None:
        if user_id == self.caller and sid == self.caller_sid:
            return "caller"
        if user_id == self.callee and sid == self.callee_sid:
            return "callee"
        return None


def make_app(args: argparse.Namespace) -> socketio.ASGIApp:
    # async_handlers=False: each client's events are handled in order, in the task that read them (as
    # callbox does, and as relayed ICE candidates want); it is also the faster setting.
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[], async_handlers=False)
    users: dict[str, dict[str, Any]] = {}  # user id -> {"sid", "call"}
    calls: dict[str, Call] = {}
    joined: dict[str, str] = {}  # sid -> user id
    buckets: dict[str, tuple[float, float]] = {}
    timeouts: set[asyncio.Task[None]] = set()
    burst, rate = float(args.initiate_burst), args.initiate_per_minute / 60.0

    async def refuse(sid: str, exc: Refused, want_ack: bool) -> dict[str, Any] | None:
        if want_ack:
            return {"ok": False, "code": exc.code, "message": exc.message}
        await sio.emit("error", {"message": exc.message, "code": exc.code}, to=sid)
        return None

    def user_id_field(p: Any, name: str) -> str:
        v = p.get(name) if isinstance(p, dict) else None
        if not isinstance(v, str) or not USER_ID.fullmatch(v):
            raise Refused("INVALID_PAYLOAD", f"{name}: {USER_ID_RULE}")
        return v

    def call_id_field(p: Any) -> str:
        v = p.get("callId") if isinstance(p, dict) else None
        if not isinstance(v, str) or not 1 <= len(v) <= 64:
            raise Refused("INVALID_PAYLOAD", "callId is required")
        return v

    def bounded(p: dict[str, Any], name: str, limit: int, nullable: bool) -> Any:
        if name not in p or (p[name] is None and not nullable):
            raise Refused("INVALID_PAYLOAD", f"{name} is required")
        body = p[name]
        if body is not None and len(json.dumps(body, separators=(",", ":"))) > limit:
            raise Refused("INVALID_PAYLOAD", f"{name} is larger than {limit} bytes")
        return body

    def holder(sid: str) -> str:
        user_id = joined.get(sid)
        user = users.get(user_id) if user_id is not None else None
        if user is None or user["sid"] != sid:
            raise Refused("NOT_JOINED")
        return user_id  # type: ignore[return-value]

    def take_token(user_id: str) -> bool:
        now = time.monotonic()
        tokens, then = buckets.get(user_id, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[user_id] = (tokens, now)
        return allowed

    async def end_call(call: Call, event: str, payload: dict[str, Any]) -> None:
        calls.pop(call.id, None)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        for party in (call.caller, call.callee):
            user = users.get(party)
            if user is not None and user["call"] == call.id:
                user["call"] = None
        await sio.emit(event, payload, to=call.caller_sid)
        await sio.emit(event, payload, to=call.callee_sid)

    async def drop_user(user_id: str, reason: str) -> None:
        user = users.get(user_id)
        if user is not None and user["call"] is not None:
            call = calls.get(user["call"])
            if call is not None:
                await end_call(call, "call:ended", {"callId": call.id, "by": user_id, "reason": reason})

    def relay_call(user_id: str, sid: str, to: str) -> Call:
        if to not in users:
            raise Refused("NOT_IN_CALL", "User not found")
        call_id = users[user_id]["call"]
        call = calls.get(call_id) if call_id is not None else None
        role = call.role_of(user_id, sid) if call is not None else None
        peer = None if call is None else call.callee if role == "caller" else call.caller if role == "callee" else None
        if call is None or peer != to:
            raise Refused("NOT_IN_CALL")
        return call

    def peer_sid(call: Call, to: str) -> str:
        return call.caller_sid if to == call.caller else call.callee_sid

    def ring_timeout(call: Call) -> None:
        call.timer = None
        if calls.get(call.id) is call and call.state == "ringing":
            task = asyncio.ensure_future(end_call(call, "call:timeout", {"callId": call.id}))
            timeouts.add(task)
            task.add_done_callback(timeouts.discard)

    # -- requests: each returns the ack's success body, or raises Refused -----------------------

    async def join(sid: str, p: Any) -> dict[str, Any]:
        given = p.get("userId") if isinstance(p, dict) else None
        if given is None or given == "":
            raise Refused("INVALID_PAYLOAD", "User ID is required")
        if not isinstance(given, str) or not USER_ID.fullmatch(given):
            raise Refused("INVALID_PAYLOAD", USER_ID_RULE)
        user_id = given
        if joined.get(sid, user_id) != user_id:
            raise Refused("ALREADY_JOINED")
        current = users.get(user_id)
        if current is not None and current["sid"] != sid:
            old = current["sid"]
            await sio.emit("error", {"message": MESSAGES["SESSION_REPLACED"], "code": "SESSION_REPLACED"}, to=old)
            await drop_user(user_id, "replaced")
            del users[user_id]
            joined.pop(old, None)
            await sio.disconnect(old)
        if current is None or current["sid"] != sid:
            users[user_id] = {"sid": sid, "call": None}
        joined[sid] = user_id
        await sio.emit("user:joined", {"userId": user_id, "socketId": sid}, to=sid)
        return {"userId": user_id, "socketId": sid}

    async def initiate(sid: str, p: Any) -> dict[str, Any]:
        user_id = holder(sid)
        if not take_token(user_id):
            raise Refused("RATE_LIMITED")
        to = user_id_field(p, "to")
        call_type = p.get("callType")
        if call_type not in ("audio", "video"):
            raise Refused("INVALID_PAYLOAD", "callType must be audio or video")
        if to == user_id:
            raise Refused("INVALID_TARGET")
        me = users[user_id]
        if me["call"] is not None:
            raise Refused("ALREADY_IN_CALL")
        callee = users.get(to)
        if callee is None:
            raise Refused("USER_OFFLINE")
        if callee["call"] is not None:
            raise Refused("USER_BUSY")
        call = Call(user_id, sid, to, callee["sid"], call_type)
        calls[call.id] = call
        me["call"] = callee["call"] = call.id
        await sio.emit("call:incoming", {"from": user_id, "callType": call_type, "callId": call.id}, to=callee["sid"])
        await sio.emit("call:initiated", {"callId": call.id, "to": to}, to=sid)
        call.timer = asyncio.get_running_loop().call_later(args.ring_timeout, ring_timeout, call)
        return {"callId": call.id}

    def answerable(sid: str, p: Any) -> tuple[str, Call]:
        user_id = holder(sid)
        call_id = call_id_field(p)
        caller = None if p.get("from") is None else user_id_field(p, "from")
        call = calls.get(call_id)
        if (
            call is None
            or (caller is not None and caller != call.caller)
            or call.state != "ringing"
            or call.role_of(user_id, sid) != "callee"
        ):
            raise Refused("CALL_NOT_FOUND")
        return user_id, call

    async def accept(sid: str, p: Any) -> dict[str, Any]:
        user_id, call = answerable(sid, p)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.state = "connecting"
        accepted = {"callId": call.id, "by": user_id}
        await sio.emit("call:accepted", accepted, to=call.caller_sid)
        await sio.emit("call:accepted", accepted, to=call.callee_sid)
        return {"callId": call.id}

    async def reject(sid: str, p: Any) -> dict[str, Any]:
        user_id, call = answerable(sid, p)
        await end_call(call, "call:rejected", {"callId": call.id, "by": user_id})
        return {"callId": call.id}

    async def end(sid: str, p: Any) -> dict[str, Any]:
        user_id = holder(sid)
        call_id = call_id_field(p)
        call = calls.get(call_id)
        role = call.role_of(user_id, sid) if call is not None else None
        if call is None or role is None:
            raise Refused("CALL_NOT_FOUND", "Call not found")
        reason = "cancelled" if role == "caller" and call.state == "ringing" else "hangup"
        await end_call(call, "call:ended", {"callId": call.id, "by": user_id, "reason": reason})
        return {"callId": call.id}

    async def offer(sid: str, p: Any) -> dict[str, Any]:
        user_id = holder(sid)
        to = user_id_field(p, "to")
        call_type = p.get("callType")
        if call_type is not None and call_type not in ("audio", "video"):
            raise Refused("INVALID_PAYLOAD", "callType must be audio or video")
        body = bounded(p, "offer", args.max_sdp_bytes, False)
        call = relay_call(user_id, sid, to)
        relay = {"offer": body, "from": user_id, "callType": call_type or call.call_type, "callId": call.id}
        await sio.emit("call:offer", relay, to=peer_sid(call, to))
        return {"callId": call.id}

    async def answer(sid: str, p: Any) -> dict[str, Any]:
        user_id = holder(sid)
        to = user_id_field(p, "to")
        body = bounded(p, "answer", args.max_sdp_bytes, False)
        call = relay_call(user_id, sid, to)
        if call.state == "connecting":
            call.state = "connected"
        await sio.emit("call:answer", {"answer": body, "from": user_id, "callId": call.id}, to=peer_sid(call, to))
        return {"callId": call.id}

    async def candidate(sid: str, p: Any) -> dict[str, Any]:
        user_id = holder(sid)
        to = user_id_field(p, "to")
        body = bounded(p, "candidate", args.max_candidate_bytes, True)
        call = relay_call(user_id, sid, to)
        relay = {"candidate": body, "from": user_id, "callId": call.id}
        await sio.emit("ice:candidate", relay, to=peer_sid(call, to))
        return {"callId": call.id}

    handlers = {
        "user:join": join,
        "call:initiate": initiate,
        "call:accept": accept,
        "call:reject": reject,
        "call:offer": offer,
        "call:answer": answer,
        "ice:candidate": candidate,
        "call:end": end,
    }

    # python-socketio calls a handler with the client's arguments; its return value is the ack (sent
    # only if the client asked for one). Whether it asked is noted on the way in (below), so that a
    # refusal goes either to the ack or as an ``error`` event, never both.
    def register(event: str) -> None:
        handler = handlers[event]

        async def on_event(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
            try:
                return {"ok": True, **await handler(sid, payload)}
            except Refused as exc:
                return await refuse(sid, exc, ack_wanted.get(sid, False))

        sio.on(event, on_event)

    for event in handlers:
        register(event)

    @sio.on("*")
    async def unknown(event: str, sid: str, *_: Any) -> dict[str, Any] | None:
        shown = event if len(event) <= 64 else event[:64] + "..."
        return await refuse(sid, Refused("INVALID_PAYLOAD", f"Unknown event '{shown}'"), ack_wanted.get(sid, False))

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        ack_wanted.pop(sid, None)
        user_id = joined.pop(sid, None)
        user = users.get(user_id) if user_id is not None else None
        if user is None or user["sid"] != sid:
            return
        await drop_user(user_id, "disconnected")  # type: ignore[arg-type]
        del users[user_id]  # type: ignore[arg-type]

    # python-socketio knows whether a packet asked for an ack (its id) but does not tell handlers.
    ack_wanted: dict[str, bool] = {}
    handle_event_internal = sio._handle_event_internal

    async def noting_ack(server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any) -> None:
        ack_wanted[sid] = id is not None
        await handle_event_internal(server, sid, eio_sid, data, namespace, id)

    sio._handle_event_internal = noting_ack  # type: ignore[method-assign]
    return socketio.ASGIApp(sio, socketio_path="socket.io")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--ring-timeout", type=float, default=30.0)
    parser.add_argument("--initiate-burst", type=int, default=10)
    parser.add_argument("--initiate-per-minute", type=float, default=10.0)
    parser.add_argument("--max-sdp-bytes", type=int, default=65536)
    parser.add_argument("--max-candidate-bytes", type=int, default=4096)
    args = parser.parse_args()
    # uvicorn picks uvloop, httptools and websockets when installed (as the bench installs them).
    uvicorn.run(make_app(args), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
