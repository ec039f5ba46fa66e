"""Spool backpressure on a real, small filesystem: a 64 MiB ext4 image on a loop device.

The camera holds more than the spool can: spooling must pause at the
watermark (``spool.pressure``), uploads must drain the spool, and in the end
every recording is verified and wiped: nothing lost, nothing half-copied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


@pytest.fixture
def small_fs(tmp_path: Path):
    why = _why_not()
    if why:
        pytest.skip(why)
    img, mnt = tmp_path / "spool.img", tmp_path / "spoolfs"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


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
