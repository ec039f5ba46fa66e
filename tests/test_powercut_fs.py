"""The power-cut filesystem (campaigns/fs/powercut.py) loses what a disk would lose.

A layer that cannot lose data proves nothing: each test makes a cut and looks at
what is left, through the remounted filesystem.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from campaigns.fs.powercut import Control, Instance
from dockd.fsutil import fsync_dir, syncfs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs root, /dev/fuse and fusermount3")


@pytest.fixture(params=["pessimistic", "ext4"])
def fs(request, tmp_path):
    inst = Instance(tmp_path / "fs", tmp_path / "mnt", request.param)
    yield inst
    inst.close()


@pytest.fixture
def pessimistic(tmp_path):
    inst = Instance(tmp_path / "fs", tmp_path / "mnt", "pessimistic")
    yield inst
    inst.close()


def _write(path: Path, data: bytes, sync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_a_write_never_synced_is_gone_after_a_cut(fs):
    m = fs.mnt
    _write(m / "f", b"durable")
    fsync_dir(m)
    fd = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" and then some")          # never fsynced
    os.close(fd)
    assert (m / "f").read_bytes() == b"durable and then some"
    lost = fs.cut()
    assert (m / "f").read_bytes() == b"durable"
    assert lost["files rolled back"] == 1


def test_a_new_file_whose_directory_was_never_synced_keeps_no_name(pessimistic):
    m = pessimistic.mnt
    _write(m / "synced-data", b"x" * 1000)     # its bytes are durable, its name is not
    pessimistic.cut()
    assert not (m / "synced-data").exists()


def test_ext4_mode_commits_the_name_with_any_fsync(tmp_path):
    inst = Instance(tmp_path / "fs", tmp_path / "mnt", "ext4")
    try:
        _write(inst.mnt / "f", b"data")          # its fsync commits the journal, name included
        _write(inst.mnt / "g", b"lost", sync=False)
        inst.cut()
        assert (inst.mnt / "f").read_bytes() == b"data"
        assert not (inst.mnt / "g").exists()
    finally:
        inst.close()


def test_write_fsync_rename_fsync_directory_survives(fs):
    m = fs.mnt
    (m / "d").mkdir()
    fsync_dir(m)
    _write(m / "d" / ".tmp-x", b"the object")
    os.rename(m / "d" / ".tmp-x", m / "d" / "x")
    fsync_dir(m / "d")
    fs.cut()
    assert (m / "d" / "x").read_bytes() == b"the object"
    assert os.listdir(m / "d") == ["x"]


def test_a_rename_whose_directory_was_not_synced_is_undone(pessimistic):
    m = pessimistic.mnt
    _write(m / ".tmp-x", b"the object")
    fsync_dir(m)
    os.rename(m / ".tmp-x", m / "x")
    pessimistic.cut()
    assert os.listdir(m) == [".tmp-x"]


def test_an_unlink_not_synced_is_undone_with_its_bytes(fs):
    m = fs.mnt
    _write(m / "clip", b"footage")
    fsync_dir(m)
    os.unlink(m / "clip")
    fs.cut()
    assert (m / "clip").read_bytes() == b"footage"


def test_syncfs_makes_nothing_durable_on_fuse(fs):
    """The kernel never sends FUSE_SYNCFS to a /dev/fuse server: a syncfs is no flush here."""
    m = fs.mnt
    _write(m / "f", b"old")
    fsync_dir(m)
    _write(m / "f", b"new", sync=False)
    syncfs(m)
    os.sync()
    fs.cut()
    assert (m / "f").read_bytes() == b"old"


def test_ext4_mode_renames_over_a_file_after_its_data(tmp_path):
    inst = Instance(tmp_path / "fs", tmp_path / "mnt", "ext4")
    try:
        m = inst.mnt
        _write(m / "conf", b"old")
        fsync_dir(m)
        _write(m / "conf.new", b"new", sync=False)
        os.rename(m / "conf.new", m / "conf")   # auto_da_alloc: never an empty conf
        fsync_dir(m)
        inst.cut()
        assert (m / "conf").read_bytes() == b"new"
    finally:
        inst.close()


def test_sqlite_wal_works_and_keeps_only_synced_commits(fs):
    db_path = fs.mnt / "ledger.sqlite3"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")      # the -shm file is mmapped
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.execute("PRAGMA synchronous=OFF")
    db.execute("INSERT INTO t VALUES (2)")
    db.commit()
    assert db.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    fs.cut()                                   # the connection's files are gone with the power
    db2 = sqlite3.connect(db_path)
    assert db2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db2.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,)]
    db2.close()
    db.close()


def test_a_cut_at_the_nth_durable_operation_holds_it(tmp_path):
    ctl = Control(tmp_path / "ctl")
    inst = Instance(tmp_path / "fs", tmp_path / "mnt", "pessimistic", ctl, "station")
    try:
        m = inst.mnt
        ctl.arm(2)
        _write(m / "a", b"first")                 # durable op 1
        errors = []

        def second() -> None:
            try:
                fsync_dir(m)                      # durable op 2: the power goes out here
            except OSError as exc:
                errors.append(exc)

        t = threading.Thread(target=second)
        t.start()
        while ctl.fired() is None:
            t.join(0.01)
        assert t.is_alive()                       # held: no answer, as with the power out
        assert ctl.fired() == "station: fsyncdir /"
        inst.cut()
        t.join(10)
        assert errors
        assert os.listdir(m) == []                # the fsyncdir never happened
    finally:
        inst.close()


# -- dockd's own durable writes, judged by a cut ------------------------------------------------

def _blob(tmp_path: Path, name: str, data: bytes):
    import hashlib

    from dockd.store.base import Blob

    p = tmp_path / name
    p.write_bytes(data)
    return Blob(p, len(data), hashlib.sha256(data).hexdigest())


def test_a_store_object_in_a_new_directory_survives_a_power_cut(pessimistic, tmp_path):
    """Put and verified, so the camera may be wiped: the day's new directory must not
    vanish with it because only the object's own directory was fsynced."""
    from dockd.store.base import put_one, verify_one
    from dockd.store.dirstore import DirStore

    store = DirStore(pessimistic.mnt / "store")
    blob = _blob(tmp_path, "x.age", b"ciphertext" * 500)
    key = "evidence/dock/CAM/2026-12-08/V1.age"
    put_one(store, key, blob)
    verify_one(store, key, blob)
    pessimistic.cut()
    assert (pessimistic.mnt / "store" / key).read_bytes() == b"ciphertext" * 500


