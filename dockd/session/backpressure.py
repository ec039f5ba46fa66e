"""Spool backpressure: spooling waits while the spool is full, but not for ever.

Waiting is worth it only while dockd's own uploads can free space. A disk filled by
other data, with no upload queued, running or waiting to retry, would be waited on
for ever: after ``hopeless_after`` seconds of that, ``SpoolExhaustedError``. The
timer is shared by every session, so a camera of many files is not waited on once
per file.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .. import log
from ..config import Config
from ..errors import DeviceGoneError, SpoolExhaustedError
from ..pipeline.spool import GroupCommit, Spool
from ..pipeline.upload import Uploader

WAIT_SECONDS = 2.0
HOPELESS_SECONDS = 10.0


class SpoolGate:
    def __init__(self, spool: Spool, uploader: Uploader, cfg: Callable[[], Config],
                 hopeless_after: float = HOPELESS_SECONDS) -> None:
        """``cfg``: the station's configuration now (its spool limits follow a reload)."""
        self.spool = spool
        self.uploader = uploader
        self.cfg = cfg
        self.hopeless_after = hopeless_after
        self._hopeless_since: float | None = None

    def is_full(self) -> bool:
        """Below the free-space watermark, or at the size cap: spooling waits for uploads."""
        floor, cap = self.cfg().spool.min_free, self.cfg().spool.max_size
        return bool((floor and self.spool.free_bytes() < floor)
                    or (cap and self.spool.used_bytes(max_age=1.0) >= cap))

    def wait(self, cancel: threading.Event, lg: Any, on_error: Callable[[str | None], None],
             group: GroupCommit | None = None, need: int = 0) -> None:
        """Wait while the spool is full (or, after a write that found the disk full, has less
        than ``need`` bytes above the watermark). A group of spooled files not yet committed
        is committed first: its uploads are what will free the space. ``on_error`` is told
        what the bay should show (None once relieved). Raises ``SpoolExhaustedError`` when
        nothing can free space, ``DeviceGoneError`` when ``cancel`` is set."""
        floor, cap = self.cfg().spool.min_free, self.cfg().spool.max_size
        if not floor and not cap:
            return
        warned = False
        while self.is_full() or (need and self.spool.free_bytes() < floor + need):
            if group is not None and group.pending:
                group.flush()
                continue
            if not warned:
                log.emit(lg, "spool.pressure", free=self.spool.free_bytes(), min_free=floor)
                on_error("spool full: waiting for uploads")
                warned = True
            if self.is_hopeless():
                raise self.exhausted(need)
            if cancel.wait(WAIT_SECONDS):
                raise DeviceGoneError("camera undocked while waiting for spool space")
        if warned:
            self.relieved()
            log.emit(lg, "spool.relieved", free=self.spool.free_bytes())
            on_error(None)

    def relieved(self) -> None:
        self._hopeless_since = None

    def is_hopeless(self) -> bool:
        """Short of space for ``hopeless_after`` seconds with no upload of dockd's (queued,
        running or waiting to retry) that could free any."""
        if self.uploader.busy_ids() or self.uploader.delayed_ids():
            self._hopeless_since = None
            return False
        now = time.monotonic()
        if self._hopeless_since is None:
            self._hopeless_since = now
        return now - self._hopeless_since >= self.hopeless_after

    def exhausted(self, need: int) -> SpoolExhaustedError:
        floor, cap = self.cfg().spool.min_free, self.cfg().spool.max_size
        free = self.spool.free_bytes()
        if floor and free < floor + need:
            why = (f"the spool's disk ({self.spool.root}) has {free} bytes free, below spool.min_free "
                   f"({floor})" + (f" plus this recording's {need}" if need else ""))
        elif cap and self.spool.used_bytes() >= cap:
            why = f"the spool ({self.spool.root}) is at spool.max_size ({cap})"
        else:
            why = f"the spool's disk ({self.spool.root}) refuses writes (no space left), {free} bytes free"
        return SpoolExhaustedError(f"spool full: {why}, and dockd holds nothing there to upload; "
                                   "free space on that disk or lower spool.min_free")
