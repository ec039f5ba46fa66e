"""One docked camera, from dock to release: its facts are the fields, its phases the methods.

``Session.run`` is the whole path for one camera: ``scan`` and ``spool`` (up to three
passes, while files change under it), ``settle`` (wait for the uploads), ``wipe``, and
``finish`` (the manifest, what was not done, the camera released, the phase it ends
in). It is used by ``dockd ingest`` (one-shot) and by the daemon (many at once), and
may run again for the same camera after any crash or undock: the ledger lets it skip
what is already safe, wipe what is verified and copy the rest.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import flags, log
from ..device.events import CameraDocked
from ..device.profiles import Profile
from ..errors import (
    GONE_ERRNOS,
    DeviceGoneError,
    DockdError,
    FileChangedError,
    SourceError,
    SpoolExhaustedError,
    SpoolFullError,
)
from ..ledger import Ledger
from ..model import Phase, RecState, Recording, display_path
from ..pipeline import naming
from ..pipeline.content import Sample, rehash
from ..pipeline.scan import scan
from ..pipeline.spool import GroupCommit, Spooled
from ..pipeline.wipe import wipe
from .backpressure import WAIT_SECONDS
from .camera import Lost, how_lost, is_lost_after_read_error, is_mounted

if TYPE_CHECKING:
    from ..station import Station

MAX_SCAN_PASSES = 3
# the session error when the daemon, not the camera, ended a session; it resumes at the next start
STOPPED_ERROR = "dockd stopped; resumes at the next start"
# directories a session's error names when a scan could not list some (the log names them all)
MAX_NAMED_DIRS = 5
# recording states nothing more happens to in a session: what its wait for uploads ends on
SETTLED = frozenset({RecState.VERIFIED, RecState.WIPED, RecState.ATTENTION, RecState.SUPERSEDED})


@dataclass
class LiveSession:
    """A session's progress, as status, hooks and progress bars see it."""

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
    docked_at: float = field(default_factory=time.time)


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
    unlisted: list[tuple[str, str]] = field(default_factory=list)   # directories never listed, why

    @property
    def ok(self) -> bool:
        return self.phase == Phase.DONE


@dataclass
class Hooks:
    """What the caller of ``Session.run`` gives it. ``cancel``: set when the camera leaves
    its bay (None: nothing reports undocks, as in ``dockd ingest``). ``release``: sync and
    unmount the camera (called once). ``reader``: caps how many cameras are read at once
    (held while scanning and spooling only). ``progress``: told of each block copied."""

    cancel: threading.Event | None = None
    progress: Callable[[LiveSession, int], None] | None = None
    release: Callable[[], None] | None = None
    reader: threading.Semaphore | None = None


def spool_order(rec: Recording) -> tuple[bool, int, bytes]:
    """The order a camera is read in: evidential footage first (a camera pulled early
    leaves the rest behind, not that), then oldest first, as the upload queue takes them."""
    return (not rec.flagged, rec.mtime_ns, rec.rel_path)


