"""``dockd run`` against real docking: systemd-udevd (or raw kernel uevents), loop
devices carrying exFAT camera images, mount.exfat-fuse, a file:// store.

Each test runs the daemon as a subprocess with its own config, waits on its JSON
log lines, SIGTERMs it (exit 0), then checks the artefacts: the store decrypts to
the image's original bytes, the image lost exactly its recordings and sidecars,
``fsck.exfat -n`` is clean, nothing stays mounted, ``dockd status --json`` agrees.

Images carry a per-test fs label, and the test udev rule tags only that label,
with a per-test tag: the daemon is the real ``dockd`` CLI with ``devices.udev_tag``
set to that one in its config, so test runs sharing a machine never dock
each other's cameras, and other loop devices are never touched. The
kernel-source test runs the daemon in its own network namespace: kernel
uevents reach it, udevd's messages cannot, so it really works without udevd.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import loopcam
from dockd.age import decrypt, generate_identity

REASON = loopcam.skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

REPO = Path(__file__).resolve().parents[1]
# the real CLI; each run's udev tag comes from its config (devices.udev_tag)
DOCKD_ARGV = [sys.executable, "-m", "dockd"]
MiB = loopcam.MiB

RECORDINGS = {"DCIM/100BWC/CLIP0001.MP4": 3 * MiB + 17, "DCIM/100BWC/CLIP0002.MP4": 700_001,
              "DCIM/101BWC/AUDIO001.WAV": 123_457}
SIDECARS = {"DCIM/100BWC/CLIP0001.XML": b"<clip id='1'/>"}
KEPT = {"SYSTEM/FW.BIN": b"\x7fFIRMWARE" * 100, "MISC/notes.dat": b"not footage\n"}


def camera_files(**extra: bytes | int) -> dict[str, bytes | int]:
    return {**RECORDINGS, **SIDECARS, **KEPT, **extra}


def materialise(files: dict[str, bytes | int]) -> dict[str, bytes]:
    return {k: v if isinstance(v, bytes) else loopcam.content_for(k, v) for k, v in files.items()}


def drop_cache(path: Path) -> None:
    """Forget ``path``'s pages, so the camera is read from disk, not RAM."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class _Sha:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return len(b)


def mounted_sources() -> list[tuple[str, str]]:
    """(major:minor, mount point) of every mount, from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split(" ")
        out.append((f[2], f[4].encode().decode("unicode_escape")))
    return out


def devno(dev: str) -> str:
    rdev = os.stat(dev).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


class Daemon:
    """``python -m dockd --config FILE run`` with its JSON log in a file."""

    def __init__(self, rig: "Rig", source: str, netns: bool = False) -> None:
        self.rig = rig
        self.log_path = rig.tmp / f"dockd-{source}-{len(rig.daemons)}.log"
        self.cfg = rig.write_config(source)
        argv = [*DOCKD_ARGV, "--config", str(self.cfg), "run"]
        if netns:
            argv = ["unshare", "--net", "--", *argv]
        self.out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd=REPO,
                                     stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.wait("daemon.started", timeout=30)

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(raw)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        """Lines of event ``name`` whose fields equal ``match`` (``...``: the field is present)."""
        return [e for e in self.lines() if e.get("event") == name
                and all(k in e if v is ... else e.get(k) == v for k, v in match.items())]

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait(self, name: str, count: int = 1, timeout: float = 60, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **match)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"dockd exited {self.proc.returncode} before {count}x {name} {match}:\n"
                            + self.tail())
            if time.monotonic() > deadline:
                pytest.fail(f"no {count}x {name} {match} within {timeout}s; log tail:\n" + self.tail())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("dockd did not stop within 40s of SIGTERM:\n" + self.tail())
        finally:
            self.out.close()
        assert rc == 0, f"dockd exited {rc}:\n" + self.tail()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


class Rig:
    def __init__(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.label = loopcam.unique_label()
        self.tag = loopcam.unique_tag()
        self.identity = generate_identity()
        self.mount_dir = tmp / "mnt"
        self.store = tmp / "store"
        self.spool = tmp / "state" / "spool"
        self.profiles_dir: Path | None = None
        self.daemons: list[Daemon] = []
        self.cams: list[loopcam.LoopCamera] = []

    def write_config(self, source: str) -> Path:
        cfg = self.tmp / f"dockd-{source}.toml"
        profiles = f'profiles_dir = "{self.profiles_dir}"\n' if self.profiles_dir else ""
        cfg.write_text(f"""
