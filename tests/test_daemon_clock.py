"""A real ``dockd run`` whose wall clock steps back (NTP correcting a dock whose clock ran
fast), under libfaketime: retries are scheduled on the monotonic clock, so a store outage
followed by a two-hour step back delays the retry by its backoff, not by two hours."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dockd import config as config_mod
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.errors import TransientStoreError
from dockd.ledger import Ledger
from dockd.model import RecState
from dockd.store.retry import RetryPolicy

from fakes import ScriptedStore
from notify import DaemonProcess, NotifySocket, write_config

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")   # Debian's faketime


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime (Debian package faketime) not installed")
def test_a_wall_clock_stepped_back_after_an_outage_does_not_delay_the_retry(tmp_path, identity):
    cam = tmp_path / "inbox" / "CAM1" / "DCIM"
    cam.mkdir(parents=True)
    (cam / "V001.MP4").write_bytes(os.urandom(200_000))
    store = tmp_path / "store"
    store.mkdir()
    blocked = store / "evidence"           # the prefix's directory is no directory: an outage (ENOTDIR)
    blocked.write_bytes(b"")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    extra = "[upload]\nattempts = 1\nbackoff_initial = 2\nbackoff_max = 2\n"
    cfg_path = write_config(tmp_path, str(identity.public()), extra)
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock, env={
        "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    try:
        d.wait_event("upload.failed", 30)
        offset.write_text("-2h\n")         # the wall clock steps back two hours
        d.wait_event("upload.failed", 30, count=2)   # retried after its backoff, clock stepped
        blocked.unlink()                   # the store is back
        d.wait_event("session.done", 30, where=lambda e: e.get("camera") == "CAM1")
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    assert not d.events("upload.bug")
    led = Ledger(config_mod.load(cfg_path).ledger_path)
    try:
        assert {r.state for r in led.recordings(serial="CAM1")} == {RecState.WIPED}
    finally:
        led.close()


def test_a_next_attempt_hours_ahead_does_not_strand_a_recording_at_the_next_start(make_cfg, camera, tmp_path):
    """The ledger's next_attempt_at is wall-clock time, written before the clock stepped back
    (or by a clock that ran fast): hours ahead, far past the backoff cap. The next start
    retries the recording at once; nothing waits for that time to come."""
    cfg = make_cfg()
    down = ScriptedStore(tmp_path / "store", always=lambda: TransientStoreError("store down"))
    st = Station(cfg, policy=RetryPolicy.immediate(1), backend=down, patient=False)
    try:
        st.start()
        st.run_session(CameraDocked("BWC0001", "generic", camera))
        failed = st.ledger.recordings(serial="BWC0001", states=[RecState.FAILED])
        assert failed and all(r.spool_path for r in failed)
        with st.ledger.tx():
            st.ledger._db.execute("UPDATE recordings SET next_attempt_at=?", (time.time() + 3 * 3600,))
    finally:
        st.close()
    st = Station(cfg, policy=RetryPolicy.immediate(1), patient=False)
    try:
        st.start()
        assert st.uploader.wait_idle([r.id for r in failed], timeout=30)
        assert {st.ledger.get(r.id).state for r in failed} == {RecState.VERIFIED}
    finally:
        st.close()


def test_uptime_is_on_the_monotonic_clock_when_the_wall_clock_steps_back(tmp_path, make_cfg):
    """The wall clock steps back two hours after the daemon started: its uptime in
    ``dockd status`` stays what it was, never negative."""
    from types import SimpleNamespace

    from dockd import control

    server = control.ControlServer(make_cfg(), SimpleNamespace())
    server.started_at = time.time() + 2 * 3600        # the start, as the wall clock said then
    uptime = time.monotonic() - server._started_mono
    from dockd.status import LiveView, build

    live = LiveView(pid=1, started_at=server.started_at, uptime_seconds=uptime)
    snap = build(make_cfg(), None, live)
    assert 0 <= snap["daemon"]["uptime_seconds"] < 60
