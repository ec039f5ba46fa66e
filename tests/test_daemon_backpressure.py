"""Spool backpressure on a real, small filesystem: a 64 MiB ext4 image on a loop device.

The camera holds more than the spool can: spooling must pause at the
watermark (``spool.pressure``), uploads must drain the spool, and in the end
every recording is verified and wiped: nothing lost, nothing half-copied.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from dockd import config as config_mod
from dockd.ledger import Ledger
from dockd.model import RecState

from notify import DaemonProcess, NotifySocket, write_config

MiB = 1 << 20


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a loop device"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 (e2fsprogs) not installed"
    return None


@contextlib.contextmanager
def small_ext4(tmp_path: Path, name: str, mib: int) -> Iterator[Path]:
    """A real ext4 filesystem of ``mib`` MiB (no reserved blocks) on a loop device, mounted."""
    why = _why_not()
    if why:
        pytest.skip(why)
    img, mnt = tmp_path / f"{name}.img", tmp_path / name
    with open(img, "wb") as f:
        f.truncate(mib * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Other data on ``fs``: a file that leaves about ``leave`` bytes free."""
    filler = fs / "other-data"
    st = os.statvfs(fs)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, st.f_bavail * st.f_frsize - leave))
        os.fsync(f.fileno())
    return filler


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_ext4(tmp_path, "spoolfs", 64) as mnt:
        yield mnt


@pytest.mark.root
def test_full_spool_pauses_then_drains_and_loses_nothing(tmp_path, identity, small_fs):
    cam = tmp_path / "inbox" / "CAM1" / "DCIM"
    cam.mkdir(parents=True)
    names = [f"V{i:03d}.MP4" for i in range(8)]
    for n in names:                               # 8 x 12 MiB = 96 MiB > the whole spool filesystem
        (cam / n).write_bytes(os.urandom(12 * MiB))
    st = os.statvfs(small_fs)
    assert st.f_bavail * st.f_frsize < 64 * MiB
    extra = ("[spool]\nmin_free = \"24MiB\"\n"
             "[upload]\nconcurrency = 1\nrate_limit = \"40MiB\"\n")    # uploads slower than copying
    cfg_path = write_config(tmp_path, str(identity.public()), extra, spool_dir=small_fs / "spool")
    cfg = config_mod.load(cfg_path)
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        d.wait_event("session.done", 90, where=lambda e: e.get("camera") == "CAM1")
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    pressure = d.events("spool.pressure")
    assert pressure, "the spool never reached its watermark: the test proves nothing"
    assert all(e["free"] < 24 * MiB for e in pressure)
    assert d.events("spool.relieved")
    assert not d.events("recording.read_failed") and not d.events("session.attention")
    led = Ledger(cfg.ledger_path)
    try:
        recs = led.recordings(serial="CAM1")
        assert sorted(r.name for r in recs) == [f"DCIM/{n}" for n in names]
        assert {r.state for r in recs} == {RecState.WIPED}
    finally:
        led.close()
    assert list(cam.iterdir()) == []
    assert len(list((tmp_path / "store").rglob("*.age"))) == len(names)
    assert list((small_fs / "spool").glob("*.age")) == []


@pytest.mark.root
def test_a_spool_disk_full_of_other_data_ends_the_session_in_attention(tmp_path, identity):
    """The spool's disk is below min_free because of other data and the spool is empty: no
    upload of dockd's can free anything, so waiting would hold the bay at DO NOT UNDOCK for
    ever. After a short wait the recordings are left on the camera with an error naming the
    spool disk and min_free, the camera is released, the session ends in attention, and
    nothing is wiped."""
    cam = tmp_path / "inbox" / "CAM1" / "DCIM"
    cam.mkdir(parents=True)
    names = [f"V{i:03d}.MP4" for i in range(3)]
    for n in names:
        (cam / n).write_bytes(os.urandom(100_000))
    before = {p.name: p.read_bytes() for p in cam.iterdir()}
    with small_ext4(tmp_path, "spoolfs", 16) as fs:
        fill(fs, MiB)
        cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = \"4MiB\"\n",
                                spool_dir=fs / "spool")
        cfg = config_mod.load(cfg_path)
        sock = NotifySocket(tmp_path / "notify.sock")
        d = DaemonProcess(cfg_path, sock)
        try:
            d.wait_event("session.attention", 60, where=lambda e: e.get("camera") == "CAM1")
            rc, _ = d.terminate()
        finally:
            d.kill()
            sock.close()
        assert rc == 0
        assert d.events("spool.pressure")
        exhausted = d.events("spool.exhausted")
        assert sorted(e["recording"] for e in exhausted) == [f"DCIM/{n}" for n in names]
        assert all(str(fs / "spool") in e["error"] and "spool.min_free" in e["error"] for e in exhausted)
        assert d.events("device.released")
        assert not d.events("wipe.done") and not d.events("session.crashed")
        led = Ledger(cfg.ledger_path)
        try:
            recs = led.recordings(serial="CAM1")
            assert {r.state for r in recs} == {RecState.FAILED}
            assert all(r.spool_path is None and "spool.min_free" in (r.last_error or "") for r in recs)
        finally:
            led.close()
    assert {p.name: p.read_bytes() for p in cam.iterdir()} == before     # nothing wiped


@pytest.mark.root
def test_a_full_store_is_retried_with_backoff_and_recovers_once_space_is_freed(tmp_path, identity):
    """A file:// store on a filesystem full of other data (ENOSPC): uploads are rescheduled with
    the capped backoff and logged as a full store (never retried at once within a call, never
    given up on), and once space is freed the camera's recordings are verified and wiped with
    no re-dock and no restart."""
    cam = tmp_path / "inbox" / "CAM1" / "DCIM"
    cam.mkdir(parents=True)
    names = [f"V{i:03d}.MP4" for i in range(3)]
    for n in names:
        (cam / n).write_bytes(os.urandom(MiB))
    with small_ext4(tmp_path, "storefs", 16) as fs:
        (fs / "store").mkdir()
        filler = fill(fs, 256 << 10)
        extra = "[upload]\nattempts = 3\nbackoff_initial = 0.2\nbackoff_max = 1.5\n"
        cfg_path = write_config(tmp_path, str(identity.public()), extra, store=fs / "store")
        cfg = config_mod.load(cfg_path)
        sock = NotifySocket(tmp_path / "notify.sock")
        d = DaemonProcess(cfg_path, sock)
        try:
            d.wait_event("store.full", 60)
            d.wait_event("upload.failed", 30, count=2 * len(names))     # each rescheduled, again
            assert not d.events("session.attention") and not d.events("session.done")
            filler.unlink()
            d.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM1")
            rc, _ = d.terminate()
        finally:
            d.kill()
            sock.close()
        assert rc == 0
        failed = d.events("upload.failed")
        assert all("store is full" in e["error"] and e["next_attempt_in"] is not None for e in failed)
        assert len(d.events("store.full")) == 1
        assert not [e for e in d.events("upload.retry") if "full" in e["error"]]   # no retry within a call
        assert not d.events("upload.bug")
        stored = list((fs / "store").rglob("*.age"))
        assert len(stored) == len(names)
    led = Ledger(cfg.ledger_path)
    try:
        assert {r.state for r in led.recordings(serial="CAM1")} == {RecState.WIPED}
    finally:
        led.close()
    assert list(cam.iterdir()) == []
