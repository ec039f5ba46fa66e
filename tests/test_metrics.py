"""Metrics: Prometheus text exposition, bounded labels, atomic textfile, localhost HTTP."""

from __future__ import annotations

import re
import socket
import urllib.request

import pytest

from dockd import status
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.errors import PermanentStoreError
from dockd.metrics import (
    DURATION_BUCKETS,
    FAILURE_EVENTS,
    SESSION_OUTCOMES,
    MetricsExporter,
    Tally,
    build_info,
    render,
    write_atomic,
)
from dockd.model import Phase, RecState
from dockd.store.retry import RetryPolicy

from fakes import ScriptedStore
from prom import free_port

LINE = re.compile(r'^([a-z_]+)(\{([a-z_]+="[^"\\\n]*")(,[a-z_]+="[^"\\\n]*")*\})? (-?[0-9.e+-]+|NaN)$')


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
            family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            family = family if family in typed else m.group(1)
            assert family in helped and family in typed
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
    closed = {"state": {s.value for s in RecState}, "reason": set(FAILURE_EVENTS),
              "outcome": set(SESSION_OUTCOMES), "phase": {p.value for p in Phase},
              "le": {repr(b) for b in DURATION_BUCKETS} | {"+Inf"},
              "version": {build_info()["version"]}, "python": {build_info()["python"]}}
    for k in m:
        for name, value in re.findall(r'([a-z_]+)="([^"]*)"', k):
            assert value in closed[name], k
    assert "bucket gone" not in text and "VID_" not in text


def test_failure_counters_are_monotonic_and_incremental(make_cfg, camera, tmp_path):
    st = _station_after_failures(make_cfg, camera, tmp_path)
    try:
        ex = MetricsExporter(st.cfg, lambda: status.build(st.cfg, st.ledger), st.ledger.counts, lambda: 0.0)
        first = ex.tally.refresh().failures
        st.ledger.append_event("upload.failed", serial="BWC0001")
        second = ex.tally.refresh().failures
    finally:
        st.close()
    assert second["upload.failed"] == first["upload.failed"] + 1
    assert ex.tally.refresh().failures == second


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
    text = render(snap, {}, Tally())
    assert "\ndockd_store_reachable " not in text
    snap["store"]["reachable"] = False
    assert parse(render(snap, {}, Tally()))["dockd_store_reachable"] == 0


# -- counters, against the real daemon ------------------------------------------

def _daemon_scrape(port: int, **auth) -> str:
    import requests

    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10, **auth)
    r.raise_for_status()
    return r.text


