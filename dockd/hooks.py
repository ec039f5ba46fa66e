"""Hooks: an operator's command run when a bay changes state.

``hooks.command`` is an argv list (no shell). It runs on these session
events, with the details in environment variables:

==================  ========================================================
``docked``          a camera was docked and its session opened
``safe-to-undock``  every recording verified and wiped; camera released
``attention``       the session ended with recordings not wiped; a human
                    must look (the camera is released and may be undocked)
``interrupted``     the camera left before its session finished
==================  ========================================================

Variables: ``DOCKD_EVENT``, ``DOCKD_CAMERA``, ``DOCKD_BAY``, ``DOCKD_PHASE``,
``DOCKD_SESSION``, ``DOCKD_PROFILE``, ``DOCKD_STATION``,
``DOCKD_SAFE_TO_UNDOCK`` (``1``/``0``), ``DOCKD_ERROR`` (may be empty). The
hook gets only ``PATH`` and ``LANG`` besides: never the daemon's environment,
which may carry credentials.

Contract: ``fire`` never blocks and never raises. Hooks run one at a time,
in order, in a worker thread, each killed (with its process group) after
``hooks.timeout`` seconds. A failure (non-zero exit, timeout, cannot start,
queue overflow) is logged as ``hook.failed`` and changes nothing else.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Any

from . import log

# session "what" (station.Station.on_change) -> hook event
EVENTS = {"docked": "docked", "done": "safe-to-undock", "attention": "attention",
          "interrupted": "interrupted"}
QUEUE_MAX = 256
_STOP = object()


class HookRunner:
    def __init__(self, command: list[str] | None, timeout: float, station_id: str,
                 logger: Any = None) -> None:
        self.command = list(command) if command else None
        self.timeout = timeout
        self.station_id = station_id
        self.log = logger or log.get()
        self._q: queue.Queue[Any] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self.ran = 0                 # hooks started (for tests and metrics)
        self.failed = 0

    def configure(self, command: list[str] | None, timeout: float) -> None:
        """SIGHUP: applies to hooks fired afterwards."""
        self.command = list(command) if command else None
        self.timeout = timeout

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="hooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            try:
                self._q.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None

    def on_change(self, live: Any, what: str) -> None:
        """``Station.on_change`` observer."""
        event = EVENTS.get(what)
        if event is None or not self.command:
            return
        env = {
            "DOCKD_EVENT": event,
            "DOCKD_CAMERA": live.serial,
            "DOCKD_BAY": live.bay or "",
            "DOCKD_PHASE": live.phase,
            "DOCKD_SESSION": str(live.session_id),
            "DOCKD_PROFILE": live.profile,
            "DOCKD_STATION": self.station_id,
            "DOCKD_SAFE_TO_UNDOCK": "1" if event in ("safe-to-undock", "attention") else "0",
            "DOCKD_ERROR": live.last_error or "",
        }
        self.fire(env)

    def fire(self, env: dict[str, str]) -> None:
        try:
            self._q.put_nowait((list(self.command or []), self.timeout, env))
        except queue.Full:
            self.failed += 1
            log.emit(self.log.bind(camera=env.get("DOCKD_CAMERA")), "hook.failed",
                     hook=env.get("DOCKD_EVENT"), phase=env.get("DOCKD_PHASE"),
                     error="hook queue full; event dropped")

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            argv, timeout, env = item
            if argv:
                try:
                    self._run(argv, timeout, env)
                except Exception as exc:  # the worker outlives any one hook
                    log.emit(self.log, "hook.failed", hook=env.get("DOCKD_EVENT"), error=repr(exc))

    def _run(self, argv: list[str], timeout: float, env: dict[str, str]) -> None:
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "LANG": os.environ.get("LANG", "C.UTF-8"), **env}
        error = None
        self.ran += 1
        try:
            proc = subprocess.Popen(argv, env=full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as exc:
            error = f"cannot run {argv[0]}: {exc.strerror}"
        else:
            try:
                rc = proc.wait(timeout)
                if rc != 0:
                    error = f"exit status {rc}" if rc > 0 else f"killed by signal {-rc}"
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                error = f"timed out after {timeout:g}s; killed"
        if error:
            self.failed += 1
            log.emit(self.log.bind(camera=env.get("DOCKD_CAMERA")), "hook.failed",
                     hook=env.get("DOCKD_EVENT"), phase=env.get("DOCKD_PHASE"), error=error)
