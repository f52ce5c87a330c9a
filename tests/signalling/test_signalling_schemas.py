"""protocol/schemas/ is generated from the msgspec payload types: it must match them, and the
schemas must describe what the server really accepts and sends."""

from __future__ import annotations

import json
from pathlib import Path

from _paths import PROTOCOL
from callbox.signalling import CALL_TRANSITIONS, USER_TRANSITIONS, ErrorCode, schemas
from callbox.signalling._payloads import CLIENT_EVENTS
from callbox.signalling._state import Outcome

SCHEMAS = PROTOCOL / "schemas"
REGENERATE = ".venv/bin/python -m callbox.signalling.schemas protocol/schemas"


def test_checked_in_schemas_match_the_types() -> None:
    wanted = schemas.schemas()
    present = {p.name for p in SCHEMAS.glob("*.json")}
    assert present == set(wanted), f"protocol/schemas/ is stale: run `{REGENERATE}`"
    for name, schema in wanted.items():
        text = (SCHEMAS / name).read_text(encoding="utf-8")
        assert text == schemas.render(schema), f"protocol/schemas/{name} is stale: run `{REGENERATE}`"


def test_every_event_has_a_schema() -> None:
    names = set(schemas.schemas())
    assert {f"client.{e.replace(':', '-')}.json" for e in CLIENT_EVENTS} <= names
    assert {"server.call-ended.json", "server.error.json", "ack.ok.json", "ack.error.json"} <= names


def test_regenerating_writes_the_same_files(tmp_path: Path) -> None:
    (tmp_path / "stale.json").write_text("{}")
    assert schemas.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in SCHEMAS.glob("*.json"))
    for path in tmp_path.iterdir():
        assert path.read_text() == (SCHEMAS / path.name).read_text()
    assert schemas.main([]) == 2


def test_schemas_carry_the_bounds() -> None:
    initiate = json.loads((SCHEMAS / "client.call-initiate.json").read_text())["$defs"]["Initiate"]
    assert initiate["required"] == ["to", "callType"]
    assert initiate["properties"]["to"]["maxLength"] == 128
    assert initiate["properties"]["callType"] == {"enum": ["audio", "video"]}
    relay = json.loads((SCHEMAS / "server.call-offer.json").read_text())["$defs"]["OfferRelay"]
    assert list(relay["properties"]) == sorted(["offer", "from", "callType", "callId"])
    assert relay["required"] == ["offer", "from", "callType", "callId"]


def test_the_protocol_document_lists_exactly_the_transitions() -> None:
    doc = (PROTOCOL / "signalling.md").read_text(encoding="utf-8")
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:3]) for line in doc.splitlines()}
    for table in (USER_TRANSITIONS, CALL_TRANSITIONS):
        edges = {(s.name, e.name, n.name) for s, moves in table.items() for e, n in moves.items()}
        states = {s.name for s in table}
        listed = {r for r in rows if len(r) == 3 and r[0] in states and r[2] in {*states, "ENDED", "OFFLINE"}}
        assert listed == edges
    for flow in ("Call", "Reject", "Cancel", "Timeout", "Busy", "Disconnect"):
        assert f"### {flow}\n\n```mermaid\nsequenceDiagram" in doc
    for code in ErrorCode:
        assert f"`{code.value}`" in doc


def test_call_ended_reasons_are_the_outcomes_told_with_call_ended() -> None:
    """The server sends an outcome's name as call:ended's reason; the schema must list exactly those
    (a rejected call gets call:rejected, a timed-out one call:timeout)."""
    schema = json.loads((SCHEMAS / "server.call-ended.json").read_text())
    reasons = schema["$defs"]["CallEnded"]["properties"]["reason"]["enum"]
    device_notices = {"answered_elsewhere", "rejected_elsewhere"}  # to the other devices a call rang
    assert set(reasons) == {o.value for o in Outcome} - {Outcome.REJECTED.value, Outcome.TIMEOUT.value} | device_notices
