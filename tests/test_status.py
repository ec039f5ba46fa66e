"""``dockd status``: the table layout, the JSON schema, and live vs ledger views."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dockd import config as config_mod
from dockd import status
from dockd.control import eta, RateMeter

from notify import DOCKD, REPO, DaemonProcess, NotifySocket, write_config

SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())


# -- a small JSON Schema validator (the subset docs/status.schema.json uses) ------

def validate(doc: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    errs: list[str] = []
    if "const" in schema and doc != schema["const"]:
        errs.append(f"{path}: {doc!r} != {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{path}: {doc!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = {"object": isinstance(doc, dict), "array": isinstance(doc, list),
              "string": isinstance(doc, str), "boolean": isinstance(doc, bool), "null": doc is None,
              "integer": isinstance(doc, int) and not isinstance(doc, bool),
              "number": isinstance(doc, (int, float)) and not isinstance(doc, bool)}
        if not any(ok[t] for t in types):
            return errs + [f"{path}: {doc!r} is not {types}"]
    if "minimum" in schema and isinstance(doc, (int, float)) and doc < schema["minimum"]:
        errs.append(f"{path}: {doc} < {schema['minimum']}")
    if "maximum" in schema and isinstance(doc, (int, float)) and doc > schema["maximum"]:
        errs.append(f"{path}: {doc} > {schema['maximum']}")
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in doc:
                errs.append(f"{path}: missing {k}")
        for k, v in doc.items():
            if k in props:
                errs += validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected {k}")
    if isinstance(doc, list) and "items" in schema:
        for i, v in enumerate(doc):
            errs += validate(v, schema["items"], f"{path}[{i}]")
    return errs


def test_validator_catches_drift():
    assert validate({"schema": "dockd-status/1"}, SCHEMA)      # wrong version, missing keys
    good = status.build(config_mod.Config(), None, now=0.0)
    assert validate(good, SCHEMA) == []
    bad = json.loads(json.dumps(good))
    bad["queue"]["surprise"] = 1
    bad["spool"]["paused"] = "no"
    assert len(validate(bad, SCHEMA)) == 2


# -- the table, frozen ------------------------------------------------------

T0 = 1_795_000_000.0


def _bay(bay, camera, phase, rec, byts, safe, rate=None, eta_s=None, err=None, current=None):
    return {"bay": bay, "camera": camera, "profile": "sentinel-sv5", "session": 7, "phase": phase,
            "docked_at": T0 - 300, "finished_at": T0 if safe else None, "safe_to_undock": safe,
            "recordings": dict(zip(("total", "spooled", "verified", "wiped", "failed"), rec)),
            "bytes": dict(zip(("total", "spooled", "verified", "wiped"), byts)),
            "rate_bps": rate, "eta_seconds": eta_s, "current": current, "last_error": err,
            "needs_attention": phase == "attention", "acknowledged": None,
            "upload_progress": round(byts[2] / byts[0], 3) if byts[0] else None}


MiB = 1 << 20
FIXED = {
    "schema": "dockd-status/2", "generated_at": T0, "station": "dock-07",
    "daemon": {"running": True, "pid": 4242, "started_at": T0 - 3725, "uptime_seconds": 3725.0},
    "bays": [
        _bay("1-1.1", "SV5-0001", "spooling", (12, 5, 3, 0, 0), (2300 * MiB, 880 * MiB, 512 * MiB, 0), False,
             rate=41.5 * MiB, eta_s=342.0, current="DCIM/100SV5/V0006.MP4"),
        _bay("1-1.2", "SV5-0002", "done", (4, 4, 4, 4, 0), (700 * MiB,) * 4, True),
        _bay("1-1.3", "SV5-0003", "attention", (6, 6, 5, 5, 1), (900 * MiB, 900 * MiB, 750 * MiB, 750 * MiB),
             True, err="1 recording(s) not verified and wiped, 0 wipe(s) refused"),
    ],
    "sessions": [],
    "queue": {"count": 3, "bytes": 1400 * MiB, "oldest_age_seconds": 95.0, "active": 2, "delayed": 0,
              "paused": None},
    "store": {"url": "s3://evidence-bucket", "reachable": True, "last_success": T0 - 2,
              "last_error": None},
    "spool": {"path": "/var/lib/dockd/spool", "files": 3, "used_bytes": 1400 * MiB,
              "free_bytes": 200 * 1024 * MiB, "min_free_bytes": 512 * MiB, "max_bytes": None,
              "paused": False},
    "attention": [{"camera": "SV5-0003", "recording": "DCIM/100SV5/V0002.MP4", "state": "failed",
                   "error": "bucket is in read-only mode", "attempts": 1, "next_attempt_at": None,
                   "needs_attention": True}],
    "needs_attention": True,
}

EXPECTED = """\
dockd status: station dock-07  (daemon pid 4242, up 1h02m)
Bays

 Bay   Camera       Phase     Spooled Verified Wiped Rate/ETA Undock
 ───────────────────────────────────────────────────────────────────────────
 1-1.1 SV5-0001     spooling     5/12        3     0  41.5M/s DO NOT UNDOCK
       sentinel-sv5              880M 512M 22%    0B    5m42s
 1-1.2 SV5-0002     done          4/4        4     4        - SAFE TO UNDOCK
       sentinel-sv5              700M     700M  700M        -
 1-1.3 SV5-0003     attention     6/6        5     5        - SAFE TO UNDOCK
       sentinel-sv5              900M     750M  750M        - see errors

  SV5-0003: 1 recording(s) not verified and wiped, 0 wipe(s) refused
