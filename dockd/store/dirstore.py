"""``file://`` store: a local directory or a NAS mount.

Crash-safe saves the restic way: temp file in the same directory, byte count
checked, fsync, rename, fsync the directory. A crash leaves either the whole
object or a ``.tmp-*`` file that the next put of that key removes.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlparse

from ..errors import (
    IntegrityError,
    ObjectMissingError,
    PermanentStoreError,
    StoreFullError,
    TransientStoreError,
    UsageError,
)
from ..fsutil import HashingWriter, fsync_dir
from .base import Blob, Capabilities, Checkpoint, ObjectInfo, Store

BLOCK = 1 << 20
TMP_PREFIX = ".tmp-"


def _classify(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{what}: store is full ({exc.strerror})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                     errno.ENAMETOOLONG):
        return PermanentStoreError(f"{what}: {exc.strerror}")
    # NAS hiccups: EIO, ESTALE, ETIMEDOUT, ENOTCONN... worth another try
    return TransientStoreError(f"{what}: {exc.strerror or exc}")


class DirStore(Store):
    capabilities = Capabilities()

    def __init__(self, root: Path, url: str = "") -> None:
        self.root = Path(root)
        self.url = url or f"file://{self.root}"

    @classmethod
    def from_url(cls, url: str) -> "DirStore":
        u = urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost"):
            raise UsageError(f"not a file:// URL: {url!r}")
        return cls(Path(unquote(u.path)), url)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts):
            raise PermanentStoreError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, blob: Blob, checkpoint: Checkpoint) -> None:
        dest = self._path(key)
        tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                out = HashingWriter(fd)
                with blob.open() as src:
                    while chunk := src.read(BLOCK):
                        out.write(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            n, h = out.size, out.sha
            if n != blob.size or h.hexdigest() != blob.sha256:
                tmp.unlink(missing_ok=True)
                raise IntegrityError(
                    f"put {key}: source gave {n} bytes sha256 {h.hexdigest()[:16]}, "
                    f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
                )
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _classify(exc, f"put {key}") from exc

    def verify(self, key: str, blob: Blob) -> ObjectInfo:
        info = self._hash(key)
        if info is None:
            raise ObjectMissingError(f"{key}: not in store")
        if info.size != blob.size or info.sha256 != blob.sha256:
            raise IntegrityError(
                f"{key}: store holds {info.size} bytes sha256 {info.sha256[:16] if info.sha256 else '?'}, "
                f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
            )
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

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _classify(exc, f"stat {key}") from exc
        return ObjectInfo(key=key, size=st.st_size)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectMissingError(f"{key}: not in store") from exc
        except OSError as exc:
            raise _classify(exc, f"open {key}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise _classify(exc, f"delete {key}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if name.startswith(TMP_PREFIX):
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                yield ObjectInfo(key=key, size=p.stat().st_size)
