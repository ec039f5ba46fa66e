"""A camera that fails like hardware: a FUSE passthrough over a directory.

``python -m campaigns.fs.camera BACKING MOUNTPOINT --faults FILE.json`` serves
BACKING (a directory, or an exFAT image already mounted) at MOUNTPOINT until it
is unmounted, injecting the faults FILE.json describes::

    {"rate": 40000000,                       # bytes/s for every read (USB 2.0), 0 = as fast as it goes
     "log": "/path/fired.jsonl",             # one JSON line per fault that fired
     "rules": [
       {"op": "read", "path": "DCIM/100BWC/V1.MP4", "at": 1048576, "kind": "eio", "times": 1},
       {"op": "read", "path": "DCIM/100BWC/V2.MP4", "at": 0, "kind": "stall", "secs": 3, "then": "ok"},
       {"op": "read", "path": "DCIM/100BWC/V3.MP4", "at": 0, "kind": "short", "times": 50},
       {"op": "list", "path": "DCIM/100BWC", "kind": "eio", "times": 1}]}

A ``read`` rule fires on reads of ``path`` that overlap the ``len`` bytes
(default 1) at offset ``at``; ``times`` is how often it fires (default 1; -1
for ever: a bad sector fails every read of it, the kernel's split of a large
read into 128 KiB requests makes a read ending before it a short read). Kinds: ``eio`` (the read fails), ``stall`` (the read waits
``secs`` seconds, then answers, or fails with EIO if ``then`` is ``"eio"``),
``short`` (the read returns fewer bytes than asked, at most 4 KiB). A ``list``
rule fails the listing of directory ``path`` ("" is the root) with EIO, or
stalls it (``stall``, then lists). ``skip``: let that many matching operations
through first (a later pass: the wipe's re-read of a file's head and tail, or
its listing).

Files are served with ``direct_io``: every read the application makes reaches
this process as it was made (no page cache, no read-ahead), so a short read is
a short ``read(2)`` and a throttled read is slow where dockd waits for it.
Deletions (the wipe) pass through to BACKING. Symlinks are shown as symlinks
and never followed here.

``mounted(backing, mountpoint, faults)`` runs it as a child process for a
``with`` block.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

SHORT_MAX = 4096


class _Throttle:
    """One token bucket for the whole device: a USB 2.0 camera shares one bus."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


def _operations(backing: str, spec: dict[str, Any]) -> Any:
    import mfusepy as fuse

    rules = [dict(r, left=r.get("times", 1), skip=r.get("skip", 0)) for r in spec.get("rules", [])]
    lock = threading.Lock()
    throttle = _Throttle(int(spec.get("rate", 0)))
    log_path = spec.get("log")

    def fired(rule: dict[str, Any], **kw: Any) -> None:
        if log_path:
            line = json.dumps({"op": rule["op"], "kind": rule["kind"], "path": rule["path"], **kw})
            with lock, open(log_path, "a") as f:
                f.write(line + "\n")

    def take(op: str, rel: str, lo: int = 0, hi: int = 0) -> dict[str, Any] | None:
        with lock:
            for r in rules:
                if r["op"] != op or r["path"] != rel or r["left"] == 0:
                    continue
                if op == "read" and not (lo < r.get("at", 0) + r.get("len", 1) and r.get("at", 0) < hi):
                    continue
                if r["skip"] > 0:
                    r["skip"] -= 1
                    continue
                if r["left"] > 0:
                    r["left"] -= 1
                return r
        return None

    def real(path: str) -> str:
        return os.path.join(backing, path.lstrip("/"))

    def rel_of(path: str) -> str:
        return path.strip("/")

    class CameraFS(fuse.Operations):
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            st = os.lstat(real(path))
            return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")} | {
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

        def readlink(self, path: str) -> str:
            return os.readlink(real(path))

        def readdir(self, path: str, fh: int) -> list[str]:
            rule = take("list", rel_of(path))
            if rule is not None:
                fired(rule)
                if rule["kind"] == "stall":
                    time.sleep(float(rule.get("secs", 1)))
                else:
                    raise fuse.FuseOSError(errno.EIO)
            return [".", ".."] + os.listdir(real(path))

        def open(self, path: str, fi: Any) -> int:
            fi.fh = os.open(real(path), fi.flags & ~(os.O_CREAT | os.O_TRUNC) | os.O_NOFOLLOW)
            fi.direct_io = 1
            return 0

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            rule = take("read", rel_of(path), offset, offset + size)
            if rule is not None:
                fired(rule, offset=offset)
                if rule["kind"] == "eio":
                    raise fuse.FuseOSError(errno.EIO)
                if rule["kind"] == "stall":
                    time.sleep(float(rule.get("secs", 1)))
                    if rule.get("then") == "eio":
                        raise fuse.FuseOSError(errno.EIO)
                elif rule["kind"] == "short":
                    size = max(1, min(size // 2, SHORT_MAX))
            data = os.pread(fi.fh, size, offset)
            throttle.take(len(data))
            return data

        def release(self, path: str, fi: Any) -> int:
            os.close(fi.fh)
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(real(path))
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(real(path))
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(real(path))
            return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def fsync(self, path: str, datasync: int, fi: Any) -> int:
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0

    return CameraFS()


def serve(backing: str, mountpoint: str, spec: dict[str, Any]) -> None:
    """Serve until unmounted (blocks)."""
    import mfusepy as fuse

    fuse.FUSE(_operations(os.path.abspath(backing), spec), mountpoint, raw_fi=True, foreground=True,
              nothreads=False, fsname="dockd-camera", default_permissions=True)


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path, faults: dict[str, Any], timeout: float = 20.0) -> Iterator[Path]:
    """``backing`` served at ``mountpoint`` with ``faults`` by a child process, for the block;
    unmounted (lazily, if busy) and the child ended after it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    spec = backing.parent / f".{backing.name}.faults.json"      # not in an inbox
    spec.write_text(json.dumps(faults))
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "campaigns.fs.camera", str(backing), str(mountpoint),
                             "--faults", str(spec)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"camera FUSE did not mount: {proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError("camera FUSE did not mount in time")
            time.sleep(0.02)
        yield mountpoint
    finally:
        unmount(mountpoint)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def unmount(mountpoint: Path) -> None:
    for argv in (["fusermount3", "-u", str(mountpoint)], ["fusermount3", "-uz", str(mountpoint)],
                 ["umount", "-l", str(mountpoint)]):
        if not os.path.ismount(mountpoint):
            return
        subprocess.run(argv, capture_output=True, check=False)


def fired(log: Path) -> list[dict[str, Any]]:
    """The faults that fired, from the log the spec named."""
    try:
        return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m campaigns.fs.camera")
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--faults", type=Path)
    args = ap.parse_args(argv)
    spec = json.loads(args.faults.read_text()) if args.faults else {}
    if not stat.S_ISDIR(os.stat(args.backing).st_mode):
        print(f"{args.backing}: not a directory", file=sys.stderr)
        return 2
    serve(args.backing, args.mountpoint, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
