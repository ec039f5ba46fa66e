"""The spine end to end over fixture cameras, with a file:// store."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from dockd.age import decrypt
from dockd.config import StoreConfig, WipeConfig
from dockd.device.events import CameraDocked
from dockd.session.camera import Graces
from dockd.session.session import STOPPED_ERROR, deleted_unconfirmed, spool_order
from dockd.station import Station
from dockd.errors import DeviceGoneError, PermanentStoreError, StoreAuthError
from dockd.model import Phase, RecState, Recording
from dockd.store.retry import RetryPolicy


from fakes import ScriptedStore, pull_out_when, transient

RECORDING_EXTS = (".MP4", ".XML", ".JPG", ".WAV")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ingest(cfg, camera: Path, backend=None, serial="BWC0001", **kw):
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=backend, patient=False)
    try:
        st.start()
        out = st.run_session(CameraDocked(serial, "generic", camera), **kw)
        recs = st.ledger.recordings(serial=serial)
        events = st.ledger.events(limit=10000)
        chain = st.ledger.verify_chain()
    finally:
        st.close()
    return out, recs, events, chain



def _samples(root, recs):
    """The content samples a session takes as it reads the files: what the wipe checks."""
    from dockd.errors import DockdError
    from dockd.pipeline.content import rehash

    out = {}
    for r in recs:
        path = os.path.join(os.fsencode(root), r.rel_path)
        try:
            out[r.id] = rehash(path, r.size, r.mtime_ns)[1]
        except DockdError:
            pass              # gone, or no longer what was copied: no sample
    return out


def test_whole_path_verifies_wipes_and_leaves_other_files(make_cfg, camera, identity, tmp_path):
    before = files(camera)
    out, recs, events, chain = ingest(make_cfg(), camera)
    assert out.phase == Phase.DONE and out.ok
    assert {r.state for r in recs} == {RecState.WIPED}
    assert len(recs) == 6 and {r.role for r in recs} == {"recording", "sidecar"}
    after = files(camera)
    assert set(after) == {"SYSTEM/FIRMWARE.BIN", "SYSTEM/settings.ini"}
    assert after == {k: before[k] for k in after}     # untouched, byte for byte
    # every object decrypts to the original bytes, under its deterministic key
    store = tmp_path / "store"
    for r in recs:
        obj = store / r.object_key
        assert obj.is_file()
        assert r.object_key.endswith(f".{r.plain_sha256[:16]}.{r.id}.age")
        buf = io.BytesIO()
        with open(obj, "rb") as f:
            decrypt(f, buf, [identity])
        assert buf.getvalue() == before[r.name]
        assert hashlib.sha256(buf.getvalue()).hexdigest() == r.plain_sha256
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == r.cipher_sha256
    # spool holds nothing verified
    assert list((tmp_path / "state" / "spool").glob("*.age")) == []
    names = [e["event"] for e in events]
    for ev in ("device.docked", "recording.spooled", "upload.verified", "wipe.done", "manifest.uploaded"):
        assert ev in names
    assert chain == len(events)


def test_manifest_lists_every_recording(make_cfg, camera, tmp_path):
    import json

    out, recs, _e, _c = ingest(make_cfg(), camera)
    (mpath,) = list((tmp_path / "store").rglob("*.manifest.json"))
    doc = json.loads(mpath.read_text())
    assert doc["station"] == "dock-01" and doc["camera"]["serial"] == "BWC0001"
    by_path = {i["path"]: i for i in doc["recordings"]}
    assert set(by_path) == {r.name for r in recs}
    for r in recs:
        item = by_path[r.name]
        assert (item["size"], item["plaintext_sha256"], item["ciphertext_sha256"], item["object_key"]) == (
            r.size, r.plain_sha256, r.cipher_sha256, r.object_key)


def test_transient_failures_then_success_still_verify(make_cfg, camera, tmp_path):
    store = ScriptedStore(tmp_path / "store", put_errors=transient(2))
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert out.ok
    assert all(r.state == RecState.WIPED for r in recs)
    assert store.attempts == store.puts + 2


def test_permanent_failure_means_no_wipe(make_cfg, camera, tmp_path):
    before = files(camera)
    store = ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("bucket gone"))
    out, recs, _e, _c = ingest(make_cfg(), camera, backend=store)
    assert out.phase == Phase.ATTENTION and not out.ok
    assert files(camera) == before
    assert all(r.state == RecState.FAILED and r.spool_path for r in recs)
    # not retried blindly: one attempt per recording
    assert all(r.attempts == 1 for r in recs)


def test_auth_failure_pauses_and_wipes_nothing(make_cfg, camera, tmp_path):
    before = files(camera)
    store = ScriptedStore(tmp_path / "store", always=lambda: StoreAuthError("403 InvalidAccessKeyId"))
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert not out.ok and files(camera) == before
    # the queue paused at the first refusal: one refused put per worker (2), no more
    recording_puts = [k for k in store.attempted if ".manifest.json" not in k]
    assert 1 <= len(recording_puts) <= 2, store.attempted
    assert all(r.state.is_safe and r.state != RecState.WIPED for r in recs)


def test_file_changed_after_spooling_is_not_wiped(make_cfg, camera, tmp_path):
    target = camera / "DCIM/100BWC/VID_20261120_0701.MP4"

    def touch_camera(key: str) -> None:
        if "VID_20261120_0701.MP4" in key:
            with open(target, "ab") as f:
                f.write(b"appended by the camera")

    store = ScriptedStore(tmp_path / "store", after_put=touch_camera)
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert target.exists() and target.read_bytes().endswith(b"appended by the camera")
    assert out.phase == Phase.ATTENTION
    assert [n for n, _ in out.refused] == ["DCIM/100BWC/VID_20261120_0701.MP4"]
    assert out.failed == []                           # reported once, as refused
    assert "wipe.refused" in [e["event"] for e in events]
    old = [r for r in recs if r.name.endswith("0701.MP4")]
    assert old[0].state == RecState.VERIFIED          # the old copy is safe, but not a licence to wipe
    others = [r for r in recs if not r.name.endswith("0701.MP4")]
    assert all(r.state == RecState.WIPED for r in others)


def test_rerun_after_success_is_a_noop(make_cfg, camera, tmp_path):
    ingest(make_cfg(), camera)
    store_before = files(tmp_path / "store")
    out, recs, _e, _c = ingest(make_cfg(), camera)
    assert out.ok and out.found == 0
    manifests = ("manifest.json", "manifest.json.sig")      # each session signs its own manifest
    objs = {k: v for k, v in files(tmp_path / "store").items() if not k.endswith(manifests)}
    assert objs == {k: v for k, v in store_before.items() if not k.endswith(manifests)}


def test_redock_of_verified_files_goes_straight_to_wipe(make_cfg, camera, tmp_path):
    cfg = make_cfg(wipe=WipeConfig(after="spooled"))
    from dockd.errors import TransientStoreError

    store = ScriptedStore(tmp_path / "store", always=lambda: TransientStoreError("store down"))
    out, recs, _e, _c = ingest(cfg, camera, backend=store)
    assert out.ok                                  # released: every recording durable in the spool
    # durable in the spool, none proven at the store (how far the failing uploads got
    # before the session released the camera is timing)
    assert all(r.is_durable and r.spool_path and r.state != RecState.VERIFIED for r in recs)
    assert len(files(camera)) == 8                  # nothing wiped without proof
    # the store comes back; the next start uploads from the spool
    cfg2 = make_cfg()
    st = Station(cfg2, policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    st.uploader.wait_idle([r.id for r in recs], timeout=30)
    states = {r.name: (st.ledger.get(r.id).state.value, st.ledger.get(r.id).last_error) for r in recs}
    assert all(v[0] == "verified" for v in states.values()), states
    spooled_events = sum(1 for e in st.ledger.events(limit=10000) if e["event"] == "recording.spooled")
    # re-dock: no second copy, straight to the wipe
    out2 = st.run_session(CameraDocked("BWC0001", "generic", camera))
    assert out2.ok and out2.wiped == 6
    assert sum(1 for e in st.ledger.events(limit=10000) if e["event"] == "recording.spooled") == spooled_events
    st.close()
    assert set(files(camera)) == {"SYSTEM/FIRMWARE.BIN", "SYSTEM/settings.ini"}


def test_restart_resumes_spooled_uploads(make_cfg, camera, tmp_path):
    cfg = make_cfg(wipe=WipeConfig(after="spooled"))
    ingest(cfg, camera, backend=ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("x")))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    # failed permanently: a new start re-queues them (a human fixed the store)
    summary = st.start()
    assert summary["resumed"] == 6
    ids = [r.id for r in st.ledger.recordings(serial="BWC0001")]
    st.uploader.wait_idle(ids, timeout=30)
    assert all(st.ledger.get(i).state == RecState.VERIFIED for i in ids)
    st.close()


def test_the_wipe_waits_for_the_pool_to_finish_with_a_recording(make_cfg, camera, tmp_path, monkeypatch):
    """A batch commits ``verified``, then logs and removes its spool copies. A session
    that took the ledger's word and wiped in between could see a crash leave a wiped
    recording's copy behind (found by the crash campaign): the wipe waits for the pool."""
    from dockd.pipeline.spool import Spool

    removed: dict[int, float] = {}
    real_remove = Spool.remove

    def slow_remove(self, rec_id):
        time.sleep(0.2)                  # a slow disk, or a busy machine, after the commit
        real_remove(self, rec_id)
        removed[rec_id] = time.time()

    monkeypatch.setattr(Spool, "remove", slow_remove)
    out, recs, events, _ = ingest(make_cfg(), camera)
    assert out.ok and removed
    wiped_at = {e["recording_id"]: e["ts"] for e in events if e["event"] == "wipe.done"}
    assert set(removed) <= set(wiped_at)
    late = {i: round(removed[i] - wiped_at[i], 3) for i in removed if removed[i] > wiped_at[i]}
    assert not late, f"wiped before the pool removed their spool copies: {late}"


