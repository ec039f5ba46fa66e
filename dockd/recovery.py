"""Reconcile the ledger, the spool and the store after a (possibly unclean) stop.

Idempotent, and safe after a crash or a power cut at any point: sessions left live
are interrupted (their cameras are re-announced if still docked), half-written spool
files are discarded, every recording with a spool copy is queued for upload again
(it verifies at the store, or goes back to ``found``), a verified recording's
leftover copy is removed, and a spool file nothing accounts for is kept.
"""

from __future__ import annotations

from typing import Any

from . import log
from .errors import DockdError
from .ledger import Ledger
from .model import RecState
from .pipeline.spool import Spool
from .pipeline.upload import Uploader


def reconcile(ledger: Ledger, spool: Spool, uploader: Uploader, lg: Any) -> dict[str, int]:
    """Returns what was done, also logged as ``daemon.recovered``. Queues uploads; does not
    start the pool."""
    partials = spool.discard_partials()
    interrupted = ledger.recover_sessions()
    resumed = 0
    known: set[int] = set()
    for rec in ledger.recordings(states=[RecState.SPOOLED, RecState.UPLOADED, RecState.FAILED,
                                         RecState.VERIFIED, RecState.FOUND]):
        known.add(rec.id)
        if rec.state == RecState.VERIFIED:
            if spool.path_for(rec.id).exists():
                spool.remove(rec.id)           # crash between commit and cleanup
        elif rec.spool_path:
            uploader.submit(rec)               # verifies at the store or goes back to found
            resumed += 1
    orphans = 0
    for p in spool.root.glob("*.age"):
        try:
            rid = int(p.stem)
        except ValueError:
            continue
        if rid in known:
            continue
        try:
            ledger.get(rid)
        except DockdError:
            continue       # never delete what we cannot account for
        # renamed but never committed (the camera still has it), or a wiped recording's copy
        # (proven at the store before it was wiped) that a crash between commit and cleanup,
        # or a power cut undoing the unlink, left
        p.unlink()
        orphans += 1
    summary = {"sessions_interrupted": interrupted, "resumed": resumed,
               "partials_discarded": partials, "orphans": orphans}
    log.emit(lg, "daemon.recovered", **summary)
    return summary
