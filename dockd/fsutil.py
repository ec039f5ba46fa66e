"""Durable-write helpers shared by the spool and the file:// store: one place."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from pathlib import Path
from typing import Sequence

WRITEBACK_WINDOW = 32 << 20           # start writeback every 32 MiB, not all at fsync


def fsync_path(path: Path | str | bytes, flags: int = 0) -> None:
    """fsync a file (or, with ``os.O_DIRECTORY``, a directory) by its path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str | bytes) -> None:
    fsync_path(path, os.O_DIRECTORY)


def make_dirs(path: Path | str) -> None:
    """Create ``path`` and its missing parents, and make every name on the way
    durable: the parent of each directory is fsynced, up to the root of its
    filesystem. A directory's fsync makes its entries durable, not its own name:
    a directory whose name is still only in the page cache is lost at a power
    cut with everything put in it since, however well each of those was synced.
    A directory that exists already is not proof: an earlier process may have
    been killed between its mkdir and the fsync. One fsync per level; call it
    once per directory and process. A parent that cannot be fsynced for want of
    rights, or on a read-only filesystem, is one dockd cannot have changed."""
    d = Path(os.path.abspath(path))
    d.mkdir(parents=True, exist_ok=True)
    while d != d.parent and not os.path.ismount(d):
        try:
            fsync_dir(d.parent)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL):
                raise
        d = d.parent


_libc: ctypes.CDLL | None = None


def syncfs(path: Path | str) -> None:
    """Flush every dirty page and inode of the filesystem holding ``path``, with one
    journal commit: how a group of files is made durable together. Raises
    ``OSError`` (writeback errors included, Linux ≥ 5.8); falls back to ``sync()``
    where the C library has no ``syncfs``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fn = _c("syncfs")
        if fn is None:
            os.sync()
        elif fn(fd) != 0:
            err = ctypes.get_errno() or errno.EIO
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _c(name: str):  # noqa: ANN202 - a libc function, or None
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(_libc, "sync_file_range", None)
        if fn is not None:      # once: off_t arguments must not be passed as C ints
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return getattr(_libc, name, None)


def check_written(fd: int) -> None:
    """Raise the error, if any, that writing back the data written through ``fd``
    met. ``fd`` must have been open since before those writes.

    Meant for after a ``syncfs``, which has made the data durable already: this
    waits for writeback (none is left) and reports what it recorded against
    this open file, with no I/O of its own (``sync_file_range``, about a
    microsecond, against ~50 µs for an fsync with nothing to flush). A syncfs
    reports a writeback error only to the first caller to look, so another
    thread's or process's syncfs may have taken it; the file's own report stays
    for each fd opened before the error. Falls back to ``fsync``."""
    fn = _c("sync_file_range")
    if fn is None:
        os.fsync(fd)
        return
    # SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    if fn(fd, 0, 0, 1 | 2 | 4) != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, os.strerror(err))


FUSE_SUPER_MAGIC = 0x65735546


def syncfs_flushes(fd: int) -> bool:
    """Whether a ``syncfs`` of the filesystem holding ``fd`` reaches its storage. Not on
    FUSE (exfat-fuse, sshfs, a FUSE NAS client): the kernel sends its server no
    ``FUSE_SYNCFS`` (only virtiofs gets one), so a syncfs there flushes nothing the
    server keeps; only each file's fsync reaches it."""
    fn = _c("fstatfs")
    if fn is None:
        return True
    buf = ctypes.create_string_buffer(256)         # struct statfs; f_type is its first word
    if fn(fd, buf) != 0:
        return True
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF != FUSE_SUPER_MAGIC


def make_durable(root: Path | str, fds: Sequence[int]) -> None:
    """Make what was written through ``fds`` (files on ``root``'s filesystem, each
    open since before its writes) durable, and raise any error writing it met. One
    file alone: its fsync. Several: one ``syncfs`` (one journal commit for all),
    then each file's own errors (``check_written``), which another caller's syncfs
    may have taken. On a filesystem where a syncfs flushes nothing (FUSE), each
    file's own fsync."""
    if len(fds) == 1 or not syncfs_flushes(fds[0]):
        for fd in fds:
            os.fsync(fd)
        return
    syncfs(root)
    for fd in fds:
        check_written(fd)


class HashingWriter:
    """Writes to an fd, hashing (SHA-256) and counting what it writes.

    Every ``WRITEBACK_WINDOW`` bytes it asks the kernel to start writing the
    window back (``POSIX_FADV_DONTNEED`` on dirty pages initiates writeback
    without waiting), so the disk works while the caller produces the next
    window and the final fsync has little left to do. It also keeps data we
    will not read again from crowding the page cache.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()
        self.size = 0
        self._flushed = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)
        if self.size - self._flushed >= WRITEBACK_WINDOW:
            try:
                os.posix_fadvise(self.fd, self._flushed, self.size - self._flushed, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            self._flushed = self.size
        return len(data)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def close_quietly(fd: int) -> None:
    """Close an fd we only read from or fsynced. On a camera that was pulled out
    even close() fails (ENOTCONN from FUSE); there is nothing left to lose, and
    that error must not replace the one that says the camera is gone."""
    try:
        os.close(fd)
    except OSError:
        pass
