"""The spool stage alone over many files: each → SHA-256 + age → fsynced spool file.

The same spooling as a dock session (``GroupCommit`` over ``Spool``: small files
share one flush), for a whole camera in one process, so interpreter start-up
is paid once, as in ``dockd ingest``.

usage: python -m bench.stage SPOOL_DIR FILE...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dockd.age import generate_identity
from dockd.pipeline.spool import GroupCommit, Spool


def main(argv: list[str]) -> int:
    spool_dir, files = Path(argv[0]), [Path(f) for f in argv[1:]]
    spool = Spool(spool_dir, [generate_identity().public()])
    group = GroupCommit(spool, lambda done: None)
    total = 0
    for i, src in enumerate(files, 1):
        st = os.stat(src)
        group.spool(src, i, st.st_size, st.st_mtime_ns)
        total += st.st_size
    group.flush()
    group.close()
    print(f"{len(files)} files, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