[station]
id = "dock-t"
[paths]
state_dir = "{self.tmp}/state"
spool_dir = "{self.spool}"
runtime_dir = "{self.tmp}/run"
[encryption]
recipients = ["{self.identity.public()}"]
[store]
url = "file://{self.store}"
[devices]
source = "{source}"
udev_tag = "{self.tag}"
mount_dir = "{self.mount_dir}"
{profiles}[spool]
min_free = 0
[upload]
backoff_initial = 0
backoff_max = 0
[log]
format = "json"
""")
        return cfg

    def image(self, name: str, files: dict[str, bytes | int], label: str | None = None) -> Path:
        img = loopcam.make_camera_image(self.tmp / f"{name}.img", files, label=label or self.label)
        drop_cache(img)
        return img

    def tagged(self, profile: str = "generic") -> Path:
        return self.stack.enter_context(loopcam.tag_rule(label=self.label, profile=profile, tag=self.tag))

    def attach(self, image: Path) -> loopcam.LoopCamera:
        cam = loopcam.LoopCamera(image)
        self.stack.callback(cam.__exit__, None, None, None)
        cam.attach()
        self.cams.append(cam)
        return cam

    def daemon(self, source: str = "udev", netns: bool = False) -> Daemon:
        d = Daemon(self, source, netns)
        self.daemons.append(d)
        self.stack.callback(d.kill)
        return d

    def status(self) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "dockd", "--config", str(self.write_config("udev")),
                            "status", "--json"], capture_output=True, cwd=REPO, timeout=60)
        assert r.returncode in (0, 1), r.stderr
        return json.loads(r.stdout)

    def mounts_under_mount_dir(self) -> list[str]:
        return [m for _d, m in mounted_sources() if m.startswith(str(self.mount_dir) + "/")]

    def store_plaintexts(self) -> dict[str, str]:
        """object key → sha256 of its decrypted plaintext, for every recording object."""
        out = {}
        for obj in sorted(self.store.rglob("*.age")):
            sha = _Sha()
            with open(obj, "rb") as f:
                decrypt(f, sha, [self.identity])
            out[str(obj.relative_to(self.store))] = sha.h.hexdigest()
        return out

    def assert_ingested(self, image: Path, files: dict[str, bytes | int], wiped: set[str]) -> None:
        """The camera (detached) lost exactly ``wiped``, each of which the store holds."""
        original = materialise(files)
        after = loopcam.read_image(image)
        assert set(after) == set(original) - wiped, f"left on the camera: {sorted(after)}"
        for k, v in after.items():
            assert v == original[k], f"{k} changed"
        held = set(self.store_plaintexts().values())
        for k in wiped:
            assert hashlib.sha256(original[k]).hexdigest() in held, f"{k} wiped but not in the store"
        fsck = loopcam.fsck(image)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    loopcam.ensure_udevd()
    with contextlib.ExitStack() as stack:
        r = Rig(tmp_path, stack)
        stack.callback(_unmount_leftovers, r)
        yield r


def _unmount_leftovers(r: Rig) -> None:
    for m in r.mounts_under_mount_dir():        # a leftover is a failure the test reports; clean it
        loopcam.run("umount", "-l", m, check=False)


WIPED = set(RECORDINGS) | set(SIDECARS)


def _assert_done(r: Rig, d: Daemon, sessions: int = 1) -> dict[str, Any]:
    done = d.wait("session.done", count=sessions, timeout=90)
    d.wait("device.released", count=sessions, timeout=30)
    assert not d.events("session.attention"), d.tail()
    d.stop()
    assert r.mounts_under_mount_dir() == []
    snap = r.status()
    finished = [s for s in snap["sessions"] if s["phase"] == "done"]
    assert len(finished) >= sessions, snap["sessions"]
    assert all(s["safe_to_undock"] for s in finished)
    return {"done": done, "status": snap}


# -- the tests ------------------------------------------------------------------------


def test_udev_dock_ingests_wipes_and_unmounts(rig):
    files = camera_files()
    image = rig.image("cam", files)
    rig.tagged()
    d = rig.daemon("udev")
    cam = rig.attach(image)
    docked = d.wait("device.docked", device=cam.dev)
    assert docked[0]["profile"] == "generic"
    out = _assert_done(rig, d)
    assert out["done"][0]["recordings"] == len(WIPED)
    cam.detach()
    rig.assert_ingested(image, files, WIPED)
    assert list((rig.spool / "partial").glob("*")) == []


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_kernel_source_without_udevd(rig):
    # no udev rule, and the daemon in a network namespace of its own: udevd's
    # messages cannot reach it, only the kernel's uevents do
    rig.profiles_dir = rig.tmp / "profiles"
    rig.profiles_dir.mkdir()
    (rig.profiles_dir / "t.toml").write_text(
        f'name = "labeltest"\nmatch = [{{fs_label = "{rig.label}"}}]\n'
        'recordings = ["DCIM/**/*.MP4", "DCIM/**/*.WAV"]\nsidecars = [".XML"]\nkeep = ["SYSTEM/**"]\n')
    files = camera_files()
    image = rig.image("cam", files)
    d = rig.daemon("kernel", netns=True)
    cam = rig.attach(image)
    assert d.wait("device.docked", device=cam.dev)[0]["profile"] == "labeltest"
    _assert_done(rig, d)
    cam.detach()
    rig.assert_ingested(image, files, WIPED)


def test_coldplug_camera_docked_before_start(rig):
    files = camera_files()
    image = rig.image("cam", files)
    rig.tagged()
    cam = rig.attach(image)
    loopcam.settle()
    d = rig.daemon("udev")
    d.wait("device.docked", device=cam.dev)
    _assert_done(rig, d)
    cam.detach()
    rig.assert_ingested(image, files, WIPED)


def test_non_camera_is_never_mounted(rig):
    other_files = {"DCIM/100MEDIA/HOLIDAY.MP4": 500_000, "doc.txt": b"mine"}
    stick = rig.image("stick", other_files, label=loopcam.unique_label("USB"))
    files = camera_files()
    image = rig.image("cam", files)
    rig.tagged()
    seen: list[tuple[str, str]] = []
    stop = threading.Event()
    usb = rig.attach(stick)                 # present at start (coldplug) ...
    want = devno(usb.dev)

    def poll() -> None:
        while not stop.is_set():
            seen.extend(m for m in mounted_sources() if m[0] == want)
            time.sleep(0.01)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        d = rig.daemon("udev")
        loopcam.trigger(match=Path(usb.dev).name)   # ... and announced again while running
        cam = rig.attach(image)                     # a real camera alongside: the daemon was listening
        d.wait("device.docked", device=cam.dev)
        _assert_done(rig, d)
    finally:
        stop.set()
        watcher.join()
    assert seen == []
    assert not [e for e in d.lines() if e.get("device") == usb.dev and e.get("event") != "device.ignored"]
    assert loopcam.holders(usb.dev) == []
    usb.detach()
    assert loopcam.read_image(stick) == materialise(other_files)


def test_three_cameras_at_once(rig):
    sets = [camera_files(**{f"DCIM/100BWC/CAM{i}.MP4": (i + 1) * MiB}) for i in range(3)]
    images = [rig.image(f"cam{i}", f) for i, f in enumerate(sets)]
    rig.tagged()
    d = rig.daemon("udev")
    cams = [rig.attach(img) for img in images]
    out = _assert_done(rig, d, sessions=3)
    assert len({e["camera"] for e in out["done"]}) == 3
    for cam in cams:
        cam.detach()
    for i, (img, f) in enumerate(zip(images, sets)):
        rig.assert_ingested(img, f, WIPED | {f"DCIM/100BWC/CAM{i}.MP4"})


BIG = "DCIM/100BWC/BIG00001.MP4"


def partial_bytes(rig: Rig) -> int:
    """Size of the spool file being written now (0 if none)."""
    sizes = [0]
    for p in (rig.spool / "partial").glob("*.age"):
        with contextlib.suppress(OSError):
            sizes.append(p.stat().st_size)
    return max(sizes)


def _yank_mid_copy(rig: Rig, d: Daemon, cam: loopcam.LoopCamera, size: int, yank: bool = True) -> int:
    """Kill the camera's FUSE helper while the big file is being spooled, then pull the
    camera out (``yank``) or leave it in its bay; returns the bytes then written."""
    assert cam.dev
    fuse = loopcam.wait_for(lambda: loopcam.holders(cam.dev), timeout=10)   # the FUSE helper
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = partial_bytes(rig)
        if 16 * MiB < n < size // 2:
            for pid in fuse:                 # the device dies now; yank does the rest
                os.kill(pid, signal.SIGKILL)
            if yank:
                cam.yank()
            return n
        if d.events("recording.spooled", recording=BIG):
            pytest.fail("the big file was spooled before it could be pulled out")
        time.sleep(0.005)
    pytest.fail("the big file's copy never started:\n" + d.tail())


def test_pull_out_mid_copy_then_reattach_completes(rig):
    size = 400 * MiB
    files = camera_files(**{BIG: size})
    image = rig.image("cam", files)
    with loopcam.tag_rule(label=rig.label, profile="generic", tag=rig.tag):
        d = rig.daemon("udev")
        cam = rig.attach(image)
        d.wait("device.docked", device=cam.dev)
        _yank_mid_copy(rig, d, cam, size)
        interrupted = d.wait("session.interrupted", timeout=60)
        loopcam.wait_detached(cam.dev, timeout=30)
        d.wait("device.undocked", device=cam.dev, timeout=30)
    assert d.events("recording.spooled", recording=BIG) == []
    assert d.events("wipe.done") == []
    assert list((rig.spool / "partial").glob("*")) == []
    loopcam.wait_for(lambda: rig.mounts_under_mount_dir() == [], timeout=15)
    # untagged now: reading the image cannot dock it. Nothing was deleted.
    assert loopcam.read_image(image) == materialise(files)
    assert loopcam.fsck(image).returncode == 0
    drop_cache(image)
    with loopcam.tag_rule(label=rig.label, profile="generic", tag=rig.tag):
        again = rig.attach(image)
        d.wait("device.docked", count=2, timeout=30, session=...)
        out = _assert_done(rig, d)
    again.detach()
    first = interrupted[0]["session"]
    by_id = {s["id"]: s for s in out["status"]["sessions"]}
    assert by_id[first]["phase"] == "interrupted" and not by_id[first]["safe_to_undock"]
    rig.assert_ingested(image, files, WIPED | {BIG})


def test_camera_whose_filesystem_dies_in_its_bay_ends_in_attention_and_says_safe(rig):
    """The camera's filesystem helper dies mid-copy while the camera stays in its bay
    (the loop device stays attached, so no undock follows). The bay must not say
    "interrupted, not safe" until someone pulls it: the session ends in attention with
    the error, the dead mount is released, and `dockd status` says safe to undock.
    Nothing is deleted; pulled out and docked again, the camera finishes."""
    size = 400 * MiB
    files = camera_files(**{BIG: size})
    image = rig.image("cam", files)
    with loopcam.tag_rule(label=rig.label, profile="generic", tag=rig.tag):
        d = rig.daemon("udev")
        cam = rig.attach(image)
        d.wait("device.docked", device=cam.dev)
        _yank_mid_copy(rig, d, cam, size, yank=False)          # its filesystem dies; it stays
        failed = d.wait("session.camera_failed", timeout=60)
        attention = d.wait("session.attention", timeout=30)
        d.wait("device.released", timeout=30)
        assert "camera failed: " in attention[0]["error"]
        assert d.events("session.interrupted") == [] and d.events("wipe.done") == []
        loopcam.wait_for(lambda: rig.mounts_under_mount_dir() == [], timeout=15)
        bays = {b["session"]: b for b in rig.status()["bays"]}
        bay = bays[failed[0]["session"]]
        assert bay["phase"] == "attention" and bay["safe_to_undock"], bay
        assert bay["last_error"].startswith("camera failed: ")
        cam.detach()
        loopcam.wait_detached(cam.dev, timeout=30)
        d.wait("device.undocked", device=cam.dev, timeout=30)
    assert loopcam.read_image(image) == materialise(files)       # nothing was deleted
    drop_cache(image)
    with loopcam.tag_rule(label=rig.label, profile="generic", tag=rig.tag):
        again = rig.attach(image)
        d.wait("device.docked", count=2, timeout=30, session=...)
        d.wait("session.done", timeout=90)
        d.wait("device.released", count=2, timeout=30)
        d.stop()
    again.detach()
    rig.assert_ingested(image, files, WIPED | {BIG})


def test_sigterm_mid_copy_then_restart_resumes(rig):
    # a daemon stop is not an undock: the camera stays, and the next start finishes it
    files = camera_files(**{BIG: 300 * MiB})
    image = rig.image("cam", files)
    rig.tagged()
    d = rig.daemon("udev")
    cam = rig.attach(image)
    d.wait("device.docked", device=cam.dev, session=...)
    loopcam.wait_for(lambda: partial_bytes(rig) > 16 * MiB, timeout=30, interval=0.005)
    d.stop()
    assert d.events("session.interrupted") == [] and rig.mounts_under_mount_dir() == []
    d2 = rig.daemon("udev")
    d2.wait("device.docked", device=cam.dev, session=...)
    _assert_done(rig, d2)
    cam.detach()
    rig.assert_ingested(image, files, WIPED | {BIG})
