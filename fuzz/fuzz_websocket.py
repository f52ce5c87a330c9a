"""atheris: the server's WebSocket codec seam (callbox.server.wsframe) on arbitrary bytes after the
handshake, for both codecs (ours, the default, and wsproto's): messages up to a size limit, pings
answered, a close answered. Only WSProtocolError, with a close code to send, may come out."""

from __future__ import annotations

import sys

import _common
import atheris

with atheris.instrument_imports(include=["wsproto", "callbox"]):
    from callbox.server.wsframe import CLOSE, CODECS, PING, WSProtocolError

MAX_PAYLOAD = 4096
_ = _common


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    codec = CODECS["wsproto" if fdp.ConsumeBool() else "callbox"](MAX_PAYLOAD, b"")
    try:
        while fdp.remaining_bytes():
            for kind, payload in codec.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512))):
                if kind == PING:
                    codec.pong(payload)  # type: ignore[arg-type]
                elif kind == CLOSE:
                    codec.close(payload)  # type: ignore[arg-type]
                    return
    except WSProtocolError as exc:
        if exc.code not in (1002, 1007, 1009):
            raise


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
