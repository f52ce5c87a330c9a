"""Identifiers and isolation: Engine.IO sids, socket ids and call ids are unguessable; the bearer
secret (the Engine.IO sid) reaches nobody but its owner; knowing another pair's call id or user ids
lets no one read or steer their call; static files cannot be reached outside their folder.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import string
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbox.server.http import StaticFiles
from callbox.signalling._service import new_call_id

from ._sig import Peer, call_pair, check_call, joined
from ._wire import exchange, get_request, parse_reply

URLSAFE = set(string.ascii_letters + string.digits + "-_")


def entropy_report(ids: list[str]) -> dict[str, float]:
    """Bits per character (Shannon, over all positions), and the worst chi-square of a position's
    character counts against uniform over the 64 URL-safe characters."""
    counts = collections.Counter("".join(ids))
    total = sum(counts.values())
    bits = -sum(c / total * math.log2(c / total) for c in counts.values())
    worst = 0.0
    length = min(len(i) for i in ids)
    for pos in range(length - 1):  # the last character of an unpadded base64 string is not uniform
        col = collections.Counter(i[pos] for i in ids)
        expected = len(ids) / 64
        chi = sum((col.get(ch, 0) - expected) ** 2 / expected for ch in URLSAFE)
        worst = max(worst, chi)
    return {"bits_per_char": bits, "worst_chi2": worst}


def check_ids(ids: list[str], length: int) -> dict[str, float]:
    assert len(set(ids)) == len(ids), "an identifier repeated"
    assert all(len(i) == length and set(i) <= URLSAFE for i in ids), ids[:3]
    report = entropy_report(ids)
    # 6 bits per character is the most base64 holds; a counter or a timestamp would be far below.
    assert report["bits_per_char"] > 5.95, report
    # 63 degrees of freedom: chi2 > 130 has a probability far below 1e-6 for uniform characters.
    assert report["worst_chi2"] < 130, report
    # No two identifiers share a long prefix (as sequential or time-based ones would).
    ordered = sorted(ids)
    longest = max(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                  for a, b in itertools.pairwise(ordered))
    assert longest <= 5, longest
    return report


async def test_engineio_sids_are_unguessable(inproc: Any) -> None:
    server = await inproc(connection_rate_per_address=1e6, connection_burst_per_address=1_000_000,
                          max_sessions_per_address=1_000_000)
    sids = []
    for _ in range(2000):
        data, _ = await exchange(server.port, get_request("/socket.io/?EIO=4&transport=polling",
                                                          "Connection: close\r\n"))
        reply = parse_reply(data)
        assert reply is not None and reply.status == 200
        sids.append(json.loads(reply.body[1:])["sid"])
    report = check_ids(sids, 20)  # 15 random bytes: 120 bits
    print("\nFIGURES sids: " + json.dumps({"n": len(sids), **{k: round(v, 3) for k, v in report.items()}}))


async def test_socket_ids_and_call_ids_are_unguessable(inproc: Any, nursery: trio.Nursery) -> None:
    server = await inproc(connection_rate_per_address=1e6, connection_burst_per_address=1_000_000, initiate_burst=100)
    a = await joined(nursery, server.port, "ida")
    socket_ids = [a.socket_id]
    for _ in range(300):
        p = await Peer.open(nursery, server.port)
        socket_ids.append(p.socket_id)
        assert p.socket_id != p.eio_sid
        await p.close()
    check_ids(socket_ids, 20)
    # Call ids over the wire look like the generator's; the generator is checked on many.
    b = await joined(nursery, server.port, "idb")
    wire = []
    for _ in range(20):
        answer = await a.emit("call:initiate", {"to": b.user_id, "callType": "audio"})
        wire.append(answer["callId"])
        assert (await a.emit("call:end", {"callId": answer["callId"]}))["ok"] is True
    assert len(set(wire)) == 20 and all(len(c) == 22 for c in wire)
    report = check_ids([new_call_id() for _ in range(5000)], 22)  # 16 random bytes: 128 bits
    print("\nFIGURES call ids: " + json.dumps({k: round(v, 3) for k, v in report.items()}))


async def test_the_engineio_sid_reaches_only_its_owner(inproc: Any, nursery: trio.Nursery) -> None:
    """The Engine.IO sid is the bearer secret of a session (whoever knows it can poll, post and
    upgrade as that client). Nothing the partner of a whole call receives carries it; socket ids are
    not sent to others either."""
    server = await inproc()
    a, b, call_id = await call_pair(nursery, server.port, "own", ("polling", "websocket"))
    await a.emit("call:offer", {"to": b.user_id, "offer": {"type": "offer", "sdp": "v=0"}})
    await b.emit("call:answer", {"to": a.user_id, "answer": {"type": "answer", "sdp": "v=0"}})
    await check_call(a, b, call_id)
    assert (await b.emit("call:end", {"callId": call_id}))["ok"] is True
    await a.expect("call:ended")
    for me, other in ((a, b), (b, a)):
        seen = "".join(m if isinstance(m, str) else m.decode("latin-1") for m in other.raw)
        assert me.eio_sid not in seen
        assert me.socket_id not in seen
    await server.settled(0.5)


async def test_knowing_a_call_id_steers_nothing(inproc: Any, nursery: trio.Nursery) -> None:
    """A third user who learns a ringing call's id and both user ids cannot accept, reject, end or
    relay into it, nor learn anything from the answers; the call completes for its parties."""
    server = await inproc()
    a = await joined(nursery, server.port, "isa")
    b = await joined(nursery, server.port, "isb")
    mallory = await joined(nursery, server.port, "mallory")
    answer = await a.emit("call:initiate", {"to": b.user_id, "callType": "video"})
    call_id = answer["callId"]
    await b.expect("call:incoming", callId=call_id)
    attempts = [
        ("call:accept", {"callId": call_id}), ("call:accept", {"callId": call_id, "from": a.user_id}),
        ("call:reject", {"callId": call_id, "from": a.user_id}), ("call:end", {"callId": call_id}),
        ("call:offer", {"to": b.user_id, "offer": {"sdp": "evil"}}),
        ("call:answer", {"to": a.user_id, "answer": {"sdp": "evil"}}),
        ("ice:candidate", {"to": a.user_id, "candidate": {"candidate": "evil"}}),
        ("ice:candidate", {"to": b.user_id, "candidate": None}),
    ]
    for event, payload in attempts:
        got = await mallory.emit(event, payload)
        assert got["ok"] is False and got["code"] in ("CALL_NOT_FOUND", "NOT_IN_CALL"), (event, got)
        assert call_id not in json.dumps(got)
    assert (await b.emit("call:accept", {"callId": call_id}))["ok"] is True
    await a.expect("call:accepted", callId=call_id)
    await check_call(a, b, call_id)
    seen = [n for n, *_ in a.all_events + b.all_events]
    assert "call:ended" not in seen and all("evil" not in json.dumps(e) for e in a.all_events + b.all_events)
    assert [n for n, *_ in mallory.all_events] == ["user:joined"]


# -- static files ------------------------------------------------------------------------------------


_SITES: dict[Path, tuple[Path, set[str]]] = {}


def make_site(tmp: Path) -> tuple[Path, set[str]]:
    if tmp in _SITES:
        return _SITES[tmp]
    site = tmp / "site"
    (site / "js").mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text("index")
    (site / "js" / "app.js").write_text("app")
    (tmp / "secret.txt").write_text("secret")
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "index.html").write_text("secret")
    for name, target in (("link", tmp / "secret.txt"), ("dirlink", tmp / "outside")):
        if not (site / name).is_symlink():
            (site / name).symlink_to(target)
    inside = {str(site / "index.html"), str(site / "js" / "app.js")}
    _SITES[tmp] = site, inside
    return site, inside


TRAVERSALS = [
    "/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/js/..%2f..%2fsecret.txt", "/%252e%252e/secret.txt",
    "/..%5csecret.txt", "/..\\secret.txt", "/%c0%ae%c0%ae/secret.txt", "/.%2e/secret.txt", "//etc/passwd",
    "/js/../../secret.txt", "/./../secret.txt", "/link", "/dirlink/", "/dirlink/index.html", "/js/%00",
    "/index.html%00.js", f"/{'../' * 30}etc/passwd", "/..;/secret.txt", "/%2e%2e%2fsecret.txt",
    "/js/%2e%2e/%2e%2e/secret.txt", "/\u2025/secret.txt", "/%ef%bc%8e%ef%bc%8e/secret.txt",
]


def test_static_traversal_catalogue(tmp_path: Path) -> None:
    site, inside = make_site(tmp_path)
    files = StaticFiles(str(site))
    for path in TRAVERSALS:
        found = files.resolve(path)
        assert found is None or found in inside, (path, found)
    assert files.resolve("/") == str(site / "index.html")
    assert files.resolve("/js/app.js") == str(site / "js" / "app.js")


SEGMENTS = st.sampled_from(["..", ".", "%2e%2e", "%2E%2e", "%252e%252e", "%2f", "%5c", "\\", "%00", "js", "link",
                            "dirlink", "secret.txt", "index.html", "app.js", "", "%c0%ae", "~", "outside", "//"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(SEGMENTS, max_size=8), tail=st.text(max_size=6))
def test_static_resolve_never_leaves_the_folder(tmp_path: Path, parts: list[str], tail: str) -> None:
    """Any URL path built from traversal pieces resolves to a file inside the folder, or to nothing."""
    site, inside = make_site(tmp_path)
    found = StaticFiles(str(site)).resolve("/" + "/".join(parts) + tail)
    assert found is None or found in inside, found
