"""The five invariants, checked after every campaign run.

1. Every file present on a camera when it docked is still there, byte-identical,
   or verified in the store: its object decrypts to bytes with the recorded SHA-256.
   Judged twice: through the ledger, and without it, by content alone: every byte
   sequence the camera held at dock time is still at its path on the camera, or some
   object in the store decrypts to exactly those bytes. Identity (path, size, mtime)
   proves nothing here: it can belong to a different clip.
2. Nothing was deleted from a camera that is not verified in the store.
3. No two recordings share an object; no orphaned object; no multipart upload left open (S3).
4. The spool holds nothing that is verified, and loses nothing that is not.
5. The ledger passes ``PRAGMA integrity_check`` and its audit chain; its states
   agree with the store and the camera.

``Invariants.check`` returns a list of violations (strings); empty means clean.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from dockd.age import decrypt
from dockd.errors import AgeError

SAFE_STATES = ("verified", "wiped")


class StoreView(Protocol):
    def objects(self) -> dict[str, bytes]: ...          # key -> ciphertext (no manifests)
    def open_multipart(self) -> list[str]: ...


@dataclass
class DirView:
    """A file:// store, read directly."""

    root: Path

    def objects(self) -> dict[str, bytes]:
        out = {}
        if not self.root.exists():
            return out
        for p in self.root.rglob("*"):
            if p.is_file() and p.name.endswith(".age"):
                out[p.relative_to(self.root).as_posix()] = p.read_bytes()
            elif p.is_file() and p.name.startswith(".tmp-") and not p.name.endswith((".json", ".sig")):
                out[p.relative_to(self.root).as_posix()] = b"<temp file>"
        return out

    def open_multipart(self) -> list[str]:
        return []


@dataclass
class S3View:
    """An S3 bucket (through boto3, not through dockd)."""

    client: Any
    bucket: str
    prefix: str = ""

    def objects(self) -> dict[str, bytes]:
        out = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for o in page.get("Contents", []):
                k = o["Key"]
                if k.endswith(".age"):
                    rel = k[len(self.prefix) + 1:] if self.prefix and k.startswith(self.prefix + "/") else k
                    out[rel] = self.client.get_object(Bucket=self.bucket, Key=k)["Body"].read()
        return out

    def open_multipart(self) -> list[str]:
        ups = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in ups]


def snapshot(root: Path) -> dict[bytes, bytes]:
    """Every regular file under ``root`` (bytes paths, symlinks not followed) → its bytes.
    Iterative, so a 1,000-level tree is fine."""
    import stat as _st

    out: dict[bytes, bytes] = {}
    root_b = os.fsencode(root)
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root_b, rel_dir) if rel_dir else root_b) as it:
                entries = list(it)
        except OSError:
            continue
        for de in entries:
            rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
            try:
                mode = de.stat(follow_symlinks=False).st_mode
                if _st.S_ISDIR(mode):
                    stack.append(rel)
                elif _st.S_ISREG(mode):
                    with open(de.path, "rb") as f:
                        out[rel] = f.read()
            except OSError:
                continue
    return out


