"""One state directory, one writing process.

``dockd run`` and ``dockd ingest`` each take an exclusive ``flock`` on
``STATE_DIR/dockd.lock`` before anything touches the spool, the ledger or the
control socket, and hold it for the life of the process (the kernel drops it
when the process dies, however it dies: no stale lock to clean up after a
crash or a power cut). A second writer is refused with one line naming the
state directory and the pid holding it. Readers (``status``, ``verify``,
``audit verify``) take no lock and keep working while the daemon runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import StateDirBusyError

LOCK_NAME = "dockd.lock"


class StateLock:
    """Held from ``acquire`` until ``release`` or the end of the process. The
    descriptor is close-on-exec: a hook or helper that outlives dockd cannot
    keep the state directory locked."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        """Raises ``StateDirBusyError`` (exit 2) if another process holds it."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:        # unwritable, read-only, or a symlink planted as the lock
            raise StateDirBusyError(f"cannot lock state directory {self.state_dir}: {self.path}: "
                                    f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirBusyError(f"cannot lock state directory {self.state_dir}: {exc.strerror}") \
                    from None
            who = f"pid {holder}" if holder else "another process"
            raise StateDirBusyError(
                f"state directory {self.state_dir} is in use by another dockd ({who}); "
                "stop it first, or give this one its own paths.state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)        # closing drops the flock; the file stays, harmless
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
