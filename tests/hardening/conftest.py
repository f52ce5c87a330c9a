"""Fixtures of the hardening tests.

- ``bystanders``: two users in a live call on the module's ``server`` (a real ``python -m callbox``
  process each module starts once). A test checks ``await bystanders.check()`` while its abuse goes
  on; when the test ends the fixture checks once more that the call relays both ways, that the server
  process is alive, and that it logged no ERROR line and no traceback during the test (and did log
  something: an empty log was not captured).
- ``inproc``: a signalling server in this test's trio run, with its ``EngineServer`` at hand, so that
  a test can look inside (sessions, users, calls, timers, tasks).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import callbox
from _raw import eventually
from callbox.server.engine import EngineServer
from callbox.signalling import MemoryRegistry, Signalling, install

from ._sig import Peer, call_pair, check_call
from ._wire import Proc


@dataclass
class Bystanders:
    """A call between a WebSocket user and a long-polling user that must keep working."""

    a: Peer
    b: Peer
    call_id: str
    server: Proc
    log_mark: int
    latencies: list[float]

    async def check(self) -> float:
        assert self.server.alive(), "the server process died"
        rtt = await check_call(self.a, self.b, self.call_id)
        self.latencies.append(rtt)
        return rtt


@pytest.fixture
async def bystanders(nursery: trio.Nursery, server: Proc) -> AsyncIterator[Bystanders]:
    mark = server.log_size()
    a, b, call_id = await call_pair(nursery, server.port, "by", ("websocket", "polling"))
    by = Bystanders(a, b, call_id, server, mark, [])
    await by.check()
    yield by
    await by.check()
    assert (await a.emit("call:end", {"callId": call_id}))["ok"] is True
    await a.close()
    await b.close()
    # What the server logs about this test ends with the two bystanders leaving.
    for peer in (a, b):
        await server.wait_log(rf" user left user={re.escape(peer.user_id)}( |$)", mark)
    errors = server.errors(mark)
    assert not errors, "the server logged errors:\n" + "\n".join(errors[:20])


@dataclass
class InProc:
    port: int
    app: callbox.SocketIO
    signalling: Signalling
    engine: EngineServer

    @property
    def registry(self) -> MemoryRegistry:
        reg = self.signalling.registry
        assert isinstance(reg, MemoryRegistry)
        return reg

    def leftovers(self) -> dict[str, int]:
        """What the server still holds: zero everywhere once every client has gone."""
        ns = self.app.namespaces["/"]
        return {
            "sessions": len(self.engine.sessions),
            "sockets": len(ns.sockets),
            "rooms": len(ns.rooms),
            "users": len(self.registry.users),
            "calls": len(self.registry.calls),
            "timers": len(self.signalling.timers),
            "tcp": self.engine.admission.connections,
            "addresses": self.engine.admission.addresses,
        }

    async def settled(self, timeout: float = 5.0) -> dict[str, int]:  # noqa: ASYNC109
        """Wait (bounded) until the server holds nothing; returns what is left either way."""
        with contextlib.suppress(AssertionError):
            await eventually(lambda: not any(self.leftovers().values()), timeout)
        return self.leftovers()


def settings(**overrides: Any) -> callbox.Config:
    fields = set(callbox.Config.__struct_fields__)
    unknown = set(overrides) - fields
    assert not unknown, f"callbox.Config has no setting {sorted(unknown)} (yet): see /tmp/callbox-bugs/hardening.md"
    return callbox.Config(**{"host": "127.0.0.1", "port": 0, **overrides})


@pytest.fixture
def inproc(nursery: trio.Nursery) -> Any:
    """``server = await inproc(**settings)``: the signalling app served in this test's run."""

    async def start(**overrides: Any) -> InProc:
        config = settings(**overrides)
        app = callbox.SocketIO(config)
        signalling = install(app)
        engine = EngineServer(app, config)
        listeners = await nursery.start(engine.serve)
        return InProc(int(listeners[0].socket.getsockname()[1]), app, signalling, engine)

    return start
