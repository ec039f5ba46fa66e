"""``file://`` store: a local directory or a NAS mount.

Crash-safe saves the restic way: temp file in the same directory, fsync,
read back and hashed (size and SHA-256 must match the blob), rename, fsync the
directory. A crash leaves either the whole object or a ``.tmp-*`` file, which
the next put of that key removes. A batch shares its flushes: each temp file
is written and read back, then one ``syncfs`` makes them all durable (one
journal commit; a batch of one is fsynced), each file's write errors are
collected through its own fd, open since before its writes, and only then is
each renamed and each directory fsynced once. Before that no object of the
batch has its name. A flush that fails is the batch's error (``batch_error``),
not retried on the spot: a second fsync after a failed one may report success
without writing anything, so the objects are written again, later.

An object whose directory fsync failed is refused by ``verify`` until it is put
again: a second fsync after a failed one may report success without writing
anything, so only a fresh rename and fsync can make that name durable. An object
this process finds but did not put (left by an earlier one: a crash, a restart)
has its directory fsynced by ``verify`` once its bytes are proven, since that
process may have died before its own directory fsync. (Its bytes were durable
before it had its name.) The refusal is kept in memory: after a restart, a name
whose directory fsync failed before it is fsynced again like any other, and a
filesystem that dropped the first error may report that second fsync a success.
"""

from __future__ import annotations

import contextlib
import errno
import io
import hashlib
import os
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import unquote, urlparse

from ..errors import (
    DockdError,
    IntegrityError,
    ObjectMissingError,
    PermanentStoreError,
    StoreError,
    StoreFullError,
    TransientStoreError,
    UsageError,
)
from ..fsutil import close_quietly, fsync_dir, make_dirs, make_durable
from .base import MAX_PROOFS_KEPT, Blob, Item, ObjectInfo, Result, Results, Store, each, sha256_stream
from .keys import validate_key

BLOCK = 1 << 20
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class _Pending:
    """A put inside a batch: written and read back, waiting for the batch's flush."""

    key: str
    tmp: Path
    dest: Path
    proof: tuple[int, int, int, str]       # (inode, size, mtime_ns, sha256) as read back
    fd: int                                # the temp file, open since before it was written


