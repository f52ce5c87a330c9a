"""atheris: the signalling payload decoders, fed as the server feeds them.

The input is one Socket.IO argument list body: what the Socket.IO layer accepts (a JSON array of
msgspec.Raw) goes to every payload decoder of the signalling service. Only SignallingError may come
out; a decoded user id always matches the documented rule."""

from __future__ import annotations

import re
import sys

import _common  # noqa: F401  (puts src/ on the path)
import atheris

with atheris.instrument_imports(include=["callbox"]):
    import msgspec

    from callbox.signalling._errors import SignallingError
    from callbox.signalling._payloads import USER_ID_PATTERN
    from callbox.signalling._service import _bounded, _decoders, _join_user_id, _payload

_args = msgspec.json.Decoder(list[msgspec.Raw])
_rule = re.compile(r"\A[A-Za-z0-9_.@:+-]{1,128}\Z")
assert USER_ID_PATTERN


def test_one_input(data: bytes) -> None:
    # The Socket.IO layer hands over text (a WebSocket text frame, or a UTF-8 polling body): valid UTF-8.
    text = data.decode("utf-8", "replace")
    try:
        args = _args.decode("[" + text + "]")
    except (msgspec.DecodeError, RecursionError):
        return  # the Socket.IO layer refuses it (the connection closes): never reaches signalling
    for kind in _decoders:
        try:
            value = _payload(args, kind)
        except SignallingError:
            continue
        for field in ("to", "from_"):
            user = getattr(value, field, None)
            if user is not None:
                assert _rule.match(user), user
        for field in ("offer", "answer", "candidate"):
            raw = getattr(value, field, None)
            if raw is not None:
                try:
                    _bounded(raw, 4096, field, nullable=field == "candidate")
                except SignallingError:
                    pass
    try:
        user = _join_user_id(args)
        assert _rule.match(user), user
    except SignallingError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
