"""Plain HTTP pieces of the shell: client addresses behind proxies, and static files."""

from __future__ import annotations

import ipaddress
import mimetypes
import os
import posixpath
from collections.abc import Sequence
from urllib.parse import unquote

__all__ = ["ProxyTrust", "StaticFiles"]

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
