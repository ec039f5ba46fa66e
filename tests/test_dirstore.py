"""file:// specifics beyond the conformance suite."""

from __future__ import annotations

import hashlib
import os

from dockd.store.base import Blob, MemoryCheckpoint
from dockd.store.dirstore import TMP_PREFIX, DirStore


def blob(tmp_path, data: bytes) -> Blob:
    p = tmp_path / "spooled.age"
    p.write_bytes(data)
    return Blob(p, len(data), hashlib.sha256(data).hexdigest())


def test_first_put_in_a_directory_removes_temp_files_a_crash_left(tmp_path):
    store = DirStore(tmp_path / "store")
    key = "ev/dock/CAM/2026-11-21/A.MP4.0123456789abcdef.age"
    leftover = tmp_path / "store" / "ev/dock/CAM/2026-11-21" / f"{TMP_PREFIX}A.MP4.0123456789abcdef.age.deadbeef0000"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an object from a killed dockd")
    other = leftover.with_name(f"{TMP_PREFIX}session-1.manifest.json.sig.deadbeef0000")
    other.write_bytes(b"a killed put of a key that is never put again")
    b = blob(tmp_path, os.urandom(70_000))
    store.put(key, b, MemoryCheckpoint())
    store.verify(key, b)
    assert not leftover.exists()
    assert not other.exists()
    assert [o.key for o in store.list()] == [key]


def test_verify_rehashes_an_object_changed_after_put(tmp_path):
    store = DirStore(tmp_path / "store")
    key = "k/A.age"
    b = blob(tmp_path, b"x" * 100_000)
    store.put(key, b, MemoryCheckpoint())
    obj = tmp_path / "store" / key
    data = bytearray(obj.read_bytes())
    data[10] ^= 1
    obj.write_bytes(bytes(data))
    import pytest

    from dockd.errors import IntegrityError

    with pytest.raises(IntegrityError):
        store.verify(key, b)


def test_proofs_kept_from_put_to_verify_stay_bounded(tmp_path):
    """A daemon that runs for months puts millions of objects: what a put remembers for its
    verify is dropped once verified, and the oldest go first, so it never grows."""
    from dockd.store.base import MAX_PROOFS_KEPT

    store = DirStore(tmp_path / "store")
    blobs = []
    for i in range(MAX_PROOFS_KEPT + 20):
        p = tmp_path / f"b{i}.age"
        p.write_bytes(os.urandom(100))
        blobs.append((f"k/{i}.age", Blob(p, 100, hashlib.sha256(p.read_bytes()).hexdigest())))
    for key, b in blobs[:10]:
        store.put(key, b, MemoryCheckpoint())
        store.verify(key, b)
    assert len(store._proven) == 0
    for key, b in blobs[10:]:
        store.put(key, b, MemoryCheckpoint())
    assert len(store._proven) == MAX_PROOFS_KEPT
    for key, b in blobs:
        assert store.verify(key, b).sha256 == b.sha256      # proven or hashed again, all the same
