"""The Store seam.

A backend is small: put a rewindable ciphertext blob under a key, prove what it
holds, stat, open for reading, delete, list. Backends classify their own errors
into ``TransientStoreError`` (retry) or ``PermanentStoreError`` (stop), and the
one retry wrapper in ``retry.py`` alone decides what to do about them.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Iterator, Mapping, Protocol, Sequence

# Proofs a store keeps from put to verify (a few hundred bytes each): one is dropped
# once verified, and the oldest go first, so a daemon that runs for months stays small.
MAX_PROOFS_KEPT = 256


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, in one record (not flags scattered in the code)."""

    resumable: bool = False          # put() continues from a Checkpoint after a crash
    server_checksum: bool = False    # the server verifies a SHA-256 we send
    object_lock: bool = False        # retention / legal hold can be applied


@dataclass(frozen=True)
class Blob:
    """A spooled ciphertext, ready to upload. Rewindable: ``open()`` starts at 0.

    ``metadata`` is stored with the object (plaintext SHA-256, camera, station,
    recorded time, profile). It is a claim, never a proof.
    """

    path: Path
    size: int
    sha256: str                       # hex SHA-256 of the ciphertext
    metadata: Mapping[str, str] = field(default_factory=dict)
    flagged: bool = False             # legal hold / evidential
    # Spooled just now: a fresh file key makes these bytes new, so no object under the
    # key can hold them yet (whatever is there is replaced; a backend need not look first).
    new: bool = False

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None         # ciphertext SHA-256, where the store can say
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class Checkpoint(Protocol):
    """Durable resume state for one upload (S3 UploadId + parts, tus URL + offset).

    ``save`` must be durable when it returns: it is committed to the ledger.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class MemoryCheckpoint:
    """A Checkpoint that lives only in memory (tests, one-shot tools)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def load(self) -> dict[str, Any] | None:
        return None if self.state is None else dict(self.state)

    def save(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def clear(self) -> None:
        self.state = None


class Store(abc.ABC):
    """A place that holds ciphertext objects under deterministic keys."""

    capabilities: Capabilities = Capabilities()
    url: str = ""

    @abc.abstractmethod
    def put(self, key: str, blob: Blob, checkpoint: Checkpoint) -> None:
        """Upload ``blob`` under ``key``.

        May be called again after any failure or crash with the same key and
        blob; must be idempotent. A failed or short upload must leave no object
        visible under ``key``.
        """

    @abc.abstractmethod
    def verify(self, key: str, blob: Blob) -> ObjectInfo:
        """Prove the store holds exactly ``blob``'s bytes under ``key``.

        Raises ``ObjectMissingError`` when absent and ``IntegrityError`` when the
        object differs. Only after this returns is a recording ``verified``.
        """

    def batch(self) -> ContextManager[None]:
        """Group the puts this thread makes inside the block.

        A backend may make them durable together when the block ends (one
        flush for many small objects instead of one each); an object put in
        the block may then be visible, and provable, only after it. Raises a
        ``StoreError`` at the end of the block if that fails. The default
        groups nothing: each put is whole when it returns.
        """
        return contextlib.nullcontext()

    def prove_listed(self, items: Sequence[tuple[str, Blob]]) -> set[str]:
        """Prove many objects just put with one listing: the keys of ``items`` proven.

        A backend whose listing shows what ``verify`` would check (size and a
        digest computed locally) may prove several objects with one request
        instead of one each. What it does not return, for any reason, the
        caller proves with ``verify``. Raises a ``StoreError`` if the listing
        fails. The default proves none.
        """
        return set()

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size (and hashes where known), or None when absent."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Read an object back (audit, demo, ``dockd verify``)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent is success."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` (relative to the store's own prefix)."""

    def close(self) -> None:
        """Release connections. Optional."""


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_stream(f: BinaryIO, block: int = 1 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(block):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n
