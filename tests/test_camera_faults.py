"""A camera that fails like hardware (campaigns/fs/camera.py, a FUSE layer): a bad sector
met by the wipe's re-read, in one session of a real Station."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.model import Phase, RecState
from dockd.store.retry import RetryPolicy


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (apt: fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy unusable: {exc}"
    return None


REASON = _why_not()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _dock(make_cfg, tmp_path: Path, files: dict[str, bytes], rules: list[dict]) -> tuple:
    """Serve ``files`` through the faulty camera, dock it once (still in its bay): the
    outcome, the session row, the recordings by name, and what the card holds after."""
    from campaigns.fs.camera import fired, mounted

    card = tmp_path / "card" / "BAD2"
    for rel, data in files.items():
        (card / rel).parent.mkdir(parents=True, exist_ok=True)
        (card / rel).write_bytes(data)
    log = tmp_path / "fired.jsonl"
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    try:
        with mounted(card, tmp_path / "mnt" / "BAD2", {"log": str(log), "rules": rules}) as cam:
            out = st.run_session(CameraDocked("BAD2", "generic", cam), cancel=threading.Event())
        session = st.ledger.session(out.session_id)
        recs = {r.name: r for r in st.ledger.recordings(serial="BAD2")}
    finally:
        st.close()
    assert fired(log), "the fault never fired: the test proves nothing"
    left = {p.relative_to(card).as_posix() for p in card.rglob("*") if p.is_file()}
    return out, session, recs, left


def test_a_bad_sector_met_by_the_wipe_keeps_that_file_and_wipes_the_others(make_cfg, tmp_path):
    """The wipe's re-read of one file's head fails once with EIO (a bad sector; the copy
    had read it fine) while the card still answers. That file stays on the camera, the
    others are wiped, and the session ends in attention naming it. Before, the one EIO
    was taken for the whole camera failing: nothing was wiped, "camera failed"."""
    files = {f"DCIM/V{i}.MP4": os.urandom(30_000 + i) for i in range(3)}
    # skip 1: the copy's read of the head goes through; the wipe's is the one that fails
    out, session, recs, left = _dock(make_cfg, tmp_path, files,
                                     [{"op": "read", "path": "DCIM/V1.MP4", "kind": "eio", "at": 0,
                                       "skip": 1, "times": 1}])
    assert left == {"DCIM/V1.MP4"}
    assert out.phase == Phase.ATTENTION and {n for n, _ in out.failed} == {"DCIM/V1.MP4"}
    assert not session["error"].startswith("camera failed")
    assert recs["DCIM/V1.MP4"].state == RecState.VERIFIED
    assert {recs[n].state for n in ("DCIM/V0.MP4", "DCIM/V2.MP4")} == {RecState.WIPED}


def test_a_sidecar_the_wipe_cannot_read_keeps_its_recording(make_cfg, tmp_path):
    """The wipe cannot re-read a sidecar (EIO once, the card still answering): the sidecar
    stays, and so does its recording, or the next scan would no longer see the sidecar
    as ours and it would stay on the card for ever. Another recording is wiped."""
    files = {"DCIM/V1.MP4": os.urandom(30_000), "DCIM/V1.XML": b"<meta/>" * 50,
             "DCIM/V2.MP4": os.urandom(20_000)}
    out, session, recs, left = _dock(make_cfg, tmp_path, files,
                                     [{"op": "read", "path": "DCIM/V1.XML", "kind": "eio", "at": 0,
                                       "skip": 1, "times": 1}])
    assert left == {"DCIM/V1.MP4", "DCIM/V1.XML"}
    assert out.phase == Phase.ATTENTION
    assert {n for n, _ in out.failed} == {"DCIM/V1.MP4", "DCIM/V1.XML"}
    assert recs["DCIM/V2.MP4"].state == RecState.WIPED
    assert {recs[n].state for n in ("DCIM/V1.MP4", "DCIM/V1.XML")} == {RecState.VERIFIED}
