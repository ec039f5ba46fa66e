"""Clocks: the wall clock steps forward and back while ``dockd run`` works, under libfaketime.

The kernel's time namespaces offset only CLOCK_MONOTONIC and CLOCK_BOOTTIME, not
the wall clock, so the wall clock is faked per process: ``LD_PRELOAD`` of Debian's
libfaketime, its offset read from a file at every call (``FAKETIME_NO_CACHE``),
the monotonic clock left real. ``dockd run`` and every ``dockd status`` asked of
it share that file, as processes on one machine share its clock.

Each seed steps the clock one to three times, by minutes to days either way, at
seeded moments: when the N-th recording is spooled (mid-spool), when the N-th
upload is accepted by the store (mid-upload), or when an upload fails during a store outage (the
file:// store's prefix directory replaced by a file for a few seconds). Then:

* the session ends done within a bound in real seconds (no retry waits on the
  stepped clock: the upload pool schedules on ``time.monotonic``);
* the invariants hold (content compared);
* the manifest's dock and release times are what the clock said at some moment
  of the run (real time plus an offset then in force);
* ``dockd status --json``, asked under the same clock mid-run and at the end,
  shows no negative or day-long ETA, no negative rate or uptime.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import harness as h
from .base import Context, Result, timed
from .invariants import DirView, snapshot

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")   # Debian's faketime
SERIAL = "CAMK"
MiB = 1 << 20
MAX_ETA = 24 * 3600.0
# events logged at info (the campaign's log level): upload.started is debug, and a step waiting
# for it would only ever come at the end
TRIGGERS = {"mid-spool": "recording.spooled", "mid-upload": "upload.uploaded", "during an outage": "upload.failed"}


def schedule(seed: int, large: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    outage = seed % 3 == 2 or rng.random() < 0.3
    steps = []
    whens = ["mid-spool", "mid-upload"] + (["during an outage"] if outage else [])
    first = whens[seed % len(whens)]
    for i in range(rng.randint(1, 3)):
        when = first if i == 0 else rng.choice(whens)
        scale = rng.choice(["minutes", "hours", "days"])
        mag = {"minutes": rng.randint(1, 59) * 60, "hours": rng.randint(1, 23) * 3600,
               "days": rng.randint(1, 9) * 86400}[scale]
        steps.append({"when": when, "nth": rng.randint(1, 3), "by": mag * rng.choice([-1, 1])})
    return {"seed": seed, "steps": steps, "outage": round(rng.uniform(2, 6), 2) if outage else 0.0,
            "camera_seed": rng.randrange(1 << 30), "big": rng.randint(1, 6) * MiB}


class _Clock:
    """The faked wall clock's offset file, and the offsets it has held (real time, offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.history: list[tuple[float, int]] = [(time.time(), 0)]
        self.path.write_text("+0\n")

    def step(self, by: int) -> None:
        self.offset += by
        self.path.write_text(f"{self.offset:+d}\n")
        self.history.append((time.time(), self.offset))

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _dockd(clock: _Clock, argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, **clock.env(),
               PYTHONPATH=os.pathsep.join(filter(None, [str(h.REPO), os.environ.get("PYTHONPATH")])))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", _SHIM, *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(h.REPO))


# libfaketime 0.9.10 fails clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which is how
# Python's time.sleep waits, with EINVAL once an offset is set (FAKETIME_DONT_FAKE_MONOTONIC
# or not): a fault of the fake, no real clock does it. The child sleeps with select(2), a
# relative timeout libfaketime leaves alone; condition waits (the upload pool's) are unaffected.
_SHIM = ("import runpy, select, sys, time\n"
         "time.sleep = lambda s: select.select([], [], [], max(0.0, s))\n"
         "sys.argv[0] = 'dockd'\n"
         "runpy.run_module('dockd', run_name='__main__', alter_sys=True)\n")


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    try:
        for line in log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    except OSError:
        pass
    return out


