"""The session manifest: what was docked, what was copied, where it is.

One JSON document per dock session, stored beside the recordings. It is the
auditor's index: for each recording its path, size, mtime, plaintext and
ciphertext SHA-256 and object key.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any, Iterable, Mapping

from .model import Recording

FORMAT = "dockd-manifest/1"
EVIDENTIAL = "evidential"      # retention class of flagged recordings (legal hold where the store can)


def retention_class_of(flagged: bool, default: str | None) -> str | None:
    """A recording's own retention class: evidential if flagged, else ``default``
    (``store.retention_class``). The one place for that fact: the manifest, the
    object's metadata and the store's retention tag all take it from here."""
    return EVIDENTIAL if flagged else default


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def build(station: str, session: dict[str, Any], recs: Iterable[Recording],
          released_at: float | None = None, *, markers: Mapping[int, str] | None = None,
          retention_class: str | None = None, signer: str | None = None,
          audit_head: Mapping[str, Any] | None = None,
          notes: Mapping[int, str] | None = None) -> dict[str, Any]:
    """``markers``: recording id → the camera's event marker. ``signer``: the
    station key's fingerprint (a hint; the auditor's own copy of the key decides).
    ``audit_head``: the ledger's last event when signed, anchoring its hash chain.
    ``notes``: recording id → what an auditor must be told of it beyond its state
    (a ``note`` key, present only where there is one)."""
    markers = markers or {}
    notes = notes or {}
    items = []
    for r in recs:
        item: dict[str, Any] = {
            "path": r.name,
            "role": r.role,
            "size": r.size,
            "mtime": iso(r.mtime_ns / 1e9),
            "mtime_ns": r.mtime_ns,
            "plaintext_sha256": r.plain_sha256,
            "ciphertext_sha256": r.cipher_sha256,
            "ciphertext_size": r.cipher_size,
            "object_key": r.object_key,
            "state": r.state.value,
            "flagged": r.flagged,
            "event_marker": markers.get(r.id),
            "retention_class": retention_class_of(r.flagged, retention_class),
        }
        if r.id in notes:
            item["note"] = notes[r.id]
        if os.fsencode(r.name) != r.rel_path:   # name was escaped: keep the exact bytes too
            item["path_b64"] = base64.b64encode(r.rel_path).decode()
        items.append(item)
    return {
        "format": FORMAT,
        "station": station,
        "session": session["id"],
        "camera": {
            "serial": session["serial"],
            "profile": session["profile"],
            "usb": json.loads(session.get("usb") or "{}"),
            "bay": session.get("bay"),
        },
        "docked_at": iso(session["docked_at"]),
        "undocked_at": iso(session.get("undocked_at")),
        "released_at": iso(released_at),
        "retention_class": retention_class,
        "signer": signer,
        "audit_head": dict(audit_head) if audit_head else None,
        "recordings": items,
    }


def dumps(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
