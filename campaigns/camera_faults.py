"""Camera faults: a camera that fails like hardware (campaigns/fs/camera.py, FUSE).

Each seed docks one camera served through the FUSE layer, with one to three
faults: EIO on a read (a bad sector that fails every read of it, or once), EIO
on a directory listing (always, or once), a read that stalls for seconds and
then answers or fails, short reads, and reads at USB 2.0 speed (40 MB/s) or a
slow bus (2-8 MB/s). Seeds alternate ``dockd ingest`` and ``dockd run``
(inbox source, the FUSE mount in the inbox). Then the camera is docked again
healthy, as an officer would after the technician's look, and must end done.

Every schedule must end in a state a technician can act on, within a bound:
``dockd ingest`` exits; under ``dockd run`` the session ends done or attention
and ``dockd status --json`` says the bay is safe to undock. A fault that keeps
a file from being read or a directory from being listed must not end done.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from . import harness as h
from .base import Context, Result, timed
from .invariants import DirView, snapshot

SERIAL = "CAMH"
MiB = 1 << 20
KINDS = ["eio-read", "eio-list", "stall", "short", "slow"]
LABELS = {"eio-read": "EIO on a read", "eio-list": "EIO on a listing", "stall": "stalled read",
          "short": "short reads", "slow": "slow bus"}


def _files(rng: random.Random) -> dict[str, int]:
    return {
        "DCIM/100BWC/VID_0001.MP4": h.CHUNK * rng.randint(3, 5) + rng.randint(0, h.CHUNK),
        "DCIM/100BWC/VID_0001.XML": rng.randint(100, 900),
        "DCIM/100BWC/VID_0002.MP4": rng.randint(1, 40_000),
        "DCIM/100BWC/IMG_0003.JPG": 0,
        "DCIM/101BWC/VID_0004.MP4": rng.randint(1, 6) * MiB + rng.randint(0, MiB),
        "SYSTEM/FIRMWARE.BIN": 4096,
    }


def schedule(seed: int, large: bool) -> dict[str, Any]:
    """The camera, the mode and the faults of one seed: a function of the seed alone."""
    rng = random.Random(seed)
    files = _files(rng)
    readable = [p for p, n in files.items() if p.startswith("DCIM/") and n > 0]
    kinds = [KINDS[seed % len(KINDS)]]
    for _ in range(rng.randint(0, 2)):
        k = rng.choice(KINDS)
        if k not in kinds:
            kinds.append(k)
    rules: list[dict[str, Any]] = []
    rate = 0
    for k in kinds:
        if k == "eio-read":
            path = rng.choice(readable)
            rules.append({"op": "read", "path": path, "kind": "eio", "at": rng.randrange(files[path]),
                          "len": rng.choice([1, 4096, 65536]), "times": rng.choice([-1, 1]),
                          "skip": rng.choice([0, 0, 1, 2])})
        elif k == "eio-list":
            rules.append({"op": "list", "path": rng.choice(["DCIM/100BWC", "DCIM/101BWC", "DCIM", ""]),
                          "kind": "eio", "times": rng.choice([-1, 1, 2]), "skip": rng.choice([0, 0, 1, 2, 3])})
        elif k == "stall":
            path = rng.choice(readable)
            secs = round(rng.uniform(1, 8 if large else 3), 2)
            if rng.random() < 0.25:
                rules.append({"op": "list", "path": rng.choice(["DCIM/100BWC", "DCIM", ""]), "kind": "stall",
                              "secs": secs, "times": 1, "skip": rng.choice([0, 1, 2])})
            else:
                rules.append({"op": "read", "path": path, "kind": "stall", "at": rng.randrange(files[path]),
                              "secs": secs, "then": rng.choice(["ok", "eio"]), "times": 1,
                              "skip": rng.choice([0, 0, 1])})
        elif k == "short":
            path = rng.choice(readable)
            rules.append({"op": "read", "path": path, "kind": "short", "at": rng.randrange(files[path]),
                          "len": files[path], "times": rng.randint(1, 200)})
        elif k == "slow":
            rate = rng.choice([40_000_000, 40_000_000, rng.randint(2, 8) * 1_000_000])
    return {"seed": seed, "mode": "ingest" if seed % 2 == 0 else "run", "files": files, "rules": rules,
            "rate": rate, "kinds": kinds}


def _bound(sch: dict[str, Any]) -> float:
    """How long a session may take before it is called stuck: generous for a loaded
    machine, plus every stall, plus the bytes at the slowest rate."""
    stalls = sum(r.get("secs", 0) for r in sch["rules"])
    slow = sum(sch["files"].values()) / sch["rate"] * 3 if sch["rate"] else 0
    return 90 + 2 * stalls + slow


def _status(st: h.StationDirs, root: Path, n: int) -> dict[str, Any] | None:
    log = root / f"status{n}.json"
    p = h.spawn(["--config", str(st.config), "status", "--json"], log)
    p.wait(60)
    try:
        return json.loads(log.read_text())
    except (OSError, ValueError):
        return None


def _faulty_dock(ctx: Context, sch: dict[str, Any], st: h.StationDirs, backing: Path, root: Path,
                 fired_log: Path) -> tuple[str | None, list[str], list[str]]:
    """Dock once through the faulty camera: (final phase, violations, unfinished)."""
    from .fs.camera import mounted

    v: list[str] = []
    stuck: list[str] = []
    bound = _bound(sch)
    spec = {"rate": sch["rate"], "log": str(fired_log), "rules": sch["rules"]}
    phase = None
    if sch["mode"] == "ingest":
        with mounted(backing, root / "mnt" / SERIAL, spec) as cam:
            p = h.ingest(st, cam, SERIAL, root / "ingest1.log")
            code = p.wait(bound)
            if code is None:
                stuck.append(f"dockd ingest still running after {bound:.0f} s ({root})")
                p.kill9()
                p.wait(10)
            elif code not in (0, 1):
                v.append(f"dockd ingest exited {code}")
            _n, phase = h.last_phase(st.ledger, SERIAL)
            if code is not None and phase not in ("done", "attention", "interrupted"):
                v.append(f"ingest exited, the session is {phase}")
            if phase == "interrupted":
                snap = _status(st, root, 1)
                bays = [b for b in (snap or {}).get("bays", []) if b["camera"] == SERIAL]
                if any(not b["safe_to_undock"] for b in bays):
                    v.append("after ingest, the bay says DO NOT UNDOCK with the camera in it")
    else:
        cam_dir = st.inbox / SERIAL
        with mounted(backing, cam_dir, spec):
            p = h.daemon(st, root / "run1.log")
            deadline = time.monotonic() + bound
            while time.monotonic() < deadline and p.is_alive():
                n, ph = h.last_phase(st.ledger, SERIAL)
                if n and ph in ("done", "attention"):
                    phase = ph
                    break
                time.sleep(0.05)
            if phase is None:
                _n, ph = h.last_phase(st.ledger, SERIAL)
                stuck.append(f"dockd run: the session is {ph} after {bound:.0f} s"
                             f"{'' if p.is_alive() else ' (the daemon exited)'} ({root})")
            else:
                snap = _status(st, root, 1)
                bays = [b for b in (snap or {}).get("bays", []) if b["camera"] == SERIAL]
                if not bays or not all(b["safe_to_undock"] for b in bays):
                    v.append(f"session {phase}, yet dockd status --json says {bays or 'no bay'}")
            p.signal(signal.SIGTERM)
            if p.wait(30) is None:
                v.append("dockd run did not stop on SIGTERM within 30 s")
                p.kill9()
                p.wait(10)
            text = (root / "run1.log").read_text(errors="replace")
            if "Traceback" in text:
                v.append("dockd run logged a traceback")
    return phase, v, stuck


def run_one(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    from .fs.camera import fired, mounted

    sch = schedule(seed, ctx.large)
    root = ctx.scratch(f"camera-{seed}")
    try:
        st = h.StationDirs(root, ctx.pub)
        st.extra = "[spool]\nmin_free = 0\n"
        st.write()
        backing = root / "card" / SERIAL
        for rel, n in sch["files"].items():
            (backing / rel).parent.mkdir(parents=True, exist_ok=True)
            (backing / rel).write_bytes(h.content(f"{seed}-{rel}", n))
        before = snapshot(backing)
        fired_log = root / "fired.jsonl"
        phase, v, stuck = _faulty_dock(ctx, sch, st, backing, root, fired_log)
        hits = fired(fired_log)
        faults: dict[str, int] = {}
        for r in hits:
            label = LABELS["eio-read" if r["kind"] == "eio" and r["op"] == "read" else
                           "eio-list" if r["op"] == "list" and r["kind"] == "eio" else
                           "short" if r["kind"] == "short" else "stall"]
            faults[label] = faults.get(label, 0) + 1
        if sch["rate"]:
            faults[LABELS["slow"]] = 1
        for r in sch["rules"]:
            sticky = r["times"] == -1 and r["kind"] == "eio"
            hit = any(x["path"] == r["path"] and x["op"] == r["op"] and x["kind"] == r["kind"] for x in hits)
            if sticky and hit and phase == "done":
                what = "listed" if r["op"] == "list" else "read"
                v.append(f"the session ended done though {r['path'] or '/'} could never be {what}")
        v += [f"faulty dock: {x}" for x in ctx.invariants.check(
            before=before, camera_after=snapshot(backing), store=DirView(st.store_dir), spool=st.spool,
            ledger=st.ledger, serial=SERIAL, interim=True)]
        # the technician looked; the camera is docked again, healthy (USB 2.0 speed)
        with mounted(backing, root / "mnt2" / SERIAL, {"rate": 40_000_000}) as cam:
            p = h.ingest(st, cam, SERIAL, root / "ingest2.log")
            code = p.wait(120)
            if code is None:
                p.kill9()
                p.wait(10)
        _n, phase2 = h.last_phase(st.ledger, SERIAL)
        unfinished = "; ".join(stuck) or None
        if phase2 != "done" and not unfinished:
            unfinished = f"healthy re-dock ended {phase2} (exit {code}) ({root})"
        v += ctx.invariants.check(before=before, camera_after=snapshot(backing), store=DirView(st.store_dir),
                                  spool=st.spool, ledger=st.ledger, serial=SERIAL)
        left = [b for b in snapshot(backing) if b.startswith(b"DCIM/") and before.get(b)]
        if phase2 == "done" and left:
            v.append(f"healthy re-dock ended done with recordings left on the camera: {left}")
        return faults, [f"[{sch['mode']} {'+'.join(sch['kinds'])}] {x}" for x in v], unfinished
    finally:
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


def _why_not() -> str | None:
    import os

    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "no fusermount3"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy unusable: {exc}"
    return None


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("camera-faults")
    why = _why_not()
    if why:
        res.skipped = why
        return res
    seeds = [seed] if seed is not None else list(range(200 if ctx.large else 6))
    res.run_seeds(seeds, lambda s: run_one(ctx, s), 3)
    longest = max([r.get("secs", 0) for s in seeds for r in schedule(s, ctx.large)["rules"]] + [0])
    res.notes.append(f"{len(seeds)} schedules through the FUSE camera (campaigns/fs/camera.py), half under "
                     f"`dockd ingest`, half under `dockd run`, each then re-docked healthy; longest stall "
                     f"{longest:.1f} s")
    return res
