"""Settings: one table of every setting, read from flags, ``CALLBOX_<NAME>`` variables and a TOML file.

Each setting is a field of :class:`Config` with its default, and a :class:`Setting` row saying its
flag, unit, bounds and help. The command line, the environment and the file are all parsed from
that table, so a setting exists in one place. Precedence: flag > environment > file > default.
A value that is wrong in any of them stops start-up with one line naming the setting.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["Config", "ConfigError", "SETTINGS", "parse_args"]


class ConfigError(Exception):
    """A setting has a value we cannot use. The message names the setting."""


class Config(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "0.0.0.0"
    port: int = 3000
    path: str = "/socket.io/"
    # Engine.IO's own defaults (socket.io 4.x): a dead peer is noticed within 45 s.
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    # socket.io's default maxHttpBufferSize: 1 MB per message or POST body.
    max_payload: int = 1_000_000
    # socket.io's default connectTimeout: a client must CONNECT to a namespace within 45 s.
    connect_timeout: float = 45.0
    # Empty: only same-origin browser pages (and clients that send no Origin) may connect.
    cors_origins: tuple[str, ...] = ()
    # What may wait for one slow client before it is cut off: a few large SDPs and then some.
    max_outbox: int = 1 << 20
    # How long a server-side ack (emit with callback) waits by default.
    ack_timeout: float = 10.0
    # Seconds a call may ring before both sides get call:timeout.
    ring_timeout: float = 30.0
    # TLS: both set, the port serves https and wss only.
    tls_cert: str = ""
    tls_key: str = ""
    # A folder served at / (a web app shipped on the same box); empty: none.
    static: str = ""
    log_format: str = "text"
    log_level: str = "info"
    # SIGTERM/SIGINT: calls end, clients are told, the process exits within this.
    shutdown_timeout: float = 10.0
    # Open TCP connections at once, overall and per client address. An office behind one NAT
    # address with a few hundred people (two connections each while upgrading) fits in 1000.
    max_connections: int = 10000
    max_connections_per_address: int = 1000
    # A request head must arrive within this (slow-loris); an idle keep-alive connection is
    # closed after keepalive_timeout (Node's http default is 5 s).
    request_head_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR networks).
    trusted_proxies: tuple[str, ...] = ()
    # New connections and new sessions per client address (token bucket): a page load opens a
    # couple; a NAT'd office starting up at once fits the burst; a flood does not.
    connection_rate_per_address: float = 50.0
    connection_burst_per_address: int = 200
    # Engine.IO sessions one client address may hold at once (one keep-alive connection can
    # otherwise open sessions without end), and overall.
    max_sessions_per_address: int = 1000
    max_sessions: int = 20000
    # Packets a client may send (token bucket per session): a call set-up (offer, answer, a few
    # dozen candidates, acks) fits the burst many times over, as does an app's burst of a thousand
    # events; past it packets are dropped, and a client that keeps going event_burst packets past
    # its allowance is disconnected.
    event_rate: float = 100.0
    event_burst: int = 1000
    # WebSocket framing: our own codec, or wsproto's (both pass tests/server/test_wsframe.py).
    ws_codec: str = "callbox"
    # An offer or answer ({type, sdp}) as sent: browser SDPs run 3-20 KB (more with many codecs,
    # simulcast and data channels); 64 KiB fits any real one with room.
    max_sdp_bytes: int = 65536
    # An RTCIceCandidateInit ({candidate, sdpMid, sdpMLineIndex, usernameFragment}) is about 300 bytes.
    max_candidate_bytes: int = 4096
    # Call attempts per user (token bucket): a burst of 10, refilled at 10 a minute. Far above what a
    # person dials; what stops a client from ringing every user it can name.
    initiate_burst: int = 10
    initiate_per_minute: float = 10.0
    # Token auth: with a secret, a client must CONNECT with auth {token: <HS256 JWT>} whose sub
    # is its user id. Empty: the server is open (and says so at start-up).
    auth_secret: str = ""
    # TURN REST API credentials (coturn's use-auth-secret): user:joined carries iceServers.
    turn_secret: str = ""
    turn_urls: tuple[str, ...] = ()
    stun_urls: tuple[str, ...] = ()
    # How long issued TURN credentials stay valid; a call longer than this loses its relay on the
    # next allocation refresh, so a day is the usual choice.
    turn_ttl: int = 86400
    # Seconds a call waits for a party whose connection was lost without a goodbye (a network
    # blip, a dead peer); 0: the call ends at once, as it did before.
    reconnect_grace: float = 30.0
    # Socket.IO connection state recovery (socket.io-client >= 4.6): how long a socket whose
    # connection was lost may be taken back, with its id, rooms, state and the events it missed.
    # 0: off, and the wire is as it was. Off in the Python API (as in Node's); the callbox command
    # turns it on with reconnect_grace's length unless it is given.
    recovery_window: float = 0.0
    # What is kept for it per socket, and per away user for the reconnect grace.
    recovery_max_events: int = 1000
    recovery_max_bytes: int = 1 << 20
    # Recovery attempts naming an unknown socket, per client address (token bucket): past them,
    # every recovery attempt from that address gets a fresh socket, so guessing ids gets nowhere.
    recovery_attempts_burst: int = 20
    recovery_attempts_per_minute: float = 10.0
    # Connections that may hold one user id at once (a phone and a laptop). 1: a new one takes the
    # user id over; more: each device rings, the first to answer takes the call.
    max_devices: int = 1
    # Several nodes: with a Redis URL, users, calls, deadlines and relays are shared through Redis
    # (the callbox[redis] extra); empty: one node, all in memory.
    redis_url: str = ""
    redis_prefix: str = "callbox"  # every key is {prefix}:... (one hash slot)
    redis_timeout: float = 2.0  # the deadline of every call to Redis
    # This node's name among the others (in its sockets' ids); empty: random per start.
    node_id: str = ""
    # A node silent this long is taken as dead and claimed by one other node.
    node_timeout: float = 10.0
    # What SIGTERM/SIGINT do to calls: "end-calls" (they end, reason server_shutdown), or "handover"
    # (connections close without a Socket.IO goodbye, clients reconnect to another node and resume).
    # Empty: handover with a Redis URL, end-calls without.
    drain_mode: str = ""

    def __post_init__(self) -> None:
        for s in SETTINGS:
            s.check(getattr(self, s.name))
        if not self.path.startswith("/") or not self.path.endswith("/"):
            raise ConfigError(f"path: must start and end with '/', got {self.path!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: tls_cert and tls_key go together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{name}: cannot read {path!r}")
        if self.turn_urls and not self.turn_secret:
            raise ConfigError("turn_urls: TURN URLs need turn_secret to issue credentials")
        if self.static and not os.path.isdir(self.static):
            raise ConfigError(f"static: {self.static!r} is not a folder")
        if self.drain_mode == "handover" and not self.redis_url:
            raise ConfigError("drain_mode: handover needs redis_url (another node to hand over to)")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {proxy!r} is not an address or network") from None


_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _non_negative(v: float) -> bool:
    return v >= 0 and math.isfinite(v)


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    unit: str = ""
    valid: Callable[[Any], bool] | None = None
    rule: str = ""
    secret: bool = False  # never echoed in errors or logs
    command_default: str = ""  # the callbox command's default, where it is not Config's

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CALLBOX_" + self.name.upper()

    def shown(self, value: Any) -> str:
        """A value as --help and the README show it."""
        if value in ("", ()):
            return "none"
        return ",".join(value) if isinstance(value, tuple) else str(value)

    def default_text(self, value: Any) -> str:
        """The default as --help and the README show it (``value``: Config's)."""
        if self.command_default:
            return self.command_default
        return self.shown(value) + (f" {self.unit}" if self.unit else "")

    def check(self, value: Any) -> None:
        if self.valid is not None and not self.valid(value):
            shown = "the value" if self.secret else repr(value)
            raise ConfigError(f"{self.name}: {shown} is out of range ({self.rule})")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "address to listen on"),
    Setting("port", "TCP port to listen on (0: any free port)", "", lambda v: 0 <= v <= 65535, "0-65535"),
    Setting("path", "URL path of the Socket.IO endpoint"),
    Setting("ping_interval", "seconds between server pings", "s", _positive, "> 0"),
    Setting("ping_timeout", "seconds to wait for a pong", "s", _positive, "> 0"),
    Setting("max_payload", "largest message or POST body", "bytes", lambda v: 1 <= v <= 1 << 30, "1 B-1 GiB"),
    Setting("connect_timeout", "seconds a client has to connect a namespace", "s", _positive, "> 0"),
    Setting("cors_origins", "allowed browser origins, comma separated; '*' for any (default: same origin)"),
    Setting("max_outbox", "bytes queued for one client before it is cut off", "bytes", lambda v: v >= 1024, ">= 1024"),
    Setting("ack_timeout", "seconds a server-side ack waits for the client", "s", _positive, "> 0"),
    Setting("ring_timeout", "seconds a call may ring unanswered", "s", _positive, "> 0"),
    Setting("tls_cert", "TLS certificate chain (PEM); with tls_key, serve https/wss"),
    Setting("tls_key", "TLS private key (PEM)"),
    Setting("static", "folder to serve at / (empty: none)"),
    Setting("log_format", "log line format", "", lambda v: v in ("text", "json"), "text or json"),
    Setting("log_level", "least severe level logged", "",
            lambda v: v in ("debug", "info", "warning", "error"), "debug, info, warning or error"),
    Setting("shutdown_timeout", "seconds a graceful shutdown may take", "s", _positive, "> 0"),
    Setting("max_connections", "open TCP connections at once", "", lambda v: v >= 1, ">= 1"),
    Setting("max_connections_per_address", "open TCP connections per client address", "",
            lambda v: v >= 1, ">= 1"),
    Setting("request_head_timeout", "seconds for a request head to arrive", "s", _positive, "> 0"),
    Setting("keepalive_timeout", "seconds an idle keep-alive connection stays open", "s", _positive, "> 0"),
    Setting("trusted_proxies", "proxies whose X-Forwarded-For is trusted, comma separated (addresses or CIDRs)"),
    Setting("connection_rate_per_address", "new connections and sessions an address regains per second", "/s",
            _positive, "> 0"),
    Setting("connection_burst_per_address", "new connections and sessions an address may open at once", "",
            lambda v: v >= 1, ">= 1"),
    Setting("max_sessions_per_address", "Engine.IO sessions one client address may hold", "", lambda v: v >= 1, ">= 1"),
    Setting("max_sessions", "Engine.IO sessions at once", "", lambda v: v >= 1, ">= 1"),
    Setting("event_rate", "packets a client regains per second (rate limit)", "/s", _positive, "> 0"),
    Setting("event_burst", "packets a client may send at once; as many more past that and it is cut off", "",
            lambda v: v >= 1, ">= 1"),
    Setting("ws_codec", "WebSocket frame codec", "", lambda v: v in ("callbox", "wsproto"), "callbox or wsproto"),
    Setting("max_sdp_bytes", "largest relayed offer or answer", "bytes", lambda v: 256 <= v <= 1 << 24, "256 B-16 MiB"),
    Setting(
        "max_candidate_bytes", "largest relayed ICE candidate", "bytes", lambda v: 64 <= v <= 1 << 20, "64 B-1 MiB"
    ),
    Setting("initiate_burst", "call attempts a user may make at once", "", lambda v: v >= 1, ">= 1"),
    Setting("initiate_per_minute", "call attempts a user regains per minute", "/min", _positive, "> 0"),
    Setting("auth_secret", "HS256 secret for client JWTs (empty: no auth); prefer the env or file to a flag", "",
            lambda v: v == "" or len(v.encode()) >= 32, "empty, or at least 32 bytes (RFC 7518 3.2)", secret=True),
    Setting("turn_secret", "TURN REST API shared secret (coturn static-auth-secret)", secret=True),
    Setting("turn_urls", "TURN server URLs given to clients, comma separated"),
    Setting("stun_urls", "STUN server URLs given to clients, comma separated"),
    Setting("turn_ttl", "lifetime of issued TURN credentials", "s", lambda v: 60 <= v <= 7 * 86400, "60 s-7 days"),
    Setting("reconnect_grace", "seconds a call waits for a party whose connection was lost (0: none)", "s",
            _non_negative, ">= 0"),
    Setting("recovery_window", "seconds a lost Socket.IO socket may be recovered (0: off)", "s", _non_negative,
            ">= 0", command_default="same as --reconnect-grace"),
    Setting("recovery_max_events", "events kept per socket for recovery, and per away user", "",
            lambda v: v >= 1, ">= 1"),
    Setting("recovery_max_bytes", "bytes kept per socket for recovery, and per away user", "bytes",
            lambda v: v >= 1024, ">= 1024"),
    Setting("recovery_attempts_burst", "recovery attempts naming an unknown socket an address may make at once",
            "", lambda v: v >= 1, ">= 1"),
    Setting("recovery_attempts_per_minute", "such attempts an address regains per minute", "/min", _positive, "> 0"),
    Setting("max_devices", "connections that may hold one user id at once (1: a new one takes it over)", "",
            lambda v: 1 <= v <= 100, "1-100"),
    Setting("redis_url", "Redis (or Valkey) shared by several nodes, redis://host:port/db (none: one node)",
            secret=True),
    Setting("redis_prefix", "the hash tag of every Redis key", "", lambda v: _NAME.fullmatch(v) is not None,
            "1-32 of A-Z a-z 0-9 _ -"),
    Setting("redis_timeout", "seconds any one call to Redis may take", "s", _positive, "> 0"),
    Setting("node_id", "this node's name among the others", "", lambda v: v == "" or _NAME.fullmatch(v) is not None,
            "1-32 of A-Z a-z 0-9 _ -", command_default="random per start"),
    Setting("node_timeout", "seconds without a heartbeat before a node is taken as dead", "s",
            lambda v: 1 <= v <= 3600, "1-3600 s"),
    Setting("drain_mode", "what SIGTERM does to calls: handover or end-calls", "",
            lambda v: v in ("", "handover", "end-calls"), "handover, end-calls",
            command_default="handover with --redis-url, else end-calls"),
)


