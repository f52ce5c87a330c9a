"""atheris: Engine.IO packets, polling payloads and the session state machine's receive paths.

Only EngineIOProtocolError (TransportMismatch is one) may come out of them."""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts src/ on the path)
import atheris

with atheris.instrument_imports(include=["callbox"]):
    from callbox.engineio import EngineIOProtocolError, EngineSession
    from callbox.engineio.packet import decode_payload, decode_text_packet, encode_payload


def session(websocket: bool) -> EngineSession:
    return EngineSession("s", websocket=websocket, now=0.0, ping_interval=25.0, ping_timeout=20.0,
                         max_outbox_bytes=1 << 20, event_rate=50.0, event_burst=200)


def test_one_input(data: bytes) -> None:
    try:
        packets = decode_payload(data)
    except EngineIOProtocolError:
        packets = None
    if packets is not None:  # what decodes re-encodes to a payload that decodes the same
        assert decode_payload(encode_payload(packets)) == packets
    text = data.decode("utf-8", "replace")
    try:
        decode_text_packet(text)
    except EngineIOProtocolError:
        pass
    polling = session(False)
    try:
        polling.receive_payload(data, 1.0)
    except EngineIOProtocolError:
        pass
    ws = session(True)
    for i, record in enumerate(text.split("\x1e")[:50]):
        try:
            ws.receive_ws_text(record, 1.0 + i)
        except EngineIOProtocolError:
            break
    upgrading = session(False)
    upgrading.begin_upgrade(0.0)
    for record in text.split("\x1e")[:4]:
        try:
            upgrading.receive_ws_text(record, 1.0)
        except EngineIOProtocolError:
            break


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
