"""Wipe: delete verified recordings from the camera, and only those.

Each file is re-stat'ed first (without following symlinks); if its size or
mtime differ from what was spooled and verified, or its head and tail blocks
no longer match the sample taken when this session read it (``content.py``),
it is refused (``wipe.refused``), never deleted on the strength of an old copy. After the
deletions the directories are fsynced, the camera's filesystem is synced, and
the files are listed again; only then is a deletion recorded (``wipe.done``).
A file whose re-stat or re-read fails as a bad sector does (EIO) while the camera
still answers is left, and the wipe goes on with the others (the session decides:
``is_lost``); a camera that no longer answers is gone or failing
(``DeviceGoneError``). A sidecar that stays keeps its recording on the camera too.
A camera that fails the flush (gone, or its media failing) confirms none of
this pass's deletions: the wipe raises ``DeviceGoneError``, and the session is
interrupted (pulled out) or ends in attention (failed in its bay: session/camera.py).
Before its first unlink the wipe notes, durably, what it is about to delete; cut
short, it withdraws the notes of the files it never tried or could not delete.

Idempotent: a verified file that is already gone (a crash, a pull-out or a
failed flush between unlink and commit) counts as wiped once the camera is
docked again (the session hands the wipe such recordings, which no scan finds).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import log
from ..errors import GONE_ERRNOS, DeviceGoneError
from ..fsutil import close_quietly, syncfs
from ..ledger import Ledger
from ..model import RecState, Recording
from .content import Sample


@dataclass
class WipeResult:
    wiped: list[Recording] = field(default_factory=list)
    refused: list[tuple[Recording, str]] = field(default_factory=list)
    failed: list[tuple[Recording, str]] = field(default_factory=list)


def _same_camera(root_b: bytes, root_dev: int | None) -> None:
    """Raise unless ``root`` is still the filesystem the session scanned. After a
    pull-out a lazily unmounted mount point shows the empty directory beneath it,
    where every file looks "already absent"; absence proves nothing there."""
    if root_dev is None:
        return
    try:
        dev = os.stat(root_b).st_dev
    except OSError as exc:
        raise DeviceGoneError(f"camera gone during wipe: {exc.strerror}") from exc
    if dev != root_dev:
        raise DeviceGoneError("camera gone during wipe: its mount point no longer holds it")


def wipe(root: Path, recs: list[Recording], ledger: Ledger, logger: Any,
         root_dev: int | None = None, samples: dict[int, Sample] | None = None, *,
         primary_of: dict[bytes, bytes] | None = None, is_lost: Callable[[], bool] | None = None) -> WipeResult:
    """``root_dev``: the camera root's st_dev when the session scanned it. ``samples``:
    each recording's content sample, taken in this session as its file was read
    (spooled, or re-hashed in full when its copy was made at an earlier dock); a file
    is deleted only if its sample still matches (a file without one is refused).
    ``primary_of``: each sidecar's recording (paths): a sidecar that stays keeps it.
    ``is_lost``: asked when a file fails to stat or read as a dead card's would, before
    any deletion: True stops the wipe (``DeviceGoneError``), False leaves that one file
    (a bad sector). Without it, such a failure is the camera's."""
    samples = samples or {}
    result = WipeResult()
    root_b = os.fsencode(root)
    _same_camera(root_b, root_dev)
    # Sidecars before their recordings: a crash between the two must never leave a
    # sidecar without its recording, which the next scan would no longer see as ours.
    recs = sorted(recs, key=lambda r: r.role != "sidecar")
    # first decide what may go (each file re-stat'ed), then note it, durably, before the
    # first unlink: after a pull-out or a failed flush the next dock knows which of the
    # files it no longer finds were deleted here (the session's), and only those
    doomed: list[tuple[Recording, bytes, Any]] = []
    for rec in recs:
        if rec.state != RecState.VERIFIED:
            continue
        lg = logger.bind(camera=rec.serial, recording=rec.name, sha256=rec.plain_sha256)
        path = os.path.join(root_b, rec.rel_path)
        try:
            reason = _why_not(path, rec, samples.get(rec.id))
        except FileNotFoundError:
            _same_camera(root_b, root_dev)
            ledger.transition(rec.id, RecState.WIPED, event="wipe.done", error="already absent")
            log.emit(lg, "wipe.done", note="already absent")
            result.wiped.append(rec)
            continue
        except OSError as exc:
            if exc.errno in GONE_ERRNOS and (is_lost is None or is_lost()):
                raise DeviceGoneError(f"camera gone during wipe: {exc.strerror}") from exc
            result.failed.append((rec, exc.strerror or str(exc)))
            log.emit(lg, "wipe.failed", error=exc.strerror)
            continue
        if reason:
            ledger.append_event("wipe.refused", serial=rec.serial, recording_id=rec.id,
                                session_id=rec.session_id, path=rec.name, reason=reason)
            log.emit(lg, "wipe.refused", reason=reason)
            result.refused.append((rec, reason))
            continue
        doomed.append((rec, path, lg))
    # a sidecar that stays keeps its recording: never a sidecar on the camera without the
    # recording that makes the next scan see it as ours
    held = {(primary_of or {}).get(r.rel_path) for r, _why in result.failed + result.refused}
    for rec, path, lg in [d for d in doomed if d[0].rel_path in held]:
        doomed.remove((rec, path, lg))
        result.failed.append((rec, "kept with its sidecar, which stays on the camera"))
        log.emit(lg, "wipe.failed", error="kept with its sidecar, which stays on the camera")
    ledger.mark_wipe_started(rec.id for rec, _p, _l in doomed)
    dirs: set[bytes] = set()
    unlinked: list[tuple[Recording, bytes]] = []
    kept: list[int] = []                # noted, but not deleted: the note is withdrawn
    untried = 0                         # doomed[untried:] no unlink can have reached
    try:
        for i, (rec, path, lg) in enumerate(doomed):
            untried = i + 1             # this unlink may land, whatever it answers
            try:
                os.unlink(path)
            except FileNotFoundError:
                untried = i             # a mount point that no longer holds the camera: it did not
                _same_camera(root_b, root_dev)
                untried = i + 1
            except OSError as exc:
                if exc.errno in GONE_ERRNOS:
                    raise DeviceGoneError(f"camera gone during wipe: {exc.strerror}") from exc
                result.failed.append((rec, exc.strerror or str(exc)))
                log.emit(lg, "wipe.failed", error=exc.strerror)
                kept.append(rec.id)
                continue
            dirs.add(os.path.dirname(path))
            unlinked.append((rec, path))
        for d in dirs:
            _fsync_dir(d)
        if unlinked:
            _same_camera(root_b, root_dev)  # after a pull-out the sync would flush the disk beneath
            _sync_camera(root)      # before any deletion is confirmed: a failed flush confirms none
        _same_camera(root_b, root_dev)      # a deletion is only confirmed on the camera itself
    except DeviceGoneError:
        # the unlinks never tried, and those refused, deleted nothing: their notes are
        # withdrawn, so a camera formatted by hand before its next dock does not have those
        # files recorded wiped (best effort: the ledger may be what failed, and a kept note
        # is the old answer). The deletions made stay noted, for the next dock to confirm.
        with contextlib.suppress(Exception):
            ledger.clear_wipe_started([rec.id for rec, _p, _l in doomed[untried:]] + kept)
        raise
    with ledger.tx():               # one commit for the batch, after the deletions are durable
        for rec, path in unlinked:
            lg = logger.bind(camera=rec.serial, recording=rec.name, sha256=rec.plain_sha256)
            if os.path.lexists(path):   # list again: the deletion must be visible
                result.failed.append((rec, "still present after unlink"))
                log.emit(lg, "wipe.failed", error="still present after unlink")
                kept.append(rec.id)
                continue
            ledger.transition(rec.id, RecState.WIPED, event="wipe.done")
            log.emit(lg, "wipe.done")
            result.wiped.append(rec)
        ledger.clear_wipe_started(kept)
    return result


