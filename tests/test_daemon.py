"""``dockd run`` as a real subprocess under a real sd_notify socket.

READY once the source listens, WATCHDOG from the main loop, STATUS lines,
SIGHUP reload, and SIGTERM in the middle of a 300 MiB recording: exit 0
promptly, nothing half-done left as if it were whole, and the next start
finishes the job (verified, wiped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dockd import config as config_mod
from dockd.control import query
from dockd.ledger import Ledger
from dockd.model import RecState

from notify import DaemonProcess, NotifySocket, write_config

BIG = 300 * 1024 * 1024


def _big_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


@pytest.fixture
def notify_sock(tmp_path: Path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def _wait_mid_copy(cfg, serial: str, timeout: float = 30.0) -> dict:
    """Poll the control socket until ``serial``'s big file is partly copied."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        snap = query(cfg)
        bays = {b["camera"]: b for b in (snap or {}).get("bays", [])}
        b = bays.get(serial)
        if b is not None:
            last = b
            if b["current"] == "DCIM/BIG.MP4" and 0 < b["bytes"]["spooled"] - 4096 < BIG:
                return b
            assert b["recordings"]["spooled"] < b["recordings"]["total"] or b["recordings"]["total"] == 0, \
                f"missed the copy window: {b}"
        time.sleep(0.01)
    raise TimeoutError(f"never saw the big file mid-copy: {last}")


def test_ready_watchdog_sigterm_mid_file_and_resume(tmp_path, identity, notify_sock):
    staged = tmp_path / "staging" / "CAM1"
    _big_file(staged / "DCIM" / "BIG.MP4", BIG)
    (staged / "DCIM" / "SMALL.MP4").write_bytes(b"small" * 1000)
    cam = tmp_path / "inbox" / "CAM1"
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    cfg = config_mod.load(cfg_path)

    d = DaemonProcess(cfg_path, notify_sock, watchdog_usec=400_000)
    try:
        ready = notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        # READY comes once the source listens: the control socket already answers
        assert "docked" in ready.get("STATUS", "")
        d.wait_event("daemon.started", 10)           # logged before READY; its pipe may lag
        # keepalives at half of WATCHDOG_USEC (0.2 s) from the main loop
        t_ready = notify_sock.times("READY")[0]
        time.sleep(0.6)
        pings = [t for t in notify_sock.times("WATCHDOG") if t > t_ready]
        assert len(pings) >= 2, notify_sock.all()
        # dock (an atomic rename into the inbox), and stop it in the middle of the big file
        cam.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, cam)
        bay = _wait_mid_copy(cfg, "CAM1")
        assert bay["safe_to_undock"] is False and bay["phase"] == "spooling"
        rc, took = d.terminate(timeout=30)
    finally:
        d.kill()
    assert rc == 0, d.stderr.decode(errors="replace")
    assert took < 10, f"SIGTERM took {took:.1f}s"
    assert notify_sock.times("STOPPING")
    assert d.events("daemon.stopped")
    assert not d.events("session.crashed")
    # nothing half-copied left looking whole; the camera still has everything
    assert list((tmp_path / "state/spool/partial").iterdir()) == []
    assert (cam / "DCIM/BIG.MP4").stat().st_size == BIG
    led = Ledger(cfg.ledger_path)
    try:
        big = next(r for r in led.recordings(serial="CAM1") if r.name == "DCIM/BIG.MP4")
        assert big.state == RecState.FOUND and big.spool_path is None
        s = led.sessions(limit=1)[0]
        assert s["undocked_at"] is None and "dockd stopped" in (s["error"] or "")
    finally:
        led.close()
    # the daemon is down: the ledger view still shows the bay, not safe
    from dockd.status import from_ledger

    snap = from_ledger(cfg)
    assert snap["daemon"]["running"] is False
    assert [(b["camera"], b["safe_to_undock"]) for b in snap["bays"]] == [("CAM1", False)]

    # second start: resumes and finishes
    notify_sock.messages.clear()
    d2 = DaemonProcess(cfg_path, notify_sock, watchdog_usec=2_000_000)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        d2.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM1")
        # SIGHUP reloads: RELOADING=1, then READY=1 again
        d2.proc.send_signal(signal.SIGHUP)
        d2.wait_event("daemon.reloaded", 10)
        notify_sock.wait_for(lambda m: m.get("RELOADING") == "1", 5)
        rc, _ = d2.terminate(timeout=30)
    finally:
        d2.kill()
    assert rc == 0
    assert [e for e in d2.events("daemon.recovered") if e.get("sessions_interrupted") == 1]
    led = Ledger(cfg.ledger_path)
    try:
        recs = led.recordings(serial="CAM1")
        assert {r.name: r.state for r in recs} == {"DCIM/BIG.MP4": RecState.WIPED,
                                                   "DCIM/SMALL.MP4": RecState.WIPED}
    finally:
        led.close()
    assert not (cam / "DCIM/BIG.MP4").exists()
    objs = [p for p in (tmp_path / "store").rglob("*.age")]
    assert len(objs) == 2 and max(p.stat().st_size for p in objs) > BIG


