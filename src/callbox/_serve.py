from __future__ import annotations

from typing import Any

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

    ``config`` defaults to the app's own (``SocketIO(config)``) or to :class:`Config`'s defaults.
    With ``nursery.start(serve, app, config)`` the caller gets the listeners once they listen.
    """
    cfg: Any = config or getattr(app, "config", None) or Config()
    await EngineServer(app, cfg).serve(task_status=task_status)
