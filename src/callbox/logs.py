"""Structured logs: ``--log-format text|json``, ``--log-level``.

Log calls put what varies in ``extra={"fields": {...}}`` and keep the message a fixed phrase, so a
line can be searched and parsed. Nothing a client sent can forge a line: JSON escapes it, and the
text format escapes every control, line-breaking, bidi and zero-width character.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["setup_logging", "escape"]

# Characters that could start a fake line or reorder what a reader sees: C0/C1 controls (by
# isprintable), plus the bidi overrides/isolates and zero-width characters, which are "printable".
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")


def escape(text: str) -> str:
    if text.isprintable() and not _INVISIBLE.intersection(text):
        return text
    return "".join(
        ch if ch.isprintable() and ch not in _INVISIBLE else ch.encode("unicode_escape").decode("ascii")
        if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
        for ch in text
    )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [ts, record.levelname, record.name + ":", escape(record.getMessage())]
        for key, value in _fields(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if not text or any(c in text for c in ' "='):
                text = json.dumps(text)
            parts.append(f"{key}={escape(text)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