def test_start_removes_a_wiped_recordings_leftover_spool_copy(make_cfg, camera, tmp_path):
    """A copy a crash (between the wipe's commit and the pool's cleanup) or a power cut
    (undoing an unsynced unlink) left behind: the store proved it before it was wiped."""
    cfg = make_cfg()
    out, recs, _e, _c = ingest(cfg, camera)
    assert out.ok
    wiped = [r for r in recs if r.state == RecState.WIPED]
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        left = st.spool.path_for(wiped[0].id)
        left.write_bytes(b"age-encryption.org/v1 leftover")
        unknown = st.spool.path_for(999_999)
        unknown.write_bytes(b"not ours to judge")
        summary = st.start()
        assert not left.exists() and summary["orphans"] == 1
        assert unknown.exists()          # no ledger row: never deleted
    finally:
        st.close()


def test_corrupt_spool_copy_is_caught_and_copied_again(make_cfg, camera, tmp_path):
    """A flipped bit in the spool never reaches the store as if it were good."""
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    flipped = threading.Event()
    real_submit = st.uploader.submit

    def corrupt_then_submit(rec, fresh=False):
        if not flipped.is_set() and rec.name.endswith("0701.MP4"):
            p = st.spool.path_for(rec.id)
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0x01
            p.write_bytes(bytes(data))
            flipped.set()
        real_submit(rec, fresh)

    st.uploader.submit = corrupt_then_submit
    st.start()
    out = st.run_session(CameraDocked("BWC0001", "generic", camera))
    events = [e["event"] for e in st.ledger.events(limit=10000)]
    recs = st.ledger.recordings(serial="BWC0001")
    st.close()
    assert flipped.is_set()
    assert "recording.spool_corrupt" in events
    assert out.ok and all(r.state == RecState.WIPED for r in recs)
    # the object in the store is the re-spooled, good one
    for r in recs:
        assert hashlib.sha256((tmp_path / "store" / r.object_key).read_bytes()).hexdigest() == r.cipher_sha256


def test_store_copy_corrupted_is_deleted_and_retried(make_cfg, camera, tmp_path):
    hits = []

    def corrupt_store(key: str) -> None:
        if not hits and key.endswith(".age"):
            hits.append(key)
            p = tmp_path / "store" / key
            data = bytearray(p.read_bytes())
            data[-1] ^= 0xFF
            p.write_bytes(bytes(data))

    store = ScriptedStore(tmp_path / "store", after_stored=corrupt_store)
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=store, patient=True)
    st.start()
    out = st.run_session(CameraDocked("BWC0001", "generic", camera))
    events = [e["event"] for e in st.ledger.events(limit=10000)]
    st.close()
    assert hits and "upload.failed" in events
    assert out.ok


def test_undock_mid_copy_interrupts_and_redock_completes(make_cfg, tmp_path):
    cam = tmp_path / "cams" / "BIG1"
    (cam / "DCIM").mkdir(parents=True)
    (cam / "DCIM" / "A.MP4").write_bytes(os.urandom(8 << 20))
    (cam / "DCIM" / "B.MP4").write_bytes(os.urandom(1 << 20))
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    # the camera is pulled out halfway through A.MP4
    out = pull_out_when(st, CameraDocked("BIG1", "generic", cam), lambda seen: sum(seen) > (3 << 20))
    assert out.phase == Phase.INTERRUPTED
    assert list((tmp_path / "state" / "spool" / "partial").iterdir()) == []   # partial discarded
    assert (cam / "DCIM" / "A.MP4").exists()
    out2 = st.run_session(CameraDocked("BIG1", "generic", cam))
    st.close()
    assert out2.ok and out2.wiped == 2