def test_a_batch_of_objects_on_fuse_is_durable_when_named(fs, tmp_path):
    """A syncfs never reaches a FUSE server: a batch there is made durable file by file."""
    from dockd.store.base import Item
    from dockd.store.dirstore import DirStore

    (fs.mnt / "store").mkdir()
    fsync_dir(fs.mnt)
    store = DirStore(fs.mnt / "store")
    blobs = {f"V{i}.age": _blob(tmp_path, f"{i}.age", bytes([65 + i]) * 3000) for i in range(3)}
    items = [Item(k, b) for k, b in blobs.items()]
    assert all(r.ok for r in store.put(items))            # one batch: its one flush
    assert all(r.ok for r in store.verify(items))
    fs.cut()
    for k, b in blobs.items():
        assert (fs.mnt / "store" / k).read_bytes() == b.path.read_bytes()


def test_a_new_state_directory_keeps_its_ledger_and_spool_after_a_power_cut(pessimistic):
    from dockd.ledger import Ledger
    from dockd.pipeline.spool import Spool

    state = pessimistic.mnt / "var" / "state"
    led = Ledger(state / "ledger.sqlite3")
    with led.tx(durable=True) as db:
        db.execute("INSERT INTO cameras(serial, profile, first_seen, last_seen) VALUES ('C1', 'g', 0, 0)")
    Spool(state / "spool", [])
    pessimistic.cut()
    led.close()
    assert (state / "spool" / "partial").is_dir()
    led = Ledger(state / "ledger.sqlite3")
    try:
        assert led.integrity_check() == "ok"
        with led.tx() as db:
            assert [tuple(r) for r in db.execute("SELECT serial FROM cameras")] == [("C1",)]
    finally:
        led.close()
