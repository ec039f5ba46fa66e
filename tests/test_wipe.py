"""The wipe: deletes what is verified and only that, notes what it deletes before the
first unlink, confirms nothing a failed flush could undo, and what a later dock confirms."""


from __future__ import annotations

import os

import pytest

from dockd.session.session import deleted_unconfirmed
from dockd.station import Station
from dockd.errors import DeviceGoneError
from dockd.model import Phase, RecState
from dockd.store.retry import RetryPolicy



from sessionkit import (RECORDING_EXTS, camera_eio_on_fsync, failing_dir_fsync, failing_for, files, ingest, samples, verified_on_camera, verify_rec)


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
        wipe(empty_mount_point, [rec], ledger, dlog.get(), root_dev=scanned_dev, samples=samples(empty_mount_point, [rec]))
    assert ledger.get(rec.id).state == RecState.VERIFIED
    # on the camera itself, an absent verified file is wiped (idempotent after a crash)
    res = wipe(empty_mount_point, [rec], ledger, dlog.get(), root_dev=os.stat(empty_mount_point).st_dev, samples=samples(empty_mount_point, [rec]))
    assert [r.id for r in res.wiped] == [rec.id] and ledger.get(rec.id).state == RecState.WIPED


def test_wipe_confirms_nothing_when_the_camera_fails_its_flush(tmp_path, monkeypatch):
    """A deletion the camera did not make durable (its media failing, or pulled out
    during the flush) is not recorded as wiped: the bay must not say safe."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, rec = verified_on_camera(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_dir_fsync(errno.EIO))
    with pytest.raises(DeviceGoneError, match="not confirmed"):
        wipe_mod.wipe(cam, [rec], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=samples(cam, [rec]))
    assert ledger.get(rec.id).state == RecState.VERIFIED
    assert "wipe.done" not in [e["event"] for e in ledger.events(limit=100)]
    monkeypatch.undo()

    # the same for the filesystem sync that follows the directory fsyncs
    cam2, ledger2, rec2 = verified_on_camera(tmp_path / "b")
    synced_while: list[RecState] = []

    def failing_syncfs(path):
        synced_while.append(ledger2.get(rec2.id).state)
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    monkeypatch.setattr(wipe_mod, "syncfs", failing_syncfs)
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam2, [rec2], ledger2, dlog.get(), root_dev=os.stat(cam2).st_dev, samples=samples(cam2, [rec2]))
    assert synced_while == [RecState.VERIFIED]          # synced before anything is confirmed
    assert ledger2.get(rec2.id).state == RecState.VERIFIED
    monkeypatch.undo()

    # docked again: the file is already gone, and that counts as wiped (idempotent)
    res = wipe_mod.wipe(cam2, [rec2], ledger2, dlog.get(), root_dev=os.stat(cam2).st_dev, samples=samples(cam2, [rec2]))
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


def test_the_note_names_the_session_whose_wipe_deleted_it_after_another_stops_short(
        make_cfg, camera, tmp_path, monkeypatch):
    """Session A's flush fails after its unlinks; session B finds the files absent but
    stops before its wipe confirms anything; session C confirms them. C's manifest must
    name A's wipe, not B's, which deleted nothing."""
    import json as json_
    from dockd.session import session as session_mod

    cfg = make_cfg()
    camera_eio_on_fsync(camera, monkeypatch)
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
        rec = verify_rec(st.ledger, sid, b"DCIM/GONE.MP4", 5, 1)
        st.ledger.mark_wipe_started([rec.id])
        ev = Docked("CAMX", "generic", camera)
        monkeypatch.setattr(os, "lstat", failing_for(os.lstat, "GONE.MP4", errno.EIO))
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
        rec = verify_rec(st.ledger, a, b"DCIM/KEPT.MP4", 5, 1)
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


def test_a_wipe_notes_only_the_files_it_deletes(tmp_path, monkeypatch):
    """The note a later dock relies on covers exactly the deletions made: not a file
    refused (changed since it was copied), not one whose unlink failed (a card turned
    read-only), not one still listed after its unlink."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, gone = verified_on_camera(tmp_path)
    recs = [gone]
    for name, change in ((b"DCIM/CHANGED.MP4", True), (b"DCIM/RO.MP4", False)):
        f = cam / os.fsdecode(name)
        f.write_bytes(b"x" * 7)
        st_ = f.stat()
        recs.append(verify_rec(ledger, gone.session_id, name, st_.st_size, st_.st_mtime_ns, os.fsdecode(name)))
        if change:
            f.write_bytes(b"rewritten by the camera")
    monkeypatch.setattr(os, "unlink", failing_for(os.unlink, "RO.MP4", errno.EROFS))
    res = wipe_mod.wipe(cam, recs, ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=samples(cam, recs))
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

    cam, ledger, first = verified_on_camera(tmp_path)
    recs = [first]
    for n in range(2, 5):
        f = cam / "DCIM" / f"F{n}.MP4"
        f.write_bytes(b"y" * n)
        st_ = f.stat()
        recs.append(verify_rec(ledger, first.session_id, f"DCIM/F{n}.MP4".encode(), st_.st_size, st_.st_mtime_ns,
                            f"k{n}"))
    order = [r.id for r in sorted(recs, key=lambda r: r.role != "sidecar")]
    monkeypatch.setattr(os, "unlink", failing_for(os.unlink, "F3.MP4", errno.ENOTCONN))
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam, recs, ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=samples(cam, recs))
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

    cam, ledger, first = verified_on_camera(tmp_path)
    f = cam / "DCIM" / "F2.MP4"
    f.write_bytes(b"yy")
    st_ = f.stat()
    second = verify_rec(ledger, first.session_id, b"DCIM/F2.MP4", st_.st_size, st_.st_mtime_ns, "k2")
    monkeypatch.setattr(os, "unlink", failing_for(os.unlink, "F2.MP4", errno.EACCES))
    monkeypatch.setattr(wipe_mod, "syncfs", lambda _root: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(DeviceGoneError):
        wipe_mod.wipe(cam, [first, second], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=samples(cam, [first, second]))
    assert [r.id for r in ledger.unconfirmed_wipes("CAMX")] == [first.id]


def test_an_unlink_on_a_mount_point_that_lost_its_camera_withdraws_its_note(tmp_path, monkeypatch):
    """The unlink answers ENOENT because the mount point no longer holds the camera:
    that unlink reached nothing, so its note goes with those never tried."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, first = verified_on_camera(tmp_path)
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
        wipe_mod.wipe(cam, [first], ledger, dlog.get(), root_dev=root_dev, samples=samples(cam, [first]))
    monkeypatch.undo()
    assert ledger.unconfirmed_wipes("CAMX") == []


def test_wipe_goes_on_where_a_filesystem_refuses_to_fsync_a_directory(tmp_path, monkeypatch):
    """Some FUSE filesystems answer EINVAL to a directory fsync: the syncfs that
    follows makes the deletions durable, and the wipe is confirmed."""
    import errno
    from dockd.pipeline import wipe as wipe_mod
    from dockd import log as dlog

    cam, ledger, rec = verified_on_camera(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_dir_fsync(errno.EINVAL))
    synced: list[str] = []
    real_syncfs = wipe_mod.syncfs
    monkeypatch.setattr(wipe_mod, "syncfs", lambda p: (synced.append(str(p)), real_syncfs(p)))
    res = wipe_mod.wipe(cam, [rec], ledger, dlog.get(), root_dev=os.stat(cam).st_dev, samples=samples(cam, [rec]))
    assert [r.id for r in res.wiped] == [rec.id] and ledger.get(rec.id).state == RecState.WIPED
    assert synced == [str(cam)] and not (cam / "DCIM" / "A.MP4").exists()