def test_bad_config_on_reload_keeps_running(tmp_path, identity, notify_sock):
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    d = DaemonProcess(cfg_path, notify_sock)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        good = cfg_path.read_text()
        cfg_path.write_text(good + "\n[nonsense]\nx = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        failed = d.wait_event("daemon.reload_failed", 10)
        assert "nonsense" in failed[0]["error"]
        assert d.proc.poll() is None
        # a daemon that seems stuck can be asked where: SIGUSR1 dumps every thread's stack
        d.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert d.proc.poll() is None
        rc, took = d.terminate()
    finally:
        d.kill()
    assert rc == 0 and took < 5
    dump = d.stderr.decode(errors="replace")
    assert "most recent call first" in dump and "daemon.py" in dump


def test_the_undock_of_another_device_with_the_same_serial_leaves_the_session_alone(make_cfg, tmp_path):
    """Two devices carry one serial (a clash the mounter names apart): the one that
    leaves must not cancel, or mark undocked, the session of the one still docked."""
    from dockd.daemon import Daemon
    from dockd.device.events import CameraDocked, CameraUndocked

    d = Daemon(None, make_cfg())
    cancels: list[threading.Event] = []
    try:
        def session(cancel: threading.Event) -> None:       # a session still working with its camera
            cancels.append(cancel)
            cancel.wait()

        assert d.station.sessions.dock(CameraDocked("CAMX", "generic", tmp_path, device="/dev/sdb1"), session)
        d._present.add("CAMX")
        deadline = time.monotonic() + 5
        while not cancels and time.monotonic() < deadline:
            time.sleep(0.01)
        cancel = cancels[0]
        d._undocked(CameraUndocked("CAMX", device="/dev/sdc1"))
        assert not cancel.is_set() and d.present_cameras() == {"CAMX"}
        d._undocked(CameraUndocked("CAMX", device="/dev/sdb1"))
        assert cancel.is_set() and d.present_cameras() == set()
    finally:
        for c in cancels:
            c.set()
        d.station.close()


def test_a_signal_arriving_inside_the_main_loops_wait_cannot_deadlock(make_cfg):
    """A signal handler runs in the main thread, between two bytecodes of whatever it
    interrupted: here the main loop's wait for the next event. A full run caught
    `dockd run` hung for good that way (the handler's put waiting for the lock its
    own get held). The handler may take no lock that the interrupted wait can hold."""
    from dockd.daemon import Daemon

    d = Daemon(None, make_cfg())
    try:
        held = getattr(d.events, "mutex", None)          # a queue.Queue's lock, held inside get()
        done = threading.Event()

        def interrupted_wait() -> None:
            if held is not None:
                held.acquire()                          # the state get() is in when the signal lands
            d._on_signal(signal.SIGTERM, None)
            done.set()

        threading.Thread(target=interrupted_wait, daemon=True).start()
        assert done.wait(5), "the signal handler deadlocked on the event queue"
        assert d.events.get(timeout=1) == "stop:SIGTERM"
    finally:
        d.station.close()


def _decrypts_with(path: Path, ident) -> bool:
    import io

    from dockd.age import decrypt
    from dockd.errors import AgeError

    try:
        with open(path, "rb") as f:
            decrypt(f, io.BytesIO(), [ident])
    except AgeError:
        return False
    return True


def test_a_reload_is_a_clean_cut_new_sessions_use_new_recipients(tmp_path, notify_sock):
    """A real SIGHUP to a real ``dockd run`` after a key rotation: a session already running
    finishes with the recipients it started with (its later files too); every session that
    starts after the reload encrypts to the new ones only. A reload changing what only a
    restart can apply is refused whole, naming the key, and nothing changes."""
    from dockd.age import generate_identity

    old, new = generate_identity(), generate_identity()
    extra = "[spool]\nmin_free = 0\n"
    cfg_path = write_config(tmp_path, str(old.public()), extra)
    cfg = config_mod.load(cfg_path)
    staged = tmp_path / "staging"
    _big_file(staged / "CAM1" / "DCIM" / "BIG.MP4", BIG)
    os.utime(staged / "CAM1" / "DCIM" / "BIG.MP4", (1_000_000_000, 1_000_000_000))   # copied first
    (staged / "CAM1" / "DCIM" / "SMALL.MP4").write_bytes(b"after the reload" * 100)
    for cam in ("CAM2", "CAM3"):
        (staged / cam / "DCIM").mkdir(parents=True)
        (staged / cam / "DCIM" / "CLIP.MP4").write_bytes(os.urandom(5000))
    (tmp_path / "inbox").mkdir()
    d = DaemonProcess(cfg_path, notify_sock)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        os.rename(staged / "CAM1", tmp_path / "inbox" / "CAM1")
        _wait_mid_copy(cfg, "CAM1")
        write_config(tmp_path, str(new.public()), extra)          # the key rotation
        d.proc.send_signal(signal.SIGHUP)
        d.wait_event("daemon.reloaded", 10)
        os.rename(staged / "CAM2", tmp_path / "inbox" / "CAM2")
        d.wait_event("session.done", 120, where=lambda e: e.get("camera") == "CAM1")
        d.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM2")
        cam2 = list((tmp_path / "store").rglob("CLIP.*.age"))
        assert len(cam2) == 1 and _decrypts_with(cam2[0], new) and not _decrypts_with(cam2[0], old)
        # a reload that only a restart could apply: refused whole (the recipients stay new)
        write_config(tmp_path, str(old.public()), extra, store=tmp_path / "elsewhere")
        d.proc.send_signal(signal.SIGHUP)
        refused = d.wait_event("daemon.reload_failed", 10)
        assert "store.url" in refused[0]["error"] and "restart" in refused[0]["error"]
        os.rename(staged / "CAM3", tmp_path / "inbox" / "CAM3")
        d.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM3")
        rc, _ = d.terminate()
    finally:
        d.kill()
    assert rc == 0
    assert not (tmp_path / "elsewhere").exists()
    objs = {p.relative_to(tmp_path / "store").parts[2] + "/" + p.name.split(".")[0]: p
            for p in (tmp_path / "store").rglob("*.age")}
    assert set(objs) == {"CAM1/BIG", "CAM1/SMALL", "CAM2/CLIP", "CAM3/CLIP"}, sorted(objs)
    for name, p in objs.items():
        want = old if name.startswith("CAM1/") else new
        other = new if want is old else old
        assert _decrypts_with(p, want), f"{name} does not decrypt with the key its session started with"
        assert not _decrypts_with(p, other), f"{name} also decrypts with the other key"


def _dockd(cfg_path: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    from notify import DOCKD, REPO

    return subprocess.run(DOCKD + ["--config", str(cfg_path), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_a_second_run_on_the_same_state_dir_exits_2_and_the_first_carries_on(tmp_path, identity,
                                                                              notify_sock):
    import shutil

    from conftest import FIXTURE_CAMERA

    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    cfg = config_mod.load(cfg_path)
    d = DaemonProcess(cfg_path, notify_sock)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        second = _dockd(cfg_path, "run")
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert str(tmp_path / "state") in lines[0] and f"pid {d.proc.pid}" in lines[0], lines[0]
        # the first is unharmed: its socket still answers as itself, and it still serves cameras
        assert d.proc.poll() is None
        assert query(cfg)["daemon"]["pid"] == d.proc.pid
        (tmp_path / "inbox").mkdir(exist_ok=True)
        shutil.copytree(FIXTURE_CAMERA, tmp_path / "inbox" / "CAM2")
        d.wait_event("session.done", 60, where=lambda e: e.get("camera") == "CAM2")
        rc, _ = d.terminate()
    finally:
        d.kill()
    assert rc == 0
    # once it is gone, the state directory is free again (the kernel dropped the lock)
    third = DaemonProcess(cfg_path, None)
    try:
        third.wait_event("daemon.started", 30)
        assert third.terminate()[0] == 0
    finally:
        third.kill()


def test_ingest_while_run_works_exits_2_and_leaves_the_daemons_spool_alone(tmp_path, identity,
                                                                           notify_sock):
    import shutil

    from conftest import FIXTURE_CAMERA

    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    cam = tmp_path / "cams" / "CAM3"
    shutil.copytree(FIXTURE_CAMERA, cam)
    d = DaemonProcess(cfg_path, notify_sock)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        # a recording the daemon is half-way through copying (a start discards partials)
        partial = tmp_path / "state" / "spool" / "partial" / "41.age"
        partial.write_bytes(b"half a recording")
        r = _dockd(cfg_path, "ingest", "--no-progress", str(cam))
        assert r.returncode == 2, r.stdout + r.stderr
        assert "in use by another dockd" in r.stderr and f"pid {d.proc.pid}" in r.stderr, r.stderr
        assert partial.read_bytes() == b"half a recording"
        assert d.proc.poll() is None and not d.events("daemon.recovered")[1:]
        rc, _ = d.terminate()
    finally:
        d.kill()
    assert rc == 0
    assert sorted(p.relative_to(cam) for p in cam.rglob("*")) == sorted(
        p.relative_to(FIXTURE_CAMERA) for p in FIXTURE_CAMERA.rglob("*"))
    led = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        assert led.sessions() == []           # the refused ingest opened no session
    finally:
        led.close()


def test_two_inbox_directories_whose_names_look_alike_are_two_cameras(tmp_path, identity, notify_sock):
    """``TWO 1`` and ``TWO_1`` made one serial: the second camera was never served while the
    bay showed the first's SAFE TO UNDOCK. Each directory is a camera of its own."""
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    staged = tmp_path / "staging"
    for name, n in (("TWO 1", 3), ("TWO_1", 1)):
        for i in range(n):
            (staged / name).mkdir(parents=True, exist_ok=True)
            (staged / name / f"R{i}.MP4").write_bytes(os.urandom(100_000))
    (tmp_path / "inbox").mkdir()
    d = DaemonProcess(cfg_path, notify_sock)
    try:
        notify_sock.wait_for(lambda m: m.get("READY") == "1", 30)
        for name in ("TWO 1", "TWO_1"):
            os.rename(staged / name, tmp_path / "inbox" / name)
        done = d.wait_event("session.done", 60, count=2)
        rc, _ = d.terminate()
    finally:
        d.kill()
    assert rc == 0
    assert len({e["camera"] for e in done}) == 2
    assert not list((tmp_path / "inbox" / "TWO 1").iterdir())
    assert not list((tmp_path / "inbox" / "TWO_1").iterdir())
