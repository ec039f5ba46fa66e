"""``dockd retry`` and ``dockd acknowledge``: a bay in attention answered without a re-dock,
on the ledger when the daemon is down and through the control socket when it runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from dockd import config as config_mod
from dockd.ledger import Ledger
from dockd.model import Phase, RecState
from dockd.statelock import StateLock

from notify import DOCKD, REPO, DaemonProcess, NotifySocket, write_config


def _dockd(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(DOCKD + ["--config", str(cfg_path), *args], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, cwd=REPO)


def _attention(cfg_path: Path) -> config_mod.Config:
    """CAM7 ended in attention: V1.MP4 is encrypted in the spool but the store refused it
    (attention), V2.MP4 could never be read off the camera (failed, no spool copy)."""
    cfg = config_mod.load(cfg_path)
    cfg.paths.spool_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(cfg.ledger_path)
    try:
        sid = ledger.open_session("CAM7", "generic", "/inbox/CAM7", None, "1-1.7", {})
        r1 = ledger.upsert_found("CAM7", sid, "generic", b"DCIM/V1.MP4", 1000, 1, "recording")
        spool = cfg.paths.spool_dir / f"{r1.id}.age"
        spool.write_bytes(b"ciphertext")
        ledger.transition(r1.id, RecState.ATTENTION, event="recording.attention", error="store said 403",
                          spool_path=str(spool), cipher_size=10, count_attempt=True)
        r2 = ledger.upsert_found("CAM7", sid, "generic", b"DCIM/V2.MP4", 2000, 2, "recording")
        ledger.transition(r2.id, RecState.FAILED, event="recording.read_failed", error="EIO")
        ledger.set_phase(sid, Phase.ATTENTION, error="2 recording(s) not verified and wiped")
    finally:
        ledger.close()
    return cfg


def _ledger(cfg: config_mod.Config) -> Ledger:
    return Ledger(cfg.ledger_path)


def test_retry_and_acknowledge_on_the_ledger_with_the_daemon_down(tmp_path, identity):
    cfg_path = write_config(tmp_path, str(identity.public()))
    cfg = _attention(cfg_path)
    assert _dockd(cfg_path, "status").returncode == 1

    r = _dockd(cfg_path, "retry", "CAM7")
    assert r.returncode == 1, r                       # one recording needs the camera
    assert "queued: DCIM/V1.MP4" in r.stdout and "needs the camera: DCIM/V2.MP4" in r.stderr
    ledger = _ledger(cfg)
    try:
        by_name = {rec.name: rec for rec in ledger.recordings(serial="CAM7")}
        assert by_name["DCIM/V1.MP4"].state == RecState.SPOOLED and by_name["DCIM/V1.MP4"].attempts == 0
        assert by_name["DCIM/V2.MP4"].state == RecState.FAILED        # untouched
        ev = ledger.last_event("bay.retried", serial="CAM7")
        assert json.loads(ev["data"])["by"] == "root" and json.loads(ev["data"])["requeued"] == 1
    finally:
        ledger.close()

    before = (cfg.paths.spool_dir / "1.age").read_bytes()
    a = _dockd(cfg_path, "acknowledge", "CAM7", "--reason", "V2 unreadable on the camera; sent to IT")
    assert a.returncode == 0, a
    assert "acknowledged by root" in a.stdout
    snap = json.loads(_dockd(cfg_path, "status", "--json").stdout)
    bay = snap["bays"][0]
    assert bay["acknowledged"]["by"] == "root" and bay["acknowledged"]["uid"] == 0
    assert bay["acknowledged"]["reason"] == "V2 unreadable on the camera; sent to IT"
    assert not bay["needs_attention"] and snap["needs_attention"] is False
    assert [x["recording"] for x in snap["attention"]] == ["DCIM/V2.MP4"]   # still listed, acknowledged
    assert _dockd(cfg_path, "status").returncode == 0
    assert (cfg.paths.spool_dir / "1.age").read_bytes() == before              # nothing changed or deleted
    v = _dockd(cfg_path, "audit", "verify", "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["ok"], v


def test_acknowledge_needs_a_reason_and_a_known_camera(tmp_path, identity):
    cfg_path = write_config(tmp_path, str(identity.public()))
    _attention(cfg_path)
    for args in (["acknowledge", "CAM7", "--reason", "   "], ["acknowledge", "NOPE", "--reason", "x"],
                 ["acknowledge", "CAM7"], ["retry", "NOPE"]):
        r = _dockd(cfg_path, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r)
    assert _dockd(cfg_path, "status").returncode == 1


def test_with_the_daemon_down_they_take_the_state_lock(tmp_path, identity):
    cfg_path = write_config(tmp_path, str(identity.public()))
    cfg = _attention(cfg_path)
    lock = StateLock(cfg.paths.state_dir).acquire()    # another writer (an ingest) holds it
    try:
        r = _dockd(cfg_path, "acknowledge", "CAM7", "--reason", "looked")
        assert r.returncode == 2 and "in use by another dockd" in r.stderr, r
        assert _dockd(cfg_path, "retry", "CAM7").returncode == 2
    finally:
        lock.release()
    ledger = _ledger(cfg)
    try:
        assert ledger.last_event("bay.acknowledged") is None and ledger.last_event("bay.retried") is None
    finally:
        ledger.close()


def test_through_the_running_daemon_who_is_the_socket_peer(tmp_path, identity):
    shutil.copytree(REPO / "fixtures" / "cameras" / "BWC0001", tmp_path / "inbox" / "BWC0001")
    cfg_path = write_config(tmp_path, str(identity.public()), "[spool]\nmin_free = 0\n")
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        sock.wait_for(lambda m: m.get("READY") == "1", 30)
        d.wait_event("session.done", 60)
        a = _dockd(cfg_path, "acknowledge", "BWC0001", "--reason", "checked the bay LED")
        r = _dockd(cfg_path, "retry", "BWC0001")
        bad = _dockd(cfg_path, "retry", "NOPE")
        logged = d.wait_event("bay.acknowledged", 10)
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    assert a.returncode == 0 and "acknowledged by root" in a.stdout, a
    assert r.returncode == 0 and "0 recording(s) queued" in r.stdout, r
    assert bad.returncode == 2 and "no camera 'NOPE'" in bad.stderr, bad
    assert logged[0]["by"] == "root" and logged[0]["uid"] == 0
    cfg = config_mod.load(cfg_path)
    ledger = _ledger(cfg)
    try:
        ev = ledger.last_event("bay.acknowledged", serial="BWC0001")
        assert json.loads(ev["data"])["reason"] == "checked the bay LED"
        assert ledger.verify_chain() > 0
    finally:
        ledger.close()