def test_growing_file_is_never_spooled_as_whole(make_cfg, tmp_path):
    cam = tmp_path / "cams" / "GROW"
    (cam / "DCIM").mkdir(parents=True)
    f = cam / "DCIM" / "LIVE.MP4"
    f.write_bytes(os.urandom(4 << 20))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    grown = []

    def progress(live, n):
        if not grown:
            with open(f, "ab") as fh:
                fh.write(b"x" * 100)
            grown.append(1)

    out = st.run_session(CameraDocked("GROW", "generic", cam), progress=progress)
    recs = st.ledger.recordings(serial="GROW")
    st.close()
    # the first version was abandoned; the grown file, scanned again, is what got verified
    good = [r for r in recs if r.state == RecState.WIPED]
    assert len(good) == 1 and good[0].size == (4 << 20) + 100
    assert any(r.state == RecState.SUPERSEDED for r in recs)
    assert out.ok


def test_wipe_never_trusts_absence_on_a_mount_point_that_lost_its_camera(make_cfg, tmp_path):
    """After a pull-out, a lazily unmounted mount point shows the empty directory
    beneath it: every file looks 'already absent'. That must not count as wiped."""
    from dockd.ledger import Ledger
    from dockd.pipeline.wipe import wipe
    from dockd import log as dlog

    ledger = Ledger(tmp_path / "l.sqlite3")
    sid = ledger.open_session("CAMX", "generic", str(tmp_path), None, None, {})
    rec = ledger.upsert_found("CAMX", sid, "generic", b"DCIM/A.MP4", 10, 1, "recording")
    rec = ledger.transition(rec.id, RecState.SPOOLED, plain_sha256="a" * 64, cipher_sha256="b" * 64,
                            cipher_size=50, object_key="k", spool_path="p")
    rec = ledger.transition(rec.id, RecState.VERIFIED)
    empty_mount_point = tmp_path / "mnt"
    empty_mount_point.mkdir()
    scanned_dev = os.stat(empty_mount_point).st_dev + 1          # the camera's filesystem, now gone
    with pytest.raises(DeviceGoneError):
        wipe(empty_mount_point, [rec], ledger, dlog.get(), root_dev=scanned_dev, samples=_samples(empty_mount_point, [rec]))
    assert ledger.get(rec.id).state == RecState.VERIFIED
    # on the camera itself, an absent verified file is wiped (idempotent after a crash)
    res = wipe(empty_mount_point, [rec], ledger, dlog.get(), root_dev=os.stat(empty_mount_point).st_dev, samples=_samples(empty_mount_point, [rec]))
    assert [r.id for r in res.wiped] == [rec.id] and ledger.get(rec.id).state == RecState.WIPED


def _verify(ledger, sid: int, rel: bytes, size: int, mtime_ns: int, key: str = "k") -> Recording:
    """A recording of camera CAMX taken straight to verified in ``ledger``."""
    rec = ledger.upsert_found("CAMX", sid, "generic", rel, size, mtime_ns, "recording")
    rec = ledger.transition(rec.id, RecState.SPOOLED, plain_sha256="a" * 64, cipher_sha256="b" * 64,
                            cipher_size=50, object_key=key, spool_path="p")
    return ledger.transition(rec.id, RecState.VERIFIED)


def _failing_for(real, suffix: str, err: int):
    """``real`` (an os function taking a path) failing with ``err`` for paths ending in ``suffix``."""
    def fn(path, *a, **k):
        if os.fsdecode(path).endswith(suffix):
            raise OSError(err, os.strerror(err))
        return real(path, *a, **k)
    return fn


def _verified_on_camera(tmp_path: Path):
    """A ledger holding one verified recording, and the camera directory holding its file."""
    from dockd.ledger import Ledger

    cam = tmp_path / "cam"
    (cam / "DCIM").mkdir(parents=True)
    f = cam / "DCIM" / "A.MP4"
    f.write_bytes(b"footage")
    st = f.stat()
    ledger = Ledger(tmp_path / "l.sqlite3")
    sid = ledger.open_session("CAMX", "generic", str(cam), None, None, {})
    return cam, ledger, _verify(ledger, sid, b"DCIM/A.MP4", st.st_size, st.st_mtime_ns)


def _failing_dir_fsync(err: int):
    real = os.fsync

    def fsync(fd):
        import stat as st_
        if st_.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(err, os.strerror(err))
        return real(fd)
    return fsync


def test_wipe_confirms_nothing_when_the_camera_fails_its_flush(tmp_path, monkeypatch):
    """A deletion the camera did not make durable (its media failing, or pulled out
    during the flush) is not recorded as wiped: the bay must not say safe."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, rec = _verified_on_camera(tmp_path)
    monkeypatch.setattr(os, "fsync", _failing_dir_fsync(errno.EIO))
    with pytest.raises(DeviceGoneError, match="not confirmed"):
        wipe_mod.wipe(cam, [rec], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=_samples(cam, [rec]))
    assert ledger.get(rec.id).state == RecState.VERIFIED
    assert "wipe.done" not in [e["event"] for e in ledger.events(limit=100)]
    monkeypatch.undo()

    # the same for the filesystem sync that follows the directory fsyncs
    cam2, ledger2, rec2 = _verified_on_camera(tmp_path / "b")
    synced_while: list[RecState] = []

    def failing_syncfs(path):
        synced_while.append(ledger2.get(rec2.id).state)
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    monkeypatch.setattr(wipe_mod, "syncfs", failing_syncfs)
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam2, [rec2], ledger2, dlog.get(), root_dev=os.stat(cam2).st_dev, samples=_samples(cam2, [rec2]))
    assert synced_while == [RecState.VERIFIED]          # synced before anything is confirmed
    assert ledger2.get(rec2.id).state == RecState.VERIFIED
    monkeypatch.undo()

    # docked again: the file is already gone, and that counts as wiped (idempotent)
    res = wipe_mod.wipe(cam2, [rec2], ledger2, dlog.get(), root_dev=os.stat(cam2).st_dev, samples=_samples(cam2, [rec2]))
    assert [r.id for r in res.wiped] == [rec2.id] and ledger2.get(rec2.id).state == RecState.WIPED


def test_deletions_a_failed_flush_left_unconfirmed_are_confirmed_at_the_next_dock(
        make_cfg, camera, tmp_path, monkeypatch):
    """The camera took the unlinks but failed the flush: nothing was confirmed and the
    bay was not safe. Docked again, the scan no longer finds those files; the next
    session finds them absent from the camera, records them wiped and lists them in
    its manifest, instead of leaving them verified for ever."""
    import errno
    import json as json_

    real = os.fsync
    cam_prefix = os.path.realpath(camera)

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(cam_prefix):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    cfg = make_cfg()
    monkeypatch.setattr(os, "fsync", fsync)
    out1, recs1, events1, _ = ingest(cfg, camera)
    monkeypatch.undo()
    assert out1.phase == Phase.INTERRUPTED and not out1.ok
    recordings = {r.id for r in recs1 if r.state == RecState.VERIFIED}
    assert recordings and out1.wiped == 0
    assert "wipe.done" not in [e["event"] for e in events1]
    assert not any(n.endswith(RECORDING_EXTS) for n in files(camera))    # the unlinks did land

    out2, recs2, events2, _ = ingest(cfg, camera)
    assert out2.ok
    assert {r.id for r in recs2 if r.state == RecState.WIPED} >= recordings
    assert not [r for r in recs2 if r.state == RecState.VERIFIED]
    done = [e for e in events2 if e["event"] == "wipe.done" and e["recording_id"] in recordings]
    assert len(done) == len(recordings)
    manifests = sorted((tmp_path / "store").rglob("*.manifest.json"))
    assert manifests, "the second session stores a manifest"
    items = json_.loads(manifests[-1].read_text())["recordings"]
    listed = {r["object_key"] for r in items}
    assert {r.object_key for r in recs2 if r.id in recordings} <= listed
    # and says where each came from: it was not on the camera at this dock
    ours = {r.object_key for r in recs2 if r.id in recordings}
    for item in items:
        if item["object_key"] in ours:
            assert item["note"] == (f"not on the camera at this dock: the wipe of session {out1.session_id} "
                                    "deleted it and could not confirm the deletion")
        else:
            assert "note" not in item


def _camera_eio_on_fsync(camera: Path, monkeypatch, then=None) -> None:
    """The camera's card fails its flushes (EIO), as a failing card does; ``then`` runs at the first."""
    import errno

    real = os.fsync
    cam_prefix = os.path.realpath(camera)

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(cam_prefix):
            if then is not None:
                then()
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _run_session(st: Station, docked: CameraDocked, **kw) -> tuple:
    """Start ``st``, run one session, close it: the outcome and the session's ledger row."""
    st.start()
    try:
        out = st.run_session(docked, **kw)
        return out, st.ledger.session(out.session_id)
    finally:
        st.close()


