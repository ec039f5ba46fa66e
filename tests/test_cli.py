"""The CLI as users run it: a subprocess, real files, the real age binary."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "cameras" / "BWC0001"
needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age binary is not installed")


def dockd(*args: str, cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dockd", *args], capture_output=True, cwd=cwd,
                          input=input, timeout=120)


def write_config(tmp: Path, pub: str, store: str | None = None) -> Path:
    cfg = tmp / "dockd.toml"
    cfg.write_text(f"""
[station]
id = "dock-t"
[paths]
state_dir = "{tmp}/state"
spool_dir = "{tmp}/state/spool"
runtime_dir = "{tmp}/run"
[encryption]
recipients = ["{pub}"]
[store]
url = "{store or f'file://{tmp}/store'}"
[spool]
min_free = 0
[upload]
attempts = 2
backoff_initial = 0
backoff_max = 0
""")
    return cfg


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, str]:
    r = dockd("keygen", "-o", str(tmp_path / "id.txt"))
    assert r.returncode == 0, r.stderr
    return tmp_path / "id.txt", r.stdout.decode().strip()


def test_keygen_prints_only_the_public_key(keypair, tmp_path):
    path, pub = keypair
    assert pub.startswith("age1") and "\n" not in pub
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert f"# public key: {pub}" in text and "AGE-SECRET-KEY-1" in text
    again = dockd("keygen", "-o", str(path))
    assert again.returncode == 2 and "refusing" in again.stderr.decode()


@needs_age
def test_age_keygen_identity_and_age_binary_interop(tmp_path):
    subprocess.run(["age-keygen", "-o", str(tmp_path / "k.txt")], check=True, capture_output=True)
    pub = subprocess.run(["age-keygen", "-y", str(tmp_path / "k.txt")], check=True, capture_output=True,
                         text=True).stdout.strip()
    plain = os.urandom(200_000)
    (tmp_path / "p").write_bytes(plain)
    subprocess.run(["age", "-r", pub, "-o", str(tmp_path / "c.age"), str(tmp_path / "p")], check=True)
    r = dockd("decrypt", "-i", str(tmp_path / "k.txt"), "-o", str(tmp_path / "out"), str(tmp_path / "c.age"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == plain


@needs_age
def test_ingest_then_age_decrypts_the_store(keypair, tmp_path):
    ident, pub = keypair
    cam = tmp_path / "CAM9"
    shutil.copytree(FIXTURE, cam)
    cfg = write_config(tmp_path, pub)
    r = dockd("--config", str(cfg), "ingest", str(cam))
    assert r.returncode == 0, r.stderr
    assert b"6 verified, 6 wiped" in r.stdout
    objs = sorted((tmp_path / "store").rglob("*.age"))
    assert len(objs) == 6
    video = next(o for o in objs if "VID_20261120_0701.MP4" in o.name)
    out = subprocess.run(["age", "-d", "-i", str(ident), str(video)], check=True, capture_output=True).stdout
    assert out == (FIXTURE / "DCIM/100BWC/VID_20261120_0701.MP4").read_bytes()
    # status from the ledger, JSON
    s = dockd("--config", str(cfg), "status", "--json")
    assert s.returncode == 0, s.stderr
    snap = json.loads(s.stdout)
    assert snap["daemon"]["running"] is False
    assert snap["sessions"][0]["camera"] == "CAM9" and snap["sessions"][0]["phase"] == "done"


def test_ingest_with_an_unusable_store_exits_1_and_wipes_nothing(keypair, tmp_path):
    _ident, pub = keypair
    cam = tmp_path / "CAM8"
    shutil.copytree(FIXTURE, cam)
    (tmp_path / "afile").write_text("not a directory")
    cfg = write_config(tmp_path, pub, store=f"file://{tmp_path}/afile/store")
    r = dockd("--config", str(cfg), "ingest", str(cam))
    assert r.returncode == 1
    assert sorted(p.relative_to(cam) for p in cam.rglob("*") if p.is_file()) == sorted(
        p.relative_to(FIXTURE) for p in FIXTURE.rglob("*") if p.is_file())
    s = dockd("--config", str(cfg), "status")
    assert s.returncode == 1 and b"need attention" in s.stdout


def test_decrypt_with_the_wrong_identity_fails_cleanly(keypair, tmp_path):
    ident, pub = keypair
    other = tmp_path / "other.txt"
    dockd("keygen", "-o", str(other))
    cam = tmp_path / "CAM7"
    shutil.copytree(FIXTURE, cam)
    cfg = write_config(tmp_path, pub)
    assert dockd("--config", str(cfg), "ingest", str(cam)).returncode == 0
    obj = next((tmp_path / "store").rglob("*.age"))
    r = dockd("decrypt", "-i", str(other), "-o", str(tmp_path / "x"), str(obj))
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_demo_runs_on_a_fresh_home(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "dockd", "demo"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "round trip" in r.stdout and "matches" in r.stdout and r.stdout.strip().endswith("demo: OK")


def test_run_with_a_too_long_socket_path_is_one_clear_line(keypair, tmp_path):
    _ident, pub = keypair
    cfg = write_config(tmp_path, pub)
    long_run = tmp_path / ("r" * 110)
    text = cfg.read_text().replace(f'runtime_dir = "{tmp_path}/run"', f'runtime_dir = "{long_run}"')
    cfg.write_text(text + f'\n[devices]\nsource = "inbox"\ninbox_dir = "{tmp_path}/inbox"\n')
    r = dockd("--config", str(cfg), "run")
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err
    assert "control socket path may have at most 107 bytes" in err and len(err.strip().splitlines()) == 1, err


def test_a_file_the_wipe_cannot_delete_is_reported_once(keypair, tmp_path):
    """An immutable file (chattr +i: unlink fails with EPERM, even for root) is verified at
    the store but stays on the camera: the summary counts it once, and names it once."""
    _ident, pub = keypair
    cam = tmp_path / "CAM6"
    shutil.copytree(FIXTURE, cam)
    stuck = cam / "AUDIO" / "REC_20261120_1402.WAV"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        r = dockd("--config", str(write_config(tmp_path, pub)), "ingest", "--no-progress", str(cam))
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 1, out + err
    assert "1 not safe, 0 refused" in out, out
    assert err.count("REC_20261120_1402.WAV") == 1, err
    assert stuck.exists()


def _garbage(p: Path) -> None:
    p.write_bytes(os.urandom(p.stat().st_size))


def _half(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _empty(p: Path) -> None:
    os.truncate(p, 0)


@pytest.mark.parametrize("damage", [_garbage, _half, _empty])
def test_a_damaged_ledger_is_one_clear_line_from_every_command_and_is_kept(keypair, tmp_path, damage):
    _ident, pub = keypair
    cfg = write_config(tmp_path, pub)
    (tmp_path / "cam").mkdir()
    for i in range(40):       # a ledger of a few pages, so a cut lands inside its data
        (tmp_path / "cam" / f"V{i:03d}.MP4").write_bytes(os.urandom(3000))
    assert dockd("--config", str(cfg), "ingest", str(tmp_path / "cam")).returncode == 0
    ledger = tmp_path / "state" / "ledger.sqlite3"
    assert not ledger.with_name("ledger.sqlite3-wal").exists()
    damage(ledger)
    before = ledger.read_bytes()
    cam = tmp_path / "CAM5"
    shutil.copytree(FIXTURE, cam)
    for args in (["status"], ["status", "--json"], ["audit", "verify"], ["ingest", str(cam)], ["run"]):
        r = dockd("--config", str(cfg), *args)
        err = r.stderr.decode()
        assert r.returncode == 1, (args, r.stdout, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert str(ledger) in lines[0] and ("damaged" in lines[0] or "empty" in lines[0]), lines[0]
        assert "backup" in lines[0], lines[0]
        assert ledger.read_bytes() == before, f"{args} changed the damaged ledger"
    assert sorted(p.name for p in cam.rglob("*")) == sorted(p.name for p in FIXTURE.rglob("*"))


def test_damage_deep_inside_the_ledger_stops_ingest_and_run_before_they_start(keypair, tmp_path):
    """A page in the middle scribbled over: the header and schema still read, so only a
    full read finds it; a writer checks before it relies on the ledger."""
    _ident, pub = keypair
    cfg = write_config(tmp_path, pub)
    (tmp_path / "cam").mkdir()
    for i in range(200):
        (tmp_path / "cam" / f"V{i:03d}.MP4").write_bytes(os.urandom(500))
    assert dockd("--config", str(cfg), "ingest", str(tmp_path / "cam")).returncode == 0
    ledger = tmp_path / "state" / "ledger.sqlite3"
    size = ledger.stat().st_size
    assert size > 16 * 4096
    with open(ledger, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(4096))
    before = ledger.read_bytes()
    cam = tmp_path / "CAM4"
    shutil.copytree(FIXTURE, cam)
    for args in (["ingest", str(cam)], ["run"]):
        r = dockd("--config", str(cfg), *args)
        err = r.stderr.decode()
        assert r.returncode == 1 and len(err.strip().splitlines()) == 1, (args, err)
        assert str(ledger) in err and "damaged" in err and "Traceback" not in err, err
        assert ledger.read_bytes() == before
    assert len(list(cam.rglob("*.MP4"))) == 2


@pytest.fixture
def small_state_fs(tmp_path: Path):
    """The state directory on a real 1 MiB tmpfs (the spool and store elsewhere)."""
    state = tmp_path / "state"
    state.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield state
    subprocess.run(["umount", "-l", str(state)], check=True)


def _fill(fs: Path, leave: int) -> Path:
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave))
    if leave == 0:       # whatever allocation rounding left: take it too
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
        finally:
            os.close(fd)
    return filler


@pytest.mark.parametrize("leave", [0, 60 * 1024], ids=["full-before", "fills-mid-run"])
def test_ingest_with_the_ledgers_disk_full_says_so_and_wipes_only_what_is_recorded(
        keypair, tmp_path, small_state_fs, leave):
    _ident, pub = keypair
    cfg = write_config(tmp_path, pub)
    cfg.write_text(cfg.read_text().replace(f'spool_dir = "{tmp_path}/state/spool"',
                                           f'spool_dir = "{tmp_path}/spool"'))
    first = tmp_path / "CAM1"
    shutil.copytree(FIXTURE, first)
    assert dockd("--config", str(cfg), "ingest", str(first)).returncode == 0     # a ledger exists
    cam = tmp_path / "CAM2"
    cam.mkdir()
    for i in range(200):
        (cam / f"V{i:03d}.MP4").write_bytes(os.urandom(1000))
    filler = _fill(small_state_fs, leave)
    r = dockd("--config", str(cfg), "ingest", "--no-progress", str(cam))
    err = r.stderr.decode()
    assert r.returncode == 1, (r.stdout.decode()[-2000:], err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(small_state_fs / "ledger.sqlite3") in err and "full" in err, err
    filler.unlink()
    # every file gone from the camera is recorded wiped, after its copy was proven at the store
    from dockd.ledger import Ledger

    led = Ledger(small_state_fs / "ledger.sqlite3")
    try:
        states = {r.name: r for r in led.recordings(serial="CAM2")}
    finally:
        led.close()
    stored = {p.name.split(".")[0] + ".MP4" for p in (tmp_path / "store").rglob("V*.age")}
    for i in range(200):
        name = f"V{i:03d}.MP4"
        if not (cam / name).exists():
            assert states[name].state.value == "wiped" and name in stored, name


def test_a_lock_file_that_cannot_be_opened_is_one_line_exit_2(keypair, tmp_path):
    """A symlink planted where the lock goes is not followed (nor a traceback)."""
    _ident, pub = keypair
    cfg = write_config(tmp_path, pub)
    (tmp_path / "state").mkdir()
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "state" / "dockd.lock").symlink_to(tmp_path / "elsewhere")
    cam = tmp_path / "CAM3"
    shutil.copytree(FIXTURE, cam)
    r = dockd("--config", str(cfg), "ingest", str(cam))
    err = r.stderr.decode()
    assert r.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "dockd.lock" in err and str(tmp_path / "state") in err
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()
