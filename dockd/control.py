"""The control socket: status snapshots from the running daemon, as JSON.

A Unix stream socket, ``control.sock`` in ``paths.runtime_dir``, mode 0660,
group ``dockd`` when that group exists (root otherwise), so an operator in
that group runs ``dockd status`` without root. The protocol is one request
line and one JSON document in reply, then the server closes the connection.
The line is ``status``, or a technician's request as one JSON object
(``{"op": "retry"|"acknowledge", "serial": ..., "reason": ...}``, see
``ControlServer._operate``), answered ``{"error": ...}`` when refused. The reply is ``status.build`` over the daemon's ledger plus what
only the daemon knows (read progress, rates, ETAs, store reachability).

The server never blocks the supervisor: it answers from its own thread, and
``tick`` (called from the main loop) only samples counters.
"""

from __future__ import annotations

import grp
import json
import math
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from . import status as status_mod
from . import technician
from .config import Config
from .errors import DockdError
from .model import Phase

MAX_SOCKET_PATH = 107          # sockaddr_un.sun_path, less the terminating NUL

SOCKET_NAME = "control.sock"
GROUP = "dockd"
MODE = 0o660
REQUEST_MAX = 4096          # a status request, or a technician's request with its reason
CLIENT_TIMEOUT = 3.0
RATE_TAU = 20.0             # seconds: the time constant rates are smoothed over
MIN_INTERVAL = 0.2          # seconds: a shorter interval between samples is not measured
SAMPLE_EVERY = 0.5


def socket_path(cfg: Config) -> Path:
    return cfg.paths.runtime_dir / SOCKET_NAME


class RateMeter:
    """Bytes per second, smoothed: an exponentially weighted mean of the rate between
    successive (time, cumulative bytes) samples, each interval weighted by its length
    (time constant ``tau`` seconds). Counters that move in steps (verified bytes jump a
    whole file at a time) average out to the rate they keep up over ``tau``, instead of
    swinging between zero and a burst. The mean is corrected for its start (it grows from
    nothing, so it is divided by the weight gathered so far): until ``tau`` has passed it is
    the time-weighted mean of every interval seen, not a figure climbing from zero, which
    made the first ETAs days long. ``t`` is any monotonic clock, injected."""

    def __init__(self, tau: float = RATE_TAU) -> None:
        self.tau = tau
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None
        self._mean = 0.0          # the mean grown from zero...
        self._weight = 0.0        # ...and the weight it has gathered: rate = mean / weight

    def add(self, t: float, total: int) -> None:
        if self._last is None or total < self._last[1] or t < self._last[0]:
            # first sample, or a counter that went back: start again
            self._last, self._rate, self._mean, self._weight = (t, total), None, 0.0, 0.0
            return
        t0, b0 = self._last
        dt = t - t0
        if dt < MIN_INTERVAL:
            return                                       # too short to measure: wait for more
        inst = (total - b0) / dt
        w = 1.0 - math.exp(-dt / self.tau)
        self._mean += w * (inst - self._mean)
        self._weight += w * (1.0 - self._weight)
        self._rate = self._mean / self._weight
        self._last = (t, total)

    @property
    def last(self) -> int | None:
        """The latest cumulative count sampled."""
        return None if self._last is None else self._last[1]

    def rate(self) -> float | None:
        return self._rate


