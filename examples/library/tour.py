"""A tour of callbox's Socket.IO API beyond events and acks: the handshake, request checks and
middleware, response headers, rooms and broadcasts with acks, deferred acks, hooks, class-based and
dynamic namespaces, and a second app on the same port. The README shows this file; a test
(tests/interop/test_library_tour.py) runs it against socket.io-client.

    python examples/library/tour.py     # serves on http://127.0.0.1:3000
"""

from __future__ import annotations

import re

import trio

import callbox

app = callbox.SocketIO(callbox.Config(host="127.0.0.1", port=3000))


@app.allow_request  # before any session exists: False answers 403
def allow(handshake: callbox.Handshake) -> bool:
    return handshake.query.get("app") != "banned"


@app.initial_headers  # on the answer that opens a connection: a cookie for a sticky load balancer
def headers(handshake: callbox.Handshake) -> dict[str, str]:
    return {"Set-Cookie": "node=n1; Path=/; HttpOnly"}


@app.use  # every namespace: authenticate once
def authenticate(socket: callbox.Socket, auth: dict[str, object]) -> None:
    if not isinstance(auth, dict) or auth.get("token") != "secret":
        raise callbox.ConnectionRefused("unauthorized", {"hint": "send auth {token}"})
    socket.state = {"user": auth.get("user", "anonymous"), "tenant": socket.handshake.query.get("tenant")}


@app.on("whoami")  # what the request that opened the connection said
def whoami(socket: callbox.Socket) -> dict[str, object]:
    hs = socket.handshake
    return {**socket.state, "agent": hs.headers.get("user-agent"), "address": hs.address, "secure": hs.secure}


@app.on("join")
def join(socket: callbox.Socket, room: str) -> list[str]:
    socket.join(room)
    return sorted(socket.rooms)


@app.on("shout")  # the sender's rooms but not the sender, nor anyone in "quiet"
def shout(socket: callbox.Socket, text: str) -> int:
    return socket.to(socket.rooms).except_("quiet").emit("shout", socket.state["user"], text)


@app.on("poll")  # ask every socket of a room; collect the answers that come within a second
async def poll(socket: callbox.Socket, room: str, question: str) -> dict[str, object]:
    answers = await app.to(room).timeout(1).emit_with_ack("question", question)
    return {sid: values[0] for sid, values in answers.items()}


@app.on("slow")  # answer after the handler returned: defer the ack, answer from a task
def slow(socket: callbox.Socket, value: int) -> None:
    ack = socket.defer_ack()
    if ack is None:  # the client asked for no answer
        return

    async def later() -> None:
        await trio.sleep(0.1)
        ack(value * 2)

    app.start_soon(later)


sent: list[tuple[str, str]] = []


@app.on_any_outgoing  # every event to every socket: for logs and metrics
def count(socket: callbox.Socket, event: str, args: tuple[object, ...]) -> None:
    sent.append((socket.id, event))


@app.on("sent")
def how_many(socket: callbox.Socket) -> int:
    return sum(1 for sid, _ in sent if sid == socket.id)


class Chat:  # class-based handlers: on_<event> methods, on a namespace of their own
    def on_connect(self, socket: callbox.Socket, auth: dict[str, object]) -> None:
        socket.join("chat")

    def on_say(self, socket: callbox.Socket, text: str) -> str:
        socket.to("chat").emit("said", text)
        return "ok"


app.register(Chat(), "/chat")

tenants = app.of(re.compile(r"/tenant-\w+"))  # dynamic namespaces: one per tenant, made on demand


@tenants.on("where")
def where(socket: callbox.Socket) -> str:
    return socket.namespace.name


echo = callbox.SocketIO()  # a second app on the same port, at its own path


@echo.on("echo")
def echo_back(socket: callbox.Socket, *args: object) -> list[object]:
    return list(args)  # one ack argument, a list (a tuple would be several arguments)


if __name__ == "__main__":
    trio.run(lambda: callbox.serve(app, mounts={"/echo/": echo}))
