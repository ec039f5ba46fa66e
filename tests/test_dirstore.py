"""file:// specifics beyond the conformance suite."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from dockd import fsutil

import dockd.store.dirstore as ds
from dockd.errors import ObjectMissingError, StoreError
from dockd.store.base import Blob, Item, MemoryCheckpoint, put_one, verify_one
from dockd.store.dirstore import TMP_PREFIX, DirStore
from store_conformance import stat_of


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
    put_one(store, key, b, MemoryCheckpoint())
    verify_one(store, key, b)
    assert not leftover.exists()
    assert not other.exists()
    assert [o.key for o in store.list()] == [key]


def test_verify_rehashes_an_object_changed_after_put(tmp_path):
    store = DirStore(tmp_path / "store")
    key = "k/A.age"
    b = blob(tmp_path, b"x" * 100_000)
    put_one(store, key, b, MemoryCheckpoint())
    obj = tmp_path / "store" / key
    data = bytearray(obj.read_bytes())
    data[10] ^= 1
    obj.write_bytes(bytes(data))
    import pytest

    from dockd.errors import IntegrityError

    with pytest.raises(IntegrityError):
        verify_one(store, key, b)


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
        put_one(store, key, b, MemoryCheckpoint())
        verify_one(store, key, b)
    assert len(store._proven) == 0
    for key, b in blobs[10:]:
        put_one(store, key, b, MemoryCheckpoint())
    assert len(store._proven) == MAX_PROOFS_KEPT
    for key, b in blobs:
        assert verify_one(store, key, b).sha256 == b.sha256      # proven or hashed again, all the same


def _blobs(tmp_path, n: int) -> dict[str, Blob]:
    out = {}
    for i in range(n):
        data = os.urandom(5_000 + i)
        p = tmp_path / f"spooled-{i}.age"
        p.write_bytes(data)
        out[f"ev/dock/CAM/2026-11-21/IMG{i:03d}.age"] = Blob(p, len(data), hashlib.sha256(data).hexdigest())
    return out


def _count_flushes(monkeypatch) -> dict[str, int]:
    import dockd.fsutil
    import dockd.store.dirstore as ds

    seen = {"fsync": 0, "syncfs": 0}
    real_fsync, real_syncfs = os.fsync, fsutil.syncfs

    def fsync(fd: int) -> None:
        seen["fsync"] += 1
        real_fsync(fd)

    def syncfs(path) -> None:  # noqa: ANN001
        seen["syncfs"] += 1
        real_syncfs(path)

    monkeypatch.setattr(ds.os, "fsync", fsync)
    monkeypatch.setattr(dockd.fsutil.os, "fsync", fsync)
    monkeypatch.setattr(fsutil, "syncfs", syncfs)
    return seen


def test_a_batch_is_named_only_once_it_is_durable_and_shares_one_flush(tmp_path, monkeypatch):
    store = DirStore(tmp_path / "store")
    blobs = _blobs(tmp_path, 5)
    store._make_dirs(store._path(next(iter(blobs))).parent)   # its names made durable once, not per flush
    seen = _count_flushes(monkeypatch)
    import dockd.store.dirstore as ds

    steps: list[str] = []
    real_written, real_replace = fsutil.check_written, ds.os.replace
    monkeypatch.setattr(fsutil, "check_written", lambda fd: steps.append("written") or real_written(fd))
    monkeypatch.setattr(ds.os, "replace", lambda a, b: steps.append("rename") or real_replace(a, b))
    real_syncfs = fsutil.syncfs
    monkeypatch.setattr(fsutil, "syncfs", lambda path: steps.append("syncfs") or real_syncfs(path))
    def items():  # noqa: ANN202
        for k, b in blobs.items():
            yield Item(k, b)
        assert list(store.list()) == []                     # nothing has its name before the flush

    assert all(r.ok for r in store.put(items()))
    assert seen == {"fsync": 1, "syncfs": 1}                 # one syncfs, one directory fsync
    assert steps == ["syncfs"] + ["written"] * 5 + ["rename"] * 5      # durable, checked, then named
    assert sorted(o.key for o in store.list()) == sorted(blobs)
    for k, b in blobs.items():
        verify_one(store, k, b)
    seen.update(fsync=0, syncfs=0)
    (tmp_path / "more").mkdir()
    for k, b in _blobs(tmp_path / "more", 2).items():
        put_one(store, k.replace("IMG", "ONE"), b, MemoryCheckpoint())
    assert seen == {"fsync": 4, "syncfs": 0}                 # a batch of one: file and directory, each


def _eio(*_args: object) -> None:
    raise OSError(errno.EIO, "Input/output error")


def _failed_batch(store: DirStore, blobs: dict[str, Blob]) -> None:
    """The batch's flush failed: that is the batch's error, and each item's."""
    results = store.put([Item(k, b) for k, b in blobs.items()])
    assert isinstance(results.batch_error, StoreError) and "Input/output error" in str(results.batch_error)
    assert [r.error for r in results] == [results.batch_error] * len(blobs)


def _none_named(store: DirStore, blobs: dict[str, Blob]) -> None:
    for k, b in blobs.items():
        with pytest.raises(ObjectMissingError):
            verify_one(store, k, b)
    assert [p for p in store.root.rglob("*") if p.is_file()] == []    # and no temp file left


def test_a_batch_whose_flush_fails_names_nothing_and_leaves_nothing(tmp_path, monkeypatch):
    store, blobs = DirStore(tmp_path / "store"), _blobs(tmp_path, 3)
    monkeypatch.setattr(fsutil, "syncfs", _eio)
    _failed_batch(store, blobs)
    _none_named(store, blobs)


