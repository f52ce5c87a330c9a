"""The Engine.IO and Socket.IO cores are sans-IO: importing them loads no trio, h11 or wsproto."""

import pathlib
import subprocess
import sys

import pytest

import callbox

pytestmark = pytest.mark.process  # a fresh interpreter, so that nothing is imported already


def test_cores_import_no_io_library() -> None:
    # callbox/__init__.py loads the Trio shell, so stand in an empty package for it: the cores
    # must import on their own.
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('callbox'); pkg.__path__ = [{str(pathlib.Path(callbox.__file__).parent)!r}]\n"
        "sys.modules['callbox'] = pkg\n"
        "import callbox.engineio, callbox.socketio\n"
        "print(','.join(sorted(m for m in ('trio', 'h11', 'wsproto') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
