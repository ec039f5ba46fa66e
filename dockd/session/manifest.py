"""Building, signing and publishing a session's manifest (the format: ``dockd.manifest``)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from .. import custody, log, manifest
from ..config import Config
from ..errors import DockdError
from ..ledger import Ledger
from ..model import Recording
from ..pipeline import naming
from ..store.base import Blob, Store, put_one, verify_one
from .markers import Markers


class ManifestPublisher:
    """Signs each session's manifest with the station key and puts it, then its signature,
    in the store (a signature is never there without what it signs). ``scratch``: a
    directory for the two files while they upload (the spool's)."""

    def __init__(self, cfg: Config, ledger: Ledger, store: Store, key: custody.StationKey,
                 scratch: Path) -> None:
        self.cfg, self.ledger, self.store, self.key, self.scratch = cfg, ledger, store, key, scratch

    def publish(self, sid: int, recs: list[Recording], markers: Markers, lg: Any,
                notes: Mapping[int, str] | None = None) -> None:
        """Best effort: a manifest that cannot be stored is logged (``manifest.failed``); the
        recordings it lists are safe either way, and the next dock's manifest still names them."""
        session = self.ledger.session(sid)
        if session is None:
            return
        head = self.ledger.events(limit=1)
        doc = manifest.build(self.cfg.station.id, session, recs, released_at=time.time(),
                             markers={r.id: m for r in recs if (m := markers.get(r)) is not None},
                             notes=notes, retention_class=self.cfg.store.retention_class,
                             signer=self.key.fingerprint,
                             audit_head={"event": head[-1]["id"], "hash": head[-1]["hash"]} if head else None)
        data = manifest.dumps(doc)
        signature = self.key.sign(data, custody.MANIFEST_NAMESPACE).encode()
        key = naming.manifest_key(self.cfg.store.prefix, self.cfg.station.id, session["serial"], sid,
                                  session["docked_at"])
        # unique names: nothing else may write these between write_bytes and put's read
        tag = f"{sid}-{os.getpid()}-{threading.get_ident()}"
        files = [self.scratch / f"manifest-{tag}.json", self.scratch / f"manifest-{tag}.json.sig"]
        meta = {"camera": session["serial"], "station": self.cfg.station.id}
        try:
            for k, p, body, kind in ((key, files[0], data, "manifest"),
                                     (key + custody.SIG_SUFFIX, files[1], signature, "signature")):
                p.write_bytes(body)
                # a session holding evidence keeps its manifest as long as its evidence: the
                # manifest is the custody record a lifecycle rule on the default class must not reach
                blob = Blob(p, len(body), hashlib.sha256(body).hexdigest(), meta | {"kind": kind},
                            flagged=any(r.flagged for r in recs))
                put_one(self.store, k, blob)
                verify_one(self.store, k, blob)
            self.ledger.set_manifest(sid, key)
            self.ledger.append_event("manifest.uploaded", serial=session["serial"], session_id=sid, key=key,
                                     sha256=hashlib.sha256(data).hexdigest(),
                                     signature=key + custody.SIG_SUFFIX, signer=self.key.fingerprint)
            log.emit(lg, "manifest.uploaded", key=key, signer=self.key.fingerprint)
        except (DockdError, OSError) as exc:      # OSError: the manifest's scratch copy (a full disk)
            log.emit(lg, "manifest.failed", error=str(exc))
        finally:
            for p in files:
                p.unlink(missing_ok=True)
