"""Group commit in the spool: small files share one flush, and nothing gets its
final name (or ``spooled`` in the ledger) before its bytes are on disk."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from dockd import fsutil

from dockd.age import decrypt, generate_identity
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.errors import SpoolError
from dockd.model import Phase, RecState
from dockd.pipeline import spool as spool_mod
from dockd.pipeline.spool import GROUP_FILE_MAX, GROUP_FILES, GroupCommit, Spool
from dockd.store.retry import RetryPolicy
from fakes import pull_out_when


@pytest.fixture
def ident():
    return generate_identity()


def _files(root: Path, sizes: list[int]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(sizes):
        p = root / f"F{i:04d}.JPG"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


def _spool_all(group: GroupCommit, files: list[Path]) -> None:
    for i, f in enumerate(files, 1):
        st = f.stat()
        group.spool(f, i, st.st_size, st.st_mtime_ns)


def test_small_files_are_committed_together_and_decrypt(tmp_path, ident, monkeypatch):
    spool = Spool(tmp_path / "spool", [ident.public()])
    flushes = []
    real = fsutil.syncfs

    def watched(path):
        # at the flush, the files are whole in partial/ and none has its final name yet
        flushes.append((len(list((spool.root / "partial").iterdir())), len(list(spool.root.glob("*.age")))))
        real(path)

    monkeypatch.setattr(fsutil, "syncfs", watched)
    files = _files(tmp_path / "cam", [65536] * (GROUP_FILES + 5))
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    _spool_all(group, files)
    group.flush()
    group.close()
    assert [len(g) for g in groups] == [GROUP_FILES, 5]
    assert len(flushes) == 2 and flushes[0][1] == 0 and flushes[1][1] == GROUP_FILES
    assert list((spool.root / "partial").iterdir()) == []
    for g in groups:
        for sp in g:
            assert sp.durable and sp.path == spool.path_for(sp.rec_id)
            out = io.BytesIO()
            with open(sp.path, "rb") as f:
                decrypt(f, out, [ident])
            assert out.getvalue() == files[sp.rec_id - 1].read_bytes()


def test_a_large_file_flushes_the_group_before_it_and_goes_alone(tmp_path, ident):
    spool = Spool(tmp_path / "spool", [ident.public()])
    files = _files(tmp_path / "cam", [1000, 2000, GROUP_FILE_MAX + 1, 3000])
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    _spool_all(group, files)
    group.flush()
    group.close()
    assert [[sp.rec_id for sp in g] for g in groups] == [[1, 2], [3], [4]]


def test_a_failed_flush_leaves_no_final_name_and_says_so(tmp_path, ident, monkeypatch):
    spool = Spool(tmp_path / "spool", [ident.public()])
    files = _files(tmp_path / "cam", [1000, 2000, GROUP_FILE_MAX + 1, 3000])

    def broken(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil, "syncfs", broken)
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    with pytest.raises(SpoolError, match="Input/output error"):
        _spool_all(group, files)         # the first group fails behind the copy; said at the next file
        group.flush()
    group.close()
    assert groups == []
    assert list(spool.root.glob("*.age")) == [] and list((spool.root / "partial").iterdir()) == []


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_write_error_only_the_files_own_fd_sees_fails_the_group(tmp_path, ident, monkeypatch):
    """Another caller's syncfs may have taken a writeback error from the filesystem-wide
    report, so ours returns 0: each file's own fd, open since before its writes, still
    reports it, and the group keeps no final name."""
    spool = Spool(tmp_path / "spool", [ident.public()])
    files = _files(tmp_path / "cam", [1000, 2000, 3000])
    seen: list[int] = []

    def check_written(fd: int) -> None:
        seen.append(fd)
        if len(seen) == 2:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil, "check_written", check_written)
    before = _open_fds()
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    _spool_all(group, files)
    with pytest.raises(SpoolError, match="Input/output error"):
        group.flush()
    group.close()
    assert len(seen) == 2 and groups == []
    assert list(spool.root.glob("*.age")) == [] and list((spool.root / "partial").iterdir()) == []
    assert _open_fds() == before                    # every spool file's fd closed


def test_spooling_leaves_no_fd_open(tmp_path, ident):
    spool = Spool(tmp_path / "spool", [ident.public()])
    before = _open_fds()
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    _spool_all(group, _files(tmp_path / "cam", [1000, 2000, GROUP_FILE_MAX + 1, 3000]))
    group.flush()
    _spool_all(group, _files(tmp_path / "cam2", [500, 600]))      # handed over to nobody: dropped
    group.close()
    assert sum(len(g) for g in groups) == 4
    assert _open_fds() == before


def test_close_drops_what_was_not_handed_over(tmp_path, ident):
    spool = Spool(tmp_path / "spool", [ident.public()])
    group = GroupCommit(spool, lambda g: pytest.fail("nothing may be committed"))
    _spool_all(group, _files(tmp_path / "cam", [1000, 2000]))
    group.close()
    assert list(spool.root.glob("*.age")) == [] and list((spool.root / "partial").iterdir()) == []


def test_the_commit_runs_behind_the_copy_and_keeps_spool_order(tmp_path, ident, monkeypatch):
    """While a group is being flushed the next file is already being read; the
    groups still reach on_commit in spool order."""
    spool = Spool(tmp_path / "spool", [ident.public()])
    release = threading.Event()
    real = os.fsync

    def slow(fd: int) -> None:           # every flush of the commit thread waits for the release
        release.wait(10)
        real(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", slow)
    files = _files(tmp_path / "cam", [GROUP_FILE_MAX + 1, 1000, 2000])
    groups: list[list] = []
    group = GroupCommit(spool, groups.append)
    _spool_all(group, files)             # returns while the big file's flush is held
    assert groups == [] and len(list((spool.root / "partial").iterdir())) == 3
    release.set()
    group.flush()
    group.close()
    assert [[sp.rec_id for sp in g] for g in groups] == [[1], [2, 3]]


def test_undock_mid_group_keeps_what_was_read_whole(make_cfg, tmp_path):
    """The camera leaves once the 3rd photo is read: the three read whole are
    committed (spooled, uploaded, verified), the 4th is not, nothing is wiped."""
    cam = tmp_path / "cams" / "G1"
    files = _files(cam / "DCIM", [40_000] * 6)
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    # pulled out once the 3rd file is read whole, before the 4th is finished
    out = pull_out_when(st, CameraDocked("G1", "generic", cam), lambda seen: len(seen) == 3)
    assert out.phase == Phase.INTERRUPTED
    st.uploader.wait_idle([r.id for r in st.ledger.recordings(serial="G1")], timeout=30)
    states = sorted((r.name, r.state) for r in st.ledger.recordings(serial="G1"))
    st.close()
    durable = [n for n, s in states if s in (RecState.SPOOLED, RecState.UPLOADED, RecState.VERIFIED)]
    assert len(durable) == 3, states
    assert [s for n, s in states if n not in durable] == [RecState.FOUND] * 3
    assert all(f.exists() for f in files)                        # an interrupted dock wipes nothing
    assert list((tmp_path / "state" / "spool" / "partial").iterdir()) == []


def test_a_spool_cap_smaller_than_the_camera_still_finishes(make_cfg, tmp_path):
    """spool.max_size below the camera's size: spooling waits for uploads to free the
    spool, committing the group it holds first (its uploads are what frees the space;
    waiting on it instead would wait forever)."""
    from dockd.config import SpoolConfig

    from fakes import ScriptedStore

    cam = tmp_path / "cams" / "CAP1"
    files = _files(cam / "DCIM", [300_000] * 8)
    cfg = make_cfg(spool=SpoolConfig(min_free=0, max_size=1 << 20))
    store = ScriptedStore(tmp_path / "store", after_put=lambda key: time.sleep(0.05))
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=store, patient=False)
    full = []
    real_full = st.gate.is_full
    st.gate.is_full = lambda: full.append(real_full()) or full[-1]
    st.start()
    out = st.run_session(CameraDocked("CAP1", "generic", cam))
    st.close()
    assert any(full)                                  # the cap was reached, and waited on
    assert out.ok and out.wiped == 8
    assert not any(f.exists() for f in files)
    assert len([k for k in store.attempted if ".manifest.json" not in k]) == 8
    assert st.spool.used_bytes() == 0


def test_after_a_failed_group_nothing_commits_even_once_it_was_reported(tmp_path, ident, monkeypatch):
    spool = Spool(tmp_path / "spool", [ident.public()])
    calls = []

    def failing_commit(group):
        calls.append([sp.rec_id for sp in group])
        raise SpoolError("spool write failed: Input/output error")

    monkeypatch.setattr(spool, "commit", failing_commit)
    group = GroupCommit(spool, lambda g: pytest.fail("nothing may be committed"))
    files = _files(tmp_path / "cam", [GROUP_FILE_MAX + 1] * 3)
    st = files[0].stat()
    group.spool(files[0], 1, st.st_size, st.st_mtime_ns)        # fails behind the copy
    group._wait_idle()
    for i in (2, 3):
        st = files[i - 1].stat()
        with pytest.raises(SpoolError):                         # reported, and again: sticky
            group.spool(files[i - 1], i, st.st_size, st.st_mtime_ns)
    with pytest.raises(SpoolError):
        group.flush()
    group.close()
    assert calls == [[1]]
