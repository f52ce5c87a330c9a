"""Settings: one table of every setting, read from flags and ``CALLBOX_<NAME>`` variables.

Each setting is a field of :class:`Config` with its default, and a :class:`Setting` row saying its
flag, unit, bounds and help. The command line and the environment are both parsed from that table,
so a setting exists in one place. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import math
import os
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

    def __post_init__(self) -> None:
        for s in SETTINGS:
            s.check(getattr(self, s.name))
        if not self.path.startswith("/") or not self.path.endswith("/"):
            raise ConfigError(f"path: must start and end with '/', got {self.path!r}")


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    unit: str = ""
    valid: Callable[[Any], bool] | None = None
    rule: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CALLBOX_" + self.name.upper()

    def check(self, value: Any) -> None:
        if self.valid is not None and not self.valid(value):
            raise ConfigError(f"{self.name}: {value!r} is out of range ({self.rule})")


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
        kind = type(default).__name__
        raise ConfigError(f"{setting.name}: {text!r} is not a valid {kind}") from None


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from command-line flags, then ``CALLBOX_*`` variables, then defaults."""
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
    for s in SETTINGS:
        default = getattr(defaults, s.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        unit = f" {s.unit}" if s.unit else ""
        parser.add_argument(
            s.flag,
            dest=s.name,
            metavar=s.name.upper(),
            default=None,
            help=f"{s.help} (default: {shown!s}{unit}; env {s.env})",
        )
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for s in SETTINGS:
        default = getattr(defaults, s.name)
        raw = getattr(ns, s.name)
        if raw is None:
            raw = environ.get(s.env)
        if raw is not None:
            values[s.name] = _convert(s, raw, default)
    return Config(**values)
