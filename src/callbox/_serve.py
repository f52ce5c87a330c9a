from __future__ import annotations

import trio

from .config import Config
from .server.engine import EngineApp, EngineServer


async def serve(
    app: EngineApp,
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (a :class:`SocketIO` or any Engine.IO application) until cancelled.

    ``config`` defaults to the app's own (``SocketIO(config)``) or to :class:`Config`'s defaults;
    given here, it also becomes the app's. With ``nursery.start(serve, app, config)`` the caller
    gets the listeners once they listen.
    """
    if config is None:
        config = getattr(app, "config", None) or Config()
    elif hasattr(app, "config"):
        app.config = config
    await EngineServer(app, config).serve(task_status=task_status)
