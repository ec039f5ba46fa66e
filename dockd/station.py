"""The station: the composition root. It wires the ledger, the spool, the store, the
upload pool and the session registry, and runs one ``Session`` per docked camera
(``session/session.py``, where the work is). ``dockd ingest`` runs one session;
the daemon runs many at once.
"""

from __future__ import annotations

from typing import Any, Callable

from . import custody, log, manifest, recovery
from .age import parse_recipient
from .config import Config, needs_restart
from .device.events import CameraDocked
from .device.profiles import Profile, load_profiles
from .errors import ConfigError
from .ledger import Ledger
from .model import Recording
from .pipeline import naming
from .pipeline.spool import Spool
from .pipeline.upload import Uploader
from .session.backpressure import SpoolGate
from .session.camera import Graces
from .session.manifest import ManifestPublisher
from .session.markers import Markers
from .session.registry import Sessions
from .session.session import Hooks, LiveSession, Session, SessionOutcome
from .store.base import Store
from .store.factory import open_store, policy_for
from .store.retry import RetryPolicy

__all__ = ["Station", "LiveSession", "SessionOutcome", "Hooks"]


class Station:
    def __init__(self, cfg: Config, *, policy: RetryPolicy | None = None, backend: Store | None = None,
                 logger: Any = None, patient: bool = True, graces: Graces | None = None) -> None:
        """``patient``: wait for delayed retries before ending a session (the daemon); a
        one-shot ingest is impatient and reports what is left. ``graces``: how long a session
        waits to tell a camera pulled out from one failing in its bay."""
        self.cfg = cfg
        self.log = logger or log.get()
        self.patient = patient
        self.graces = graces or Graces()
        self.recipients = _recipients(cfg)
        self.profiles: dict[str, Profile] = load_profiles(cfg.devices.profiles_dir)
        for d in (cfg.paths.state_dir, cfg.paths.spool_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.station_key = custody.StationKey.load_or_create(cfg.paths.state_dir, cfg.station.id)
        self.ledger = Ledger(cfg.ledger_path)
        self.spool = Spool(cfg.paths.spool_dir, self.recipients, cfg.spool.min_free)
        self.sessions = Sessions()
        self.markers = Markers(self.ledger)
        self.policy = policy or policy_for(cfg)
        # called as on_change(live, what) when a session docks or changes phase ("docked",
        # "scanning", ..., "done", "attention", "interrupted"); must not block or raise
        self.on_change: Callable[[LiveSession, str], None] | None = None
        self.stopping = False     # set by the daemon before it cancels sessions on SIGTERM
        self.store = open_store(cfg, self.policy, on_retry=self._on_retry, backend=backend)
        self.uploader = Uploader(self.ledger, self.store, self.spool, self.policy,
                                 concurrency=cfg.upload.concurrency,
                                 max_integrity_retries=cfg.upload.max_integrity_retries,
                                 metadata=self.metadata, is_docked=self.sessions.is_docked, logger=self.log)
        self.gate = SpoolGate(self.spool, self.uploader, lambda: self.cfg)
        self.publisher = ManifestPublisher(cfg, self.ledger, self.store, self.station_key, self.spool.root)

    def _on_retry(self, op: str, attempt: int, exc: BaseException, wait: float) -> None:
        self.uploader.on_store_retry(op, attempt, exc, wait)

    def start(self) -> dict[str, int]:
        """Reconcile ledger, spool and store after a (possibly unclean) stop, then start the
        upload pool. Idempotent."""
        summary = recovery.reconcile(self.ledger, self.spool, self.uploader, self.log)
        self.uploader.start()
        return summary

    def reconfigure(self, cfg: Config) -> None:
        """A reload: sessions that start from now on use ``cfg`` (its recipients, profiles
        and wipe rule); sessions already running finish with what they started with. All or
        nothing: a configuration that cannot take effect here (a key only a restart can
        apply, recipients or profiles that do not load) raises ``ConfigError`` and changes
        nothing."""
        stuck = needs_restart(self.cfg, cfg)
        if stuck:
            raise ConfigError(stuck[0], "cannot change while dockd runs; restart dockd to apply it"
                              + (f" (also changed: {', '.join(stuck[1:])})" if stuck[1:] else ""))
        recipients = _recipients(cfg)
        profiles = load_profiles(cfg.devices.profiles_dir)
        self.cfg = cfg
        self.recipients = recipients
        self.spool.recipients = recipients
        # in place, so the device source's view follows too: one update (a single step under
        # the GIL), then the removals; a reader never misses a profile that is in both
        self.profiles.update(profiles)
        for name in set(self.profiles) - set(profiles):
            self.profiles.pop(name, None)

    def close(self, timeout: float = 30.0) -> None:
        self.uploader.stop(timeout)
        self.store.close()
        self.ledger.close()

    def is_spool_full(self) -> bool:
        return self.gate.is_full()

    def metadata(self, rec: Recording) -> dict[str, str]:
        """What the store keeps beside a recording's object (a claim, never a proof)."""
        marker = self.markers.get(rec)
        extra = {"event-marker": marker} if marker is not None else {}
        return extra | {
            "plaintext-sha256": rec.plain_sha256 or "",
            "camera": rec.serial,
            "station": self.cfg.station.id,
            "recorded": manifest.iso(rec.mtime_ns / 1e9) or "",
            "profile": rec.profile,
            "path": naming.safe_component(rec.name, 200),
            "role": rec.role,
            "retention-class": manifest.retention_class_of(rec.flagged, self.cfg.store.retention_class),
        }

    def changed(self, live: LiveSession, what: str) -> None:
        """Tell ``on_change``; an observer's bug must not stop a session."""
        if self.on_change is not None:
            try:
                self.on_change(live, what)
            except Exception as exc:
                log.emit(self.log.bind(camera=live.serial), "hook.failed", phase=what, error=repr(exc))

    def run_session(self, ev: CameraDocked, cancel: Any = None, progress: Any = None, release: Any = None,
                    reader: Any = None) -> SessionOutcome:
        """One session for ``ev`` (see ``session.Hooks`` for the rest), to its end."""
        profile = self.profiles.get(ev.profile)
        if profile is None:
            self.log.bind(camera=ev.serial).warning("device.profile_unknown", profile=ev.profile,
                                                    fallback="generic")
            profile = self.profiles["generic"]
        return Session(self, ev, profile, Hooks(cancel, progress, release, reader)).run()


def _recipients(cfg: Config) -> list[Any]:
    if not cfg.encryption.recipients:
        raise ConfigError("encryption.recipients",
                          "no recipients: add the store's age public key (dockd keygen makes one)")
    return [parse_recipient(r) for r in cfg.encryption.recipients]

