"""The inbox source under a real ``dockd run``, as an automounter feeds it: the camera's
directory is made first, and the camera (exFAT through mount.exfat-fuse on a loop
device) is mounted on it a moment later."""

from __future__ import annotations

import time

import pytest

import loopcam
from dockd import config as config_mod
from dockd.ledger import Ledger
from dockd.model import RecState

from notify import DaemonProcess, NotifySocket, write_config

REASON = loopcam.skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

FILES = {"DCIM/100BWC/CLIP0001.MP4": 400_000, "DCIM/100BWC/CLIP0001.XML": b"<x/>",
         "DCIM/100BWC/CLIP0002.MP4": 250_000}


def test_a_camera_mounted_on_an_inbox_directory_made_a_moment_before_is_ingested(tmp_path, identity):
    image = loopcam.make_camera_image(tmp_path / "cam.img", FILES, label=loopcam.unique_label())
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    cfg = config_mod.load(cfg_path)
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    target = tmp_path / "inbox" / "CAM6"
    try:
        with loopcam.LoopCamera(image) as cam:
            assert cam.dev
            sock.wait_for(lambda m: m.get("READY") == "1", 30)
            target.mkdir()
            time.sleep(2.5)          # the automounter's moment: the daemon polls about once a second
            assert not d.events("device.docked"), "an empty directory was taken for a camera"
            loopcam.run("mount.exfat-fuse", "-o", "nosuid,nodev,noexec", cam.dev, str(target))
            try:
                done = d.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM6")
                assert done[0]["recordings"] == 3
                assert sorted(p.name for p in (target / "DCIM/100BWC").iterdir()) == []
            finally:
                loopcam.run("fusermount", "-u", str(target), check=False)
            # the automounter unmounts it and leaves the directory: the camera has left
            d.wait_event("device.undocked", 15, where=lambda e: e.get("camera") == "CAM6")
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    assert [e["camera"] for e in d.events("device.docked")] == ["CAM6"]
    led = Ledger(cfg.ledger_path)
    try:
        recs = led.recordings(serial="CAM6")
        assert {r.name: r.state for r in recs} == {n: RecState.WIPED for n in FILES}
        assert led.sessions(limit=1)[0]["undocked_at"] is not None
    finally:
        led.close()
    assert len(list((tmp_path / "store").rglob("*.age"))) == 3
