"""What a station technician does about a bay in attention, without re-docking it.

``retry``: the camera's failed recordings are tried again. Those whose encrypted
copy is still in the spool go back to ``spooled`` and are queued for upload;
those never copied need the camera, and are only named. ``acknowledge``: the
human has looked; the bay's attention is acknowledged in the ledger's
hash-chained event log, with who and why. Neither deletes or changes a
recording's bytes, and neither touches the camera.

Both run inside the daemon (the control socket, which passes the peer's Unix
user) or on the ledger directly when the daemon is down (the caller holds the
state directory's lock). They are the same functions either way.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import log
from .errors import UsageError
from .ledger import Ledger
from .model import RecState

REASON_MAX = 500


@dataclass
class Actor:
    """Who asked: a Unix user, as the kernel vouches for it (SO_PEERCRED, or our own uid)."""

    uid: int
    user: str

    @classmethod
    def from_uid(cls, uid: int) -> "Actor":
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid {uid}"
        return cls(uid, name)

    @classmethod
    def me(cls) -> "Actor":
        return cls.from_uid(os.getuid())


@dataclass
class RetryOutcome:
    serial: str
    requeued: list[str] = field(default_factory=list)       # going back to the store from the spool
    need_camera: list[str] = field(default_factory=list)    # never copied: dock the camera again

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "requeued": self.requeued, "need_camera": self.need_camera}


def _known(ledger: Ledger, serial: str) -> dict[str, Any]:
    for s in ledger.sessions(limit=500):
        if s["serial"] == serial:
            return s
    raise UsageError(f"no camera {serial!r} in the ledger")


def retry(ledger: Ledger, serial: str, actor: Actor, submit: Any = None,
          is_docked: Any = None) -> RetryOutcome:
    """Re-queue ``serial``'s recordings in ``failed``/``attention`` that have a spool copy
    (each moves to ``spooled``, its attempt count reset); ``submit(rec)`` queues it on a
    running uploader (without one, the next ``dockd run`` resumes it from the ledger).
    Recordings without a spool copy are left as they are and named in ``need_camera``.
    Refused while a session is working with the camera (``is_docked(serial)``). Idempotent."""
    _known(ledger, serial)
    if is_docked is not None and is_docked(serial):
        raise UsageError(f"{serial}: its session is still running; retry once it has finished")
    out = RetryOutcome(serial)
    lg = log.get(camera=serial)
    for rec in ledger.recordings(serial=serial, states=[RecState.FAILED, RecState.ATTENTION]):
        if rec.spool_path and Path(rec.spool_path).is_file():
            rec = ledger.transition(rec.id, RecState.SPOOLED, event="recording.requeued", attempts=0)
            out.requeued.append(rec.name)
            log.emit(lg, "recording.requeued", recording=rec.name, sha256=rec.plain_sha256, by=actor.user)
            if submit is not None:
                submit(rec)
        else:
            out.need_camera.append(rec.name)
    ledger.append_event("bay.retried", serial=serial, by=actor.user, uid=actor.uid,
                        requeued=len(out.requeued), need_camera=len(out.need_camera))
    log.emit(lg, "bay.retried", by=actor.user, uid=actor.uid, requeued=len(out.requeued),
             need_camera=len(out.need_camera))
    return out


def acknowledge(ledger: Ledger, serial: str, reason: str, actor: Actor) -> dict[str, Any]:
    """Record that ``actor`` has looked at ``serial``'s bay, and why, in the audit chain.
    It acknowledges the camera's latest session and the failures recorded up to now; a
    later failure or session needs attention again. Changes no recording."""
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("acknowledge needs --reason: say what you looked at")
    if len(reason) > REASON_MAX:
        raise UsageError(f"--reason is longer than {REASON_MAX} characters")
    session = _known(ledger, serial)
    ledger.append_event("bay.acknowledged", serial=serial, session_id=session["id"],
                        by=actor.user, uid=actor.uid, reason=reason)
    log.emit(log.get(camera=serial), "bay.acknowledged", session=session["id"], by=actor.user,
             uid=actor.uid, reason=reason)
    return {"serial": serial, "session": session["id"], "by": actor.user, "uid": actor.uid,
            "reason": reason}


def acknowledgement(ledger: Ledger, serial: str) -> dict[str, Any] | None:
    """The camera's latest acknowledgement: session, by, uid, reason, at; or None."""
    ev = ledger.last_event("bay.acknowledged", serial=serial)
    if ev is None:
        return None
    import json

    data = json.loads(ev["data"])
    return {"session": ev["session_id"], "by": data.get("by"), "uid": data.get("uid"),
            "reason": data.get("reason"), "at": ev["ts"]}