def test_a_camera_that_fails_in_its_bay_ends_in_attention_and_says_safe_to_undock(
        make_cfg, camera, monkeypatch, logs):
    """The card fails (EIO) while the camera stays docked: no undock follows. The bay
    must not say "interrupted" (not safe) until someone pulls it: the session ends in
    attention with the card's error, the camera is released, the ledger still has it
    docked, and nothing unproven is wiped. Docked again, it finishes."""
    from dockd.status import SAFE_PHASES
    _camera_eio_on_fsync(camera, monkeypatch)
    released = []
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.2))
    st.start()
    try:
        out = st.run_session(CameraDocked("BWC0001", "generic", camera), cancel=threading.Event(),
                             release=lambda: released.append(True))
        session = st.ledger.session(out.session_id)
        recs = st.ledger.recordings(serial="BWC0001")
        live = st.sessions.live("BWC0001")
        audit_events = st.ledger.events(limit=10000)
    finally:
        st.close()
    monkeypatch.undo()
    assert out.phase == Phase.ATTENTION and not out.ok and out.wiped == 0
    assert session["phase"] in SAFE_PHASES and live.safe_to_undock
    assert session["error"].startswith("camera failed: ") and "Input/output error" in session["error"]
    assert session["undocked_at"] is None                      # it is still in its bay
    assert released == [True]
    assert recs and all(r.state == RecState.VERIFIED for r in recs)
    lines = logs()
    failed = [e for e in lines if e["event"] == "session.camera_failed"]
    assert len(failed) == 1 and failed[0]["camera"] == "BWC0001"
    audit = [e for e in audit_events if e["event"] == "session.camera_failed"]   # the chain has it too
    assert len(audit) == 1 and audit[0]["serial"] == "BWC0001" and audit[0]["session_id"] == out.session_id
    assert [e["event"] for e in lines if e["event"].startswith("session.")][-1] == "session.attention"
    assert not [e for e in lines if e["event"] == "session.interrupted"]

    out2, recs2, _, _ = ingest(make_cfg(), camera)
    assert out2.ok and all(r.state == RecState.WIPED for r in recs2)


def test_a_camera_pulled_out_while_its_io_fails_is_interrupted(make_cfg, camera, monkeypatch):
    """A pull-out fails the camera's I/O a moment before the source reports the undock:
    when the undock follows within the grace, the session is interrupted, as before."""
    cancel = threading.Event()
    _camera_eio_on_fsync(camera, monkeypatch, then=lambda: threading.Timer(0.1, cancel.set).start())
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=30))
    st.start()
    try:
        t0 = time.monotonic()
        out = st.run_session(CameraDocked("BWC0001", "generic", camera), cancel=cancel)
        waited = time.monotonic() - t0
        session = st.ledger.session(out.session_id)
    finally:
        st.close()
    assert out.phase == Phase.INTERRUPTED and out.wiped == 0
    assert session["phase"] == "interrupted" and session["undocked_at"] is not None
    assert waited < 25                                         # it went on at the undock, not the grace's end


def test_a_camera_whose_device_node_is_gone_is_interrupted_without_its_undock_report(
        make_cfg, camera, monkeypatch):
    """The undock report is late (a busy udev), but the kernel has removed the camera's
    device node: it was pulled out, not failed in its bay."""
    _camera_eio_on_fsync(camera, monkeypatch)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.2))
    out, session = _run_session(st, CameraDocked("BWC0001", "generic", camera, device=str(camera.parent / "sdz1")), cancel=threading.Event())
    assert out.phase == Phase.INTERRUPTED and session["undocked_at"] is not None


def _dock_with_reads_failing(make_cfg, tmp_path, monkeypatch, serial: str, sizes: list[int], fails):
    """A camera of ``len(sizes)`` recordings whose reads fail with EIO where ``fails(path)``,
    docked with a cancel the test never sets (still in its bay), short graces. Returns
    (its files, the outcome, the session row, its recordings)."""
    import errno

    cam = tmp_path / "cams" / serial
    (cam / "DCIM").mkdir(parents=True)
    files = [cam / "DCIM" / f"V{i}.MP4" for i in range(len(sizes))]
    for f, n in zip(files, sizes):
        f.write_bytes(os.urandom(n))
    real_readv = os.readv

    def readv(fd, bufs):
        if fails(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_readv(fd, bufs)
    monkeypatch.setattr(os, "readv", readv)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.05, read_error=0.01))
    st.start()
    try:
        out = st.run_session(CameraDocked(serial, "generic", cam), cancel=threading.Event())
        return files, out, st.ledger.session(out.session_id), st.ledger.recordings(serial=serial)
    finally:
        st.close()
        monkeypatch.undo()


