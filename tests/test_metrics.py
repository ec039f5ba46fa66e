"""Metrics: Prometheus text exposition, bounded labels, atomic textfile, localhost HTTP."""

from __future__ import annotations

import re
import socket
import urllib.request

from dockd import status
from dockd.device.events import CameraDocked
from dockd.engine import Station
from dockd.errors import PermanentStoreError
from dockd.metrics import FAILURE_EVENTS, MetricsExporter, render, write_atomic
from dockd.store.retry import RetryPolicy

from fakes import ScriptedStore

LINE = re.compile(r'^([a-z_]+)(\{([a-z_]+="[^"\\\n]*")(,[a-z_]+="[^"\\\n]*")*\})? (-?[0-9.e+]+|NaN)$')


def parse(text: str) -> dict[str, float]:
    """Strict enough: every sample line is name{labels} value; every family has HELP and TYPE."""
    out: dict[str, float] = {}
    helped, typed = set(), set()
    for ln in text.splitlines():
        if ln.startswith("# HELP "):
            helped.add(ln.split()[2])
        elif ln.startswith("# TYPE "):
            typed.add(ln.split()[2])
        else:
            m = LINE.match(ln)
            assert m, f"bad exposition line: {ln!r}"
            assert m.group(1) in helped and m.group(1) in typed
            out[ln.rsplit(" ", 1)[0]] = float(m.group(5))
    return out


def _station_after_failures(make_cfg, camera, tmp_path):
    store = ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("bucket gone"))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(1), backend=store, patient=False)
    st.start()
    st.run_session(CameraDocked("BWC0001", "generic", camera))
    return st


def test_exposition_from_the_ledger(make_cfg, camera, tmp_path):
    st = _station_after_failures(make_cfg, camera, tmp_path)
    try:
        snap = status.build(st.cfg, st.ledger)
        ex = MetricsExporter(st.cfg, lambda: snap, st.ledger.counts, lambda: 0.0)
        text = ex.text()
        m = parse(text)
    finally:
        st.close()
    assert m["dockd_up"] == 1
    assert m['dockd_recordings{state="failed"}'] == 6
    assert m['dockd_recordings{state="wiped"}'] == 0
    assert m['dockd_failures_total{reason="upload.failed"}'] == 6
    assert m['dockd_failures_total{reason="session.attention"}'] == 1
    assert m["dockd_upload_queue_recordings"] == 6 and m["dockd_upload_queue_bytes"] > 0
    assert m["dockd_spool_free_bytes"] > 0
    # labels come from closed sets only: no file names, no error text
    labels = {k for k in m if "{" in k}
    allowed = {f'dockd_failures_total{{reason="{r}"}}' for r in FAILURE_EVENTS}
    for k in labels - allowed:
        assert re.fullmatch(r'dockd_recording(s|_bytes)\{state="[a-z]+"\}', k), k
    assert "bucket gone" not in text and "VID_" not in text


def test_failure_counters_are_monotonic_and_incremental(make_cfg, camera, tmp_path):
    st = _station_after_failures(make_cfg, camera, tmp_path)
    try:
        ex = MetricsExporter(st.cfg, lambda: status.build(st.cfg, st.ledger), st.ledger.counts, lambda: 0.0)
        first = ex.failures.refresh()
        st.ledger.append_event("upload.failed", serial="BWC0001")
        second = ex.failures.refresh()
    finally:
        st.close()
    assert second["upload.failed"] == first["upload.failed"] + 1
    assert ex.failures.refresh() == second


def test_textfile_is_replaced_atomically(tmp_path, make_cfg):
    from dockd.config import MetricsConfig

    path = tmp_path / "textfile" / "dockd.prom"
    cfg = make_cfg(metrics=MetricsConfig(textfile=path, interval=60))
    snap = status.build(cfg, None)
    clock = [0.0]
    ex = MetricsExporter(cfg, lambda: snap, lambda: {}, lambda: clock[0])
    ex.start()
    first = path.stat().st_ino
    assert parse(path.read_text())["dockd_up"] == 1
    ex.tick()                                    # not due yet: untouched
    assert path.stat().st_ino == first
    clock[0] = 61.0
    ex.tick()
    assert path.stat().st_ino != first           # a new file renamed over the old one
    ex.stop()
    assert parse(path.read_text())["dockd_up"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["dockd.prom"]   # no temp files left
    write_atomic(path, "x 1\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_http_listener_serves_metrics(tmp_path, make_cfg):
    from dockd.config import MetricsConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(metrics=MetricsConfig(listen=f"127.0.0.1:{port}"))
    snap = status.build(cfg, None)
    ex = MetricsExporter(cfg, lambda: snap, lambda: {}, lambda: 0.0)
    ex.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = parse(r.read().decode())
        assert m["dockd_cameras_docked"] == 0
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        ex.stop()


def test_unknown_store_reachability_is_absent_not_zero():
    from dockd.config import Config

    snap = status.build(Config(), None)
    text = render(snap, {}, {})
    assert "\ndockd_store_reachable " not in text
    snap["store"]["reachable"] = False
    assert parse(render(snap, {}, {}))["dockd_store_reachable"] == 0


def test_textfile_that_cannot_be_written_is_logged_once(tmp_path, make_cfg):
    """A path the sandbox hides (ProtectSystem=strict) fails every tick: the daemon
    goes on, and says so once, naming the path."""
    from structlog.testing import capture_logs

    from dockd.config import MetricsConfig

    (tmp_path / "not-a-dir").write_text("")
    path = tmp_path / "not-a-dir" / "dockd.prom"
    cfg = make_cfg(metrics=MetricsConfig(textfile=path, interval=15))
    snap = status.build(cfg, None)
    clock = [0.0]
    ex = MetricsExporter(cfg, lambda: snap, lambda: {}, lambda: clock[0])
    with capture_logs() as logs:
        ex.start()
        for _ in range(3):
            clock[0] += 16
            ex.tick()
    failed = [e for e in logs if e["event"] == "metrics.write_failed"]
    assert ex.write_errors == 4
    assert len(failed) == 1 and failed[0]["path"] == str(path) and failed[0]["error"]
