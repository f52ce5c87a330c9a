"""The signalling service on the Socket.IO application API (default namespace ``/``).

Everything here goes through the public API: raw handlers (arguments as ``msgspec.Raw``), the
namespace's sockets by id, ``Socket.emit`` / ``disconnect``, ``SocketIO.start_soon`` and
``on_shutdown``. Each socket's :class:`Session` lives in ``socket.state``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..auth import TokenVerifier, Unauthorized
from ..config import Config
from ..engineio import CONNECTION_LOST, CloseReason
from ..metrics import Counter
from ..server.api import ConnectionRefused, Namespace, Socket, SocketIO
from ._observe import Observer
from ._registry import Registry
from ._service import Ack, Payload, Session, Signalling, Transport

if TYPE_CHECKING:
    from ._cluster import Cluster

__all__ = ["create_app", "install"]

log = logging.getLogger("callbox.signalling")

# The disconnect reasons of a connection that went without a goodbye: its call waits for it. A node
# that hands its clients over to others closes their connections as if lost.
_LOST = frozenset(reason.value for reason in (*CONNECTION_LOST, CloseReason.HANDOVER))


class _SocketIOTransport:
    def __init__(self, app: SocketIO, namespace: Namespace, sent: Counter) -> None:
        self.app = app
        self.namespace = namespace
        self.sent = sent

    def send(self, socket_id: str, event: str, payload: Payload) -> bool:
        socket = self.namespace.sockets.get(socket_id)
        if socket is not None and socket.emit(event, payload):
            self.sent.inc(event)
            return True
        return False

    async def disconnect(self, socket_id: str) -> None:
        socket = self.namespace.sockets.get(socket_id)
        if socket is not None:
            await socket.disconnect()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        self.app.start_soon(fn, *args)


def install(app: SocketIO, registry: Registry | None = None, cluster: Cluster | None = None) -> Signalling:
    """Serve the signalling protocol on ``app``'s default namespace: with its own ``registry``
    (by default, in memory), or as a node of a ``cluster`` (:mod:`._cluster`), whose registry it is."""
    namespace = app.of("/")
    observer = Observer(app.metrics)
    transport: Transport = _SocketIOTransport(app, namespace, observer.sent)
    if cluster is not None:
        registry = cluster.registry
        transport = cluster.wrap(transport)
        app.socket_id_prefix = cluster.socket_id_prefix
        app.readiness_checks.append(cluster.unready)
        cluster.on_claimed = lambda: app.close_connections(CloseReason.HANDOVER)
    signalling = Signalling(transport, registry, lambda: app.config, observer, cluster)
    if cluster is not None:
        cluster.signalling = signalling

    @namespace.on_connect
    async def connect(socket: Socket, auth: object) -> None:
        secret = app.config.auth_secret
        token_user = None
        if secret:
            try:
                token_user = TokenVerifier(secret).user_id(auth)
            except Unauthorized as exc:
                log.info("connection refused", extra={"fields": {"socket": socket.id, "why": str(exc),
                                                                "remote": socket.remote_address}})
                raise ConnectionRefused("Unauthorized") from None
        socket.state = Session(socket.id, token_user)
        old = socket.recovering
        if old is not None and old.state.token_user != token_user:
            socket.recovering = None  # a token for someone else takes nothing back

    def handler(event: str) -> Callable[..., Awaitable[Ack]]:
        handle = signalling.handler(event)  # the event's operation, found once

        def on_event(socket: Socket, *args: object) -> Awaitable[Ack]:
            # Not async: the event's handling is the signalling's coroutine, with no frame of ours around it.
            return handle(socket.state, args, socket.ack_requested)

        return on_event

    for event in signalling.events:
        namespace.on(event, raw=True)(handler(event))

    @namespace.on_any
    def unknown(socket: Socket, event: str, *args: object) -> Awaitable[Ack]:
        return signalling.handle(socket.state, event, args, ack=socket.ack_requested)

    @namespace.on_detach
    async def detached(socket: Socket, reason: str) -> None:
        await signalling.closed(socket.state, lost=reason in _LOST)

    @namespace.on_recover
    async def recovered(socket: Socket) -> None:
        await signalling.returned(socket.state)

    @namespace.on_disconnect
    async def gone(socket: Socket, reason: str) -> None:
        await signalling.closed(socket.state, lost=reason in _LOST)

    app.on_shutdown(signalling.shutdown)
    return signalling


def create_app(config: Config | None = None, registry: Registry | None = None) -> SocketIO:
    """A Socket.IO application serving signalling (what ``callbox`` runs)."""
    app = SocketIO(config)
    install(app, registry)
    return app
