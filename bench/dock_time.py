"""Dock-to-safe-to-undock for a 1 GiB exFAT camera, next to ``cat`` of its files.

Needs root, loop devices, FUSE, exfatprogs/exfat-fuse and systemd-udevd (see
tests/loopcam.py). It builds an exFAT image holding ``--gib`` of recordings,
then, with the page cache dropped (``echo 3 > /proc/sys/vm/drop_caches``)
before each measurement:

* ``cat``: mount.exfat-fuse the image read-only and ``cat`` every file to
  /dev/null (mount and unmount not counted);
* ``dockd``: a running ``dockd run`` (udev source, file:// store and spool in
  the same temp dir, so on the same disk as the image), then ``losetup``
  (the dock) until the ``session.done`` log line (the bay shows safe to
  undock: copied, hashed, encrypted, uploaded, verified, wiped, synced,
  unmounted).

    sudo .venv/bin/python bench/dock_time.py [--gib 1] [--files 8] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import loopcam  # noqa: E402

from dockd.age import generate_identity  # noqa: E402

MiB = 1024 * 1024


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def time_cat(image: Path) -> float:
    dev = loopcam.attach(image)
    mnt = Path(tempfile.mkdtemp(prefix="dockbench-cat-"))
    try:
        loopcam.run("mount.exfat-fuse", "-o", "ro", dev, str(mnt))
        try:
            files = sorted(str(p) for p in mnt.rglob("*") if p.is_file())
            drop_caches()
            t0 = time.monotonic()
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
            return time.monotonic() - t0
        finally:
            loopcam.run("fusermount", "-u", str(mnt))
    finally:
        loopcam.detach(dev)
        mnt.rmdir()


def time_dockd(image: Path, label: str, tmp: Path) -> tuple[float, dict]:
    ident = generate_identity()
    cfg = tmp / "dockd.toml"
    cfg.write_text(f"""
[station]
id = "bench"
[paths]
state_dir = "{tmp}/state"
spool_dir = "{tmp}/state/spool"
runtime_dir = "{tmp}/run"
[encryption]
recipients = ["{ident.public()}"]
[store]
url = "file://{tmp}/store"
[devices]
source = "udev"
mount_dir = "{tmp}/mnt"
[spool]
min_free = 0
[upload]
backoff_initial = 0
[log]
format = "json"
""")
    log_path = tmp / "dockd.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dockd", "--config", str(cfg), "run"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        cam = loopcam.LoopCamera(image)
        try:
            def events(name: str) -> list[dict]:
                found = []
                for raw in log_path.read_bytes().splitlines():
                    try:
                        e = json.loads(raw)
                    except ValueError:
                        continue
                    if e.get("event") == name:
                        found.append(e)
                return found

            def wait(name: str, timeout: float) -> dict:
                deadline = time.monotonic() + timeout
                while not (hits := events(name)):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"no {name}; log tail:\n" + log_path.read_text()[-3000:])
                    time.sleep(0.01)
                return hits[0]

            wait("daemon.started", 30)
            with loopcam.tag_rule(label=label, profile="generic"):
                drop_caches()
                t0 = time.monotonic()
                cam.attach()
                done = wait("session.done", 900)
                elapsed = time.monotonic() - t0
                if events("session.attention"):
                    raise SystemExit("session needs attention:\n" + log_path.read_text()[-3000:])
                proc.send_signal(signal.SIGTERM)
                if proc.wait(timeout=60) != 0:
                    raise SystemExit(f"dockd exited {proc.returncode}")
            spooled = {e["recording"]: e["seconds"] for e in events("recording.spooled")}
            return elapsed, {"recordings": done.get("recordings"), "bytes": done.get("bytes"),
                             "spool_seconds": round(sum(spooled.values()), 2)}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            cam.__exit__(None, None, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="recording bytes on the camera (GiB)")
    ap.add_argument("--files", type=int, default=8, help="number of recordings")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if (why := loopcam.skip_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    loopcam.ensure_udevd()
    tmp = Path(tempfile.mkdtemp(prefix="dockbench-", dir=args.dir))
    try:
        total = int(args.gib * 1024 * MiB)
        each = total // args.files
        files = {f"DCIM/100BWC/CLIP{i:04d}.MP4": each for i in range(args.files)}
        files.update({f"DCIM/100BWC/CLIP{i:04d}.XML": b"<clip/>" for i in range(args.files)})
        label = loopcam.unique_label()
        t = time.monotonic()
        image = loopcam.make_camera_image(tmp / "cam.img", files, label=label)
        print(f"image: {total / MiB:.0f} MiB of recordings in {args.files} files, exFAT on a loop device "
              f"(built in {time.monotonic() - t:.1f}s)")
        cat_s = time_cat(image)
        dock_s, info = time_dockd(image, label, tmp)
        left = loopcam.read_image(image)
        assert not any(k.endswith(".MP4") for k in left), f"recordings left on the camera: {left}"
        assert loopcam.fsck(image).returncode == 0, "fsck.exfat -n is not clean"
        mb = total / 1e6
        print(f"cat of its files (cold cache):      {cat_s:7.2f} s  {mb / cat_s:7.1f} MB/s")
        print(f"dockd dock -> safe to undock:       {dock_s:7.2f} s  {mb / dock_s:7.1f} MB/s  "
              f"({dock_s / cat_s:.2f}x cat; spooling {info['spool_seconds']}s of it)")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