def _why_not(path: bytes, rec: Recording, sample: Sample | None) -> str | None:
    """Why the file at ``path`` may not be deleted on the strength of ``rec``'s copy, or
    None: it must still be a regular file of the size and mtime copied, and its sampled
    blocks must hash as they did when this session read it. Raises OSError as the
    filesystem does (FileNotFoundError: already absent)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_size != rec.size or st.st_mtime_ns != rec.mtime_ns:
        return (f"changed since it was copied (size {rec.size}→{st.st_size}, "
                f"mtime {rec.mtime_ns}→{st.st_mtime_ns})")
    if sample is None:
        return "its content was not read at this dock; it is checked in full at the next"
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return "changed while the wipe looked at it"
        if sample.size != st.st_size or not sample.matches(fd):
            return "its content differs from what was copied (rewritten in place)"
    finally:
        close_quietly(fd)
    return None


def _gone(exc: OSError) -> DeviceGoneError:
    return DeviceGoneError(f"camera gone during wipe: {exc.strerror} (deletions not confirmed)")


def _fsync_dir(path: bytes) -> None:
    """Make a directory's deletions durable. A filesystem that refuses to fsync a
    directory (EINVAL, ENOTSUP, …) is left to the syncfs that follows; a camera
    that fails it (EIO, ENOTCONN, …) is gone, and nothing in it is confirmed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise _gone(exc) from exc
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise _gone(exc) from exc
    finally:
        close_quietly(fd)


def _sync_camera(root: Path) -> None:
    """The camera's filesystem only: a sync() would also wait for the spool's writeback."""
    try:
        syncfs(root)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise _gone(exc) from exc
