"""Stations, cameras and dockd processes for the campaigns.

dockd runs as real processes: children of a ``forkserver`` that imported dockd
once, so a schedule costs a fork rather than an interpreter start. A child runs
``dockd ingest`` or ``dockd run`` (``dockd.cli.main``) with its output in a log
file. ``kill -9`` is the real thing: from the parent after a delay, or from the
child itself at its N-th log event (a crash point at an exact step).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

TEST_MIN_PART = 64 * 1024        # moto accepts this (S3_UPLOAD_PART_MIN_SIZE); see tests/servers.py
CHUNK = 64 * 1024                # an age STREAM chunk

class Zygote:
    """Client of ``campaigns.zygote``: one per campaign runner, thread-safe."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "campaigns.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=str(REPO))
        self._lock = threading.Lock()
        self._cv = threading.Condition()
        self._next = 0
        self._pids: dict[int, int] = {}
        self._exits: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._cv:
                if "pid" in msg:
                    self._pids[msg["id"]] = msg["pid"]
                else:
                    self._exits[msg["id"]] = msg["exit"]
                self._cv.notify_all()

    def start(self, req: dict[str, Any]) -> tuple[int, int]:
        with self._lock:
            self._next += 1
            rid = self._next
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(dict(req, id=rid)) + "\n").encode())
            self.proc.stdin.flush()
        with self._cv:
            while rid not in self._pids:
                if not self._cv.wait(30):
                    raise RuntimeError("zygote did not fork")
        return rid, self._pids[rid]

    def wait(self, rid: int, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while rid not in self._exits:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left if left is not None else 1.0)
            return self._exits[rid]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_zygote: Zygote | None = None
_zlock = threading.Lock()


def zygote() -> Zygote:
    global _zygote
    with _zlock:
        if _zygote is None or _zygote.proc.poll() is not None:
            _zygote = Zygote()
        return _zygote


def content(name: str, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(name.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def small_camera(root: Path, rng: Any) -> Path:
    """A few files: one spanning several age chunks, a sidecar, a zero-byte file, firmware."""
    big = CHUNK * rng.randint(3, 5) + rng.randint(0, CHUNK)
    files = {
        "DCIM/100BWC/VID_0001.MP4": big,
        "DCIM/100BWC/VID_0001.XML": rng.randint(100, 900),
        "DCIM/100BWC/VID_0002.MP4": rng.randint(1, 40_000),
        "DCIM/100BWC/IMG_0003.JPG": 0,
        "SYSTEM/FIRMWARE.BIN": 4096,
    }
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content(rel, size))
    return root


@dataclass
class StationDirs:
    root: Path
    pub: str
    store_url: str = ""
    store_extra: str = ""
    extra: str = ""

    def __post_init__(self) -> None:
        if not self.store_url:
            self.store_url = f"file://{self.root}/store"

    @property
    def config(self) -> Path:
        return self.root / "dockd.toml"

    @property
    def spool(self) -> Path:
        return self.root / "state" / "spool"

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.sqlite3"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    def write(self, spool_dir: Path | None = None) -> Path:
        spool = spool_dir or self.spool
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[station]
id = "dock-c"
[paths]
state_dir = "{self.root}/state"
spool_dir = "{spool}"
runtime_dir = "{self.root}/run"
[encryption]
recipients = ["{self.pub}"]
[store]
url = "{self.store_url}"
timeout = 5
{self.store_extra}
[devices]
source = "inbox"
inbox_dir = "{self.inbox}"
mount_dir = "{self.root}/mnt"
[upload]
concurrency = 2
attempts = 3
backoff_initial = 0
backoff_max = 0
[log]
level = "info"
format = "json"
{self.extra}
""")
        return self.config


@dataclass
class Proc:
    """One dockd child process."""

    rid: int
    pid: int
    log: Path
    started: float = field(default_factory=time.monotonic)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        if self.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def exitcode(self) -> int | None:
        return zygote().wait(self.rid, 0)

    def is_alive(self) -> bool:
        return self.exitcode is None

    def wait(self, timeout: float | None = None) -> int | None:
        return zygote().wait(self.rid, timeout)

    def events(self) -> list[dict[str, Any]]:
        out = []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def spawn(argv: list[str], log: Path, *, kill_at_event: int = 0, s3_min_part: int = 0) -> Proc:
    rid, pid = zygote().start({"argv": argv, "log": str(log), "kill_at_event": kill_at_event,
                               "s3_min_part": s3_min_part})
    return Proc(rid, pid, log)


def ingest(st: StationDirs, cam: Path, serial: str, log: Path, **kw: Any) -> Proc:
    return spawn(["--config", str(st.config), "ingest", "--serial", serial, "--no-progress", str(cam)], log, **kw)


def daemon(st: StationDirs, log: Path, **kw: Any) -> Proc:
    return spawn(["--config", str(st.config), "run"], log, **kw)


def last_phase(ledger: Path, serial: str) -> tuple[int, str | None]:
    """(number of sessions of ``serial``, phase of the newest), read-only."""
    if not ledger.exists():
        return 0, None
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT phase FROM sessions WHERE serial=? ORDER BY id", (serial,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return 0, None
    return len(rows), (rows[-1][0] if rows else None)


def run_daemon_until_final(st: StationDirs, serial: str, log: Path, timeout: float = 60.0,
                           **kw: Any) -> tuple[Proc, str | None]:
    """``dockd run`` until a session for ``serial`` opened by this process is done/attention; SIGTERM."""
    n0, _ = last_phase(st.ledger, serial)
    p = daemon(st, log, **kw)
    deadline = time.monotonic() + timeout
    phase = None
    while time.monotonic() < deadline and p.is_alive():
        n, ph = last_phase(st.ledger, serial)
        if n > n0 and ph in ("done", "attention"):
            phase = ph
            break
        time.sleep(0.02)
    if p.is_alive():
        p.signal(signal.SIGTERM)
        if p.wait(30) is None:
            p.kill9()
            p.wait(5)
    return p, phase
