"""Shared by the atheris harnesses: the repository's src/ on the path, and seed inputs."""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

SEP = b"\x00\xff"  # separates the messages of one input (Socket.IO harness)


def engineio_seeds() -> list[bytes]:
    vectors = json.loads((ROOT / "protocol" / "vectors" / "engineio.json").read_text())
    return [v["wire"].encode() if isinstance(v.get("wire"), str) else json.dumps(v).encode() for v in vectors]


def socketio_seeds() -> list[bytes]:
    vectors = json.loads((ROOT / "protocol" / "vectors" / "socketio.json").read_text())
    seeds = []
    for v in vectors:
        parts = []
        for m in v.get("messages", []):
            if "text" in m:
                parts.append(b"t" + m["text"].encode())
            else:
                parts.append(b"b" + json.dumps(m).encode())
        seeds.append(SEP.join(parts))
    return seeds


def signalling_seeds() -> list[bytes]:
    return [
        b'{"userId":"alice"}', b'{"to":"bob","callType":"video"}', b'{"callId":"abc","from":"alice"}',
        b'{"to":"bob","offer":{"type":"offer","sdp":"v=0\\r\\n"},"callType":"audio"}',
        b'{"to":"bob","answer":{"type":"answer","sdp":"v=0"}}', b'{"to":"bob","candidate":null}',
        b'{"to":"bob","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}}',
        b'{"userId":"a\\u0000"}', b'[1,2,3]', b'"x"', b"null", b'{"callId":"\\ud800"}',
    ]


def websocket_seeds() -> list[bytes]:
    def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        key = b"\x01\x02\x03\x04"
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    return [
        frame(1, b"40"), frame(2, b"\x00\x01"), frame(9, b"ping"), frame(10, b""), frame(8, b"\x03\xe8bye"),
        frame(1, b"4", fin=False) + frame(0, b"2[\"x\"]"), frame(1, b"2probe") + frame(1, b"5"),
        frame(1, b"x" * 300), frame(8, b""),
    ]
