"""One conformance suite for every Store backend.

A backend takes part by adding one entry to ``STORE_BACKENDS``: a name and a
factory ``(request, tmp_path) -> BackendHandle``. The factory may ask for
session fixtures (servers) with ``request.getfixturevalue``. Example::

    def tus_backend(request, tmp_path):
        server = request.getfixturevalue("tus_server")
        return BackendHandle("tus", lambda: TusStore(server.url), multipart_size=..., ...)

    STORE_BACKENDS["tus"] = tus_backend

``test_store_conformance.py`` runs ``StoreConformance`` once per entry.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from dockd.errors import IntegrityError, ObjectMissingError, StoreError
from dockd.store.base import Blob, Item, MemoryCheckpoint, ObjectInfo, Store, put_one, verify_one
from dockd.store.dirstore import TMP_PREFIX, DirStore


@dataclass
class BackendHandle:
    """A backend under test, and the back doors the suite needs."""

    name: str
    make_store: Callable[[], Store]          # a fresh instance (as after a restart)
    multipart_size: int                      # a size that takes the multipart/resumable path
    raw_put: Callable[[str, bytes], None]    # replace an object's bytes behind the store's back
    leftovers: Callable[[], list[str]]       # incomplete uploads, temp files: must end up empty
    resumable: bool = False                  # saves progress to the checkpoint while uploading
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = self.make_store()


# -- backends --------------------------------------------------------------------

def file_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendHandle:
    root = tmp_path / "store"
    root.mkdir()

    def raw_put(key: str, data: bytes) -> None:
        (root / key).write_bytes(data)

    def leftovers() -> list[str]:
        return [str(p) for p in root.rglob(f"{TMP_PREFIX}*")]

    return BackendHandle("file", lambda: DirStore(root), 300_000, raw_put, leftovers)


def s3_backend(server_fixture: str) -> Callable[[pytest.FixtureRequest, Path], BackendHandle]:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendHandle:
        from dockd.store.s3 import S3Store

        ep = request.getfixturevalue(server_fixture)
        bucket = ep.new_bucket()
        client = ep.client()
        part = ep.min_part_size

        def make() -> Store:
            return S3Store(f"s3://{bucket}/evidence", **ep.store_kwargs(
                multipart_threshold=4 * part, part_size=part))

        def raw_put(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=f"evidence/{key}", Body=data)

        def leftovers() -> list[str]:
            r = client.list_multipart_uploads(Bucket=bucket)
            return [f"upload {u['Key']} {u['UploadId']}" for u in r.get("Uploads", [])]

        return BackendHandle(ep.name, make, 6 * part + 1234, raw_put, leftovers, resumable=True)

    return factory


STORE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], BackendHandle]] = {
    "file": file_backend,
    "moto": s3_backend("moto_server"),
    "swift": s3_backend("swift_server"),
}


def tus_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendHandle:
    """The official Node tus server on loopback (tests/tus_server.py)."""
    from tus_server import tus_backend as factory

    return factory(request, tmp_path)


STORE_BACKENDS["tus"] = tus_backend


# -- helpers -----------------------------------------------------------------------

def make_blob(tmp_path: Path, size: int, name: str = "blob", *, seed: int = 0, **over: Any) -> Blob:
    data = os.urandom(size) if seed == 0 else hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    path = tmp_path / f"{name}.age"
    path.write_bytes(data)
    kw: dict[str, Any] = dict(path=path, size=size, sha256=hashlib.sha256(data).hexdigest(),
                              metadata={"plaintext-sha256": "ab" * 32, "camera": "CAM-0001",
                                        "station": "dock-01", "recorded": "2024-05-01T10:00:00Z",
                                        "profile": "axon-body-3"})
    kw.update(over)
    return Blob(**kw)


class SimulatedCrash(BaseException):
    """Raised from a checkpoint: like a power cut, no cleanup code runs."""


class CrashingCheckpoint(MemoryCheckpoint):
    """Saves like the ledger would, then 'crashes' once ``parts`` parts are saved."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.crash_at = parts
        self.saves = 0

    def save(self, state: dict[str, Any]) -> None:
        super().save(state)
        self.saves += 1
        if self.crash_at is not None and len(state.get("parts", [])) >= self.crash_at:
            self.crash_at = None
            raise SimulatedCrash()


def read_all(store: Store, key: str) -> bytes:
    f = store.open(key)
    try:
        return f.read()
    finally:
        f.close()


def stat_of(store: Store, key: str) -> ObjectInfo | None:
    """The object under ``key`` as its directory's listing shows it, or None: what a
    stat would say, through the seam."""
    parent = key.rpartition("/")[0]
    return next((o for o in store.list(f"{parent}/" if parent else "") if o.key == key), None)


