"""Device sources against the real thing: systemd-udevd, loop devices, exFAT through FUSE.

Each test uses its own udev tag and fs label (tests/loopcam.py), so concurrent
runs never dock each other's cameras.
"""

from __future__ import annotations

import errno
import queue
import time
from pathlib import Path

import pytest

import loopcam
from dockd.config import DevicesConfig
from dockd.device.events import CameraDocked, CameraUndocked
from dockd.device.kernel import KernelSource
from dockd.device.mount import current_mounts
from dockd.device.profiles import load_profiles
from dockd.device.udev import UdevSource

REASON = loopcam.skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

FILES = {"DCIM/100BWC/CLIP0001.MP4": 300_000, "DCIM/100BWC/CLIP0001.XML": b"<x/>", "SYSTEM/FW.BIN": 100}


class Events:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.seen: list = []

    def __call__(self, event) -> None:
        self.q.put(event)

    def next(self, kind, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} within {timeout}s; saw {self.seen}")
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if isinstance(ev, kind):
                return ev

    def quiet(self, seconds: float = 1.5) -> list:
        time.sleep(seconds)
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out


def mounts_under(d: Path):
    return [e for e in current_mounts() if d in e.target.parents]


@pytest.fixture
def env(tmp_path):
    loopcam.ensure_udevd()
    cams: list[loopcam.LoopCamera] = []
    sources: list = []

    class Env:
        mount_dir = tmp_path / "mnt"
        label = loopcam.unique_label()
        tag = loopcam.unique_tag()
        config = DevicesConfig(source="udev", mount_dir=tmp_path / "mnt")

        def image(self, name="cam", label=None, files=FILES):
            return loopcam.make_camera_image(tmp_path / f"{name}.img", files, label=label or self.label)

        def attach(self, image) -> loopcam.LoopCamera:
            cam = loopcam.LoopCamera(image)
            cam.attach()
            cams.append(cam)
            return cam

        def udev_source(self, events):
            src = UdevSource(self.config, load_profiles(None), tag=self.tag)
            sources.append(src)
            src.start(events)
            return src

    yield Env()
    for src in sources:
        src.stop()
    for cam in cams:
        cam.__exit__(None, None, None)
    for e in mounts_under(tmp_path / "mnt"):          # anything left behind is a bug, but clean up
        loopcam.run("umount", "-l", str(e.target), check=False)


def test_loopcam_image_round_trip(env, tmp_path):
    image = env.image()
    files = loopcam.read_image(image)
    assert files["DCIM/100BWC/CLIP0001.MP4"] == loopcam.content_for("DCIM/100BWC/CLIP0001.MP4", 300_000)
    assert files["DCIM/100BWC/CLIP0001.XML"] == b"<x/>"
    assert loopcam.fsck(image).returncode == 0


def test_coldplug_mounts_a_tagged_camera_hardened(env):
    cam = env.attach(env.image())
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        env.udev_source(events)
        docked = events.next(CameraDocked)
        assert docked.device == cam.dev and docked.profile == "generic"
        assert docked.serial.startswith("fs-") and docked.mount == env.mount_dir / docked.serial
        proc = Path("/proc/mounts").read_text()
        line = next(l for l in proc.splitlines() if l.split()[1] == str(docked.mount))
        opts = set(line.split()[3].split(","))
        assert {"nosuid", "nodev", "noexec"} <= opts
        assert (docked.mount / "DCIM/100BWC/CLIP0001.MP4").stat().st_size == 300_000
        assert oct(env.mount_dir.stat().st_mode & 0o777) == "0o700"


def test_hotplug_release_and_detach(env):
    image = env.image()
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        src = env.udev_source(events)
        cam = env.attach(image)
        docked = events.next(CameraDocked)
        assert docked.device == cam.dev
        src.release(docked)
        assert not mounts_under(env.mount_dir)
        assert events.quiet() == []                       # our own unmount does not re-dock
        cam.detach()
        undocked = events.next(CameraUndocked)
        assert undocked == CameraUndocked(serial=docked.serial, device=cam.dev)
    assert loopcam.fsck(image).returncode == 0