def test_a_running_daemon_passes_promtool_and_its_counters_survive_a_restart(tmp_path, identity):
    import shutil

    from notify import REPO, DaemonProcess, NotifySocket, write_config
    from prom import run_promtool, samples

    port = free_port()
    cfg_path = write_config(tmp_path, str(identity.public()),
                            f'[spool]\nmin_free = 0\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    fixture = REPO / "fixtures" / "cameras" / "BWC0001"
    shutil.copytree(fixture, tmp_path / "inbox" / "BWC0001")

    def run(until) -> str:
        sock = NotifySocket(tmp_path / "notify.sock")
        d = DaemonProcess(cfg_path, sock)
        try:
            sock.wait_for(lambda m: m.get("READY") == "1", 30)
            until(d)
            text = _daemon_scrape(port)
            rc, _ = d.terminate()
        finally:
            d.kill()
            sock.close()
            (tmp_path / "notify.sock").unlink(missing_ok=True)
        assert rc == 0
        return text

    done: list[dict] = []
    first = run(lambda d: done.extend(d.wait_event("session.done", 60)))
    plain = done[0]["bytes"]
    lint = run_promtool("check", "metrics", stdin=first)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    m = samples(first)
    for step in ("spooled", "uploaded", "wiped"):
        assert m[f"dockd_{step}_recordings_total"] == 6
        assert m[f"dockd_{step}_bytes_total"] == plain
    assert m['dockd_session_duration_seconds_count{outcome="done"}'] == 1
    assert m['dockd_session_duration_seconds_bucket{outcome="done",le="+Inf"}'] == 1
    assert m['dockd_bays{phase="done"}'] == 1
    assert "dockd_oldest_unverified_recording_timestamp_seconds" not in m     # all proven
    assert any(k.startswith("dockd_build_info{") and v == 1 for k, v in m.items())

    # a restart with the camera gone: the first scrape shows the same totals, not 0, not double
    shutil.rmtree(tmp_path / "inbox" / "BWC0001")
    again = samples(run(lambda d: None))
    counters = [k for k in m if k.endswith("_total") or k.startswith("dockd_session_duration_seconds")]
    assert counters and {k: again[k] for k in counters} == {k: m[k] for k in counters}
    assert again["dockd_start_time_seconds"] > m["dockd_start_time_seconds"]


# -- beyond loopback: TLS and basic auth (exporter-toolkit web config) -----------

def test_tls_and_basic_auth_with_a_real_client(tmp_path, make_cfg):
    import requests

    from dockd.config import MetricsConfig
    from prom import web_config

    web = web_config(tmp_path / "web", {"prometheus": "correct horse", "grafana": "battery staple"})
    port = free_port()
    cfg = make_cfg(metrics=MetricsConfig(listen=f"127.0.0.1:{port}", web_config=web))
    snap = status.build(cfg, None)
    ex = MetricsExporter(cfg, lambda: snap, lambda: {}, lambda: 0.0)
    ex.start()
    url = f"https://127.0.0.1:{port}/metrics"
    ca = str(tmp_path / "web" / "ca.pem")
    try:
        for _ in range(2):          # the second time from the remembered right password
            r = requests.get(url, verify=ca, auth=("prometheus", "correct horse"), timeout=10)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert parse(r.text)["dockd_up"] == 1
        assert requests.get(url, verify=ca, auth=("grafana", "battery staple"), timeout=10).status_code == 200
        for auth in (("prometheus", "wrong"), ("prometheus", "battery staple"), ("nobody", "correct horse"),
                     ("prometheus", ""), None):
            r = requests.get(url, verify=ca, auth=auth, timeout=10)
            assert r.status_code == 401, auth
            assert r.headers["WWW-Authenticate"] == 'Basic realm="dockd"' and "dockd_" not in r.text
        for header in ("Basic !!!", "Basic " + "cHJvbWV0aGV1cw==", "Bearer x", "Basic"):
            r = requests.get(url, verify=ca, headers={"Authorization": header}, timeout=10)
            assert r.status_code == 401, header
        r = requests.get(url.replace("/metrics", "/other"), verify=ca, timeout=10)
        assert r.status_code == 401                     # who may ask comes before what is asked
        r = requests.get(url.replace("/metrics", "/other"), verify=ca, auth=("prometheus", "correct horse"),
                         timeout=10)
        assert r.status_code == 404
        with pytest.raises(requests.exceptions.SSLError):    # a CA the client does not know
            requests.get(url, auth=("prometheus", "correct horse"), timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):   # plain http gets nothing
            requests.get(url.replace("https:", "http:"), auth=("prometheus", "correct horse"), timeout=10)
    finally:
        ex.stop()


def _config_error(tmp_path, metrics: str) -> str:
    from dockd.config import parse as parse_config
    from dockd.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(f"[metrics]\n{metrics}\n")
    return str(err.value)


def test_off_loopback_is_refused_without_tls_and_auth(tmp_path):
    from dockd.config import parse as parse_config
    from prom import web_config

    for host in ("0.0.0.0", "[::]", "", "192.0.2.10", "dock-01.example"):
        msg = _config_error(tmp_path, f'listen = "{host}:9708"')
        assert msg.startswith("config error: metrics.listen: ") and "off loopback" in msg, msg
    tls_only = web_config(tmp_path / "a", {})
    auth_only = web_config(tmp_path / "b", {"prometheus": "pw"}, tls=False)
    for web in (tls_only, auth_only):
        msg = _config_error(tmp_path, f'listen = "0.0.0.0:9708"\nweb_config = "{web}"')
        assert msg.startswith("config error: metrics.listen: "), msg
    both = web_config(tmp_path / "c", {"prometheus": "pw"})
    cfg = parse_config(f'[metrics]\nlisten = "0.0.0.0:9708"\nweb_config = "{both}"\n')
    assert cfg.metrics.web_config == both
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "[::1]"):       # loopback needs neither
        assert parse_config(f'[metrics]\nlisten = "{host}:9708"\n').metrics.listen == f"{host}:9708"


