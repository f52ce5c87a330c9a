"""Run a command in a fresh network namespace whose only interface is ``lo``, brought up.

    python in_netns.py COMMAND [ARG...]

What ``unshare -n`` followed by ``ip link set lo up`` does, without needing util-linux or iproute2:
unshare(2) with CLONE_NEWNET, then SIOCSIFFLAGS on ``lo``, then exec the command. Everything the
command starts (a callbox server, Chromium) stays in the namespace, so the only addresses there are
127.0.0.1 and ::1 and no packet can leave the machine.

Needs CAP_SYS_ADMIN (root). When the namespace cannot be made, exits 77 with the reason on stderr,
so that the caller skips instead of testing with other addresses.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

CANNOT = 77
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in a 24-byte union


def fail(why: str) -> None:
    print(f"in_netns: cannot make a loopback-only network namespace: {why}", file=sys.stderr)
    sys.exit(CANNOT)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        fail(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))
    except OSError as exc:
        fail(f"bringing lo up: {exc}")
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        fail(f"the namespace has {interfaces}, not only lo")
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as exc:
        print(f"in_netns: cannot run {argv[1]!r}: {exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv)
