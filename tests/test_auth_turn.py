"""Token checks against the classic JWT attacks, and TURN REST API credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from callbox.auth import MAX_TOKEN_LENGTH, TokenVerifier, Unauthorized
from callbox.turn import ice_servers, turn_credential

SECRET = "s3cret-for-tests-0123456789abcdef-xyz"
verifier = TokenVerifier(SECRET)


def token(claims: dict[str, object], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def valid_claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


def test_valid_token_gives_its_subject() -> None:
    assert verifier.user_id({"token": token(valid_claims())}) == "alice"
    assert verifier.user_id({"token": token(valid_claims(nbf=int(time.time()) - 5))}) == "alice"


def _alg_none() -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(valid_claims()).encode())
    return f"{head}.{body}."


def _tampered() -> str:
    head, _, sig = token(valid_claims()).split(".")
    body = b64(json.dumps(valid_claims(sub="mallory")).encode())
    return f"{head}.{body}.{sig}"


ATTACKS = {
    "alg none": _alg_none(),
    "tampered payload": _tampered(),
    "expired": token({"sub": "alice", "exp": int(time.time()) - 10}),
    "not yet valid": token(valid_claims(nbf=int(time.time()) + 600)),
    "other secret": token(valid_claims(), key="not-the-secret-not-the-secret-not-the-secret"),
    "HS512 with our secret": token(valid_claims(), key=SECRET * 2, alg="HS512"),
    "no exp": token({"sub": "alice"}),
    "no sub": token({"exp": int(time.time()) + 60}),
    "sub not a string": token({"sub": 42, "exp": int(time.time()) + 60}),
    "garbage": "not.a.jwt",
    "empty": "",
    "huge": "a" * (MAX_TOKEN_LENGTH + 1),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_are_unauthorized(name: str) -> None:
    with pytest.raises(Unauthorized):
        verifier.user_id({"token": ATTACKS[name]})


@pytest.mark.parametrize("auth", [None, "token", ["token"], {"token": None}, {"token": 5}, {}])
def test_missing_or_wrong_auth_payload_is_unauthorized(auth: object) -> None:
    with pytest.raises(Unauthorized):
        verifier.user_id(auth)


def test_turn_credential_follows_the_rest_api_convention() -> None:
    username, credential = turn_credential("turnsecret", "alice", 3600, 1_700_000_000.7)
    assert username == "1700003600:alice"
    expected = base64.b64encode(hmac.new(b"turnsecret", b"1700003600:alice", hashlib.sha1).digest()).decode()
    assert credential == expected


def test_ice_servers_shape() -> None:
    servers = ice_servers(secret="k", turn_urls=["turn:127.0.0.1:3478"], stun_urls=["stun:127.0.0.1:3478"],
                          user_id="bob", ttl=600, now=1000.0)
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    assert servers[1]["urls"] == ["turn:127.0.0.1:3478"]
    assert servers[1]["username"] == "1600:bob"
    assert ice_servers(secret="", turn_urls=[], stun_urls=[], user_id="bob", ttl=600, now=0) == []