class _Progress:
    """Read and verify rates of one session."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.spooled = RateMeter()
        self.verified = RateMeter()


def eta(phase: str, total: int, spooled: int, verified: int,
        spool_rate: float | None, verify_rate: float | None) -> float | None:
    """Seconds until the current phase is through, at its smoothed recent rate: while
    spooling, bytes left to copy over the read rate; while uploading, bytes left to verify
    over the verify rate. None while unknown (scanning, wiping, no rate measured yet, a
    rate of zero). Never the other pipeline's rate: uploads start later and verify whole
    files at a time, and their early rate says nothing about how long the copy takes."""
    if phase == Phase.SPOOLING.value:
        left, rate = total - spooled, spool_rate
    elif phase == Phase.UPLOADING.value:
        left, rate = total - verified, verify_rate
    else:
        return None
    if left <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return left / rate


class ControlServer:
    def __init__(self, cfg: Config, daemon: Any) -> None:
        self.cfg = cfg
        self.daemon = daemon
        self.path = socket_path(cfg)
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._progress: dict[str, _Progress] = {}
        self._lock = threading.Lock()
        self._last_sample = 0.0
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            self.path.unlink()                 # a stale socket from an unclean stop
        except FileNotFoundError:
            pass
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ControlSocketError(f"{self.path}: a control socket path may have at most "
                                     f"{MAX_SOCKET_PATH} bytes; choose a shorter paths.runtime_dir")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)                  # never world-connectable, even for an instant
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise ControlSocketError(f"{self.path}: cannot create the control socket: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, MODE)
        try:
            os.chown(self.path, -1, grp.getgrnam(GROUP).gr_gid)
        except (KeyError, PermissionError):
            pass                               # no dockd group (or not root): owner's group
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def tick(self) -> None:
        """Sample progress counters (cheap; called by the main loop)."""
        now = time.monotonic()
        if now - self._last_sample < SAMPLE_EVERY:
            return
        self._last_sample = now
        station = self.daemon.station
        with self._lock:
            for serial, live in station.sessions.snapshot().items():
                pr = self._progress.get(serial)
                if pr is None or pr.session != live.session_id:
                    pr = self._progress[serial] = _Progress(live.session_id)
                if live.safe_to_undock:
                    continue
                counts = station.ledger.counts(session_id=live.session_id)
                verified = sum(counts.get(s, (0, 0))[1] for s in ("verified", "wiped"))
                pr.spooled.add(now, live.spooled_bytes)
                pr.verified.add(now, verified)

    # -- snapshots ------------------------------------------------------------

    def live_view(self) -> status_mod.LiveView:
        d = self.daemon
        station = d.station
        q = station.uploader.snapshot()
        view = status_mod.LiveView(
            pid=os.getpid(), started_at=self.started_at, uptime_seconds=time.monotonic() - self._started_mono,
            queue_active=q["active"], queue_delayed=q["delayed"], queue_paused=q["paused"],
            store_reachable=q["store_reachable"], store_last_error=q["last_store_error"],
            last_success=q["last_success"])
        present = d.present_cameras()
        with self._lock:
            for serial, live in station.sessions.snapshot().items():
                if serial not in present:
                    continue
                pr = self._progress.get(serial)
                spool_rate = verify_rate = None
                if pr is not None and pr.session == live.session_id and not live.safe_to_undock:
                    spool_rate, verify_rate = pr.spooled.rate(), pr.verified.rate()
                verified = (pr.verified.last or 0) if pr else 0
                rate = spool_rate if live.phase in (Phase.SCANNING.value, Phase.SPOOLING.value) \
                    else verify_rate
                view.bays[serial] = status_mod.LiveBay(
                    session=live.session_id, spooled_bytes=live.spooled_bytes,
                    rate_bps=rate if rate else None,
                    eta_seconds=eta(live.phase, live.total_bytes, live.spooled_bytes, verified,
                                    spool_rate, verify_rate),
                    current=live.current, last_error=live.last_error)
        return view

    def snapshot(self) -> dict[str, Any]:
        return status_mod.build(self.cfg, self.daemon.station.ledger, self.live_view())

    # -- serving ------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)
                continue
            with conn:
                try:
                    self._answer(conn)
                except (OSError, ValueError):
                    pass                         # a client that went away or spoke nonsense

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT)
        req = b""
        while b"\n" not in req and len(req) < REQUEST_MAX:
            chunk = conn.recv(REQUEST_MAX)
            if not chunk:
                break
            req += chunk
        line = req.split(b"\n", 1)[0].strip()
        if line.startswith(b"{"):
            reply = self._operate(line, _peer(conn))
        else:
            cmd = line.decode("ascii", "replace") or "status"
            if cmd == "status":
                reply = self.snapshot()
            else:
                reply = {"error": f"unknown request {cmd[:40]!r}; try 'status'"}
        conn.sendall(json.dumps(reply, sort_keys=True).encode() + b"\n")

    def _operate(self, line: bytes, actor: technician.Actor) -> dict[str, Any]:
        """A technician's request, one JSON object: ``{"op": "retry", "serial": S}`` or
        ``{"op": "acknowledge", "serial": S, "reason": R}``. Who asked is the peer's uid
        from the kernel (SO_PEERCRED), never a name the client sends. Only root and group
        dockd can connect at all (the socket's mode)."""
        try:
            req = json.loads(line)
        except ValueError:
            return {"error": "a request must be one JSON object on one line"}
        if not isinstance(req, dict) or not isinstance(req.get("serial"), str):
            return {"error": "a request names the camera: {\"op\": ..., \"serial\": ...}"}
        station = self.daemon.station
        try:
            if req.get("op") == "retry":
                return technician.retry(station.ledger, req["serial"], actor,
                                        submit=station.uploader.submit,
                                        is_docked=station.sessions.is_docked).as_dict()
            if req.get("op") == "acknowledge":
                return technician.acknowledge(station.ledger, req["serial"], str(req.get("reason", "")),
                                              actor)
        except DockdError as exc:
            return {"error": str(exc), "exit_code": exc.exit_code}
        return {"error": f"unknown operation {str(req.get('op'))[:40]!r}; try retry or acknowledge"}


def _peer(conn: socket.socket) -> technician.Actor:
    """The connected process's Unix user, as the kernel reports it (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return technician.Actor.from_uid(uid)


class ControlSocketError(DockdError):
    msgid = "control.refused"


def _exchange(cfg: Config, request: bytes, timeout: float) -> Any:
    """Send one request line and read the one JSON reply. ``None`` when no daemon answers.

    Raises ``ControlSocketError`` when a daemon is there but we may not ask it
    (permission): saying "not running" then would be a lie."""
    path = socket_path(cfg)
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except PermissionError:
            raise ControlSocketError(
                f"{path}: permission denied; run as root or as a member of group '{GROUP}'") from None
        except (ConnectionRefusedError, FileNotFoundError):
            return None                        # a stale socket: the daemon is gone
        s.sendall(request + b"\n")
        buf = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise ControlSocketError(f"{path}: the daemon did not answer within {timeout:.0f}s") from None
    finally:
        s.close()
    try:
        return json.loads(buf)
    except ValueError:
        return None


def query(cfg: Config, timeout: float = 5.0) -> dict[str, Any] | None:
    """The running daemon's snapshot, or None when no daemon answers."""
    snap = _exchange(cfg, b"status", timeout)
    # a daemon not yet restarted after an upgrade may answer in an older version: its snapshot
    # is still the truth (the fields it lacks are judged by ``status.needs_attention``)
    if isinstance(snap, dict) and str(snap.get("schema", "")).startswith(status_mod.SCHEMA_FAMILY):
        return snap
    return None


def operate(cfg: Config, op: str, serial: str, timeout: float = 30.0, **args: Any) -> dict[str, Any] | None:
    """Ask the running daemon to ``retry`` or ``acknowledge`` (see ``ControlServer._operate``);
    None when no daemon answers. Its refusal comes back as ``{"error": ...}``."""
    reply = _exchange(cfg, json.dumps({"op": op, "serial": serial, **args}).encode(), timeout)
    if reply is None:
        return None
    if not isinstance(reply, dict):
        raise ControlSocketError(f"{socket_path(cfg)}: the daemon's reply was not understood")
    return reply