def _status(clock: _Clock, st: h.StationDirs, root: Path, n: int) -> tuple[dict[str, Any] | None, str]:
    log = root / f"status{n}.json"
    p = _dockd(clock, ["--config", str(st.config), "status", "--json"], log)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    text = log.read_text(errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def _absurd(snap: dict[str, Any]) -> list[str]:
    out = []
    for b in snap.get("bays", []):
        eta, rate = b.get("eta_seconds"), b.get("rate_bps")
        if eta is not None and not 0 <= eta <= MAX_ETA:
            out.append(f"bay {b['camera']}: ETA {eta} s")
        if rate is not None and rate < 0:
            out.append(f"bay {b['camera']}: rate {rate} B/s")
    up = (snap.get("daemon") or {}).get("uptime_seconds")
    if up is not None and up < -1:
        out.append(f"daemon uptime {up} s")
    age = (snap.get("queue") or {}).get("oldest_age_seconds")
    if age is not None and age < 0:
        out.append(f"queue's oldest age {age} s")
    return out


def _said_by_the_clock(t: float, clock: _Clock, t0: float, t1: float) -> bool:
    """True if ``t`` is real time in [t0, t1] plus an offset the clock held then."""
    offsets = {off for _at, off in clock.history}
    return any(t0 - 2 <= t - off <= t1 + 2 for off in offsets)


def _iso(s: str | None) -> float | None:
    if not s:
        return None
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run_one(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    sch = schedule(seed, ctx.large)
    root = ctx.scratch(f"clock-{seed}")
    v: list[str] = []
    faults: dict[str, int] = {}
    try:
        st = h.StationDirs(root, ctx.pub)
        st.extra = "[spool]\nmin_free = 0\n"
        st.write()
        st.config.write_text(st.config.read_text().replace(
            "attempts = 3\nbackoff_initial = 0\nbackoff_max = 0",
            "attempts = 2\nbackoff_initial = 1\nbackoff_max = 2"))
        stage = root / "stage" / SERIAL
        h.small_camera(stage, random.Random(sch["camera_seed"]))
        (stage / "DCIM/100BWC/VID_0009.MP4").write_bytes(h.content(f"clock-{seed}", sch["big"]))
        before = snapshot(stage)
        st.inbox.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(st.inbox / SERIAL))
        cam = st.inbox / SERIAL
        clock = _Clock(root / "faketime")
        store = st.store_dir
        blocked = store / "evidence"         # the prefix's directory: a file there is an outage (ENOTDIR)
        if sch["outage"]:
            store.mkdir(parents=True, exist_ok=True)
            blocked.write_bytes(b"")
            faults["store outage"] = 1
        log = root / "run.log"
        t0 = time.time()
        proc = _dockd(clock, ["--config", str(st.config), "run"], log)
        pending = list(sch["steps"])
        outage_over = None
        status_n = 0
        deadline = time.monotonic() + 90 + sch["outage"]
        done = False
        mid_checked = False
        while time.monotonic() < deadline and proc.poll() is None:
            evs = _events(log)
            names = [e.get("event") for e in evs]
            for s in list(pending):
                if names.count(TRIGGERS[s["when"]]) >= s["nth"] or (
                        s["when"] == "during an outage" and outage_over is not None):
                    clock.step(s["by"])
                    pending.remove(s)
                    label = f"clock stepped {'forward' if s['by'] > 0 else 'back'} {s['when']}"
                    faults[label] = faults.get(label, 0) + 1
            if sch["outage"] and outage_over is None and "upload.failed" in names:
                outage_over = time.monotonic() + sch["outage"]
            if outage_over is not None and time.monotonic() >= outage_over and blocked.is_file():
                blocked.unlink()
            if not mid_checked and TRIGGERS["mid-upload"] in names and clock.offset:
                mid_checked = True
                status_n += 1
                snap, text = _status(clock, st, root, status_n)
                if snap is None:
                    v.append(f"dockd status --json mid-run gave no JSON: {text[-300:]}")
                else:
                    v += [f"mid-run status: {x}" for x in _absurd(snap)]
            if any(e.get("event") == "session.done" and e.get("camera") == SERIAL for e in evs):
                done = True
                break
            if any(e.get("event") == "session.attention" and e.get("camera") == SERIAL for e in evs):
                break
            time.sleep(0.1)
        for s in pending:           # a step whose moment never came: taken now, at the end
            clock.step(s["by"])
            faults["clock stepped at the end"] = faults.get("clock stepped at the end", 0) + 1
        if blocked.is_file():
            blocked.unlink()
        status_n += 1
        snap, text = _status(clock, st, root, status_n)
        if snap is None:
            v.append(f"dockd status --json gave no JSON: {text[-300:]}")
        else:
            v += [f"status: {x}" for x in _absurd(snap)]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            v.append("dockd run did not stop on SIGTERM within 30 s")
            proc.kill()
            proc.wait()
        t1 = time.time()
        evs = _events(log)
        if any(e.get("event") == "upload.bug" for e in evs) or "Traceback" in log.read_text(errors="replace"):
            v.append("dockd run logged upload.bug or a traceback")
        unfinished = None
        if not done:
            _n, ph = h.last_phase(st.ledger, SERIAL)
            unfinished = f"session {ph}, not done, {90 + sch['outage']:.0f} s after the start ({root})"
        for m in sorted(store.rglob("*.manifest.json")) if store.is_dir() else []:
            doc = json.loads(m.read_text())
            for k in ("docked_at", "released_at"):
                t = _iso(doc.get(k))
                if t is not None and not _said_by_the_clock(t, clock, t0, t1):
                    v.append(f"manifest {k} {doc.get(k)} is no time the clock said (offsets "
                             f"{[o for _a, o in clock.history]})")
        v += ctx.invariants.check(before=before, camera_after=snapshot(cam), store=DirView(store),
                                  spool=st.spool, ledger=st.ledger, serial=SERIAL)
        return faults, v, unfinished
    finally:
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("clock")
    if not LIBFAKETIME.exists():
        res.skipped = "libfaketime not installed (Debian package faketime)"
        return res
    seeds = [seed] if seed is not None else list(range(100 if ctx.large else 4))
    res.run_seeds(seeds, lambda s: run_one(ctx, s), 3)
    biggest = max(abs(x["by"]) for s in seeds for x in schedule(s, ctx.large)["steps"])
    res.notes.append(f"{len(seeds)} schedules under `dockd run` with libfaketime; largest step "
                     f"{biggest / 86400:.1f} days")
    return res
