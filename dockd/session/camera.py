"""How a camera was lost, decided in one place.

A camera's I/O fails a moment before its undock is reported: a pull-out. A camera
whose I/O fails while it stays in its bay has failed where it sits (a dying card, a
filesystem its FUSE helper gave up on). And a session the daemon cancels on SIGTERM
was stopped, not undocked. The waits that tell these apart are ``Graces``, passed in
(a test shortens them as an argument, never by patching a module).
"""

from __future__ import annotations

import enum
import errno
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..device.events import CameraDocked


class Lost(enum.Enum):
    PULLED = "pulled"                 # out of its bay (or its device node is gone)
    FAILED_IN_BAY = "failed in bay"   # still in its bay, its I/O failing
    STOPPED = "stopped"               # dockd is stopping; the camera stays


@dataclass(frozen=True)
class Graces:
    # how long a session whose camera stopped answering waits for the source to report the
    # undock; a camera still in its bay after that has failed where it sits
    undock: float = 5.0
    # how long a read error waits for an undock report before the camera is asked whether
    # it still answers
    read_error: float = 1.0
    # files in a row that fail with a device error, the camera still answering, before the
    # camera itself is taken for failed: a bad sector spoils a file, a dead card all of them
    max_unreadable_in_a_row: int = 3


def how_lost(ev: CameraDocked, cancel: threading.Event, *, watched: bool, stopping: Callable[[], bool],
             graces: Graces) -> Lost:
    """After the camera's I/O failed. ``watched``: something reports undocks (the daemon);
    without it (``dockd ingest``) there is no undock to wait for, and the camera counts as
    pulled. Waits up to ``graces.undock`` for the report; ``stopping`` is asked after the
    wait (the daemon may begin to stop during it, and cancels every session when it does)."""
    pulled = (not watched or stopping() or cancel.wait(graces.undock)
              or (ev.device is not None and not os.path.exists(ev.device)))
    if stopping():
        return Lost.STOPPED
    return Lost.PULLED if pulled else Lost.FAILED_IN_BAY


def is_lost_after_read_error(ev: CameraDocked, cancel: threading.Event, root_dev: int | None,
                             graces: Graces, *, stopping: bool) -> bool:
    """After a read failed as a dead device's would: True if the camera is gone, False if
    this one file or directory is unreadable (a bad sector) while the camera still answers.
    (The caller counts such files in a row: past ``graces.max_unreadable_in_a_row`` the
    card itself has failed.)"""
    return bool(cancel.is_set() or stopping or cancel.wait(graces.read_error)
                or not camera_answers(ev, root_dev))


def camera_answers(ev: CameraDocked, root_dev: int | None) -> bool:
    """Still mounted at its mount point and listing its root, and its device (where it has
    one) still reads its first block past every cache. A FUSE helper answers listings from
    memory, so the device itself is asked."""
    if not is_mounted(ev.mount):
        return False
    try:
        if root_dev is not None and os.stat(ev.mount).st_dev != root_dev:
            return False            # an emptied mount point (lazily unmounted) is not the camera
    except OSError:
        return False
    return ev.device is None or device_reads(ev.device)


def device_reads(device: str) -> bool:
    """One 4 KiB read of the device's first block with O_DIRECT (the page cache cannot
    answer for a dead card). Where O_DIRECT or opening the device is refused (an
    unprivileged dockd), the node's presence is all we can ask."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0))
    except OSError as exc:
        return exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM) and os.path.exists(device)
    try:
        buf = mmap.mmap(-1, 4096)          # page-aligned, as O_DIRECT needs
        try:
            return os.preadv(fd, [buf], 0) > 0
        finally:
            buf.close()
    except OSError as exc:
        return exc.errno == errno.EINVAL   # O_DIRECT refused for this read: not a device error
    finally:
        os.close(fd)


def is_mounted(path: Path) -> bool:
    try:
        os.stat(path)
        os.listdir(path)
    except OSError:
        return False
    return True
