"""The ``callbox`` command."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import trio

from .config import Config, ConfigError, parse_args
from .logs import setup_logging
from .server.engine import EngineServer
from .server.socketio import Socket, SocketIO

log = logging.getLogger("callbox")


def build_app(config: Config) -> SocketIO:
    """The default application: until signalling lands, an echo of every event on ``/``."""
    app = SocketIO(config)

    @app.on_any
    async def echo(socket: Socket, event: str, *args: object) -> tuple[object, ...]:
        socket.emit(event, *args)
        return args

    return app


async def _run(config: Config) -> None:
    app = build_app(config)
    server = EngineServer(app, config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            scheme = "https" if config.tls_cert else "http"
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"callbox listening on {scheme}://{shown}:{port}{config.path}", flush=True)
            async for signum in signals:
                log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
                with trio.move_on_after(config.shutdown_timeout) as scope:
                    await server.shutdown()
                if scope.cancelled_caught:
                    log.warning("shutdown timeout passed; closing what is left",
                                extra={"fields": {"sessions": len(server.sessions)}})
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"callbox: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    trio.run(_run, config)
    return 0
