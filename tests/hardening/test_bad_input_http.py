"""Bad input at the HTTP layer, against a real ``python -m callbox``, while two users stay in a call.

Each case writes raw bytes on a new TCP connection and checks what the client sees: the status of the
first response (or none), its body, and whether the server then closes the connection. Cases are
listed with their documented answers in ``protocol/bad-input.md`` (ids HTTP-nn).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trio

from ._sig import Peer
from ._wire import (
    HOST,
    HTTPReply,
    Proc,
    eio_target,
    exchange,
    get_request,
    metrics,
    parse_reply,
    read_until_closed,
    spawn,
    tcp,
    wall,
)

pytestmark = pytest.mark.process  # the module's ``server``: a real python -m callbox

HEAD_TIMEOUT = 1.0  # --request-head-timeout of this module's server
KEEPALIVE = 3.0  # --keepalive-timeout: a connection kept alive is still open well after an answer
MAX_PAYLOAD = 100_000
CLOSE_WAIT = 0.15  # a server that closes after its answer does so within this (loopback)


@pytest.fixture(scope="module")
def server() -> Iterator[Proc]:
    with spawn("--request-head-timeout", str(HEAD_TIMEOUT), "--keepalive-timeout", str(KEEPALIVE),
               "--max-payload", str(MAX_PAYLOAD),
               env={"CALLBOX_CONNECTION_RATE_PER_ADDRESS": "100000", "CALLBOX_CONNECTION_BURST_PER_ADDRESS": "100000",
                    "CALLBOX_MAX_SESSIONS_PER_ADDRESS": "100000"}) as proc:
        yield proc


def post(sid: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: {HOST}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def json_error(code: int) -> bytes:
    messages = {0: "Transport unknown", 1: "Session ID unknown", 2: "Bad handshake method", 3: "Bad request",
                5: "Unsupported protocol version"}
    return f'{{"code":{code},"message":"{messages[code]}"}}'.encode()


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    request: bytes | Callable[[str], bytes]  # a function gets the sid of a fresh polling session
    status: int | None  # status of the first answer; None: no answer at all
    closes: bool  # the server closes the connection right after the answer (or instead of one)
    body: bytes | None = None  # the first answer's exact body
    header: tuple[str, str] | None = None  # a header the first answer must carry
    no_body: bool = False  # the answer carries no body (HEAD)
    bug: str = ""  # the defect report this case checks the fix of (see /tmp/callbox-bugs/hardening.md)


GET = get_request
SIO_HANDSHAKE = eio_target("polling")
CHUNKED = "Transfer-Encoding: chunked\r\n"

CASES = [
    Case("HTTP-01", "request head over 16 KiB arriving in one write (a 40 KB header)",
         GET("/healthz", "X-Big: " + "a" * 40_000 + "\r\n"), 431, True, b"Bad request\n", bug="H6"),
    Case("HTTP-02", "request head of 1 MB", GET("/healthz", "X-Big: " + "a" * 1_000_000 + "\r\n"), 431, True,
         b"Bad request\n"),
    Case("HTTP-03", "endless header lines (25,000 short headers)", GET("/healthz", "X-A: b\r\n" * 25_000),
         431, True, b"Bad request\n"),
    Case("HTTP-04", "method with characters outside the token set", b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
         400, True, b"Bad request\n"),
    Case("HTTP-05", "unknown method on a plain path", b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, False,
         b"Method not allowed\n", ("allow", "GET, HEAD")),
    Case("HTTP-06", "unknown method on the endpoint, no sid",
         f"BREW {SIO_HANDSHAKE} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, False, json_error(2)),
    Case("HTTP-07", "PUT on the endpoint with a live sid",
         lambda sid: f"PUT {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),
         400, False, json_error(3)),
    Case("HTTP-08", "CONNECT (proxy) request", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
         405, False, b"Method not allowed\n"),
    Case("HTTP-09", "OPTIONS * (asterisk form)", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 405, False),
    Case("HTTP-10", "HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, True, b"Bad request\n"),
    Case("HTTP-11", "HTTP/1.0 request", b"GET /healthz HTTP/1.0\r\n\r\n", 200, True, b"ok\n"),
    Case("HTTP-12", "HTTP/2 connection preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 405, True),
    Case("HTTP-13", "TLS ClientHello on the plain-text port",
         b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100), 400, True, b"Bad request\n"),
    Case("HTTP-14", "raw non-ASCII bytes in the target", b"GET /h\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, True),
    Case("HTTP-15", "NUL in a header value", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n", 400, True),
    Case("HTTP-16", "header line without a colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBogus\r\n\r\n", 400, True),
    Case("HTTP-17", "absolute-form target naming the endpoint", GET("http://evil.example/socket.io/?EIO=4&transport=polling"),
         404, False, b"Not found\n"),
    Case("HTTP-18", "path traversal with no static folder", GET("/../../etc/passwd"), 404, False, b"Not found\n"),
    Case("HTTP-19", "a path below the endpoint", GET("/socket.io/x?EIO=4&transport=polling"), 404, False),
    Case("HTTP-20", "repeated EIO (4 then 3): the last counts", GET("/socket.io/?EIO=4&EIO=3&transport=polling"),
         400, False, json_error(5)),
    Case("HTTP-21", "repeated transport (websocket then polling): the last counts",
         GET("/socket.io/?EIO=4&transport=websocket&transport=polling"), 200, False),
    Case("HTTP-22", "repeated sid (live then bogus): the last counts",
         lambda sid: GET(eio_target("polling", sid) + "&sid=bogus"), 400, False, json_error(1)),
    Case("HTTP-23", "empty sid", GET(eio_target("polling") + "&sid="), 400, False, json_error(1)),
    Case("HTTP-24", "10 KB sid", GET(eio_target("polling", "A" * 10_000)), 400, False, json_error(1)),
    Case("HTTP-25", "bad percent-encoding in EIO", GET("/socket.io/?EIO=%ZZ&transport=polling"), 400, False,
         json_error(5)),
    Case("HTTP-26", "percent-encoded NUL after EIO=4", GET("/socket.io/?EIO=4%00&transport=polling"), 400, False,
         json_error(5)),
    Case("HTTP-27", "Content-Length of 20 digits, no body, on a live session",
         lambda sid: (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: 99999999999999999999\r\n\r\n").encode(),
         413, True, json_error(3), bug="H3"),
    Case("HTTP-28", "negative Content-Length", b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
         400, True),
    Case("HTTP-29", "two different Content-Lengths",
         b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, True),
    Case("HTTP-30", "Content-Length shorter than the body: the rest is a bad next request",
         lambda sid: (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
                      "6\x1e6GARBAGE\r\n\r\n").encode(), 200, True, b"ok"),
    Case("HTTP-31", "chunked POST body carrying a payload",
         lambda sid: (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\n{CHUNKED}\r\n"
                      "3\r\n6\x1e6\r\n0\r\n\r\n").encode(), 200, False, b"ok"),
    Case("HTTP-32", "chunked POST body over max_payload",
         lambda sid: (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\n{CHUNKED}\r\n".encode()
                      + b"".join(b"4000\r\n" + b"6" * 0x4000 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"),
         413, True, json_error(3)),
    Case("HTTP-33", "chunk size that is not hex",
         lambda sid: (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\n{CHUNKED}\r\n"
                      "ZZ\r\nab\r\n0\r\n\r\n").encode(), 400, True),
    Case("HTTP-34", "Transfer-Encoding: gzip", f"POST {SIO_HANDSHAKE} HTTP/1.1\r\nHost: x\r\n"
         "Transfer-Encoding: gzip\r\n\r\n".encode(), 501, True),
    Case("HTTP-35", "Transfer-Encoding and Content-Length together (smuggling shape)",
         GET("/healthz", CHUNKED + "Content-Length: 5\r\n") + b"0\r\n\r\n", 400, True, b"Bad request\n", bug="H4"),
    Case("HTTP-36", "a body on GET /healthz", GET("/healthz", "Content-Length: 5\r\n") + b"hello", 413, True,
         bug="H2"),
    Case("HTTP-37", "a body on POST /healthz (refused before the method is looked at)",
         b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413, True, bug="H2"),
    Case("HTTP-38", "HEAD /healthz", b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200, False, no_body=True,
         bug="H1"),
    Case("HTTP-39", "HEAD on the endpoint", f"HEAD {SIO_HANDSHAKE} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400,
         False, no_body=True, bug="H1"),
    Case("HTTP-40", "HEAD on an unknown path", b"HEAD /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, False,
         no_body=True, bug="H1"),
    Case("HTTP-41", "bare LF line ends (tolerated)", b"GET /healthz HTTP/1.1\nHost: x\n\n", 200, False, b"ok\n"),
    Case("HTTP-42", "obsolete header folding (unfolded)", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
         200, False, b"ok\n"),
    Case("HTTP-43", "h2c upgrade request (ignored: HTTP/1.1 answer)",
         GET("/healthz", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
         200, False, b"ok\n"),
]

# Cases with a test of their own below.
OTHER_IDS = ["HTTP-44", "HTTP-45", "HTTP-46", "HTTP-47", "HTTP-48"]
CASE_IDS = [c.id for c in CASES] + OTHER_IDS


async def new_sid(port: int) -> str:
    data, _ = await exchange(port, GET(SIO_HANDSHAKE, "Connection: close\r\n"))
    reply = parse_reply(data)
    assert reply is not None and reply.status == 200, data[:200]
    return str(json.loads(reply.body[1:])["sid"])


async def read_answer(stream: trio.SocketStream, *, head: bool, timeout: float = 2.0) -> tuple[bytes, bool]:  # noqa: ASYNC109
    """The first answer (headers only for HEAD), then whatever follows within CLOSE_WAIT."""
    data = b""
    with trio.move_on_after(timeout):
        while (reply := parse_reply(data)) is None or (
                not head and len(reply.body) < int(reply.headers.get("content-length", 0))):
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
    rest, closed = await read_until_closed(stream, timeout=CLOSE_WAIT)
    return data + rest, closed


async def send_case(port: int, request: bytes) -> tuple[HTTPReply | None, bytes, bool]:
    """Write the case (in a task of its own: the server may answer and close before it has read it
    all); read the first answer; then see whether the server closes soon after."""
    stream = await tcp(port)

    async def write() -> None:
        try:
            with trio.move_on_after(5):
                await stream.send_all(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server answered and closed before taking it all: what it wrote is still read

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            # The answer comes at once, and a server that closes does so right after it; a connection
            # kept alive stays open until KEEPALIVE. CLOSE_WAIT after the answer tells the two apart.
            data, closed = await read_answer(stream, head=request.startswith(b"HEAD "))
            nursery.cancel_scope.cancel()
        return parse_reply(data), data, closed
    finally:
        await stream.aclose()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_http_case(case: Case, server: Proc, bystanders: object) -> None:
    request = case.request(await new_sid(server.port)) if callable(case.request) else case.request
    reply, data, closed = await send_case(server.port, request)
    if case.status is None:
        assert reply is None, data[:200]
    else:
        assert reply is not None, f"no answer, got {data[:200]!r}"
        assert reply.status == case.status, data[:300]
        if case.body is not None:
            assert reply.body == case.body, data[:300]
        if case.header is not None:
            assert reply.headers.get(case.header[0]) == case.header[1], reply.headers
        if case.no_body:
            assert reply.rest == b"" and reply.body == b"", data[:300]
    assert closed is case.closes, f"closed={closed}: {data[:300]!r}"
    await bystanders.check()  # type: ignore[attr-defined]


# -- cases with timing or many connections ---------------------------------------------------------


async def test_partial_head_is_cut_at_the_head_timeout(server: Proc, bystanders: object) -> None:
    """HTTP-44: a request head that stops half way (slow-loris) is closed, unanswered, after
    --request-head-timeout; HTTP-45: so is one that keeps dribbling a byte at a time."""
    before = (await metrics(server.port)).get('callbox_http_refused_total{reason="head_timeout"}', 0)
    stream = await tcp(server.port)
    start = wall()
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    data, closed = await read_until_closed(stream, timeout=HEAD_TIMEOUT + 2)
    assert closed and data == b""
    assert HEAD_TIMEOUT - 0.2 < wall() - start < HEAD_TIMEOUT + 1.5
    await stream.aclose()

    stream = await tcp(server.port)
    start = wall()
    closed = False
    with trio.move_on_after(HEAD_TIMEOUT + 3):
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:  # one byte every 0.1 s
            try:
                await stream.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                closed = True
                break
            with trio.move_on_after(0.1):  # the dribble's pace: what this test is about
                try:
                    got = await stream.receive_some(100)
                except trio.BrokenResourceError:  # a byte was in flight when the server closed: a reset
                    got = b""
                if got == b"":
                    closed = True
                    break
    assert closed, "a dribbling head was not cut off"
    assert wall() - start < HEAD_TIMEOUT + 1.5
    await stream.aclose()
    after = (await metrics(server.port)).get('callbox_http_refused_total{reason="head_timeout"}', 0)
    assert after - before == 2
    await bystanders.check()  # type: ignore[attr-defined]


async def test_many_slow_loris_connections_at_once(server: Proc, bystanders: object) -> None:
    """HTTP-46: 300 connections each holding a partial head: all are cut at the head timeout, and the
    call beside them relays with its usual latency meanwhile."""
    count = 300
    streams = []
    for _ in range(count):
        s = await tcp(server.port)
        await s.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Wait: ")
        streams.append(s)
    latencies = [await bystanders.check() for _ in range(10)]  # type: ignore[attr-defined]
    assert max(latencies) < 0.5, latencies
    closed = 0
    with trio.move_on_after(HEAD_TIMEOUT + 3):
        for s in streams:
            try:
                if await s.receive_some(100) == b"":
                    closed += 1
            except trio.BrokenResourceError:
                closed += 1
    for s in streams:
        await s.aclose()
    assert closed == count


async def test_body_that_never_arrives_is_cut_off(server: Proc, bystanders: object) -> None:
    """HTTP-47 (bug H3): a POST whose body stops short is closed within the head timeout (+ slack),
    not held forever; so is a handshake GET that announces a body it never sends."""
    sid = await new_sid(server.port)
    for request in (
        (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n40").encode(),
        GET(SIO_HANDSHAKE, "Content-Length: 100\r\n"),
        (f"POST {eio_target('polling', sid)} HTTP/1.1\r\nHost: x\r\n{CHUNKED}\r\n10\r\n40").encode(),
    ):
        stream = await tcp(server.port)
        await stream.send_all(request)
        _, closed = await read_until_closed(stream, timeout=HEAD_TIMEOUT + 3)
        await stream.aclose()
        assert closed, f"still open {HEAD_TIMEOUT + 3} s after an unfinished body: {request[:60]!r}"
        await bystanders.check()  # type: ignore[attr-defined]


async def test_pipelined_requests_are_answered_in_order(server: Proc, bystanders: object,
                                                        nursery: trio.Nursery) -> None:
    """HTTP-48: 100 pipelined requests on one connection get 100 answers, in order; a polling session
    also works when its POST and GET share a connection with other requests."""
    request = b"".join(GET(p) for p in ["/healthz", "/readyz"] * 50)
    data, _ = await exchange(server.port, request + GET("/healthz", "Connection: close\r\n"))
    statuses = []
    while (reply := parse_reply(data)) is not None:
        statuses.append((reply.status, reply.body))
        data = reply.rest
    assert statuses == [(200, b"ok\n"), (200, b"ready\n")] * 50 + [(200, b"ok\n")]
    peer = await Peer.open(nursery, server.port, "polling")
    await peer.close()
    await bystanders.check()  # type: ignore[attr-defined]