def test_one_unreadable_file_does_not_stop_the_rest_of_the_camera(make_cfg, tmp_path, monkeypatch):
    """A bad sector: one recording fails every read with EIO while the camera stays
    docked and answering. That recording is failed (and left on the camera); every
    other one is copied, verified and wiped. Before, the session ended at that file,
    and every later dock of the camera stopped at the same place."""
    files, out, _, recs = _dock_with_reads_failing(make_cfg, tmp_path, monkeypatch, "BAD1",
                                                   [30_000, 40_000, 50_000], lambda p: p.endswith("/V1.MP4"))
    bad = files[1]
    states = {r.name: r.state for r in recs}
    name = f"DCIM/{bad.name}"
    assert out.phase == Phase.ATTENTION and [n for n, _ in out.failed] == [name]
    assert states.pop(name) == RecState.FAILED and bad.exists()
    assert set(states.values()) == {RecState.WIPED} and len(states) == 2
    assert not any(f.exists() for f in files if f != bad)


def test_a_card_that_fails_every_read_is_a_failed_camera_not_a_list_of_bad_files(make_cfg, tmp_path,
                                                                                   monkeypatch):
    """Every file fails with EIO while the mount still answers (a FUSE helper lists from
    memory): after a few files in a row the camera itself is taken for failed, and the
    session ends as one that failed in its bay, not after a wait for every file."""

    files, out, session, recs = _dock_with_reads_failing(make_cfg, tmp_path, monkeypatch, "DEAD1",
                                                         [20_000] * 8, lambda p: True)
    assert out.phase == Phase.ATTENTION and session["error"].startswith("camera failed: ")
    assert [r.state for r in recs].count(RecState.FAILED) == Graces().max_unreadable_in_a_row - 1
    assert all(f.exists() for f in files)


def test_the_device_probe_reads_past_the_cache_and_tolerates_what_it_may_not_open(tmp_path):
    from dockd.session.camera import device_reads as _device_reads

    node = tmp_path / "node"
    node.write_bytes(b"\0" * 8192)
    assert _device_reads(str(node))                     # readable (O_DIRECT or not): answers
    assert not _device_reads(str(tmp_path / "gone"))     # no node: gone


def test_a_daemon_stopping_during_the_grace_is_not_an_undock(make_cfg, camera, monkeypatch):
    """The daemon stops (stopping, then every session's cancel) while a session waits to
    learn whether its camera left: the camera is still in its bay, so the session keeps
    the phase it reached and is not recorded undocked (the next start resumes it)."""
    cancel = threading.Event()
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=30))

    def stop() -> None:                     # what the daemon's shutdown does
        st.stopping = True
        cancel.set()

    _camera_eio_on_fsync(camera, monkeypatch, then=lambda: threading.Timer(0.2, stop).start())
    out, session = _run_session(st, CameraDocked("BWC0001", "generic", camera), cancel=cancel)
    assert session["undocked_at"] is None and session["phase"] == "wiping"
    assert session["error"] == STOPPED_ERROR


def test_a_camera_pulled_out_as_its_session_ends_is_recorded_undocked(make_cfg, camera):
    """The undock arrives while the session is finishing (storing its manifest): the
    daemon leaves a running session to record it, so the session's end does."""
    cancel = threading.Event()
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    real = st.publisher.publish

    def publish(*a, **k):
        cancel.set()                        # pulled out now
        return real(*a, **k)

    st.publisher.publish = publish
    out, session = _run_session(st, CameraDocked("BWC0001", "generic", camera), cancel=cancel)
    assert out.phase == Phase.DONE and session["undocked_at"] is not None


def _session_whose_ledger_refuses(make_cfg, camera, monkeypatch, refuses):
    """Run a session whose ledger fails (``refuses(phase, error)``) to record a phase; the
    error must reach the caller. Returns (release calls, live session, session row)."""
    released: list[bool] = []
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    real = st.ledger.set_phase

    def set_phase(sid, phase, **k):
        if refuses(phase, k.get("error") or ""):
            raise RuntimeError("disk I/O error")
        return real(sid, phase, **k)

    monkeypatch.setattr(st.ledger, "set_phase", set_phase)
    st.start()
    try:
        with pytest.raises(RuntimeError, match="disk I/O error"):
            st.run_session(CameraDocked("BWC0001", "generic", camera), release=lambda: released.append(True))
        live = st.sessions.live("BWC0001")
        return released, live, st.ledger.session(live.session_id)
    finally:
        st.close()


def test_a_session_whose_end_fails_still_releases_the_camera_and_says_safe(make_cfg, camera, monkeypatch):
    """Something fails after the wipe (here, marking the session done): the camera is
    released all the same, the bay says attention and safe, and the error reaches the
    caller."""
    released, live, session = _session_whose_ledger_refuses(
        make_cfg, camera, monkeypatch,
        lambda phase, error: phase in (Phase.DONE, Phase.ATTENTION) and "internal error" not in error)
    assert released == [True]                                  # once, though two steps asked
    assert live.safe_to_undock and live.phase == "attention" and "disk I/O error" in live.last_error
    assert session["phase"] == "attention"


def test_a_ledger_failing_as_the_camera_leaves_still_ends_safe(make_cfg, camera, monkeypatch):
    """The camera fails, and recording its interruption fails too (the ledger's disk):
    the session ends as any failure inside it does, attention, released, safe."""
    _camera_eio_on_fsync(camera, monkeypatch)
    released, live, _ = _session_whose_ledger_refuses(make_cfg, camera, monkeypatch,
                                                      lambda phase, error: phase == Phase.INTERRUPTED)
    assert released == [True] and live.safe_to_undock and live.phase == "attention"


def test_a_camera_failing_in_its_bay_with_its_device_node_present_ends_in_attention(
        make_cfg, camera, tmp_path, monkeypatch):
    """The device node is still there (the kernel has not removed the camera) and no
    undock came: the camera failed in its bay."""

    node = tmp_path / "sdz1"
    node.write_bytes(b"")
    _camera_eio_on_fsync(camera, monkeypatch)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.2))
    out, session = _run_session(st, CameraDocked("BWC0001", "generic", camera, device=str(node)), cancel=threading.Event())
    assert out.phase == Phase.ATTENTION and session["undocked_at"] is None
    assert session["error"].startswith("camera failed: ")


