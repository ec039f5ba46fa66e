"""The campaign runner: ``python -m campaigns.run --size ci|large [--campaign NAME] [--seed N]``.

Runs the campaigns, prints one line per campaign, and writes the report:
the large size to ``docs/RELIABILITY.md`` (committed), the CI size to a
temporary file unless ``--report`` names one. Exit 1 if any invariant was
violated or a run did not finish.
"""

from __future__ import annotations

import argparse
import collections
import json
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .base import Context, Result

REPO = Path(__file__).resolve().parents[1]


def registry() -> dict[str, Callable[..., Result]]:
    from . import camera_faults, clock, crash, fuzz, hostile, local_faults, noncamera, powercut, store_faults

    return {
        "crash": crash.campaign,
        "powercut": powercut.campaign,
        "store-faults": store_faults.campaign,
        "local-faults": local_faults.campaign,
        "camera-faults": camera_faults.campaign,
        "clock": clock.campaign,
        "hostile": hostile.campaign,
        "non-camera": noncamera.campaign,
        "fuzz": fuzz.campaign,
    }


FAULTS_DESCRIBED = {
    "crash": "kill -9 at a seeded log-event count or delay, 1–3 per schedule, during scan/spool/upload/wipe",
    "powercut": "power cuts on a FUSE filesystem that keeps only what was made durable (campaigns/fs/powercut.py): "
                "spool, ledger and file:// store on one, the camera on another; at the N-th fsync/fdatasync/fsyncdir "
                "(seeded, 1–3 per schedule) dockd is killed with SIGKILL and both lose all that was not durable; "
                "pessimistic (a name is durable when its directory is fsynced) and ext4-like (any fsync commits "
                "every name; a rename over a file carries its data) modes; `dockd ingest` and `dockd run`",
    "store-faults": "connection resets, 503/500 bursts, 429 bursts, stalls, an outage, credentials revoked (403); "
                    "a lying store (keeps 1,000 bytes less of each single PUT, echoes the sent size, ETag and checksum), "
                    "then the honest store; a half-working store: a PUT stored short with an honest HEAD, "
                    "a PUT swallowed that listings claim, a 500 after a completed multipart upload, a "
                    "connection dropped after the store did the request",
    "local-faults": "spool disk full (loop ext4), a flipped bit in a spool file, camera pulled mid-read, EIO (dm error target)",
    "camera-faults": "a FUSE camera (campaigns/fs/camera.py) under `dockd ingest` and `dockd run`: EIO on a read "
                     "(a bad sector, or once), EIO on a directory listing, reads that stall for seconds then "
                     "answer or fail, short reads, USB 2.0 speed (40 MB/s) or a slower bus; then a healthy re-dock",
    "clock": "the wall clock (libfaketime) stepped by ±minutes to ±days, 1–3 times, mid-spool, mid-upload and "
             "during a store outage, under `dockd run`; manifests' times and `dockd status` ETAs checked",
    "hostile": "symlinks, `..`, control chars, invalid UTF-8, 255-byte names, FIFOs, device nodes, many files, "
               "zero-byte, growing file, 1,000-deep tree, 1970/2100 mtimes, unreadable directory; redocks: "
               "a new clip under a wiped clip's identity, a clip replaced or rewritten in place (mtime "
               "restored) before a deferred wipe, one name and content in two folders",
    "non-camera": "an untagged exFAT USB stick on a loop device under `dockd run` (udev source)",
    "fuzz": "hypothesis: `dockd.config.parse` and the age decryptor on arbitrary and mutated input",
}


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        os_name = "Linux"
    return (f"{os_name}, kernel {platform.release()}, {os.cpu_count()} CPU ({cpu}), {mem}, "
            f"Python {platform.python_version()}")


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def render(results: list[Result], size: str, seconds: float) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability campaigns",
        "",
        "<!-- GENERATED by `python -m campaigns.run --size large`; do not edit by hand. -->",
        "",
        f"Size **{size}**, run {when} on commit `{commit()}`; the campaigns ran side by side, {seconds / 60:.1f} min wall.",
        f"Machine: {machine()}.",
        "",
        "After every run the one `Invariants` checker (campaigns/invariants.py) asserts: (1) every file on a",
        "camera when it docked is still there byte-identical, or verified in the store (the object decrypts",
        "with the age identity to bytes with the recorded SHA-256), judged twice: through the ledger, and by",
        "content alone (every byte sequence the camera held at dock time is at its path on the camera or",
        "decrypts from some object in the store; a path, size and mtime can belong to a different clip, so",
        "identity proves nothing here); (2) nothing was deleted that is not verified; (3) no two recordings",
        "share an object, no orphan object, no open multipart upload; (4) the spool",
        "holds nothing verified and loses nothing that is not; (5) the ledger passes `PRAGMA",
        "integrity_check` and its audit chain, and its states agree with the store and the camera.",
        "",
        "| campaign | runs | faults injected | invariant violations | unfinished | time |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in results:
        faults = ", ".join(f"{k}: {v}" for k, v in sorted(r.faults.items())) or "—"
        if r.skipped:
            lines.append(f"| {r.name} | skipped | {r.skipped} | — | — | — |")
            continue
        lines.append(f"| {r.name} | {r.runs} | {faults} | **{len(r.violations)}** | {len(r.unfinished)} "
                     f"| {r.seconds:.0f} s |")
    lines += ["", "## What each campaign does", ""]
    for r in results:
        lines.append(f"* **{r.name}**: {FAULTS_DESCRIBED.get(r.name, '')}.")
        for n in r.notes:
            lines.append(f"  {n}.")
    bad = [r for r in results if r.violations or r.unfinished]
    if bad:
        lines += ["", "## Violations and unfinished runs", ""]
        for r in bad:
            for seed, v in (r.violations + r.unfinished)[:50]:
                lines.append(f"* {r.name} seed {seed}: {v}")
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        "python -m campaigns.run --size ci                      # what `pytest tests/test_campaigns.py` runs",
        "python -m campaigns.run --size large                   # this report",
        "python -m campaigns.run --campaign crash --seed N      # replay one crash schedule",
        "python -m campaigns.run --campaign store-faults --seed N",
        "```",
        "",
        "Crash schedules, store-fault schedules, power-cut schedules and hostile layouts are functions of their",
        "seed alone.",
        "",
        "What the power-cut filesystem cannot model: a disk whose write cache ignores flushes; torn or",
        "reordered writes within one file (a file is durable whole, as of its last fsync); a cut in the middle",
        "of an fsync. `syncfs(2)` and `sync(2)` never reach a FUSE server (the kernel sends `FUSE_SYNCFS` only",
        "to virtiofs), so on it they make nothing durable, as on any FUSE filesystem; dockd fsyncs each file",
        "there instead. On ext4 itself a syncfs is a journal commit; that path is not exercised here.",
        "Root, loop devices, FUSE (exFAT) and `dmsetup` are needed for local-faults and non-camera; without",
        "them those rows say skipped, and why.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m campaigns.run")
    ap.add_argument("--size", choices=["ci", "large"], default="ci")
    ap.add_argument("--campaign", action="append", help="run only this campaign (repeatable)")
    ap.add_argument("--seed", type=int, help="replay one schedule of the campaign")
    ap.add_argument("--report", type=Path, help="where to write the report")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = ap.parse_args(argv)
    reg = registry()
    names = args.campaign or list(reg)
    for n in names:
        if n not in reg:
            ap.error(f"unknown campaign {n!r}; one of {', '.join(reg)}")
    ctx = Context(args.size, keep=args.keep)
    t0 = time.monotonic()
    results: list[Result] = []

    def one(n: str) -> Result:
        return reg[n](ctx, seed=args.seed) if args.seed is not None else reg[n](ctx)

    try:
        # the campaigns mostly wait on dockd processes and servers: run them side by side
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            done = list(pool.map(one, names))
        for n, r in zip(names, done):
            results.append(r)
            status = "skipped: " + r.skipped if r.skipped else (
                "ok" if r.ok else f"{len(r.violations)} violation(s), {len(r.unfinished)} unfinished")
            print(f"{n}: {r.runs} runs, {sum(r.faults.values())} faults, {status} ({r.seconds:.0f} s)", flush=True)
            for seed, v in (r.violations + r.unfinished)[:20]:
                print(f"  seed {seed}: {v}", flush=True)
    finally:
        ctx.close()
    report = args.report
    if report is None:
        report = (REPO / "docs" / "RELIABILITY.md" if args.size == "large" and not args.campaign and args.seed is None
                  else Path(tempfile.gettempdir()) / f"dockd-reliability-{args.size}.md")
    report.parent.mkdir(parents=True, exist_ok=True)
    # a report keeps the rows of campaigns not run this time (their results sit beside it)
    store = report.with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else {}
    if rows.get("size") != args.size or args.seed is not None:
        rows = {"size": args.size}
    for r in results:
        rows[r.name] = {"runs": r.runs, "faults": dict(r.faults), "violations": r.violations,
                        "unfinished": r.unfinished, "notes": r.notes, "seconds": r.seconds,
                        "skipped": r.skipped, "wall": time.monotonic() - t0}
    merged = []
    for name in registry():
        if name in rows:
            d = rows[name]
            r = Result(name, d["runs"], collections.Counter(d["faults"]), [tuple(x) for x in d["violations"]],
                       [tuple(x) for x in d["unfinished"]], d["notes"], d["seconds"], d["skipped"])
            merged.append(r)
    store.write_text(json.dumps(rows, indent=1, default=str))
    report.write_text(render(merged, args.size, max(d.get("wall", 0) for k, d in rows.items() if k != "size")))
    print(f"report: {report}")
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
