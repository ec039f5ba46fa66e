"""Hostile cameras: layouts meant to make dockd read outside the camera, hang, crash or delete.

Each layout is one ``dockd ingest`` (file:// store). For each: dockd exits
with 0 or 1 (never a traceback), logs the expected event, reads nothing outside
the camera (no object decrypts to the planted outside bytes), and the
invariants hold (nothing deleted that was not verified).

Redocks are cameras that lie with their identities between two docks: a new
clip under a wiped clip's path, size and mtime; a clip replaced, or rewritten in
place with its mtime restored, before the wipe deferred to its next dock; two
folders holding the same name and bytes. After every dock the invariants judge
by content: the camera's bytes at dock time are on the camera or in the store.
"""

from __future__ import annotations

import os
import subprocess
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from . import harness as h
from .base import Context, Result, timed
from .invariants import DirView, snapshot

SECRET = b"OUTSIDE-THE-CAMERA " * 50


def _w(p: Path | bytes, data: bytes = b"v", mtime: float | None = None) -> None:
    pb = os.fsencode(p)
    os.makedirs(os.path.dirname(pb), exist_ok=True)
    with open(pb, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(pb, (mtime, mtime))


def symlinks(cam: Path, outside: Path, n: int) -> None:
    _w(outside / "OUT.MP4", SECRET)
    _w(cam / "DCIM/REAL.MP4", b"real footage")
    (cam / "DCIM/shadow.MP4").symlink_to("/etc/shadow")
    (cam / "DCIM/up").symlink_to(outside)
    (cam / "DCIM/parent").symlink_to("..")
    (cam / "DCIM/self").symlink_to(".")
    (cam / "DCIM/a").symlink_to("b")
    (cam / "DCIM/b").symlink_to("a")
    (cam / "DCIM/out.MP4").symlink_to(outside / "OUT.MP4")


def names(cam: Path, outside: Path, n: int) -> None:
    base = os.fsencode(cam / "DCIM")
    for name in (b"..hidden..MP4", b"..MP4", b"ctl\x01\x1b[31m\x7f.MP4", b"\xff\xfe\x80bad.MP4",
                 b"L" * 251 + b".MP4", b"new\nline.MP4", b"back\\slash.MP4", b"%2e%2e.MP4"):
        _w(os.path.join(base, name), name * 3)
    _w(os.path.join(base, b"\xc3\x28" * 10, b"VID.MP4"), b"under a bad directory name")


def specials(cam: Path, outside: Path, n: int) -> None:
    _w(cam / "DCIM/REAL.MP4", b"real")
    os.mkfifo(cam / "DCIM/PIPE.MP4")
    os.mknod(cam / "DCIM/NULL.MP4", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(cam / "DCIM/ZERO.MP4", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(cam / "DCIM/LOOP.MP4", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(cam / "DCIM/SOCK.MP4"))
    s.close()


def many(cam: Path, outside: Path, n: int) -> None:
    for i in range(n):
        _w(cam / f"DCIM/{i // 1000:03d}/F{i:06d}.JPG", i.to_bytes(4, "big"))


def zero(cam: Path, outside: Path, n: int) -> None:
    for i in range(5):
        _w(cam / f"DCIM/EMPTY{i}.MP4", b"")
    _w(cam / "DCIM/EMPTY0.XML", b"")


def deep(cam: Path, outside: Path, n: int) -> None:
    fd = os.open(cam, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1000):                  # one level at a time: os.makedirs recurses
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    wfd = os.open("DEEP.MP4", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(wfd, b"too deep")
    os.close(wfd)
    os.close(fd)
    _w(cam / "TOP.MP4", b"top")


def mtimes(cam: Path, outside: Path, n: int) -> None:
    _w(cam / "DCIM/EPOCH.MP4", b"1970", mtime=0)
    _w(cam / "DCIM/OLD.MP4", b"1938", mtime=-1_000_000_000)
    _w(cam / "DCIM/Y1979.MP4", b"1979", mtime=300_000_000)
    _w(cam / "DCIM/Y2100.MP4", b"2100", mtime=4_102_444_800)
    _w(cam / "DCIM/Y9999.MP4", b"9999", mtime=253_402_300_000)


def growing(cam: Path, outside: Path, n: int) -> None:
    _w(cam / "DCIM/GROW.MP4", os.urandom(4 << 20))
    _w(cam / "DCIM/STILL.MP4", b"still")


def _grower(path: Path, stop: threading.Event) -> None:
    with open(path, "ab") as f:
        while not stop.is_set():
            f.write(os.urandom(65536))
            f.flush()
            time.sleep(0.002)


def unreadable(cam: Path, outside: Path, n: int) -> None:
    """A directory whose listing fails: a file in its place that claims to be a directory is
    not possible on a normal filesystem, so a directory with no permissions, read as nobody."""
    _w(cam / "DCIM/OK.MP4", b"ok")
    _w(cam / "LOCKED/HIDDEN.MP4", b"locked")
    os.chmod(cam / "LOCKED", 0)


# name: (builder, expected event and a word of its reason, files that must stay, expected to finish ok)
LAYOUTS: list[tuple[str, Callable[[Path, Path, int], None], tuple[str, str], list[bytes], bool]] = [
    ("symlinks", symlinks, ("scan.skipped", "symlink"), [], True),
    ("names", names, ("recording.spooled", ""), [], True),
    ("fifos-and-devices", specials, ("scan.skipped", "not a regular file"), [], True),
    ("many-files", many, ("scan.done", ""), [], True),
    ("zero-byte", zero, ("wipe.done", ""), [], True),
    ("deep-tree", deep, ("scan.skipped", "deeper than"), [], True),
    ("mtimes-1938-2100-9999", mtimes, ("scan.skipped", "out of range"), [b"DCIM/Y9999.MP4"], True),
    ("growing-file", growing, ("recording.changed", ""), [b"DCIM/GROW.MP4"], False),
]


MTIME_2000 = 946684800


def _clip(cam: Path, rel: str, data: bytes) -> None:
    _w(cam / rel, data, mtime=MTIME_2000)


def reused_identity(cam: Path) -> list[Callable[[Path], None]]:
    """Dock 1 copies and wipes a clip; the camera's clock and counter reset, and it writes a
    different clip under the same path, size and mtime; dock 2."""
    _clip(cam, "DCIM/V0001.MP4", os.urandom(64 << 10))
    return [lambda c: _clip(c, "DCIM/V0001.MP4", os.urandom(64 << 10))]


def replaced_before_wipe(cam: Path) -> list[Callable[[Path], None]]:
    """Dock 1 copies and defers the wipe (``after = "spooled"``); before dock 2 the camera
    holds a different clip with the same path, size and mtime."""
    _clip(cam, "DCIM/V0001.MP4", os.urandom(64 << 10))
    _clip(cam, "DCIM/V0002.MP4", os.urandom(3 << 20))
    return [lambda c: (_clip(c, "DCIM/V0001.MP4", os.urandom(64 << 10)),
                       _clip(c, "DCIM/V0002.MP4", os.urandom(3 << 20)))]


def rewritten_in_place(cam: Path) -> list[Callable[[Path], None]]:
    """Dock 1 defers the wipe; 8 bytes are overwritten in the head, the middle and the tail
    of three clips, their mtimes restored; dock 2."""
    for i in range(3):
        _clip(cam, f"DCIM/V000{i}.MP4", os.urandom(3 << 20))

    def tamper(c: Path) -> None:
        for i, at in enumerate((100, (3 << 20) // 2, (3 << 20) - 20)):
            p = c / f"DCIM/V000{i}.MP4"
            with open(p, "r+b") as f:
                f.seek(at)
                f.write(b"TAMPERED")
            os.utime(p, (MTIME_2000, MTIME_2000))
    return [tamper]


def same_name_two_folders(cam: Path) -> list[Callable[[Path], None]]:
    """The same file name and the same bytes in two folders, on the same day."""
    same = os.urandom(32 << 10)
    _clip(cam, "DCIM/100BWC/VID0001.MP4", same)
    _clip(cam, "DCIM/101BWC/VID0001.MP4", same)
    _clip(cam, "DCIM/100BWC/EMPTY.MP4", b"")
    _clip(cam, "DCIM/101BWC/EMPTY.MP4", b"")
    return []


# name: (builder returning what happens to the camera before each later dock, wipe rule of the
# first dock)
REDOCKS: list[tuple[str, Callable[[Path], list[Callable[[Path], None]]], str]] = [
    ("reused-identity", reused_identity, "verified"),
    ("replaced-before-deferred-wipe", replaced_before_wipe, "spooled"),
    ("rewritten-in-place", rewritten_in_place, "spooled"),
    ("same-name-two-folders", same_name_two_folders, "verified"),
]


def run_redock(ctx: Context, index: int) -> tuple[dict[str, int], list[str], str | None]:
    name, build, first_rule = REDOCKS[index]
    root = ctx.scratch(f"redock-{name}")
    v: list[str] = []
    try:
        cam = root / "cams" / "CAMR"
        cam.mkdir(parents=True)
        steps = build(cam)
        for dock in range(len(steps) + 1):
            rule = first_rule if dock == 0 else "verified"
            st = h.StationDirs(root, ctx.pub, extra=f'[wipe]\nafter = "{rule}"\n[spool]\nmin_free = 0\n')
            st.write()
            if dock:
                steps[dock - 1](cam)
            before = snapshot(cam)
            log = root / f"ingest-{dock}.log"
            code = h.ingest(st, cam, "CAMR", log).wait(300)
            if code not in (0, 1):
                v.append(f"{name}: dock {dock + 1}: dockd exited {code}")
            if "Traceback" in log.read_text(errors="replace"):
                v.append(f"{name}: dock {dock + 1}: a traceback in the log")
            v += [f"{name}: dock {dock + 1}: {x}" for x in ctx.invariants.check(
                before=before, camera_after=snapshot(cam), store=DirView(st.store_dir), spool=st.spool,
                ledger=st.ledger, serial="CAMR")]
        if snapshot(cam):
            v.append(f"{name}: the last dock left {len(snapshot(cam))} file(s) on the camera")
        return {name: 1}, v, None
    finally:
        if not ctx.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)


def run_one(ctx: Context, index: int) -> tuple[dict[str, int], list[str], str | None]:
    name, build, (event, word), stays, finishes = LAYOUTS[index]
    root = ctx.scratch(f"hostile-{name}")
    v: list[str] = []
    try:
        st = h.StationDirs(root, ctx.pub)
        st.write()
        cam = root / "cams" / "CAMH"
        outside = root / "outside"
        cam.mkdir(parents=True)
        outside.mkdir()
        count = 100_000 if ctx.large else 2_000
        build(cam, outside, count)
        before = snapshot(cam)
        stop = threading.Event()
        grower = None
        if name == "growing-file":
            before = {k: b for k, b in before.items() if k != b"DCIM/GROW.MP4"}
            grower = threading.Thread(target=_grower, args=(cam / "DCIM/GROW.MP4", stop), daemon=True)
            grower.start()
        t0 = time.monotonic()
        p = h.ingest(st, cam, "CAMH", root / "ingest.log")
        code = p.wait(1200)
        stop.set()
        if code is None:
            p.kill9()
            v.append(f"{name}: dockd did not finish in 20 minutes")
        elif code not in (0, 1):
            v.append(f"{name}: dockd exited {code}")
        elif finishes and code != 0:
            v.append(f"{name}: dockd exited {code} (attention) on a layout it should finish")
        text = (root / "ingest.log").read_text(errors="replace")
        if "Traceback" in text:
            v.append(f"{name}: a traceback in the log")
        evs = p.events()
        if not any(e.get("event") == event and word in str(e.get("reason", "")) for e in evs):
            v.append(f"{name}: no {event} event{' about ' + word if word else ''}")
        after = snapshot(cam)
        for s in stays:
            if s not in after:
                v.append(f"{name}: {s!r} was deleted though it never matched a verified copy")
        for obj in DirView(st.store_dir).objects().values():
            import io

            from dockd.age import decrypt

            buf = io.BytesIO()
            decrypt(io.BytesIO(obj), buf, ctx.invariants.identities)
            if buf.getvalue() == SECRET or buf.getvalue().startswith(b"root:"):
                v.append(f"{name}: read a file outside the camera")
        v += [f"{name}: {x}" for x in ctx.invariants.check(
            before=before, camera_after=after, store=DirView(st.store_dir), spool=st.spool, ledger=st.ledger,
            serial="CAMH")]
        left = [k for k in after if k not in stays and k in before and not _expected_left(name, k)]
        if finishes and left:
            v.append(f"{name}: {len(left)} recording(s) left on the camera, e.g. {left[:3]}")
        faults = {name + (f" ({count} files)" if name == "many-files" else ""): 1}
        ctx_note = f"{name}: {time.monotonic() - t0:.1f} s"
        return faults, v, None if not ctx_note else None
    finally:
        if (root / "cams/CAMH/LOCKED").exists():
            os.chmod(root / "cams/CAMH/LOCKED", 0o700)
        if not ctx.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)   # shutil.rmtree recurses


def _expected_left(name: str, rel: bytes) -> bool:
    """Files dockd must leave: not recordings, or beyond its depth bound."""
    return (name == "deep-tree" and rel.endswith(b"DEEP.MP4")) or rel == b"DCIM/Y9999.MP4"


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("hostile")
    idx = [seed] if seed is not None else list(range(len(LAYOUTS) + len(REDOCKS)))
    for i in idx:
        t0 = time.monotonic()
        redock = i >= len(LAYOUTS)
        try:
            faults, v, unfinished = run_redock(ctx, i - len(LAYOUTS)) if redock else run_one(ctx, i)
        except Exception as exc:  # noqa: BLE001
            faults, v, unfinished = {}, [], f"harness error: {exc!r}"
        res.add(i, faults, v, unfinished)
        label = REDOCKS[i - len(LAYOUTS)][0] + " (redock)" if redock else LAYOUTS[i][0]
        res.notes.append(f"`--seed {i}` {label}: {time.monotonic() - t0:.1f} s")
    res.notes.append(f"many-files uses {'100,000' if ctx.large else '2,000'} files "
                     f"({'large' if ctx.large else 'CI'} size); EIO from the filesystem is in local-faults")
    return res
