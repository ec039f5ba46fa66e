"""Prometheus side of the tests: promtool, a free loopback port, a scrape, a parse.

promtool comes from Debian's ``prometheus`` package (scripts/setup.sh puts the one
binary beside the virtualenv's python); a missing promtool fails the test that
needs it, loudly, rather than skipping it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"


def promtool() -> str:
    for cand in (Path(sys.executable).parent / "promtool", REPO / ".venv" / "bin" / "promtool"):
        if cand.exists():
            return str(cand)
    found = shutil.which("promtool")
    assert found, "promtool not found: run ./scripts/setup.sh --test"
    return found


def run_promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of an exposition."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        if ln.startswith("#") or not ln:
            continue
        m = SAMPLE.match(ln)
        assert m, f"bad exposition line: {ln!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def families(text: str) -> set[str]:
    """Every metric name a scrape can be queried by (histograms: _bucket, _sum, _count too)."""
    return {k.split("{", 1)[0] for k in samples(text)}
