"""Plain HTTP pieces of the shell: client addresses behind proxies, the handshake an application
sees, and static files."""

from __future__ import annotations

import datetime
import ipaddress
import mimetypes
import os
import posixpath
import time
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, unquote

__all__ = ["Handshake", "ProxyTrust", "StaticFiles"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyTrust:
    """Finds the client address of a request: the TCP peer, or, when the peer is a trusted proxy,
    the nearest X-Forwarded-For hop that is not itself a trusted proxy."""

    def __init__(self, proxies: Sequence[str]) -> None:
        self.networks: list[IPNetwork] = [ipaddress.ip_network(p, strict=False) for p in proxies]

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client_address(self, peer: str, headers: Sequence[tuple[bytes, bytes]]) -> str:
        if not self.networks or not self.trusted(peer):
            return peer  # X-Forwarded-For from anyone else is a claim, not a fact
        hops: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a garbled hop: do not guess past it
            if not self.trusted(hop):
                return hop
        return peer


class Handshake:
    """The HTTP request that opened a connection, as an application sees it (Node's
    ``socket.handshake``, python-socketio's ``environ``): to read a tenant id or an API key from the
    query, a cookie, the user agent, or the client's address for a log line.

    Kept small, since a session keeps it for its whole life: the request target and the headers as
    one ``name:value`` line each in one bytes object (h11's list of tuples cost about 1.5 KiB per
    connection on a 10,000-client ramp); the dicts are made when asked for.
    """

    __slots__ = ("_target", "_headers", "address", "secure", "issued")

    def __init__(self, target: bytes, headers: Sequence[tuple[bytes, bytes]], address: str, secure: bool,
                 issued: float | None = None) -> None:
        self._target = target
        # h11 has checked them: a name has no ":", a value no line break
        self._headers = b"\n".join(name + b":" + value for name, value in headers)
        self.address = address  # the client's address: the TCP peer, or past trusted proxies
        self.secure = secure  # over TLS
        self.issued = time.time() if issued is None else issued  # when, in seconds since the epoch

    @property
    def url(self) -> str:
        """The request target: path and query string, as sent."""
        return self._target.decode("latin-1")

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (a repeated one: its last value), ``EIO`` and
        ``transport`` included, as in Node."""
        return dict(parse_qsl(self.url.partition("?")[2], keep_blank_values=True))

    @property
    def headers(self) -> dict[str, str]:
        """The request headers by lower-case name; a repeated header's values joined by ``, ``
        (``cookie`` by ``; ``)."""
        out: dict[str, str] = {}
        for line in self._headers.split(b"\n") if self._headers else ():
            raw_name, _, raw_value = line.partition(b":")
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            if name in out:
                out[name] += ("; " if name == "cookie" else ", ") + value
            else:
                out[name] = value
        return out

    @property
    def cookies(self) -> dict[str, str]:
        """The ``Cookie`` header's cookies by name (none if it does not parse)."""
        try:
            jar = SimpleCookie(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def time(self) -> str:
        """When, as an ISO 8601 UTC date and time."""
        return datetime.datetime.fromtimestamp(self.issued, datetime.UTC).isoformat()

    def __repr__(self) -> str:
        return f"<Handshake {self.address} {self.url!r}>"


class StaticFiles:
    """Serves the files of one folder. Nothing outside it can be reached: the path is decoded,
    normalised, and the real path (links resolved) must stay inside the folder."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, url_path: str) -> str | None:
        """The file for a URL path, or None (not found, or outside the folder)."""
        path = unquote(url_path)
        if "\x00" in path or "\\" in path:
            return None
        rel = posixpath.normpath("/" + path).lstrip("/")
        if any(part == ".." for part in rel.split("/")):
            return None
        full = os.path.realpath(os.path.join(self.root, rel))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")
        return full if os.path.isfile(full) else None

    @staticmethod
    def content_type(path: str) -> str:
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return kind + "; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else kind