class Session:
    """One docked camera. Built by ``Station.run_session`` with what the station has now
    (recipients, wipe rule, profile): a reload changes none of them under a running session."""

    def __init__(self, station: "Station", ev: CameraDocked, profile: Profile, hooks: Hooks) -> None:
        self.station = station
        self.ledger = station.ledger
        self.ev = ev
        self.profile = profile
        self.recipients = list(station.recipients)
        self.wipe_after = station.cfg.wipe.after
        self.watched = hooks.cancel is not None
        self.cancel = hooks.cancel or threading.Event()
        self.progress = hooks.progress
        self.release = _once(hooks.release)
        self.reader = hooks.reader or threading.Semaphore(1)
        self.id = self.ledger.open_session(ev.serial, profile.name, str(ev.mount), ev.device, ev.bay,
                                           ev.usb.as_dict())
        self.lg = station.log.bind(camera=ev.serial, session=self.id)
        self.live = LiveSession(self.id, ev.serial, profile.name, bay=ev.bay)
        self.recs: dict[int, Recording] = {}             # this dock's recordings, by ledger id
        self.failed: list[tuple[str, str]] = []          # (name, why) not copied, or not wiped
        self.refused: list[tuple[str, str]] = []         # (name, why) the wipe would not delete
        self.notes: dict[int, str] = {}                  # recording id → what the manifest says of it
        self.phase = Phase.DONE                          # the phase it ends in, unless lost
        self.camera_failed: str | None = None            # its I/O failed while it stayed in its bay
        self.root_dev: int | None = None                 # the camera root's st_dev when it began
        self.unreadable_in_a_row = 0                     # files failed with a device error in a row
        # each recording's content sample, taken as this session read its file: the wipe
        # deletes only files whose sample still matches (pipeline/content.py)
        self.samples: dict[int, Sample] = {}
        # recordings whose file the camera replaced with other content under their identity
        self.replaced: dict[int, str] = {}
        self.unlisted: list[tuple[str, str]] = []        # the last scan's unlistable directories
        self.primary_of: dict[bytes, bytes] = {}         # sidecar → its recording
        self.held: dict[bytes, str] = {}                 # recording → why it stays (a sidecar untaken)

    # -- the whole path -----------------------------------------------------------

    def run(self) -> SessionOutcome:
        log.emit(self.lg, "device.docked", profile=self.profile.name, device=self.ev.device,
                 bay=self.ev.bay, mount=str(self.ev.mount))
        self.station.sessions.begin(self)
        self.station.changed(self.live, "docked")
        try:
            try:
                self._copy_and_wipe()
            except DeviceGoneError as exc:
                self._lost(exc)
        except Exception as exc:
            self._crashed(exc)
            raise
        finally:
            self.station.sessions.end(self)
        try:
            final = self.ledger.get_many(self.recs)
            if self.phase != Phase.INTERRUPTED:
                self.finish(final)
        except Exception as exc:
            self._crashed(exc)
            raise
        if self.watched and self.cancel.is_set() and not self.station.stopping:
            # pulled out after the session was done with the camera (or during its grace):
            # the daemon skips a session still running, so the bay's emptiness is recorded here
            self.ledger.mark_undocked(self.id)
        self.station.markers.forget(r.id for r in final if r.state in SETTLED)
        self.live.safe_to_undock = True
        return SessionOutcome(
            self.id, self.phase, len(final),
            sum(1 for r in final if r.state in (RecState.VERIFIED, RecState.WIPED)),
            sum(1 for r in final if r.state == RecState.WIPED),
            self.failed, self.refused, sum(r.size for r in final), list(self.unlisted))

    def _copy_and_wipe(self) -> None:
        try:
            self.root_dev = os.stat(self.ev.mount).st_dev
        except OSError as exc:
            raise DeviceGoneError(f"camera root unreadable: {exc.strerror}") from exc
        for _pass in range(MAX_SCAN_PASSES):
            with self.reader:
                changed = self.scan()
                changed = self.spool() or changed
            again = self.settle()
            if not changed and not again:
                break
            self.failed.clear()
        self.wipe()
        if self.cancel.is_set():
            raise DeviceGoneError("camera undocked")

    def _lost(self, exc: DeviceGoneError) -> None:
        """The camera's I/O failed: stopped, pulled out, or failed where it sits."""
        try:
            lost = how_lost(self.ev, self.cancel, watched=self.watched, stopping=lambda: self.station.stopping,
                            graces=self.station.graces)
            if lost is Lost.STOPPED:
                # not an undock: the ledger keeps the phase reached (the camera is still in its
                # bay), and the next start interrupts it and opens a fresh session
                self.phase = Phase.INTERRUPTED
                self.live.last_error = STOPPED_ERROR
                self.ledger.set_phase(self.id, Phase(self.live.phase), error=STOPPED_ERROR)
            elif lost is Lost.FAILED_IN_BAY:
                # nothing more is asked of it; the session ends in attention, and the bay says it
                # is safe to undock, not "interrupted" for ever
                self.camera_failed = str(exc)
                self.ledger.append_event("session.camera_failed", serial=self.ev.serial, session_id=self.id,
                                         error=self.camera_failed)
                log.emit(self.lg, "session.camera_failed", error=self.camera_failed)
            else:
                self.phase = Phase.INTERRUPTED
                self.live.last_error = str(exc)
                self.live.phase = self.phase.value
                self.ledger.set_phase(self.id, Phase.INTERRUPTED, error=str(exc))
                log.emit(self.lg, "session.interrupted", error=str(exc))
                self.ledger.mark_undocked(self.id)
                self.station.changed(self.live, self.phase.value)
        except Exception as inner:     # the ledger failed recording it: as in the middle
            self._crashed(inner)
            raise

    def _crashed(self, exc: Exception) -> None:
        """A bug, or a ledger that cannot be written: a human must look, and the bay must
        not show its last phase for ever. The camera is released (synced, unmounted);
        nothing else touches it again (an unconfirmed deletion is confirmed at its next
        dock). The caller re-raises."""
        self.live.last_error = f"internal error: {exc}"
        self.live.phase = Phase.ATTENTION.value
        with contextlib.suppress(Exception):
            self.ledger.set_phase(self.id, Phase.ATTENTION, error=self.live.last_error)
        if self.release is not None:
            with contextlib.suppress(Exception):
                self.release()
        self.live.safe_to_undock = True
        self.station.changed(self.live, self.live.phase)

    def _set_phase(self, phase: Phase) -> None:
        if self.live.phase != phase.value:
            self.live.phase = phase.value
            self.ledger.set_phase(self.id, phase)
            log.emit(self.lg, f"session.{phase.value}")
            self.station.changed(self.live, phase.value)

    # -- scan -----------------------------------------------------------------------

    def scan(self) -> bool:
        """List the camera and record what it holds; re-check what was copied at an earlier
        dock. True if a file changed while it was read (scan again)."""
        self._set_phase(Phase.SCANNING)
        lg = self.lg

        def on_skip(rel: bytes, reason: str) -> None:
            log.emit(lg, "scan.skipped", path=naming.safe_component(os.fsdecode(rel), 200), reason=reason)

        def on_marker_error(rel: bytes, reason: str) -> None:
            log.emit(lg, "recording.marker_unreadable", path=naming.safe_component(os.fsdecode(rel), 200),
                     reason=reason)

        res = scan(self.ev.mount, self.profile, on_skip)
        self.unlisted = self._unlisted(res.unlisted)
        self.primary_of = {e.rel_path: e.primary for e in res.entries if e.primary is not None}
        self.held = res.held
        markers = flags.markers(self.ev.mount, res.entries, self.profile.flag_from, on_marker_error)
        self.recs.clear()
        with self.ledger.tx():      # one commit for the whole listing, not one per file
            for e in res.entries:
                rec = self._found(e.rel_path, e.size, e.mtime_ns, e.role, markers.get(e.rel_path))
                if rec.state == RecState.ATTENTION and not rec.spool_path:
                    rec = self.ledger.transition(rec.id, RecState.FOUND, error=None)
                self.ledger.supersede(self.ev.serial, e.rel_path, rec.id)
        log.emit(lg, "scan.done", recordings=sum(1 for e in res.entries if e.role == "recording"),
                 sidecars=sum(1 for e in res.entries if e.role == "sidecar"), bytes=res.bytes,
                 ignored=res.ignored, skipped=len(res.skipped))
        self.live.total = len(self.recs)
        self.live.total_bytes = res.bytes
        self._set_phase(Phase.SPOOLING)
        return self._recheck(markers)

    def _found(self, rel: bytes, size: int, mtime_ns: int, role: str, marker: str | None) -> Recording:
        rec = self.ledger.upsert_found(self.ev.serial, self.id, self.profile.name, rel, size, mtime_ns, role,
                                       flagged=flags.is_event(marker))
        if marker is not None:
            self.station.markers.note(rec, marker, self.lg)
        self.recs[rec.id] = rec
        return rec

    def _unlisted(self, unlisted: list[tuple[bytes, OSError]]) -> list[tuple[str, str]]:
        """The directories a scan could not list, escaped, each with why: the session ends in
        attention for them. A listing that failed as a vanished camera's does (EIO, ENOTCONN...)
        is the camera gone unless the camera still answers, as for a file that fails to read:
        then it is a bad directory, not a dead camera. Raises DeviceGoneError for a camera gone."""
        gone = [(rel, exc) for rel, exc in unlisted if exc.errno in GONE_ERRNOS]
        if gone and self._is_camera_lost():
            rel, exc = gone[0]
            raise DeviceGoneError(f"cannot list {display_path(rel)}: {exc.strerror} (camera gone?)")
        out = []
        for rel, exc in unlisted:
            name, why = display_path(rel), exc.strerror or str(exc)
            log.emit(self.lg, "scan.unlisted", path=name, error=why)
            out.append((name, why))
        return out

    def _recheck(self, markers: dict[bytes, str]) -> bool:
        """Re-read in full, and re-hash, every file whose copy was made at an earlier dock,
        before anything else happens to it: its identity (path, size, mtime) says it is the
        file copied then, which proves nothing about its content. A match gives the file
        its sample for the wipe. A file that differs is a new recording under an old
        identity: the old one keeps its copy and no longer stands for the file
        (``Ledger.mark_replaced``), and the file is found anew, to be copied in this pass.
        A file that cannot be read now keeps no sample: the wipe refuses it, and says why.
        True if a file changed while it was read (scan again)."""
        changed = False
        for rec in sorted(self.ledger.get_many(self.recs), key=spool_order):
            if rec.id in self.samples or not (rec.is_durable and rec.plain_sha256):
                continue
            if self.cancel.is_set():
                raise DeviceGoneError("camera undocked")
            digest = self._rehash(rec)
            if digest == "changed":
                changed = True
            elif digest is not None and digest != rec.plain_sha256:
                self._replaced(rec, digest, markers.get(rec.rel_path))
        self.live.current = None
        return changed

    def _rehash(self, rec: Recording) -> str | None:
        """The file's SHA-256 now (its sample kept if it matches ``rec``), "changed", or None
        when it cannot be read."""
        rlg = self.lg.bind(recording=rec.name, sha256=rec.plain_sha256)
        self.live.current = rec.name
        try:
            digest, sample = rehash(os.path.join(os.fsencode(self.ev.mount), rec.rel_path), rec.size,
                                    rec.mtime_ns)
        except FileChangedError as exc:
            log.emit(rlg, "recording.changed", error=str(exc))
            return "changed"
        except DeviceGoneError as exc:
            if self._is_camera_lost():
                raise
            log.emit(rlg, "recording.read_failed", error=str(exc))
            return None
        except SourceError as exc:
            if not is_mounted(self.ev.mount):
                raise DeviceGoneError(f"camera gone: {exc}") from exc
            log.emit(rlg, "recording.read_failed", error=str(exc))
            return None
        self.unreadable_in_a_row = 0
        if digest == rec.plain_sha256:
            self.samples[rec.id] = sample
        return digest

    def _replaced(self, rec: Recording, digest: str, marker: str | None) -> None:
        why = (f"the camera holds different content (sha256 {digest[:16]}) under this recording's"
               f" path, size and mtime; the copy of session {rec.session_id} stays in the store as it was")
        self.ledger.mark_replaced(rec.id, why)
        log.emit(self.lg.bind(recording=rec.name, sha256=rec.plain_sha256), "recording.replaced",
                 object_key=rec.object_key, error=why)
        self.replaced[rec.id] = why
        del self.recs[rec.id]
        self._found(rec.rel_path, rec.size, rec.mtime_ns, rec.role, marker)

    def _is_camera_lost(self) -> bool:
        """After a read failed as a dead device's would (see ``camera``); counts the files
        that failed in a row while the camera still answered."""
        graces = self.station.graces
        if (self.unreadable_in_a_row + 1 >= graces.max_unreadable_in_a_row
                or is_lost_after_read_error(self.ev, self.cancel, self.root_dev, graces,
                                            stopping=self.station.stopping)):
            return True
        self.unreadable_in_a_row += 1
        return False

    # -- spool ----------------------------------------------------------------------

    def spool(self) -> bool:
        """Copy what is not safe yet into the spool; what is spooled already goes to the upload
        pool. True if a file changed under us."""
        self.live.spooled_bytes = sum(r.size for r in self.recs.values() if r.state.is_safe)
        group = GroupCommit(self.station.spool, self._commit_spooled, self.recipients)
        changed = False
        try:
            # one read of every state; only this session spools this camera's recordings
            for rec in sorted(self.ledger.get_many(self.recs), key=spool_order):
                if rec.state in (RecState.SPOOLED, RecState.UPLOADED) or (
                        rec.state == RecState.FAILED and rec.spool_path):
                    self.station.uploader.submit(rec)
                elif rec.state in (RecState.FOUND, RecState.FAILED):
                    changed = self._spool_one(rec, group) == "changed" or changed
            group.flush()
        except DeviceGoneError:
            group.flush()          # the group's files were read whole before the camera left
            raise
        finally:
            group.close()          # after any other error, what was not handed over is copied again
        self.live.current = None
        return changed

    def _commit_spooled(self, group: list[Spooled]) -> None:
        """A durable group: ``spooled`` for all of it in one commit, then their uploads."""
        cfg, ledger_id = self.station.cfg, self.ledger.ledger_id
        done: list[tuple[Spooled, Recording]] = []
        with self.ledger.tx():
            for sp, rec in zip(group, self.ledger.get_many(sp.rec_id for sp in group)):
                key = naming.object_key(cfg.store.prefix, cfg.station.id, rec.serial, rec.rel_path,
                                        rec.mtime_ns, sp.plain_sha256, rec.id, ledger_id)
                done.append((sp, self.ledger.transition(
                    rec.id, RecState.SPOOLED, event="recording.spooled", plain_sha256=sp.plain_sha256,
                    cipher_sha256=sp.cipher_sha256, cipher_size=sp.cipher_size, object_key=key,
                    spool_path=str(sp.path))))
        for sp, rec in done:
            log.emit(self.lg.bind(recording=rec.name, sha256=sp.plain_sha256), "recording.spooled",
                     size=rec.size, cipher_sha256=sp.cipher_sha256, seconds=round(sp.seconds, 3))
            self.station.uploader.submit(rec, fresh=True)

    def _spool_one(self, rec: Recording, group: GroupCommit) -> str:
        """Spool one recording into ``group`` (which commits ``spooled`` and queues the upload
        once it is durable). Returns "ok", "changed" or "failed". Raises DeviceGoneError when
        the camera left."""
        rlg = self.lg.bind(recording=rec.name)
        self.live.current = rec.name
        before = self.live.spooled_bytes
        need = 0                 # after a write that found the disk full: room for this file
        while True:
            try:
                self.station.gate.wait(self.cancel, rlg, self._show_error, group, need)
                sp = group.spool(self.ev.mount / os.fsdecode(rec.rel_path), rec.id, rec.size, rec.mtime_ns,
                                 self.cancel, self._on_bytes)
            except SpoolExhaustedError as exc:
                self._give_up(rec, rlg, exc)
                return "failed"
            except SpoolFullError as exc:
                self.live.spooled_bytes = before
                need = rec.size
                if not self._room_may_come(rec, rlg, exc, group):
                    return "failed"
                continue
            except DockdError as exc:
                self.live.spooled_bytes = before
                return self._read_failed(rec, rlg, exc)
            if sp.sample is not None:
                self.samples[rec.id] = sp.sample
            self.unreadable_in_a_row = 0
            self.station.gate.relieved()
            return "ok"

    def _on_bytes(self, n: int) -> None:
        self.live.spooled_bytes += n
        if self.progress:
            self.progress(self.live, n)

    def _show_error(self, error: str | None) -> None:
        self.live.last_error = error

    def _room_may_come(self, rec: Recording, rlg: Any, exc: SpoolFullError, group: GroupCommit) -> bool:
        """A write found the spool's disk full. True to try again (after a wait) while dockd's
        own uploads may free room; False once the recording was given up on."""
        gate, min_free = self.station.gate, self.station.cfg.spool.min_free
        if not min_free:
            self._fail(rec, rlg, exc, "recording.read_failed")
            return False
        log.emit(rlg, "spool.pressure", free=self.station.spool.free_bytes(), min_free=min_free)
        group.flush()              # its uploads free the space this file needs
        # a disk that refuses writes whatever it reports free (no inodes left): given up on,
        # like a full one, once no upload of dockd's can change anything
        if gate.is_hopeless():
            self._give_up(rec, rlg, gate.exhausted(rec.size))
            return False
        if self.cancel.wait(WAIT_SECONDS):
            raise DeviceGoneError("camera undocked while waiting for spool space") from exc
        return True

    def _read_failed(self, rec: Recording, rlg: Any, exc: DockdError) -> str:
        """The camera file could not be read whole: changed under us, the camera gone, or this
        file unreadable (left on the camera, read again at its next dock)."""
        if isinstance(exc, FileChangedError):
            log.emit(rlg, "recording.changed", error=str(exc))
            self.ledger.transition(rec.id, RecState.FAILED, error=str(exc), count_attempt=True)
            return "changed"
        if not isinstance(exc, SourceError):
            raise exc                    # the spool or the ledger failed: not the camera's doing
        if isinstance(exc, DeviceGoneError):
            if self._is_camera_lost():
                raise exc
        elif not is_mounted(self.ev.mount):
            raise DeviceGoneError(f"camera gone: {exc}") from exc
        self._fail(rec, rlg, exc, "recording.read_failed")
        return "failed"

    def _give_up(self, rec: Recording, rlg: Any, exc: SpoolExhaustedError) -> None:
        """No room in the spool, and none coming: the recording is left on the camera (read
        again at its next dock); the session goes on, ends in attention and releases it."""
        self._fail(rec, rlg, exc, "spool.exhausted", spool=str(self.station.spool.root),
                   free=self.station.spool.free_bytes(), min_free=self.station.cfg.spool.min_free)

    def _fail(self, rec: Recording, rlg: Any, exc: DockdError, event: str, **fields: Any) -> None:
        self.ledger.transition(rec.id, RecState.FAILED, event=event, error=str(exc), count_attempt=True)
        log.emit(rlg, event, error=str(exc), **fields)
        self.failed.append((rec.name, str(exc)))

    # -- settle ---------------------------------------------------------------------

    def settle(self) -> bool:
        """Wait until every recording of this dock is settled. True if some must be copied
        again (their spool copy was lost or corrupt while the camera is still here)."""
        self._set_phase(Phase.UPLOADING)
        uploader = self.station.uploader
        while True:
            pending = self._pending()
            if pending is None:
                return True
            if not pending:
                return False
            if not self.station.patient and uploader.paused:
                return False          # auth refused: a one-shot run reports instead of hanging
            if self.cancel.is_set():
                raise DeviceGoneError("camera undocked while uploads were pending")
            uploader.wait_idle(pending, timeout=0.5)
            self.cancel.wait(0.05)

    def _pending(self) -> list[int] | None:
        """This dock's recordings not yet settled, or None if one is back to ``found`` (copy
        again). A recording the upload pool holds (queued or uploading) is never settled,
        whatever its ledger state says: after a restart, recordings that had given up are
        queued again while still ``failed``."""
        uploader = self.station.uploader
        busy, delayed = uploader.busy_ids(), uploader.delayed_ids()
        pending = []
        # one query, and only the unsettled: on a camera of 10,000 photos this loop must not
        # rebuild 10,000 records every half second
        for r in self.ledger.recordings(session_id=self.id, states=[s for s in RecState if s not in SETTLED]):
            if r.id not in self.recs or (self.wipe_after == "spooled" and r.is_durable):
                continue
            if r.id in busy:
                pending.append(r.id)
            elif r.state == RecState.FAILED and (not r.spool_path or r.next_attempt_at is None
                                                 or not self.station.patient):
                continue      # unreadable this time (left on the camera), given up, or one-shot
            elif r.state == RecState.FOUND and r.spool_path is None:
                return None
            else:
                if r.spool_path and r.id not in delayed:
                    uploader.submit(r)   # spooled but held by nobody: never strand it
                pending.append(r.id)
        # one a worker is still finishing is not settled either, though the ledger says
        # verified: its batch has committed but not yet logged it and removed its spool copy
        finishing = [i for i in uploader.active_ids() if i in self.recs and i not in pending]
        if finishing:
            pending += [r.id for r in self.ledger.get_many(finishing) if r.state in SETTLED]
        return pending

    # -- wipe -----------------------------------------------------------------------

    def wipe(self) -> None:
        self._set_phase(Phase.WIPING)
        absent = deleted_unconfirmed(self.ledger, self.ev, self.recs)
        self.recs.update({r.id: r for r in self.ledger.get_many(absent)})
        self.notes = {i: (f"not on the camera at this dock: the wipe of session {was} deleted it "
                          "and could not confirm the deletion") for i, was in absent.items()}
        self.unreadable_in_a_row = 0
        candidates = _complete_groups(self.ledger.get_many(self.recs), self.primary_of)
        reported = {name for name, _why in self.failed}
        for r in candidates:       # kept, whatever its state: a human must see to its sidecar
            if r.rel_path in self.held and r.name not in reported:
                self.failed.append((r.name, self.held[r.rel_path]))
                log.emit(self.lg.bind(recording=r.name), "wipe.failed", error=self.held[r.rel_path])
        result = wipe(self.ev.mount, [r for r in candidates if r.rel_path not in self.held],
                      self.ledger, self.lg, self.root_dev, self.samples, primary_of=self.primary_of,
                      is_lost=self._is_camera_lost)
        # only now: a wipe that stopped before confirming them leaves them to the session whose
        # wipe deleted them, which the next dock's note must still name
        self.ledger.claim([r.id for r in result.wiped if r.id in absent], self.id)
        self.refused += [(r.name, why) for r, why in result.refused]
        self.failed += [(r.name, why) for r, why in result.failed]

    # -- finish ---------------------------------------------------------------------

    def finish(self, final: list[Recording]) -> None:
        """A session that kept its camera to the end: its manifest (which also names the
        recordings whose file the camera replaced under their identity), what was not done,
        the camera released, and the phase it ends in (done or attention)."""
        self.station.publisher.publish(self.id, final + self.ledger.get_many(self.replaced),
                                       self.station.markers, self.lg, self.notes | self.replaced)
        self._not_done(final)
        self.phase = (Phase.ATTENTION if (self.failed or self.refused or self.camera_failed or self.unlisted)
                      else Phase.DONE)
        if self.release:
            self.release()
        error = self._error() if self.phase == Phase.ATTENTION else None
        if error:
            self.live.last_error = error
        self.live.phase = self.phase.value
        self.live.safe_to_undock = True
        self.ledger.set_phase(self.id, self.phase, error=error)
        phase = self.phase
        log.emit(self.lg, f"session.{phase.value}", recordings=len(final),
                 bytes=sum(r.size for r in final), error=error)
        self.station.changed(self.live, phase.value)

    def _not_done(self, final: list[Recording]) -> None:
        """Add to ``failed`` each recording not verified and wiped (with ``after = "spooled"``:
        not durable) that is not reported already: each recording once, with its first reason
        (a refused wipe as refused, a failed unlink as failed)."""
        if self.wipe_after == "spooled":
            not_done = [r for r in final if not r.is_durable]
        else:
            not_done = [r for r in final if r.state != RecState.WIPED]
        reported = {name for name, _why in self.refused + self.failed}
        for r in not_done:
            if r.name not in reported:    # each recording is reported once, with its first reason
                self.failed.append((r.name, r.last_error or f"still {r.state.value}"))

    def _error(self) -> str:
        error = f"{len(self.failed)} recording(s) not verified and wiped, {len(self.refused)} wipe(s) refused"
        if self.unlisted:
            names = ", ".join(name for name, _why in self.unlisted[:MAX_NAMED_DIRS])
            more = len(self.unlisted) - MAX_NAMED_DIRS
            error += (f"; {len(self.unlisted)} director(ies) could not be listed, nothing under them "
                      f"copied: {names}" + (f" and {more} more" if more > 0 else ""))
        if self.camera_failed:
            error = f"camera failed: {self.camera_failed}; {error}"
        return error


