"""Engine.IO's HTTP rules, sans-IO: which request is what, and what to refuse.

:func:`route` reads one parsed request (h11's :class:`h11.Request`) and answers with what the
shell should do: serve a plain page, answer a CORS preflight, open a polling session, poll or post
to one, or upgrade to a WebSocket; or raises :class:`HTTPError` with the status and the Engine.IO
error code to answer. No I/O, no clock: the shell (``server/connection.py``) does the reading and
writing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

import h11
import msgspec

__all__ = [
    "HTTPError",
    "Route",
    "cors_headers",
    "declared_length",
    "error_body",
    "head_size",
    "preflight_headers",
    "request_path",
    "route",
    "smuggling_shape",
    "websocket_key",
]

# Engine.IO's error codes and their messages (the body of a refused Engine.IO request).
UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, UNSUPPORTED_VERSION = range(6)
_MESSAGES = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_VERSION: "Unsupported protocol version",
}

Headers = list[tuple[str, str]]


class HTTPError(Exception):
    """Refuse the request with ``status`` and the Engine.IO error ``code`` as its JSON body."""

    def __init__(self, status: int, code: int, *, retry_after: bool = False, headers: Headers | None = None,
                 refused: str | None = None) -> None:
        super().__init__(status, code)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.headers = headers or []
        self.refused = refused  # the reason counted in callbox_http_refused_total, if any


def error_body(code: int) -> bytes:
    return msgspec.json.encode({"code": code, "message": _MESSAGES[code]})


class Route(NamedTuple):
    """What an Engine.IO request asks for. ``kind`` is one of: ``preflight`` (CORS), ``open`` (a
    new polling session), ``poll``, ``post``, ``websocket`` (with ``sid`` for an upgrade, without
    for a session made directly over WebSocket)."""

    kind: str
    sid: str | None = None
    base64: bool = False  # b64=1: the client wants binary messages as text (forceBase64)


def request_path(request: h11.Request) -> str:
    """The request's path (the target without its query)."""
    return request.target.decode("latin-1").partition("?")[0]


def route(request: h11.Request, *, draining: bool) -> Route:
    """Classify one request to the Engine.IO path, or raise :class:`HTTPError`. The CORS check
    (:func:`cors_headers`) comes first, in the shell, since every answer carries its headers."""
    method = request.method
    if method == b"OPTIONS":
        return Route("preflight")
    query = dict(parse_qsl(request.target.decode("latin-1").partition("?")[2], keep_blank_values=True))
    transport = query.get("transport")
    if transport not in ("polling", "websocket"):
        raise HTTPError(400, UNKNOWN_TRANSPORT)
    if query.get("EIO") != "4":
        raise HTTPError(400, UNSUPPORTED_VERSION)
    sid = query.get("sid")
    if sid is None and draining:
        raise HTTPError(503, BAD_REQUEST, refused="draining")
    if transport == "websocket":
        upgrade = any(n == b"upgrade" and v.lower() == b"websocket" for n, v in request.headers)
        if not upgrade or method != b"GET":
            raise HTTPError(400, BAD_REQUEST)
        return Route("websocket", sid, query.get("b64") == "1")
    if sid is None:
        if method != b"GET":
            raise HTTPError(400, BAD_HANDSHAKE_METHOD)
        return Route("open", None, query.get("b64") == "1")
    if method == b"GET":
        return Route("poll", sid)
    if method == b"POST":
        return Route("post", sid)
    raise HTTPError(400, BAD_REQUEST)


def cors_headers(request: h11.Request, allowed: Sequence[str]) -> Headers | None:
    """CORS answer headers, or None if the Origin is not allowed. No Origin: not a browser."""
    origin = host = None
    for name, value in request.headers:
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
    if origin is None:
        return []
    if origin in allowed or (not allowed and host is not None and urlsplit(origin).netloc == host):
        # Named (or the page's own): it may send credentials (cookies) too.
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
    if "*" in allowed:
        # Any site, as "*" means in Node (cors' default): without credentials, which a browser
        # then never sends (nor lets a page read an answer to a credentialed request).
        return [("Access-Control-Allow-Origin", "*")]
    return None


def preflight_headers(request: h11.Request, cors: Headers) -> Headers:
    asked = next((v.decode("latin-1") for n, v in request.headers if n == b"access-control-request-headers"), "")
    headers = [*cors, ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"), ("Access-Control-Max-Age", "86400")]
    if asked:
        headers.append(("Access-Control-Allow-Headers", asked))
    return headers


def websocket_key(request: h11.Request) -> bytes:
    """The Sec-WebSocket-Key of a valid RFC 6455 opening handshake, or the HTTP error to answer."""
    headers: dict[bytes, bytes] = {}
    for name, value in request.headers:
        headers[name] = headers[name] + b"," + value if name in headers else value
    if headers.get(b"sec-websocket-version", b"").strip() != b"13":
        raise HTTPError(426, BAD_REQUEST, headers=[("Sec-WebSocket-Version", "13")])
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    key = headers.get(b"sec-websocket-key", b"").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if b"upgrade" not in tokens or not valid_key:
        raise HTTPError(400, BAD_REQUEST)
    return key


def head_size(request: h11.Request) -> int:
    """About the bytes of a request head (h11 bounds only heads that arrive in pieces)."""
    return len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers)


def smuggling_shape(request: h11.Request) -> bool:
    """Transfer-Encoding and Content-Length together: RFC 9112 6.1 says close after answering; a
    request shaped so is how smuggling through a proxy starts, so it is refused outright."""
    names = {name for name, _ in request.headers}
    return b"transfer-encoding" in names and b"content-length" in names


def declared_length(request: h11.Request) -> int:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return 0