def test_a_manifest_that_cannot_be_written_to_the_spool_does_not_end_the_session(make_cfg, camera, monkeypatch,
                                                                                 logs):
    """A full spool disk while the manifest is written: the manifest fails (logged),
    the session still ends, releases its camera and says so."""
    import errno
    from pathlib import Path as P

    real = P.write_bytes

    def write_bytes(self, data):
        if self.name.startswith("manifest-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(P, "write_bytes", write_bytes)
    released = []
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    try:
        out = st.run_session(CameraDocked("BWC0001", "generic", camera), release=lambda: released.append(True))
    finally:
        st.close()
    assert out.phase == Phase.DONE and released == [True]
    assert [e for e in logs() if e["event"] == "manifest.failed"]


def test_the_note_names_the_session_whose_wipe_deleted_it_after_another_stops_short(
        make_cfg, camera, tmp_path, monkeypatch):
    """Session A's flush fails after its unlinks; session B finds the files absent but
    stops before its wipe confirms anything; session C confirms them. C's manifest must
    name A's wipe, not B's, which deleted nothing."""
    import json as json_
    from dockd.session import session as session_mod

    cfg = make_cfg()
    _camera_eio_on_fsync(camera, monkeypatch)
    out_a, recs_a, _, _ = ingest(cfg, camera)
    monkeypatch.undo()
    noted = {r.id for r in recs_a if r.state == RecState.VERIFIED}
    assert noted and out_a.phase == Phase.INTERRUPTED

    def wipe_stops_short(*a, **k):
        raise DeviceGoneError("camera gone during wipe: its mount point no longer holds it")

    monkeypatch.setattr(session_mod, "wipe", wipe_stops_short)
    out_b, recs_b, _, _ = ingest(cfg, camera)
    monkeypatch.undo()
    assert out_b.phase == Phase.INTERRUPTED
    assert {r.session_id for r in recs_b if r.id in noted} == {out_a.session_id}

    out_c, recs_c, _, _ = ingest(cfg, camera)
    assert out_c.ok and {r.id for r in recs_c if r.state == RecState.WIPED} >= noted
    assert {r.session_id for r in recs_c if r.id in noted} == {out_c.session_id}    # C took them
    items = json_.loads(sorted((tmp_path / "store").rglob("*.manifest.json"))[-1].read_text())["recordings"]
    keys = {r.object_key for r in recs_c if r.id in noted}
    notes = {i["note"] for i in items if i["object_key"] in keys}
    assert notes == {f"not on the camera at this dock: the wipe of session {out_a.session_id} deleted it "
                     "and could not confirm the deletion"}


def test_a_file_gone_from_the_camera_that_no_wipe_began_to_delete_stays_verified(
        make_cfg, camera, tmp_path, monkeypatch):
    """Only dockd's own deletions are confirmed at the next dock: a verified recording
    whose file vanished some other way (a camera formatted by hand) is not recorded as
    wiped, which would tell an auditor dockd deleted it."""
    from dockd.session import session as session_mod
    from dockd.pipeline.wipe import WipeResult

    cfg = make_cfg()
    monkeypatch.setattr(session_mod, "wipe", lambda *a, **k: WipeResult())     # no wipe at all
    out1, recs1, _e, _c = ingest(cfg, camera)
    monkeypatch.undo()
    verified = {r.id for r in recs1 if r.state == RecState.VERIFIED}
    assert verified
    for p in list(camera.rglob("*")):
        if p.is_file() and p.name.upper().endswith(RECORDING_EXTS):
            p.unlink()                                  # formatted by hand
    out2, recs2, events2, _ = ingest(cfg, camera)
    assert {r.id for r in recs2 if r.state == RecState.VERIFIED} == verified
    assert not [e for e in events2 if e["event"] == "wipe.done" and e["recording_id"] in verified]


def test_an_unreadable_path_is_not_taken_for_a_deletion(make_cfg, camera, tmp_path, monkeypatch):
    """Absence is proven by ENOENT alone: a directory failing with EIO hides nothing
    that may be recorded as wiped (and interrupts no session)."""
    import errno
    from dockd.device.events import CameraDocked as Docked

    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        sid = st.ledger.open_session("CAMX", "generic", str(camera), None, None, {})
        rec = _verify(st.ledger, sid, b"DCIM/GONE.MP4", 5, 1)
        st.ledger.mark_wipe_started([rec.id])
        ev = Docked("CAMX", "generic", camera)
        monkeypatch.setattr(os, "lstat", _failing_for(os.lstat, "GONE.MP4", errno.EIO))
        assert deleted_unconfirmed(st.ledger, ev, {}) == {}
        monkeypatch.undo()
        got = deleted_unconfirmed(st.ledger, ev, {})          # really absent: ENOENT
        assert got == {rec.id: sid}                         # with the session whose wipe noted it
    finally:
        st.close()


def test_a_file_a_later_dock_still_finds_is_no_longer_noted_for_deletion(make_cfg, camera):
    """A wipe noted a file, but its unlink never reached the card: the next dock's scan
    finds it. That note is withdrawn there, so if the file later vanishes some other
    way, dockd does not record it wiped, nor name a session that did not delete it."""
    from dockd.device.events import CameraDocked as Docked

    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        a = st.ledger.open_session("CAMX", "generic", str(camera), None, None, {})
        rec = _verify(st.ledger, a, b"DCIM/KEPT.MP4", 5, 1)
        st.ledger.mark_wipe_started([rec.id])                  # session A's wipe, cut short
        assert [r.id for r in st.ledger.unconfirmed_wipes("CAMX")] == [rec.id]
        b = st.ledger.open_session("CAMX", "generic", str(camera), None, None, {})
        st.ledger.upsert_found("CAMX", b, "generic", b"DCIM/KEPT.MP4", 5, 1, "recording")   # B sees it
        assert st.ledger.unconfirmed_wipes("CAMX") == []
        st.ledger.open_session("CAMX", "generic", str(camera), None, None, {})
        assert deleted_unconfirmed(st.ledger, Docked("CAMX", "generic", camera), {}) == {}   # gone since: not ours
        assert st.ledger.get(rec.id).state == RecState.VERIFIED
    finally:
        st.close()


def test_wipe_after_spooled_does_not_hold_the_camera_for_refused_credentials(make_cfg, camera, tmp_path,
                                                                            monkeypatch):
    """With ``wipe.after = "spooled"`` a camera is done once its recordings are safe in
    the spool; a store refusing our credentials (the daemon waits for it to come back)
    must not keep the bay busy."""
    class Refusing(ScriptedStore):
        def list(self, prefix):          # the pool's probe for restored credentials: refused too
            raise StoreAuthError("refused")

    cfg = make_cfg(wipe=WipeConfig(after="spooled"))
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=True,
                 backend=Refusing(tmp_path / "store", always=lambda: StoreAuthError("refused")))
    from dockd.pipeline import upload as upload_mod

    monkeypatch.setattr(upload_mod, "AUTH_PROBE_SECONDS", 0.05)   # the timer re-queues them at once
    from dockd.session.session import Session

    real_wait = Session.settle

    def wait_once_requeued(*a, **k):
        # the state a longer session meets: its recordings back in the queue behind the pause
        deadline = time.monotonic() + 10
        while not (st.uploader.paused and st.uploader.busy_ids()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert st.uploader.paused and st.uploader.busy_ids()
        return real_wait(*a, **k)

    monkeypatch.setattr(Session, "settle", wait_once_requeued)
    done: list = []
    try:
        st.start()
        t = threading.Thread(target=lambda: done.append(st.run_session(CameraDocked("BWC0001", "generic", camera))),
                             daemon=True)
        t.start()
        t.join(30)
        assert done, "the session still holds the camera"
        assert done[0].phase in (Phase.DONE, Phase.ATTENTION)
        assert all(r.is_durable for r in st.ledger.recordings(serial="BWC0001") if r.role == "recording")
    finally:
        st.close()


def test_a_wipe_notes_only_the_files_it_deletes(tmp_path, monkeypatch):
    """The note a later dock relies on covers exactly the deletions made: not a file
    refused (changed since it was copied), not one whose unlink failed (a card turned
    read-only), not one still listed after its unlink."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, gone = _verified_on_camera(tmp_path)
    recs = [gone]
    for name, change in ((b"DCIM/CHANGED.MP4", True), (b"DCIM/RO.MP4", False)):
        f = cam / os.fsdecode(name)
        f.write_bytes(b"x" * 7)
        st_ = f.stat()
        recs.append(_verify(ledger, gone.session_id, name, st_.st_size, st_.st_mtime_ns, os.fsdecode(name)))
        if change:
            f.write_bytes(b"rewritten by the camera")
    monkeypatch.setattr(os, "unlink", _failing_for(os.unlink, "RO.MP4", errno.EROFS))
    res = wipe_mod.wipe(cam, recs, ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=_samples(cam, recs))
    assert [r.id for r in res.wiped] == [gone.id]
    assert [r.id for r, _ in res.refused] == [recs[1].id] and [r.id for r, _ in res.failed] == [recs[2].id]
    assert ledger.unconfirmed_wipes("CAMX") == []          # neither is taken for a deletion later


def test_a_wipe_cut_short_notes_only_the_unlinks_it_tried(tmp_path, monkeypatch):
    """The camera leaves in the middle of the unlinks: the files after that point were
    never touched, and their notes are withdrawn. Only the files already unlinked, and
    the one whose unlink failed with the camera (it may have landed), stay noted for
    the next dock to confirm; a camera formatted by hand before then does not have the
    untouched files recorded wiped."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, first = _verified_on_camera(tmp_path)
    recs = [first]
    for n in range(2, 5):
        f = cam / "DCIM" / f"F{n}.MP4"
        f.write_bytes(b"y" * n)
        st_ = f.stat()
        recs.append(_verify(ledger, first.session_id, f"DCIM/F{n}.MP4".encode(), st_.st_size, st_.st_mtime_ns,
                            f"k{n}"))
    order = [r.id for r in sorted(recs, key=lambda r: r.role != "sidecar")]
    monkeypatch.setattr(os, "unlink", _failing_for(os.unlink, "F3.MP4", errno.ENOTCONN))
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam, recs, ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=_samples(cam, recs))
    by_id = {r.id: r for r in recs}
    cut = order.index(next(r.id for r in recs if r.name.endswith("F3.MP4")))
    noted = {r.id for r in ledger.unconfirmed_wipes("CAMX")}
    assert noted == set(order[:cut + 1]), [by_id[i].name for i in noted]
    assert all(ledger.get(i).state == RecState.VERIFIED for i in order)


