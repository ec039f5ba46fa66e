"""The Store seam: five verbs.

``put`` a batch of items, ``verify`` a batch (the proof that the store holds
exactly those bytes), ``open`` a key, ``delete`` one, ``list`` a prefix. An item
is a key, a rewindable ciphertext ``Blob`` and the ``Checkpoint`` its upload
resumes from. Batches let a backend share what it can: one ``syncfs`` for many
small files on file://, one listing to prove many objects on S3. Backends
classify their own errors into ``TransientStoreError`` (retry) or
``PermanentStoreError`` (stop), and the one retry wrapper in ``retry.py``
alone decides what to do about them.

Batches report per item. A batch's ``Results`` hold one ``Result`` per item the
backend took, in the order it took them: ok, or that item's own error, so one bad
item fails alone. A step the whole batch shares (file://'s one flush, S3's one
listing) that fails is the batch's ``batch_error``:
* in ``put``, every item that step took down carries that same error as its own
  (its result's ``error is results.batch_error``), so callers handle each item
  alike and may say once that the batch failed; the retry wrapper does not try
  such a batch again within the call (a flush that failed is not retried on the
  spot: see dirstore.py) and leaves its items to be rescheduled;
* in ``verify``, a failed listing takes nothing down: each item is then proven on
  its own, and ``batch_error`` only says that the shared proof was not to be had.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Protocol

from ..errors import DockdError, StoreAuthError

# Proofs a store keeps from put to verify (a few hundred bytes each): one is dropped
# once verified, and the oldest go first, so a daemon that runs for months stays small.
MAX_PROOFS_KEPT = 256


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


@dataclass(frozen=True)
class Item:
    """One object of a batch: ``blob`` under ``key``, resuming from ``checkpoint``
    (``verify`` does not use it)."""

    key: str
    blob: Blob
    checkpoint: Checkpoint = field(default_factory=MemoryCheckpoint)


@dataclass(frozen=True)
class Result:
    """What became of one item: ``error`` None is success. ``info`` is what ``verify``
    found (size, and the hashes the store gave); ``put`` leaves it None."""

    item: Item
    error: DockdError | None = None
    info: ObjectInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def check(self) -> ObjectInfo | None:
        """``info``, or raise the item's error."""
        if self.error is not None:
            raise self.error
        return self.info


class Results(list[Result]):
    """The results of a batch, in the order its items were taken, and the error of
    a step the whole batch shared (None if it had none or it worked; see the module doc)."""

    def __init__(self, results: Iterable[Result] = (), batch_error: DockdError | None = None) -> None:
        super().__init__(results)
        self.batch_error = batch_error


class Store(abc.ABC):
    """A place that holds ciphertext objects under deterministic keys.

    ``put`` takes ``items`` as any iterable, and may be given a lazy one: a backend
    takes each item just before it puts it (so a caller can build the next item
    after the last was put), and stops taking items at a refusal of its
    credentials (``StoreAuthError``: every request after it would be refused too).
    What it did not take was not tried and has no result. ``verify`` gives every
    item it is given a result.
    """

    url: str = ""

    @abc.abstractmethod
    def put(self, items: Iterable[Item]) -> Results:
        """Upload each item's blob under its key.

        May be called again after any failure or crash with the same items; must be
        idempotent. A failed or short upload must leave no object visible under its
        key. When ``put`` returns, each object put is whole and durable, and can be
        proven with ``verify``.
        """

    @abc.abstractmethod
    def verify(self, items: Iterable[Item]) -> Results:
        """Prove the store holds exactly each item's blob under its key.

        An item's error is ``ObjectMissingError`` when it is absent and
        ``IntegrityError`` when the object differs. Only an item verified here is
        a recording ``verified``.
        """

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
        """Release connections. Optional; not a verb, the end of the store's life."""


def each(items: Iterable[Item], handle: Callable[[Item], ObjectInfo | None], *,
         until_refused: bool = True) -> Results:
    """``handle`` each item in turn, as a backend that shares nothing across a batch does.

    An item's ``DockdError`` is its result; with ``until_refused`` (``put``), a
    ``StoreAuthError`` ends the batch (see ``Store``).
    """
    results = Results()
    for item in items:
        try:
            results.append(Result(item, info=handle(item)))
        except DockdError as exc:
            results.append(Result(item, error=exc))
            if until_refused and isinstance(exc, StoreAuthError):
                break
    return results


def put_one(store: Store, key: str, blob: Blob, checkpoint: Checkpoint | None = None) -> None:
    """Put one object; raise its error."""
    item = Item(key, blob, checkpoint if checkpoint is not None else MemoryCheckpoint())
    _only(store.put([item])).check()


def verify_one(store: Store, key: str, blob: Blob) -> ObjectInfo:
    """Verify one object; raise its error."""
    info = _only(store.verify([Item(key, blob)])).check()
    assert info is not None
    return info


def _only(results: Results) -> Result:
    if len(results) != 1:
        raise AssertionError(f"one item, {len(results)} results")
    return results[0]


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
