"""The bench's own installs: the locked Python packages into this venv, the Node packages with npm ci.

The Python versions come from the project's lock (requirements/dev.txt, exported from uv.lock by
scripts/lock; the bench's packages are pyproject.toml's ``bench`` extra). Idempotent and quick when
nothing changed: the pins are compared with what is installed, and a Node folder is installed again
when its package-lock.json is newer than its node_modules.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REQUIREMENTS = BENCH.parent / "requirements" / "dev.txt"
NODE_DIRS = (BENCH / "peers" / "node", BENCH / "loadgen")


def pins() -> dict[str, str]:
    """Name -> version of every locked package that applies to this interpreter."""
    from packaging.requirements import Requirement

    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line[:1].isalnum():  # a requirement line; hashes and comments are indented or start with '#'
            requirement = Requirement(line.rstrip(" \\"))
            if requirement.marker is None or requirement.marker.evaluate():
                out[requirement.name] = str(requirement.specifier).removeprefix("==")
    return out


def python_missing() -> list[str]:
    missing = []
    for name, version in pins().items():
        try:
            if importlib.metadata.version(name) != version:
                missing.append(f"{name}=={version}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name}=={version}")
    return missing


def node_stale() -> list[Path]:
    """Node folders whose node_modules is missing or older than their package-lock.json
    (npm ci writes node_modules/.package-lock.json last)."""
    stale = []
    for folder in NODE_DIRS:
        done = folder / "node_modules" / ".package-lock.json"
        if not done.exists() or done.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime:
            stale.append(folder)
    return stale


def ensure(log=print) -> None:  # type: ignore[no-untyped-def]
    """Install what is missing; raise SystemExit with a reason if that cannot be done."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("bench: Node.js 18+ with npm is needed (node and npm on PATH)")
    missing = python_missing()
    if missing:
        log(f"bench setup: pip install -r {REQUIREMENTS.relative_to(BENCH.parent)} ({', '.join(missing)})")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes",
             "-r", str(REQUIREMENTS)],
            check=True,
        )
    for folder in node_stale():
        log(f"bench setup: npm ci in {folder.relative_to(BENCH.parent)}")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True)


if __name__ == "__main__":
    ensure()
