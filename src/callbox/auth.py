"""Client tokens: HS256 JWTs checked by PyJWT (signature, exp, nbf), user id from ``sub``."""

from __future__ import annotations

from typing import Any

__all__ = ["TokenVerifier", "Unauthorized", "MAX_TOKEN_LENGTH"]

# A JWT with a user id and a few claims is a few hundred bytes; 8 KiB leaves room for more claims
# while a client cannot make us base64-decode and HMAC megabytes.
MAX_TOKEN_LENGTH = 8192


class Unauthorized(Exception):
    """The token is missing, malformed, forged, expired or not yet valid."""


class TokenVerifier:
    def __init__(self, secret: str, leeway: float = 0.0) -> None:
        self._secret = secret
        self._leeway = leeway

    def user_id(self, auth: Any) -> str:
        """The user id a CONNECT auth payload ``{token}`` proves, or :class:`Unauthorized`."""
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("no token")
        import jwt  # here, not at the top: PyJWT may load cryptography, megabytes an open server never needs

        try:
            # Only HS256: a token cannot choose its own algorithm ("none", or RS256 with our
            # secret as a public key). exp and sub are required: a token must end.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(str(exc)) from None
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise Unauthorized("sub is not a string")
        return sub