def test_pull_out_mid_read_undocks_and_cleans_the_mount(env):
    image = env.image()
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        env.udev_source(events)
        cam = env.attach(image)
        docked = events.next(CameraDocked)
        f = open(docked.mount / "DCIM/100BWC/CLIP0001.MP4", "rb")
        f.read(4096)
        cam.yank()
        with pytest.raises(OSError) as exc:
            f.read()
        assert exc.value.errno in (errno.ENOTCONN, errno.EIO, errno.ENODEV)
        with pytest.raises(OSError):              # even close() reports the dead mount
            f.close()
        loopcam.wait_detached(cam.dev)
        assert events.next(CameraUndocked).serial == docked.serial
        loopcam.wait_for(lambda: not mounts_under(env.mount_dir), timeout=10)


def test_reattach_docks_again(env):
    image = env.image()
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        src = env.udev_source(events)
        first = env.attach(image)
        a = events.next(CameraDocked)
        first.yank()
        events.next(CameraUndocked)
        env.attach(image)
        b = events.next(CameraDocked)
        assert b.serial == a.serial and b.mount == a.mount
        assert (b.mount / "DCIM/100BWC/CLIP0001.XML").read_bytes() == b"<x/>"
        src.release(b)


def test_untagged_exfat_device_is_never_mounted(env):
    other = env.image("other", label=loopcam.unique_label("USB"))
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        env.udev_source(events)
        cam = env.attach(other)
        loopcam.settle()
        assert events.quiet(2.0) == []
        assert not mounts_under(env.mount_dir)
        assert loopcam.mounts_of(cam.dev) == []
        assert loopcam.holders(cam.dev) == []


def test_unknown_profile_name_is_not_mounted(env):
    image = env.image()
    with loopcam.tag_rule(label=env.label, profile="no-such-model", tag=env.tag):
        events = Events()
        env.udev_source(events)
        env.attach(image)
        loopcam.settle()
        assert events.quiet(2.0) == []
        assert not mounts_under(env.mount_dir)


def test_three_cameras_at_once(env):
    images = [env.image(f"cam{i}", files={f"DCIM/100BWC/C{i}.MP4": 1000 * (i + 1)}) for i in range(3)]
    with loopcam.tag_rule(label=env.label, profile="generic", tag=env.tag):
        events = Events()
        src = env.udev_source(events)
        cams = [env.attach(img) for img in images]
        docked = [events.next(CameraDocked) for _ in cams]
        assert {d.device for d in docked} == {c.dev for c in cams}
        assert len({d.serial for d in docked}) == 3 and len({d.mount for d in docked}) == 3
        for d in docked:
            [mp4] = list((d.mount / "DCIM/100BWC").iterdir())
            assert mp4.stat().st_size in (1000, 2000, 3000)
        for d in docked:
            src.release(d)
        assert not mounts_under(env.mount_dir)


def test_kernel_source_matches_by_label_without_udev_data(env, tmp_path):
    # no udev rule at all: the kernel source decides from sysfs + blkid and a label profile
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "t.toml").write_text(
        f'name = "labeltest"\nmatch = [{{fs_label = "{env.label}"}}]\nrecordings = ["DCIM/**/*.MP4"]\n')
    profiles = load_profiles(tmp_path / "profiles")
    hot_image = env.image("hot")
    cold = env.attach(env.image("cold"))
    untouched = env.attach(env.image("usb", label=loopcam.unique_label("USB")))
    src = KernelSource(env.config.model_copy(update={"source": "kernel"}), profiles)
    events = Events()
    src.start(events)
    try:
        a = events.next(CameraDocked)
        assert a.device == cold.dev and a.profile == "labeltest"
        hot = env.attach(hot_image)
        b = events.next(CameraDocked)
        assert b.device == hot.dev
        assert loopcam.mounts_of(untouched.dev) == []
        line = next(l for l in Path("/proc/mounts").read_text().splitlines() if l.split()[1] == str(b.mount))
        assert {"nosuid", "nodev", "noexec"} <= set(line.split()[3].split(","))
        hot.yank()
        loopcam.wait_detached(hot.dev)
        assert events.next(CameraUndocked).serial == b.serial
        src.release(a)
        cold.detach()
        assert events.next(CameraUndocked).serial == a.serial
    finally:
        src.stop()
    assert not mounts_under(env.mount_dir)
