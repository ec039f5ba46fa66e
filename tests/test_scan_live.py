"""A camera directory that fails to list, for real: exFAT through mount.exfat-fuse on a
loop device, one directory's entry set spoiled so the helper answers EIO for it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

import loopcam
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.model import Phase
from dockd.store.retry import RetryPolicy

from notify import write_config

REASON = loopcam.skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

FILES = {"DCIM/100BWC/A.MP4": 200_000, "DCIM/100BWC/A.XML": b"<x/>",
         "DCIM/101BWC/BADCLIP1.MP4": 150_000, "DCIM/101BWC/BADCLIP2.MP4": 5_000}


@contextlib.contextmanager
def camera_with_a_bad_directory(tmp_path: Path) -> Iterator[tuple[loopcam.LoopCamera, Path]]:
    """The camera mounted read-write (as the udev source mounts it) at ``tmp_path/CAM5``,
    its DCIM/101BWC unlistable (EIO) while DCIM/100BWC lists fine."""
    image = loopcam.make_camera_image(tmp_path / "cam.img", FILES, label=loopcam.unique_label())
    loopcam.corrupt_entry_set(image, "BADCLIP1.MP4")
    mnt = tmp_path / "CAM5"
    mnt.mkdir()
    with loopcam.LoopCamera(image) as cam:
        assert cam.dev
        loopcam.run("mount.exfat-fuse", "-o", "nosuid,nodev,noexec", cam.dev, str(mnt))
        try:
            bad = loopcam.run("ls", str(mnt / "DCIM/101BWC"), check=False)
            assert bad.returncode != 0 and "Input/output error" in bad.stderr, bad
            assert loopcam.run("ls", str(mnt / "DCIM/100BWC")).stdout.split() == ["A.MP4", "A.XML"]
            yield cam, mnt
        finally:
            loopcam.run("fusermount", "-u", str(mnt), check=False)


def test_ingest_of_a_camera_with_an_unlistable_directory_exits_1_naming_it(tmp_path, identity):
    cfg = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    with camera_with_a_bad_directory(tmp_path) as (_cam, mnt):
        r = subprocess.run([sys.executable, "-m", "dockd", "--config", str(cfg), "ingest", "--no-progress",
                            str(mnt)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r
        assert "→ attention" in r.stdout and '"event": "scan.unlisted"' in r.stdout   # JSON logs: stdout
        assert "DCIM/101BWC/: directory could not be listed: Input/output error" in r.stderr
        # what could be read is copied, verified and wiped; nothing else is touched
        assert not (mnt / "DCIM/100BWC/A.MP4").exists() and not (mnt / "DCIM/100BWC/A.XML").exists()
    assert len(list((tmp_path / "store").rglob("*.age"))) == 2


def test_a_session_on_a_camera_with_an_unlistable_directory_ends_in_attention(make_cfg, tmp_path):
    released = []
    with camera_with_a_bad_directory(tmp_path) as (cam, mnt):
        st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
        st.start()
        try:
            out = st.run_session(CameraDocked("CAM5", "generic", mnt, device=cam.dev), cancel=threading.Event(),
                                 release=lambda: released.append(True))
            session = st.ledger.session(out.session_id)
            live = st.sessions.live("CAM5")
        finally:
            st.close()
        assert out.phase == Phase.ATTENTION and out.wiped == 2
        assert out.unlisted == [("DCIM/101BWC", "Input/output error")]
        assert "DCIM/101BWC" in session["error"] and not session["error"].startswith("camera failed")
        assert released == [True] and live.safe_to_undock
        assert not (mnt / "DCIM/100BWC/A.MP4").exists()
