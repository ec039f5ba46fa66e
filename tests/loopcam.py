"""Real test cameras: exFAT images on loop devices, tagged by a throwaway udev rule.

Nothing here is faked: mkfs.exfat builds the filesystem, mount.exfat-fuse
fills it, losetup attaches it, systemd-udevd probes it and a rule in
/run/udev/rules.d tags it. Needs root, /dev/loop-control, /dev/fuse and the
tools in ``TOOLS``; ``skip_reason()`` says which is missing.

Typical use (see tests/test_device_udev_live.py)::

    image = make_camera_image(tmp / "cam.img", {"DCIM/100BWC/A.MP4": 3_000_000}, label=label)
    with tag_rule(label=label, profile="generic", tag=tag):
        with LoopCamera(image) as cam:          # attach; detach + unmount on exit
            ...  cam.dev == "/dev/loop3"
            cam.yank()                          # a pull-out: I/O dies, then detach

Loop facts worth knowing:

* attaching/detaching sends ``change`` events, never add/remove;
* ``losetup -d`` on a device that is open (mounted) only *schedules* the
  detach for the last close: it is not a pull-out. ``yank`` kills the FUSE
  helper first, so the mount dies (ENOTCONN), and the detach follows once
  readers close their files (see ``yank``);
* images are labelled only after they are populated, so a label-matching
  rule never tags the temporary loop device used to fill them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping

UDEVD = "/lib/systemd/systemd-udevd"
RULES_DIR = Path("/run/udev/rules.d")
TOOLS = ("mkfs.exfat", "fsck.exfat", "mount.exfat-fuse", "fusermount", "losetup", "udevadm", "blkid")
MiB = 1024 * 1024


# -- can we run at all ------------------------------------------------------------

def skip_reason() -> str | None:
    """Why the live tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts, udev rules)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (loop devices unavailable)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse (exFAT needs mount.exfat-fuse)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt: exfatprogs exfat-fuse fuse3 util-linux udev)"
    if not Path(UDEVD).exists():
        return f"{UDEVD} not installed (apt: udev)"
    return None


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> object:
    """Poll until ``predicate()`` is truthy; return it, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def unique_label(prefix: str = "BWC") -> str:
    """An exFAT label (max 11 chars) no other test run uses."""
    return (prefix + uuid.uuid4().hex.upper())[:11]


def unique_tag() -> str:
    return "dockdtest" + uuid.uuid4().hex[:8]


# -- udevd ---------------------------------------------------------------------------

def is_udevd_running() -> bool:
    return run("udevadm", "control", "--ping", check=False, timeout=10).returncode == 0


def ensure_udevd() -> bool:
    """Start systemd-udevd as a daemon if it is not answering. Returns True if this
    call started it. It is left running (other tests and the daemon use it)."""
    if is_udevd_running():
        return False
    run(UDEVD, "--daemon")
    wait_for(is_udevd_running, timeout=10)
    return True


def settle() -> None:
    run("udevadm", "settle", "--timeout=30", check=False, timeout=40)


def trigger(action: str = "change", match: str = "loop*") -> None:
    run("udevadm", "trigger", f"--action={action}", "--subsystem-match=block",
        f"--sysname-match={match}", check=False)
    settle()


@contextlib.contextmanager
def tag_rule(*, profile: str | None = "generic", label: str | None = None,
             kernel: str = "loop*", tag: str = "dockd") -> Iterator[Path]:
    """Install a TEST rule tagging loop devices (optionally only those whose fs has
    ``label``) with ``tag`` and ``DOCKD_PROFILE=profile``; removed on exit, and
    the devices re-triggered so the tag is gone from their CURRENT_TAGS."""
    ensure_udevd()
    RULES_DIR.mkdir(parents=True, exist_ok=True)
    path = RULES_DIR / f"89-dockd-test-{uuid.uuid4().hex[:8]}.rules"
    match = ['SUBSYSTEM=="block"', f'KERNEL=="{kernel}"', 'ENV{ID_FS_USAGE}=="filesystem"']
    if label is not None:
        match.append(f'ENV{{ID_FS_LABEL}}=="{label}"')
    actions = [f'TAG+="{tag}"', 'ENV{UDISKS_IGNORE}="1"']
    if profile is not None:
        actions.append(f'ENV{{DOCKD_PROFILE}}="{profile}"')
    path.write_text("# written by tests/loopcam.py; removed when the test ends\n"
                    'ACTION=="remove", GOTO="dockd_test_end"\n'
                    + ", ".join(match + actions) + "\n"
                    'LABEL="dockd_test_end"\n')
    try:
        run("udevadm", "control", "--reload")
        trigger()
        yield path
    finally:
        path.unlink(missing_ok=True)
        run("udevadm", "control", "--reload", check=False)
        trigger()


# -- images --------------------------------------------------------------------------

def content_for(relpath: str, size: int) -> bytes:
    """Deterministic bytes for a file given by size, so tests can check copies."""
    out = bytearray()
    block = hashlib.sha256(relpath.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def make_camera_image(path: Path, files: Mapping[str, bytes | int], label: str = "BWCTEST",
                      size: int | None = None, mtime: float | None = None) -> Path:
    """An exFAT image at ``path`` holding ``files`` (relative path → bytes, or a
    size for ``content_for`` bytes). Populated through mount.exfat-fuse on a
    temporary loop device, which is detached again."""
    payload = sum(len(v) if isinstance(v, bytes) else v for v in files.values())
    size = size or max(16 * MiB, ((payload * 11 // 10) // MiB + 8) * MiB)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    # Labelled only once populated and detached, so a label-matching rule or
    # profile never sees the half-written image.
    run("mkfs.exfat", "-L", "LOOPCAMTMP", str(path))
    dev = attach(path)
    mnt = Path(tempfile.mkdtemp(prefix="loopcam-"))
    try:
        run("mount.exfat-fuse", dev, str(mnt))
        try:
            for rel, data in files.items():
                target = mnt / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data if isinstance(data, bytes) else content_for(rel, data))
                if mtime is not None:
                    os.utime(target, (mtime, mtime))
        finally:
            run("fusermount", "-u", str(mnt))
    finally:
        detach(dev)
        mnt.rmdir()
    run("exfatlabel", str(path), label)
    return path


def read_image(path: Path) -> dict[str, bytes]:
    """Every regular file in an exFAT image (read-only mount), by relative path."""
    dev = attach(path)
    mnt = Path(tempfile.mkdtemp(prefix="loopcam-"))
    try:
        run("mount.exfat-fuse", "-o", "ro", dev, str(mnt))
        try:
            return {str(p.relative_to(mnt)): p.read_bytes()
                    for p in sorted(mnt.rglob("*")) if p.is_file()}
        finally:
            run("fusermount", "-u", str(mnt))
    finally:
        detach(dev)
        mnt.rmdir()


def corrupt_entry_set(image: Path, name: str) -> None:
    """Spoil the checksum of the exFAT entry set naming ``name`` (a file name, ASCII) in
    ``image``: a bad sector in its directory's cluster, as mount.exfat-fuse meets it.
    Listing that directory then fails with EIO; its siblings, and the rest of the
    filesystem, still read. The image must not be attached."""
    data = bytearray(image.read_bytes())
    at = data.find(name.encode("utf-16-le"))
    if at < 0 or data.find(name.encode("utf-16-le"), at + 1) >= 0:
        raise ValueError(f"{name!r} is not named exactly once in {image}")
    entry = at - 2 - 2 * 32         # the File entry (0x85), then Stream (0xC0), then the name (0xC1)
    if data[entry] != 0x85 or data[entry + 32] != 0xC0 or data[at - 2] != 0xC1:
        raise ValueError(f"{name!r} is not the first name entry of an entry set in {image}")
    data[entry + 2] ^= 0xFF         # SetChecksum, bytes 2-3 of the File entry
    image.write_bytes(bytes(data))


def fsck(path_or_dev: Path | str) -> subprocess.CompletedProcess[str]:
    """``fsck.exfat -n``: read-only check; returncode 0 means clean."""
    return run("fsck.exfat", "-n", str(path_or_dev), check=False)


# -- loop devices --------------------------------------------------------------------------

def attach(image: Path) -> str:
    """Attach ``image`` to a free loop device; returns "/dev/loopN"."""
    dev = run("losetup", "--find", "--show", str(image)).stdout.strip()
    if not dev.startswith("/dev/loop"):
        raise RuntimeError(f"losetup gave {dev!r}")
    return dev


def backing_file(dev: str) -> str | None:
    name = Path(dev).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def is_attached(dev: str) -> bool:
    return backing_file(dev) is not None


def detach(dev: str) -> None:
    """``losetup -d``. If the device is open (mounted), the kernel only schedules
    the detach for the last close (autoclear). Idempotent."""
    run("losetup", "-d", dev, check=False)


def mounts_of(dev: str) -> list[str]:
    """Mount points whose source is ``dev`` (by device number)."""
    try:
        rdev = os.stat(dev).st_rdev
    except OSError:
        return []
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split(" ")
        if f[2] == want:
            out.append(f[4].encode().decode("unicode_escape"))
    return out


def holders(dev: str) -> list[int]:
    """PIDs holding ``dev`` open (the FUSE helper of its mount, for one)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == dev:
                    pids.append(int(proc.name))
                    break
        except OSError:
            continue
    return pids