KEY = "dock-01/CAM-0001/2024-05-01/clip-0001.0123456789abcdef.age"


# -- the suite ------------------------------------------------------------------------

class StoreConformance:
    """The contract of ``Store``; subclass it and provide a ``backend`` fixture."""

    def assert_nothing_left(self, backend: BackendHandle, key: str) -> None:
        assert stat_of(backend.store, key) is None
        assert [o.key for o in backend.store.list()] == []
        assert backend.leftovers() == []

    def test_put_then_verify(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, 10_000)
        put_one(backend.store, KEY, blob, MemoryCheckpoint())
        info = verify_one(backend.store, KEY, blob)
        assert info.size == blob.size
        assert read_all(backend.store, KEY) == blob.path.read_bytes()

    def test_verify_missing_key(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, 100)
        with pytest.raises(ObjectMissingError):
            verify_one(backend.store, KEY, blob)
        assert stat_of(backend.store, KEY) is None

    def test_idempotent_reput(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, 5_000)
        for _ in range(3):
            put_one(backend.store, KEY, blob, MemoryCheckpoint())
        verify_one(backend.store, KEY, blob)
        assert [(o.key, o.size) for o in backend.store.list()] == [(KEY, 5_000)]

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_short_upload_fails_and_leaves_nothing(self, backend: BackendHandle, tmp_path: Path,
                                                   big: bool) -> None:
        size = backend.multipart_size if big else 4_000
        good = make_blob(tmp_path, size)
        data = good.path.read_bytes()
        good.path.write_bytes(data[: size - 1000])   # the spool file lost its tail
        with pytest.raises(StoreError) as ei:
            put_one(backend.store, KEY, good, MemoryCheckpoint())
        assert not ei.value.retryable
        self.assert_nothing_left(backend, KEY)

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_wrong_hash_fails_and_leaves_nothing(self, backend: BackendHandle, tmp_path: Path,
                                                 big: bool) -> None:
        size = backend.multipart_size if big else 4_000
        blob = make_blob(tmp_path, size, sha256="00" * 32)
        with pytest.raises(StoreError) as ei:
            put_one(backend.store, KEY, blob, MemoryCheckpoint())
        assert not ei.value.retryable
        self.assert_nothing_left(backend, KEY)

    @pytest.mark.parametrize("change", ["same-size", "other-size"])
    def test_tampered_object_fails_verify(self, backend: BackendHandle, tmp_path: Path, change: str) -> None:
        blob = make_blob(tmp_path, 8_000)
        put_one(backend.store, KEY, blob, MemoryCheckpoint())
        data = blob.path.read_bytes()
        forged = bytes([data[0] ^ 1]) + data[1:] if change == "same-size" else data + b"x"
        backend.raw_put(KEY, forged)
        with pytest.raises(IntegrityError):
            verify_one(backend.store, KEY, blob)
        # the caller deletes and puts again; then it verifies
        backend.store.delete(KEY)
        put_one(backend.store, KEY, blob, MemoryCheckpoint())
        verify_one(backend.store, KEY, blob)

    def test_stat_open_list_delete(self, backend: BackendHandle, tmp_path: Path) -> None:
        a = make_blob(tmp_path, 1_000, "a")
        b = make_blob(tmp_path, 2_000, "b")
        ka, kb = "dock-01/CAM-1/2024-05-01/a.age", "dock-01/CAM-2/2024-05-02/b.age"
        put_one(backend.store, ka, a, MemoryCheckpoint())
        put_one(backend.store, kb, b, MemoryCheckpoint())
        sa = stat_of(backend.store, ka)
        assert sa is not None and sa.key == ka and sa.size == 1_000
        assert sorted((o.key, o.size) for o in backend.store.list()) == [(ka, 1_000), (kb, 2_000)]
        assert [o.key for o in backend.store.list("dock-01/CAM-2/")] == [kb]
        assert list(backend.store.list("nothing-here/")) == []
        assert read_all(backend.store, kb) == b.path.read_bytes()
        backend.store.delete(ka)
        assert stat_of(backend.store, ka) is None
        backend.store.delete(ka)                 # absent is success
        with pytest.raises(ObjectMissingError):
            backend.store.open(ka)
        assert [o.key for o in backend.store.list()] == [kb]

    def test_empty_object(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, 0)
        put_one(backend.store, KEY, blob, MemoryCheckpoint())
        assert verify_one(backend.store, KEY, blob).size == 0
        st = stat_of(backend.store, KEY)
        assert st is not None and st.size == 0
        assert read_all(backend.store, KEY) == b""

    def test_multipart_sized_object(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, backend.multipart_size)
        cp = MemoryCheckpoint()
        put_one(backend.store, KEY, blob, cp)
        assert verify_one(backend.store, KEY, blob).size == blob.size
        assert read_all(backend.store, KEY) == blob.path.read_bytes()
        assert cp.load() is None                 # a finished upload leaves no resume state
        assert backend.leftovers() == []

    def test_checkpoint_resumed_upload(self, backend: BackendHandle, tmp_path: Path) -> None:
        blob = make_blob(tmp_path, backend.multipart_size)
        cp = CrashingCheckpoint(parts=2)
        crashed = False
        try:
            put_one(backend.store, KEY, blob, cp)
        except SimulatedCrash:
            crashed = True
        if backend.resumable:
            assert crashed, "a resumable backend must save progress while uploading"
            assert cp.load() is not None
            assert stat_of(backend.store, KEY) is None   # nothing visible before completion
        # restart: a new store instance, the checkpoint as the ledger kept it
        store = backend.make_store()
        put_one(store, KEY, blob, cp)
        verify_one(store, KEY, blob)
        assert cp.load() is None
        assert [(o.key, o.size) for o in store.list()] == [(KEY, blob.size)]
        assert backend.leftovers() == []

    # -- batches ------------------------------------------------------------------------

    def test_a_batch_is_put_and_verified(self, backend: BackendHandle, tmp_path: Path) -> None:
        items = [Item(f"dock-01/CAM-1/2024-05-01/IMG{i:03d}.age", make_blob(tmp_path, 500 + i, f"b{i}"))
                 for i in range(5)]
        put = backend.store.put(items)
        assert [r.item.key for r in put] == [i.key for i in items]
        assert all(r.ok for r in put) and put.batch_error is None
        proven = backend.store.verify(items)
        assert [r.item.key for r in proven] == [i.key for i in items]
        assert all(r.ok and r.info is not None and r.info.size == r.item.blob.size for r in proven)
        assert sorted((o.key, o.size) for o in backend.store.list()) == sorted((i.key, i.blob.size) for i in items)

    def test_a_batch_is_taken_one_item_at_a_time(self, backend: BackendHandle, tmp_path: Path) -> None:
        """A lazy batch: the store takes each item only once it has put the one before,
        so the caller can build each just before its put."""
        taken: list[str] = []

        def items():  # noqa: ANN202
            for i in range(3):
                key = f"dock-01/CAM-1/2024-05-01/IMG{i:03d}.age"
                taken.append(key)
                yield Item(key, make_blob(tmp_path, 300 + i, f"b{i}"))

        put = backend.store.put(items())
        assert [r.item.key for r in put] == taken and all(r.ok for r in put)

    @pytest.mark.parametrize("fault", ["short", "wrong-hash"])
    def test_one_bad_item_fails_alone_and_leaves_nothing(self, backend: BackendHandle, tmp_path: Path,
                                                         fault: str) -> None:
        good = [make_blob(tmp_path, 700 + i, f"g{i}") for i in range(3)]
        bad = make_blob(tmp_path, 4_000, "bad")
        if fault == "short":
            bad.path.write_bytes(bad.path.read_bytes()[:3_000])     # the spool file lost its tail
        else:
            bad = make_blob(tmp_path, 4_000, "bad", sha256="00" * 32)
        keys = [f"dock-01/CAM-1/2024-05-01/IMG{i:03d}.age" for i in range(4)]
        items = [Item(keys[0], good[0]), Item(keys[1], bad), Item(keys[2], good[1]), Item(keys[3], good[2])]
        put = backend.store.put(items)
        assert put.batch_error is None
        assert [r.ok for r in put] == [True, False, True, True]
        assert isinstance(put[1].error, StoreError) and not put[1].error.retryable
        assert stat_of(backend.store, keys[1]) is None
        assert backend.leftovers() == []
        proven = backend.store.verify(items)
        assert [r.ok for r in proven] == [True, False, True, True]
        assert isinstance(proven[1].error, ObjectMissingError)
        assert sorted(o.key for o in backend.store.list()) == sorted(keys[:1] + keys[2:])

    def test_one_tampered_object_fails_its_batch_verify_alone(self, backend: BackendHandle,
                                                              tmp_path: Path) -> None:
        items = [Item(f"dock-01/CAM-1/2024-05-01/IMG{i:03d}.age", make_blob(tmp_path, 900 + i, f"t{i}"))
                 for i in range(4)]
        assert all(r.ok for r in backend.store.put(items))
        data = items[2].blob.path.read_bytes()
        backend.raw_put(items[2].key, bytes([data[0] ^ 1]) + data[1:])
        proven = backend.store.verify(items)
        assert [r.ok for r in proven] == [True, True, False, True]
        assert isinstance(proven[2].error, IntegrityError)
