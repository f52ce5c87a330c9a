"""The API reference (issue 15): pdoc builds it from the public modules' docstrings, and every link in it
leads somewhere, checked without a network (scripts/api_docs.py, which these tests import)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from _paths import ROOT


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["api_docs"] = module
    spec.loader.exec_module(module)
    return module


api_docs = _load_script()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api")
    warnings = api_docs.build(out)
    assert warnings == [], warnings  # an annotation pdoc could not resolve shows as a bare string
    return out


def test_the_reference_has_no_broken_link(reference: Path) -> None:
    links = api_docs.check_links(reference)
    assert links.broken == []
    # The ways out, listed (CI has no network to check them): pdoc's own logo, and the admin UI's
    # hosted page that callbox.admin's docs point operators to.
    assert links.external == ["https://admin.socket.io", "https://pdoc.dev"]


def test_the_index_lists_every_public_module(reference: Path) -> None:
    index = (reference / "index.html").read_text()
    for module in api_docs.MODULES:
        page = Path(*module.split(".")).with_suffix(".html")
        assert (reference / page).is_file()
        assert f'href="{page.as_posix()}"' in index
    # private modules get no page
    assert not [p for p in reference.rglob("*.html") if any(part.startswith("_") for part in p.parts[-2:])]


@pytest.mark.parametrize("module", api_docs.MODULES)
def test_every_name_in_all_has_its_entry(reference: Path, module: str) -> None:
    page = api_docs._Page()
    page.feed((reference / Path(*module.split(".")).with_suffix(".html")).read_text())
    names = [name for name in importlib.import_module(module).__all__ if not name.startswith("__")]
    assert [name for name in names if name not in page.anchors] == []


def test_a_broken_internal_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<meta http-equiv="refresh" content="0; url=./sub/a.html">'
        '<a href="sub/a.html#here">ok</a> <a href="sub/a.html#gone">no anchor</a>'
        '<a href="missing.html">no file</a> <a href="#top" id="top">self</a> <a href="#nowhere">no anchor here</a>'
        '<img src="data:image/png;base64,AAAA"> <a href="https://example.org/x">out</a>'
        '<a href="../outside.html">out of the reference</a> <script src="sub/s.js"></script>'
    )
    (tmp_path / "sub" / "a.html").write_text('<h1 id="here">a</h1><a href="../index.html#top">back</a>')
    (tmp_path / "sub" / "s.js").write_text("")
    (tmp_path.parent / "outside.html").write_text("")
    links = api_docs.check_links(tmp_path)
    assert links.broken == [
        "index.html: sub/a.html#gone (no id 'gone' in sub/a.html)",
        "index.html: missing.html (no such file)",
        "index.html: #nowhere (no id 'nowhere' in index.html)",
        "index.html: ../outside.html (outside the reference)",
    ]
    assert links.external == ["https://example.org/x"]


def test_every_public_name_has_a_docstring() -> None:
    gaps = api_docs.docstring_gaps()
    assert gaps.required == [], "\n".join(gaps.required)