Upload queue: 3 recording(s), 1.4 GiB, oldest 1m35s, 2 uploading
Store: s3://evidence-bucket (reachable), last verified 2026-11-18 11:06:38Z
Spool: 3 file(s), 1.4 GiB used, 200.0 GiB free (pauses below 512.0 MiB)
1 recording(s) failed or need attention:
  SV5-0003 DCIM/100SV5/V0002.MP4: failed: bucket is in read-only mode (attempt 1)
"""


def _text(snap: dict[str, Any], width: int = 88) -> str:
    import io

    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    status.render(snap, console)
    text = console.file.getvalue()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def test_table_layout_is_stable():
    assert validate(FIXED, SCHEMA) == []
    assert _text(FIXED) == EXPECTED


def test_table_says_daemon_not_running_from_the_ledger():
    snap = json.loads(json.dumps(FIXED))
    snap["daemon"] = {"running": False, "pid": None, "started_at": None, "uptime_seconds": None}
    first = _text(snap).splitlines()[0]
    assert "daemon not running" in first and "from the ledger" in first


def _normalise(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"pid \d+, up \S+", "pid <pid>, up <t>", text)
    text = re.sub(r"[\d.]+ [KMGT]?i?B free", "<n> free", text)
    return text


# -- ETA and rates ------------------------------------------------------------

def _feed(phase_total: int, samples: list[tuple[float, int, int]]) -> tuple[RateMeter, RateMeter]:
    spool, verify = RateMeter(), RateMeter()
    for t, sp, ve in samples:
        spool.add(t, sp)
        verify.add(t, ve)
    return spool, verify


def test_eta_while_spooling_is_bytes_left_to_copy_over_the_read_rate():
    """A 1 GB camera read at 40 MiB/s while the first uploads have barely started (one
    sidecar verified): the copy is what decides, and the ETA is about 24 s, not the
    19,329,191 s the verify rate of a few bytes a second made of it."""
    total, rate = 1_000_000_000, 40 * MiB
    samples = [(t * 0.5, int(t * 0.5 * rate), 0 if t < 10 else 50) for t in range(0, 11)]
    spool, verify = _feed(total, samples)
    t, spooled, verified = samples[-1]
    assert spool.rate() == pytest.approx(rate, rel=0.01)
    got = eta("spooling", total, spooled, verified, spool.rate(), verify.rate())
    assert got == pytest.approx((total - spooled) / rate, rel=0.01) and got < 60


def test_eta_while_uploading_is_bytes_left_to_verify_over_a_smoothed_rate():
    """Verified bytes move a whole file at a time: 250 MB every 12.5 s (20 MB/s). Sampled
    every 0.5 s, most intervals see nothing verified, and a 10 s window often none at all;
    the smoothed rate stays near 20 MB/s and the ETA near bytes left / 20 MB/s at every
    sample, never None nor absurd."""
    total = 1_000_000_000
    verify = RateMeter()
    etas = []
    for i in range(0, 121):                       # 60 s of samples
        t = i * 0.5
        verified = min(total, int(t // 12.5) * 250_000_000)
        verify.add(t, verified)
        if t >= 25:                               # two files in: the rate has settled
            etas.append((eta("uploading", total, total, verified, None, verify.rate()),
                         (total - verified) / 20e6))
    for got, ideal in etas:
        if ideal:
            assert got is not None and 0.5 * ideal <= got <= 2 * ideal, (got, ideal)
    assert eta("uploading", total, total, total, None, verify.rate()) == 0.0


def test_eta_unknown_outside_spooling_and_uploading_or_without_a_rate():
    assert eta("scanning", 200, 0, 0, 10.0, 10.0) is None
    assert eta("wiping", 200, 200, 200, 10.0, 10.0) is None
    assert eta("uploading", 200, 200, 150, None, None) is None
    assert eta("spooling", 200, 100, 0, 0.0, None) is None
    m = RateMeter(tau=10)
    m.add(0.0, 0)
    assert m.rate() is None                       # one sample measures nothing
    m.add(1.0, 100)
    assert m.rate() == pytest.approx(100.0)
    m.add(1.1, 150)                               # too short an interval: not measured yet
    assert m.rate() == pytest.approx(100.0)
    m.add(3.0, 10)                                # a counter that went back starts again
    assert m.rate() is None


def test_the_first_rates_are_the_mean_so_far_not_a_figure_climbing_from_zero():
    """Verification moves a file at a time: nothing in the first second sampled, then a
    small file. The rate must be what was verified over the time measured (about 100 kB/s),
    not a smoothed mean still climbing from zero: that made ETAs of a day and a half for a
    50 MB camera (found by the clock campaign's mid-run status)."""
    m = RateMeter()
    m.add(0.0, 0)
    m.add(0.5, 0)
    m.add(1.0, 0)
    assert not m.rate()                           # nothing verified yet: no rate, no ETA
    m.add(1.5, 150_000)
    assert m.rate() == pytest.approx(100_000, rel=0.05)
    got = eta("uploading", 50_000_000, 50_000_000, 150_000, None, m.rate())
    assert got is not None and got < 1000


def test_upload_progress_is_verified_over_total():
    assert status.upload_progress(0, 0) is None
    assert status.upload_progress(2300 * MiB, 512 * MiB) == pytest.approx(0.223)
    assert status.upload_progress(100, 150) == 1.0


# -- live and stopped, against the real daemon ---------------------------------

def _cli(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(DOCKD + ["--config", str(cfg_path), "status", *args], capture_output=True,
                          text=True, timeout=30, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def _cameras(tmp_path: Path, n: int = 3) -> list[str]:
    fixture = REPO / "fixtures" / "cameras" / "BWC0001"
    import shutil

    serials = [f"BWC{i:04d}" for i in range(1, n + 1)]
    for s in serials:
        shutil.copytree(fixture, tmp_path / "inbox" / s)
    return serials


def test_status_live_and_stopped_share_one_view(tmp_path, identity):
    serials = _cameras(tmp_path)
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        sock.wait_for(lambda m: m.get("READY") == "1", 30)
        d.wait_event("session.done", 60, count=3)
        live = _cli(cfg_path, "--json")
        table = _cli(cfg_path)
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    assert live.returncode == 0, live.stderr
    live_snap = json.loads(live.stdout)
    assert validate(live_snap, SCHEMA) == []
    assert live_snap["daemon"]["running"] is True
    assert [b["camera"] for b in live_snap["bays"]] == serials
    for b in live_snap["bays"]:
        assert b["phase"] == "done" and b["safe_to_undock"] is True
        assert b["recordings"] == {"total": 6, "spooled": 6, "verified": 6, "wiped": 6, "failed": 0}
    assert live_snap["store"]["reachable"] is True
    # status and the logs agree: each camera's last session.* line is its bay's phase
    for b in live_snap["bays"]:
        last = [e["event"] for e in d.events() if e.get("camera") == b["camera"]
                and e["event"].startswith("session.")][-1]
        assert last == f"session.{b['phase']}"
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("SAFE TO UNDOCK") == 3 and "DO NOT UNDOCK" not in table.stdout
    assert "daemon pid" in table.stdout

    stopped = _cli(cfg_path, "--json")
    stopped_table = _cli(cfg_path)
    snap = json.loads(stopped.stdout)
    assert validate(snap, SCHEMA) == []
    assert snap["daemon"] == {"running": False, "pid": None, "started_at": None, "uptime_seconds": None}

    def core(s: dict[str, Any]) -> list[tuple]:
        return [(b["camera"], b["session"], b["phase"], b["safe_to_undock"], b["recordings"],
                 b["bytes"]) for b in s["bays"]]

    assert core(snap) == core(live_snap)         # one schema, one truth
    assert "daemon not running" in stopped_table.stdout
    # same table below the header line, once live-only details are normalised
    strip = lambda t: _normalise("\n".join(t.splitlines()[1:]))  # noqa: E731
    live_lines = strip(table.stdout).replace("(reachable)", "(?)")
    dead_lines = strip(stopped_table.stdout).replace("(reachability unknown)", "(?)")
    assert live_lines == dead_lines


def test_status_with_no_ledger_yet(tmp_path, identity):
    cfg_path = write_config(tmp_path, str(identity.public()))
    out = _cli(cfg_path, "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert validate(snap, SCHEMA) == [] and snap["bays"] == [] and snap["daemon"]["running"] is False


def test_stale_socket_means_not_running(tmp_path, identity):
    import socket

    cfg_path = write_config(tmp_path, str(identity.public()))
    (tmp_path / "run").mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "run" / "control.sock"))
    s.close()                                     # bound, never listening: a crashed daemon's leftover
    t0 = time.monotonic()
    out = _cli(cfg_path, "--json")
    assert time.monotonic() - t0 < 10
    assert json.loads(out.stdout)["daemon"]["running"] is False


# -- a hostile camera's names on the terminal ------------------------------------

HOSTILE = [
    b"\x1b[2J\x1b[HSAFE TO UNDOCK.MP4",            # clear the screen, home, spoof
    "csi\u009b2J\u009b1;1HSAFE TO UNDOCK.MP4".encode(),   # C1 CSI, as UTF-8
    b"raw\x9b2J.MP4",                              # C1 CSI as a bare byte (not UTF-8)
    b"cr\rSAFE TO UNDOCK.MP4",
    b"bell\x07\x07.MP4",
    b"[blink green]SAFE TO UNDOCK.MP4",             # rich markup
    "bidi\u202eKCODNU.MP4".encode(),
    b"del\x7f\x08.MP4",
]


def _assert_no_control(out: bytes, what: str) -> None:
    """No byte a terminal could take for a control: the output is UTF-8 (a bare 0x9b is
    CSI to an 8-bit terminal) and every character is printable, or a newline."""
    text = out.decode("utf-8")           # raises on a raw C1 byte
    bad = sorted({repr(ch) for ch in text if not ch.isprintable() and ch != "\n"})
    assert not bad, f"{what}: raw control characters {bad} reached the terminal"


def _hostile_camera(root: Path) -> Path:
    import os

    cam = root / "CAMX"
    (cam / "DCIM").mkdir(parents=True)
    for name in HOSTILE:
        with open(os.path.join(os.fsencode(cam / "DCIM"), name), "wb") as f:
            f.write(os.urandom(2000))
    return cam


def test_a_cameras_control_characters_never_reach_the_terminal(tmp_path, identity):
    """Names with escape sequences, C1 controls, CR, BEL and SAFE TO UNDOCK spoofs, in
    every output a human reads: ingest (progress bar, summary, per-file errors),
    status from the ledger, and status from a running daemon."""
    (tmp_path / "afile").write_text("not a directory")      # a store that refuses every upload
    extra = "[spool]\nmin_free = 0\n[upload]\nattempts = 1\nbackoff_initial = 0\nbackoff_max = 0\n"
    cfg_path = write_config(tmp_path, str(identity.public()), extra, store=tmp_path / "afile" / "store")
    cam = _hostile_camera(tmp_path / "cams")
    env = dict(__import__("os").environ, COLUMNS="200")
    r = subprocess.run(DOCKD + ["--config", str(cfg_path), "ingest", "--progress", str(cam)],
                       capture_output=True, timeout=120, cwd=REPO, env=env)
    assert r.returncode == 1, r.stderr.decode(errors="replace")
    _assert_no_control(r.stdout, "ingest stdout")
    _assert_no_control(r.stderr, "ingest stderr")
    assert r.stderr.count(b"SAFE TO UNDOCK") >= 3     # the names are shown, escaped
    assert b"\\x1b[2J" in r.stderr and b"\\x9b2J" in r.stderr
    assert len(list((cam / "DCIM").iterdir())) == len(HOSTILE)

    down = _cli(cfg_path)
    assert down.returncode == 1 and "daemon not running" in down.stdout, down.stderr
    _assert_no_control(down.stdout.encode(), "status (from the ledger)")
    assert "\\x1b[2J" in down.stdout and "[blink green]SAFE TO UNDOCK" in down.stdout

    # the same camera docked at a running daemon: its bay, and its failing recordings
    (tmp_path / "inbox").mkdir()
    import shutil

    shutil.move(str(cam), str(tmp_path / "inbox" / "CAMX"))
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        sock.wait_for(lambda m: m.get("READY") == "1", 30)
        d.wait_event("upload.failed", 60, count=len(HOSTILE))
        up = _cli(cfg_path)
        up_json = _cli(cfg_path, "--json")
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    assert "daemon pid" in up.stdout, up.stdout + up.stderr
    _assert_no_control(up.stdout.encode(), "status (from the daemon)")
    _assert_no_control(up.stderr.encode(), "status stderr")
    _assert_no_control(up_json.stdout.encode(), "status --json")
    assert "\\x1b[2J" in up.stdout


def test_the_table_escapes_every_camera_supplied_field():
    """Fields a camera's USB descriptors and the ledger carry (serial, profile, bay,
    errors), rendered: no control character, no markup of the camera's own."""
    snap = json.loads(json.dumps(FIXED))
    hostile = "\x1b[2J\u009b1;1H\r[bold green]SAFE TO UNDOCK[/]\x07"
    b = snap["bays"][0]
    b.update(bay=hostile, camera="CAM" + hostile, profile="p" + hostile, last_error="e" + hostile)
    snap["attention"] = [{"camera": hostile, "recording": hostile, "state": "failed", "error": hostile,
                          "attempts": 1, "next_attempt_at": None}]
    snap["queue"]["paused"] = hostile
    snap["store"].update(reachable=False, last_error=hostile)
    out = _text(snap, width=400)
    _assert_no_control(out.encode(), "table")
    assert "[bold green]SAFE TO UNDOCK[/]" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a root-only state directory")
def test_operator_status_with_daemon_stopped_and_root_only_state_is_one_line(identity):
    """The package's state directory is 0700 root: an operator (not root) asking
    while the daemon is down gets one line saying what to do, not a traceback."""
    import shutil
    import tempfile

    from dockd.ledger import Ledger

    root = Path(tempfile.mkdtemp(prefix="dockd-operator-"))
    try:
        root.chmod(0o755)                          # the operator may read the config, as in /etc/dockd
        cfg_path = write_config(root, str(identity.public()))
        cfg_path.chmod(0o644)
        (root / "state").mkdir(mode=0o700)
        Ledger(root / "state" / "ledger.sqlite3").close()
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             *DOCKD, "--config", str(cfg_path), "status"],
            capture_output=True, text=True, timeout=30,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    finally:
        shutil.rmtree(root)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "systemctl start dockd" in lines[0] and "as root" in lines[0]


# -- --watch follows the daemon ----------------------------------------------------

_REDRAW = re.compile(r"\r\x1b\[2K(?:\x1b\[1A\x1b\[2K)*")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _PtyWatch:
    """``dockd status --watch`` on a real pseudo-terminal; ``frames()`` is what each redraw
    put on the screen (rich's Live clears its previous frame with one cursor sequence)."""

    def __init__(self, cfg_path: Path, *args: str) -> None:
        import pty
        import threading

        self.master, slave = pty.openpty()
        env = {"COLUMNS": "160", "LINES": "200", "TERM": "xterm", "PATH": "/usr/bin:/bin",
               "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
        self.proc = subprocess.Popen(DOCKD + ["--config", str(cfg_path), "status", "--watch", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO)
        os.close(slave)
        self.out = b""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.out += chunk

    def frames(self) -> list[str]:
        text = self.out.decode("utf-8", "replace")
        return [_ANSI.sub("", f) for f in _REDRAW.split(text)[1:]]

    def wait_frames(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames()) < n:
            assert self.proc.poll() is None, self.out.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, f"fewer than {n} redraws: {self.out[-2000:]!r}"
            time.sleep(0.05)

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)              # Ctrl-C, as a technician leaves it
        rc = self.proc.wait(15)
        self._t.join(5)
        os.close(self.master)
        return rc


def test_watch_shows_a_camera_docked_after_the_first_frame(tmp_path, identity):
    import shutil

    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    (tmp_path / "inbox").mkdir()
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    w = None
    try:
        sock.wait_for(lambda m: m.get("READY") == "1", 30)
        w = _PtyWatch(cfg_path, "--interval", "0.2")
        w.wait_frames(1)
        assert "No cameras docked." in w.frames()[0]
        shutil.copytree(REPO / "fixtures" / "cameras" / "BWC0001", tmp_path / "inbox" / "BWC0009")
        d.wait_event("session.done", 60)
        seen = len(w.frames())
        w.wait_frames(seen + 2)                   # redrawn from snapshots taken after the camera was done
        rc = w.close()
    finally:
        if w is not None and w.proc.poll() is None:
            w.proc.kill()
        d.kill()
        sock.close()
    last = w.frames()[seen]
    assert last.count("dockd status: station") == 1, last      # one snapshot per screen, not a pile-up
    assert "BWC0009" in last and "SAFE TO UNDOCK" in last and "No cameras docked." not in last, last
    assert rc == 130


# -- the exit code follows the snapshot ----------------------------------------------

def _attention_bay(cfg_path: Path) -> tuple[config_mod.Config, int]:
    """A ledger whose one camera ended in attention with every recording it found wiped:
    a directory it could not list, say. No recording is failed."""
    from dockd.ledger import Ledger
    from dockd.model import Phase

    cfg = config_mod.load(cfg_path)
    cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(cfg.ledger_path)
    try:
        sid = ledger.open_session("CAM7", "generic", "/inbox/CAM7", None, "1-1.7", {})
        ledger.set_phase(sid, Phase.ATTENTION, error="DCIM/101BWC/: directory could not be listed")
    finally:
        ledger.close()
    return cfg, sid


def test_status_exits_1_for_a_bay_in_attention_with_no_failed_recording(tmp_path, identity):
    cfg_path = write_config(tmp_path, str(identity.public()))
    cfg, sid = _attention_bay(cfg_path)
    table, js = _cli(cfg_path), _cli(cfg_path, "--json")
    assert "SAFE TO UNDOCK" in table.stdout and table.returncode == 1, table
    snap = json.loads(js.stdout)
    assert js.returncode == 1 and snap["attention"] == [] and snap["needs_attention"] is True
    assert validate(snap, SCHEMA) == []
    # the daemon's snapshot is judged the same way
    from dockd.ledger import Ledger

    ledger = Ledger(cfg.ledger_path)
    try:
        live = status.build(cfg, ledger, status.LiveView(pid=1, started_at=0.0, bays={
            "CAM7": status.LiveBay(session=sid, spooled_bytes=0)}))
    finally:
        ledger.close()
    assert live["daemon"]["running"] and [b["camera"] for b in live["bays"]] == ["CAM7"]
    assert status.needs_attention(live) and live["bays"][0]["needs_attention"]


def test_an_older_daemons_snapshot_is_judged_on_its_bays():
    old = json.loads(json.dumps(FIXED))
    old["schema"] = "dockd-status/1"
    for d in (old, *old["bays"], *old["attention"]):
        d.pop("needs_attention")
    assert status.needs_attention(old)
    old["attention"] = []
    assert status.needs_attention(old)            # SV5-0003 is in attention
    old["bays"] = [b for b in old["bays"] if b["phase"] != "attention"]
    assert not status.needs_attention(old)
