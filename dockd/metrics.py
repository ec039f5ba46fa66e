"""Prometheus metrics: text exposition 0.0.4, as a textfile or on a localhost port.

``metrics.textfile``: a file for node_exporter's textfile collector,
rewritten every ``metrics.interval`` seconds atomically (temp file in the same
directory, fsync, rename), so the collector never reads half a file.
``metrics.listen``: ``HOST:PORT`` serves ``GET /metrics``; off loopback only with
TLS and basic auth from ``metrics.web_config`` (webconfig.py), checked at load.

Everything is derived from the status snapshot and the ledger, the same
sources ``dockd status`` reads, so the three never disagree. Counters are
counted from the ledger's append-only event chain (``LedgerTally``), so they
hold across restarts. Label values come
from closed sets only (recording states, catalogued event names): never free
text, never a file name, so the series count is bounded.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.request import pathname2url

from . import log
from .errors import ConfigError
from .model import Phase, RecState

# Catalogued events that mean "something went wrong"; counted from the ledger's
# append-only event chain, so the counters are monotonic across restarts.
FAILURE_EVENTS = (
    "recording.read_failed", "recording.changed", "recording.spool_corrupt", "recording.attention",
    "upload.failed", "upload.integrity_failed", "wipe.refused", "wipe.failed", "manifest.failed",
    "session.interrupted", "session.attention", "session.camera_failed",
)

# The ledger event that marks each step of a recording's way, and the counter it feeds:
# spooled (durable encrypted copy), uploaded (proven in the store), wiped (off the camera).
FLOW_EVENTS = {"recording.spooled": "spooled", "upload.verified": "uploaded", "wipe.done": "wiped"}

# A session ends in one of these; its duration is from dock to that event.
SESSION_OUTCOMES = ("done", "attention", "interrupted")
DURATION_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)

# recordings not yet proven in the store (nor retired): what "unverified" means for alerts
UNVERIFIED_STATES = tuple(s.value for s in RecState
                          if s not in (RecState.VERIFIED, RecState.WIPED, RecState.SUPERSEDED))

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Tally:
    """What the ledger says, for counters: each field only grows while the ledger lives."""

    failures: dict[str, int] = field(default_factory=lambda: {n: 0 for n in FAILURE_EVENTS})
    flows: dict[str, list[int]] = field(
        default_factory=lambda: {n: [0, 0] for n in FLOW_EVENTS.values()})      # [recordings, bytes]
    buckets: dict[str, list[int]] = field(
        default_factory=lambda: {o: [0] * (len(DURATION_BUCKETS) + 1) for o in SESSION_OUTCOMES})
    seconds: dict[str, float] = field(default_factory=lambda: {o: 0.0 for o in SESSION_OUTCOMES})
    oldest_unverified: float | None = None      # a gauge: created_at of the oldest, now

    def copy(self) -> "Tally":
        return Tally(dict(self.failures), {k: list(v) for k, v in self.flows.items()},
                     {k: list(v) for k, v in self.buckets.items()}, dict(self.seconds),
                     self.oldest_unverified)

    def observe(self, outcome: str, seconds: float) -> None:
        seconds = max(0.0, seconds)       # a clock stepped back between dock and end
        i = next((i for i, b in enumerate(DURATION_BUCKETS) if seconds <= b), len(DURATION_BUCKETS))
        self.buckets[outcome][i] += 1
        self.seconds[outcome] += seconds


class LedgerTally:
    """Counters read from the ledger, read-only and incrementally (by event id).

    The event chain is append-only (triggers refuse updates and deletes) and its ids
    are handed out in commit order, so counting each event once, from the first one,
    gives totals that survive a restart: the first scrape after a start shows what
    the last scrape before it showed, plus what happened since. They reset only
    with the ledger itself (a new state directory), which Prometheus takes as a
    counter reset.
    """

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path
        self.last_id = 0
        self.tally = Tally()
        self._lock = threading.Lock()

    def refresh(self) -> Tally:
        with self._lock:
            if not self.path.exists():
                return self.tally.copy()
            db = sqlite3.connect(f"file:{pathname2url(str(self.path))}?mode=ro", uri=True, timeout=5)
            try:
                self._read(db)
            except sqlite3.Error:
                pass                # a ledger being created or migrated: next time
            finally:
                db.close()
            return self.tally.copy()

    def _read(self, db: sqlite3.Connection) -> None:
        # the top first: every event at or below it is committed, and no later commit can
        # take an id at or below it, so nothing is counted twice or skipped
        top = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        span = (self.last_id, top)
        names = (*FAILURE_EVENTS, *FLOW_EVENTS)
        rows = db.execute(
            "SELECT event, COUNT(*), COALESCE(SUM(json_extract(data, '$.size')), 0) FROM events"
            f" WHERE id > ? AND id <= ? AND event IN ({','.join('?' * len(names))}) GROUP BY event",
            (*span, *names)).fetchall()
        ends = db.execute(
            "SELECT e.event, e.ts - s.docked_at FROM events e JOIN sessions s ON s.id = e.session_id"
            f" WHERE e.id > ? AND e.id <= ? AND e.event IN ({','.join('?' * len(SESSION_OUTCOMES))})",
            (*span, *(f"session.{o}" for o in SESSION_OUTCOMES))).fetchall()
        oldest = db.execute(
            f"SELECT MIN(created_at) FROM recordings WHERE state IN ({','.join('?' * len(UNVERIFIED_STATES))})",
            UNVERIFIED_STATES).fetchone()[0]
        t = self.tally
        for name, n, size in rows:
            if name in t.failures:
                t.failures[name] += n
            if name in FLOW_EVENTS:
                flow = t.flows[FLOW_EVENTS[name]]
                flow[0] += n
                flow[1] += int(size)
        for name, seconds in ends:
            t.observe(name.split(".", 1)[1], float(seconds))
        t.oldest_unverified = oldest
        self.last_id = max(self.last_id, top)


def build_info() -> dict[str, str]:
    """Labels of ``dockd_build_info``: the installed version and the Python running it."""
    try:
        version = importlib.metadata.version("dockd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "python": platform.python_version()}


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

    def histogram(self, name: str, help_: str, label: str, tally: Tally) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} histogram")
        for key, counts in tally.buckets.items():
            total = 0
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts):
                total += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                self.lines.append(f'{name}_bucket{{{label}="{key}",le="{le}"}} {total}')
            self.lines.append(f'{name}_sum{{{label}="{key}"}} {_num(tally.seconds[key])}')
            self.lines.append(f'{name}_count{{{label}="{key}"}} {total}')

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render(snap: dict[str, Any], counts: dict[str, tuple[int, int]], tally: Tally,
           up: bool = True, now: float | None = None) -> str:
    """Exposition text from a status snapshot, ledger counts by state and the ledger's tally."""
    o = _Out()
    o.metric("dockd_up", "gauge", "1 while the daemon runs; 0 written once at a clean stop.",
             [({}, 1 if up else 0)])
    o.metric("dockd_build_info", "gauge", "Always 1; the labels say which dockd and Python run.",
             [(build_info(), 1)])
    o.metric("dockd_start_time_seconds", "gauge", "Unix time the daemon started.",
             [({}, snap["daemon"]["started_at"])])
    o.metric("dockd_metrics_rendered_timestamp_seconds", "gauge",
             "Unix time these metrics were rendered (a stale textfile means a dead daemon).",
             [({}, time.time() if now is None else now)])
    states = [s.value for s in RecState]
    o.metric("dockd_recordings", "gauge", "Recordings in the ledger by state.",
             [({"state": s}, counts.get(s, (0, 0))[0]) for s in states])
    o.metric("dockd_recording_bytes", "gauge", "Plaintext bytes of the recordings in the ledger by state.",
             [({"state": s}, counts.get(s, (0, 0))[1]) for s in states])
    o.metric("dockd_oldest_unverified_recording_timestamp_seconds", "gauge",
             "Unix time the oldest recording not yet proven in the store was found (absent: none).",
             [({}, tally.oldest_unverified)])
    o.metric("dockd_failures_total", "counter",
             "Failure events in the ledger by catalogued event id (the reason).",
             [({"reason": r}, tally.failures.get(r, 0)) for r in FAILURE_EVENTS])
    for step, what in (("spooled", "made durable, encrypted, in the spool"),
                       ("uploaded", "proven in the store"), ("wiped", "deleted from cameras")):
        n, size = tally.flows[step]
        o.metric(f"dockd_{step}_recordings_total", "counter", f"Recordings {what}.", [({}, n)])
        o.metric(f"dockd_{step}_bytes_total", "counter", f"Plaintext bytes of the recordings {what}.",
                 [({}, size)])
    o.histogram("dockd_session_duration_seconds",
                "Seconds from dock to a session's end, by how it ended.", "outcome", tally)
    o.metric("dockd_bays", "gauge", "Docked cameras by session phase.",
             [({"phase": p.value}, sum(1 for b in snap["bays"] if b["phase"] == p.value)) for p in Phase])
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


