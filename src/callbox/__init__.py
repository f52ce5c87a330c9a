"""callbox: a WebRTC call signalling server on Trio, speaking Socket.IO v5 / Engine.IO v4.

Public API:

- :class:`SocketIO`, :class:`Namespace`, :class:`Socket`, :class:`ConnectionRefused`: write a
  Socket.IO application (events, acks, rooms, namespaces, middleware); :class:`Ack` (an answer
  given later), :class:`Handshake` (the request that opened a connection), :class:`Broadcast`
  (emit to, or act on, the sockets of some rooms);
- :class:`EngineApp`, :class:`EngineSocket`: write an Engine.IO application (raw messages);
- :func:`serve`: run either on one port; :class:`Config`: its settings.
"""

from __future__ import annotations

from ._serve import serve
from .config import Config, ConfigError
from .engineio import CloseReason
from .server.api import Ack, Broadcast, ConnectionRefused, DisconnectReason, Handshake, Namespace, Socket, SocketIO
from .server.engine import EngineApp, EngineServer, EngineSocket

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "Broadcast",
    "CloseReason",
    "Config",
    "ConfigError",
    "ConnectionRefused",
    "DisconnectReason",
    "EngineApp",
    "EngineServer",
    "EngineSocket",
    "Handshake",
    "Namespace",
    "Socket",
    "SocketIO",
    "__version__",
    "serve",
]
