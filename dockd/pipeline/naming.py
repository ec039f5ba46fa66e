"""Deterministic, sanitised object keys: one place for this fact.

``{prefix}/{station}/{camera}/{YYYY-MM-DD}/{name}.{sha256[:16]}.age``

The same recording always maps to the same key, so a retry can never make a
second copy. Keys never contain ``..``, control characters or separators from
the camera's names, and their length is bounded.
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
               plain_sha256: str) -> str:
    name = safe_component(os.path.basename(os.fsdecode(rel_path)))
    parts = [p for p in prefix.split("/") if p] + [
        safe_component(station), safe_component(camera), _day(mtime_ns / 1e9),
        f"{name}.{plain_sha256[:16]}.age",
    ]
    return "/".join(parts)


def manifest_key(prefix: str, station: str, camera: str, session_id: int, docked_at: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(docked_at))
    parts = [p for p in prefix.split("/") if p] + [
        safe_component(station), safe_component(camera), _day(docked_at),
        f"session-{stamp}-{session_id}.manifest.json",
    ]
    return "/".join(parts)
