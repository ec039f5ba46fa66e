"""Logs for operators: structlog, JSON lines off a TTY, a console view on one.

Every event name is in ``CATALOGUE`` (name → level, meaning, fields). The name
is the stable id machines match on (``msgid`` carries it too); the text may
change. Lines name their object first: ``camera``, then ``recording``.
Nothing here ever logs key material or credentials: ``redact`` drops any field
whose name looks secret.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, TextIO

import structlog

# name: (level, meaning, fields)
CATALOGUE: dict[str, tuple[str, str, str]] = {
    "daemon.started": ("info", "dockd run is listening for cameras", "source, store, station"),
    "daemon.stopping": ("info", "SIGTERM/SIGINT received; finishing in-flight chunks", "signal"),
    "daemon.stopped": ("info", "clean exit", ""),
    "daemon.reloaded": ("info", "SIGHUP: configuration re-read", "source"),
    "daemon.reload_failed": ("error", "SIGHUP: new configuration rejected, old one kept", "error"),
    "daemon.recovered": ("info", "start-up reconciliation of ledger, spool and store", "sessions, resumed, orphans"),
    "device.docked": ("info", "a camera was docked and mounted", "camera, profile, device, bay, mount"),
    "device.undocked": ("info", "a camera went away", "camera, device"),
    "device.detected": ("debug", "the device source mounted a camera (the session logs device.docked)", "camera, profile, device, bay, mount"),
    "device.gone": ("debug", "the device source saw a camera leave (the daemon logs device.undocked)", "camera, device"),
    "device.vanished": ("warning", "a camera's device is gone though no event said so; undocked", "camera, device"),
    "device.source_restarted": ("error", "the device listener died (a socket error) and was started again", "source"),
    "device.ignored": ("info", "a device matched no profile and was not touched", "device, reason"),
    "device.mount_failed": ("error", "a camera could not be mounted", "camera, device, error"),
    "device.released": ("info", "synced and unmounted; safe to undock", "camera"),
    "session.scanning": ("info", "listing recordings on the camera", "camera, session"),
    "session.spooling": ("info", "copying recordings into the spool", "camera, session"),
    "session.uploading": ("info", "waiting for uploads to be verified", "camera, session"),
    "session.wiping": ("info", "deleting verified recordings from the camera", "camera, session"),
    "session.done": ("info", "every recording is verified and wiped; safe to undock", "camera, session, recordings, bytes"),
    "session.interrupted": ("warning", "the camera left before the session finished", "camera, session, error"),
    "session.attention": ("error", "a human must look at this camera", "camera, session, error"),
    "session.camera_failed": ("error", "the camera's I/O failed while it stayed in its bay; the session ends in attention", "camera, session, error"),
    "scan.done": ("info", "recordings found on the camera", "camera, recordings, sidecars, bytes, ignored"),
    "scan.unlisted": ("error", "a camera directory could not be listed: nothing under it was copied; the session ends in attention", "camera, path, error"),
    "scan.skipped": ("warning", "a camera entry was not read (symlink, special file, bad name...)", "camera, path, reason"),
    "recording.found": ("debug", "a new recording was recorded in the ledger", "camera, recording, size"),
    "recording.spooled": ("info", "encrypted copy durable in the spool", "camera, recording, sha256, size, cipher_sha256, seconds"),
    "recording.read_failed": ("warning", "a camera file could not be read; skipped, not wiped", "camera, recording, error"),
    "recording.changed": ("warning", "a camera file changed while being read; copied again later", "camera, recording"),
    "recording.replaced": ("warning", "the camera holds different content under a copied recording's path, size"
                           " and mtime; the copy stays, the file is copied as a new recording",
                           "camera, recording, sha256, object_key, error"),
    "recording.superseded": ("info", "an uncopied version of a file was replaced on the camera", "camera, recording"),
    "recording.spool_corrupt": ("error", "a spooled ciphertext no longer matches its hash", "camera, recording, sha256"),
    "recording.flagged": ("info", "the camera marked this recording as an event; retained as evidential", "camera, recording, marker"),
    "recording.marker_unreadable": ("warning", "a sidecar holding the event marker could not be read", "camera, path, reason"),
    "recording.requeued": ("info", "a technician's dockd retry put a failed recording's spool copy back in the upload queue", "camera, recording, sha256, by"),
    "bay.retried": ("info", "dockd retry: a technician asked for a camera's failed recordings to be tried again (audited)", "camera, by, uid, requeued, need_camera"),
    "bay.acknowledged": ("warning", "dockd acknowledge: a technician has looked at a bay in attention (audited; no recording changed)", "camera, session, by, uid, reason"),
    "recording.attention": ("error", "a recording needs a human", "camera, recording, sha256, error"),
    "upload.started": ("debug", "upload of a spooled recording began", "camera, recording, sha256, key"),
    "upload.retry": ("warning", "a transient store error; retrying after a backoff", "camera, recording, sha256, attempt, wait, error"),
    "upload.failed": ("error", "upload attempts exhausted; rescheduled", "camera, recording, sha256, attempts, next_attempt_in, error"),
    "upload.uploaded": ("info", "the store accepted the object", "camera, recording, sha256, key"),
    "upload.verified": ("info", "the store is proven to hold exactly the ciphertext", "camera, recording, sha256, key, size"),
    "upload.batch_flush_failed": ("warning", "a batch's puts could not be made durable together; each is put again after a backoff", "camera, recordings, error"),
    "upload.list_proof_failed": ("warning", "a listing could not prove a batch; each recording is proven alone", "camera, recordings, error"),
    "upload.integrity_failed": ("error", "the store's copy differs; deleted and retried", "camera, recording, sha256, key, error"),
    "store.auth_failed": ("error", "the store refused our credentials; upload queue paused", "store, error"),
    "store.resumed": ("info", "the store accepts us again; upload queue resumed", "store"),
    "store.unreachable": ("warning", "the store cannot be reached", "store, error"),
    "store.full": ("error", "the store is full; uploads are retried, backing off, until space is freed", "store, error"),
    "spool.pressure": ("warning", "spool free space below the watermark; spooling paused", "free, min_free"),
    "spool.exhausted": ("error", "the spool's disk is short of space and dockd holds nothing there to upload: waiting frees nothing; the recording is left on the camera", "camera, recording, spool, free, min_free, error"),
    "spool.relieved": ("info", "spool free space back above the watermark", "free"),
    "spool.remove_failed": ("warning", "a verified recording's spool copy could not be removed; the next start removes it", "camera, recording, sha256, error"),
    "wipe.done": ("info", "a verified recording was deleted from the camera", "camera, recording, sha256"),
    "wipe.refused": ("warning", "a recording was not deleted: it differs from what was verified", "camera, recording, sha256, reason"),
    "wipe.failed": ("error", "deleting a verified recording failed", "camera, recording, error"),
    "manifest.uploaded": ("info", "the signed session manifest is in the store", "camera, session, key, signer"),
    "manifest.failed": ("error", "the session manifest could not be stored", "camera, session, error"),
    "device.profile_unknown": ("warning", "a tagged camera named a profile that does not exist; generic used", "camera, profile"),
    "device.event_failed": ("error", "a device event could not be handled", "device, error"),
    "device.mode_switched": ("info", "a camera was switched into mass-storage mode", "camera, vendor_id, product_id"),
    "device.mode_switch_failed": ("warning", "a camera's mass-storage mode switch failed", "device, error"),
    "device.serial_clash": ("warning", "two docked devices report the same serial", "camera, device"),
    "device.unmount_failed": ("error", "a camera could not be unmounted", "camera, mount, error"),
    "device.release_failed": ("error", "sync/unmount after a session failed", "camera, error"),
    "session.crashed": ("critical", "a bug ended a session; it is left in attention with the error", "camera, error"),
    "upload.bug": ("critical", "a bug ended an upload job; it is retried from the ledger", "recording_id, error"),
    "upload.resuming": ("info", "a multipart/tus upload continues from its checkpoint", "key, parts, offset"),
    "upload.restarting": ("warning", "a checkpointed upload could not be resumed; starting over", "key, reason"),
    "upload.replacing": ("warning", "an object under the key differs; replacing it", "key"),
    "store.resume": ("info", "resume state found for an upload", "key"),
    "store.already_present": ("info", "the store already holds the object; not uploaded again", "key"),
    "store.probed": ("info", "store capabilities detected", "store, capabilities"),
    "store.checksum_unsupported": ("info", "the server does not take x-amz-checksum-sha256; MD5/ETag proof used", "store"),
    "store.tagging_unsupported": ("info", "the server does not take object tags", "store"),
    "store.abort_failed": ("warning", "aborting an abandoned multipart upload failed", "key, error"),
    "store.tls_unverified": ("warning", "TLS verification is disabled by configuration", "store"),
    "store.plain_http": ("warning", "the store is reached over plain http (loopback, or store.trust_plain_http); its proof is only as good as the path", "store, endpoint, loopback"),
    "hook.failed": ("warning", "the configured hook command failed", "camera, phase, error"),
    "metrics.write_failed": ("error", "the metrics textfile could not be written (logged once; the daemon goes on)", "path, error"),
}

_SECRET_WORDS = ("secret", "password", "token", "credential", "identity", "private", "access_key")

_FIRST = ("ts", "level", "event", "msgid", "camera", "recording", "sha256")


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    low = key.lower()
    return any(w in low for w in _SECRET_WORDS)


def redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if _secret_key(k):
            event[k] = "[redacted]"
        elif isinstance(v, str) and "AGE-SECRET-KEY-" in v.upper():
            event[k] = "[redacted]"
    return event


def add_msgid(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    name = event.get("event")
    if isinstance(name, str) and name in CATALOGUE:
        event.setdefault("msgid", name)
    return event


def order_keys(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    out = {k: event.pop(k) for k in _FIRST if k in event}
    out.update(event)
    return out


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not is_tty)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        add_msgid,
        redact,
        structlog.processors.format_exc_info,
    ]
    if use_json:
        processors += [order_keys, structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=is_tty)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get(**bind: Any) -> Any:
    return structlog.get_logger().bind(**bind)


def emit(logger: Any, event: str, **fields: Any) -> None:
    """Log a catalogued event at its catalogued level."""
    level = CATALOGUE[event][0]  # KeyError = an uncatalogued event: a bug, caught by tests
    getattr(logger, level)(event, **fields)