# Connections served at once; past that a connection is closed at once (a scraper
# retries at its next interval), so a flood off loopback cannot pile up threads.
MAX_CONNECTIONS = 8
HANDSHAKE_TIMEOUT = 10.0      # seconds for a TLS handshake, in the connection's own thread
REQUEST_TIMEOUT = 30.0


class _MetricsServer(ThreadingHTTPServer):
    """HTTP, or HTTPS with ``tls``: the handshake runs in the connection's thread, so
    a client that stalls it holds up nobody else."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type, tls: ssl.SSLContext | None,
                 ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return                          # not TLS, a wrong CA, a stalled handshake: dropped
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


def _handler(exporter: "MetricsExporter", auth: Any) -> type:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if auth is not None and not auth.check(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="dockd"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
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

    return Handler


class MetricsExporter:
    """Started with the daemon when ``metrics.textfile`` or ``metrics.listen`` is set."""

    def __init__(self, cfg: Any, snapshot: Callable[[], dict[str, Any]],
                 counts: Callable[[], dict[str, tuple[int, int]]], clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.snapshot = snapshot
        self.counts = counts
        self.clock = clock
        self.tally = LedgerTally(cfg.ledger_path)
        self._next = 0.0
        self._http: ThreadingHTTPServer | None = None
        self.write_errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.metrics.textfile or self.cfg.metrics.listen)

    def text(self, up: bool = True) -> str:
        return render(self.snapshot(), self.counts(), self.tally.refresh(), up=up)

    def start(self) -> None:
        """Listen (and write the first textfile). A web config that cannot be used, or an
        address that cannot be bound, is a ``ConfigError``: nothing listens then."""
        listen = self.cfg.metrics.listen
        if listen:
            from . import webconfig
            from .config import split_listen

            host, port = split_listen(listen)
            web = webconfig.load(self.cfg.metrics.web_config) if self.cfg.metrics.web_config else None
            auth = webconfig.BasicAuth(web.users) if web is not None and web.has_auth else None
            tls = web.tls_context() if web is not None else None
            try:
                self._http = _MetricsServer((host, port), _handler(self, auth), tls, ipv6=":" in host)
            except OSError as exc:
                raise ConfigError("metrics.listen", f"cannot listen on {listen}: {exc.strerror}") from None
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
