"""One docked camera's session at its edges: a camera pulled out, failing in its bay or
unreadable in part; a ledger that fails; the daemon stopping; directories that do not list."""


from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dockd.config import WipeConfig
from dockd.device.events import CameraDocked
from dockd.session.camera import Graces
from dockd.session.session import STOPPED_ERROR, spool_order
from dockd.station import Station
from dockd.errors import PermanentStoreError, StoreAuthError
from dockd.model import Phase, RecState, Recording
from dockd.store.retry import RetryPolicy


from fakes import ScriptedStore, pull_out_when

from sessionkit import (camera_eio_on_fsync, files, ingest, run_session)


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


def test_a_camera_that_fails_in_its_bay_ends_in_attention_and_says_safe_to_undock(
        make_cfg, camera, monkeypatch, logs):
    """The card fails (EIO) while the camera stays docked: no undock follows. The bay
    must not say "interrupted" (not safe) until someone pulls it: the session ends in
    attention with the card's error, the camera is released, the ledger still has it
    docked, and nothing unproven is wiped. Docked again, it finishes."""
    from dockd.status import SAFE_PHASES
    camera_eio_on_fsync(camera, monkeypatch)
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
    camera_eio_on_fsync(camera, monkeypatch, then=lambda: threading.Timer(0.1, cancel.set).start())
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
    camera_eio_on_fsync(camera, monkeypatch)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.2))
    out, session = run_session(st, CameraDocked("BWC0001", "generic", camera, device=str(camera.parent / "sdz1")), cancel=threading.Event())
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

    camera_eio_on_fsync(camera, monkeypatch, then=lambda: threading.Timer(0.2, stop).start())
    out, session = run_session(st, CameraDocked("BWC0001", "generic", camera), cancel=cancel)
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
    out, session = run_session(st, CameraDocked("BWC0001", "generic", camera), cancel=cancel)
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
    camera_eio_on_fsync(camera, monkeypatch)
    released, live, _ = _session_whose_ledger_refuses(make_cfg, camera, monkeypatch,
                                                      lambda phase, error: phase == Phase.INTERRUPTED)
    assert released == [True] and live.safe_to_undock and live.phase == "attention"


def test_a_camera_failing_in_its_bay_with_its_device_node_present_ends_in_attention(
        make_cfg, camera, tmp_path, monkeypatch):
    """The device node is still there (the kernel has not removed the camera) and no
    undock came: the camera failed in its bay."""

    node = tmp_path / "sdz1"
    node.write_bytes(b"")
    camera_eio_on_fsync(camera, monkeypatch)
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False, graces=Graces(undock=0.2))
    out, session = run_session(st, CameraDocked("BWC0001", "generic", camera, device=str(node)), cancel=threading.Event())
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


def test_a_recording_stays_until_all_its_sidecars_are_verified(make_cfg, camera, tmp_path):
    """Never leave a sidecar orphaned: the next scan would not see it as ours."""

    class FailXml(ScriptedStore):
        def scripted_error(self, item):
            if "VID_20261120_0701.XML" in item.key:
                return PermanentStoreError("refused")
            return super().scripted_error(item)

    out, recs, _e, _c = ingest(make_cfg(), camera, backend=FailXml(tmp_path / "store"))
    assert not out.ok
    left = set(files(camera))
    assert {"DCIM/100BWC/VID_20261120_0701.MP4", "DCIM/100BWC/VID_20261120_0701.XML"} <= left
    state = {r.name: r.state for r in recs}
    assert state["DCIM/100BWC/VID_20261120_0701.MP4"] == RecState.VERIFIED   # safe, but kept with its sidecar
    assert state["DCIM/100BWC/VID_20261120_1133.MP4"] == RecState.WIPED


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
    out, session = run_session(st, CameraDocked("DIR1", "generic", cam), cancel=threading.Event(),
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
    out, session = run_session(st, CameraDocked("DIR1", "generic", cam))
    monkeypatch.undo()
    assert out.phase == Phase.INTERRUPTED and out.unlisted == [] and out.wiped == 0
    assert "cannot list" in session["error"] and (gone / good.relative_to(cam)).exists()
