"""Store faults: moto S3 behind the fault proxy (tests/faultproxy.py), ``dockd run`` on top.

Each seed picks one or two faults and when to arm them: connection resets
mid-body, 503/500 bursts, 429 bursts, a stall (requests read, never
answered), an outage (the port refuses connections) lasting seconds (CI) or
minutes (large), or credentials revoked (every request answered 403
InvalidAccessKeyId) for a while. While credentials are revoked, nothing may be
wiped; once restored, the queue must resume on its own (it probes) and
finish. If a session ends in attention because retries ran out, dockd is
restarted once the store is healthy, as an operator would.

Lying-store schedules put a proxy in front of moto that keeps 1,000 bytes less
of every object sent in one request and, asked with HEAD or a listing, echoes
the size, ETag and checksum that were sent. Nothing may be wiped while it
lies; dockd is then pointed at the honest store and restarted, and must
finish.

Half-working-store schedules (seeds from 2000) put the same proxy in another
mode: a PUT stored short whose HEAD and listing tell the truth; a PUT answered
200 and never stored, which listings then claim; a CompleteMultipartUpload that
succeeded upstream answered 500; a PUT or POST done upstream whose connection is
dropped before the answer. Nothing may be wiped on a lie; after a restart on the
honest store the session must finish.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from typing import Any

from . import harness as h
from .base import Context, Result, timed
from .invariants import S3View, snapshot

SERIAL = "CAMS"


def schedule(seed: int, large: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    kinds = ["reset", "503", "429", "500", "stall", "outage", "revoked"]
    faults = []
    first = kinds[seed % len(kinds)]           # every kind in every block of seven seeds
    faults.append(first)
    if rng.random() < 0.4:
        faults.append(rng.choice([k for k in kinds if k not in ("revoked", first)]))
    out = []
    for k in faults:
        f: dict[str, Any] = {"kind": k, "at": round(rng.uniform(0, 0.6), 3)}
        if k == "reset":
            f["after"] = rng.randint(1, 300_000)
            f["times"] = rng.randint(1, 4)
        elif k in ("503", "429", "500"):
            f["n"] = rng.randint(1, 12)
        elif k == "stall":
            f["for"] = round(rng.uniform(1, 7), 2)
        elif k == "outage":
            long = large and seed % 50 == 5
            f["for"] = round(rng.uniform(120, 180) if long else rng.uniform(1, 5), 2)
        elif k == "revoked":
            f["at"] = 0
            f["for"] = round(rng.uniform(2, 5), 2)
        out.append(f)
    return {"seed": seed, "faults": out, "camera_seed": rng.randrange(1 << 30)}


def _arm(proxy: Any, f: dict[str, Any]) -> None:
    k = f["kind"]
    if k == "reset":
        proxy.reset_after(f["after"], f["times"])
    elif k in ("503", "429", "500"):
        proxy.slowdown(f["n"], int(k))
    elif k == "stall":
        proxy.stall()
    elif k == "outage":
        proxy.outage()
    elif k == "revoked":
        proxy.slowdown(10**9, 403)


_ports = iter(range(20000 + (time.monotonic_ns() // 1000) % 5000, 32000))
_ports_lock = threading.Lock()


def _proxy(upstream: int) -> Any:
    """A FaultProxy on a port below the ephemeral range: during an outage a client's own
    connect to a free ephemeral port can self-connect and steal it, and the proxy could
    not listen again."""
    import socket

    from faultproxy import FaultProxy

    class LowPortProxy(FaultProxy):
        def _listen(self) -> None:
            if self.port == 0:
                with _ports_lock:
                    for port in _ports:
                        with socket.socket() as s:
                            try:
                                s.bind(("127.0.0.1", port))
                            except OSError:
                                continue
                        self.port = port
                        break
            super()._listen()

    return LowPortProxy(upstream)


def run_one(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    sch = schedule(seed, ctx.large)
    root = ctx.scratch(f"store-{seed}")
    ep = ctx.moto()
    proxy = _proxy(ep.port)
    violations: list[str] = []
    faults: dict[str, int] = {}
    try:
        bucket = ep.new_bucket()
        st = h.StationDirs(root, ctx.pub)
        st.store_url, st.store_extra = ctx.s3_station_extra(ep, bucket, root, endpoint_url=proxy.url)
        st.extra = "[spool]\nmin_free = 0\n"
        st.store_extra = st.store_extra.replace("timeout = 5", "")
        st.write()
        stage = root / "stage" / SERIAL
        h.small_camera(stage, random.Random(sch["camera_seed"]))
        before = snapshot(stage)
        cam = st.inbox / SERIAL
        cam.parent.mkdir(parents=True, exist_ok=True)
        revoked = [f for f in sch["faults"] if f["kind"] == "revoked"]
        for f in sch["faults"]:
            label = {"reset": "connection reset", "503": "503 burst", "500": "500 burst", "429": "429 burst",
                     "stall": "stall", "outage": "outage", "revoked": "credentials revoked"}[f["kind"]]
            faults[label] = faults.get(label, 0) + 1
        if revoked:
            _arm(proxy, revoked[0])
        shutil.move(str(stage), str(cam))
        timers = []
        t0 = time.monotonic()
        revoked_until = t0 + revoked[0]["for"] if revoked else 0.0
        # The proxy holds one fault at a time: arming or clearing another would end the
        # revocation early, so the other faults come after it.
        after = revoked[0]["for"] if revoked else 0.0
        for f in sch["faults"]:
            if f["kind"] == "revoked":
                continue
            timers.append(threading.Timer(after + f["at"], _arm, (proxy, f)))
            if "for" in f:
                timers.append(threading.Timer(after + f["at"] + f["for"], proxy.clear))
        if revoked:
            timers.append(threading.Timer(revoked[0]["for"], proxy.clear))
        for t in timers:
            t.start()
        p = h.daemon(st, root / "run1.log", s3_min_part=h.TEST_MIN_PART)
        n0 = 0
        phase = None
        deadline = t0 + (revoked[0]["for"] if revoked else 0.0) + max(
            [f.get("at", 0) + f.get("for", 0) for f in sch["faults"]] + [0]) + 90
        while time.monotonic() < deadline and p.is_alive():
            if revoked and time.monotonic() < revoked_until - 0.2 and snapshot(cam) != before:
                violations.append("a file was wiped while the store refused our credentials")
                break
            n, ph = h.last_phase(st.ledger, SERIAL)
            if n > n0 and ph in ("done", "attention"):
                phase = ph
                break
            time.sleep(0.05)
        p.signal(15)
        if p.wait(30) is None:
            p.kill9()
            p.wait(5)
        for t in timers:
            t.cancel()
        proxy.clear()
        unfinished = None
        if phase != "done":
            # retries ran out (or the wait did): restart on a healthy store, as an operator would
            faults["restart after the fault"] = faults.get("restart after the fault", 0) + 1
            p, phase = h.run_daemon_until_final(st, SERIAL, root / "run2.log", timeout=90,
                                                s3_min_part=h.TEST_MIN_PART)
            if phase != "done":
                unfinished = f"phase {phase} after a restart on a healthy store ({root})"
        events = [e["event"] for e in p.events()]
        refused = any(r.answered_by_proxy == 403 for r in list(proxy.requests))
        if refused and "store.auth_failed" not in [e["event"] for e in h.Proc(0, 0, root / "run1.log").events()]:
            # only a request the store refused can teach dockd that its credentials were revoked
            # (on a loaded machine the whole revocation may pass before the first request)
            violations.append("credentials were refused but no store.auth_failed was logged")
        elif revoked and not refused:
            faults["credentials revoked before any request (nothing refused)"] = 1
        del events
        violations += ctx.invariants.check(before=before, camera_after=snapshot(cam),
                                           store=S3View(ep.client(), bucket, "site"), spool=st.spool,
                                           ledger=st.ledger, serial=SERIAL)
        return faults, violations, unfinished
    finally:
        proxy.close()
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


LYING_FIRST = 1000        # seeds from here on are lying-store schedules


def run_lying(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    from faultproxy import TruncatingProxy

    root = ctx.scratch(f"lying-{seed}")
    ep = ctx.moto()
    proxy = TruncatingProxy(ep.port)
    violations: list[str] = []
    try:
        bucket = ep.new_bucket()
        st = h.StationDirs(root, ctx.pub)
        st.store_url, st.store_extra = ctx.s3_station_extra(ep, bucket, root, endpoint_url=proxy.url)
        st.extra = "[spool]\nmin_free = 0\n"
        st.write()
        # fewer tries against a liar (the harness writes the [upload] section)
        st.config.write_text(st.config.read_text().replace("attempts = 3", "attempts = 3\nmax_integrity_retries = 2"))
        stage = root / "stage" / SERIAL
        h.small_camera(stage, random.Random(seed))
        before = snapshot(stage)
        cam = st.inbox / SERIAL
        cam.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(cam))
        p, phase = h.run_daemon_until_final(st, SERIAL, root / "run1.log", timeout=90,
                                            s3_min_part=h.TEST_MIN_PART)
        lied = [b for b in before if b.startswith(b"DCIM/") and len(before[b]) > 0]
        gone = [b for b in lied if b not in snapshot(cam)]
        if proxy.lies == 0:
            violations.append("the proxy never lied: the schedule proves nothing")
        wiped_whole = [b for b in gone if len(before[b]) >= h.TEST_MIN_PART]   # went up in parts: honest
        gone = [b for b in gone if b not in wiped_whole]
        if gone:
            violations.append(f"wiped on the word of a lying store: {gone}")
        if phase == "done" and any(len(before[b]) < h.TEST_MIN_PART for b in lied):
            violations.append("the session against a lying store ended done")
        violations += ctx.invariants.check(before=before, camera_after=snapshot(cam),
                                           store=S3View(ep.client(), bucket, "site"), spool=st.spool,
                                           ledger=st.ledger, serial=SERIAL, interim=True)
        # the operator points dockd at the honest store and restarts it
        st.config.write_text(st.config.read_text().replace(proxy.url, ep.endpoint_url))
        p, phase = h.run_daemon_until_final(st, SERIAL, root / "run2.log", timeout=90,
                                            s3_min_part=h.TEST_MIN_PART)
        unfinished = None if phase == "done" else f"phase {phase} on the honest store ({root})"
        violations += ctx.invariants.check(before=before, camera_after=snapshot(cam),
                                           store=S3View(ep.client(), bucket, "site"), spool=st.spool,
                                           ledger=st.ledger, serial=SERIAL)
        return {"lying store (truncates, echoes HEAD)": 1}, violations, unfinished
    finally:
        proxy.close()
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


HALF_FIRST = 2000         # seeds from here on are half-working-store schedules
HALF_KINDS = ["honest", "phantom", "complete-500", "drop-after-response"]
HALF_LABELS = {"honest": "PUT stored short, honest HEAD",
               "phantom": "listing claims an object that is not there (PUT swallowed)",
               "complete-500": "500 after a completed multipart upload",
               "drop-after-response": "connection dropped after the store did the request"}


def run_half(ctx: Context, seed: int) -> tuple[dict[str, int], list[str], str | None]:
    """A store that lies or half-works (tests/faultproxy.py's TruncatingProxy modes), then the
    honest store, restarted as an operator would. Nothing may be wiped on the word of the
    first; the second must finish."""
    from faultproxy import TruncatingProxy

    kind = HALF_KINDS[seed % len(HALF_KINDS)]
    rng = random.Random(seed)
    root = ctx.scratch(f"half-{seed}")
    ep = ctx.moto()
    lying = kind in ("honest", "phantom")
    proxy = TruncatingProxy(ep.port, mode=kind, times=10**9 if lying else rng.randint(1, 3))
    violations: list[str] = []
    try:
        bucket = ep.new_bucket()
        st = h.StationDirs(root, ctx.pub)
        st.store_url, st.store_extra = ctx.s3_station_extra(ep, bucket, root, endpoint_url=proxy.url)
        st.extra = "[spool]\nmin_free = 0\n"
        st.write()
        st.config.write_text(st.config.read_text().replace("attempts = 3", "attempts = 3\nmax_integrity_retries = 2"))
        stage = root / "stage" / SERIAL
        h.small_camera(stage, random.Random(rng.randrange(1 << 30)))
        before = snapshot(stage)
        cam = st.inbox / SERIAL
        cam.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(cam))
        p, phase = h.run_daemon_until_final(st, SERIAL, root / "run1.log", timeout=90,
                                            s3_min_part=h.TEST_MIN_PART)
        if proxy.lies == 0:
            violations.append(f"{kind}: the proxy never acted: the schedule proves nothing")
        if lying:
            small = [b for b in before if b.startswith(b"DCIM/") and 0 < len(before[b]) < h.TEST_MIN_PART]
            gone = [b for b in small if b not in snapshot(cam)]
            if gone:
                violations.append(f"{kind}: wiped on the word of a lying store: {gone}")
            if phase == "done" and small:
                violations.append(f"{kind}: the session against a lying store ended done")
        violations += [f"{kind}: {x}" for x in ctx.invariants.check(
            before=before, camera_after=snapshot(cam), store=S3View(ep.client(), bucket, "site"), spool=st.spool,
            ledger=st.ledger, serial=SERIAL, interim=True)]
        unfinished = None
        if phase != "done":
            st.config.write_text(st.config.read_text().replace(proxy.url, ep.endpoint_url))
            p, phase = h.run_daemon_until_final(st, SERIAL, root / "run2.log", timeout=90,
                                                s3_min_part=h.TEST_MIN_PART)
            if phase != "done":
                unfinished = f"{kind}: phase {phase} on the honest store ({root})"
        violations += [f"{kind}: {x}" for x in ctx.invariants.check(
            before=before, camera_after=snapshot(cam), store=S3View(ep.client(), bucket, "site"), spool=st.spool,
            ledger=st.ledger, serial=SERIAL)]
        return {HALF_LABELS[kind]: 1}, violations, unfinished
    finally:
        proxy.close()
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("store-faults")
    seeds = [seed] if seed is not None else (list(range(140 if ctx.large else 14))
                                             + list(range(LYING_FIRST, LYING_FIRST + (10 if ctx.large else 2)))
                                             + list(range(HALF_FIRST, HALF_FIRST + (40 if ctx.large else 4))))
    def run(s: int) -> tuple[dict[str, int], list[str], str | None]:
        return (run_half if s >= HALF_FIRST else run_lying if s >= LYING_FIRST else run_one)(ctx, s)

    res.run_seeds(seeds, run, 4)
    longest = max([f.get("for", 0) for s in seeds if s < LYING_FIRST for f in schedule(s, ctx.large)["faults"]]
                  + [0])
    res.notes.append(f"{len(seeds)} schedules against moto through the fault proxy, under `dockd run`; "
                     f"longest outage/stall/revocation {longest:.0f} s")
    return res