def yank(dev: str) -> None:
    """Pull the camera out, as far as a loop device allows.

    Kills the FUSE helper holding the device (its mount answers ENOTCONN from
    now on, as a removed device's would), lazily detaches that dead mount
    (the kernel's fuseblk keeps the device open until it is gone) and runs
    ``losetup -d``. The loop device, and so the remove-like ``change`` event,
    goes away once the last file a reader still has open on the dead mount is
    closed: a session sees read errors first, then ``CameraUndocked``. Use
    ``wait_detached`` to wait for it.
    """
    for pid in holders(dev):
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not holders(dev), timeout=5)
    for mnt in mounts_of(dev):
        run("umount", "-l", mnt, check=False)
    detach(dev)


def wait_detached(dev: str, timeout: float = 15.0) -> None:
    wait_for(lambda: not is_attached(dev), timeout=timeout)


def cleanup(dev: str) -> None:
    """Whatever happened: lazily unmount every mount of ``dev``, then detach."""
    for mnt in mounts_of(dev):
        run("umount", "-l", mnt, check=False)
    detach(dev)


class LoopCamera:
    """A camera image attached to a loop device for the duration of a ``with``."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.dev: str | None = None

    def attach(self) -> str:
        self.dev = attach(self.image)
        return self.dev

    def detach(self) -> None:
        if self.dev:
            detach(self.dev)

    def yank(self) -> None:
        assert self.dev
        yank(self.dev)

    def __enter__(self) -> "LoopCamera":
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dev and backing_file(self.dev) == str(self.image.resolve()):
            cleanup(self.dev)
        self.dev = None


def read_errno(path: Path) -> int | None:
    """The errno reading ``path`` gives now (None if it reads fine)."""
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


__all__ = ["LoopCamera", "attach", "backing_file", "cleanup", "content_for", "corrupt_entry_set", "detach",
           "ensure_udevd", "fsck", "holders", "is_attached", "make_camera_image",
           "mounts_of", "read_image", "settle", "skip_reason", "tag_rule", "trigger",
           "unique_label", "unique_tag", "wait_detached", "wait_for", "yank"]
