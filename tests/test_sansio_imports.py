"""The sans-IO cores (Engine.IO, Socket.IO, and the signalling rules: the state tables and the
registry) load no trio, h11 or wsproto when imported."""

import pathlib
import subprocess
import sys

import pytest

import callbox

pytestmark = pytest.mark.process  # a fresh interpreter, so that nothing is imported already


def test_cores_import_no_io_library() -> None:
    # callbox/__init__.py and callbox/signalling/__init__.py load the Trio shell, so stand in empty
    # packages for them: the cores must import on their own.
    code = (
        "import sys, types\n"
        f"root = {str(pathlib.Path(callbox.__file__).parent)!r}\n"
        "for name, path in (('callbox', root), ('callbox.signalling', root + '/signalling')):\n"
        "    pkg = types.ModuleType(name); pkg.__path__ = [path]; sys.modules[name] = pkg\n"
        "import callbox.engineio, callbox.socketio, callbox.signalling._state, callbox.signalling._registry\n"
        "print(','.join(sorted(m for m in ('trio', 'h11', 'wsproto') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
