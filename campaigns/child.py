"""What a forked dockd process runs. Imported once by the forkserver.

``main(argv, log, kill_at_event, s3_min_part)``: stdout and stderr go to
``log``; with ``kill_at_event`` = N the process SIGKILLs itself as it is about
to log its N-th event (every catalogued event is a step boundary: spooled,
uploaded, verified, wiped...). With ``s3_min_part`` an ``ingest`` builds its S3
backend with that minimum part size (the test servers accept 64 KiB parts;
real S3, and so the configuration, insists on 5 MiB).
"""

from __future__ import annotations

import io
import os
import signal
import sys

import dockd.cli  # noqa: F401  (preloaded by the forkserver)
import dockd.daemon  # noqa: F401
import dockd.station  # noqa: F401
import dockd.log
import dockd.store.s3  # noqa: F401


def _arm(kill_at_event: int) -> None:
    if kill_at_event <= 0:
        return
    orig = dockd.log.emit
    count = [0]

    def emit(logger, event, **fields):  # noqa: ANN001, ANN202
        count[0] += 1
        if count[0] >= kill_at_event:
            os.kill(os.getpid(), signal.SIGKILL)
        orig(logger, event, **fields)

    dockd.log.emit = emit


def main(argv: list[str], log: str, kill_at_event: int = 0, s3_min_part: int = 0) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _arm(kill_at_event)
    if s3_min_part and "ingest" in argv:
        sys.exit(_ingest_s3(argv, s3_min_part))
    try:
        dockd.cli.main(argv)
    finally:
        sys.stdout.flush()


def _ingest_s3(argv: list[str], min_part: int) -> int:
    """``dockd ingest`` for an S3 store with small parts: the same calls as the CLI, the
    backend passed in through Station's seam."""
    from pathlib import Path

    from dockd import config as config_mod
    from dockd import log
    from dockd.device.events import CameraDocked
    from dockd.station import Station
    from dockd.errors import DockdError
    from dockd.store.s3 import S3Store

    cfg_path = Path(argv[argv.index("--config") + 1])
    serial = argv[argv.index("--serial") + 1]
    cam = Path(argv[-1])
    try:
        cfg = config_mod.load(cfg_path)
        log.configure(cfg.log.level, cfg.log.format)
        backend = S3Store.from_config(cfg.store, min_part_size=min_part)
        station = Station(cfg, backend=backend, patient=False)
        try:
            station.start()
            out = station.run_session(CameraDocked(serial=serial, profile="generic", mount=cam.resolve()))
        finally:
            station.close()
    except DockdError as exc:
        print(f"dockd: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{serial}: {out.found} found, {out.verified} verified, {out.wiped} wiped → {out.phase.value}")
    return 0 if out.ok else 1
