"""Mount command construction, mountinfo parsing and the Mounter's idempotence (fake runner)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dockd.device.mount import (
    MountEntry,
    Mounter,
    mount_command,
    mount_options,
    parse_mountinfo,
    read_camera_file,
    remount_command,
    unmount_command,
)
from dockd.errors import MountError

KERNEL_FS = frozenset({"ext4", "vfat"})
HELPERS = {"exfat": "mount.exfat-fuse"}


def test_mount_options():
    assert mount_options() == "nosuid,nodev,noexec,noatime"
    assert mount_options(read_only=True) == "nosuid,nodev,noexec,noatime,ro"


def test_kernel_fs_uses_mount():
    assert mount_command("/dev/sdb1", Path("/m/X"), "vfat", fuse_helpers=HELPERS, kernel_fs=KERNEL_FS) == \
        ["mount", "-t", "vfat", "-o", "nosuid,nodev,noexec,noatime", "--", "/dev/sdb1", "/m/X"]


def test_missing_kernel_fs_uses_fuse_helper():
    assert mount_command("/dev/sdb1", Path("/m/X"), "exfat", fuse_helpers=HELPERS, kernel_fs=KERNEL_FS,
                         read_only=True) == \
        ["mount.exfat-fuse", "-o", "nosuid,nodev,noexec,noatime,ro", "/dev/sdb1", "/m/X"]
    # the kernel driver wins when present
    assert mount_command("/dev/sdb1", Path("/m/X"), "exfat", fuse_helpers=HELPERS,
                         kernel_fs=KERNEL_FS | {"exfat"})[0] == "mount"


def test_no_driver_no_helper():
    with pytest.raises(MountError, match="ntfs3"):
        mount_command("/dev/sdb1", Path("/m/X"), "ntfs3", fuse_helpers=HELPERS, kernel_fs=KERNEL_FS)


def test_remount_and_unmount_commands():
    assert remount_command(Path("/m/X")) == ["mount", "-o", "remount,bind,nosuid,nodev,noexec,noatime", "/m/X"]
    fuse = MountEntry(Path("/m/X"), "/dev/loop0", "fuseblk", "7:0", frozenset())
    kern = MountEntry(Path("/m/X"), "/dev/sdb1", "vfat", "8:17", frozenset())
    assert unmount_command(fuse, lazy=False) == ["fusermount", "-u", "/m/X"]
    assert unmount_command(kern, lazy=False) == ["umount", "/m/X"]
    assert unmount_command(fuse, lazy=True) == unmount_command(kern, lazy=True) == ["umount", "-l", "/m/X"]


def test_parse_mountinfo_unescapes_and_reads_flags():
    text = ("42 27 7:0 / /run/dockd/mnt/A\\040B rw,nosuid,nodev,noexec,noatime - fuseblk /dev/loop0 rw,user_id=0\n"
            "garbage line\n")
    [e] = parse_mountinfo(text)
    assert e.target == Path("/run/dockd/mnt/A B") and e.source == "/dev/loop0" and e.dev == "7:0"
    assert {"nosuid", "nodev", "noexec"} <= e.options and e.is_fuse


class FakeSystem:
    """A runner + mount table: mount commands add entries, umount removes them."""

    def __init__(self, flags=("rw", "nosuid", "nodev", "relatime"), fail=False):
        self.table: list[MountEntry] = []
        self.calls: list[list[str]] = []
        self.flags, self.fail = flags, fail

    def run(self, argv):
        self.calls.append(list(argv))
        if self.fail:
            return subprocess.CompletedProcess(argv, 1, "", "boom")
        if "remount,bind" in " ".join(argv):
            target = Path(argv[-1])
            opts = set(argv[2].split(",")[2:])
            self.table = [MountEntry(e.target, e.source, e.fstype, e.dev, e.options | opts)
                          if e.target == target else e for e in self.table]
        elif argv[0] in ("mount", "mount.exfat-fuse"):
            self.table.append(MountEntry(Path(argv[-1]), argv[-2], "fuseblk", "7:9", frozenset(self.flags)))
        elif argv[0] in ("umount", "fusermount"):
            target = Path(argv[-1])
            self.table = [e for e in self.table if e.target != target]
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def sysm():
    return FakeSystem()


@pytest.fixture
def mounter(tmp_path, sysm):
    return Mounter(tmp_path / "mnt", HELPERS, runner=sysm.run, kernel_fs=lambda: KERNEL_FS,
                   mounts=lambda: list(sysm.table))


def test_mount_creates_private_dir_and_hardens(mounter, sysm, tmp_path):
    target = mounter.mount("/dev/loop9", "CAM1", "exfat")
    assert target == tmp_path / "mnt" / "CAM1"
    assert oct(os.stat(tmp_path / "mnt").st_mode & 0o777) == "0o700"
    assert sysm.calls[0][0] == "mount.exfat-fuse"
    assert sysm.calls[1] == remount_command(target)
    assert {"nosuid", "nodev", "noexec", "noatime"} <= sysm.table[0].options


def test_mount_is_idempotent(mounter, sysm):
    a = mounter.mount("/dev/loop9", "CAM1", "exfat")
    n = len(sysm.calls)
    assert mounter.mount("/dev/loop9", "CAM1", "exfat") == a
    assert len(sysm.calls) == n


def test_target_taken_by_another_device(mounter):
    mounter.mount("/dev/loop9", "CAM1", "exfat")
    with pytest.raises(MountError, match="already in use"):
        mounter.mount("/dev/loop8", "CAM1", "exfat")


def test_mount_without_hardening_flags_is_undone(tmp_path):
    class Stubborn(FakeSystem):
        def run(self, argv):
            if "remount,bind" in " ".join(argv):
                self.calls.append(list(argv))
                return subprocess.CompletedProcess(argv, 1, "", "nope")
            return super().run(argv)
    s = Stubborn()
    m = Mounter(tmp_path / "mnt", HELPERS, runner=s.run, kernel_fs=lambda: KERNEL_FS, mounts=lambda: list(s.table))
    with pytest.raises(MountError, match="noexec"):
        m.mount("/dev/loop9", "CAM1", "exfat")
    assert s.table == []


@pytest.mark.parametrize("fs_type", [None, "", "ext4", "xfs", "btrfs"])
def test_non_camera_filesystems_are_refused(mounter, sysm, fs_type):
    with pytest.raises(MountError):
        mounter.mount("/dev/loop9", "CAM1", fs_type)
    assert sysm.calls == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00"])
def test_unsafe_names_refused(mounter, name):
    with pytest.raises(MountError):
        mounter.mount("/dev/loop9", name, "exfat")


def test_failed_helper_is_a_mount_error(tmp_path):
    s = FakeSystem(fail=True)
    m = Mounter(tmp_path / "mnt", HELPERS, runner=s.run, kernel_fs=lambda: KERNEL_FS, mounts=lambda: list(s.table))
    with pytest.raises(MountError, match="boom"):
        m.mount("/dev/loop9", "CAM1", "exfat")
    assert not (tmp_path / "mnt" / "CAM1").exists()


def test_unmount_is_idempotent_and_removes_the_mount_point(mounter, sysm):
    target = mounter.mount("/dev/loop9", "CAM1", "exfat")
    mounter.unmount(target)
    assert sysm.calls[-1] == ["fusermount", "-u", str(target)]
    assert not target.exists() and sysm.table == []
    n = len(sysm.calls)
    mounter.unmount(target)
    mounter.unmount(target, lazy=True)
    assert len(sysm.calls) == n


def test_read_camera_file_refuses_symlinks(tmp_path):
    (tmp_path / "SYSTEM").mkdir()
    (tmp_path / "SYSTEM" / "DEVICE.INF").write_text("SERIAL=1")
    (tmp_path / "secret").write_text("nope")
    (tmp_path / "LINK").symlink_to(tmp_path / "SYSTEM")
    (tmp_path / "SYSTEM" / "L.INF").symlink_to(tmp_path / "secret")
    assert read_camera_file(tmp_path, "SYSTEM/DEVICE.INF") == b"SERIAL=1"
    assert read_camera_file(tmp_path, "SYSTEM/DEVICE.INF", limit=3) == b"SER"
    assert read_camera_file(tmp_path, "LINK/DEVICE.INF") is None
    assert read_camera_file(tmp_path, "SYSTEM/L.INF") is None
    assert read_camera_file(tmp_path, "../etc/passwd") is None
    assert read_camera_file(tmp_path, "SYSTEM") is None
    assert read_camera_file(tmp_path, "MISSING") is None