@dataclass
class Invariants:
    identities: list[Any]

    def check(self, *, before: dict[bytes, bytes], camera_after: dict[bytes, bytes] | None,
              store: StoreView, spool: Path, ledger: Path, serial: str | None = None,
              corrupted_spool: Iterable[int] = (), interim: bool = False) -> list[str]:
        """``camera_after`` None: the camera is gone (pulled), only the ledger and store speak for it.
        ``corrupted_spool``: recording ids whose spool file the campaign damaged on purpose.
        ``interim``: right after a kill, before the restart that reconciles: only 1, 2, 5
        (integrity, audit chain, proven states) are checked; 3 and 4 wait for the restart."""
        v: list[str] = []
        rows, chain_err, integrity = _ledger_rows(ledger)
        if integrity != "ok":
            v.append(f"5: ledger integrity_check: {integrity}")
        if chain_err:
            v.append(f"5: audit chain: {chain_err}")
        objects = store.objects()
        plain_of: dict[str, str | None] = {}

        def plain_sha(key: str | None) -> str | None:
            if key is None or key not in objects:
                return None
            if key not in plain_of:
                buf = io.BytesIO()
                try:
                    decrypt(io.BytesIO(objects[key]), buf, self.identities)
                    plain_of[key] = hashlib.sha256(buf.getvalue()).hexdigest()
                except AgeError as exc:
                    plain_of[key] = f"undecryptable: {exc}"
            return plain_of[key]

        by_path: dict[bytes, list[dict[str, Any]]] = {}
        for r in rows:
            if serial is None or r["serial"] == serial:
                by_path.setdefault(bytes(r["rel_path"]), []).append(r)

        # 1, by content alone: the camera's bytes are on the camera or in the store
        if camera_after is not None:
            held = {plain_sha(k) for k in objects}
            for rel, data in before.items():
                if camera_after.get(rel) != data and hashlib.sha256(data).hexdigest() not in held:
                    v.append(f"1: {rel!r}: its bytes at dock time are neither on the camera nor in the store")

        # 1 + 2: camera files, through the ledger
        for rel, data in before.items():
            want = hashlib.sha256(data).hexdigest()
            now = None if camera_after is None else camera_after.get(rel)
            if now is not None:
                if now != data:
                    v.append(f"1: {rel!r} changed on the camera")
                continue
            proven = [r for r in by_path.get(rel, []) if r["state"] in SAFE_STATES
                      and r["plain_sha256"] == want and plain_sha(r["object_key"]) == want]
            if not proven:
                if camera_after is None:
                    continue          # camera pulled: what it held is not ours to judge by absence
                v.append(f"2: {rel!r} is gone from the camera but not verified in the store")

        if interim:
            return v + _proven_states(rows, plain_sha)
        # 3: objects
        owners: dict[str, list[int]] = {}
        for r in rows:
            if r["object_key"]:
                owners.setdefault(r["object_key"], []).append(r["id"])
        for k, ids in owners.items():
            if len(ids) > 1:
                v.append(f"3: recordings {ids} share one object {k}: one upload replaces another's")
        for k in objects:
            if "/.tmp-" in "/" + k:
                v.append(f"3: temp object left in the store: {k}")
            elif k not in owners:
                v.append(f"3: orphan object {k} (no recording names it)")
        for k in store.open_multipart():
            v.append(f"3: multipart upload left open for {k}")

        # 4: spool
        spool_files = {int(p.stem): p for p in spool.glob("*.age") if p.stem.isdigit()} if spool.exists() else {}
        damaged = set(corrupted_spool)
        for r in rows:
            has = r["id"] in spool_files
            if r["state"] in SAFE_STATES and has:
                v.append(f"4: spool still holds verified recording {r['id']}")
            durable = r["state"] in ("spooled", "uploaded") or (r["state"] == "failed" and r["spool_path"])
            if durable:
                if not has:
                    v.append(f"4: recording {r['id']} is {r['state']} but its spool file is gone")
                elif r["id"] not in damaged and hashlib.sha256(
                        spool_files[r["id"]].read_bytes()).hexdigest() != r["cipher_sha256"]:
                    v.append(f"4: spool file of recording {r['id']} fails its ciphertext hash")
        partial = spool / "partial"
        if partial.exists() and any(partial.iterdir()):
            pass   # partials are discarded at the next start; not a loss

        # 5: states agree with store and camera
        v += _proven_states(rows, plain_sha)
        for r in rows:
            st = r["state"]
            if st == "wiped" and camera_after is not None:
                rel = bytes(r["rel_path"])
                cur = camera_after.get(rel)
                if cur is not None and hashlib.sha256(cur).hexdigest() == r["plain_sha256"] and \
                        rel in before and before[rel] == cur:
                    v.append(f"5: recording {r['id']} is wiped but still on the camera")
        return v


def _proven_states(rows: list[dict[str, Any]], plain_sha: Any) -> list[str]:
    v = []
    for r in rows:
        if r["state"] in SAFE_STATES:
            got = plain_sha(r["object_key"])
            if got != r["plain_sha256"]:
                v.append(f"5: recording {r['id']} is {r['state']} but its object {r['object_key']} gives {got}")
    return v


def _ledger_rows(path: Path) -> tuple[list[dict[str, Any]], str | None, str]:
    if not path.exists():
        return [], None, "ok"
    from dockd.errors import DockdError
    from dockd.ledger import Ledger

    led = Ledger(path)
    try:
        integrity = led.integrity_check()
        try:
            led.verify_chain()
            chain = None
        except DockdError as exc:
            chain = str(exc)
    finally:
        led.close()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM recordings")]
    finally:
        db.close()
    return rows, chain, integrity
