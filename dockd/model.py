"""The states of recordings and sessions, and the legal moves between them."""

from __future__ import annotations

import enum
import functools
import os
from dataclasses import dataclass


class RecState(str, enum.Enum):
    FOUND = "found"          # seen on the camera, not yet safely spooled
    SPOOLED = "spooled"      # encrypted copy durable in the local spool
    UPLOADED = "uploaded"    # the store accepted it; not yet proven
    VERIFIED = "verified"    # the store is proven to hold exactly the ciphertext
    WIPED = "wiped"          # deleted from the camera (terminal)
    FAILED = "failed"        # a step failed; retried at next_attempt_at
    ATTENTION = "attention"  # a human must look (terminal until handled)
    SUPERSEDED = "superseded"  # the camera rewrote the file before this version was copied

    @property
    def is_safe(self) -> bool:
        """Durably held somewhere other than the camera."""
        return self in (RecState.SPOOLED, RecState.UPLOADED, RecState.VERIFIED, RecState.WIPED)


class Phase(str, enum.Enum):
    DOCKED = "docked"
    SCANNING = "scanning"
    SPOOLING = "spooling"
    UPLOADING = "uploading"
    WIPING = "wiping"
    DONE = "done"
    INTERRUPTED = "interrupted"   # undocked early
    ATTENTION = "attention"       # a human must look

    @property
    def is_final(self) -> bool:
        return self in (Phase.DONE, Phase.INTERRUPTED, Phase.ATTENTION)


# The only transitions the ledger accepts. Anything can fail; a failed
# recording goes back to the step it failed at.
TRANSITIONS: dict[RecState, frozenset[RecState]] = {
    RecState.FOUND: frozenset({RecState.SPOOLED, RecState.VERIFIED, RecState.FAILED, RecState.ATTENTION,
                               RecState.SUPERSEDED}),
    RecState.SPOOLED: frozenset({RecState.UPLOADED, RecState.VERIFIED, RecState.FOUND, RecState.FAILED, RecState.ATTENTION}),
    RecState.UPLOADED: frozenset({RecState.VERIFIED, RecState.SPOOLED, RecState.FOUND, RecState.FAILED, RecState.ATTENTION}),
    RecState.VERIFIED: frozenset({RecState.WIPED, RecState.ATTENTION}),
    RecState.FAILED: frozenset({RecState.FOUND, RecState.SPOOLED, RecState.UPLOADED, RecState.VERIFIED,
                                RecState.FAILED, RecState.ATTENTION, RecState.SUPERSEDED}),
    RecState.ATTENTION: frozenset({RecState.FOUND, RecState.SPOOLED, RecState.VERIFIED, RecState.ATTENTION}),
    RecState.WIPED: frozenset(),
    RecState.SUPERSEDED: frozenset(),
}


def escape_controls(text: str) -> str:
    """``text`` made safe for a terminal: every character that is not printable (C0,
    DEL, C1 such as U+009B CSI, Unicode format and separator characters such as bidi
    overrides and U+2028) and every undecodable byte (surrogateescape) is written as
    a visible ``\\xNN`` / ``\\uNNNN`` escape. Printable text is returned as it is."""
    if text.isprintable():
        return text                        # the common case: nothing to escape
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:          # surrogateescape'd byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


@functools.lru_cache(maxsize=1 << 15)
def display_path(rel: bytes) -> str:
    """A camera path for humans and logs: invalid UTF-8 and every non-printable
    character escaped (``escape_controls``). Cached: every log line and ledger event
    names its recording."""
    return escape_controls(os.fsdecode(rel))


@dataclass
class Recording:
    """One file on one camera, as the ledger knows it."""

    id: int
    serial: str
    rel_path: bytes
    size: int
    mtime_ns: int
    role: str                 # "recording" | "sidecar"
    state: RecState
    session_id: int | None = None
    plain_sha256: str | None = None
    cipher_sha256: str | None = None
    cipher_size: int | None = None
    object_key: str | None = None
    spool_path: str | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None
    flagged: bool = False
    profile: str = "generic"
    updated_at: float = 0.0

    @property
    def name(self) -> str:
        return display_path(self.rel_path)

    @property
    def is_durable(self) -> bool:
        """Held somewhere other than the camera (spool or store), whatever its upload state."""
        return self.state.is_safe or (self.state == RecState.FAILED and self.spool_path is not None)
