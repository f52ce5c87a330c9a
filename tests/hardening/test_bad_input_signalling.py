"""Bad input at the signalling layer, against a real ``python -m callbox``.

The abuser ``me`` is in a live call with ``partner``; the bystanders (``other``, ``other2``) are in
another call. Each case emits one event with an ack and checks the ack (the code and, where the
protocol fixes it, the message); the connection always stays up. Cases that touch the other call
check that its users received nothing. Payload templates name: {me} {partner} {call} {other}
{other_call} {offline}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from ._sig import Peer, call_pair, check_call, unique
from ._wire import Proc, spawn

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

RULE = "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"
REQUIRED = "User ID is required"


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--connection-rate-per-address", "100000", "--connection-burst-per-address", "100000") as proc:
        yield proc


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    event: str
    args: list[Any]  # JSON values; strings are templates (see the module docstring)
    ack: dict[str, Any]  # what the ack must contain
    relayed: tuple[str, dict[str, Any]] | None = None  # (event, fields) the partner must get
    fresh: bool = False  # sent from a new connection that has not joined


def bad(code: str, message: str | None = None) -> dict[str, Any]:
    return {"ok": False, "code": code} | ({"message": message} if message is not None else {})


SDP = {"type": "offer", "sdp": "v=0\r\n"}
CASES = [
    Case("SIG-01", "user id that is a number", "user:join", [{"userId": 5}], bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-02", "user id null", "user:join", [{"userId": None}], bad("INVALID_PAYLOAD", REQUIRED), fresh=True),
    Case("SIG-03", "user:join without userId", "user:join", [{}], bad("INVALID_PAYLOAD", REQUIRED), fresh=True),
    Case("SIG-04", "user:join whose payload is a string", "user:join", ["alice"], bad("INVALID_PAYLOAD", REQUIRED),
         fresh=True),
    Case("SIG-05", "user:join with no payload", "user:join", [], bad("INVALID_PAYLOAD", REQUIRED), fresh=True),
    Case("SIG-06", "user id with NUL", "user:join", [{"userId": "a\x00b"}], bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-07", "user id with a trailing newline", "user:join", [{"userId": "alice\n"}],
         bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-08", "user id forging a log line (CR LF)", "user:join",
         [{"userId": "alice\r\n2026-01-01T00:00:00.000Z INFO callbox.signalling: user joined user=root"}],
         bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-09", "user id with a bidi override", "user:join", [{"userId": "\u202eecila"}],
         bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-10", "user id with a zero-width space", "user:join", [{"userId": "ali\u200bce"}],
         bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-11", "user id with a Cyrillic look-alike letter", "user:join", [{"userId": "\u0430lice"}],
         bad("INVALID_PAYLOAD", RULE), fresh=True),
    Case("SIG-12", "user id of 129 characters", "user:join", [{"userId": "a" * 129}], bad("INVALID_PAYLOAD", RULE),
         fresh=True),
    Case("SIG-13", "empty user id", "user:join", [{"userId": ""}], bad("INVALID_PAYLOAD", REQUIRED), fresh=True),
    Case("SIG-14", "call:initiate before user:join", "call:initiate", [{"to": "{other}", "callType": "audio"}],
         bad("NOT_JOINED", "Join first with user:join"), fresh=True),
    Case("SIG-15", "call:accept before user:join", "call:accept", [{"callId": "{other_call}"}], bad("NOT_JOINED"),
         fresh=True),
    Case("SIG-16", "call:initiate without callType", "call:initiate", [{"to": "{other}"}],
         bad("INVALID_PAYLOAD", "Object missing required field `callType`")),
    Case("SIG-17", "callType that is not audio or video", "call:initiate", [{"to": "{other}", "callType": "screen"}],
         bad("INVALID_PAYLOAD")),
    Case("SIG-18", "call:initiate to a user id with control characters", "call:initiate",
         [{"to": "bob\x1b[2J", "callType": "audio"}], bad("INVALID_PAYLOAD")),
    Case("SIG-19", "call:initiate while in a call", "call:initiate", [{"to": "{offline}", "callType": "audio"}],
         bad("ALREADY_IN_CALL")),
    Case("SIG-20", "call:initiate to yourself", "call:initiate", [{"to": "{me}", "callType": "audio"}],
         bad("INVALID_TARGET")),
    Case("SIG-21", "call:accept of another pair's call", "call:accept", [{"callId": "{other_call}"}],
         bad("CALL_NOT_FOUND", "Call not found or expired")),
    Case("SIG-22", "call:reject of another pair's call", "call:reject", [{"callId": "{other_call}"}],
         bad("CALL_NOT_FOUND")),
    Case("SIG-23", "call:end of another pair's call", "call:end", [{"callId": "{other_call}"}],
         bad("CALL_NOT_FOUND", "Call not found")),
    Case("SIG-24", "call:offer to a user in another call", "call:offer", [{"to": "{other}", "offer": SDP}],
         bad("NOT_IN_CALL", "You are not in a call with this user")),
    Case("SIG-25", "ice:candidate to a user in another call", "ice:candidate", [{"to": "{other}", "candidate": None}],
         bad("NOT_IN_CALL")),
    Case("SIG-26", "call:answer to a user who is not online", "call:answer", [{"to": "{offline}", "answer": SDP}],
         bad("NOT_IN_CALL", "User not found")),
    Case("SIG-27", "call:accept of your own call by its caller", "call:accept", [{"callId": "{call}"}],
         bad("CALL_NOT_FOUND")),
    Case("SIG-28", "offer of 65,537 bytes", "call:offer", [{"to": "{partner}", "offer": {"sdp": "x" * 65_527}}],
         bad("INVALID_PAYLOAD", "offer is larger than 65536 bytes")),
    Case("SIG-29", "answer of 65,537 bytes", "call:answer", [{"to": "{partner}", "answer": {"sdp": "x" * 65_527}}],
         bad("INVALID_PAYLOAD", "answer is larger than 65536 bytes")),
    Case("SIG-30", "candidate of 4,097 bytes", "ice:candidate", [{"to": "{partner}", "candidate": {"c": "x" * 4_089}}],
         bad("INVALID_PAYLOAD", "candidate is larger than 4096 bytes")),
    Case("SIG-31", "offer of exactly 65,536 bytes is relayed", "call:offer",
         [{"to": "{partner}", "offer": {"sdp": "x" * 65_526}}], {"ok": True, "callId": "{call}"},
         ("call:offer", {"offer": {"sdp": "x" * 65_526}})),
    Case("SIG-32", "offer null", "call:offer", [{"to": "{partner}", "offer": None}],
         bad("INVALID_PAYLOAD", "offer is required")),
    Case("SIG-33", "candidate null (end of candidates) is relayed", "ice:candidate",
         [{"to": "{partner}", "candidate": None}], {"ok": True}, ("ice:candidate", {"candidate": None})),
    Case("SIG-34", "call id of 65 characters", "call:end", [{"callId": "c" * 65}], bad("INVALID_PAYLOAD")),
    Case("SIG-35", "empty call id", "call:end", [{"callId": ""}], bad("INVALID_PAYLOAD")),
    Case("SIG-36", "call id that is a number", "call:end", [{"callId": 12}], bad("INVALID_PAYLOAD")),
    Case("SIG-37", "unknown event", "call:dance", [{}], bad("INVALID_PAYLOAD", "Unknown event 'call:dance'")),
    Case("SIG-38", "unknown event name forging a log line", "x\n2026-01-01 INFO fake", [{}],
         bad("INVALID_PAYLOAD", "Unknown event 'x\\n2026-01-01 INFO fake'")),
    Case("SIG-39", "payload that is an array", "call:end", [["{call}"]], bad("INVALID_PAYLOAD")),
    Case("SIG-40", "extra fields are ignored, and not relayed", "ice:candidate",
         [{"to": "{partner}", "candidate": {"c": 1}, "callId": "forged", "from": "{other}", "admin": True}],
         {"ok": True, "callId": "{call}"},
         ("ice:candidate", {"candidate": {"c": 1}, "from": "{me}", "callId": "{call}"})),
    Case("SIG-41", "a second payload argument is ignored", "ice:candidate",
         [{"to": "{partner}", "candidate": {"c": 2}}, {"to": "{other}"}], {"ok": True},
         ("ice:candidate", {"candidate": {"c": 2}, "from": "{me}"})),
    Case("SIG-42", "user:join as another id on a joined connection", "user:join", [{"userId": "{other}"}],
         bad("ALREADY_JOINED")),
    Case("SIG-43", "user:join again with your own id", "user:join", [{"userId": "{me}"}],
         {"ok": True, "userId": "{me}"}),
    Case("SIG-44", "a relay with a forged from and callId goes out with the real ones", "call:offer",
         [{"to": "{partner}", "offer": SDP, "from": "{other}", "callId": "{other_call}"}], {"ok": True},
         ("call:offer", {"from": "{me}", "callId": "{call}"})),
]

OTHER_IDS = ["SIG-45", "SIG-46"]
CASE_IDS = [c.id for c in CASES] + OTHER_IDS


def fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, name in names.items():
            value = value.replace("{" + key + "}", name)
        return value
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    return value


@dataclass
class Scene:
    me: Peer
    partner: Peer
    call: str
    names: dict[str, str] = field(default_factory=dict)


async def scene(nursery: trio.Nursery, port: int, by: Any) -> Scene:
    me, partner, call_id = await call_pair(nursery, port, "sig")
    names = {"me": me.user_id, "partner": partner.user_id, "call": call_id, "other": by.a.user_id,
             "other_call": by.call_id, "offline": unique("offline")}
    return Scene(me, partner, call_id, names)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_signalling_case(case: Case, server: Proc, bystanders: Any, nursery: trio.Nursery) -> None:
    s = await scene(nursery, server.port, bystanders)
    sender = await Peer.open(nursery, server.port) if case.fresh else s.me
    ack = await sender.emit(fill(case.event, s.names), *fill(case.args, s.names))
    want = fill(case.ack, s.names)
    assert {k: ack.get(k) for k in want} == want, ack
    if case.relayed is not None:
        name, fields = case.relayed
        got = await s.partner.expect(name)
        want_fields = fill(fields, s.names)
        assert {k: got.get(k) for k in want_fields} == want_fields, got
        assert set(got) <= {"offer", "answer", "candidate", "from", "callType", "callId"}, got
    if not ack["ok"]:
        assert sender.events == [] or all(n != "error" for n, *_ in sender.events)  # an acked refusal only
    # Nothing reached the other call's users, and both calls still relay.
    assert bystanders.a.events == [] and bystanders.b.events == [], (bystanders.a.events, bystanders.b.events)
    await check_call(s.me, s.partner, s.call)
    await bystanders.check()
    if case.fresh:
        await sender.close()
    await s.me.close()
    await s.partner.close()


async def test_refusal_without_ack_is_an_error_event(server: Proc, bystanders: Any, nursery: trio.Nursery) -> None:
    """SIG-45: the same refusals without an ack come as an ``error`` event {message, code}."""
    s = await scene(nursery, server.port, bystanders)
    await s.me.emit("call:end", {"callId": bystanders.call_id}, ack=False)
    assert await s.me.expect("error") == {"message": "Call not found", "code": "CALL_NOT_FOUND"}
    await s.me.emit("user:join", {"userId": "\u202eadmin"}, ack=False)
    assert await s.me.expect("error") == {"message": RULE, "code": "INVALID_PAYLOAD"}
    await check_call(s.me, s.partner, s.call)
    await bystanders.check()


async def test_nothing_a_client_sends_forges_a_log_line(server: Proc, bystanders: Any, nursery: trio.Nursery) -> None:
    """SIG-46: user ids, event names, namespaces and payloads carrying CR/LF, ANSI escapes, bidi and
    zero-width characters never start a log line of their own: every line the server writes during
    the attempts starts with a timestamp and a level."""
    mark = server.log_size()
    peer = await Peer.open(nursery, server.port)
    forged = "x\r\n2026-01-01T00:00:00.000Z ERROR callbox: forged \x1b[31m\u202e\u200b"
    await peer.emit("user:join", {"userId": forged}, ack=False)
    await peer.emit(forged, {"userId": forged}, ack=False)
    user = "ok-" + unique("log")
    await peer.emit("user:join", {"userId": user})
    await peer.emit("call:initiate", {"to": forged, "callType": "audio"}, ack=False)
    await peer.emit("call:end", {"callId": forged[:60]}, ack=False)
    await peer.send("40/" + forged + ",")
    await peer.expect("error")
    await peer.close()
    # The server handles one WebSocket's messages in order: once it logs this user leaving (on the
    # close packet, sent last), it has logged whatever the attempts made it log.
    await server.wait_log(rf" user left user={re.escape(user)}( |$)", mark)
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
    lines = server.log(mark).splitlines()
    assert lines, "nothing was logged"
    assert all(stamp.match(line) for line in lines), [line for line in lines if not stamp.match(line)]
    assert not any("forged" in line and "ERROR" in line.split(" ", 2)[1] for line in lines)
    assert "\x1b" not in "".join(lines) and "\u202e" not in "".join(lines) and "\u200b" not in "".join(lines)
    json.dumps(lines)
    await bystanders.check()
