"""The shipped unit passes ``systemd-analyze verify`` and its exposure stays <= 4.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "dockd.service"
MAX_EXPOSURE = 4.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (Debian package: systemd)")


def _unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's dockd (verify checks it exists)."""
    dockd = Path(sys.executable).with_name("dockd")
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/dockd " in text
    out = tmp_path / "dockd.service"
    out.write_text(text.replace("/usr/bin/dockd", str(dockd)))
    return out


def test_unit_verifies(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(_unit_with_real_binary(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "dockd.service" not in r.stderr, r.stderr


def test_exposure_is_at_most_4_5(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        f"--threshold={MAX_EXPOSURE * 10:.0f}", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for dockd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stderr


def test_unit_has_the_service_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "TimeoutStopSec=",
                 "StateDirectory=dockd", "RuntimeDirectory=dockd",
                 "ReadWritePaths=-/var/lib/prometheus/node-exporter",
                 "LoadCredential=store:/etc/dockd/credentials"):
        assert line in text, line
    # dockd only reads /etc/dockd: ConfigurationDirectory= would make it writable in the sandbox
    assert "\nConfigurationDirectory=" not in text
    assert "g dockd" in (REPO / "systemd" / "dockd.sysusers").read_text()
    assert "/etc/dockd/credentials 0700" in (REPO / "systemd" / "dockd.tmpfiles").read_text()
