"""Spool: one read of each camera file feeds SHA-256 and age encryption.

The ciphertext goes to a temp file in the spool, is fsynced, renamed into
place and the directory fsynced, so a spooled recording survives a power cut.
Small files are made durable in groups (``GroupCommit``): written without a
flush each, then one ``syncfs``, the renames and one directory fsync for the
group. The rule is the same for both: a file gets its final name only once
its bytes are on disk, and the ledger says ``spooled`` only after that.
Memory is one read buffer whatever the file size. The source is opened
without following symlinks and re-checked (size, mtime) after the last read,
so a file that grows or changes is never spooled as if it were whole.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ..age import Encryptor
from ..age.stream import CHUNK_SIZE, TAG_SIZE
from ..errors import DeviceGoneError, FileChangedError, SpoolError, SpoolFullError
from ..fsutil import HashingWriter, close_quietly, fsync_dir, make_dirs, make_durable
from .content import Sample, Sampler, open_scanned, read_error


BLOCK = 1 << 20                      # 16 age chunks per read: few syscalls, small memory
PARTIAL_DIR = "partial"
# Group commit: files up to GROUP_FILE_MAX share one flush, up to GROUP_FILES files
# or GROUP_BYTES bytes a group. A flush costs a journal commit (milliseconds on
# most disks): paid once per 64 KiB photo it would cost more than the copy.
GROUP_FILE_MAX = 4 << 20
GROUP_FILES = 128
GROUP_BYTES = 64 << 20


@dataclass(frozen=True)
class Spooled:
    path: Path
    plain_sha256: str
    cipher_sha256: str
    cipher_size: int
    seconds: float
    rec_id: int = 0
    durable: bool = True            # False: still in partial/, waiting for Spool.commit
    fd: int = -1                    # durable=False: the file, open since before its writes
    sample: Sample | None = None    # the plaintext's head and tail, for the wipe (content.py)


class Spool:
    """The durable local spool directory."""

    def __init__(self, root: Path, recipients: Sequence[object], min_free: int = 0) -> None:
        self.root = Path(root)
        self.recipients = list(recipients)
        self.min_free = min_free
        self._used, self._used_at, self._added = 0, float("-inf"), 0
        self._used_lock = threading.Lock()
        make_dirs(self.root / PARTIAL_DIR)      # the spool's own name too: a power cut takes it all else

    def path_for(self, rec_id: int) -> Path:
        return self.root / f"{rec_id}.age"

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def used_bytes(self, max_age: float = 0.0) -> int:
        """Bytes of spooled files, committed or waiting in a group. ``max_age``: a figure
        counted that many seconds ago will do (checked before every file, a full count
        would make a camera of n photos cost n² stat calls)."""
        now = time.monotonic()
        with self._used_lock:
            if max_age and now - self._used_at <= max_age:
                return self._used + self._added      # never less than the truth: a cap holds
            added_before = self._added
        total = 0
        for p in [*self.root.glob("*.age"), *(self.root / PARTIAL_DIR).glob("*.age")]:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        with self._used_lock:
            self._used, self._used_at = total, now
            self._added -= added_before              # now in the count; later ones are not
        return total

    def discard_partials(self) -> int:
        """Remove half-written files left by a crash or an undock. Idempotent."""
        n = 0
        for p in (self.root / PARTIAL_DIR).iterdir():
            p.unlink(missing_ok=True)
            n += 1
        return n

    def remove(self, rec_id: int) -> None:
        """Drop a verified recording's spool copy. Not fsynced: if a power cut brings
        it back, the next start finds it verified and removes it again."""
        self.path_for(rec_id).unlink(missing_ok=True)

    def spool(
        self,
        source: Path,
        rec_id: int,
        size: int,
        mtime_ns: int,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        durable: bool = True,
        recipients: Sequence[object] | None = None,
    ) -> Spooled:
        """Encrypt ``source`` into the spool as ``<rec_id>.age``.

        Raises ``FileChangedError`` if the file is not the (size, mtime) the
        scan saw, ``DeviceGoneError`` if the camera goes away (or ``cancel`` is
        set), ``SourceError`` for other read errors, ``SpoolFullError`` when
        the spool disk is full. Never leaves a partial file behind.
        ``durable=False`` stops short of the flush: the complete file stays in
        ``partial/`` until ``commit`` (a ``Spooled`` with ``durable=False``).
        ``recipients``: whom to encrypt to, if not the spool's own (a session keeps the
        recipients it started with across a reload).
        """
        t0 = time.monotonic()
        partial = self.root / PARTIAL_DIR / f"{rec_id}.age"
        src = open_scanned(source, size, mtime_ns)
        try:
            try:
                os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
            try:
                out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _spool_error(exc) from exc
            try:
                sink = HashingWriter(out)
                reader = _Reader(src, source, size, cancel,
                                 self.recipients if recipients is None else recipients)
                done = 0
                try:
                    for block, n in reader:
                        sink.write(memoryview(block.buf)[:block.n])
                        reader.recycle(block)
                        done += n
                        if progress and n:
                            progress(n)
                finally:
                    reader.close()
                end = os.fstat(src)
                if done != size or end.st_size != size or end.st_mtime_ns != mtime_ns:
                    raise FileChangedError(f"{source}: changed while being read")
                plain = reader.sha
            except OSError as exc:
                close_quietly(out)
                raise _spool_error(exc) from exc
            except BaseException:
                close_quietly(out)
                raise
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            close_quietly(src)
        with self._used_lock:
            self._added += sink.size
        # ``out`` stays open until the commit: opened before the writes, it is the one fd
        # sure to report their errors (see ``commit``)
        sp = Spooled(partial, plain.hexdigest(), sink.sha.hexdigest(), sink.size,
                     time.monotonic() - t0, rec_id, durable=False, fd=out, sample=reader.sampler.sample())
        return self.commit([sp])[0] if durable else sp      # one way to make a file durable

    @staticmethod
    def drop(group: Sequence[Spooled]) -> None:
        """Give up files spooled with ``durable=False``: closed and removed."""
        for sp in group:
            close_quietly(sp.fd)
            sp.path.unlink(missing_ok=True)

    def commit(self, group: Sequence[Spooled]) -> list[Spooled]:
        """Make files spooled with ``durable=False`` durable together: one ``syncfs``
        (their bytes, one journal commit), each file's write errors collected
        through its own fd (``check_written``: a syncfs reports an error only to
        the first caller to look), the renames into place, one directory fsync
        (the names). One file alone is fsynced instead of the whole disk. On
        failure nothing of the group keeps a final name it could lose: the
        partials are removed and ``SpoolError`` is raised. The fds are closed."""
        todo = list(group)
        if not todo:
            return []
        try:
            make_durable(self.root, [sp.fd for sp in todo])
            for sp in todo:
                os.replace(sp.path, self.path_for(sp.rec_id))
            fsync_dir(self.root)
        except OSError as exc:
            for sp in todo:
                sp.path.unlink(missing_ok=True)
                self.path_for(sp.rec_id).unlink(missing_ok=True)
            raise _spool_error(exc) from exc
        finally:
            for sp in todo:
                close_quietly(sp.fd)
        return [replace(sp, path=self.path_for(sp.rec_id), durable=True, fd=-1) for sp in todo]


class GroupCommit:
    """Spools files one after another; makes them durable behind the copying.

    ``spool`` takes the same arguments as ``Spool.spool`` and leaves each file
    complete but unflushed. Small files (up to ``GROUP_FILE_MAX``) are gathered
    into groups; a larger file is a group of its own (after the group before
    it). Each group is committed (``Spool.commit``) on a thread of its own, so
    the disk flushes one group while the next file is read: the camera is read
    continuously, as ``cp`` reads it. At most one group waits behind the one
    being committed, which bounds the bytes not yet durable.

    ``on_commit`` receives each committed group, in spool order, on the commit
    thread: the caller records them as spooled then, never earlier. A commit
    failure is raised by every later ``spool`` and by ``flush``, which also waits
    until everything handed over is committed. ``close`` drops the files not
    yet handed over (complete, but the caller is giving up: the next pass
    copies them again), lets the handed-over ones finish, and ends the thread.
    """

    def __init__(self, spool: Spool, on_commit: Callable[[list[Spooled]], None],
                 recipients: Sequence[object] | None = None) -> None:
        self.spool_ = spool
        self.on_commit = on_commit
        self.recipients = recipients
        self.pending: list[Spooled] = []
        self._bytes = 0
        self._queue: queue.Queue[list[Spooled] | None] = queue.Queue(maxsize=1)
        self._cv = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def spool(self, source: Path, rec_id: int, size: int, mtime_ns: int,
              cancel: threading.Event | None = None,
              progress: Callable[[int], None] | None = None) -> Spooled:
        self._raise_failure()
        sp = self.spool_.spool(source, rec_id, size, mtime_ns, cancel, progress, durable=False,
                               recipients=self.recipients)
        if size > GROUP_FILE_MAX:
            self._hand_over()
            self._submit([sp])
            return sp
        self.pending.append(sp)
        self._bytes += sp.cipher_size
        if len(self.pending) >= GROUP_FILES or self._bytes >= GROUP_BYTES:
            self._hand_over()
        return sp

    def flush(self) -> None:
        """Commit everything spooled so far; return once it is durable and recorded."""
        self._hand_over()
        self._wait_idle()
        self._raise_failure()

    def close(self) -> None:
        Spool.drop(self.pending)
        self.pending, self._bytes = [], 0
        self._wait_idle()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- the commit thread -------------------------------------------------------

    def _hand_over(self) -> None:
        group, self.pending, self._bytes = self.pending, [], 0
        if group:
            self._submit(group)

    def _submit(self, group: list[Spooled]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
            self._thread.start()
        with self._cv:
            self._inflight += 1
        self._queue.put(group)               # waits while a group is already queued

    def _run(self) -> None:
        while True:
            group = self._queue.get()
            if group is None:
                return
            try:
                if self._error is None:
                    self.on_commit(self.spool_.commit(group))
                else:                        # after a failure nothing commits out of order
                    Spool.drop(group)
            except BaseException as exc:  # handed to the caller's thread
                with self._cv:
                    self._error = self._error or exc
            finally:
                with self._cv:
                    self._inflight -= 1
                    self._cv.notify_all()

    def _wait_idle(self) -> None:
        with self._cv:
            while self._inflight:
                self._cv.wait()

    def _raise_failure(self) -> None:
        """Sticky: after a failed group every later call raises it, and nothing after it
        commits (the commit thread drops what follows)."""
        with self._cv:
            exc = self._error
        if exc is not None:
            raise exc


class _Sealed:
    """One block of ciphertext, in a buffer that is reused: the Encryptor's sink.

    It grows only when a block needs more room than it has (the header of the
    first block, with many recipients); otherwise sealing a block costs one
    copy of each chunk into memory that is already mapped."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self.n = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        end = self.n + size
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.n:end] = data
        self.n = end
        return size


