"""The throughput bench (bench/run.py) in its tiniest mode, so it cannot rot.

Not a measurement: a few MiB of data, one round, no S3 server. It runs every
part (floor, peers, dockd ingest, spool stage, several cameras, small files,
memory) end to end and checks the report is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_tiny_run(tmp_path: Path) -> None:
    for tool in ("rclone", "age", "sha256sum"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--runs", "1", "--no-s3", "--work-tree",
         "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=110,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (out / "RESULTS.md").read_text()
    for row in ("| cat |", "| cp + sync |", "| sha256sum + age |", "rclone move crypt → local",
                "dockd ingest → file://", "dockd spool stage", "## Several cameras at once",
                "## Small files", "## Memory", "## Targets"):
        assert row in text, row
    assert (out / "results.json").exists()