def test_a_failed_flush_withdraws_the_notes_of_unlinks_that_were_refused(tmp_path, monkeypatch):
    """One unlink is refused (EACCES), the others land, then the camera fails its flush:
    only the deletions made stay noted for the next dock."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, first = _verified_on_camera(tmp_path)
    f = cam / "DCIM" / "F2.MP4"
    f.write_bytes(b"yy")
    st_ = f.stat()
    second = _verify(ledger, first.session_id, b"DCIM/F2.MP4", st_.st_size, st_.st_mtime_ns, "k2")
    monkeypatch.setattr(os, "unlink", _failing_for(os.unlink, "F2.MP4", errno.EACCES))
    monkeypatch.setattr(wipe_mod, "syncfs", lambda _root: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam, [first, second], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=_samples(cam, [first, second]))
    assert [r.id for r in ledger.unconfirmed_wipes("CAMX")] == [first.id]


def test_an_unlink_on_a_mount_point_that_lost_its_camera_withdraws_its_note(tmp_path, monkeypatch):
    """The unlink answers ENOENT because the mount point no longer holds the camera:
    that unlink reached nothing, so its note goes with those never tried."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, first = _verified_on_camera(tmp_path)
    real_stat = os.stat
    swapped: list[bool] = []

    def unlink(path, *a, **k):
        swapped.append(True)
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    def stat_(path, *a, **k):
        st = real_stat(path, *a, **k)
        if swapped and os.fsencode(path) == os.fsencode(cam):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *tuple(st)[3:]))
        return st

    root_dev = os.stat(cam).st_dev
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "stat", stat_)
    with pytest.raises(DeviceGoneError, match="no longer holds it"):
        wipe_mod.wipe(cam, [first], ledger, dlog.get(), root_dev=root_dev, samples=_samples(cam, [first]))
    monkeypatch.undo()
    assert ledger.unconfirmed_wipes("CAMX") == []


