"""Power cut: the dock loses power at a seeded durable operation; what was not durable is gone.

dockd's spool, ledger (state_dir) and file:// store live on one power-cut
filesystem (campaigns/fs/powercut.py), the camera on another. A schedule (one
seed) picks the filesystems' mode (pessimistic: a name is durable only once its
directory is fsynced; or ext4: any fsync commits every name, a rename over a
file carries its data), ``dockd ingest`` or ``dockd run``, a small camera, and
one to three cut points: the N-th durable operation (fsync, fdatasync,
fsyncdir) the two filesystems see from then on. At that operation the power
goes out: it is held, never applied, dockd is killed with SIGKILL, and both
filesystems are cut (everything not durable is discarded) and mounted again.
A run that ends before its cut point is cut anyway, after it ends. Between cuts
and after the last run, the one invariant checker must report nothing.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from . import harness as h
from .base import Context, Result, timed
from .fs.powercut import Control, Instance
from .invariants import DirView, snapshot

SERIAL = "CAMC"
MAX_FINISH_RUNS = 4
OPS_PER_RUN = 48          # durable operations in one whole ingest, about (45): cut points fall within it


class Station(h.StationDirs):
    """A station whose state_dir (ledger, spool) and file:// store are on ``fs``."""

    def __init__(self, root: Path, pub: str, fs: Path, inbox: Path) -> None:
        self.fs = fs
        self._inbox = inbox
        super().__init__(root, pub, store_url=f"file://{fs}/store")

    @property
    def spool(self) -> Path:
        return self.fs / "state" / "spool"

    @property
    def ledger(self) -> Path:
        return self.fs / "state" / "ledger.sqlite3"

    @property
    def store_dir(self) -> Path:
        return self.fs / "store"

    @property
    def inbox(self) -> Path:
        return self._inbox

    def write(self, spool_dir: Path | None = None) -> Path:
        cfg = super().write(self.spool)
        text = cfg.read_text().replace(f'state_dir = "{self.root}/state"', f'state_dir = "{self.fs}/state"')
        text = text.replace(f'inbox_dir = "{self.root}/inbox"', f'inbox_dir = "{self._inbox}"')
        cfg.write_text(text)
        return cfg


