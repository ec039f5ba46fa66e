"""Crash: ``kill -9`` of dockd at seeded points during scan, spool, upload and wipe; restart until done.

A schedule (one seed) is a small camera (one file spanning several age chunks,
a sidecar, a zero-byte photo, firmware that is never touched), a store
(file://, or moto S3 with 64 KiB multipart parts for every fifth seed), a mode
(``dockd ingest``, or ``dockd run`` over the inbox for every seventh seed), and
one to three kills: each at a seeded log-event count (the process kills itself
as it is about to log that step) or after a seeded delay. Then dockd is
restarted, unkilled, until the session is done, and the invariants are checked
(also between kills: nothing lost, nothing wrongly deleted, ledger intact).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from . import harness as h
from .base import Context, Result, timed
from .invariants import DirView, S3View, snapshot

SERIAL = "CAMC"
MAX_FINISH_RUNS = 4


def schedule(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    store = "s3" if seed % 5 == 0 else "file"
    mode = "run" if seed % 7 == 3 else "ingest"
    span = 0.25 * (3 if store == "s3" else 1) * (2 if mode == "run" else 1)   # a run's length, roughly
    kills = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.6:
            kills.append(("event", rng.randint(1, 34)))
        else:
            kills.append(("delay", round(rng.uniform(0.0, span), 4)))
    return {
        "seed": seed,
        "store": store,
        "mode": mode,
        "kills": kills,
        "camera_seed": rng.randrange(1 << 30),
    }


def run_one(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    sch = schedule(seed)
    root = ctx.scratch(f"crash-{seed}")
    faults: dict[str, int] = {}
    try:
        st = h.StationDirs(root, ctx.pub)
        s3 = None
        min_part = 0
        if sch["store"] == "s3":
            ep = ctx.moto()
            bucket = ep.new_bucket()
            st.store_url, st.store_extra = ctx.s3_station_extra(ep, bucket, root)
            s3 = S3View(ep.client(), bucket, "site")
            min_part = h.TEST_MIN_PART
        st.write()
        cam = (st.inbox if sch["mode"] == "run" else root / "cams") / SERIAL
        stage = root / "stage" / SERIAL
        h.small_camera(stage, random.Random(sch["camera_seed"]))
        before = snapshot(stage)
        store_view = s3 or DirView(st.store_dir)
        if sch["mode"] == "ingest":
            shutil.move(str(stage), str(cam))
        violations: list[str] = []
        n = 0
        for kind, arg in sch["kills"]:
            n += 1
            log = root / f"run{n}.log"
            if sch["mode"] == "run" and not cam.exists():
                cam.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(stage), str(cam))       # docked: appears in the inbox
            code = _killed_run(st, cam, sch, kind, arg, log, min_part)
            what = "kill -9" if code == -9 else "kill point not reached (ran to the end)"
            faults[what] = faults.get(what, 0) + 1
            violations += [f"after kill {n}: {x}" for x in ctx.invariants.check(
                before=before, camera_after=snapshot(cam), store=store_view, spool=st.spool,
                ledger=st.ledger, serial=SERIAL, interim=True)]
        # restart until done
        unfinished = None
        for i in range(MAX_FINISH_RUNS):
            log = root / f"finish{i}.log"
            if sch["mode"] == "run":
                p, phase = h.run_daemon_until_final(st, SERIAL, log, s3_min_part=min_part)
                ok = phase == "done"
            else:
                p = h.ingest(st, cam, SERIAL, log, s3_min_part=min_part)
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
        return faults, violations, unfinished
    finally:
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


def _killed_run(st: h.StationDirs, cam: Path, sch: dict[str, Any], kind: str, arg: float, log: Path,
                min_part: int) -> int | None:
    """One dockd process, killed at its kill point; a daemon that finishes first is stopped."""
    kw = {"kill_at_event": int(arg)} if kind == "event" else {}
    n0, _ = h.last_phase(st.ledger, SERIAL)
    if sch["mode"] == "run":
        p = h.daemon(st, log, s3_min_part=min_part, **kw)
    else:
        p = h.ingest(st, cam, SERIAL, log, s3_min_part=min_part, **kw)
    t0 = time.monotonic()
    while p.wait(0.01) is None:
        el = time.monotonic() - t0
        if kind == "delay" and el >= arg:
            p.kill9()
        elif sch["mode"] == "run":
            n, ph = h.last_phase(st.ledger, SERIAL)
            if n > n0 and ph in ("done", "attention"):
                p.signal(15)
        if el > 60:
            p.kill9()
    return p.wait(10)


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("crash")
    seeds = [seed] if seed is not None else list(range(2000 if ctx.large else 200))
    workers = 4   # the schedules mostly wait on their child processes
    res.run_seeds(seeds, lambda s: run_one(ctx, s), workers)
    stores = sum(1 for s in seeds if schedule(s)["store"] == "s3")
    daemons = sum(1 for s in seeds if schedule(s)["mode"] == "run")
    res.notes.append(f"{len(seeds)} schedules: {stores} on moto S3 (64 KiB parts), {len(seeds) - stores} on file://; "
                     f"{daemons} under `dockd run` (inbox), the rest `dockd ingest`")
    return res
