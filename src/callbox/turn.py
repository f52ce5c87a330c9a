"""TURN credentials by the TURN REST API convention (coturn ``use-auth-secret``).

username = ``<expiry unix time>:<user id>``, credential = base64(HMAC-SHA1(secret, username)).
coturn recomputes the credential from its ``static-auth-secret`` and refuses expired usernames.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

__all__ = ["turn_credential", "ice_servers"]


def turn_credential(secret: str, user_id: str, ttl: int, now: float) -> tuple[str, str]:
    username = f"{int(now) + ttl}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    *, secret: str, turn_urls: Sequence[str], stun_urls: Sequence[str], user_id: str, ttl: int, now: float
) -> list[dict[str, Any]]:
    """RTCPeerConnection's ``iceServers`` for one user: STUN as is, TURN with fresh credentials."""
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls and secret:
        username, credential = turn_credential(secret, user_id, ttl, now)
        servers.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return servers
