"""What a camera file holds, beyond its identity: one place for these facts.

A file's identity (serial, path, size, mtime) is a hint, not a proof of content:
a camera whose clock reset and whose file counter restarted writes a different
clip under the same name, size and mtime, and a clip can be rewritten in place
with its mtime restored. Before a wipe deletes a file on the strength of a copy,
its content is checked against that copy:

- a file read in this session (spooled now) has a **sample** taken as it was
  read: the SHA-256 of its head and tail blocks, where MP4 and MOV keep their
  index. The wipe reads those blocks again and compares (``Sample.matches``);
- a file whose copy was made at an earlier dock is **re-read and re-hashed in
  full** (``rehash``) before anything else happens to it, which also takes its
  sample for the wipe. A mismatch means the camera holds a different
  recording under the old identity.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Callable

from ..errors import GONE_ERRNOS, DeviceGoneError, FileChangedError, SourceError

# bytes at each end of a file: MP4/MOV keep their index (moov) at one end, and a
# rewrite that restores size and mtime must leave both ends as they were to pass
SAMPLE_BYTES = 256 << 10
_READ = 1 << 20


def sample_ranges(size: int) -> tuple[tuple[int, int], ...]:
    """The (offset, length) ranges a sample covers: the head, and the tail past it."""
    head = min(SAMPLE_BYTES, size)
    tail_start = max(head, size - SAMPLE_BYTES)
    return ((0, head), (tail_start, size - tail_start)) if size > head else ((0, head),)


@dataclass(frozen=True)
class Sample:
    """The SHA-256 of a file's sampled ranges, at a known size."""

    size: int
    digest: str

    def matches(self, fd: int) -> bool:
        """True if the open file's sampled ranges still hash to this sample. Raises
        OSError as the reads do (the caller knows a dead camera from a bad file)."""
        h = hashlib.sha256()
        for off, n in sample_ranges(self.size):
            got = 0
            while got < n:
                chunk = os.pread(fd, min(_READ, n - got), off + got)
                if not chunk:
                    return False        # shorter than it was
                h.update(chunk)
                got += len(chunk)
        return h.hexdigest() == self.digest


class Sampler:
    """Takes a sample from a file's bytes as they stream past, in order, in any block
    sizes: what is hashed for the copy is what is sampled."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ranges = sample_ranges(size)
        self._h = hashlib.sha256()
        self._off = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        start, end = self._off, self._off + len(data)
        for off, n in self._ranges:
            lo, hi = max(start, off), min(end, off + n)
            if lo < hi:
                self._h.update(memoryview(data)[lo - start:hi - start])
        self._off = end

    def sample(self) -> Sample:
        return Sample(self.size, self._h.hexdigest())


def rehash(path: bytes | str, size: int, mtime_ns: int,
           on_bytes: Callable[[int], None] | None = None) -> tuple[str, Sample]:
    """Read a camera file whole: (its SHA-256, its sample). Never follows a symlink.
    Raises ``FileChangedError`` if it is not the (size, mtime) expected or changes
    while read, and as ``read_error`` says for read errors."""
    fd = open_scanned(path, size, mtime_ns)
    try:
        sha, sampler, done = hashlib.sha256(), Sampler(size), 0
        while True:
            try:
                chunk = os.read(fd, _READ)
            except OSError as exc:
                raise read_error(exc, path) from exc
            if not chunk:
                break
            sha.update(chunk)
            sampler.feed(chunk)
            done += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        end = os.fstat(fd)
        if done != size or end.st_size != size or end.st_mtime_ns != mtime_ns:
            raise FileChangedError(f"{os.fsdecode(path)}: changed while being read")
        return sha.hexdigest(), sampler.sample()
    finally:
        os.close(fd)


def open_scanned(path: bytes | str | os.PathLike[str], size: int, mtime_ns: int) -> int:
    """Open a camera file the scan saw as (``size``, ``mtime_ns``), for reading, without
    following a symlink or blocking on a FIFO. Raises ``SourceError`` for a file that is not
    a regular file, ``FileChangedError`` for one that is no longer what the scan saw, and as
    ``read_error`` says if it cannot be opened. The caller closes the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise read_error(exc, path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{os.fsdecode(path)}: not a regular file")
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            raise FileChangedError(f"{os.fsdecode(path)}: changed since it was scanned")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_error(exc: OSError, source: bytes | str | os.PathLike[str]) -> SourceError:
    """A camera file's read error: ``DeviceGoneError`` where the camera may be gone,
    else ``SourceError`` (this file only)."""
    name = os.fsdecode(source)
    if exc.errno in GONE_ERRNOS:
        return DeviceGoneError(f"{name}: {exc.strerror} (camera gone?)")
    if exc.errno == errno.ELOOP:
        return SourceError(f"{name}: is a symlink (never followed)")
    return SourceError(f"{name}: {exc.strerror}")
