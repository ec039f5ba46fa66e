"""Deterministic, sanitised object keys: one place for this fact.

``{prefix}/{station}/{camera}/{YYYY-MM-DD}/{name}.{sha256[:16]}.{ledger}-{recording}.age``

A recording's key is made once, when it is spooled, and kept in the ledger:
every retry uploads to it, so a retry can never make a second copy. It names
the recording (its id in the ledger, and the ledger's own random id: a new ledger,
on a rebuilt dock with the same station id, starts its ids again), not only its
name and content: two camera files never share a key, even with the same name and the
same bytes (``100BWC/VID0001.MP4`` and ``101BWC/VID0001.MP4``, or a clip that
reuses a wiped clip's name), so no upload overwrites another recording's
object. Keys made before the id was part of them (``{name}.{sha256[:16]}.age``)
stay where they are: the ledger and the manifests name them.
Keys never contain ``..``, control characters or separators from the camera's
names, and their length is bounded.
"""

from __future__ import annotations

import os
import re
import time

MAX_NAME = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(text: str, limit: int = MAX_NAME) -> str:
    out = _UNSAFE.sub("_", text).strip("._") or "_"
    out = re.sub(r"\.{2,}", ".", out)
    return out[:limit]


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(max(0.0, min(ts, 253402300799.0))))


def object_key(prefix: str, station: str, camera: str, rel_path: bytes, mtime_ns: int,
               plain_sha256: str, recording_id: int, ledger_id: str) -> str:
    name = safe_component(os.path.basename(os.fsdecode(rel_path)))
    parts = [p for p in prefix.split("/") if p] + [
        safe_component(station), safe_component(camera), _day(mtime_ns / 1e9),
        f"{name}.{plain_sha256[:16]}.{safe_component(ledger_id, 16)}-{int(recording_id)}.age",
    ]
    return "/".join(parts)


def manifest_key(prefix: str, station: str, camera: str, session_id: int, docked_at: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(docked_at))
    parts = [p for p in prefix.split("/") if p] + [
        safe_component(station), safe_component(camera), _day(docked_at),
        f"session-{stamp}-{session_id}.manifest.json",
    ]
    return "/".join(parts)