def _copy(src: int, dst: int) -> None:
    """Kernel-side copy where possible (no user-space buffers), else a plain loop."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, BLOCK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


# The store itself cannot be reached: a dead, stale or lazily unmounted NAS mount (ENOTCONN,
# ESTALE, EIO, EHOSTDOWN...), or a mount point that is no longer a directory (ENOTDIR). Passing,
# as far as dockd can tell: retried with backoff, never taken for a bug or a refusal.
UNREACHABLE_ERRNOS = frozenset({
    errno.ENOTDIR, errno.ENOTCONN, errno.ESTALE, errno.EIO, errno.EHOSTDOWN, errno.EHOSTUNREACH,
    errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET, errno.ETIMEDOUT, errno.ECONNRESET,
    errno.ECONNABORTED, errno.ECONNREFUSED, errno.ENODEV, errno.ENXIO, errno.ENOLINK, errno.ECOMM,
    errno.EREMOTEIO, errno.EAGAIN, errno.EINTR,
})


def _classify(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{what}: store is full ({exc.strerror})")
    if exc.errno in UNREACHABLE_ERRNOS:
        return TransientStoreError(f"{what}: store unreachable ({exc.strerror or exc})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENAMETOOLONG):
        return PermanentStoreError(f"{what}: {exc.strerror}")
    return TransientStoreError(f"{what}: {exc.strerror or exc}")


class DirStore(Store):
    def __init__(self, root: Path, url: str = "") -> None:
        self.root = Path(root)
        self.url = url or f"file://{self.root}"
        self._lock = threading.Lock()
        self._writing: set[Path] = set()          # temp files our puts are writing now
        self._listed: set[Path] = set()        # directories already swept for dead temp files
        self._made: set[Path] = set()          # directories whose names this process made durable
        # key -> (inode, size, mtime_ns, sha256) of objects this process put and read back
        self._proven: dict[str, tuple[int, int, int, str]] = {}
        # keys renamed into place by a batch whose directory fsync failed: verify refuses
        # them (the name may not survive a power cut) until they are put again
        self._unsettled: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> "DirStore":
        u = urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost"):
            raise UsageError(f"not a file:// URL: {url!r}")
        return cls(Path(unquote(u.path)), url)

    def _path(self, key: str) -> Path:
        parts = validate_key(key).split("/")
        if any(p.startswith(TMP_PREFIX) for p in parts):     # the names of puts under way
            raise PermanentStoreError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, items: Iterable[Item]) -> Results:
        """Write each item to a temp file (a kernel copy, ``copy_file_range``) and read
        it back and hash it: an object is proven before it is renamed into place. Then
        one flush makes them durable together (see ``_flush``); only then do they have
        their names. An item refused (wrong bytes, a store error) fails alone; a failed
        flush is the ``batch_error`` of every item written."""
        results = Results()
        pending: list[tuple[int, _Pending]] = []
        try:
            for item in items:
                try:
                    p = self._write(item.key, item.blob)
                except DockdError as exc:
                    results.append(Result(item, error=exc))
                    continue
                pending.append((len(results), p))
                results.append(Result(item))
        except BaseException:
            self._abandon([p for _, p in pending])
            raise
        err = self._flush([p for _, p in pending])
        if err is not None:
            results.batch_error = err
            for i, _ in pending:
                results[i] = Result(results[i].item, error=err)
        return results

    def _write(self, key: str, blob: Blob) -> _Pending:
        """One object, written to its temp file and read back; the fd stays open for
        the flush (opened before the writes, it reports their errors)."""
        dest = self._path(key)
        # unique per call: two recordings with identical content share a key
        tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}.{uuid.uuid4().hex[:12]}")
        kept = False
        try:
            self._make_dirs(dest.parent)
            with self._lock:
                self._writing.add(tmp)
                self._remove_dead_temps(dest)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                with blob.open() as src:
                    try:
                        src_fd = src.fileno()
                    except (AttributeError, OSError, io.UnsupportedOperation):
                        src_fd = None      # a wrapped stream (rate limit): copy through it
                    if src_fd is not None:
                        _copy(src_fd, fd)
                    else:
                        while chunk := src.read(BLOCK):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view):]
                st = os.fstat(fd)
                os.lseek(fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(fd), "rb") as back:
                    digest, n = sha256_stream(back, BLOCK)
                if n != blob.size or digest != blob.sha256:
                    tmp.unlink(missing_ok=True)
                    raise IntegrityError(
                        f"put {key}: store copy has {n} bytes sha256 {digest[:16]}, "
                        f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
                    )
                kept = True                     # still ours (in _writing) until the flush
                return _Pending(key, tmp, dest, (st.st_ino, st.st_size, st.st_mtime_ns, digest), fd)
            finally:
                if not kept:
                    os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a dead mount refuses this too: swept at the next put
                tmp.unlink(missing_ok=True)
            raise _classify(exc, f"put {key}") from exc
        finally:
            if not kept:
                with self._lock:
                    self._writing.discard(tmp)

    def _make_dirs(self, d: Path) -> None:
        """An object's directory, with every name on its way durable (``make_dirs``):
        once per directory and process."""
        with self._lock:
            if d in self._made:
                return
        make_dirs(d)
        with self._lock:
            self._made.add(d)

    def _settled(self, key: str, proof: tuple[int, int, int, str]) -> None:
        with self._lock:
            self._unsettled.pop(key, None)
            self._proven[key] = proof
            while len(self._proven) > MAX_PROOFS_KEPT:
                self._proven.pop(next(iter(self._proven)))

    def _flush(self, pending: list[_Pending]) -> StoreError | None:
        """Make the temp files durable (one file: its fsync; several: one ``syncfs``),
        then give them their names and fsync each directory once; the error, if that
        fails. If the flush fails no name is given; if a directory fsync fails, its
        names are refused by ``verify`` until put again."""
        if not pending:
            return None
        renamed: list[_Pending] = []
        try:
            try:
                make_durable(self.root, [p.fd for p in pending])
                for p in pending:
                    os.replace(p.tmp, p.dest)
                    renamed.append(p)
                for d in dict.fromkeys(p.dest.parent for p in pending):
                    fsync_dir(d)
            except OSError as exc:
                what = f"put {pending[0].key}" if len(pending) == 1 else f"flush of {len(pending)} objects"
                err = _classify(exc, what)
                err.__cause__ = exc
                with self._lock:
                    for p in renamed:
                        self._unsettled[p.key] = str(err)
                for p in pending:
                    if p not in renamed:
                        with contextlib.suppress(OSError):   # a dead temp file: swept at the next start
                            p.tmp.unlink(missing_ok=True)
                return err
            for p in pending:
                self._settled(p.key, p.proof)
            return None
        finally:
            self._abandon(pending, unlink=False)

    def _abandon(self, pending: list[_Pending], unlink: bool = True) -> None:
        """Close the temp files' fds and forget them (and remove them, for a batch cut short)."""
        for p in pending:
            close_quietly(p.fd)
            if unlink:
                with contextlib.suppress(OSError):
                    p.tmp.unlink(missing_ok=True)
        with self._lock:
            for p in pending:
                self._writing.discard(p.tmp)

    def _remove_dead_temps(self, dest: Path) -> None:
        """Temp files a crash left in ``dest``'s directory. One dockd writes a station's
        keys (the station id is part of every key), so at this process's first look at
        a directory every temp file there that none of our puts is writing is dead,
        whichever key it was for (a session's manifest is never put again). A
        directory is listed once per process: listing it at every put would make a
        camera of n files cost n² directory entries."""
        if dest.parent in self._listed:
            return
        try:
            with os.scandir(dest.parent) as it:
                dead = [dest.parent / e.name for e in it if e.name.startswith(TMP_PREFIX)]
            for p in dead:
                if p not in self._writing:
                    p.unlink(missing_ok=True)
        except FileNotFoundError:
            pass                            # a new day's directory: nothing was left in it
        except OSError as exc:              # listed again at the next put
            raise _classify(exc, f"cleanup of {dest.parent.relative_to(self.root)}") from exc
        self._listed.add(dest.parent)

    def verify(self, items: Iterable[Item]) -> Results:
        return each(items, lambda item: self._verify(item.key, item.blob), until_refused=False)

    def _verify(self, key: str, blob: Blob) -> ObjectInfo:
        """Size and SHA-256 of the object. An object this store put and read back,
        whose inode, size and mtime are unchanged since, is not hashed twice. Any
        other is hashed, then its name made durable (see the module's doc)."""
        path = self._path(key)
        with self._lock:
            proof = self._proven.pop(key, None)     # used once: a later verify hashes again
            self._remove_dead_temps(path)   # a crash mid-put, then "already there": no put follows
            unsettled = self._unsettled.get(key)
        if unsettled is not None:
            # as good as absent: a power cut could lose the name, so it is put again
            raise ObjectMissingError(f"{key}: its name was not made durable ({unsettled})")
        if proof is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise ObjectMissingError(f"{key}: not in store") from None
            except OSError as exc:
                raise _classify(exc, f"verify {key}") from exc
            if (st.st_ino, st.st_size, st.st_mtime_ns) == proof[:3] and proof[3] == blob.sha256 \
                    and st.st_size == blob.size:
                return ObjectInfo(key=key, size=st.st_size, sha256=proof[3])
        info = self._hash(key)
        if info is None:
            raise ObjectMissingError(f"{key}: not in store")
        if info.size != blob.size or info.sha256 != blob.sha256:
            raise IntegrityError(
                f"{key}: store holds {info.size} bytes sha256 {info.sha256[:16] if info.sha256 else '?'}, "
                f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
            )
        try:
            fsync_dir(path.parent)
        except FileNotFoundError:
            raise ObjectMissingError(f"{key}: not in store") from None
        except OSError as exc:
            raise _classify(exc, f"verify {key}: making it durable") from exc
        return info

    def _hash(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                h = hashlib.sha256()
                n = 0
                while chunk := f.read(BLOCK):
                    h.update(chunk)
                    n += len(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _classify(exc, f"verify {key}") from exc
        return ObjectInfo(key=key, size=n, sha256=h.hexdigest())

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectMissingError(f"{key}: not in store") from exc
        except OSError as exc:
            raise _classify(exc, f"open {key}") from exc

    def delete(self, key: str) -> None:
        with self._lock:
            self._proven.pop(key, None)
            self._unsettled.pop(key, None)
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise _classify(exc, f"delete {key}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix``. A missing prefix lists nothing; a store that cannot
        be read (a dead mount, a root that is not a directory) raises, never lists nothing."""
        base = self.root / prefix if prefix else self.root

        def walk_error(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):     # gone since its parent was listed
                raise exc

        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.root))
            if not base.is_dir():
                os.stat(base)               # FileNotFoundError: nothing under it; others raise
                return
            for dirpath, _dirs, files in os.walk(base, onerror=walk_error):
                for name in sorted(files):
                    if name.startswith(TMP_PREFIX):
                        continue
                    p = Path(dirpath) / name
                    try:
                        size = p.stat().st_size
                    except FileNotFoundError:
                        continue            # deleted while listed
                    yield ObjectInfo(key=p.relative_to(self.root).as_posix(), size=size)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _classify(exc, f"list {prefix or '/'}") from exc
