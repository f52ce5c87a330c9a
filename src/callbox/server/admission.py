"""Who gets in: the caps on connections and sessions, overall and per client address, and the
per-address rate of new ones. Sans-IO (the caller passes the time); one place for every admission
limit, each a setting (``max_connections``, ``max_connections_per_address``,
``connection_rate_per_address`` / ``connection_burst_per_address``, ``max_sessions``,
``max_sessions_per_address``)."""

from __future__ import annotations

from ..config import Config
from ..metrics import Counter
from ..ratelimit import RateLimiter
from .routing import BAD_REQUEST, HTTPError

__all__ = ["Admission", "REFUSALS"]

# The reasons counted in callbox_http_refused_total.
REFUSALS = (
    "max_connections", "max_connections_per_address", "connection_rate_per_address", "max_sessions",
    "max_sessions_per_address", "head_timeout", "body_timeout", "bad_request", "draining", "not_allowed",
)


class Admission:
    __slots__ = ("config", "refused", "connections", "sessions", "_per_address", "_sessions_per_address", "_rate")

    def __init__(self, config: Config, refused: Counter) -> None:
        self.config = config
        self.refused = refused
        self.connections = 0  # open TCP connections
        self.sessions = 0  # open Engine.IO sessions
        self._per_address: dict[str, int] = {}  # open TCP connections by client address
        self._sessions_per_address: dict[str, int] = {}
        self._rate = RateLimiter()  # new connections and new sessions share one bucket per address

    def _take_token(self, address: str, now: float) -> bool:
        cfg = self.config
        return self._rate.take(address, now, cfg.connection_burst_per_address, cfg.connection_rate_per_address)

    def connection_refusal(self, address: str, now: float) -> str | None:
        """Why a new connection from ``address`` is refused (counted), or None: it is in, and counted
        against ``address`` until :meth:`connection_closed`."""
        cfg = self.config
        if self.connections > cfg.max_connections:
            reason = "max_connections"
        elif self._per_address.get(address, 0) >= cfg.max_connections_per_address:
            reason = "max_connections_per_address"
        elif not self._take_token(address, now):
            reason = "connection_rate_per_address"
        else:
            self._per_address[address] = self._per_address.get(address, 0) + 1
            return None
        self.refused.inc(reason)
        return reason

    @property
    def addresses(self) -> int:
        """Client addresses with an open connection or session (what the per-address caps hold)."""
        return len(self._per_address.keys() | self._sessions_per_address.keys())

    def connection_closed(self, address: str) -> None:
        _decrement(self._per_address, address)

    def admit_session(self, address: str, now: float) -> None:
        """May ``address`` open one more session? Else :class:`HTTPError` (503 or 429, counted)."""
        cfg = self.config
        if self._sessions_per_address.get(address, 0) >= cfg.max_sessions_per_address:
            reason, status = "max_sessions_per_address", 503
        elif self.sessions >= cfg.max_sessions:
            reason, status = "max_sessions", 503
        elif not self._take_token(address, now):
            reason, status = "connection_rate_per_address", 429
        else:
            return
        self.refused.inc(reason)
        raise HTTPError(status, BAD_REQUEST, retry_after=True)

    def session_opened(self, address: str) -> None:
        self.sessions += 1
        self._sessions_per_address[address] = self._sessions_per_address.get(address, 0) + 1

    def session_closed(self, address: str) -> None:
        self.sessions -= 1
        _decrement(self._sessions_per_address, address)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
