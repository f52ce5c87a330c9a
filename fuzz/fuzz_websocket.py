"""atheris: the WebSocket codec as the server drives it (wsproto, server side), on arbitrary bytes
after the handshake: messages are gathered up to a size limit, pings answered, a close answered.
Only wsproto's RemoteProtocolError may come out (never a LocalProtocolError: the server must not
make wsproto send in a state that forbids it)."""

from __future__ import annotations

import sys

import _common
import atheris

with atheris.instrument_imports(include=["wsproto", "callbox"]):
    from wsproto.connection import Connection, ConnectionState, ConnectionType
    from wsproto.events import CloseConnection, Message, Ping
    from wsproto.frame_protocol import CloseReason
    from wsproto.utilities import RemoteProtocolError

MAX_PAYLOAD = 4096
_ = _common


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ws = Connection(ConnectionType.SERVER)
    size = 0
    try:
        while fdp.remaining_bytes():
            ws.receive_data(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512)))
            for event in ws.events():
                if isinstance(event, Message):
                    size += len(event.data)
                    if size > MAX_PAYLOAD:
                        ws.send(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                        return
                    if event.message_finished:
                        size = 0
                elif isinstance(event, Ping):
                    ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    if ws.state is not ConnectionState.CLOSED:
                        ws.send(event.response())
                    return
    except RemoteProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
