from __future__ import annotations

import trio

from .config import Config
from .server.engine import EngineApp, EngineServer


async def serve(
    app: EngineApp,
    config: Config | None = None,
    *,
    mounts: dict[str, EngineApp] | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (a :class:`SocketIO` or any Engine.IO application) until cancelled.

    ``config`` defaults to the app's own (``SocketIO(config)``) or to :class:`Config`'s defaults;
    given here, it also becomes the app's. With ``nursery.start(serve, app, config)`` the caller
    gets the listeners once they listen.

    ``mounts`` serves more applications on the same port, each at its own path
    (``{"/admin/": other_app}``), as Node mounts several servers on one HTTP server. The port's
    settings (TLS, limits, CORS) are ``config``'s; each Socket.IO app keeps its own for the rest.
    """
    if config is None:
        config = getattr(app, "config", None) or Config()
    elif hasattr(app, "config"):
        app.config = config
    await EngineServer(app, config, mounts=mounts).serve(task_status=task_status)
