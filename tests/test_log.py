"""Logs for operators: catalogued names, object first, never a secret."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from dockd import log

SRC = Path(__file__).resolve().parents[1] / "dockd"
EVENT_CALL = re.compile(
    r"""(?:emit\([^,()]+,\s*|\.(?:debug|info|warning|error|critical|exception)\()\s*f?"([a-z_]+\.[a-z_.{}]+)\"""")


def test_every_event_the_code_logs_is_catalogued():
    used = set()
    for p in SRC.rglob("*.py"):
        for m in EVENT_CALL.finditer(p.read_text()):
            used.add(m.group(1))
    dynamic = {u for u in used if "{" in u}
    assert dynamic <= {"session.{phase.value}"}, dynamic
    missing = sorted(u for u in used - dynamic if u not in log.CATALOGUE)
    assert not missing, f"log events used but not catalogued: {missing}"
    for phase in ("scanning", "spooling", "uploading", "wiping", "done", "interrupted", "attention"):
        assert f"session.{phase}" in log.CATALOGUE


def test_catalogue_levels_are_real_levels():
    for name, (level, meaning, _fields) in log.CATALOGUE.items():
        assert level in ("debug", "info", "warning", "error", "critical"), name
        assert meaning, name


def test_json_line_names_camera_first_and_redacts_secrets():
    buf = io.StringIO()
    log.configure("debug", "json", stream=buf)
    try:
        lg = log.get().bind(camera="CAM1", recording="DCIM/A.MP4", sha256="ab" * 32)
        log.emit(lg, "upload.retry", attempt=2, wait=1.5, error="503", aws_secret_access_key="hunter2",
                 note="AGE-SECRET-KEY-1QQQ")
    finally:
        log.configure("warning", "json")
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    keys = list(line)
    assert keys[:7] == ["ts", "level", "event", "msgid", "camera", "recording", "sha256"]
    assert line["event"] == line["msgid"] == "upload.retry" and line["level"] == "warning"
    assert "hunter2" not in buf.getvalue() and "AGE-SECRET-KEY-1QQQ" not in buf.getvalue()


def test_readme_event_catalogue_is_current():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "gen_docs.py"
    spec = importlib.util.spec_from_file_location("gen_docs", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.README.read_text()
    assert gen.render(text) == text, "README event table is stale: run python scripts/gen_docs.py"
