"""Private, hardened mounts of camera filesystems.

Every camera is mounted under ``mount_dir/<name>`` (``mount_dir`` is mode
0700) with ``nosuid,nodev,noexec,noatime``. Filesystems the kernel lacks
(see /proc/filesystems) go through a FUSE helper (``fuse_helpers``, default
exFAT → ``mount.exfat-fuse``). libfuse2 helpers drop ``noexec``/``noatime``,
so every mount is followed by a bind remount that sets the flags on the
mount point, and the flags are checked in /proc/self/mountinfo; a mount
without them is undone and reported as ``MountError``.

Both ``mount`` and ``unmount`` are idempotent: already mounted (the same
device at the same place) and already unmounted count as success.

This module mounts what it is told to. Deciding *whether* a device is a
camera happens before, in the sources: an untagged device never gets here.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MountError
from ..fsutil import close_quietly, syncfs

HARDENING = ("nosuid", "nodev", "noexec", "noatime")
REQUIRED_FLAGS = frozenset({"nosuid", "nodev", "noexec"})
# Camera filesystems. Anything else on a "camera" is refused rather than
# handed to a kernel driver that was never meant to parse hostile images.
CAMERA_FILESYSTEMS = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "udf"})
DEFAULT_FUSE_HELPERS = {"exfat": "mount.exfat-fuse"}
COMMAND_TIMEOUT = 60.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """Run a mount helper. Output goes to a file, not a pipe: FUSE helpers fork
    a daemon that could otherwise hold the pipe open forever."""
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except FileNotFoundError:
            return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: timed out")
        out.seek(0)
        text = out.read()
    return subprocess.CompletedProcess(list(argv), proc.returncode, "", text.strip())


# -- what is mounted --------------------------------------------------------------

def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    target: Path
    source: str
    fstype: str
    dev: str                      # "major:minor"
    options: frozenset[str]       # per-mount flags (nosuid, noexec, ro, ...)

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith(("fuse.", "fuseblk"))


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split(" ")
        r = right.split(" ")
        if len(f) < 6 or len(r) < 2:
            continue
        entries.append(MountEntry(target=Path(_unescape(f[4])), source=_unescape(r[1]),
                                  fstype=r[0], dev=f[2], options=frozenset(f[5].split(","))))
    return entries


def current_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[MountEntry]:
    return parse_mountinfo(mountinfo.read_text())


def mount_at(target: Path, mounts: list[MountEntry] | None = None) -> MountEntry | None:
    """The topmost mount at ``target``, or None."""
    mounts = current_mounts() if mounts is None else mounts
    found = None
    for e in mounts:
        if e.target == target:
            found = e
    return found


def kernel_filesystems(proc: Path = Path("/proc/filesystems")) -> frozenset[str]:
    try:
        return frozenset(line.split()[-1] for line in proc.read_text().splitlines() if line.strip())
    except OSError:
        return frozenset()


# -- building the command -----------------------------------------------------------

def mount_options(read_only: bool = False) -> str:
    return ",".join(HARDENING + (("ro",) if read_only else ()))


def mount_command(device: str, target: Path, fs_type: str, *, fuse_helpers: dict[str, str],
                  kernel_fs: frozenset[str], read_only: bool = False) -> list[str]:
    """The argv that mounts ``device`` at ``target``: the kernel driver if the
    kernel has it, else the configured FUSE helper. ``MountError`` if neither."""
    opts = mount_options(read_only)
    if fs_type in kernel_fs:
        return ["mount", "-t", fs_type, "-o", opts, "--", device, str(target)]
    helper = fuse_helpers.get(fs_type)
    if helper:
        return [helper, "-o", opts, device, str(target)]
    raise MountError(f"no kernel driver or FUSE helper for {fs_type}", device=device, fs_type=fs_type)


def remount_command(target: Path, read_only: bool = False) -> list[str]:
    """Set the hardening flags on the mount point itself (works for any fs, FUSE included)."""
    return ["mount", "-o", "remount,bind," + mount_options(read_only), str(target)]


def unmount_command(entry: MountEntry, lazy: bool) -> list[str]:
    if lazy:
        return ["umount", "-l", str(entry.target)]
    if entry.is_fuse:
        return ["fusermount", "-u", str(entry.target)]
    return ["umount", str(entry.target)]


# -- reading one small file without following links -------------------------------------

def read_camera_file(root: Path, relpath: str, limit: int = 4096) -> bytes | None:
    """At most ``limit`` bytes of a regular file under ``root``; None if absent,
    a symlink anywhere on the way, not regular, or unreadable."""
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    fds: list[int] = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for p in parts[:-1]:
            fds.append(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fds[-1])
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        for fd in reversed(fds):
            close_quietly(fd)


def _syncfs(path: Path) -> None:
    try:
        syncfs(path)
    except OSError:
        pass                        # a dead mount has nothing left to sync; umount reports the rest


def _is_dead(target: Path) -> bool:
    try:
        os.stat(target)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.EIO, errno.ENODEV)
    return False


class Mounter:
    """Mounts cameras under ``mount_dir``. One instance per source; thread-compatible
    (sources call it from their single event thread)."""

    def __init__(self, mount_dir: Path, fuse_helpers: dict[str, str] | None = None, *,
                 runner: Runner = run_command,
                 kernel_fs: Callable[[], frozenset[str]] = kernel_filesystems,
                 mounts: Callable[[], list[MountEntry]] = current_mounts) -> None:
        self.mount_dir = mount_dir
        self.fuse_helpers = dict(DEFAULT_FUSE_HELPERS if fuse_helpers is None else fuse_helpers)
        self._run = runner
        self._kernel_fs = kernel_fs
        self._mounts = mounts

    def target_for(self, name: str) -> Path:
        if not name or "/" in name or "\x00" in name or name in (".", ".."):
            raise MountError(f"unsafe mount name {name!r}")
        return self.mount_dir / name

    def ensure_mount_dir(self) -> None:
        self.mount_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(self.mount_dir.stat().st_mode) != 0o700:
            os.chmod(self.mount_dir, 0o700)

    def _same_device(self, entry: MountEntry, device: str) -> bool:
        if entry.source == device:
            return True
        try:
            rdev = os.stat(device).st_rdev
        except OSError:
            return False
        return entry.dev == f"{os.major(rdev)}:{os.minor(rdev)}"

    def find(self, device: str) -> MountEntry | None:
        """Where ``device`` is mounted under ``mount_dir``, if anywhere."""
        for e in self._mounts():
            if e.target.parent == self.mount_dir and self._same_device(e, device):
                return e
        return None

    def mount(self, device: str, name: str, fs_type: str | None, *, read_only: bool = False) -> Path:
        """Mount ``device`` at ``mount_dir/name`` and return that path.

        Idempotent. Raises ``MountError`` for an unknown or non-camera fs
        type, a target occupied by another device, a failed helper, or a
        mount that lacks the hardening flags.
        """
        target = self.target_for(name)
        if not fs_type:
            raise MountError(f"{device}: unknown filesystem type", device=device)
        if fs_type not in CAMERA_FILESYSTEMS:
            raise MountError(f"{device}: {fs_type} is not a camera filesystem", device=device,
                             fs_type=fs_type)
        self.ensure_mount_dir()
        entry = mount_at(target, self._mounts())
        if entry is not None and _is_dead(target):
            self._run(["umount", "-l", str(target)])
            entry = mount_at(target, self._mounts())
        if entry is not None:
            if not self._same_device(entry, device):
                raise MountError(f"{target} is already in use by {entry.source}", device=device)
            if not REQUIRED_FLAGS <= entry.options or (read_only and "ro" not in entry.options):
                self._harden(device, target, read_only)
            return target
        target.mkdir(mode=0o700, exist_ok=True)
        argv = mount_command(device, target, fs_type, fuse_helpers=self.fuse_helpers,
                             kernel_fs=self._kernel_fs(), read_only=read_only)
        res = self._run(argv)
        if res.returncode != 0 or mount_at(target, self._mounts()) is None:
            self._rmdir(target)
            raise MountError(f"{device}: {argv[0]} failed: {res.stderr or res.returncode}",
                             device=device, fs_type=fs_type)
        self._harden(device, target, read_only)
        return target

    def _harden(self, device: str, target: Path, read_only: bool) -> None:
        self._run(remount_command(target, read_only))
        entry = mount_at(target, self._mounts())
        flags = entry.options if entry else frozenset()
        missing = (REQUIRED_FLAGS | ({"ro"} if read_only else set())) - flags
        if missing:
            self.unmount(target, lazy=True)
            raise MountError(f"{device}: mount lacks {','.join(sorted(missing))}", device=device)

    def unmount(self, path: Path, lazy: bool = False) -> None:
        """Sync and unmount ``path``; lazy detaches even if busy or dead.

        Idempotent: a path that is not mounted is success. Removes the empty
        mount point afterwards. ``MountError`` if the mount is still there.
        """
        entry = mount_at(path, self._mounts())
        if entry is None:
            self._rmdir(path)
            return
        dead = _is_dead(path)
        if not dead:
            _syncfs(path)
        res = self._run(unmount_command(entry, lazy or dead))
        if res.returncode != 0 and entry.is_fuse and not (lazy or dead):
            res = self._run(["umount", str(path)])       # fusermount missing or refused
        if mount_at(path, self._mounts()) is not None:
            raise MountError(f"cannot unmount {path}: {res.stderr or res.returncode}",
                             mount=str(path))
        self._rmdir(path)

    def _rmdir(self, path: Path) -> None:
        if path.parent != self.mount_dir:
            return
        try:
            path.rmdir()
        except OSError:
            pass
