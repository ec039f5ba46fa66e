"""dockd throughput bench: dockd next to its floor and its peers, on the same camera, in one run.

    sudo .venv/bin/python -m bench.run [--quick | --tiny] [--runs 3] [--out bench]

Builds a camera (an exFAT image on a loop device, mounted with
mount.exfat-fuse; a plain directory where loop devices or FUSE are missing),
then measures, with the page cache dropped before each measurement and the
measurements of one round interleaved with the other rounds (A B C … A B C …,
the order rotated each round):

* floor: ``cat`` of every file to /dev/null; ``cp -r`` + ``sync -f`` to the
  spool's filesystem;
* peers: ``sha256sum`` then ``age -r`` per file (+ ``sync -f``); ``rclone copy``
  and ``rclone move`` to a ``crypt`` remote over a local directory and over
  the S3 server (OpenStack Swift + s3api on loopback);
* dockd: ``dockd ingest`` (dock → wiped) to file:// and to s3://, and the
  spool stage alone (bench/stage.py);
* scaling: 1, 4 and 8 cameras docked at once into one ``dockd run`` (inbox
  source) against as many ``rclone move`` processes started together;
* small files: 10,000 × 64 KiB, ``dockd ingest`` against ``rclone copy``;
* memory: peak RSS of ``dockd ingest`` for one 256 MiB and one 4 GiB recording.

Writes ``RESULTS.md``, ``results.json`` and ``throughput.png`` (if matplotlib
is installed: ``pip install -e .[bench]``) into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

MiB = 1 << 20
GiB = 1 << 30
PY = sys.executable
# rclone's S3 client cannot use a custom CA bundle with its own HTTP transport (it fails at start);
# the S3 server here is plain HTTP on loopback, so rclone runs without it
RCLONE_ENV = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
DOCKD = [PY, "-m", "dockd"]
SRC = REPO       # the dockd that is measured: a snapshot of a commit (see snapshot()), or the work tree


def snapshot(work: Path, rev: str | None) -> tuple[Path, str]:
    """``dockd/`` as committed at ``rev`` (with this bench beside it), so that edits in progress
    in the work tree cannot change what is measured half-way through a run."""
    global SRC
    if rev is None:
        SRC = REPO
        desc = sh("git", "-C", str(REPO), "describe", "--always", "--dirty", check=False).stdout.strip()
        return SRC, f"work tree ({desc or 'not a git checkout'})"
    src = work / "src"
    src.mkdir()
    commit = sh("git", "-C", str(REPO), "rev-parse", "--short", rev).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "dockd"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    shutil.copytree(REPO / "bench", src / "bench", ignore=shutil.ignore_patterns("__pycache__", "*.png", "*.md"))
    SRC = src
    sys.path.insert(0, str(src))
    return SRC, f"commit {commit}"


def dockd_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")


# -- sizes ----------------------------------------------------------------------------

@dataclass
class Sizes:
    recordings: int = 8
    recording_size: int = 128 * MiB
    sidecars: bool = True
    small_extra: int = 300                # a few hundred small files on the main camera
    small_extra_size: int = 48 * 1024
    scale_cameras: tuple[int, ...] = (1, 4, 8)
    scale_recordings: int = 2
    scale_recording_size: int = 64 * MiB
    small_files: int = 10_000
    small_file_size: int = 64 * 1024
    rss_sizes: tuple[int, ...] = (256 * MiB, 4 * GiB)
    s3: bool = True

    @classmethod
    def preset(cls, name: str) -> "Sizes":
        if name == "quick":
            return cls(recordings=4, recording_size=64 * MiB, small_extra=50, scale_recording_size=16 * MiB,
                       small_files=1000, rss_sizes=(64 * MiB, 512 * MiB))
        if name == "tiny":
            return cls(recordings=2, recording_size=4 * MiB, small_extra=10, scale_cameras=(1, 2),
                       scale_recordings=1, scale_recording_size=2 * MiB, small_files=50,
                       rss_sizes=(2 * MiB, 8 * MiB), s3=False)
        return cls()


# -- measuring a child ----------------------------------------------------------------------

@dataclass
class Sample:
    name: str
    round: int
    seconds: float
    bytes: int
    cpu: float                 # user+sys seconds of the measured processes
    rss_kb: int                # peak RSS of the largest measured process
    note: str = ""

    @property
    def mbps(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu / (self.bytes / 1e9)


class BenchError(RuntimeError):
    pass


TIME = shutil.which("time", path="/usr/bin:/bin")


TIMEOUT = 1800.0    # seconds any one measured command may take (a hung tool must not hang the bench)


def timed(argvs: list[list[str]], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, float, int]:
    """Start every argv at once; wait for all. (wall seconds, user+sys, max RSS kB).

    Each command runs under /usr/bin/time: a child forked from this (large) Python
    process would report this process's RSS as its own peak (the kernel carries the
    pre-exec high-water mark across exec); one forked from ``time`` does not.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    stats = [log.with_name(f"{log.stem}.{i}.time") for i in range(len(argvs))]
    if TIME:
        argvs = [[TIME, "-o", str(st), "-f", "%U %S %M", *a] for a, st in zip(argvs, stats)]
    with open(log, "ab") as out:
        t0 = time.monotonic()
        procs = [subprocess.Popen(a, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=cwd, start_new_session=True) for a in argvs]
        expired = threading.Event()

        def kill_all() -> None:
            expired.set()
            for p in procs:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(TIMEOUT, kill_all)
        timer.start()
        cpu, rss, bad = 0.0, 0, []
        for p, st in zip(procs, stats):
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            if expired.is_set():
                continue
            if TIME:
                u, s_, m = st.read_text().strip().splitlines()[-1].split()
                cpu += float(u) + float(s_)
                rss = max(rss, int(m))
                st.unlink()
            else:
                cpu += ru.ru_utime + ru.ru_stime
                rss = max(rss, ru.ru_maxrss)
            if p.returncode != 0:
                bad.append((p.args, p.returncode))
        wall = time.monotonic() - t0
        timer.cancel()
    if expired.is_set():
        raise BenchError(f"{argvs[0][:8]}… took over {TIMEOUT:.0f} s, killed; log {log}:\n{log.read_text()[-2000:]}")
    if bad:
        raise BenchError(f"{bad[0][0][:8]}… exited {bad[0][1]}; log {log}:\n{log.read_text()[-2000:]}")
    return wall, cpu, rss


