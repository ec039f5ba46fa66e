"""``dockd run``: the supervisor. Sources → sessions → the shared upload pool.

One thread per docked camera (``session.registry.Sessions``) runs ``Station.run_session``; a semaphore
(``devices.max_readers``) caps how many cameras are read at once. The upload
pool (``upload.concurrency`` workers) is shared and takes cameras in turn.
The main loop dispatches device events, keeps the systemd watchdog fed and
the STATUS line current, and ticks the control socket and metrics.

Start: reconcile ledger, spool and store (``Station.start``), mark sessions
left open by a previous run as undocked (the source re-announces cameras
still present), start the control socket and metrics, then the source; READY=1
once it listens. SIGTERM: stop the source, cancel sessions (the chunk being
written finishes, the partial file is discarded, the ledger keeps the phase
reached), let in-flight uploads finish, exit 0. SIGHUP: re-read the
configuration, a clean cut: sessions that start afterwards use the new
recipients, profiles and wipe rule, sessions already running finish with
theirs, hooks and logs follow at once. A bad file, or one changing what only a
restart can apply (``config.RELOADABLE``), is refused whole and logged
(``daemon.reload_failed``), and the old configuration is kept.
"""

from __future__ import annotations

import faulthandler
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
from .station import Station
from .errors import DockdError
from .hooks import HookRunner
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

        return UdevSource(cfg.devices, profiles, tag=cfg.devices.udev_tag)
    from .device.kernel import KernelSource

    return KernelSource(cfg.devices, profiles)


class Daemon:
    def __init__(self, config_path: Path | None, cfg: Config, *, policy: RetryPolicy | None = None,
                 backend: Store | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.log = log.get()
        self.notify = Notifier()
        # a SimpleQueue: its put is reentrant, so a signal handler may call it while the main
        # loop, in the same thread, is inside get() (a Queue's lock would deadlock there)
        self.events: queue.SimpleQueue[DeviceEvent | str] = queue.SimpleQueue()
        self.station = Station(cfg, policy=policy, backend=backend, logger=self.log)
        self.readers = threading.Semaphore(cfg.devices.max_readers)
        self._present: set[str] = set()
        self._present_lock = threading.Lock()
        self.source: DeviceSource | None = None
        self.control: Any = None
        self.metrics: Any = None
        self.hooks = HookRunner(cfg.hooks.command, cfg.hooks.timeout, cfg.station.id, self.log)
        self.station.on_change = self.hooks.on_change
        self._stop = threading.Event()

    def present_cameras(self) -> set[str]:
        """Serials the source says are docked now (thread-safe copy)."""
        with self._present_lock:
            return set(self._present)

    # -- signals -------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.events.put("reload" if signum == signal.SIGHUP else f"stop:{signal.Signals(signum).name}")

    def _reload(self) -> None:
        self.notify.reloading()
        try:
            new = config_mod.load(self.config_path)
            self.station.reconfigure(new)    # sessions that start from now on; refused whole
        except DockdError as exc:
            log.emit(self.log, "daemon.reload_failed", error=str(exc))
        else:
            self.cfg = new
            self.hooks.configure(new.hooks.command, new.hooks.timeout)
            for extra in (self.control, self.metrics):
                if extra is not None:
                    extra.cfg = new          # paths stay; limits, labels and cadence follow
            log.configure(new.log.level, new.log.format)
            log.emit(self.log, "daemon.reloaded", source=new.source)
        self.notify.send(ready=1, monotonic_usec=int(time.monotonic() * 1e6))

    # -- sessions ------------------------------------------------------------

    def _docked(self, ev: CameraDocked) -> None:
        with self._present_lock:
            self._present.add(ev.serial)
        source = self.source

        def release() -> None:
            if source is not None:
                try:
                    source.release(ev)
                    log.emit(self.log.bind(camera=ev.serial), "device.released")
                except DockdError as exc:
                    self.log.bind(camera=ev.serial).error("device.release_failed", error=str(exc))

        def body(cancel: threading.Event) -> None:
            try:
                self.station.run_session(ev, cancel=cancel, release=release, reader=self.readers)
            except Exception as exc:  # a bug in one session must not take the station down
                self.log.bind(camera=ev.serial).exception("session.crashed", error=str(exc))

        # a repeated add/change event for a camera already being served starts nothing
        self.station.sessions.dock(ev, body)

    def _undocked(self, ev: CameraUndocked) -> None:
        log.emit(self.log.bind(camera=ev.serial), "device.undocked", device=ev.device)
        ours, done = self.station.sessions.undock(ev)
        if not ours:
            return      # another device carrying the same serial left: the camera served is here
        with self._present_lock:
            self._present.discard(ev.serial)
        if done is not None:
            # done with the camera: the ledger learns the bay is empty
            self.station.ledger.mark_undocked(done.session_id)

    def _forget_previous_run(self) -> int:
        """Sessions of a previous run still marked docked are closed: the source
        re-announces the cameras that are still here, and they get fresh sessions."""
        n = 0
        for s in self.station.ledger.sessions(limit=100000):
            if s["undocked_at"] is None:
                self.station.ledger.mark_undocked(s["id"])
                n += 1
        return n

    def status_line(self) -> str:
        present = self.present_cameras()
        busy = [s for k, s in self.station.sessions.snapshot().items() if k in present and not s.safe_to_undock]
        q = self.station.uploader.snapshot()
        line = (f"{len(present)} docked, {len(busy)} busy, "
                f"{q['queued'] + q['active'] + q['delayed']} upload(s) pending")
        if q["paused"]:
            line += ", store refused our credentials"
        elif q["store_reachable"] is False:
            line += ", store unreachable"
        if self.station.is_spool_full():
            line += ", spool full"
        return line

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # a daemon that seems stuck: `kill -USR1` writes every thread's stack to stderr (the journal)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.station.start()
        self._forget_previous_run()
        self.hooks.start()
        extra = self._start_extras()
        self.source = make_source(self.cfg, self.station.profiles)
        self.source.start(self.events.put)
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
            self.source.poll()
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
        """The control socket, and metrics when configured; returns their tick functions."""
        from .control import ControlServer
        from .metrics import MetricsExporter

        ticks: list[Any] = []
        self.control = ControlServer(self.cfg, self)
        self.control.start()
        ticks.append(self.control.tick)
        metrics = MetricsExporter(self.cfg, self.control.snapshot, self.station.ledger.counts, time.monotonic)
        if metrics.enabled:
            metrics.start()
            self.metrics = metrics
            ticks.append(metrics.tick)
        return ticks

    def _shutdown(self, reason: str) -> int:
        log.emit(self.log, "daemon.stopping", signal=reason)
        self.notify.stopping()
        if self.source is not None:
            self.source.stop()
        self.station.stopping = True
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        self.station.sessions.stop_all(deadline)
        if self.metrics is not None:
            self.metrics.stop()            # last word: dockd_up 0, before the ledger closes
        if self.control is not None:
            self.control.stop()
        self.station.close(max(1.0, deadline - time.monotonic()))
        self.hooks.stop()
        log.emit(self.log, "daemon.stopped")
        return 0