def _convert(setting: Setting, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(x.strip() for x in text.split(",") if x.strip())
        return text
    except ValueError:
        raise ConfigError(f"{setting.name}: {text!r} is not {_kind(default)}") from None


def _from_toml(setting: Setting, value: Any, default: Any) -> Any:
    """A TOML value, checked against the type of the setting's default."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            return _convert(setting, value, default)
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return tuple(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    raise ConfigError(f"{setting.name}: {value!r} in the config file is not {_kind(default)}")


def _kind(default: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", tuple: "a list of strings"}
    return kinds[type(default)]


def load_file(path: str) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys named as the settings (``ping_interval = 10``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path!r} is not valid TOML: {exc}") from None
    defaults = Config()
    by_name = {s.name: s for s in SETTINGS}
    values: dict[str, Any] = {}
    for key, value in data.items():
        setting = by_name.get(key.replace("-", "_"))
        if setting is None:
            raise ConfigError(f"config: unknown setting {key!r} in {path!r}")
        values[setting.name] = _from_toml(setting, value, getattr(defaults, setting.name))
    return values


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from flags, then ``CALLBOX_*`` variables, then the TOML file, then defaults."""
    from . import __version__

    environ = os.environ if environ is None else environ
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="callbox",
        description="WebRTC call signalling server (Socket.IO v5 / Engine.IO v4, on Trio).",
        epilog="Every flag can also be set by the environment variable CALLBOX_<NAME>, "
        "e.g. CALLBOX_PING_INTERVAL=10.",
    )
    parser.add_argument("--version", action="version", version=f"callbox {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (env CALLBOX_CONFIG)")
    for s in SETTINGS:
        default = getattr(defaults, s.name)
        parser.add_argument(
            s.flag,
            dest=s.name,
            metavar=s.name.upper(),
            default=None,
            help=f"{s.help} (default: {s.default_text(default)}; env {s.env})",
        )
    ns = parser.parse_args(argv)
    config_file = ns.config or environ.get("CALLBOX_CONFIG")
    values: dict[str, Any] = load_file(config_file) if config_file else {}
    for s in SETTINGS:
        default = getattr(defaults, s.name)
        raw = getattr(ns, s.name)
        if raw is None:
            raw = environ.get(s.env)
        if raw is not None:
            values[s.name] = _convert(s, raw, default)
    values.setdefault("recovery_window", values.get("reconnect_grace", defaults.reconnect_grace))
    return Config(**values)


def drain_mode(config: Config) -> str:
    """``handover`` or ``end-calls``: the setting, or its default for this config."""
    return config.drain_mode or ("handover" if config.redis_url else "end-calls")