def deleted_unconfirmed(ledger: Ledger, ev: CameraDocked, recs: dict[int, Recording]) -> dict[int, int]:
    """This camera's recordings an earlier wipe began deleting (the ledger says so, durably,
    before any unlink) but never confirmed (the camera was pulled out, or failed its flush),
    whose files are not among ``recs`` (this scan's) and are absent now. Handed to the
    session's wipe, which finds each absent and records it wiped; the session takes those,
    and its manifest lists them. A file dockd never began deleting that has gone (a camera
    formatted by hand) stays verified: dockd did not delete it. Returns their ids, each with
    the session whose wipe began deleting it."""
    scanned = {r.rel_path for r in recs.values()}
    root = os.fsencode(ev.mount)
    gone: dict[int, int] = {}
    for r in ledger.unconfirmed_wipes(ev.serial):
        if r.id in recs or r.rel_path in scanned:
            continue
        try:
            os.lstat(os.path.join(root, r.rel_path))
        except FileNotFoundError:
            gone[r.id] = r.session_id or 0
        except OSError:
            pass            # unreadable (EIO, EACCES): absence unproven, not ours to record
    return gone


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


def _complete_groups(recs: list[Recording], primary_of: dict[bytes, bytes]) -> list[Recording]:
    """The recordings the wipe may touch: a recording goes only together with all of
    its sidecars (each verified), so no sidecar is ever left on the camera without the
    recording that makes the next scan see it as ours."""
    blocked = {primary_of[r.rel_path] for r in recs
               if r.rel_path in primary_of and r.state != RecState.VERIFIED}
    return [r for r in recs if r.rel_path not in blocked]
