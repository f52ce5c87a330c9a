"""protocol/bad-input.md lists exactly the cases the tests check, each with a test that exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "protocol" / "bad-input.md"
MODULES = ["test_bad_input_http", "test_bad_input_ws", "test_bad_input_eio", "test_bad_input_sio",
           "test_bad_input_signalling"]


def rows() -> list[list[str]]:
    text = DOC.read_text().split("## The cases", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in text.splitlines() if re.match(r"^\| [A-Z]+-\d+ \|", line)]


def test_the_catalogue_lists_every_case_once() -> None:
    listed = [r[0] for r in rows()]
    assert len(listed) == len(set(listed)), "a case is listed twice"
    tested: list[str] = []
    for name in MODULES:
        tested += importlib.import_module(f"hardening.{name}").CASE_IDS
    assert sorted(listed) == sorted(tested)
    assert len(listed) >= 200


def test_every_case_names_a_test_that_exists() -> None:
    for row in rows():
        module, _, test = row[4].strip("`").partition("::")
        mod = importlib.import_module("hardening." + module.removesuffix(".py"))
        assert callable(getattr(mod, test.split("[", 1)[0], None)), row
