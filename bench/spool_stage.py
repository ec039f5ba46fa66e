"""Spool stage alone: one file → SHA-256 + age → fsynced spool file. For benchmarks.

usage: python bench/spool_stage.py SOURCE SPOOL_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dockd.age import generate_identity
from dockd.pipeline.spool import Spool


def main() -> None:
    src, spool_dir = Path(sys.argv[1]), Path(sys.argv[2])
    st = os.stat(src)
    spool = Spool(spool_dir, [generate_identity().public()])
    out = spool.spool(src, 1, st.st_size, st.st_mtime_ns)
    print(f"{st.st_size} bytes in {out.seconds:.3f}s sha256 {out.plain_sha256[:16]}")
    out.path.unlink()


if __name__ == "__main__":
    main()
