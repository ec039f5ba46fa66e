"""``dockd run``: the supervisor. Sources → sessions → the shared upload pool.

One thread per docked camera runs ``Station.run_session``; a semaphore caps
how many cameras are read at once. The main loop dispatches device events,
keeps the systemd watchdog fed and the STATUS line current. SIGTERM stops
cleanly (in-flight chunks finish, state is in the ledger); SIGHUP re-reads
the configuration (applied to sessions that start afterwards).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import log
from .config import Config
from .device.events import CameraDocked, CameraUndocked, DeviceEvent, DeviceSource
from .engine import Station
from .errors import DockdError
from .sdnotify import Notifier
from .store.base import Store
from .store.retry import RetryPolicy

STOP_GRACE_SECONDS = 20.0


def make_source(cfg: Config, profiles: dict[str, Any]) -> DeviceSource:
    if cfg.devices.source == "inbox":
        from .device.inbox import InboxSource

        return InboxSource(cfg.devices.inbox_dir)
    if cfg.devices.source == "udev":
        from .device.udev import UdevSource

        return UdevSource(cfg.devices, profiles)
    from .device.kernel import KernelSource

    return KernelSource(cfg.devices, profiles)


class Daemon:
    def __init__(self, config_path: Path | None, cfg: Config, *, policy: RetryPolicy | None = None,
                 backend: Store | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.log = log.get()
        self.notify = Notifier()
        self.events: queue.Queue[DeviceEvent | str] = queue.Queue()
        self.station = Station(cfg, policy=policy, backend=backend, logger=self.log)
        self.readers = threading.Semaphore(cfg.devices.max_readers)
        self.sessions: dict[str, tuple[threading.Thread, threading.Event, CameraDocked]] = {}
        self.source: DeviceSource | None = None
        self._stop = threading.Event()

    # -- signals -------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.events.put("reload" if signum == signal.SIGHUP else f"stop:{signal.Signals(signum).name}")

    def _reload(self) -> None:
        self.notify.reloading()
        try:
            new = config_mod.load(self.config_path)
        except DockdError as exc:
            log.emit(self.log, "daemon.reload_failed", error=str(exc))
        else:
            self.cfg = new
            self.station.cfg = new
            log.configure(new.log.level, new.log.format)
            log.emit(self.log, "daemon.reloaded", source=new.source)
        self.notify.send(ready=1, monotonic_usec=int(time.monotonic() * 1e6))

    # -- sessions ------------------------------------------------------------

    def _docked(self, ev: CameraDocked) -> None:
        cur = self.sessions.get(ev.serial)
        if cur and cur[0].is_alive():
            return  # a repeated add/change event for a camera we are already serving
        cancel = threading.Event()
        source = self.source

        def release() -> None:
            if source is not None:
                try:
                    source.release(ev)
                    log.emit(self.log.bind(camera=ev.serial), "device.released")
                except DockdError as exc:
                    self.log.bind(camera=ev.serial).error("device.release_failed", error=str(exc))

        def body() -> None:
            try:
                self.station.run_session(ev, cancel=cancel, release=release, reader=self.readers)
            except Exception as exc:  # a bug in one session must not take the station down
                self.log.bind(camera=ev.serial).exception("session.crashed", error=str(exc))

        t = threading.Thread(target=body, name=f"session-{ev.serial}", daemon=True)
        self.sessions[ev.serial] = (t, cancel, ev)
        t.start()

    def _undocked(self, ev: CameraUndocked) -> None:
        cur = self.sessions.get(ev.serial)
        log.emit(self.log.bind(camera=ev.serial), "device.undocked", device=ev.device)
        if cur:
            cur[1].set()

    def status_line(self) -> str:
        live = [s for s in self.station.live.values() if not s.safe_to_undock]
        q = self.station.uploader.snapshot()
        return (f"{len(live)} camera(s) busy, {q['queued'] + q['active']} upload(s) queued"
                + (", store auth refused" if q["paused"] else ""))

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.station.start()
        self.source = make_source(self.cfg, self.station.profiles)
        self.source.start(self.events.put)
        extra = self._start_extras()
        log.emit(self.log, "daemon.started", source=self.cfg.devices.source, store=self.station.store.url,
                 station=self.cfg.station.id)
        self.notify.ready(self.status_line())
        wd = self.notify.watchdog_interval()
        tick = min(1.0, wd) if wd else 1.0
        last_status = ""
        reason = "stop"
        while True:
            try:
                item = self.events.get(timeout=tick)
            except queue.Empty:
                item = None
            if isinstance(item, str):
                if item == "reload":
                    self._reload()
                else:
                    reason = item.split(":", 1)[1]
                    break
            elif isinstance(item, CameraDocked):
                self._docked(item)
            elif isinstance(item, CameraUndocked):
                self._undocked(item)
            if wd:
                self.notify.watchdog()
            line = self.status_line()
            if line != last_status:
                self.notify.status(line)
                last_status = line
            for fn in extra:
                fn()
        return self._shutdown(reason)

    def _start_extras(self) -> list[Any]:
        """Optional services (control socket, metrics) started with the daemon."""
        hooks: list[Any] = []
        try:
            from .control import ControlServer
        except ImportError:
            return hooks
        self.control = ControlServer(self.cfg, self)
        self.control.start()
        hooks.append(self.control.tick)
        return hooks

    def _shutdown(self, reason: str) -> int:
        log.emit(self.log, "daemon.stopping", signal=reason)
        self.notify.stopping()
        if self.source is not None:
            self.source.stop()
        for _t, cancel, _ev in self.sessions.values():
            cancel.set()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for t, _c, _e in self.sessions.values():
            t.join(max(0.0, deadline - time.monotonic()))
        self.station.close(max(1.0, deadline - time.monotonic()))
        if getattr(self, "control", None) is not None:
            self.control.stop()
        log.emit(self.log, "daemon.stopped")
        return 0
