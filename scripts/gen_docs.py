"""Regenerate the README's event catalogue from dockd/log.py (one place for the fact)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dockd.log import CATALOGUE  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- events:begin (generated from dockd/log.py by scripts/gen_docs.py) -->"
END = "<!-- events:end -->"


def table() -> str:
    rows = ["| event | level | meaning | fields |", "|---|---|---|---|"]
    for name in sorted(CATALOGUE):
        level, meaning, fields = CATALOGUE[name]
        rows.append(f"| `{name}` | {level} | {meaning} | {fields} |")
    return "\n".join(rows)


def render(text: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _m: f"{BEGIN}\n{table()}\n{END}", text)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