class _Reader:
    """Reads the camera file and seals it on a thread of its own.

    For each block it reads, it hashes the plaintext and encrypts it (age)
    into a ``_Sealed`` buffer. The caller hashes and writes the ciphertext.
    SHA-256 and ChaCha20-Poly1305 both release the GIL, so the two threads use
    two cores, in one pass, and their work is about even (a read, a hash and
    the cipher here; a hash and a write there). A fixed pool of buffers bounds
    memory. Iterating yields ``(sealed, plaintext bytes)``; give each sealed
    block back with ``recycle``. Errors raised here surface in the caller's
    thread, in order. The last block carries the final chunk.
    """

    POOL = 3

    def __init__(self, fd: int, source: Path, size: int, cancel: threading.Event | None,
                 recipients: Sequence[object]) -> None:
        self.fd = fd
        self.source = source
        self.size = size
        self.cancel = cancel
        self.sha = hashlib.sha256()
        self.sampler = Sampler(size)
        self._done = 0
        # Buffers no larger than the file (one byte at least, to see it grow): a 64 KiB photo
        # must not pay for megabytes of freshly zeroed, page-faulted memory. A file that fits
        # in one buffer is read inline: a thread would only add its start-up to a single read.
        inline = size <= BLOCK
        self._plain = bytearray(max(1, min(BLOCK, size)))
        room = len(self._plain) + (len(self._plain) // CHUNK_SIZE + 2) * TAG_SIZE + CHUNK_SIZE
        self._free: queue.Queue[_Sealed] = queue.Queue()
        for _ in range(1 if inline else self.POOL):
            self._free.put(_Sealed(room))
        self._block = self._free.get_nowait()
        self._enc = Encryptor(self._block, recipients)     # its header opens the first block
        self._eof = False
        self._full: queue.Queue[tuple[_Sealed, int] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="spool-reader", daemon=True)
            self._thread.start()

    def _next_block(self) -> tuple[_Sealed, int] | None:
        """Read, hash and seal one block: ``(sealed, n)``, or None once the end was sealed."""
        if self._eof:
            return None
        if self.cancel is not None and self.cancel.is_set():
            raise DeviceGoneError(f"{self.source}: camera undocked during copy")
        n = self._read()
        if n:
            view = memoryview(self._plain)[:n]
            self.sha.update(view)
            self.sampler.feed(view)
            self._enc.write(view)
        # At the scanned size, look for the end now (a file that grew fails here), so the
        # final chunk goes out in this block rather than in one of its own.
        if not n or (self._done == self.size and not self._read()):
            self._enc.close()                # the final chunk
            self._eof = True
        return self._block, n

    def _read(self) -> int:
        try:
            n = os.readv(self.fd, [self._plain])
        except OSError as exc:
            raise read_error(exc, self.source) from exc
        self._done += n
        if self._done > self.size:
            raise FileChangedError(f"{self.source}: grew while being read")
        return n

    def _take(self) -> tuple[_Sealed, int] | None:
        item = self._next_block()
        if item is not None and not self._eof and self._thread is not None:
            self._block = self._next_free()       # inline: the one block, emptied by recycle
            self._block.n = 0
            self._enc.retarget(self._block)
        return item

    def _next_free(self) -> _Sealed:
        while True:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._take()
                self._full.put(item)
                if item is None:
                    return
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            self._full.put(exc)

    def __iter__(self) -> "_Reader":
        return self

    def __next__(self) -> tuple[_Sealed, int]:
        if self._thread is None:
            item = self._take()
            if item is None:
                raise StopIteration
            return item
        got = self._full.get()
        if got is None:
            raise StopIteration
        if isinstance(got, BaseException):
            raise got
        return got

    def recycle(self, block: _Sealed) -> None:
        if self._thread is None:
            block.n = 0
        else:
            self._free.put(block)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)   # a hung device must not hang the session forever


class _Stopped(Exception):
    """The consumer gave up while the reader waited for a buffer."""


def _spool_error(exc: OSError) -> SpoolError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(f"spool is full: {exc.strerror}")
    return SpoolError(f"spool write failed: {exc.strerror}")
