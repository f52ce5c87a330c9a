"""atheris: the Socket.IO packet decoder, over sequences of text and binary messages.

Input: messages separated by b"\\x00\\xff"; a message starting with b"b" is binary, any other is text
(its first byte dropped). Only SocketIOProtocolError may come out; a decoded event re-encodes to a
packet that decodes the same."""

from __future__ import annotations

import sys

import _common
import atheris

with atheris.instrument_imports(include=["callbox"]):
    from callbox.socketio import Decoder, PacketType, SocketIOProtocolError, encode_packet


def test_one_input(data: bytes) -> None:
    decoder = Decoder()
    for part in data.split(_common.SEP)[:64]:
        try:
            if part[:1] == b"b":
                packet = decoder.receive_binary(part[1:])
            else:
                packet = decoder.receive_text(part[1:].decode("utf-8", "replace"))
        except SocketIOProtocolError:
            decoder = Decoder()  # the connection would close; a new one starts clean
            continue
        if packet is not None and packet.type in (PacketType.EVENT, PacketType.ACK):
            again = Decoder().receive_text(encode_packet(packet.type, packet.namespace, packet.data, packet.id))
            assert again is not None and again.data == packet.data and again.id == packet.id


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
