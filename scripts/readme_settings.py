"""Rewrite README.md's settings table from callbox.config.SETTINGS (run after adding a setting)."""

import pathlib

from callbox.config import SETTINGS, Config

UNITS = {"s": " s", "bytes": " bytes", "/min": " per minute", "/s": " per second"}
HEAD = "| flag / environment | default | meaning |\n|---|---|---|\n"

defaults = Config()
rows = []
for s in SETTINGS:
    if s.command_default:
        default = s.command_default
    else:
        default = f"`{s.shown(getattr(defaults, s.name))}`{UNITS.get(s.unit, '')}"
    rows.append(f"| `{s.flag}` / `{s.env}` | {default} | {s.help} |")
readme = pathlib.Path(__file__).parents[1] / "README.md"
text = readme.read_text()
start = text.index(HEAD) + len(HEAD)
end = text.index("\n\n", start)
readme.write_text(text[:start] + "\n".join(rows) + text[end:])
