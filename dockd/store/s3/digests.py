"""What a spooled file hashes to, as S3 sees it: part sizes, ETags, checksums, the tail kept for the read-back proof."""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import PermanentStoreError, SpoolError

MiB = 1024 * 1024
# S3 limits: parts are 5 MiB..5 GiB except the last, at most 10,000 of them.
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * 1024 * MiB
S3_MAX_PARTS = 10_000
READ_BLOCK = 1 * MiB
# verify reads back this many bytes at the object's end: a store that kept less (or
# other bytes) than it says cannot give them, whatever its HEAD echoes. Kept with each
# digest from put to verify (MAX_PROOFS_KEPT of them: 1 MiB).
TAIL_PROOF = 4096


# -- local digests -------------------------------------------------------------

def choose_part_size(
    size: int, part_size: int, min_part_size: int = S3_MIN_PART_SIZE, max_parts: int = S3_MAX_PARTS
) -> int:
    """The configured part size, raised so ``size`` needs at most ``max_parts`` parts.

    Deterministic: the same size and settings always give the same part size,
    so the multipart ETag can be recomputed later.
    """
    ps = max(part_size, min_part_size, 1)
    if math.ceil(size / ps) > max_parts:
        ps = math.ceil(size / max_parts)
        if ps > MiB:
            ps = math.ceil(ps / MiB) * MiB
    if ps > S3_MAX_PART_SIZE:
        raise PermanentStoreError(f"object of {size} bytes is too large for S3 multipart")
    return ps


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part; one empty part for an empty object."""
    if size == 0:
        return [(0, 0)]
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


@dataclass(frozen=True)
class Digest:
    """What the spooled file hashes to, part by part (one part for a single PUT)."""

    size: int
    sha256: str                      # hex, whole file
    part_size: int                   # 0 for a single PUT
    md5s: tuple[bytes, ...]          # raw MD5 of each part
    sha256s: tuple[bytes, ...]       # raw SHA-256 of each part; () when not computed
    tail: bytes = b""                # the last min(TAIL_PROOF, size) bytes

    @property
    def is_multipart(self) -> bool:
        return self.part_size > 0

    @property
    def has_part_sums(self) -> bool:
        """Whether ``sha256s`` were computed (an upload without checksums skips them)."""
        return len(self.sha256s) == len(self.md5s)

    @property
    def etag(self) -> str:
        if not self.is_multipart:
            return self.md5s[0].hex()
        return f"{hashlib.md5(b''.join(self.md5s)).hexdigest()}-{len(self.md5s)}"

    @property
    def checksum_sha256(self) -> str:
        """The base64 x-amz-checksum-sha256 S3 reports for this object."""
        if not self.has_part_sums:
            raise ValueError("per-part SHA-256s were not computed")
        if not self.is_multipart:
            return base64.b64encode(bytes.fromhex(self.sha256)).decode()
        whole = hashlib.sha256(b"".join(self.sha256s)).digest()
        return f"{base64.b64encode(whole).decode()}-{len(self.sha256s)}"

    @property
    def checksum_full(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def digest_file(path: Path, part_size: int = 0) -> Digest:
    """Hash ``path`` whole and per part. ``part_size`` 0 means one part."""
    whole = hashlib.sha256()
    md5s: list[bytes] = []
    sha256s: list[bytes] = []
    n = 0
    tail = b""
    block = memoryview(bytearray(READ_BLOCK))
    try:
        with open(path, "rb") as f:
            while True:
                want = part_size or (1 << 62)
                pm = hashlib.md5()
                # one part: its SHA-256 is the whole file's, so do not compute it twice
                hashers = (pm, whole, hashlib.sha256()) if part_size else (pm, whole)
                got = 0
                while got < want:
                    k = f.readinto(block[:min(READ_BLOCK, want - got)])
                    if not k:
                        break
                    for h in hashers:
                        h.update(block[:k])
                    tail = _keep_tail(tail, block[:k])
                    got += k
                if got or not md5s:
                    md5s.append(pm.digest())
                    if part_size:
                        sha256s.append(hashers[2].digest())
                n += got
                if got < want:
                    break
    except OSError as exc:
        raise SpoolError(f"cannot read spooled file {path}: {exc.strerror}") from exc
    if not part_size:
        sha256s = [whole.digest()]
    return Digest(n, whole.hexdigest(), part_size, tuple(md5s), tuple(sha256s), tail)


def _keep_tail(tail: bytes, data: memoryview) -> bytes:
    """The last ``TAIL_PROOF`` bytes of ``tail`` followed by ``data``."""
    if len(data) >= TAIL_PROOF:
        return bytes(data[-TAIL_PROOF:])
    return (tail + bytes(data))[-TAIL_PROOF:]


def read_hashing(f: BinaryIO, into: memoryview, hashers: tuple[Any, ...], what: str) -> int:
    """Fill ``into`` from ``f``; returns the bytes read, fewer only at end of file.

    Each block is hashed right after it is read, while it is still in the CPU
    cache, by every one of ``hashers``.
    """
    got = 0
    try:
        while got < len(into):
            k = f.readinto(into[got:got + READ_BLOCK])
            if not k:
                break
            for h in hashers:
                h.update(into[got:got + k])
            got += k
    except OSError as exc:
        raise SpoolError(f"{what}: cannot read the spooled file: {exc.strerror}") from exc
    return got


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
