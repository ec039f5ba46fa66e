"""The throughput bench (bench/run.py) in its tiniest mode, so it cannot rot.

Not a measurement: a few MiB of data, one round, no S3 server. It runs every
part (floor, peers, dockd ingest, spool stage, several cameras, small files,
memory) end to end and checks the report is written.
"""

from __future__ import annotations

import os
import shutil
import signal
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
    # the bench kills any one command after 40 s in --tiny mode and cleans up its mounts;
    # its own session, so that nothing it started can outlive the test
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--tiny", "--runs", "1", "--no-s3", "--work-tree",
         "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
    assert proc.returncode == 0, stdout[-4000:]
    text = (out / "RESULTS.md").read_text()
    for row in ("| cat |", "| cp + sync |", "| age alone (no hashes, reference) |", "| sha256sum + age |", "rclone move crypt → local",
                "dockd ingest → file://", "dockd spool stage", "## Several cameras at once",
                "## Small files", "## Memory", "## Targets"):
        assert row in text, row
    assert (out / "results.json").exists()
