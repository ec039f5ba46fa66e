"""The hash-chained audit log: what it records, and ``dockd audit verify`` finding a tamper."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dockd.device.events import CameraDocked, UsbIdentity
from dockd.station import Station
from dockd.ledger import event_hash
from dockd.store.retry import RetryPolicy

USB = UsbIdentity(vendor_id="3fd2", product_id="0200", serial="NW2-004711", manufacturer="Northwind",
                  product="NW-200")


def dockd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dockd", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def ledger_cfg(make_cfg, camera, identity, tmp_path):
    """Ingest the fixture camera with USB descriptors; return (config file for the CLI, ledger path)."""
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        assert st.run_session(CameraDocked("BWC0001", "generic", camera, device="/dev/sdz1", usb=USB,
                                           bay="1-1.4")).ok
    finally:
        st.close()
    conf = tmp_path / "dockd.toml"
    conf.write_text(f"""
[station]
id = "dock-01"
[paths]
state_dir = "{cfg.paths.state_dir}"
spool_dir = "{cfg.paths.spool_dir}"
runtime_dir = "{cfg.paths.runtime_dir}"
[encryption]
recipients = ["{identity.public()}"]
""")
    return conf, cfg.ledger_path


def rows(ledger: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM events ORDER BY id").fetchall()
    finally:
        db.close()


def tamper(ledger: Path, sql: str, *args: object) -> None:
    """What an attacker with the file would do: drop the append-only triggers, then edit."""
    db = sqlite3.connect(ledger)
    try:
        db.execute("DROP TRIGGER events_no_update")
        db.execute("DROP TRIGGER events_no_delete")
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def test_every_step_is_recorded_with_serial_and_usb_descriptors(ledger_cfg):
    _conf, ledger = ledger_cfg
    evs = rows(ledger)
    names = [e["event"] for e in evs]
    for step in ("device.docked", "recording.spooled", "upload.uploaded", "upload.verified", "wipe.done",
                 "manifest.uploaded"):
        assert step in names, step
    for e in evs:
        assert e["serial"] == "BWC0001", dict(e)
        usb = json.loads(e["data"])["usb"]
        assert usb == USB.as_dict(), dict(e)
    per_recording = [e for e in evs if e["event"] in ("recording.spooled", "upload.verified", "wipe.done")]
    assert len(per_recording) == 3 * 6 and all(e["recording_id"] for e in per_recording)


def test_undock_is_recorded_with_the_descriptors(ledger_cfg):
    from dockd.ledger import Ledger

    _conf, path = ledger_cfg
    led = Ledger(path)
    try:
        sid = led.sessions(limit=1)[0]["id"]
        led.mark_undocked(sid)
        (ev,) = [e for e in led.events(limit=1000) if e["event"] == "device.undocked"]
        assert ev["serial"] == "BWC0001" and json.loads(ev["data"])["usb"]["serial"] == "NW2-004711"
        assert led.verify_chain() == len(led.events(limit=10000))
    finally:
        led.close()


def test_audit_verify_counts_an_intact_chain(ledger_cfg):
    conf, ledger = ledger_cfg
    r = dockd("--config", str(conf), "audit", "verify")
    assert r.returncode == 0, r.stderr
    assert f"audit chain intact: {len(rows(ledger))} events" in r.stdout
    r = dockd("--config", str(conf), "audit", "verify", "--json")
    assert json.loads(r.stdout) == {"ok": True, "ledger": str(ledger), "events": len(rows(ledger))}


def test_the_append_only_triggers_stop_a_casual_edit(ledger_cfg):
    _conf, ledger = ledger_cfg
    db = sqlite3.connect(ledger)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE events SET data='{}' WHERE id=3")
    db.close()


def test_an_edited_row_is_reported_at_its_event_id(ledger_cfg):
    conf, ledger = ledger_cfg
    victim = next(e for e in rows(ledger) if e["event"] == "wipe.done")
    data = json.loads(victim["data"])
    data["path"] = "DCIM/100BWC/SOMETHING_ELSE.MP4"
    tamper(ledger, "UPDATE events SET data=? WHERE id=?", json.dumps(data, sort_keys=True), victim["id"])
    r = dockd("--config", str(conf), "audit", "verify")
    assert r.returncode == 1
    assert f"audit chain broken at event {victim['id']}: content was altered" in r.stderr
    r = dockd("--config", str(conf), "audit", "verify", "--json")
    assert r.returncode == 1 and f"event {victim['id']}" in json.loads(r.stdout)["error"]


def test_a_rehashed_row_is_caught_at_the_next_one(ledger_cfg):
    """An attacker who also recomputes the edited row's own hash breaks its successor's link."""
    conf, ledger = ledger_cfg
    evs = rows(ledger)
    victim = next(e for e in evs if e["event"] == "upload.verified")
    data = victim["data"].replace("verified", "verifieD")
    h = event_hash(victim["prev_hash"], victim["ts"], victim["event"], victim["serial"], victim["session_id"],
                   victim["recording_id"], data)
    tamper(ledger, "UPDATE events SET data=?, hash=? WHERE id=?", data, h, victim["id"])
    r = dockd("--config", str(conf), "audit", "verify")
    assert r.returncode == 1
    assert f"audit chain broken at event {victim['id'] + 1}: prev_hash does not match" in r.stderr


def test_a_deleted_row_is_caught_where_the_gap_is(ledger_cfg):
    conf, ledger = ledger_cfg
    evs = rows(ledger)
    gone = evs[len(evs) // 2]["id"]
    tamper(ledger, "DELETE FROM events WHERE id=?", gone)
    r = dockd("--config", str(conf), "audit", "verify")
    assert r.returncode == 1
    assert f"audit chain broken at event {gone + 1}: prev_hash does not match" in r.stderr


def test_the_signed_manifest_anchors_the_chain(ledger_cfg, tmp_path):
    """Rewriting the whole tail rehashes a valid chain, but the head no longer matches
    what the station signed into the manifest."""
    _conf, ledger = ledger_cfg
    (m,) = (tmp_path / "store").rglob("*.manifest.json")
    head = json.loads(m.read_text())["audit_head"]
    anchored = next(e for e in rows(ledger) if e["id"] == head["event"])
    assert anchored["hash"] == head["hash"]
    assert anchored["event"] != "manifest.uploaded"          # signed before it was uploaded


def test_audit_verify_without_a_ledger_is_a_usage_error(tmp_path):
    conf = tmp_path / "dockd.toml"
    conf.write_text(f'[paths]\nstate_dir = "{tmp_path}/none"\nspool_dir = "{tmp_path}/none/spool"\n'
                    f'runtime_dir = "{tmp_path}/run"\n')
    r = dockd("--config", str(conf), "audit", "verify")
    assert r.returncode == 2 and "no ledger" in r.stderr
    assert not (tmp_path / "none").exists()                     # and none was created


def test_station_key_prints_the_public_half(ledger_cfg, tmp_path):
    conf, _ledger = ledger_cfg
    r = dockd("--config", str(conf), "station-key")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" dockd@dock-01")
    assert dockd("--config", str(conf), "station-key").stdout.strip() == line          # same key every time
    r = dockd("--config", str(conf), "station-key", "--allowed-signers")
    assert r.stdout.strip() == f'dockd@dock-01 namespaces="dockd-manifest" {line.rsplit(" ", 1)[0]}'
    assert "PRIVATE" not in r.stdout