def test_a_write_error_only_a_files_own_fd_sees_names_nothing(tmp_path, monkeypatch):
    """The syncfs says all is well (another caller took the filesystem's error report),
    but one file's own fd reports a write error: no object of the batch gets its name."""
    store, blobs = DirStore(tmp_path / "store"), _blobs(tmp_path, 3)
    before = set(os.listdir("/proc/self/fd"))
    calls: list[int] = []

    def check_written(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            _eio()

    monkeypatch.setattr(fsutil, "check_written", check_written)
    _failed_batch(store, blobs)
    _none_named(store, blobs)
    assert len(calls) == 3
    assert set(os.listdir("/proc/self/fd")) == before       # the temp files' fds are closed


def test_names_whose_directory_fsync_failed_are_refused_until_put_again(tmp_path, monkeypatch):
    store, blobs = DirStore(tmp_path / "store"), _blobs(tmp_path, 2)
    real = ds.fsync_dir
    monkeypatch.setattr(ds, "fsync_dir", _eio)
    _failed_batch(store, blobs)
    monkeypatch.setattr(ds, "fsync_dir", real)
    k, b = next(iter(blobs.items()))
    assert (tmp_path / "store" / k).exists()                 # renamed, but the name may not last
    with pytest.raises(ObjectMissingError, match="not made durable"):
        verify_one(store, k, b)
    put_one(store, k, b, MemoryCheckpoint())                      # put again, alone: fsynced
    verify_one(store, k, b)


def test_a_single_put_whose_directory_fsync_failed_is_refused_until_put_again(tmp_path, monkeypatch):
    """Outside a batch (a manifest, say) the same rule holds: renamed, but its directory
    fsync failed, so its name may not last."""
    store, blobs = DirStore(tmp_path / "store"), _blobs(tmp_path, 1)
    k, b = next(iter(blobs.items()))
    real = ds.fsync_dir
    monkeypatch.setattr(ds, "fsync_dir", _eio)
    with pytest.raises(StoreError):
        put_one(store, k, b, MemoryCheckpoint())
    monkeypatch.setattr(ds, "fsync_dir", real)
    assert (tmp_path / "store" / k).exists()
    with pytest.raises(ObjectMissingError, match="not made durable"):
        verify_one(store, k, b)
    put_one(store, k, b, MemoryCheckpoint())
    verify_one(store, k, b)


def test_an_object_found_after_a_restart_is_made_durable_before_it_is_proven(tmp_path, monkeypatch):
    """After a crash or a restart, an object under its key was put by another process,
    which may have died before its directory fsync: verify hashes it, then fsyncs its
    directory; one whose name cannot be made durable is not proven."""
    blobs = _blobs(tmp_path, 1)
    k, b = next(iter(blobs.items()))
    put_one(DirStore(tmp_path / "store"), k, b, MemoryCheckpoint())
    store = DirStore(tmp_path / "store")                    # a new process: nothing proven in memory
    path = tmp_path / "store" / k
    fsynced: list[str] = []
    real_fsync_dir = ds.fsync_dir
    monkeypatch.setattr(ds, "fsync_dir", lambda q: (fsynced.append(str(q)), real_fsync_dir(q)))
    assert verify_one(store, k, b).size == b.size
    assert fsynced == [str(path.parent)]
    monkeypatch.setattr(ds, "fsync_dir", _eio)
    with pytest.raises(StoreError, match="making it durable"):
        verify_one(store, k, b)


def test_a_store_root_that_is_no_directory_is_unreachable_at_every_verb(tmp_path):
    """A NAS mount gone bad (here: the store's directory replaced by a file, giving ENOTDIR;
    a dead FUSE mount gives ENOTCONN) is a store that cannot be reached: transient, retried
    with backoff, wherever it shows (put, verify and its cleanup of dead temp files, stat,
    delete, list). Never a raw OSError (a bug), never "permanent", never an empty listing."""
    root = tmp_path / "store"
    key = "ev/dock/CAM/2026-11-21/A.MP4.0123456789abcdef.age"
    b = blob(tmp_path, os.urandom(10_000))
    put_one(DirStore(root), key, b, MemoryCheckpoint())
    root.rename(tmp_path / "away")
    root.write_bytes(b"")                     # the mount point is a file now
    store = DirStore(root)                    # a fresh process: its first look sweeps temp files
    calls = {"verify": lambda: verify_one(store, key, b), "put": lambda: put_one(store, key, b, MemoryCheckpoint()),
             "stat": lambda: stat_of(store, key), "delete": lambda: store.delete(key),
             "list": lambda: list(store.list()), "list prefix": lambda: list(store.list("ev/dock")),
             "open": lambda: store.open(key)}
    for name, call in calls.items():
        with pytest.raises(StoreError) as ei:
            call()
        assert ei.value.retryable, name
        assert "unreachable" in str(ei.value), name


@pytest.mark.parametrize("code", [errno.ENOTCONN, errno.ESTALE, errno.EIO, errno.EHOSTDOWN, errno.ENOTDIR])
def test_dead_mount_errors_are_an_unreachable_store(code):
    err = ds._classify(OSError(code, os.strerror(code)), "put k")
    assert err.retryable and "unreachable" in str(err)


def test_a_missing_prefix_lists_nothing(tmp_path):
    (tmp_path / "store").mkdir()
    assert list(DirStore(tmp_path / "store").list("ev/none")) == []
    assert list(DirStore(tmp_path / "nowhere").list()) == []
