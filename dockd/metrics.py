"""Prometheus metrics: text exposition 0.0.4, as a textfile or on a localhost port.

``metrics.textfile``: a file for node_exporter's textfile collector,
rewritten every ``metrics.interval`` seconds atomically (temp file in the same
directory, fsync, rename), so the collector never reads half a file.
``metrics.listen``: ``127.0.0.1:PORT`` serves ``GET /metrics``.

Everything is derived from the status snapshot and the ledger, the same
sources ``dockd status`` reads, so the three never disagree. Label values come
from closed sets only (recording states, catalogued event names): never free
text, never a file name, so the series count is bounded.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from . import log
from .model import RecState

# Catalogued events that mean "something went wrong"; counted from the ledger's
# append-only event chain, so the counters are monotonic across restarts.
FAILURE_EVENTS = (
    "recording.read_failed", "recording.changed", "recording.spool_corrupt", "recording.attention",
    "upload.failed", "upload.integrity_failed", "wipe.refused", "wipe.failed", "manifest.failed",
    "session.interrupted", "session.attention", "session.camera_failed",
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FailureCounter:
    """Counts failure events in the ledger incrementally (by event id), read-only."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path
        self.last_id = 0
        self.counts = {name: 0 for name in FAILURE_EVENTS}
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, int]:
        with self._lock:
            if self.path.exists():
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                try:
                    marks = ",".join("?" * len(FAILURE_EVENTS))
                    rows = db.execute(
                        f"SELECT event, COUNT(*), MAX(id) FROM events WHERE id > ? AND event IN ({marks})"
                        " GROUP BY event", (self.last_id, *FAILURE_EVENTS)).fetchall()
                    top = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
                except sqlite3.Error:
                    rows, top = [], self.last_id
                finally:
                    db.close()
                for name, n, _mx in rows:
                    self.counts[name] += n
                self.last_id = max(self.last_id, top)
            return dict(self.counts)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str,
               samples: list[tuple[dict[str, str], float | int | None]]) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render(snap: dict[str, Any], counts: dict[str, tuple[int, int]], failures: dict[str, int],
           up: bool = True) -> str:
    """Exposition text from a status snapshot, ledger counts by state and failure counts."""
    o = _Out()
    o.metric("dockd_up", "gauge", "1 while the daemon runs; 0 written once at a clean stop.",
             [({}, 1 if up else 0)])
    states = [s.value for s in RecState]
    o.metric("dockd_recordings", "gauge", "Recordings in the ledger by state.",
             [({"state": s}, counts.get(s, (0, 0))[0]) for s in states])
    o.metric("dockd_recording_bytes", "gauge", "Plaintext bytes of the recordings in the ledger by state.",
             [({"state": s}, counts.get(s, (0, 0))[1]) for s in states])
    o.metric("dockd_failures_total", "counter",
             "Failure events in the ledger by catalogued event id (the reason).",
             [({"reason": r}, failures.get(r, 0)) for r in FAILURE_EVENTS])
    q = snap["queue"]
    o.metric("dockd_upload_queue_recordings", "gauge", "Spooled recordings not yet verified.",
             [({}, q["count"])])
    o.metric("dockd_upload_queue_bytes", "gauge", "Ciphertext bytes waiting in the upload queue.",
             [({}, q["bytes"])])
    o.metric("dockd_upload_queue_oldest_age_seconds", "gauge",
             "Age of the oldest queued recording (0 when the queue is empty).",
             [({}, q["oldest_age_seconds"] or 0.0)])
    o.metric("dockd_uploads_active", "gauge", "Uploads in flight.", [({}, q["active"])])
    o.metric("dockd_upload_paused", "gauge", "1 while the store refuses our credentials.",
             [({}, bool(q["paused"]))])
    bays = snap["bays"]
    o.metric("dockd_cameras_docked", "gauge", "Cameras docked.", [({}, len(bays))])
    o.metric("dockd_cameras_busy", "gauge", "Docked cameras not yet safe to undock.",
             [({}, sum(1 for b in bays if not b["safe_to_undock"]))])
    st = snap["store"]
    o.metric("dockd_store_reachable", "gauge",
             "1 if the last store operation succeeded, 0 if it failed; absent until known.",
             [({}, None if st["reachable"] is None else bool(st["reachable"]))])
    o.metric("dockd_last_verified_upload_timestamp_seconds", "gauge",
             "Unix time of the last recording proven in the store.", [({}, st["last_success"])])
    sp = snap["spool"]
    o.metric("dockd_spool_free_bytes", "gauge", "Free bytes on the spool filesystem.",
             [({}, sp["free_bytes"])])
    o.metric("dockd_spool_used_bytes", "gauge", "Bytes of ciphertext in the spool.", [({}, sp["used_bytes"])])
    o.metric("dockd_spool_min_free_bytes", "gauge", "Spooling pauses below this many free bytes.",
             [({}, sp["min_free_bytes"])])
    o.metric("dockd_spool_max_bytes", "gauge", "Spool size cap (absent: none).", [({}, sp["max_bytes"])])
    o.metric("dockd_spool_paused", "gauge", "1 while spooling waits for uploads to free space.",
             [({}, sp["paused"])])
    return o.text()


def write_atomic(path: Path, text: str) -> None:
    """Temp file beside ``path`` (not ``*.prom``, so the collector skips it), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class MetricsExporter:
    """Started with the daemon when ``metrics.textfile`` or ``metrics.listen`` is set."""

    def __init__(self, cfg: Any, snapshot: Callable[[], dict[str, Any]],
                 counts: Callable[[], dict[str, tuple[int, int]]], clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.snapshot = snapshot
        self.counts = counts
        self.clock = clock
        self.failures = FailureCounter(cfg.ledger_path)
        self._next = 0.0
        self._http: ThreadingHTTPServer | None = None
        self.write_errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.metrics.textfile or self.cfg.metrics.listen)

    def text(self, up: bool = True) -> str:
        return render(self.snapshot(), self.counts(), self.failures.refresh(), up=up)

    def start(self) -> None:
        listen = self.cfg.metrics.listen
        if listen:
            host, port = listen.rsplit(":", 1)
            host = host.strip("[]")
            exporter = self

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                    if self.path.split("?", 1)[0] != "/metrics":
                        self.send_error(404)
                        return
                    body = exporter.text().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *_a: Any) -> None:   # our stdout is JSON lines only
                    pass

            cls = ThreadingHTTPServer
            if ":" in host:
                import socket

                class V6(ThreadingHTTPServer):
                    address_family = socket.AF_INET6
                cls = V6
            self._http = cls((host, int(port)), Handler)
            self._http.daemon_threads = True
            threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()
        self.tick()

    def tick(self) -> None:
        path = self.cfg.metrics.textfile
        if not path or self.clock() < self._next:
            return
        self._next = self.clock() + self.cfg.metrics.interval
        try:
            write_atomic(Path(path), self.text())
        except OSError as exc:
            self.write_errors += 1      # a full or read-only disk must not stop the daemon
            if self.write_errors == 1:  # once: a sandbox that hides the path fails every tick
                log.emit(log.get(), "metrics.write_failed", path=str(path), error=str(exc))

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.cfg.metrics.textfile:
            try:
                write_atomic(Path(self.cfg.metrics.textfile), self.text(up=False))
            except OSError:
                pass
