"""Where things are, for tests in any folder: import these rather than counting ``parents`` of
``__file__`` (a test may move to another folder; these do not)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PROTOCOL = ROOT / "protocol"  # wire vectors, JSON Schemas, the protocol documents
INTEROP = TESTS / "interop"  # the Node socket.io-client scripts (npm ci there)
BROWSER = TESTS / "browser"  # the Playwright driver (npm ci there)
