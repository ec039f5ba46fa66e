"""docs/STATUS.md carries the event catalogue generated from ``log.CATALOGUE``.

Run ``python tests/test_status_docs.py`` to regenerate the block after adding
an event; the test fails while the doc and the catalogue differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dockd.log import CATALOGUE  # noqa: E402

DOC = REPO / "docs" / "STATUS.md"
BEGIN, END = "<!-- catalogue:begin (generated from dockd/log.py) -->", "<!-- catalogue:end -->"
SCHEMA = REPO / "docs" / "status.schema.json"


def catalogue_block() -> str:
    rows = ["| event (msgid) | level | fields | meaning |", "|---|---|---|---|"]
    for name in sorted(CATALOGUE):
        level, meaning, fields = CATALOGUE[name]
        rows.append(f"| `{name}` | {level} | {fields or '-'} | {meaning.replace('|', '/')} |")
    return "\n".join([BEGIN, *rows, END])


def _doc_block(text: str) -> str:
    return text[text.index(BEGIN):text.index(END) + len(END)]


def test_doc_lists_exactly_the_catalogue():
    assert _doc_block(DOC.read_text()) == catalogue_block(), \
        "docs/STATUS.md is stale: run python tests/test_status_docs.py"


def test_doc_describes_every_schema_field():
    text = DOC.read_text()
    schema = json.loads(SCHEMA.read_text())

    def walk(s: dict, prefix: str) -> list[str]:
        out = []
        for k, v in s.get("properties", {}).items():
            path = f"{prefix}.{k}" if prefix else k
            out.append(path)
            out += walk(v.get("items", v), path + ("[]" if "items" in v else ""))
        return out

    missing = [p for p in walk(schema, "") if f"`{p}`" not in text]
    assert not missing, f"undocumented fields in docs/STATUS.md: {missing}"


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(text.replace(_doc_block(text), catalogue_block()))
    print(f"updated {DOC}")
