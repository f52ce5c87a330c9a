"""The Python lock is the one source of the versions CI and the README install.

uv.lock is written by uv from pyproject.toml's ranges; requirements/runtime.txt (the README's install)
and requirements/dev.txt (.ci/run) are exported from it with hashes by ``scripts/lock``. These tests
run ``scripts/lock --check`` on the checkout, and show that it notices each way the three can drift.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # bash scripts/lock, which runs uv

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "lock"), "--check"],
        env={**os.environ, "UV": str(UV)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The files the lock depends on, copied so that a test may spoil them."""
    for name in ("pyproject.toml", "uv.lock", "README.md", "scripts/lock", "requirements/runtime.txt",
                 "requirements/redis.txt", "requirements/dev.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_checkout_is_locked() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_copy_of_the_checkout_passes(copy: Path) -> None:
    done = check(copy)
    assert done.returncode == 0, done.stderr


def test_a_range_changed_in_pyproject_without_relocking_fails(copy: Path) -> None:
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '"PyJWT>=2.8"' in text
    pyproject.write_text(text.replace('"PyJWT>=2.8"', '"PyJWT>=2.9"'))
    done = check(copy)
    assert done.returncode == 1
    assert "uv.lock does not match pyproject.toml: run 'bash scripts/lock'" in done.stderr


def test_a_dependency_added_to_pyproject_without_relocking_fails(copy: Path) -> None:
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"PyJWT>=2.8",', '"PyJWT>=2.8",\n    "idna>=3",'))
    assert check(copy).returncode == 1


@pytest.mark.parametrize("name", ["runtime.txt", "redis.txt", "dev.txt"])
def test_an_export_edited_by_hand_fails(copy: Path, name: str) -> None:
    path = copy / "requirements" / name
    path.write_text(path.read_text().replace("msgspec==", "msgspec==0.0.1; python_version < '3' #", 1))
    done = check(copy)
    assert done.returncode == 1
    assert f"requirements/{name} is not what uv.lock exports" in done.stderr


def test_every_locked_requirement_carries_hashes() -> None:
    for name in ("runtime.txt", "redis.txt", "dev.txt"):
        lines = (ROOT / "requirements" / name).read_text().splitlines()
        requirements = [i for i, line in enumerate(lines) if line[:1].isalnum()]
        assert requirements, name
        for i in requirements:
            assert "==" in lines[i], lines[i]
            assert lines[i + 1].strip().startswith("--hash=sha256:"), lines[i]


def test_the_runtime_set_is_the_four_packages_plus_pyjwt_and_what_they_need() -> None:
    lines = (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
    names = {line.split("==")[0] for line in lines if line[:1].isalnum() and "os_name == 'nt'" not in line}
    direct = {"trio", "h11", "wsproto", "msgspec", "pyjwt"}
    assert direct <= names
    # trio's own dependencies, and setuptools to build callbox itself without build isolation
    assert names - direct == {"attrs", "idna", "outcome", "sniffio", "sortedcontainers", "setuptools"}


def test_ci_and_the_readme_install_from_the_lock() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "--require-hashes -r requirements/dev.txt" in ci
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "--require-hashes -r requirements/runtime.txt" in first_block
    assert "--no-build-isolation" in first_block
    # A node of several: the redis extra's client, locked too.
    assert "--require-hashes -r requirements/redis.txt" in readme