class Rig:
    """One worker's two filesystems (station, camera) and their shared cut counter."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.control = Control(root / "control")
        self.inbox = root / "inbox"
        self.mode = "pessimistic"
        self.station = Instance(root / "station-fs", root / "station", self.mode, self.control, "station")
        self.camera = Instance(root / "camera-fs", self.inbox / SERIAL, self.mode, self.control, "camera")

    def reset(self, mode: str) -> None:
        self.control.arm(0)
        self.station.reset(mode)
        self.camera.reset(mode)

    def cut(self) -> dict[str, int]:
        lost = collections.Counter(self.station.cut())
        lost.update(self.camera.cut())
        return lost

    def close(self) -> None:
        self.station.close()
        self.camera.close()
        self.control.close()


def schedule(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        "seed": seed,
        "fs": "ext4" if seed % 2 else "pessimistic",
        "mode": "run" if seed % 3 == 2 else "ingest",
        "cuts": [rng.randint(1, OPS_PER_RUN) for _ in range(rng.choice([1, 1, 2, 2, 3]))],
        "camera_seed": rng.randrange(1 << 30),
    }


def _durable_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, deepest first: the camera as docked."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for f in files:
            h_fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            os.fsync(h_fd)
            os.close(h_fd)
        d_fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(d_fd)
        os.close(d_fd)


def _target(what: str) -> str:
    """What the held operation was making durable, from "station: fsync /state/..."."""
    inst, _, op = what.partition(": ")
    verb, _, path = op.partition(" ")
    if inst == "camera":
        return "camera: " + ("directory (wipe)" if verb == "fsyncdir" else "file")
    if path.startswith("/state/ledger"):
        return "ledger commit"
    if path.startswith("/state/spool"):
        return "spool " + ("directory" if verb == "fsyncdir" else "file")
    if path.startswith("/store"):
        if verb != "fsyncdir" and (path.endswith((".json", ".sig")) or "manifest" in path):
            return "store: manifest"
        return "store: " + ("directory (put, verify)" if verb == "fsyncdir" else "object")
    return "station: names of the state and store directories"


def run_one(ctx: Context, rig: Rig, seed: int) -> tuple[dict[str, int], list[str], str | None, list[str]]:
    sch = schedule(seed)
    root = ctx.scratch(f"powercut-{seed}")
    faults: collections.Counter = collections.Counter()
    phases: list[str] = []
    try:
        rig.reset(sch["fs"])
        st = Station(root, ctx.pub, rig.station.mnt, rig.inbox)
        st.write()
        cam = rig.camera.mnt
        h.small_camera(cam, random.Random(sch["camera_seed"]))
        _durable_tree(cam)
        before = snapshot(cam)
        store_view = DirView(st.store_dir)
        violations: list[str] = []
        for n, cut_at in enumerate(sch["cuts"], 1):
            what, phase = _run_to_cut(rig, st, cam, sch["mode"], cut_at, root / f"run{n}.log")
            faults[f"cut at {_target(what)}" if what else "cut after the run ended (cut point not reached)"] += 1
            if phase:
                phases.append(phase)
            violations += [f"after cut {n} ({what or 'after the run'}): {x}" for x in ctx.invariants.check(
                before=before, camera_after=snapshot(cam), store=store_view, spool=st.spool,
                ledger=st.ledger, serial=SERIAL, interim=True)]
        rig.control.arm(0)
        unfinished = None
        for i in range(MAX_FINISH_RUNS):
            log = root / f"finish{i}.log"
            if sch["mode"] == "run":
                p, final = h.run_daemon_until_final(st, SERIAL, log)
                ok = final == "done"
            else:
                p = h.ingest(st, cam, SERIAL, log)
                code = p.wait(60)
                if code is None:
                    p.kill9()
                ok = code == 0
            if ok:
                break
        else:
            unfinished = f"not done after {MAX_FINISH_RUNS} restarts (see {log})"
        after = snapshot(cam)
        violations += ctx.invariants.check(before=before, camera_after=after, store=store_view,
                                           spool=st.spool, ledger=st.ledger, serial=SERIAL)
        left = sorted(k for k in after if not k.startswith(b"SYSTEM/"))
        if unfinished is None and left:
            unfinished = f"done, yet recordings left on the camera: {left}"
        return dict(faults), violations, unfinished, phases
    finally:
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


def _run_to_cut(rig: Rig, st: Station, cam: Path, mode: str, cut_at: int, log: Path) -> tuple[str | None, str | None]:
    """One dockd process until the power goes out at durable operation ``cut_at`` (then
    SIGKILL), or until it ends; then the cut. Returns what was being made durable, and the last step
    dockd had logged."""
    rig.control.arm(cut_at)
    p = h.daemon(st, log) if mode == "run" else h.ingest(st, cam, SERIAL, log)
    t0 = time.monotonic()
    what = None
    while p.wait(0.01) is None:
        what = rig.control.fired()
        if what:
            p.kill9()
            break
        # the session's end, from dockd's log: a read of the ledger would wait behind a
        # held fsync (the filesystem is single-threaded) and miss the cut
        if mode == "run" and any(e.get("event") in ("session.done", "session.attention") for e in p.events()):
            p.signal(15)
        if time.monotonic() - t0 > 60:
            p.kill9()
    # killed, it runs no more code of its own; one held in an uninterruptible wait (an
    # inode lock behind the held fsync) dies once the filesystem is gone: cut, then reap
    if not what and p.wait(30) is None:
        p.kill9()
    what = what or rig.control.fired()
    rig.cut()
    rig.control.arm(0)                        # the power is back
    if p.wait(30) is None:
        raise RuntimeError(f"dockd (pid {p.pid}) survived SIGKILL and the cut")
    events = [e.get("event") for e in p.events() if e.get("event")]
    return what, (events[-1] if what and events else None)


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("powercut")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        res.skipped = "needs root, /dev/fuse and fusermount3"
        return res
    seeds = [seed] if seed is not None else list(range(1200 if ctx.large else 6))
    workers = 1 if seed is not None else (4 if ctx.large else 2)
    rigs: list[Rig] = []
    local = threading.local()
    lock = threading.Lock()
    phases: collections.Counter = collections.Counter()

    def one(s: int) -> tuple[dict[str, int], list[str], str | None]:
        if not hasattr(local, "rig"):
            local.rig = Rig(ctx.scratch("powercut-rig"))
            with lock:
                rigs.append(local.rig)
        faults, violations, unfinished, hit = run_one(ctx, local.rig, s)
        with lock:
            phases.update(hit)
        return faults, violations, unfinished

    try:
        res.run_seeds(seeds, one, workers)
    finally:
        for r in rigs:
            r.close()
    modes = collections.Counter((schedule(s)["fs"], schedule(s)["mode"]) for s in seeds)
    res.notes.append(f"{len(seeds)} schedules: " + ", ".join(f"{n} {fs}/{m}" for (fs, m), n in sorted(modes.items())))
    res.notes.append("dockd's last logged step at the cuts: "
                     + (", ".join(f"{k} {v}" for k, v in phases.most_common()) or "—"))
    return res
