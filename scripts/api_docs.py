"""Build callbox's API reference with pdoc, check its links, and list public names without a docstring.

    .venv/bin/python scripts/api_docs.py [OUT]       build into OUT (default build/api/), then check its links
    .venv/bin/python scripts/api_docs.py --gaps      list the public names that have no docstring

The reference covers the public modules (MODULES) and, in each, only the names in its ``__all__``; open
OUT/index.html. A link is checked without a network: every relative href or src must name a file in OUT
(and its #anchor an id in that file); external links are listed, never fetched. Exit status 1 when a link
is broken (or, with --gaps, when a name lacks a docstring). tests/test_api_docs.py runs the same functions.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from functools import cached_property
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import pdoc
import pdoc.doc
import pdoc.render

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "api"

# The public modules: the package and the signalling app. Everything else is reached through their
# __all__ (callbox.server.api's classes are documented as callbox.Socket, ...) or is internal.
MODULES = ("callbox", "callbox.signalling", "callbox.admin")

# pdoc's index redirects to the root module when every module sits under one, and callbox's page lists
# no submodules (its __all__ names none), so callbox.signalling would be reached only by searching.
# These two overrides make index.html the module list and put a link to it on every page.
_TEMPLATES = {
    "index.html.jinja2": '{% set root_module_name = false %}{% extends "default/index.html.jinja2" %}\n',
    "module.html.jinja2": """{% extends "default/module.html.jinja2" %}
{% block module_list_link %}
    <a class="pdoc-button module-list-button" href="{{ "../" * module.modulename.count(".") }}index.html">
        {% include "resources/box-arrow-in-left.svg" %}
        &nbsp;Module Index
    </a>
{% endblock %}
""",
}


def build(out: Path = DEFAULT_OUT, modules: Sequence[str] = MODULES) -> list[str]:
    """Write the reference into ``out``; return the warnings pdoc gave (an annotation it could not
    resolve, a module it could not import)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as templates, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, text in _TEMPLATES.items():
            (Path(templates) / name).write_text(text)
        # The docstrings are reST (``code``, :class:`Name`), as in the standard library.
        pdoc.render.configure(docformat="restructuredtext", template_directory=Path(templates))
        try:
            pdoc.pdoc(*modules, output_directory=out)
        finally:
            pdoc.render.configure()  # the next caller in this process gets pdoc's defaults back
    return [str(w.message) for w in caught]


class _Page(HTMLParser):
    """The links (href, src) and the anchors (id, a name) of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in ("href", "src"):
                self.links.append(value)
            elif key == "id" or (tag == "a" and key == "name"):
                self.anchors.add(value)
            elif tag == "meta" and key == "content" and "url=" in value.lower():
                # <meta http-equiv="refresh" content="0; url=...">: a link too
                self.links.append(value[value.lower().index("url=") + 4 :].strip())


class Links(NamedTuple):
    broken: list[str]  # "page: link (why)"
    external: list[str]  # every distinct link out of the reference, sorted


def check_links(out: Path = DEFAULT_OUT) -> Links:
    """Check every href and src of every HTML page under ``out``, without a network."""
    out = out.resolve()
    pages: dict[Path, _Page] = {}
    for path in sorted(out.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        page.close()
        pages[path] = page
    broken: list[str] = []
    external: set[str] = set()
    for path, page in pages.items():
        where = path.relative_to(out)
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme in ("data", "javascript", "about"):
                continue  # inline content, not a place
            if parts.scheme or parts.netloc:
                external.add(link)
                continue
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if parts.path.endswith("/"):
                target = target / "index.html"
            if not target.is_relative_to(out):
                broken.append(f"{where}: {link} (outside the reference)")
            elif not target.is_file():
                broken.append(f"{where}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                anchors = pages[target].anchors if target in pages else set()
                if unquote(parts.fragment) not in anchors:
                    broken.append(f"{where}: {link} (no id {unquote(parts.fragment)!r} in {target.relative_to(out)})")
    return Links(broken, sorted(external))


class Gaps(NamedTuple):
    # what a user calls or reads by name: module members in __all__, classes, methods, properties
    required: list[str]
    # data attributes (struct and dataclass fields, instance attributes, enum members, class constants):
    # pdoc shows their name and type; a docstring is a string literal on the line after them
    attributes: list[str]


def _is_property(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in vars(klass):
            return isinstance(vars(klass)[name], (property, cached_property))
    return False


def _class_gaps(cls_doc: pdoc.doc.Class, gaps: Gaps) -> None:
    for name, member in cls_doc.members.items():
        if name.startswith("_") or not member.taken_from[0].startswith("callbox"):
            continue  # private, or inherited from outside (object, Enum, Exception, msgspec.Struct)
        label = f"{cls_doc.fullname}.{name}"
        if member.docstring:
            pass
        elif isinstance(member, (pdoc.doc.Function, pdoc.doc.Class)) or _is_property(cls_doc.obj, name):
            gaps.required.append(label)
        else:
            gaps.attributes.append(label)
        if isinstance(member, pdoc.doc.Class):
            _class_gaps(member, gaps)


def docstring_gaps(modules: Iterable[str] = MODULES) -> Gaps:
    """The public names without a docstring, as pdoc sees them (an override with none shows its base's),
    named as the reference names them: ``callbox.Socket.emit``."""
    gaps = Gaps([], [])
    for modname in modules:
        module = importlib.import_module(modname)
        doc = pdoc.doc.Module(module)
        if not doc.docstring:
            gaps.required.append(modname)
        for name in module.__all__:
            if name.startswith("__"):
                continue  # __version__
            member = doc.members.get(name)
            if member is None:
                gaps.required.append(f"{modname}.{name} (in __all__, not in the reference)")
                continue
            if not member.docstring:
                is_code = isinstance(member, (pdoc.doc.Function, pdoc.doc.Class)) or inspect.ismodule(member.obj)
                (gaps.required if is_code else gaps.attributes).append(f"{modname}.{name}")
            if isinstance(member, pdoc.doc.Class):
                _class_gaps(member, gaps)
    return gaps


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--gaps"]:
        gaps = docstring_gaps()
        print(f"{len(gaps.required)} public names without a docstring (functions, classes, methods, properties):")
        print("".join(f"  {name}\n" for name in gaps.required), end="")
        print(f"{len(gaps.attributes)} attributes without one (fields, instance attributes, enum members, constants):")
        print("".join(f"  {name}\n" for name in gaps.attributes), end="")
        return 1 if gaps.required else 0
    out = Path(argv[0]) if argv else DEFAULT_OUT
    for warning in build(out):
        print(f"pdoc: {warning}", file=sys.stderr)
    links = check_links(out)
    for link in links.external:
        print(f"external (not fetched): {link}")
    for line in links.broken:
        print(f"broken: {line}", file=sys.stderr)
    print(f"{out / 'index.html'}: {len(links.broken)} broken links, {len(links.external)} external")
    return 1 if links.broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
