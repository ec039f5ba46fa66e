"""The station: ledger + spool + store + upload pool, and one session per docked camera.

``Station.run_session`` is the whole path for one camera. It is used by
``dockd ingest`` (one-shot) and by the daemon's supervisor (many at once).
It may be called again for the same camera after any crash or undock: the
ledger lets it skip what is already safe, wipe what is verified and copy the
rest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import custody, flags, log, manifest
from .age import parse_recipient
from .config import Config
from .device.events import CameraDocked
from .device.profiles import Profile, load_profiles
from .errors import (
    ConfigError,
    DeviceGoneError,
    DockdError,
    FileChangedError,
    SourceError,
    SpoolFullError,
)
from .ledger import Ledger
from .model import Phase, RecState, Recording
from .pipeline import naming
from .pipeline.scan import scan
from .pipeline.spool import GroupCommit, Spool, Spooled
from .pipeline.upload import Uploader
from .pipeline.wipe import wipe
from .store.base import Blob, MemoryCheckpoint, Store
from .store.factory import open_store, policy_for
from .store.retry import RetryPolicy

MAX_SCAN_PASSES = 3
SPOOL_WAIT_SECONDS = 2.0
# the session error when the daemon, not the camera, ended a session; it resumes at the next start
STOPPED_ERROR = "dockd stopped; resumes at the next start"
# how long a session whose camera stopped answering waits for the source to report the undock
# (a pull-out fails the camera's I/O a moment before udev says so); a camera still in its bay
# after that has failed where it sits
UNDOCK_GRACE_SECONDS = 5.0
# how long a read error waits for an undock report before the camera is asked whether it still
# answers (a pull-out fails reads a moment before it is reported)
READ_ERROR_GRACE_SECONDS = 1.0
# files in a row that fail with a device error, the camera still answering, before the camera
# itself is taken for failed: a bad sector spoils a file, a dead card spoils them all
MAX_UNREADABLE_IN_A_ROW = 3
# recording states nothing more happens to in a session: what its wait for uploads ends on
SETTLED = frozenset({RecState.VERIFIED, RecState.WIPED, RecState.ATTENTION, RecState.SUPERSEDED})


@dataclass
class LiveSession:
    """In-memory progress of a session, for status and progress bars."""

    session_id: int
    serial: str
    profile: str
    phase: str = Phase.DOCKED.value
    total: int = 0
    total_bytes: int = 0
    spooled_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str | None = None
    current: str | None = None
    bay: str | None = None
    safe_to_undock: bool = False
    primary_of: dict[bytes, bytes] = field(default_factory=dict)   # sidecar -> its recording
    docked_at: float = field(default_factory=time.time)
    root_dev: int | None = None       # the camera root's st_dev when the session began
    unreadable_in_a_row: int = 0      # files failed with a device error since the last good read


@dataclass
class SessionOutcome:
    session_id: int
    phase: Phase
    found: int
    verified: int
    wiped: int
    failed: list[tuple[str, str]]
    refused: list[tuple[str, str]]
    bytes: int

    @property
    def ok(self) -> bool:
        return self.phase == Phase.DONE


class Station:
    def __init__(
        self,
        cfg: Config,
        *,
        policy: RetryPolicy | None = None,
        backend: Store | None = None,
        logger: Any = None,
        patient: bool = True,
    ) -> None:
        """``patient``: wait for delayed retries before ending a session (the
        daemon); a one-shot ingest is impatient and reports what is left."""
        self.cfg = cfg
        self.log = logger or log.get()
        self.patient = patient
        if not cfg.encryption.recipients:
            raise ConfigError("encryption.recipients",
                              "no recipients: add the store's age public key (dockd keygen makes one)")
        self.recipients = [parse_recipient(r) for r in cfg.encryption.recipients]
        self.profiles: dict[str, Profile] = load_profiles(cfg.devices.profiles_dir)
        for d in (cfg.paths.state_dir, cfg.paths.spool_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.station_key = custody.StationKey.load_or_create(cfg.paths.state_dir, cfg.station.id)
        self._markers: dict[int, str] = {}     # recording id -> the camera's event marker
        self.ledger = Ledger(cfg.ledger_path)
        self.spool = Spool(cfg.paths.spool_dir, self.recipients, cfg.spool.min_free)
        self.policy = policy or policy_for(cfg)
        self._docked: dict[str, int] = {}
        self.live: dict[str, LiveSession] = {}
        self._lock = threading.Lock()
        # called as on_change(live, what) when a session docks or changes phase ("docked",
        # "scanning", ..., "done", "attention", "interrupted"); must not block or raise
        self.on_change: Callable[[LiveSession, str], None] | None = None
        self.stopping = False     # set by the daemon before it cancels sessions on SIGTERM
        self.uploader: Uploader  # set below; store's retry hook needs it
        self.store = open_store(cfg, self.policy, on_retry=self._on_retry, backend=backend)
        self.uploader = Uploader(
            self.ledger, self.store, self.spool, self.policy,
            concurrency=cfg.upload.concurrency,
            max_integrity_retries=cfg.upload.max_integrity_retries,
            metadata=self._metadata,
            is_docked=self.is_docked,
            logger=self.log,
        )

    # -- lifecycle ------------------------------------------------------------

    def _on_retry(self, op: str, attempt: int, exc: BaseException, wait: float) -> None:
        self.uploader.on_store_retry(op, attempt, exc, wait)

    def start(self) -> dict[str, int]:
        """Reconcile ledger, spool and store after a (possibly unclean) stop, then
        start the upload pool. Idempotent."""
        partials = self.spool.discard_partials()
        interrupted = self.ledger.recover_sessions()
        resumed = orphans = 0
        known: set[int] = set()
        for rec in self.ledger.recordings(states=[RecState.SPOOLED, RecState.UPLOADED, RecState.FAILED,
                                                  RecState.VERIFIED, RecState.FOUND]):
            known.add(rec.id)
            has_file = self.spool.path_for(rec.id).exists()
            if rec.state == RecState.VERIFIED:
                if has_file:
                    self.spool.remove(rec.id)      # crash between commit and cleanup
            elif rec.spool_path and has_file:
                self.uploader.submit(rec)
                resumed += 1
            elif rec.spool_path:
                self.uploader.submit(rec)          # verifies at the store or goes back to found
                resumed += 1
        for p in self.spool.root.glob("*.age"):
            try:
                rid = int(p.stem)
            except ValueError:
                continue
            if rid not in known:
                rec_state = None
                try:
                    rec_state = self.ledger.get(rid).state
                except DockdError:
                    pass
                if rec_state is None:
                    continue   # never delete what we cannot account for
                # renamed but never committed (the camera still has it), or a wiped
                # recording's copy (proven at the store before it was wiped) that a crash
                # between commit and cleanup, or a power cut undoing the unlink, left
                p.unlink()
                orphans += 1
        self.uploader.start()
        summary = {"sessions_interrupted": interrupted, "resumed": resumed,
                   "partials_discarded": partials, "orphans": orphans}
        log.emit(self.log, "daemon.recovered", **summary)
        return summary

    def close(self, timeout: float = 30.0) -> None:
        self.uploader.stop(timeout)
        self.store.close()
        self.ledger.close()

    def is_docked(self, serial: str) -> bool:
        with self._lock:
            return serial in self._docked

    # -- helpers --------------------------------------------------------------

    def marker(self, rec: Recording) -> str | None:
        """The camera's event marker for ``rec``: read at scan time, or (after a
        restart) from the ledger's ``recording.flagged`` event."""
        if rec.id in self._markers:
            return self._markers[rec.id]
        if not rec.flagged:
            return None
        ev = self.ledger.last_event("recording.flagged", recording_id=rec.id)
        value = json.loads(ev["data"]).get("marker") if ev else None
        if isinstance(value, str):
            self._markers[rec.id] = value
            return value
        return None

    def _metadata(self, rec: Recording) -> dict[str, str]:
        marker = self.marker(rec)
        extra = {"event-marker": marker} if marker is not None else {}
        return extra | {
            "plaintext-sha256": rec.plain_sha256 or "",
            "camera": rec.serial,
            "station": self.cfg.station.id,
            "recorded": manifest.iso(rec.mtime_ns / 1e9) or "",
            "profile": rec.profile,
            "path": naming.safe_component(rec.name, 200),
            "role": rec.role,
            "retention-class": manifest.EVIDENTIAL if rec.flagged else self.cfg.store.retention_class,
        }

    def _changed(self, live: LiveSession, what: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(live, what)
            except Exception as exc:  # an observer's bug must not stop a session
                log.emit(self.log.bind(camera=live.serial), "hook.failed", phase=what, error=repr(exc))

    def is_spool_full(self) -> bool:
        """Below the free-space watermark, or at the size cap: spooling waits for uploads."""
        floor, cap = self.cfg.spool.min_free, self.cfg.spool.max_size
        return bool((floor and self.spool.free_bytes() < floor) or (cap and self.spool.used_bytes(max_age=1.0) >= cap))

    def _wait_for_spool_space(self, cancel: threading.Event, lg: Any, live: LiveSession,
                              group: GroupCommit | None = None) -> None:
        """Wait while the spool is full. A group of spooled files not yet committed is
        committed first: its uploads are what will free the space."""
        floor = self.cfg.spool.min_free
        if not floor and not self.cfg.spool.max_size:
            return
        warned = False
        while self.is_spool_full():
            if group is not None and group.pending:
                group.flush()
                continue
            if not warned:
                log.emit(lg, "spool.pressure", free=self.spool.free_bytes(), min_free=floor)
                live.last_error = "spool full: waiting for uploads"
                warned = True
            if cancel.wait(SPOOL_WAIT_SECONDS):
                raise DeviceGoneError("camera undocked while waiting for spool space")
        if warned:
            log.emit(lg, "spool.relieved", free=self.spool.free_bytes())
            live.last_error = None

    # -- the session ------------------------------------------------------------

    def run_session(
        self,
        ev: CameraDocked,
        cancel: threading.Event | None = None,
        progress: Callable[[LiveSession, int], None] | None = None,
        release: Callable[[], None] | None = None,
        reader: threading.Semaphore | None = None,
    ) -> SessionOutcome:
        """``reader`` caps how many cameras are read at once (held while scanning
        and spooling only; waiting for uploads holds no slot). A caller that passes
        ``cancel`` sets it when the camera leaves its bay."""
        watched = cancel is not None
        cancel = cancel or threading.Event()
        release = _once(release)
        reader = reader or threading.Semaphore(1)
        profile = self.profiles.get(ev.profile)
        lg = self.log.bind(camera=ev.serial)
        if profile is None:
            lg.warning("device.profile_unknown", profile=ev.profile, fallback="generic")
            profile = self.profiles["generic"]
        sid = self.ledger.open_session(ev.serial, profile.name, str(ev.mount), ev.device, ev.bay,
                                       ev.usb.as_dict())
        lg = lg.bind(session=sid)
        log.emit(lg, "device.docked", profile=profile.name, device=ev.device, bay=ev.bay, mount=str(ev.mount))
        live = LiveSession(sid, ev.serial, profile.name, bay=ev.bay)
        with self._lock:
            self._docked[ev.serial] = sid
            self.live[ev.serial] = live
        self._changed(live, "docked")
        failed: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        recs: dict[int, Recording] = {}
        phase = Phase.DONE
        camera_failed: str | None = None
        notes: dict[int, str] = {}          # recording id → what the manifest must say of it
        try:
            try:
                root_dev: int | None = os.stat(ev.mount).st_dev
            except OSError as exc:
                raise DeviceGoneError(f"camera root unreadable: {exc.strerror}") from exc
            live.root_dev = root_dev
            for _pass in range(MAX_SCAN_PASSES):
                with reader:
                    changed = self._scan_and_spool(ev, profile, sid, lg, live, cancel, recs, failed,
                                                   progress)
                again = self._wait_uploads(sid, recs, lg, live, cancel)
                if not changed and not again:
                    break
                failed.clear()
            self._set_phase(sid, live, Phase.WIPING, lg)
            absent = self._deleted_unconfirmed(ev, recs)
            recs.update({r.id: r for r in self.ledger.get_many(absent)})
            notes = {i: (f"not on the camera at this dock: the wipe of session {was} deleted it "
                         "and could not confirm the deletion") for i, was in absent.items()}
            result = wipe(ev.mount, _complete_groups(self.ledger.get_many(recs), live.primary_of),
                          self.ledger, lg, root_dev)
            # only now: a wipe that stopped before confirming them leaves them to the session
            # whose wipe deleted them, which the next dock's note must still name
            self.ledger.claim([r.id for r in result.wiped if r.id in absent], sid)
            refused += [(r.name, why) for r, why in result.refused]
            failed += [(r.name, why) for r, why in result.failed]
            if cancel.is_set():
                raise DeviceGoneError("camera undocked")
        except DeviceGoneError as exc:
            try:
                # a pull-out fails the camera's I/O a moment before its undock is reported; a
                # device node the kernel has removed is gone whether or not that report came
                gone = (not watched or self.stopping or cancel.wait(UNDOCK_GRACE_SECONDS)
                        or (ev.device is not None and not os.path.exists(ev.device)))
                if self.stopping:
                    # not an undock: the ledger keeps the phase reached (the camera is still in its
                    # bay), and the next start interrupts it and opens a fresh session
                    phase = Phase.INTERRUPTED
                    live.last_error = STOPPED_ERROR
                    self.ledger.set_phase(sid, Phase(live.phase), error=STOPPED_ERROR)
                elif not gone:
                    # still in its bay: the camera failed where it sits (a failing card, a filesystem
                    # its helper gave up on). Nothing more is asked of it; the session ends below, in
                    # attention, and the bay says it is safe to undock, not "interrupted" for ever
                    camera_failed = str(exc)
                    self.ledger.append_event("session.camera_failed", serial=ev.serial, session_id=sid,
                                             error=camera_failed)
                    log.emit(lg, "session.camera_failed", error=camera_failed)
                else:
                    phase = Phase.INTERRUPTED
                    live.last_error = str(exc)
                    live.phase = phase.value
                    self.ledger.set_phase(sid, Phase.INTERRUPTED, error=str(exc))
                    log.emit(lg, "session.interrupted", error=str(exc))
                    self.ledger.mark_undocked(sid)
                    self._changed(live, phase.value)
            except Exception as inner:     # the ledger failed recording it: as in the middle
                self._crashed(sid, live, inner, release)
                raise
        except Exception as exc:
            self._crashed(sid, live, exc, release)
            raise
        finally:
            with self._lock:
                self._docked.pop(ev.serial, None)
        try:
            final = self.ledger.get_many(recs)
            if phase != Phase.INTERRUPTED:
                phase = self._finish(sid, live, final, lg, notes, failed, refused, camera_failed, release)
        except Exception as exc:
            self._crashed(sid, live, exc, release)
            raise
        if watched and cancel.is_set() and not self.stopping:
            # pulled out after the session was done with the camera (or during its grace):
            # the daemon skips a session still running, so the bay's emptiness is recorded here
            self.ledger.mark_undocked(sid)
        # a settled recording's marker has done its work (object metadata, manifest): a daemon
        # that runs for months must not keep one for every recording it has ever seen
        for r in final:
            if r.state in SETTLED:
                self._markers.pop(r.id, None)
        with self._lock:
            if self.live.get(ev.serial) is live:
                live.safe_to_undock = True
        return SessionOutcome(
            sid, phase, len(final),
            sum(1 for r in final if r.state in (RecState.VERIFIED, RecState.WIPED)),
            sum(1 for r in final if r.state == RecState.WIPED),
            failed, refused, sum(r.size for r in final),
        )

    def _crashed(self, sid: int, live: LiveSession, exc: Exception, release: Callable[[], None] | None) -> None:
        """A bug, or a ledger that cannot be written: a human must look, and the bay must
        not show its last phase for ever. The camera is released (synced, unmounted);
        nothing else touches it again (an unconfirmed deletion is confirmed at its next
        dock). The caller re-raises."""
        live.last_error = f"internal error: {exc}"
        live.phase = Phase.ATTENTION.value
        with contextlib.suppress(Exception):
            self.ledger.set_phase(sid, Phase.ATTENTION, error=live.last_error)
        if release is not None:
            with contextlib.suppress(Exception):
                release()
        live.safe_to_undock = True
        self._changed(live, live.phase)

    def _finish(self, sid: int, live: LiveSession, final: list[Recording], lg: Any, notes: dict[int, str],
                failed: list[tuple[str, str]], refused: list[tuple[str, str]], camera_failed: str | None,
                release: Callable[[], None] | None) -> Phase:
        """A session that kept its camera to the end: its manifest, what was not done,
        the camera released, and the phase it ends in (done or attention)."""
        self._store_manifest(sid, final, lg, notes)
        want = RecState.WIPED if self.cfg.wipe.after == "verified" else None
        not_done = [r for r in final if r.state not in (RecState.WIPED, RecState.VERIFIED)
                    or (want is not None and r.state != want)]
        if self.cfg.wipe.after == "spooled":
            not_done = [r for r in final if not r.is_durable]
        reported = {name for name, _why in refused + failed}
        for r in not_done:
            if r.name not in reported:    # each recording is reported once, with its first reason
                failed.append((r.name, r.last_error or f"still {r.state.value}"))
        phase = Phase.ATTENTION if (failed or refused or camera_failed) else Phase.DONE
        if release:
            release()
        error = None
        if phase == Phase.ATTENTION:
            error = f"{len(failed)} recording(s) not verified and wiped, {len(refused)} wipe(s) refused"
            if camera_failed:
                error = f"camera failed: {camera_failed}; {error}"
            live.last_error = error
        live.phase = phase.value
        live.safe_to_undock = True
        self.ledger.set_phase(sid, phase, error=error)
        log.emit(lg, f"session.{phase.value}", recordings=len(final),
                 bytes=sum(r.size for r in final), error=error)
        self._changed(live, phase.value)
        return phase

    def _deleted_unconfirmed(self, ev: CameraDocked, recs: dict[int, Recording]) -> dict[int, int]:
        """This camera's recordings an earlier wipe began deleting (the ledger says so,
        durably, before any unlink) but never confirmed (the camera was pulled out, or
        failed its flush), whose files the scan no longer finds. Handed to this session's
        wipe, which finds each absent on this camera and records it wiped; this session
        takes those (see run_session), and its manifest lists them. A file dockd never
        began deleting that has gone (a camera formatted by hand) stays verified: dockd
        did not delete it. Returns their ids, each with the session whose wipe began
        deleting it."""
        scanned = {r.rel_path for r in recs.values()}
        root = os.fsencode(ev.mount)
        gone: dict[int, Recording] = {}
        for r in self.ledger.unconfirmed_wipes(ev.serial):
            if r.id in recs or r.rel_path in scanned:
                continue
            try:
                os.lstat(os.path.join(root, r.rel_path))
            except FileNotFoundError:
                gone[r.id] = r
            except OSError:
                pass            # unreadable (EIO, EACCES): absence unproven, not ours to record
        return {i: r.session_id for i, r in gone.items()}

    def _set_phase(self, sid: int, live: LiveSession, phase: Phase, lg: Any) -> None:
        if live.phase != phase.value:
            live.phase = phase.value
            self.ledger.set_phase(sid, phase)
            log.emit(lg, f"session.{phase.value}")
            self._changed(live, phase.value)

    def _scan_and_spool(self, ev: CameraDocked, profile: Profile, sid: int, lg: Any, live: LiveSession,
                        cancel: threading.Event, recs: dict[int, Recording],
                        failed: list[tuple[str, str]],
                        progress: Callable[[LiveSession, int], None] | None) -> bool:
        """One pass: list the camera, spool what is not safe yet. True if a file changed under us."""
        self._set_phase(sid, live, Phase.SCANNING, lg)

        def on_skip(rel: bytes, reason: str) -> None:
            log.emit(lg, "scan.skipped", path=naming.safe_component(os.fsdecode(rel), 200), reason=reason)

        def on_marker_error(rel: bytes, reason: str) -> None:
            log.emit(lg, "recording.marker_unreadable", path=naming.safe_component(os.fsdecode(rel), 200),
                     reason=reason)

        res = scan(ev.mount, profile, on_skip)
        live.primary_of = {e.rel_path: e.primary for e in res.entries if e.primary is not None}
        found_markers = flags.markers(ev.mount, res.entries, profile.flag_from, on_marker_error)
        recs.clear()
        with self.ledger.tx():      # one commit for the whole listing, not one per file
            for e in res.entries:
                marker = found_markers.get(e.rel_path)
                rec = self.ledger.upsert_found(ev.serial, sid, profile.name, e.rel_path, e.size, e.mtime_ns,
                                               e.role, flagged=flags.is_event(marker))
                if marker is not None:
                    self._note_marker(rec, marker, lg)
                if rec.state == RecState.ATTENTION and not rec.spool_path:
                    rec = self.ledger.transition(rec.id, RecState.FOUND, error=None)
                self.ledger.supersede(ev.serial, e.rel_path, rec.id)
                recs[rec.id] = rec
        log.emit(lg, "scan.done", recordings=sum(1 for e in res.entries if e.role == "recording"),
                 sidecars=sum(1 for e in res.entries if e.role == "sidecar"), bytes=res.bytes,
                 ignored=res.ignored, skipped=len(res.skipped))
        live.total = len(recs)
        live.total_bytes = res.bytes
        live.spooled_bytes = sum(r.size for r in recs.values() if r.state.is_safe)
        self._set_phase(sid, live, Phase.SPOOLING, lg)
        changed = False
        group = GroupCommit(self.spool, lambda done: self._commit_spooled(done, lg))
        try:
            # one read of every state; only this session spools this camera's recordings
            for rec in sorted(self.ledger.get_many(recs), key=spool_order):
                if rec.state in (RecState.SPOOLED, RecState.UPLOADED) or (
                        rec.state == RecState.FAILED and rec.spool_path):
                    self.uploader.submit(rec)
                    continue
                if rec.state not in (RecState.FOUND, RecState.FAILED):
                    continue
                outcome = self._spool_one(ev, rec, lg, live, cancel, progress, failed, group)
                changed = changed or outcome == "changed"
            group.flush()
        except DeviceGoneError:
            group.flush()          # the group's files were read whole before the camera left
            raise
        finally:
            group.close()          # after any other error, what was not handed over is copied again
        live.current = None
        return changed

    def _commit_spooled(self, group: list[Spooled], lg: Any) -> None:
        """A durable group: ``spooled`` for all of it in one commit, then their uploads."""
        done: list[tuple[Spooled, Recording]] = []
        with self.ledger.tx():
            for sp, rec in zip(group, self.ledger.get_many(sp.rec_id for sp in group)):
                key = naming.object_key(self.cfg.store.prefix, self.cfg.station.id, rec.serial, rec.rel_path,
                                        rec.mtime_ns, sp.plain_sha256)
                done.append((sp, self.ledger.transition(
                    rec.id, RecState.SPOOLED, event="recording.spooled", plain_sha256=sp.plain_sha256,
                    cipher_sha256=sp.cipher_sha256, cipher_size=sp.cipher_size, object_key=key,
                    spool_path=str(sp.path))))
        for sp, rec in done:
            log.emit(lg.bind(recording=rec.name, sha256=sp.plain_sha256), "recording.spooled", size=rec.size,
                     cipher_sha256=sp.cipher_sha256, seconds=round(sp.seconds, 3))
            self.uploader.submit(rec, fresh=True)

    def _spool_one(self, ev: CameraDocked, rec: Recording, lg: Any, live: LiveSession,
                   cancel: threading.Event, progress: Callable[[LiveSession, int], None] | None,
                   failed: list[tuple[str, str]], group: GroupCommit) -> str:
        """Spool one recording into ``group`` (which commits ``spooled`` and queues the
        upload once it is durable). Returns "ok", "changed" or "failed". Raises
        DeviceGoneError when the camera left."""
        rlg = lg.bind(recording=rec.name)
        live.current = rec.name
        before = live.spooled_bytes

        def on_bytes(n: int) -> None:
            live.spooled_bytes += n
            if progress:
                progress(live, n)

        while True:
            self._wait_for_spool_space(cancel, rlg, live, group)
            try:
                group.spool(ev.mount / os.fsdecode(rec.rel_path), rec.id, rec.size, rec.mtime_ns,
                            cancel, on_bytes)
                live.unreadable_in_a_row = 0
                return "ok"
            except SpoolFullError as exc:
                live.spooled_bytes = before
                if not self.cfg.spool.min_free:
                    self._fail_read(rec, rlg, exc, failed)
                    return "failed"
                log.emit(rlg, "spool.pressure", free=self.spool.free_bytes(),
                         min_free=self.cfg.spool.min_free)
                group.flush()              # its uploads free the space this file needs
                if cancel.wait(SPOOL_WAIT_SECONDS):
                    raise DeviceGoneError("camera undocked while waiting for spool space") from exc
            except FileChangedError as exc:
                live.spooled_bytes = before
                log.emit(rlg, "recording.changed", error=str(exc))
                self.ledger.transition(rec.id, RecState.FAILED, error=str(exc), count_attempt=True)
                return "changed"
            except DeviceGoneError as exc:
                live.spooled_bytes = before
                if (cancel.is_set() or self.stopping or cancel.wait(READ_ERROR_GRACE_SECONDS)
                        or live.unreadable_in_a_row + 1 >= MAX_UNREADABLE_IN_A_ROW
                        or not _camera_answers(ev, live.root_dev)):
                    raise
                # the camera is still here and answering: this file is unreadable (a bad sector),
                # the camera is not gone. Its other recordings are still worth copying; one bad
                # file must not stop every dock of this camera at the same place
                live.unreadable_in_a_row += 1
                self._fail_read(rec, rlg, exc, failed)
                return "failed"
            except SourceError as exc:
                live.spooled_bytes = before
                if not _is_mounted(ev.mount):
                    raise DeviceGoneError(f"camera gone: {exc}") from exc
                self._fail_read(rec, rlg, exc, failed)
                return "failed"

    def _note_marker(self, rec: Recording, marker: str, lg: Any) -> None:
        """Remember the marker; a flagged recording gets one ``recording.flagged`` audit
        event (its evidence of why it is under legal hold), not one per dock."""
        self._markers[rec.id] = marker
        if not rec.flagged:
            return
        last = self.ledger.last_event("recording.flagged", recording_id=rec.id)
        if last is None or json.loads(last["data"]).get("marker") != marker:
            self.ledger.append_event("recording.flagged", serial=rec.serial, session_id=rec.session_id,
                                     recording_id=rec.id, path=rec.name, marker=marker,
                                     retention_class=manifest.EVIDENTIAL)
            log.emit(lg.bind(recording=rec.name), "recording.flagged", marker=marker)

    def _fail_read(self, rec: Recording, lg: Any, exc: DockdError, failed: list[tuple[str, str]]) -> None:
        self.ledger.transition(rec.id, RecState.FAILED, event="recording.read_failed", error=str(exc),
                               count_attempt=True)
        log.emit(lg, "recording.read_failed", error=str(exc))
        failed.append((rec.name, str(exc)))

    def _wait_uploads(self, sid: int, recs: dict[int, Recording], lg: Any, live: LiveSession,
                      cancel: threading.Event) -> bool:
        """Wait until every recording of this dock is settled. True if some must be copied again
        (their spool copy was lost or corrupt while the camera is still here).

        A recording the upload pool holds (queued or uploading) is never settled,
        whatever its ledger state says: after a restart, recordings that had given
        up are queued again while still ``failed``."""
        self._set_phase(sid, live, Phase.UPLOADING, lg)
        after_spooled = self.cfg.wipe.after == "spooled"
        unsettled = [s for s in RecState if s not in SETTLED]
        while True:
            busy = self.uploader.busy_ids()
            delayed = self.uploader.delayed_ids()
            pending = []
            # one query, and only the unsettled: on a camera of 10,000 photos this loop
            # must not rebuild 10,000 records every half second
            for r in self.ledger.recordings(session_id=sid, states=unsettled):
                if r.id not in recs:
                    continue
                if after_spooled and r.is_durable:
                    continue
                if r.id in busy:
                    pending.append(r.id)
                    continue
                if r.state == RecState.FAILED and not r.spool_path:
                    continue          # could not be read this time: left on the camera
                if r.state == RecState.FAILED and (r.next_attempt_at is None or not self.patient):
                    continue          # gave up (permanent) or a one-shot run: reported
                if r.state == RecState.FOUND and r.spool_path is None:
                    return True       # back to found: copy again
                if r.spool_path and r.id not in delayed:
                    self.uploader.submit(r)   # spooled but held by nobody: never strand it
                pending.append(r.id)
            # one a worker is still finishing is not settled either, though the ledger says
            # verified: its batch has committed but not yet logged it and removed its spool
            # copy. Only those, moments of work: an upload still under way is waited for
            # above, or (after spooled) not at all. (A wipe in that window would be harmless:
            # a wiped recording's leftover copy is removed at the next start.)
            finishing = [i for i in self.uploader.active_ids() if i in recs and i not in pending]
            if finishing:
                pending += [r.id for r in self.ledger.get_many(finishing) if r.state in SETTLED]
            if not pending:
                return False
            if not self.patient and self.uploader.paused:
                return False          # auth refused: a one-shot run reports instead of hanging
            if cancel.is_set():
                raise DeviceGoneError("camera undocked while uploads were pending")
            self.uploader.wait_idle(pending, timeout=0.5)
            cancel.wait(0.05)

    def _store_manifest(self, sid: int, recs: list[Recording], lg: Any,
                        notes: dict[int, str] | None = None) -> None:
        session = self.ledger.session(sid)
        if session is None:
            return
        head = self.ledger.events(limit=1)
        markers = {r.id: m for r in recs if (m := self.marker(r)) is not None}
        doc = manifest.build(self.cfg.station.id, session, recs, released_at=time.time(), markers=markers,
                             notes=notes,
                             retention_class=self.cfg.store.retention_class,
                             signer=self.station_key.fingerprint,
                             audit_head={"event": head[-1]["id"], "hash": head[-1]["hash"]} if head else None)
        data = manifest.dumps(doc)
        signature = self.station_key.sign(data, custody.MANIFEST_NAMESPACE).encode()
        key = naming.manifest_key(self.cfg.store.prefix, self.cfg.station.id, session["serial"], sid,
                                  session["docked_at"])
        sig_key = key + custody.SIG_SUFFIX
        # unique names: nothing else may write these between write_bytes and put's read
        tag = f"{sid}-{os.getpid()}-{threading.get_ident()}"
        path = self.spool.root / f"manifest-{tag}.json"
        sig_path = self.spool.root / f"manifest-{tag}.json.sig"
        meta = {"camera": session["serial"], "station": self.cfg.station.id}
        try:
            # the manifest first: a signature is never in the store without what it signs
            for k, p, body, kind in ((key, path, data, "manifest"), (sig_key, sig_path, signature, "signature")):
                p.write_bytes(body)
                blob = Blob(p, len(body), hashlib.sha256(body).hexdigest(), meta | {"kind": kind})
                self.store.put(k, blob, MemoryCheckpoint())
                self.store.verify(k, blob)
            self.ledger.set_manifest(sid, key)
            self.ledger.append_event("manifest.uploaded", serial=session["serial"], session_id=sid, key=key,
                                     sha256=hashlib.sha256(data).hexdigest(), signature=sig_key,
                                     signer=self.station_key.fingerprint)
            log.emit(lg, "manifest.uploaded", key=key, signer=self.station_key.fingerprint)
        except (DockdError, OSError) as exc:      # OSError: the manifest's spool copy (a full disk)
            log.emit(lg, "manifest.failed", error=str(exc))
        finally:
            path.unlink(missing_ok=True)
            sig_path.unlink(missing_ok=True)


def _once(fn: Callable[[], None] | None) -> Callable[[], None] | None:
    """``fn``, run at most once however often it is called: a camera is released once."""
    if fn is None:
        return None
    called: list[bool] = []

    def once() -> None:
        if not called:
            called.append(True)
            fn()
    return once


def spool_order(rec: Recording) -> tuple[bool, int, bytes]:
    """The order a camera is read in: evidential footage first (a camera pulled early
    leaves the rest behind, not that), then oldest first, as the upload queue takes them."""
    return (not rec.flagged, rec.mtime_ns, rec.rel_path)


def _complete_groups(recs: list[Recording], primary_of: dict[bytes, bytes]) -> list[Recording]:
    """The recordings the wipe may touch: a recording goes only together with all of
    its sidecars (each verified), so no sidecar is ever left on the camera without the
    recording that makes the next scan see it as ours."""
    blocked = {primary_of[r.rel_path] for r in recs
               if r.rel_path in primary_of and r.state != RecState.VERIFIED}
    return [r for r in recs if r.rel_path not in blocked]


def _camera_answers(ev: CameraDocked, root_dev: int | None) -> bool:
    """Still mounted at its mount point and listing its root, and its device (where it has
    one) still reads its first block past every cache. A FUSE helper answers listings from
    memory, so the device itself is asked."""
    if not _is_mounted(ev.mount):
        return False
    try:
        if root_dev is not None and os.stat(ev.mount).st_dev != root_dev:
            return False            # an emptied mount point (lazily unmounted) is not the camera
    except OSError:
        return False
    return ev.device is None or _device_reads(ev.device)


def _device_reads(device: str) -> bool:
    """One 4 KiB read of the device's first block with O_DIRECT (the page cache cannot
    answer for a dead card). Where O_DIRECT or opening the device is refused (an
    unprivileged dockd), the node's presence is all we can ask."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0))
    except OSError as exc:
        return exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM) and os.path.exists(device)
    try:
        buf = mmap.mmap(-1, 4096)          # page-aligned, as O_DIRECT needs
        try:
            return os.preadv(fd, [buf], 0) > 0
        finally:
            buf.close()
    except OSError as exc:
        return exc.errno == errno.EINVAL   # O_DIRECT refused for this read: not a device error
    finally:
        os.close(fd)


def _is_mounted(path: Path) -> bool:
    try:
        os.stat(path)
        os.listdir(path)
    except OSError:
        return False
    return True
