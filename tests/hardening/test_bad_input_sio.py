"""Bad input at the Socket.IO layer, against a real ``python -m callbox``.

The abuser is a user in a live call; each case sends Socket.IO packets (Engine.IO messages) and
checks what it gets back, whether its connection survives, and what its partner sees. A packet that
is not Socket.IO v5 closes the connection (the client gets the Engine.IO close packet ``1``; the
partner gets ``call:ended``, reason ``disconnected``); anything else gets an answer and the call goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from ._sig import call_pair, check_call
from ._wire import Proc, spawn

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

MAX_PAYLOAD = 100_000


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--max-payload", str(MAX_PAYLOAD), "--connection-rate-per-address", "100000",
               "--connection-burst-per-address", "100000") as proc:
        yield proc


CLOSES = "closes"
IGNORED = "ignored"


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    send: list[str | bytes]  # Socket.IO packets: text (without the Engine.IO "4") or binary attachments
    answer: str | Any  # CLOSES, IGNORED, a raw Socket.IO packet the abuser gets, or a dict: the error event
    transport: str = "websocket"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


PH = '{"_placeholder":true,"num":%s}'
CASES = [
    Case("SIO-01", "CONNECT to a namespace that does not exist", ["0/nope,"], '4/nope,{"message":"Invalid namespace"}'),
    Case("SIO-02", "namespace of 300 characters", ["0/" + "n" * 300 + ","], CLOSES),
    Case("SIO-03", "namespace with control, bidi and zero-width characters", ["0/\x00\n\u202e\u200b,"],
         '4/\x00\n\u202e\u200b,{"message":"Invalid namespace"}'),
    Case("SIO-04", "an event for a namespace not joined", ['2/admin,["user:join",{"userId":"x"}]'], IGNORED),
    Case("SIO-05", "a second CONNECT to / (ignored, as socket.io does)", ["0"], IGNORED),
    Case("SIO-06", "CONNECT whose auth is not an object", ['0"token"'], CLOSES),
    Case("SIO-07", "CONNECT with an ack id", ["01{}"], CLOSES),
    Case("SIO-08", "DISCONNECT with data", ['1{"a":1}'], CLOSES),
    Case("SIO-09", "CONNECT_ERROR sent by a client", ['4{"message":"x"}'], CLOSES),
    Case("SIO-10", "unknown packet type 7", ['7["x"]'], CLOSES),
    Case("SIO-11", "empty Socket.IO packet", [""], CLOSES),
    Case("SIO-12", "attachment count of 999999", ['5999999-["x"]'], CLOSES),
    Case("SIO-13", "attachment count of 65 (over 64)", ['565-["x"]'], CLOSES),
    Case("SIO-14", "attachment count of 0", ['50-["x"]'], CLOSES),
    Case("SIO-15", "ack id of 16 digits", ['21234567890123456["call:end",{"callId":"x"}]'], CLOSES),
    Case("SIO-16", "ack id of 15 digits is answered with that id", ['2999999999999999["call:end",{"callId":"x"}]'],
         '3999999999999999[{"ok":false,"code":"CALL_NOT_FOUND","message":"Call not found"}]'),
    Case("SIO-17", "an ack for an id the server never used", ['3999["x"]'], IGNORED),
    Case("SIO-18", "binary placeholder pointing past the attachments", ['51-["user:join",' + PH % 5 + "]", b"\x01"],
         CLOSES),
    Case("SIO-19", "binary placeholder with a negative num", ['51-["user:join",' + PH % -1 + "]", b"\x01"], CLOSES),
    Case("SIO-20", "binary placeholder with a string num", ['51-["user:join",' + PH % '"0"' + "]", b"\x01"], CLOSES),
    Case("SIO-21", "binary attachment with no binary packet announced", [b"\x01\x02"], CLOSES, "polling"),
    Case("SIO-22", "a text packet while attachments are awaited", ['51-["user:join",' + PH % 0 + "]", '2["x"]'],
         CLOSES),
    Case("SIO-23", "a placeholder in a plain EVENT is just an object", ['2["user:join",' + PH % 0 + "]"],
         {"code": "INVALID_PAYLOAD"}),
    Case("SIO-24", "JSON nested 45,000 deep", ["2" + nested(45_000)], CLOSES),
    Case("SIO-25", "JSON nested 5,000 deep inside a known event's payload",
         ['2["ice:candidate",{"to":"x","candidate":' + nested(5000) + "}]"], CLOSES),
    Case("SIO-26", "JSON nested 5,000 deep in an unknown field",
         ['2["call:end",{"callId":"x","z":' + nested(5000) + "}]"], CLOSES),
    Case("SIO-27", "a 90 KB array as a payload", ['2["call:end",[' + ",".join(["1"] * 45_000) + "]]"],
         {"code": "INVALID_PAYLOAD"}),
    Case("SIO-28", "a 90 KB event name (echoed cut to 64 characters)", ['2["' + "e" * 90_000 + '",{}]'],
         {"code": "INVALID_PAYLOAD", "message": "Unknown event '" + "e" * 64 + "...'"}),
    Case("SIO-29", "an event that is an object, not an array", ['2{"a":1}'], CLOSES),
    Case("SIO-30", "an event that is a string", ['2"user:join"'], CLOSES),
    Case("SIO-31", "an empty event array", ["2[]"], CLOSES),
    Case("SIO-32", "an event name that is a number", ["2[1]"], CLOSES),
    Case("SIO-33", "an event that is null", ["2null"], CLOSES),
    Case("SIO-34", "reserved event name: connect", ['2["connect"]'], CLOSES),
    Case("SIO-35", "reserved event name: connect_error", ['2["connect_error"]'], CLOSES),
    Case("SIO-36", "reserved event name: disconnect", ['2["disconnect"]'], CLOSES),
    Case("SIO-37", "reserved event name: disconnecting", ['2["disconnecting"]'], CLOSES),
    Case("SIO-38", "reserved event name: newListener", ['2["newListener"]'], CLOSES),
    Case("SIO-39", "reserved event name: removeListener", ['2["removeListener"]'], CLOSES),
    Case("SIO-40", "event name 'error' (not reserved): unknown event", ['2["error",{}]'],
         {"code": "INVALID_PAYLOAD", "message": "Unknown event 'error'"}),
    Case("SIO-41", "NaN in the JSON", ['2["call:end",{"callId":NaN}]'], CLOSES),
    Case("SIO-42", "bytes after the JSON", ['2["call:end",{"callId":"x"}]garbage'], CLOSES),
    Case("SIO-43", "a binary attachment on a signalling event", ['51-["call:end",' + PH % 0 + "]", b"\x01"],
         {"code": "INVALID_PAYLOAD", "message": "Binary payloads are not accepted"}),
    Case("SIO-44", "a BINARY_ACK for an id never used", ['61-999[' + PH % 0 + "]", b"\x01"], IGNORED),
    Case("SIO-45", "a lone surrogate escape in an event name", ['2["\\ud800\\udfff\\ud800",{}]'], CLOSES),
    Case("SIO-46", "an ACK without an ack id", ["3[]"], CLOSES),
    Case("SIO-47", "a lone surrogate escape inside a payload field", ['2["call:end",{"callId":"\\ud800"}]'], CLOSES),
    Case("SIO-48", "a lone surrogate escape inside a user id", ['2["user:join",{"userId":"a\\udc00"}]'], CLOSES),
]

CASE_IDS = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_sio_case(case: Case, server: Proc, bystanders: object, nursery: trio.Nursery) -> None:
    a, b, call_id = await call_pair(nursery, server.port, "sio", (case.transport, "websocket"))
    seen = len(a.raw)
    for packet in case.send:
        await a.send(packet if isinstance(packet, bytes) else "4" + packet)
    if case.answer == CLOSES:
        ended = await b.expect("call:ended", callId=call_id)
        assert ended["reason"] == "disconnected", ended
        await a.wait_closed()
        assert "1" in a.raw[seen:], a.raw[seen:]
    else:
        if isinstance(case.answer, str) and case.answer != IGNORED:
            got = await a.wait_raw(lambda m: isinstance(m, str) and m.startswith("4" + case.answer[:2]))
            assert got == "4" + case.answer
        elif isinstance(case.answer, dict):
            error = await a.expect("error")
            assert {k: error.get(k) for k in case.answer} == case.answer, error
        await check_call(a, b, call_id)  # the connection and its call are as they were
        new = [m for m in a.raw[seen:] if m not in ("2",) and not (isinstance(m, str) and m.startswith("42"))]
        if case.answer == IGNORED:
            assert new == [], new
        await a.close()
    await b.close()
    await bystanders.check()  # type: ignore[attr-defined]


def test_case_list_has_unique_ids() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    json.dumps([c.id for c in CASES])
