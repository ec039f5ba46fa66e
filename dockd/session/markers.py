"""The camera's event markers, remembered for the object metadata and the manifest."""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable

from .. import log, manifest
from ..ledger import Ledger
from ..model import Recording


class Markers:
    """Recording id → the marker its sidecar carried. Thread-safe: sessions note them,
    upload workers read them. A marker is kept until its recording has settled."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._by_id: dict[int, str] = {}
        self._lock = threading.Lock()

    def get(self, rec: Recording) -> str | None:
        """Read at scan time, or (after a restart) from the ledger's ``recording.flagged``."""
        with self._lock:
            if rec.id in self._by_id:
                return self._by_id[rec.id]
        if not rec.flagged:
            return None
        ev = self.ledger.last_event("recording.flagged", recording_id=rec.id)
        value = json.loads(ev["data"]).get("marker") if ev else None
        if not isinstance(value, str):
            return None
        with self._lock:
            self._by_id[rec.id] = value
        return value

    def note(self, rec: Recording, marker: str, lg: Any) -> None:
        """Remember the marker; a flagged recording gets one ``recording.flagged`` audit
        event (its evidence of why it is kept), not one per dock."""
        with self._lock:
            self._by_id[rec.id] = marker
        if not rec.flagged:
            return
        last = self.ledger.last_event("recording.flagged", recording_id=rec.id)
        if last is None or json.loads(last["data"]).get("marker") != marker:
            self.ledger.append_event("recording.flagged", serial=rec.serial, session_id=rec.session_id,
                                     recording_id=rec.id, path=rec.name, marker=marker,
                                     retention_class=manifest.EVIDENTIAL)
            log.emit(lg.bind(recording=rec.name), "recording.flagged", marker=marker)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def forget(self, rec_ids: Iterable[int]) -> None:
        """A settled recording's marker has done its work: a daemon that runs for months must
        not keep one for every recording it has ever seen."""
        with self._lock:
            for i in rec_ids:
                self._by_id.pop(i, None)
