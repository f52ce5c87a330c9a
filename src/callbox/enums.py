"""The base of the state tables' enums."""

from __future__ import annotations

import enum

__all__ = ["TableEnum"]


class TableEnum(enum.Enum):
    """An :class:`enum.Enum` hashed by identity, for the keys of the state tables looked up on every
    message. Members are singletons compared by identity, so equality is unchanged; ``Enum``'s own
    ``__hash__`` is Python code, run on every dict and set lookup (1-2% of a relay's CPU here)."""

    __hash__ = object.__hash__
