"""The shipped Prometheus rules and Grafana dashboard, against promtool and a real dockd scrape.

Every metric the rules and the dashboard query must be one a running ``dockd run``
declares: a renamed metric would otherwise leave an alert that can never fire.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from notify import REPO, DaemonProcess, NotifySocket, write_config
from prom import MONITORING, exported, free_port, metric_names, run_promtool

RULES = MONITORING / "dockd.rules.yml"
RULE_TESTS = REPO / "tests" / "prometheus" / "dockd.rules.test.yml"
DASHBOARD = MONITORING / "dockd.dashboard.json"
# Prometheus's own series for a scrape job (a dead listener has no dockd series left)
NOT_DOCKD = {"up"}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory, identity) -> str:
    """The /metrics text of a real ``dockd run`` after one camera's whole session."""
    import requests

    root = tmp_path_factory.mktemp("scraped")
    port = free_port()
    cfg_path = write_config(root, str(identity.public()),
                            f'[spool]\nmin_free = 0\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    shutil.copytree(REPO / "fixtures" / "cameras" / "BWC0001", root / "inbox" / "BWC0001")
    sock = NotifySocket(root / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        sock.wait_for(lambda m: m.get("READY") == "1", 30)
        d.wait_event("session.done", 60)
        r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        r.raise_for_status()
        assert d.terminate()[0] == 0
    finally:
        d.kill()
        sock.close()
    return r.text


def test_metric_names_are_read_out_of_promql():
    assert metric_names('sum by (le) (rate(a_bucket{x="y",i=~"$instance"}[5m])) / on(instance) b') == \
        {"a_bucket", "b"}
    assert metric_names("time() - min(c{instance=~\"${instance}\"}) > 1e3 or vector(0)") == {"c"}
    assert metric_names("label_values(dockd_up, instance)") == {"dockd_up"}
    assert metric_names("x == 0 or y unless z offset 5m") == {"x", "y", "z"}


def _rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def test_rules_pass_promtool_check_and_their_unit_tests():
    check = run_promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    unit = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_alert_the_fleet_needs_is_there_and_tested():
    alerts = set(_rule_exprs())
    assert alerts == {"DockdDown", "DockdStoreUnreachable", "DockdUnverifiedRecordingOld",
                      "DockdSpoolNearlyFull", "DockdBayAttention", "DockdUploadsPausedCredentials"}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == alerts                     # each one is seen firing, not only quiet


def test_rules_name_only_metrics_dockd_exports(scrape):
    names = exported(scrape)
    for alert, expr in _rule_exprs().items():
        used = metric_names(expr)
        assert used - NOT_DOCKD, alert
        assert used - NOT_DOCKD <= names, (alert, sorted(used - NOT_DOCKD - names))


def _queries(node) -> list[str]:
    """Every query string in a Grafana dashboard: panel targets (rows too) and variables."""
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            out.append(node["expr"])
        q = node.get("query")
        if node.get("type") == "query":
            out.append(q["query"] if isinstance(q, dict) else q)
        for v in node.values():
            out += _queries(v)
    elif isinstance(node, list):
        for v in node:
            out += _queries(v)
    return out


def test_dashboard_queries_name_only_metrics_dockd_exports(scrape):
    dash = json.loads(DASHBOARD.read_text())
    names = exported(scrape)
    queries = _queries(dash)
    assert len(queries) >= len(dash["panels"])
    for p in dash["panels"]:
        assert p.get("targets"), p["title"]
    used: set[str] = set()
    for q in queries:
        found = metric_names(q)
        assert found, q
        assert found <= names, (q, sorted(found - names))
        used |= found
    # the counters a fleet watches are on it
    for n in ("dockd_spooled_bytes_total", "dockd_uploaded_bytes_total", "dockd_wiped_bytes_total",
              "dockd_session_duration_seconds_bucket", "dockd_build_info",
              "dockd_oldest_unverified_recording_timestamp_seconds"):
        assert n in used, n