def test_a_session_that_fails_inside_shows_attention_not_its_last_phase(make_cfg, camera, monkeypatch):
    """A bug (or a ledger that cannot be written) ends the session: the bay must say a
    human must look, not show "wiping" until the camera is pulled, and the error
    still reaches the caller (the daemon logs it as session.crashed)."""
    from dockd.session import session as session_mod

    def broken_wipe(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(session_mod, "wipe", broken_wipe)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        with pytest.raises(RuntimeError, match="boom"):
            st.run_session(CameraDocked("BWC0001", "generic", camera))
        live = st.sessions.live("BWC0001")
        assert live.phase == Phase.ATTENTION.value and live.safe_to_undock and "boom" in live.last_error
        session = st.ledger.session(live.session_id)
        assert session["phase"] == Phase.ATTENTION.value and "boom" in session["error"]
        assert len(files(camera)) == 8                  # nothing was wiped
    finally:
        st.close()


def test_wipe_goes_on_where_a_filesystem_refuses_to_fsync_a_directory(tmp_path, monkeypatch):
    """Some FUSE filesystems answer EINVAL to a directory fsync: the syncfs that
    follows makes the deletions durable, and the wipe is confirmed."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, rec = _verified_on_camera(tmp_path)
    monkeypatch.setattr(os, "fsync", _failing_dir_fsync(errno.EINVAL))
    synced: list[str] = []
    real_syncfs = wipe_mod.syncfs
    monkeypatch.setattr(wipe_mod, "syncfs", lambda p: (synced.append(str(p)), real_syncfs(p)))
    res = wipe_mod.wipe(cam, [rec], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=_samples(cam, [rec]))
    assert [r.id for r in res.wiped] == [rec.id] and ledger.get(rec.id).state == RecState.WIPED
    assert synced == [str(cam)] and not (cam / "DCIM" / "A.MP4").exists()


def test_a_recording_stays_until_all_its_sidecars_are_verified(make_cfg, camera, tmp_path):
    """Never leave a sidecar orphaned: the next scan would not see it as ours."""
    from dockd.errors import PermanentStoreError

    class FailXml(ScriptedStore):
        def put(self, key, blob, checkpoint):
            if "VID_20261120_0701.XML" in key:
                raise PermanentStoreError("refused")
            super().put(key, blob, checkpoint)

    out, recs, _e, _c = ingest(make_cfg(), camera, backend=FailXml(tmp_path / "store"))
    assert not out.ok
    left = set(files(camera))
    assert {"DCIM/100BWC/VID_20261120_0701.MP4", "DCIM/100BWC/VID_20261120_0701.XML"} <= left
    state = {r.name: r.state for r in recs}
    assert state["DCIM/100BWC/VID_20261120_0701.MP4"] == RecState.VERIFIED   # safe, but kept with its sidecar
    assert state["DCIM/100BWC/VID_20261120_1133.MP4"] == RecState.WIPED


def test_a_fresh_spool_goes_straight_to_put_and_a_resumed_one_asks_first(make_cfg, camera, tmp_path):
    """Just spooled, a recording cannot be at the store: no "already there?" round trip
    before its first put (one request per photo on S3). One resumed after a restart
    may already be there (a crash after the put), so it asks first."""
    cam2 = tmp_path / "cams" / "BWC0002"
    shutil.copytree(camera, cam2)
    store = ScriptedStore(tmp_path / "store")
    out, recs, _e, _c = ingest(make_cfg(), camera, backend=store)
    assert out.ok
    verified = [k for k in store.verified if ".manifest.json" not in k]
    assert sorted(verified) == sorted(r.object_key for r in recs)    # the proof only
    assert all(store.blobs[r.object_key].new for r in recs)         # and the store need not look

    refused = ScriptedStore(tmp_path / "store2", always=lambda: PermanentStoreError("x"))
    cfg = make_cfg(wipe=WipeConfig(after="spooled"), store=StoreConfig(url=f"file://{tmp_path / 'store2'}"))
    _o, recs2, _e, _c = ingest(cfg, cam2, backend=refused, serial="BWC0002")
    healthy = ScriptedStore(tmp_path / "store2")
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=healthy, patient=False)
    st.start()                                          # resumes the spooled recordings
    st.uploader.wait_idle([r.id for r in recs2], timeout=30)
    st.close()
    for r in recs2:
        assert healthy.verified.count(r.object_key) == 2, (r.name, healthy.verified)   # asked, then proved
        assert healthy.blobs[r.object_key].new is False     # resumed: its put looks first too



def test_spool_order_puts_evidential_footage_before_everything():
    def rec(i: int, mtime: int, flagged: bool = False) -> Recording:
        return Recording(id=i, serial="A", rel_path=f"{i}".encode(), size=10, mtime_ns=mtime, role="recording",
                         state=RecState.FOUND, flagged=flagged)

    recs = [rec(1, 1), rec(2, 0), rec(3, 9, flagged=True), rec(4, 8, flagged=True), rec(5, 3)]
    assert [r.id for r in sorted(recs, key=spool_order)] == [4, 3, 2, 1, 5]


def _camera_with_a_dir_failing_to_list(tmp_path, monkeypatch, err: int, on_fail=None) -> tuple[Path, Path, Path]:
    """A camera of two recordings in sibling directories (one with a control character in
    its name); listing the second fails with ``err`` (after ``on_fail()``). Returns (the
    camera, the readable recording, the unlisted one)."""

    cam = tmp_path / "cams" / "DIR1"
    good, bad = cam / "DCIM" / "100BWC" / "A.MP4", cam / "DCIM" / "101\x1b[2JBWC" / "B.MP4"
    for f in (good, bad):
        f.parent.mkdir(parents=True)
        f.write_bytes(os.urandom(20_000))
    real = os.scandir

    def scandir(path):
        if os.fsencode(path) == os.fsencode(bad.parent):
            if on_fail is not None:
                on_fail()
            raise OSError(err, os.strerror(err))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return cam, good, bad


@pytest.mark.parametrize("err", ["EIO", "EACCES"])
def test_a_directory_that_cannot_be_listed_ends_in_attention_naming_it(make_cfg, tmp_path, monkeypatch,
                                                                        logs, err):
    """A directory the camera cannot list (a bad cluster: EIO while the camera still
    answers, or any other error) hides recordings that were never copied: the session is
    not done. It ends in attention, its error names the directory (escaped), what could
    be read is copied, verified and wiped, and the camera is released. Before, the
    directory was skipped and the session ended done: safe to undock, its files never
    copied."""
    import errno

    cam, good, bad = _camera_with_a_dir_failing_to_list(tmp_path, monkeypatch, getattr(errno, err))
    released = []
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(read_error=0.01))
    out, session = _run_session(st, CameraDocked("DIR1", "generic", cam), cancel=threading.Event(),
                                release=lambda: released.append(True))
    monkeypatch.undo()
    shown = "DCIM/101\\x1b[2JBWC"
    assert out.phase == Phase.ATTENTION and not out.ok
    assert out.unlisted == [(shown, os.strerror(getattr(errno, err)))]
    assert session["phase"] == "attention" and shown in session["error"] and "\x1b" not in session["error"]
    assert "could not be listed" in session["error"]
    assert out.wiped == 1 and not good.exists() and bad.exists()
    assert released == [True] and st.sessions.live("DIR1").safe_to_undock
    assert [e["path"] for e in logs() if e["event"] == "scan.unlisted"] == [shown]


def test_a_directory_that_fails_to_list_as_the_camera_leaves_is_the_camera_gone(make_cfg, tmp_path,
                                                                                 monkeypatch):
    """A listing that fails because the camera went (its mount point emptied) is not a
    bad directory: the session is interrupted, and names no directory."""
    import errno

    gone = tmp_path / "gone"
    cam, good, _bad = _camera_with_a_dir_failing_to_list(
        tmp_path, monkeypatch, errno.ENOTCONN, on_fail=lambda: os.rename(tmp_path / "cams" / "DIR1", gone))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(read_error=0.01))
    out, session = _run_session(st, CameraDocked("DIR1", "generic", cam))
    monkeypatch.undo()
    assert out.phase == Phase.INTERRUPTED and out.unlisted == [] and out.wiped == 0
    assert "cannot list" in session["error"] and (gone / good.relative_to(cam)).exists()
