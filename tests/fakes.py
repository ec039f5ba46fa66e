"""Fakes for fast unit tests: plain classes beside the real thing."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from dockd.errors import DockdError, TransientStoreError
from dockd.store.base import Blob, Checkpoint, ObjectInfo, Store
from dockd.store.dirstore import DirStore


class ScriptedStore(Store):
    """A real DirStore with a script of failures in front of it.

    ``put_errors`` are raised by successive put() calls before the real put
    runs; ``after_put`` runs after each successful put (to touch the camera,
    change the ledger...), ``after_stored`` once the object has its name,
    which inside ``batch()`` is at the end of the block (to corrupt it).
    """

    def __init__(self, root: Path, put_errors: list[DockdError] | None = None,
                 always: Callable[[], DockdError] | None = None,
                 after_put: Callable[[str], None] | None = None,
                 after_stored: Callable[[str], None] | None = None,
                 list_proof: Callable[[list[tuple[str, Blob]]], set[str]] | None = None) -> None:
        self.inner = DirStore(root)
        self.url = self.inner.url
        self.put_errors = list(put_errors or [])
        self.always = always
        self.after_put = after_put
        self.after_stored = after_stored    # once the object has its name (after its batch)
        self.list_proof = list_proof        # prove_listed: the keys it proves (or it raises)
        self.listed: list[list[str]] = []   # keys of every prove_listed call
        self.puts = 0
        self.attempts = 0
        self.attempted: list[str] = []      # keys of every put, refused or not
        self.blobs: dict[str, Blob] = {}    # key -> the Blob of its last put
        self.verified: list[str] = []       # keys of every verify
        self._batch = threading.local()     # .later: keys put in this thread's batch

    def put(self, key: str, blob: Blob, checkpoint: Checkpoint) -> None:
        self.attempts += 1
        self.attempted.append(key)
        self.blobs[key] = blob
        if self.always:
            raise self.always()
        if self.put_errors:
            raise self.put_errors.pop(0)
        self.inner.put(key, blob, checkpoint)
        self.puts += 1
        if self.after_put:
            self.after_put(key)
        if self.after_stored:
            later = getattr(self._batch, "later", None)
            if later is not None:
                later.append(key)           # in a batch the object has its name at the end
            else:
                self.after_stored(key)

    def _gate(self) -> None:
        if self.always:
            raise self.always()   # refused credentials refuse every call, not only put

    def verify(self, key: str, blob: Blob) -> ObjectInfo:
        self.verified.append(key)
        self._gate()
        return self.inner.verify(key, blob)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if getattr(self._batch, "later", None) is not None:
            yield
            return
        self._batch.later = []
        try:
            with self.inner.batch():
                yield
            later = self._batch.later
        finally:
            self._batch.later = None
        for key in later:                   # each object now in the store, by its name
            if self.after_stored:
                self.after_stored(key)

    def prove_listed(self, items: Sequence[tuple[str, Blob]]) -> set[str]:
        self.listed.append([k for k, _ in items])
        self._gate()
        return self.list_proof(list(items)) if self.list_proof else self.inner.prove_listed(items)

    def stat(self, key: str) -> ObjectInfo | None:
        self._gate()
        return self.inner.stat(key)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._gate()
        return self.inner.list(prefix)


def transient(n: int) -> list[DockdError]:
    return [TransientStoreError(f"scripted outage {i + 1}") for i in range(n)]


def pull_out_when(station, docked, when: Callable[[list[int]], bool]):  # noqa: ANN001, ANN201
    """Run ``station``'s session for ``docked``, pulling the camera out (setting the
    session's cancel) as soon as ``when(chunks read so far)`` is true: a scripted undock."""
    cancel = threading.Event()
    seen: list[int] = []

    def progress(_live, n: int) -> None:
        seen.append(n)
        if when(seen):
            cancel.set()

    return station.run_session(docked, cancel=cancel, progress=progress)
