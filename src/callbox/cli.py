"""The ``callbox`` command."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import trio

from ._serve import serve
from .config import Config, ConfigError, parse_args
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
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, app, config)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"callbox listening on http://{shown}:{port}{config.path}", flush=True)
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"callbox: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(_run, config)
    return 0
