"""Event translation and docking decisions, with fake pyudev-like devices and a fake mounter."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockd.device.events import CameraDocked, CameraUndocked, UsbIdentity
from dockd.device.kernel import kernel_block_info, kernel_camera_profile
from dockd.device.profiles import load_profiles
from dockd.device.udev import (
    BlockInfo,
    Docker,
    ObservedSource,
    block_info_from_udev,
    camera_profile,
    derive_serial,
    usb_info_from_props,
)
from dockd.errors import MountError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "profiles"


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(FIXTURES)


@dataclass
class FakeUdevDevice:
    properties: dict
    device_path: str = "/devices/virtual/block/loop3"
    sys_path: str = "/sys/devices/virtual/block/loop3"
    device_node: str | None = "/dev/loop3"
    action: str | None = None
    subsystem: str = "block"


CAMERA_PROPS = {
    "DEVNAME": "/dev/loop3", "SUBSYSTEM": "block", "DEVTYPE": "disk",
    "ID_FS_USAGE": "filesystem", "ID_FS_TYPE": "exfat", "ID_FS_LABEL": "CAM",
    "ID_FS_UUID": "6F16-E043", "TAGS": ":dockd:systemd:", "CURRENT_TAGS": ":dockd:systemd:",
    "DOCKD_PROFILE": "northwind-nw200",
}


def test_translation_of_a_tagged_camera(profiles):
    info = block_info_from_udev(FakeUdevDevice(CAMERA_PROPS, action="add"))
    assert info == BlockInfo(devpath="/devices/virtual/block/loop3", action="add", devnode="/dev/loop3",
                             sys_path="/sys/devices/virtual/block/loop3", is_tagged=True,
                             profile="northwind-nw200", fs_usage="filesystem", fs_type="exfat",
                             fs_label="CAM", fs_uuid="6F16-E043")
    assert camera_profile(info, profiles).name == "northwind-nw200"


def test_sticky_tags_do_not_count_once_the_rule_stops_matching(profiles):
    # udev keeps "dockd" in TAGS forever; CURRENT_TAGS is the truth
    props = dict(CAMERA_PROPS, TAGS=":dockd:systemd:", CURRENT_TAGS=":systemd:")
    info = block_info_from_udev(FakeUdevDevice(props, action="change"))
    assert not info.is_tagged and camera_profile(info, profiles) is None


def test_old_udev_without_current_tags_uses_tags():
    props = {k: v for k, v in CAMERA_PROPS.items() if k != "CURRENT_TAGS"}
    assert block_info_from_udev(FakeUdevDevice(props)).is_tagged


def test_custom_tag():
    props = dict(CAMERA_PROPS, CURRENT_TAGS=":dockdtest1:")
    assert not block_info_from_udev(FakeUdevDevice(props)).is_tagged
    assert block_info_from_udev(FakeUdevDevice(props), tag="dockdtest1").is_tagged


@pytest.mark.parametrize("change, expected", [
    ({}, "northwind-nw200"),
    ({"DOCKD_PROFILE": None}, "generic"),                # tagged without profile → generic
    ({"DOCKD_PROFILE": "no-such-model"}, None),          # a typo never widens what is wiped
    ({"CURRENT_TAGS": ":systemd:"}, None),               # untagged: never a camera
    ({"ID_FS_USAGE": None}, None),                        # whole disk with a partition table
    ({"ID_FS_USAGE": "raid"}, None),
    ({"ID_FS_TYPE": None}, None),
    ({"ID_FS_USAGE": None, "ID_FS_TYPE": None}, None),   # detached loop device
])
def test_camera_decision(profiles, change, expected):
    props = dict(CAMERA_PROPS)
    for k, v in change.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v
    p = camera_profile(block_info_from_udev(FakeUdevDevice(props, action="change")), profiles)
    assert (p.name if p else None) == expected


def test_remove_is_never_a_camera(profiles):
    info = block_info_from_udev(FakeUdevDevice(CAMERA_PROPS, action="remove"))
    assert camera_profile(info, profiles) is None


def test_devnode_from_devname_when_node_missing():
    d = FakeUdevDevice({"DEVNAME": "sdb1"}, device_node=None)
    assert block_info_from_udev(d).devnode == "/dev/sdb1"


def test_usb_device_translation():
    u = usb_info_from_props({"DEVTYPE": "usb_device", "PRODUCT": "3fd2/2f0/100",
                             "BUSNUM": "001", "DEVNUM": "007"}, "add")
    assert (u.vendor_id, u.product_id, u.busnum, u.devnum) == ("3fd2", "02f0", 1, 7)
    assert usb_info_from_props({"DEVTYPE": "usb_interface", "PRODUCT": "3fd2/2f0/100"}, "add") is None


# -- serials ---------------------------------------------------------------------------

def info(**kw) -> BlockInfo:
    base = dict(devpath="/devices/x/sdb1", action="add", devnode="/dev/sdb1", sys_path=None,
                is_tagged=True, fs_usage="filesystem", fs_type="exfat", fs_label="CAM 01",
                fs_uuid="6F16-E043", serial_short="SHORT9")
    base.update(kw)
    return BlockInfo(**base)


def test_serial_chain(profiles):
    g = profiles["generic"]
    assert derive_serial(g, UsbIdentity(serial="USB 123/4"), info()) == "USB_123_4"
    assert derive_serial(g, UsbIdentity(), info()) == "SHORT9"
    assert derive_serial(g, UsbIdentity(), info(serial_short=None)) == "fs-6F16-E043"
    assert derive_serial(g, UsbIdentity(), info(serial_short=None, fs_uuid=None)) == "dev-sdb1"


def test_serial_from_file_and_label(profiles, tmp_path):
    nw = profiles["northwind-nw200"]
    assert derive_serial(nw, UsbIdentity(serial="U1"), info(), "SERIAL=NW2-004711\n") == "NW2-004711"
    assert derive_serial(nw, UsbIdentity(serial="U1"), info(), "garbage") == "U1"
    assert derive_serial(nw, UsbIdentity(serial="U1"), info(), None) == "U1"
    label = nw.model_copy(update={"serial_from": "label", "serial_regex": None})
    assert derive_serial(label, UsbIdentity(serial="U1"), info()) == "CAM_01"


def test_serial_regex_rejecting_usb_serial_falls_back(profiles):
    sv = profiles["sentinel-sv5"]
    assert derive_serial(sv, UsbIdentity(serial="SV5-AB12CD34"), info()) == "AB12CD34"
    assert derive_serial(sv, UsbIdentity(serial="??"), info(serial_short=None)) == "fs-6F16-E043"


# -- the Docker's state machine -------------------------------------------------------------

@dataclass
class FakeMounter:
    mount_dir: Path = Path("/run/dockd/mnt")
    calls: list = field(default_factory=list)
    fail: bool = False
    probe_text: bytes | None = None

    def mount(self, device, name, fs_type, *, read_only=False):
        self.calls.append(("mount", device, name, fs_type, read_only))
        if self.fail:
            raise MountError("nope")
        return self.mount_dir / name

    def unmount(self, path, lazy=False):
        self.calls.append(("unmount", path, lazy))


@pytest.fixture
def docker(profiles):
    events = []
    d = Docker(profiles=profiles, mounter=FakeMounter(), emit=events.append)
    d.events = events  # type: ignore[attr-defined]
    return d


def test_dock_then_repeat_events_are_no_ops(docker, profiles):
    docker.handle(info(), profiles["generic"])
    docker.handle(info(action="change"), profiles["generic"])
    docker.handle(info(action="coldplug"), profiles["generic"])
    assert docker.events == [CameraDocked(serial="SHORT9", profile="generic",
                                          mount=Path("/run/dockd/mnt/SHORT9"), device="/dev/sdb1",
                                          usb=UsbIdentity(), bay=None)]
    assert [c[0] for c in docker.mounter.calls] == ["mount"]


def test_remove_undocks_and_lazily_unmounts(docker, profiles):
    docker.handle(info(), profiles["generic"])
    docker.handle(info(action="remove"), None)
    assert docker.events[-1] == CameraUndocked(serial="SHORT9", device="/dev/sdb1")
    assert docker.mounter.calls[-1] == ("unmount", Path("/run/dockd/mnt/SHORT9"), True)
    docker.handle(info(action="remove"), None)            # twice: nothing more
    assert len(docker.events) == 2


def test_filesystem_vanishing_undocks(docker, profiles):
    docker.handle(info(), profiles["generic"])
    docker.handle(info(action="change", fs_usage=None, fs_type=None), None)
    assert isinstance(docker.events[-1], CameraUndocked)


def test_medium_change_redocks(docker, profiles):
    docker.handle(info(), profiles["generic"])
    docker.handle(info(action="change", fs_uuid="AAAA-BBBB", serial_short=None), profiles["generic"])
    kinds = [type(e).__name__ for e in docker.events]
    assert kinds == ["CameraDocked", "CameraUndocked", "CameraDocked"]
    assert docker.events[-1].serial == "fs-AAAA-BBBB"


def test_untracked_non_camera_is_never_touched(docker):
    docker.handle(info(is_tagged=False), None)
    docker.handle(info(action="remove"), None)
    assert docker.events == [] and docker.mounter.calls == []


def test_mount_failure_emits_nothing_and_retries_on_next_event(docker, profiles):
    docker.mounter.fail = True
    docker.handle(info(), profiles["generic"])
    assert docker.events == []
    docker.mounter.fail = False
    docker.handle(info(action="change"), profiles["generic"])
    assert len(docker.events) == 1


def test_release_unmounts_and_our_own_change_event_does_not_redock(docker, profiles):
    docker.handle(info(), profiles["generic"])
    ev = docker.events[0]
    docker.release(ev)
    docker.release(ev)                                     # idempotent
    assert docker.mounter.calls[1:] == [("unmount", ev.mount, False)] * 2
    docker.handle(info(action="change"), profiles["generic"])   # udev "watch" after close
    assert len(docker.events) == 1 and docker.docked() == []
    docker.handle(info(action="remove"), None)             # leaving is still reported
    assert docker.events[-1] == CameraUndocked(serial="SHORT9", device="/dev/sdb1")
    assert docker.mounter.calls[-1][0] == "unmount" and docker.mounter.calls[-1][2] is False


def test_two_cameras_with_one_serial_get_distinct_mounts(docker, profiles):
    docker.handle(info(), profiles["generic"])
    docker.handle(info(devpath="/devices/x/sdc1", devnode="/dev/sdc1"), profiles["generic"])
    mounts = {e.mount for e in docker.events}
    assert len(mounts) == 2 and {e.serial for e in docker.events} == {"SHORT9"}


def test_serial_file_is_read_through_a_read_only_probe(profiles, tmp_path):
    probe_dir = tmp_path / ".probe-sdb1"
    (probe_dir / "SYSTEM").mkdir(parents=True)
    (probe_dir / "SYSTEM" / "DEVICE.INF").write_text("MODEL=NW200\nSERIAL=NW2-000042\n")
    events = []
    m = FakeMounter(mount_dir=tmp_path)
    Docker(profiles=profiles, mounter=m, emit=events.append).handle(info(), profiles["northwind-nw200"])
    assert m.calls[0] == ("mount", "/dev/sdb1", ".probe-sdb1", "exfat", True)
    assert m.calls[1] == ("unmount", probe_dir, False)
    assert m.calls[2] == ("mount", "/dev/sdb1", "NW2-000042", "exfat", False)
    assert events[0].serial == "NW2-000042"


# -- lost events: the sweep and the listener restart ----------------------------------------

def test_sweep_undocks_what_the_kernel_says_is_gone(docker, profiles, tmp_path):
    for name, size in (("sdb1", 2048), ("sdc1", 2048), ("sdd1", 2048)):
        node = tmp_path / "devices/x" / name
        node.mkdir(parents=True)
        (node / "size").write_text(f"{size}\n")
        docker.handle(info(devpath=f"/devices/x/{name}", devnode=f"/dev/{name}",
                           serial_short=name.upper()), profiles["generic"])
    docker.sweep(tmp_path)
    assert len(docker.events) == 3                          # all still there: nothing happens
    (tmp_path / "devices/x/sdc1/size").write_text("0\n")   # medium gone (a detached loop device)
    (tmp_path / "devices/x/sdd1/size").unlink()             # node gone (a pulled USB disk)
    (tmp_path / "devices/x/sdd1").rmdir()
    docker.sweep(tmp_path)
    gone = [e for e in docker.events if isinstance(e, CameraUndocked)]
    assert sorted(e.serial for e in gone) == ["SDC1", "SDD1"]
    assert [e.serial for e in docker.docked()] == ["SDB1"]
    docker.sweep(tmp_path)                                  # reported once
    assert len(docker.events) == 5


def test_sweep_never_waits_for_an_event_being_handled(docker, profiles, tmp_path):
    docker.handle(info(), profiles["generic"])              # its sysfs node does not exist
    with docker._lock:
        t = threading.Thread(target=docker.sweep, args=(tmp_path,))
        t.start()
        t.join(5)
        assert not t.is_alive() and len(docker.events) == 1
    docker.sweep(tmp_path)
    assert isinstance(docker.events[-1], CameraUndocked)


class _DeadThread:
    def is_alive(self):
        return False


def test_a_dead_listener_is_started_again(profiles, tmp_path):
    class Source(ObservedSource):
        source = "test"

        def __init__(self):
            self.docker = Docker(profiles=profiles, mounter=FakeMounter())
            self._sys = tmp_path
            self.listens = 0

        def _listen(self):
            self.listens += 1
            self._observer = _DeadThread() if self.listens == 1 else threading.current_thread()

    src = Source()
    src.start(lambda ev: None)
    assert src.listens == 1
    src.poll()                       # the first listener died (pyudev ends it on ENOBUFS)
    assert src.listens == 2
    src.poll()                       # the new one lives
    assert src.listens == 2


# -- the kernel source's decision, on a fake sysfs -----------------------------------------------

def fake_sysfs(root: Path, *, usb: tuple[str, str] | None, size: int = 2048) -> dict:
    if usb:
        udev = root / "devices/pci0000:00/0000:00:14.0/usb1/1-4"
        udev.mkdir(parents=True)
        for k, v in {"idVendor": usb[0], "idProduct": usb[1], "busnum": "1", "devnum": "9",
                     "serial": "CAMSER1", "manufacturer": "Northwind", "product": "NW-200"}.items():
            (udev / k).write_text(v + "\n")
        block = udev / "1-4:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1"
    else:
        block = root / "devices/virtual/block/loop3"
    block.mkdir(parents=True)
    (block / "size").write_text(f"{size}\n")
    devpath = "/" + str(block.relative_to(root))
    return {"SUBSYSTEM": "block", "DEVPATH": devpath, "DEVNAME": block.name, "DEVTYPE": "partition"}


class Probe:
    def __init__(self, result):
        self.result, self.calls = result, []

    def __call__(self, devnode):
        self.calls.append(devnode)
        return self.result


EXFAT = {"USAGE": "filesystem", "TYPE": "exfat", "LABEL": "BWCTEST", "UUID": "1234-ABCD"}


def test_kernel_usb_camera_matched_by_ids(tmp_path, profiles):
    props = fake_sysfs(tmp_path, usb=("3fd2", "0200"))
    probe = Probe(dict(EXFAT, LABEL="NW200"))
    got, profile = kernel_camera_profile(kernel_block_info(props, "add", tmp_path), profiles, probe)
    assert profile.name == "northwind-nw200" and probe.calls == ["/dev/sdb1"]
    assert (got.fs_type, got.fs_uuid) == ("exfat", "1234-ABCD")


def test_kernel_usb_stick_is_not_probed_even_with_the_test_label(tmp_path, profiles):
    props = fake_sysfs(tmp_path, usb=("0781", "5567"))
    probe = Probe(EXFAT)
    _, profile = kernel_camera_profile(kernel_block_info(props, "add", tmp_path), profiles, probe)
    assert profile is None and probe.calls == []


def test_kernel_loop_device_matched_by_label_only_with_a_label_profile(tmp_path, profiles):
    props = fake_sysfs(tmp_path, usb=None)
    probe = Probe(EXFAT)
    _, profile = kernel_camera_profile(kernel_block_info(props, "change", tmp_path), profiles, probe)
    assert profile.name == "bwctest"
    shipped_only = load_profiles(None)
    probe = Probe(EXFAT)
    _, profile = kernel_camera_profile(kernel_block_info(props, "change", tmp_path), shipped_only, probe)
    assert profile is None and probe.calls == []          # no label profiles: never even probed


@pytest.mark.parametrize("size, found, action", [
    (0, EXFAT, "change"),                                        # detached loop / no medium
    (2048, {}, "change"),                                        # nothing recognisable
    (2048, {"PTTYPE": "dos"}, "add"),                            # whole disk, partitioned
    (2048, dict(EXFAT, LABEL="OTHER"), "change"),
    (2048, EXFAT, "remove"),
])
def test_kernel_not_a_camera(tmp_path, profiles, size, found, action):
    props = fake_sysfs(tmp_path, usb=None, size=size)
    _, profile = kernel_camera_profile(kernel_block_info(props, action, tmp_path), profiles, Probe(found))
    assert profile is None


def test_kernel_block_info_ignores_other_subsystems(tmp_path):
    assert kernel_block_info({"SUBSYSTEM": "usb", "DEVPATH": "/x"}, "add", tmp_path) is None
    bi = kernel_block_info({"SUBSYSTEM": "block", "DEVPATH": "/devices/virtual/block/loop0",
                            "DEVNAME": "loop0"}, "change", tmp_path)
    assert bi.devnode == "/dev/loop0" and not bi.is_tagged and bi.fs_type is None


def test_inbox_poll_undocks_a_directory_removed_without_an_event(tmp_path):
    import shutil

    from dockd.device.inbox import InboxSource

    events = []
    (tmp_path / "CAM1").mkdir()
    (tmp_path / "CAM1" / "A.MP4").write_bytes(b"v")
    src = InboxSource(tmp_path, quiet=0)
    src.start(events.append)
    try:
        src.stop()                     # no more inotify events: only poll can notice now
        shutil.rmtree(tmp_path / "CAM1")
        src.poll()
        assert [type(e).__name__ for e in events] == ["CameraDocked", "CameraUndocked"]
        src.poll()
        assert len(events) == 2
    finally:
        src.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _inbox(tmp_path, quiet: float):
    """An inbox source started on ``tmp_path/inbox`` (what is there is coldplugged), with a
    clock the test moves; its events. Its inotify observer is stopped: poll alone decides."""
    from dockd.device import inbox as inbox_mod

    clock = _Clock()
    events: list = []
    src = inbox_mod.InboxSource(tmp_path / "inbox", quiet=quiet, clock=clock)
    src.start(events.append)
    src.stop()
    return src, events, clock


def test_an_empty_inbox_directory_is_not_a_camera(tmp_path):
    """An automounter makes the directory first and mounts the camera a moment later:
    the empty directory must not become a session that finds nothing and reports done
    (no later event would come for the camera mounted on it)."""
    (tmp_path / "inbox" / "CAM1" / "DCIM").mkdir(parents=True)    # empty directories hold no file
    src, events, clock = _inbox(tmp_path, quiet=1.0)
    for _ in range(5):
        src.poll()
        clock.now += 1
    assert events == []


def test_a_plain_inbox_directory_is_a_camera_once_it_holds_files_and_is_quiet(tmp_path):
    """A camera copied into the inbox file by file is docked once nothing in it has
    changed for ``quiet`` seconds, not at its first file: a session started mid-copy
    would report done with the rest never seen."""
    cam = tmp_path / "inbox" / "CAM1" / "DCIM"
    cam.mkdir(parents=True)
    (cam / "A.MP4").write_bytes(b"a")
    src, events, clock = _inbox(tmp_path, quiet=1.0)
    clock.now += 0.9
    (cam / "B.MP4").write_bytes(b"b")          # still copying
    src.poll()
    clock.now += 0.9
    with open(cam / "B.MP4", "ab") as f:         # still writing the same file
        f.write(b"more")
    src.poll()
    clock.now += 0.9
    src.poll()
    assert events == []
    clock.now += 0.2
    src.poll()
    assert [(type(e).__name__, e.serial) for e in events] == [("CameraDocked", "CAM1")]
    src.poll()
    assert len(events) == 1


@pytest.mark.root
@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_a_camera_mounted_on_an_inbox_directory_later_is_docked_and_its_unmount_undocks(
        tmp_path, kind):
    """mkdir, then a mount a moment later: the mount point is the camera, docked at the
    next poll (no inotify event says anything was mounted). Unmounted (the directory
    left behind) it is undocked; mounted again, docked again. A bind mount from the
    inbox's own filesystem has the inbox's st_dev: only mountinfo tells."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    target = tmp_path / "inbox" / "CAM1"
    target.mkdir(parents=True)
    src, events, clock = _inbox(tmp_path, quiet=1.0)
    src.poll()
    clock.now += 5
    src.poll()
    assert events == []
    staged = tmp_path / "staged"
    (staged / "DCIM").mkdir(parents=True)
    (staged / "DCIM" / "A.MP4").write_bytes(b"a")
    mount = (["mount", "-t", "tmpfs", "tmpfs", str(target)] if kind == "tmpfs"
             else ["mount", "--bind", str(staged), str(target)])
    try:
        for _ in range(2):
            subprocess.run(mount, check=True)
            src.poll()                                    # no time passes: a mount point is docked at once
            assert [type(e).__name__ for e in events] == ["CameraDocked"]
            assert events[0].mount == target
            subprocess.run(["umount", str(target)], check=True)
            src.poll()
            assert [type(e).__name__ for e in events] == ["CameraDocked", "CameraUndocked"]
            clock.now += 5
            src.poll()
            assert len(events) == 2                      # the emptied directory is no camera
            events.clear()
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
