"""The base of the state tables' enums, and how the per-message code names their members.

On Python 3.11, ``EnumType`` defines ``__getattr__``, which sends every ``SomeEnum.MEMBER`` through
the slow attribute path: about 55 ns more than a module-level name, a dozen times per relayed
message. So the modules on that path bind the members they compare with to module names once
(``_EVENT = PacketType.EVENT``) and compare with those; the rest of the code names members as usual.
"""

from __future__ import annotations

import enum

__all__ = ["TableEnum"]


class TableEnum(enum.Enum):
    """An :class:`enum.Enum` hashed by identity, for the keys of the state tables looked up on every
    message. Members are singletons compared by identity, so equality is unchanged; ``Enum``'s own
    ``__hash__`` is Python code, run on every dict and set lookup (1-2% of a relay's CPU here)."""

    __hash__ = object.__hash__