def sh(*argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass   # not root: measurements run warm, RESULTS.md says so


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


# -- cameras -----------------------------------------------------------------------------

def fill(root: Path, files: dict[str, int], pool: bytes) -> None:
    for i, (rel, size) in enumerate(files.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        off = (i * 7919 * 4096) % len(pool)
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, len(pool) - off, 8 * MiB)
                f.write(memoryview(pool)[off:off + n])
                left -= n
                off = (off + n) % len(pool)


def loop_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/dev/loop-control").exists() or not Path("/dev/fuse").exists():
        return "no loop devices or no FUSE"
    for tool in ("mkfs.exfat", "mount.exfat-fuse", "fusermount", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return None


class Camera:
    """A camera's content, kept pristine; ``mounted`` gives a copy to read (or to wipe)."""

    def __init__(self, work: Path, name: str, files: dict[str, int], pool: bytes, exfat: bool) -> None:
        self.work, self.name, self.files, self.exfat = work, name, files, exfat
        self.bytes = sum(files.values())
        self.recording_bytes = sum(s for r, s in files.items() if not r.upper().endswith(".XML"))
        if exfat:
            self.pristine = work / f"{name}.img"
            size = max(32 * MiB, ((self.bytes * 21 // 20 + len(files) * 128 * 1024) // MiB + 16) * MiB)
            with open(self.pristine, "wb") as f:
                f.truncate(size)
            sh("mkfs.exfat", "-L", name[:11].upper(), str(self.pristine))
            with self._mount(self.pristine, ro=False) as mnt:
                fill(mnt, files, pool)
        else:
            self.pristine = work / f"{name}.dir"
            fill(self.pristine, files, pool)

    @contextlib.contextmanager
    def _mount(self, image: Path, ro: bool) -> Iterator[Path]:
        dev = sh("losetup", "--find", "--show", *(["-r"] if ro else []), str(image)).stdout.strip()
        mnt = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.work))
        try:
            sh("mount.exfat-fuse", "-o", "ro,noatime" if ro else "noatime", dev, str(mnt))
            try:
                yield mnt
            finally:
                for _ in range(50):
                    if sh("fusermount", "-u", str(mnt), check=False).returncode == 0:
                        break
                    time.sleep(0.1)
                else:
                    sh("umount", "-l", str(mnt), check=False)
        finally:
            sh("losetup", "-d", dev, check=False)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    @contextlib.contextmanager
    def mounted(self, fresh: bool, at: Path | None = None) -> Iterator[Path]:
        """The camera, mounted. ``fresh``: a throwaway copy that may be wiped (else read-only).
        ``at``: where the copy should live (a directory that is created)."""
        if not self.exfat:
            if not fresh:
                yield self.pristine
                return
            dst = at or self.work / f"{self.name}.copy"
            shutil.rmtree(dst, ignore_errors=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            sh("cp", "-al", str(self.pristine), str(dst))     # hard links: wiping unlinks the copy only
            try:
                yield dst
            finally:
                shutil.rmtree(dst, ignore_errors=True)
            return
        if not fresh:
            with self._mount(self.pristine, ro=True) as mnt:
                yield mnt
            return
        image = self.work / f"{self.name}.work.img"
        sh("cp", "--sparse=always", str(self.pristine), str(image))
        try:
            if at is None:
                with self._mount(image, ro=False) as mnt:
                    yield mnt
            else:
                at.mkdir(parents=True, exist_ok=True)
                dev = sh("losetup", "--find", "--show", str(image)).stdout.strip()
                try:
                    sh("mount.exfat-fuse", "-o", "noatime", dev, str(at))
                    try:
                        yield at
                    finally:
                        for _ in range(50):
                            if sh("fusermount", "-u", str(at), check=False).returncode == 0:
                                break
                            time.sleep(0.1)
                        else:
                            sh("umount", "-l", str(at), check=False)
                finally:
                    sh("losetup", "-d", dev, check=False)
        finally:
            image.unlink(missing_ok=True)

    def list(self, mnt: Path) -> list[Path]:
        return [mnt / r for r in self.files]


def left_recordings(mnt: Path) -> list[str]:
    return [str(p.relative_to(mnt)) for p in mnt.rglob("*")
            if p.is_file() and p.suffix.upper() in (".MP4", ".JPG")]


def main_files(s: Sizes) -> dict[str, int]:
    files: dict[str, int] = {}
    for i in range(s.recordings):
        files[f"DCIM/100BWC/CLIP{i:04d}.MP4"] = s.recording_size
        if s.sidecars:
            files[f"DCIM/100BWC/CLIP{i:04d}.XML"] = 2048
    for i in range(s.small_extra):
        files[f"DCIM/101PHO/IMG{i:05d}.JPG"] = s.small_extra_size
    return files


def small_files(s: Sizes) -> dict[str, int]:
    return {f"DCIM/{100 + i // 1000:03d}PHO/IMG{i:05d}.JPG": s.small_file_size for i in range(s.small_files)}


def scale_files(s: Sizes) -> dict[str, int]:
    files = {}
    for i in range(s.scale_recordings):
        files[f"DCIM/100BWC/CLIP{i:04d}.MP4"] = s.scale_recording_size
        files[f"DCIM/100BWC/CLIP{i:04d}.XML"] = 2048
    return files


# -- the S3 server and the tools' configuration --------------------------------------------

class Env:
    def __init__(self, work: Path, s3: bool) -> None:
        from dockd.age import generate_identity

        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.spool_fs = work / "out"          # the spool's filesystem: every tool writes here
        self.spool_fs.mkdir()
        self.ident = generate_identity()
        self.recipient = str(self.ident.public())
        self.procs: list[subprocess.Popen] = []
        self.ep = None
        if s3:
            from servers import start_swift, swift_missing

            if (why := swift_missing()) is not None:
                print(f"no S3 runs: {why}", file=sys.stderr)
            else:
                d = Path(tempfile.mkdtemp(prefix="dockd-bench-swift-"))
                self.swift_dir = d
                self.ep, self.procs = start_swift(d)
        self.creds = work / "s3-credentials"
        if self.ep:
            self.creds.write_text(f"[default]\naws_access_key_id = {self.ep.access_key}\n"
                                  f"aws_secret_access_key = {self.ep.secret_key}\n")
            self.creds.chmod(0o600)
        password = sh("rclone", "obscure", "dockd-bench-crypt-password").stdout.strip()
        self.rclone_conf = work / "rclone.conf"
        conf = (f"[local]\ntype = local\n\n"
                f"[lcrypt]\ntype = crypt\nremote = {self.spool_fs}/rclone\npassword = {password}\n\n")
        if self.ep:
            conf += (f"[s3]\ntype = s3\nprovider = Other\naccess_key_id = {self.ep.access_key}\n"
                     f"secret_access_key = {self.ep.secret_key}\nendpoint = {self.ep.endpoint_url}\n"
                     f"region = us-east-1\nforce_path_style = true\n\n")
        self.rclone_conf.write_text(conf)
        self.rclone_conf.chmod(0o600)
        # the control socket lives here: AF_UNIX paths are limited to 107 bytes, scratch paths are not
        self.rundir = Path(tempfile.mkdtemp(prefix="dkb-", dir="/tmp"))

    def rclone(self, *args: str) -> list[str]:
        return ["rclone", "--config", str(self.rclone_conf), *args]

    def add_s3crypt(self, bucket: str) -> str:
        """A crypt remote over ``s3:bucket``; returns its name."""
        name = f"s3crypt{bucket.replace('-', '')}"
        password = sh("rclone", "obscure", "dockd-bench-crypt-password").stdout.strip()
        with open(self.rclone_conf, "a") as f:
            f.write(f"[{name}]\ntype = crypt\nremote = s3:{bucket}/rclone\npassword = {password}\n\n")
        return name

    def empty_bucket(self, bucket: str) -> None:
        with contextlib.suppress(Exception):
            c = self.ep.client()
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", []):
                    c.delete_object(Bucket=bucket, Key=o["Key"])

    def dockd_config(self, tag: str, store: str, inbox: Path | None = None, bucket: str | None = None) -> Path:
        d = self.spool_fs / f"dockd-{tag}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if store == "s3":
            store_toml = (f'url = "s3://{bucket}/bench"\nendpoint_url = "{self.ep.endpoint_url}"\n'
                          f'region = "us-east-1"\naddressing_style = "path"\ncredentials_file = "{self.creds}"\n')
        else:
            store_toml = f'url = "file://{d}/store"\n'
        cfg = d / "dockd.toml"
        cfg.write_text(f"""
[station]
id = "bench"
[paths]
state_dir = "{d}/state"
spool_dir = "{d}/state/spool"
runtime_dir = "{self.rundir}/{tag}"
[encryption]
recipients = ["{self.recipient}"]
[store]
{store_toml}
[devices]
source = "inbox"
inbox_dir = "{inbox or d / 'inbox'}"
[spool]
min_free = 0
[upload]
backoff_initial = 0
[log]
format = "json"
""")
        return cfg

    def close(self) -> None:
        from servers import stop

        for p in reversed(self.procs):
            stop(p)
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self.ep:
            shutil.rmtree(self.swift_dir, ignore_errors=True)


# -- the measurements ------------------------------------------------------------------------

Measure = Callable[[int], Sample]


def clean(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def measure_main(env: Env, cam: Camera, r: int) -> dict[str, Measure]:
    """One closure per tool; each prepares (untimed), drops caches, runs (timed), checks, cleans."""
    out = env.spool_fs
    B = cam.bytes

    def cat(r: int) -> Sample:
        with cam.mounted(fresh=False) as mnt:
            files = [str(p) for p in cam.list(mnt)]
            drop_caches()
            w, c, m = timed([["sh", "-c", 'exec cat -- "$@" >/dev/null', "cat", *files]], env.logs / "cat.log")
        return Sample("cat", r, w, B, c, m)

    def cp_sync(r: int) -> Sample:
        dst = out / "cp"
        clean(dst)
        with cam.mounted(fresh=False) as mnt:
            drop_caches()
            w, c, m = timed([["sh", "-c", 'cp -r -- "$1/." "$2/" && sync -f "$2"', "cp", str(mnt), str(dst)]],
                            env.logs / "cp.log")
        clean(dst)
        return Sample("cp + sync", r, w, B, c, m)

    def per_file_script(r: int, name: str, tag: str, steps: Callable[[str, Path, int], list[str]]) -> Sample:
        """A shell script of ``steps(quoted source, dst, i)`` for every camera file, then
        ``sync -f``, timed with caches dropped."""
        dst = out / tag
        clean(dst)
        dst.mkdir()
        with cam.mounted(fresh=False) as mnt:
            lines = ["set -e"]
            for i, p in enumerate(cam.list(mnt)):
                lines += steps(shlex.quote(str(p)), dst, i)
            lines.append(f"sync -f {dst}")
            script = out / f"{tag}.sh"
            script.write_text("\n".join(lines) + "\n")
            drop_caches()
            w, c, m = timed([["sh", str(script)]], env.logs / f"{tag}.log")
        clean(dst)
        return Sample(name, r, w, B, c, m)

    def sha_age(r: int) -> Sample:
        return per_file_script(r, "sha256sum + age", "shaage", lambda q, dst, i: [
            f"sha256sum -- {q} >> {dst}/SHA256SUMS", f"age -r {env.recipient} -o {dst}/{i}.age -- {q}"])

    def age_alone(r: int) -> Sample:
        # A reference, not a peer: the spool stage's encryption pass alone, by the reference age
        # binary, without either SHA-256, then made durable like cp + sync. No implementation of the
        # stage (both hashes, the cipher, the flush) can be faster than this on the same machine.
        return per_file_script(r, AGE_ALONE, "agealone", lambda q, dst, i: [
            f"age -r {env.recipient} -o {dst}/{i}.age -- {q}"])

    def rclone(verb: str, where: str) -> Measure:
        def run(r: int) -> Sample:
            bucket = None
            if where == "s3":
                bucket = env.ep.new_bucket()
                remote = f"{env.add_s3crypt(bucket)}:cam"
            else:
                clean(out / "rclone")
                remote = "lcrypt:cam"
            with cam.mounted(fresh=(verb == "move")) as mnt:
                drop_caches()
                w, c, m = timed([env.rclone(verb, str(mnt), remote)], env.logs / f"rclone-{verb}-{where}.log",
                                env=RCLONE_ENV)
                if verb == "move" and (left := left_recordings(mnt)):
                    raise BenchError(f"rclone move left {left[:3]}")
            if bucket:
                env.empty_bucket(bucket)
            clean(out / "rclone")
            return Sample(f"rclone {verb} crypt → {where}", r, w, B, c, m)
        return run

    def dockd(store: str) -> Measure:
        def run(r: int) -> Sample:
            bucket = env.ep.new_bucket() if store == "s3" else None
            cfg = env.dockd_config(f"ingest-{store}", store, bucket=bucket)
            with cam.mounted(fresh=True) as mnt:
                drop_caches()
                w, c, m = timed([[*DOCKD, "--config", str(cfg), "ingest", str(mnt), "--serial", "BWC0001",
                                  "--no-progress"]], env.logs / f"dockd-ingest-{store}.log", cwd=SRC,
                                env=dockd_env())
                if left := left_recordings(mnt):
                    raise BenchError(f"dockd ingest left {left[:3]}")
            if bucket:
                env.empty_bucket(bucket)
            clean(cfg.parent)
            return Sample(f"dockd ingest → {'s3://' if store == 's3' else 'file://'}", r, w, B, c, m)
        return run

    def stage(r: int) -> Sample:
        dst = out / "stage"
        clean(dst)
        with cam.mounted(fresh=False) as mnt:
            files = [str(p) for p in cam.list(mnt)]
            drop_caches()
            w, c, m = timed([[PY, "-m", "bench.stage", str(dst), *files]], env.logs / "stage.log", cwd=SRC,
                            env=dockd_env())
        clean(dst)
        return Sample("dockd spool stage", r, w, B, c, m)

    ms: dict[str, Measure] = {"cat": cat, "cp + sync": cp_sync, AGE_ALONE: age_alone, "sha256sum + age": sha_age,
                              "rclone copy crypt → local": rclone("copy", "local"),
                              "rclone move crypt → local": rclone("move", "local")}
    if env.ep:
        ms["rclone copy crypt → s3"] = rclone("copy", "s3")
        ms["rclone move crypt → s3"] = rclone("move", "s3")
    ms["dockd ingest → file://"] = dockd("file")
    if env.ep:
        ms["dockd ingest → s3://"] = dockd("s3")
    ms["dockd spool stage"] = stage
    return ms


def events(log: Path, name: str) -> list[dict]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for raw in log.read_bytes().splitlines():
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if isinstance(e, dict) and e.get("event") == name:
                found.append(e)
    return found


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def scale_dockd(env: Env, cams: list[Camera], r: int) -> Sample:
    """N cameras docked at once into one ``dockd run`` (inbox source)."""
    n = len(cams)
    inbox = env.spool_fs / "inbox"
    stage_dir = env.spool_fs / "dock-stage"
    clean(inbox)
    clean(stage_dir)
    inbox.mkdir()
    stage_dir.mkdir()
    cfg = env.dockd_config(f"run{n}", "file", inbox=inbox)
    log = env.logs / f"dockd-run-{n}-{r}.log"
    proc = subprocess.Popen([*DOCKD, "--config", str(cfg), "run"], cwd=SRC, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dockd_env())
    try:
        deadline = time.monotonic() + 60
        while not events(log, "daemon.started"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dockd run did not start; {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        with contextlib.ExitStack() as stack:
            for i, cam in enumerate(cams):
                # the camera's mount lives one level down, so its directory can be renamed into
                # the inbox at once (a mount point itself cannot be renamed)
                stack.enter_context(cam.mounted(fresh=True, at=stage_dir / f"CAM{i:02d}" / "card"))
            drop_caches()
            cpu0 = proc_cpu(proc.pid)
            t0 = time.monotonic()
            for i in range(n):
                os.rename(stage_dir / f"CAM{i:02d}", inbox / f"CAM{i:02d}")
            while len(events(log, "session.done")) < n:
                if events(log, "session.attention") or proc.poll() is not None:
                    raise BenchError(f"dockd run: a session needs attention; {log}")
                if time.monotonic() - t0 > TIMEOUT:
                    raise BenchError(f"dockd run: timed out; {log}")
                time.sleep(0.02)
            wall = time.monotonic() - t0
            cpu = proc_cpu(proc.pid) - cpu0
            rss = proc_hwm_kb(proc.pid)
            for i in range(n):
                if left := left_recordings(inbox / f"CAM{i:02d}" / "card"):
                    raise BenchError(f"dockd run left {left[:3]}")
            # unmount (ExitStack) while the inbox directories are still there; renamed back first
            for i in range(n):
                os.rename(inbox / f"CAM{i:02d}", stage_dir / f"CAM{i:02d}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    clean(cfg.parent)
    clean(stage_dir)
    clean(inbox)
    return Sample(f"dockd run, {n} camera{'s' if n > 1 else ''}", r, wall, sum(c.bytes for c in cams), cpu, rss)


def scale_rclone(env: Env, cams: list[Camera], r: int) -> Sample:
    n = len(cams)
    clean(env.spool_fs / "rclone")
    with contextlib.ExitStack() as stack:
        mnts = [stack.enter_context(c.mounted(fresh=True)) for c in cams]
        drop_caches()
        w, c, m = timed([env.rclone("move", str(mnt), f"lcrypt:CAM{i:02d}") for i, mnt in enumerate(mnts)],
                        env.logs / f"rclone-scale-{n}.log", env=RCLONE_ENV)
        for mnt in mnts:
            if left := left_recordings(mnt):
                raise BenchError(f"rclone move left {left[:3]}")
    clean(env.spool_fs / "rclone")
    return Sample(f"rclone move × {n}", r, w, sum(c.bytes for c in cams), c, m)


def measure_small(env: Env, cam: Camera) -> dict[str, Measure]:
    def dockd(r: int) -> Sample:
        cfg = env.dockd_config("small", "file")
        with cam.mounted(fresh=True) as mnt:
            drop_caches()
            w, c, m = timed([[*DOCKD, "--config", str(cfg), "ingest", str(mnt), "--serial", "BWC0002",
                              "--no-progress"]], env.logs / "dockd-small.log", cwd=SRC, env=dockd_env())
            if left := left_recordings(mnt):
                raise BenchError(f"dockd ingest left {len(left)} small files")
        clean(cfg.parent)
        return Sample("small: dockd ingest → file://", r, w, cam.bytes, c, m)

    def rclone(verb: str) -> Measure:
        def run(r: int) -> Sample:
            clean(env.spool_fs / "rclone")
            with cam.mounted(fresh=verb == "move") as mnt:
                drop_caches()
                w, c, m = timed([env.rclone(verb, str(mnt), "lcrypt:small")], env.logs / "rclone-small.log",
                                env=RCLONE_ENV)
            clean(env.spool_fs / "rclone")
            return Sample(f"small: rclone {verb} crypt → local", r, w, cam.bytes, c, m)
        return run

    return {"small: rclone copy crypt → local": rclone("copy"), "small: rclone move crypt → local": rclone("move"),
            "small: dockd ingest → file://": dockd}


def measure_rss(env: Env, cam: Camera, label: str) -> Measure:
    def run(r: int) -> Sample:
        cfg = env.dockd_config("rss", "file")
        with cam.mounted(fresh=True) as mnt:
            drop_caches()
            w, c, m = timed([[*DOCKD, "--config", str(cfg), "ingest", str(mnt), "--serial", "BWC0003",
                              "--no-progress"]], env.logs / "dockd-rss.log", cwd=SRC, env=dockd_env())
        clean(cfg.parent)
        return Sample(f"rss: dockd ingest, one {label} recording", r, w, cam.bytes, c, m)
    return run


# -- statistics and the report ---------------------------------------------------------------

def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}"


def fmt_size(n: int) -> str:
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB" if n >= MiB else f"{n // 1024} KiB"


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)

    def of(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]

    def names(self) -> list[str]:
        seen: list[str] = []
        for s in self.samples:
            if s.name not in seen:
                seen.append(s.name)
        return seen

    def ratios(self, a: str, b: str) -> list[float]:
        """Throughput ratio a/b, paired by round (the same round, interleaved)."""
        bs = {s.round: s for s in self.of(b)}
        return [s.mbps / bs[s.round].mbps for s in self.of(a) if s.round in bs]

    def best_peer_ratios(self, a: str, peers: list[str]) -> list[float]:
        out = []
        for s in self.of(a):
            ps = [p.mbps for name in peers for p in self.of(name) if p.round == s.round]
            if ps:
                out.append(s.mbps / max(ps))
        return out


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    disk = "?"
    with contextlib.suppress(Exception):
        src = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(Path(tempfile.gettempdir()))).stdout.split()
        dev = Path(src[0]).name
        rota = Path(f"/sys/block/{dev}/queue/rotational").read_text().strip()
        model = (Path(f"/sys/block/{dev}/device/model").read_text().strip()
                 if Path(f"/sys/block/{dev}/device/model").exists() else "virtual")
        size = int(Path(f"/sys/block/{dev}/size").read_text()) * 512
        disk = f"{src[0]} ({src[1]}, {size / GiB:.0f} GiB, {model}, rotational={rota})"
    versions = {}
    for tool, arg in (("rclone", "version"), ("age", "--version"), ("sha256sum", "--version")):
        with contextlib.suppress(Exception):
            versions[tool] = sh(tool, arg, check=False).stdout.splitlines()[0]
    return {"cpu": cpu, "cores": str(os.cpu_count()), "ram": mem, "disk": disk,
            "kernel": platform.release(), "python": platform.python_version(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), **versions}


AGE_ALONE = "age alone (no hashes, reference)"
PEERS_LOCAL = ["sha256sum + age", "rclone copy crypt → local", "rclone move crypt → local"]
PEERS_S3 = ["rclone copy crypt → s3", "rclone move crypt → s3"]


def report(res: Results, info: dict, out: Path) -> list[tuple[str, bool | None, str]]:
    lines: list[str] = []
    add = lines.append
    m = info["machine"]
    add("# dockd throughput: results\n")
    add(f"Generated by `python -m bench.run {info['args']}` on {info['date']} in {info['wall']:.0f} s wall. "
        "Do not edit by hand: re-run the bench.\n")
    add("## Machine\n")
    for k in ("cpu", "cores", "ram", "disk", "kernel", "python", "rclone", "age", "sha256sum"):
        if k in m:
            add(f"- **{k}**: {m[k]}")
    add(f"- **load average at start**: {m['load']} (a shared machine: absolute figures are noisy, "
        "ratios are paired within a round)")
    add(f"- **dockd measured**: {info['measured']}")
    add(f"- **camera**: {info['camera']}")
    add(f"- **caches**: {'dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every measurement' if info['cold'] else 'NOT dropped (not root): warm-cache figures'}")
    add(f"- **runs**: {info['runs']} rounds, interleaved (every tool once per round, order rotated each round); "
        "figures are medians, spread is min–max\n")

    add("## Throughput, CPU and memory\n")
    add("MB/s is plaintext bytes of the camera (10^6) over wall time. Ratios are computed per round and then "
        "the median taken. *floor* = `cat` to /dev/null; *cp+sync* = a durable local copy; *best peer* = the "
        "fastest peer in the same round with the same destination (local: sha256sum+age, rclone copy/move "
        "to local crypt; s3: rclone copy/move to s3 crypt). CPU s/GB is user+sys of the measured processes "
        "(not the FUSE helper or the S3 server); peak RSS is the largest measured process.\n")
    add("| what | MB/s (median) | spread MB/s | × floor (cat) | × cp+sync | × best peer | CPU s/GB | peak RSS MB |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in res.names():
        ss = res.of(name)
        if name.startswith(("small:", "rss:", "dockd run,", "rclone move ×")):
            continue
        mb = [s.mbps for s in ss]
        floor = res.ratios(name, "cat")
        cps = res.ratios(name, "cp + sync")
        peers = PEERS_S3 if "s3" in name else PEERS_LOCAL
        bp = (res.best_peer_ratios(name, [p for p in peers if p != name])
              if name not in ("cat", "cp + sync", AGE_ALONE) else [])
        add(f"| {name} | {med(mb):.0f} | {min(mb):.0f}–{max(mb):.0f} | "
            f"{med(floor):.2f} ({spread(floor)}) | {med(cps):.2f} ({spread(cps)}) | "
            f"{f'{med(bp):.2f} ({spread(bp)})' if bp else '—'} | {med([s.cpu_per_gb for s in ss]):.1f} | "
            f"{max(s.rss_kb for s in ss) / 1024:.0f} |")

    add("\n## Several cameras at once\n")
    add("dockd: ONE `dockd run` daemon with the inbox source; N exFAT cameras are mounted, then their "
        "directories are renamed into the inbox at the same instant; timed until N `session.done` "
        "(dock → verified → wiped, file:// store). One daemon because that is how a dock runs: one "
        "process owns the ledger, the spool and a shared, fair upload pool (parallel `dockd ingest` "
        "processes would each open the ledger and reconcile the shared spool at start, which a station "
        "never does). Peer: N `rclone move` processes to the local crypt remote, started together. "
        f"Each camera: {info['scale_camera']}.\n")
    add("| cameras | dockd MB/s (median, spread) | × dockd 1 camera | rclone move MB/s (median, spread) | dockd × rclone | dockd CPU s/GB | dockd peak RSS MB |")
    add("|---:|---:|---:|---:|---:|---:|---:|")
    plot: dict[str, list[tuple[int, float, float, float]]] = {"dockd": [], "rclone": []}
    for n in info["scale_ns"]:
        d = f"dockd run, {n} camera{'s' if n > 1 else ''}"
        rc = f"rclone move × {n}"
        if not res.of(d):
            continue
        dm = [s.mbps for s in res.of(d)]
        rm = [s.mbps for s in res.of(rc)]
        one = res.ratios(d, f"dockd run, {info['scale_ns'][0]} camera")
        vs = res.ratios(d, rc)
        add(f"| {n} | {med(dm):.0f} ({min(dm):.0f}–{max(dm):.0f}) | {med(one):.2f} ({spread(one)}) | "
            f"{med(rm):.0f} ({min(rm):.0f}–{max(rm):.0f}) | {med(vs):.2f} ({spread(vs)}) | "
            f"{med([s.cpu_per_gb for s in res.of(d)]):.1f} | {max(s.rss_kb for s in res.of(d)) / 1024:.0f} |")
        plot["dockd"].append((n, med(dm), min(dm), max(dm)))
        plot["rclone"].append((n, med(rm), min(rm), max(rm)))

    add(f"\n## Small files ({info['small_camera']})\n")
    add("| what | files/s (median) | MB/s (median, spread) | × rclone copy | CPU s/GB | peak RSS MB |")
    add("|---|---:|---:|---:|---:|---:|")
    for name in res.names():
        if not name.startswith("small:"):
            continue
        ss = res.of(name)
        mb = [s.mbps for s in ss]
        vs = res.ratios(name, "small: rclone copy crypt → local")
        fps = med([info["small_n"] / s.seconds for s in ss])
        add(f"| {name[7:]} | {fps:.0f} | {med(mb):.1f} ({min(mb):.1f}–{max(mb):.1f}) | {med(vs):.2f} ({spread(vs)}) | "
            f"{med([s.cpu_per_gb for s in ss]):.1f} | {max(s.rss_kb for s in ss) / 1024:.0f} |")

    add("\n## Memory: one recording, `dockd ingest` → file:// (plain-directory camera)\n")
    add("| recording | peak RSS MB (median, spread) | MB/s (median) |")
    add("|---|---:|---:|")
    rss_med = {}
    for name in res.names():
        if name.startswith("rss:"):
            ss = res.of(name)
            rs = [s.rss_kb / 1024 for s in ss]
            rss_med[name] = med(rs)
            add(f"| {name.split('one ')[1]} | {med(rs):.0f} ({min(rs):.0f}–{max(rs):.0f}) | {med([s.mbps for s in ss]):.0f} |")

    # targets
    verdicts: list[tuple[str, bool | None, str]] = []

    def target(label: str, xs: list[float], need: float) -> None:
        if not xs:
            verdicts.append((label, None, "not measured"))
            return
        verdicts.append((label, med(xs) >= need, f"{med(xs):.2f} (spread {spread(xs)}; need ≥ {need})"))

    target("Spool stage ≥ 0.9 × cp + sync", res.ratios("dockd spool stage", "cp + sync"), 0.9)
    if res.of(AGE_ALONE):
        # What the target asks of any implementation: the reference encryptor alone, against cp + sync.
        ref = res.ratios(AGE_ALONE, "cp + sync")
        st = res.ratios("dockd spool stage", AGE_ALONE)
        verdicts.append(("(context) age alone, no hashes, × cp + sync; spool stage × age alone", None,
                         f"{med(ref):.2f} (spread {spread(ref)}); {med(st):.2f} (spread {spread(st)})"))
    target("Dock → wiped via s3:// ≥ 1.0 × rclone move crypt → s3",
           res.ratios("dockd ingest → s3://", "rclone move crypt → s3"), 1.0)
    if len(rss_med) == 2:
        small_r, big_r = list(rss_med.values())
        ok = big_r <= 150 and abs(big_r - small_r) <= 0.1 * small_r
        verdicts.append(("Peak RSS ≤ 150 MB for the big recording, within 10% of the small one", ok,
                         f"{small_r:.0f} MB → {big_r:.0f} MB ({(big_r / small_r - 1) * 100:+.1f}%)"))
    ns = info["scale_ns"]
    if len(ns) > 1:
        target(f"{ns[-1]} cameras at once ≥ 0.9 × one camera (aggregate MB/s)",
               res.ratios(f"dockd run, {ns[-1]} cameras", f"dockd run, {ns[0]} camera"), 0.9)
    target("Small files ≥ 0.5 × rclone copy",
           res.ratios("small: dockd ingest → file://", "small: rclone copy crypt → local"), 0.5)
    add("\n## Targets\n")
    add("| target | measured (median ratio, same-round pairs) | verdict |")
    add("|---|---|---|")
    for label, ok, text in verdicts:
        verdict = ("met" if ok else "**MISSED**" if ok is not None
                   else "context" if label.startswith("(context)") else "not measured")
        add(f"| {label} | {text} | {verdict} |")
    notes = out / "FINDINGS.md"
    if notes.exists():
        add("\n" + notes.read_text().strip() + "\n")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"info": info, "samples": [asdict(s) for s in res.samples]},
                                                 indent=1, ensure_ascii=False))
    plot_png(plot, out / "throughput.png", info)
    return verdicts


def plot_png(plot: dict[str, list[tuple[int, float, float, float]]], path: Path, info: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e .[bench]): no plot", file=sys.stderr)
        return
    if not plot["dockd"]:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, pts in (("dockd run (one daemon)", plot["dockd"]), ("rclone move crypt (N processes)", plot["rclone"])):
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=label)
    ax.set_xlabel("cameras docked at once")
    ax.set_ylabel("aggregate MB/s (dock → wiped, file:// / local)")
    ax.set_xticks([p[0] for p in plot["dockd"]])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Throughput vs cameras ({info['machine']['cores']} cores; median, min–max)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------

def rounds(res: Results, ms: dict[str, Measure], runs: int, label: str) -> None:
    names = list(ms)
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = time.monotonic()
            s = ms[name](r)
            res.samples.append(s)
            print(f"[{label} {r + 1}/{runs}] {s.name:34s} {s.mbps:8.1f} MB/s  {s.seconds:7.2f} s  "
                  f"cpu {s.cpu:6.2f} s  rss {s.rss_kb / 1024:5.0f} MB  ({time.monotonic() - t:.0f} s with setup)",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a smoke run of about two minutes (small data)")
    g.add_argument("--tiny", action="store_true", help="a few seconds of data: for the test suite")
    ap.add_argument("--runs", type=int, default=None,
                    help="rounds per measurement (default 3; 2 with --quick, 1 with --tiny)")
    ap.add_argument("--out", type=Path, default=REPO / "bench", help="where RESULTS.md etc. go")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: under /var/tmp)")
    ap.add_argument("--plain-dir", action="store_true", help="plain-directory cameras even if loop devices work")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 (Swift) measurements")
    ap.add_argument("--only", default="main,scale,small,rss", help="comma list of parts to run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--rev", default="HEAD", help="measure dockd as committed at this revision (default HEAD)")
    ap.add_argument("--work-tree", action="store_true", help="measure the work tree's dockd, edits and all")
    ap.add_argument("--recordings", type=int, help="recordings on the main camera (default 8)")
    ap.add_argument("--recording-mib", type=int, help="MiB per recording on the main camera (default 128)")
    ap.add_argument("--small-files", type=int, help="files in the small-files run (default 10,000)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite RESULTS.md and the plot from --out/results.json (after editing FINDINGS.md)")
    args = ap.parse_args(argv)
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        report(Results([Sample(**d) for d in saved["samples"]]), saved["info"], args.out)
        print((args.out / "RESULTS.md").read_text())
        return 0
    preset = "quick" if args.quick else "tiny" if args.tiny else "default"
    if args.runs is None:
        args.runs = 2 if args.quick else 1 if args.tiny else 3
    global TIMEOUT
    if args.tiny:
        TIMEOUT = 40.0
    s = Sizes.preset(preset)
    if args.recordings:
        s.recordings = args.recordings
    if args.recording_mib:
        s.recording_size = args.recording_mib * MiB
    if args.small_files:
        s.small_files = args.small_files
    if args.no_s3:
        s.s3 = False
    parts = set(args.only.split(","))
    t_start = time.monotonic()
    why = None if not args.plain_dir else "asked for plain directories"
    why = why or loop_reason()
    exfat = why is None
    base = args.work or Path("/var/tmp")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dockd-bench-", dir=base))
    args.out.mkdir(parents=True, exist_ok=True)
    res = Results()
    env = None
    try:
        pool = os.urandom(32 * MiB)
        kind = "exFAT image on a loop device, mount.exfat-fuse" if exfat else f"plain directory ({why})"
        print(f"scratch {work}; cameras: {kind}; preset {preset}, {args.runs} runs", flush=True)
        _, measured = snapshot(work, None if args.work_tree else args.rev)
        print(f"measuring dockd from the {measured}", flush=True)
        env = Env(work, s.s3)
        info = {"args": " ".join(argv if argv is not None else sys.argv[1:]), "runs": args.runs,
                "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "cold": can_drop_caches(),
                "scale_ns": list(s.scale_cameras), "small_n": s.small_files, "measured": measured}
        mf = main_files(s)
        info["camera"] = (f"{kind}; {s.recordings} × {fmt_size(s.recording_size)} recordings"
                          f"{' + XML sidecars' if s.sidecars else ''} + {s.small_extra} × "
                          f"{fmt_size(s.small_extra_size)} photos = {sum(mf.values()) / 1e6:.0f} MB")
        info["scale_camera"] = (f"{s.scale_recordings} × {fmt_size(s.scale_recording_size)} + sidecars, {kind}")
        info["small_camera"] = f"{s.small_files:,} × {fmt_size(s.small_file_size)}, {kind}"
        if "main" in parts:
            t = time.monotonic()
            cam = Camera(work, "BWCMAIN", mf, pool, exfat)
            print(f"main camera built in {time.monotonic() - t:.0f} s", flush=True)
            rounds(res, measure_main(env, cam, 0), args.runs, "main")
            cam.pristine.unlink() if exfat else clean(cam.pristine)
        if "scale" in parts:
            cams = [Camera(work, f"BWCS{i:02d}", scale_files(s), pool, exfat) for i in range(max(s.scale_cameras))]
            ms: dict[str, Measure] = {}
            for n in s.scale_cameras:
                ms[f"dockd {n}"] = (lambda n: lambda r: scale_dockd(env, cams[:n], r))(n)
                ms[f"rclone {n}"] = (lambda n: lambda r: scale_rclone(env, cams[:n], r))(n)
            rounds(res, ms, args.runs, "scale")
            for c in cams:
                c.pristine.unlink() if exfat else clean(c.pristine)
        if "small" in parts:
            t = time.monotonic()
            cam = Camera(work, "BWCSMALL", small_files(s), pool, exfat)
            print(f"small-files camera built in {time.monotonic() - t:.0f} s", flush=True)
            rounds(res, measure_small(env, cam), args.runs, "small")
            cam.pristine.unlink() if exfat else clean(cam.pristine)
        if "rss" in parts:
            ms = {}
            rcams = []
            for size in s.rss_sizes:
                c = Camera(work, f"RSS{size >> 20}", {"DCIM/100BWC/CLIP0000.MP4": size}, pool, exfat=False)
                rcams.append(c)
                ms[fmt_size(size)] = measure_rss(env, c, fmt_size(size))
            rounds(res, ms, args.runs, "rss")
            for c in rcams:
                clean(c.pristine)
        info["wall"] = time.monotonic() - t_start
        verdicts = report(res, info, args.out)
        print((args.out / "RESULTS.md").read_text())
        print(f"total {info['wall']:.0f} s wall")
        missed = [v[0] for v in verdicts if v[1] is False]
        print(f"targets missed: {missed}" if missed else "every measured target met")
        return 0
    finally:
        if env is not None:
            env.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
