"""Fakes for fast unit tests: plain classes beside the real thing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from dockd.errors import DockdError, StoreAuthError, TransientStoreError
from dockd.store.base import Blob, Item, ObjectInfo, Result, Results, Store
from dockd.store.dirstore import DirStore


class ScriptedStore(Store):
    """A real DirStore with a script of failures in front of it.

    ``put_errors`` are the results of successive items put, before the real put
    runs; ``after_put`` runs after each item is written (to touch the camera,
    change the ledger...), ``after_stored`` once the object has its name, which
    is when its batch has been flushed (to corrupt it). ``list_proof`` stands for
    a store's listing proof: given a batch's ``(key, blob)`` pairs, the keys it
    proves (or it raises); the rest are verified one by one.
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
        self.list_proof = list_proof
        self.listed: list[list[str]] = []   # keys of every batch offered to a listing proof
        self.puts = 0
        self.attempts = 0
        self.attempted: list[str] = []      # keys of every put, refused or not
        self.blobs: dict[str, Blob] = {}    # key -> the Blob of its last put
        self.verified: list[str] = []       # keys of every verify one by one

    def put(self, items: Iterable[Item]) -> Results:
        scripted = Results()

        def passing() -> Iterator[Item]:
            for item in items:
                self.attempts += 1
                self.attempted.append(item.key)
                self.blobs[item.key] = item.blob
                if self.always:
                    err = self.always()
                    scripted.append(Result(item, error=err))
                    if isinstance(err, StoreAuthError):
                        return
                    continue
                err = self.scripted_error(item)
                if err is not None:
                    scripted.append(Result(item, error=err))
                    continue
                yield item
                if self.after_put:          # written: the store takes the next item only now
                    self.after_put(item.key)

        real = self.inner.put(passing())
        self.puts += sum(1 for r in real if r.ok or r.error is real.batch_error)
        for r in real:
            if r.ok and self.after_stored:
                self.after_stored(r.item.key)   # each object now in the store, by its name
        order = {k: i for i, k in enumerate(self.attempted)}
        return Results(sorted([*scripted, *real], key=lambda r: order[r.item.key]), real.batch_error)

    def scripted_error(self, item: Item) -> DockdError | None:
        """The error ``item``'s put is to fail with, or None to put it: the next of ``put_errors``."""
        return self.put_errors.pop(0) if self.put_errors else None

    def _gate(self) -> None:
        if self.always:
            raise self.always()   # refused credentials refuse every call, not only put

    def verify(self, items: Iterable[Item]) -> Results:
        items = list(items)
        proven: set[str] = set()
        results = Results()
        if len(items) >= 2 and self.list_proof:
            self.listed.append([i.key for i in items])
            try:
                self._gate()
                proven = self.list_proof([(i.key, i.blob) for i in items])
            except DockdError as exc:
                results.batch_error = exc
        for item in items:
            if item.key in proven:
                results.append(Result(item, info=ObjectInfo(item.key, item.blob.size, item.blob.sha256)))
                continue
            self.verified.append(item.key)
            try:
                self._gate()
            except DockdError as exc:
                results.append(Result(item, error=exc))
                continue
            results.extend(self.inner.verify([item]))
        return results

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
