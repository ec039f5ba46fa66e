"""Hooks: run on session state changes, never block the pipeline, failures logged."""

from __future__ import annotations

import json
import sys
import time

from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.hooks import HookRunner
from dockd.store.retry import RetryPolicy

RECORDER = """
import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("DOCKD_")} |
                       {"_has_secret": "SECRET_TOKEN" in os.environ}) + "\\n")
"""


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_session_changes_run_the_hook_with_details(make_cfg, camera, tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "must-not-leak")
    script, out = tmp_path / "rec.py", tmp_path / "hook.jsonl"
    script.write_text(RECORDER)
    hooks = HookRunner([sys.executable, str(script), str(out)], 10, "dock-01")
    hooks.start()
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    st.on_change = hooks.on_change
    try:
        st.start()
        outcome = st.run_session(CameraDocked("BWC0001", "generic", camera, bay="1-1.4"))
    finally:
        st.close()
    assert outcome.ok
    _wait(lambda: out.exists() and len(out.read_text().splitlines()) >= 2)
    hooks.stop()
    calls = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["DOCKD_EVENT"] for c in calls] == ["docked", "safe-to-undock"]
    first, last = calls
    assert first["DOCKD_CAMERA"] == "BWC0001" and first["DOCKD_BAY"] == "1-1.4"
    assert first["DOCKD_SAFE_TO_UNDOCK"] == "0" and first["DOCKD_PHASE"] == "docked"
    assert last["DOCKD_PHASE"] == "done" and last["DOCKD_SAFE_TO_UNDOCK"] == "1"
    assert last["DOCKD_SESSION"] == first["DOCKD_SESSION"] == str(outcome.session_id)
    assert not any(c["_has_secret"] for c in calls)      # the daemon's environment stays private


class _Live:
    serial, bay, phase, session_id, profile, last_error = "CAM9", "1-2", "done", 3, "generic", None


def test_a_slow_hook_never_blocks_and_is_killed(tmp_path, logs):
    hooks = HookRunner(["sleep", "30"], 0.3, "dock-01")
    hooks.start()
    t0 = time.monotonic()
    for _ in range(3):
        hooks.on_change(_Live(), "done")
    assert time.monotonic() - t0 < 0.1                   # fire() returns at once
    _wait(lambda: hooks.failed == 3, timeout=10)
    hooks.stop()
    failed = [e for e in logs() if e["event"] == "hook.failed"]
    assert len(failed) == 3 and all("timed out" in e["error"] for e in failed)
    assert failed[0]["camera"] == "CAM9" and failed[0]["msgid"] == "hook.failed"


def test_failing_and_missing_commands_are_logged(tmp_path, logs):
    for argv, want in ((["false"], "exit status 1"), ([str(tmp_path / "nope")], "cannot run")):
        hooks = HookRunner(argv, 5, "dock-01")
        hooks.start()
        hooks.on_change(_Live(), "attention")
        _wait(lambda: hooks.failed == 1)
        hooks.stop()
        assert any(want in e["error"] for e in logs() if e["event"] == "hook.failed")


def test_phases_without_a_hook_event_and_no_command_do_nothing(tmp_path):
    hooks = HookRunner(["true"], 5, "dock-01")
    hooks.start()
    for what in ("scanning", "spooling", "uploading", "wiping"):
        hooks.on_change(_Live(), what)
    hooks.stop()
    assert hooks.ran == 0
    none = HookRunner(None, 5, "dock-01")
    none.on_change(_Live(), "done")
    assert none.ran == 0 and none.failed == 0