def test_a_web_config_dockd_cannot_honour_is_refused_by_name(tmp_path):
    from prom import web_config

    cases = {
        "http_server_config:\n  http2: false\n": "metrics.web_config: http_server_config: not supported",
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_ca_file: ca.pem\n":
            "metrics.web_config: tls_server_config.client_ca_file: not supported",
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: TLS11\n":
            "metrics.web_config: tls_server_config.min_version",
        "tls_server_config:\n  cert_file: a.crt\n": "metrics.web_config: tls_server_config.key_file: required",
        "basic_auth_users:\n  prometheus: plaintext\n": "metrics.web_config: basic_auth_users.prometheus: not a bcrypt",
        "basic_auth_users: [prometheus]\n": "metrics.web_config: basic_auth_users: expected a mapping",
        "- a\n- b\n": "metrics.web_config: ",
        "tls_server_config: {\n": "not valid YAML",
    }
    for i, (text, want) in enumerate(cases.items()):
        path = tmp_path / f"web{i}.yml"
        path.write_text(text)
        msg = _config_error(tmp_path, f'listen = "127.0.0.1:9708"\nweb_config = "{path}"')
        assert want in msg and "\n" not in msg, (text, msg)
    web = web_config(tmp_path / "d", {"prometheus": "pw"})
    msg = _config_error(tmp_path, f'textfile = "{tmp_path}/m.prom"\nweb_config = "{web}"')
    assert msg.startswith("config error: metrics.web_config: applies to metrics.listen only")


def test_dockd_run_refuses_an_unprotected_or_unusable_endpoint(tmp_path, identity):
    import subprocess

    from notify import DOCKD, write_config
    from prom import web_config

    web = web_config(tmp_path / "web", {"prometheus": "pw"})
    (tmp_path / "web" / "server.key").write_text("not a key\n")
    port = free_port()
    for metrics, key in ((f'listen = "0.0.0.0:{port}"', "metrics.listen"),
                         (f'listen = "127.0.0.1:{port}"\nweb_config = "{web}"', "metrics.web_config")):
        cfg_path = write_config(tmp_path, str(identity.public()), f"[metrics]\n{metrics}\n")
        out = subprocess.run(DOCKD + ["--config", str(cfg_path), "run"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"dockd: config error: {key}: ") and out.stderr.count("\n") == 1, out.stderr
        assert "daemon.started" not in out.stdout


def test_oldest_unverified_is_timed_from_when_it_was_found_not_its_last_retry(make_cfg, camera, tmp_path):
    import sqlite3
    import time

    st = _station_after_failures(make_cfg, camera, tmp_path)
    try:
        db = sqlite3.connect(st.cfg.ledger_path)
        with db:        # found two days ago; every retry since moved updated_at, as a failing store does
            db.execute("UPDATE recordings SET created_at = created_at - 172800, updated_at = ?", (time.time(),))
        found = db.execute("SELECT MIN(created_at) FROM recordings").fetchone()[0]
        db.close()
        snap = status.build(st.cfg, st.ledger)
        m = parse(MetricsExporter(st.cfg, lambda: snap, st.ledger.counts, lambda: 0.0).text())
    finally:
        st.close()
    assert snap["queue"]["oldest_age_seconds"] < 60            # the queue's age restarts at each retry
    assert m["dockd_oldest_unverified_recording_timestamp_seconds"] == pytest.approx(found)
    assert time.time() - found > 86400                          # so the day-old alert can fire


def test_a_clock_stepped_back_does_not_make_a_negative_duration():
    t = Tally()
    t.observe("done", -3600.0)
    t.observe("done", 45.0)
    from dockd.config import Config

    text = render(status.build(Config(), None), {}, t)
    m = parse(text)
    assert m['dockd_session_duration_seconds_sum{outcome="done"}'] == 45.0
    assert m['dockd_session_duration_seconds_bucket{outcome="done",le="30.0"}'] == 1
    assert m['dockd_session_duration_seconds_bucket{outcome="done",le="60.0"}'] == 2
    assert m['dockd_session_duration_seconds_count{outcome="done"}'] == 2


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
