"""``dockd verify``: the auditor's check of a store against its signed manifests.

The auditor holds the store, the station's public key and, optionally, an age
identity; nothing from the station itself. For every session manifest in the
store this proves, in order:

1. the manifest is signed (SSHSIG, namespace ``dockd-manifest``) by a trusted
   station key;
2. every object it lists is there, with the recorded size and ciphertext
   SHA-256 (read back and hashed here, never taken from the store's word);
3. with an identity, the object decrypts (age authenticates every chunk) to
   the recorded plaintext SHA-256.

A recording the manifest itself says was not yet verified when the camera
was released (``wipe.after = "spooled"``) may be absent: that is *pending*,
reported, not a discrepancy; if it is there it must be exact. Objects that
no manifest lists (a session interrupted before its manifest) are reported
as *unlisted*. Both are information; everything else that is not ``ok``
fails the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import custody
from .errors import AgeError, DockdError, ObjectMissingError
from .store.base import Store

MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST = 64 * 1024 * 1024
BLOCK = 1 << 20
STORED_STATES = frozenset({"verified", "wiped"})    # the station proved the store held these

# object statuses
OK = "ok"
PENDING = "pending"              # not verified at release and not in the store (yet)
NOT_COPIED = "not_copied"        # never spooled: still on the camera, no object to check
MISSING = "missing"
SIZE_MISMATCH = "size_mismatch"
CIPHERTEXT_MISMATCH = "ciphertext_mismatch"
PLAINTEXT_MISMATCH = "plaintext_mismatch"
UNDECRYPTABLE = "undecryptable"
UNREADABLE = "unreadable"
INFORMATIONAL = frozenset({OK, PENDING, NOT_COPIED})

# signature statuses
SIG_GOOD, SIG_BAD, SIG_MISSING = "good", "bad", "missing"


@dataclass
class ObjectCheck:
    path: str
    key: str | None
    status: str
    detail: str | None = None
    size: int | None = None
    flagged: bool = False

    @property
    def ok(self) -> bool:
        return self.status in INFORMATIONAL


@dataclass
class ManifestCheck:
    key: str
    signature: str
    signer: str | None = None
    detail: str | None = None
    station: str | None = None
    camera: str | None = None
    session: int | None = None
    docked_at: str | None = None
    objects: list[ObjectCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.signature == SIG_GOOD and self.detail is None and all(o.ok for o in self.objects)

    def count(self, status: str) -> int:
        return sum(1 for o in self.objects if o.status == status)


@dataclass
class Report:
    store: str
    prefix: str
    plaintext_checked: bool
    manifests: list[ManifestCheck] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.manifests)

    @property
    def discrepancies(self) -> int:
        n = 0
        for m in self.manifests:
            n += (m.signature != SIG_GOOD) + (m.detail is not None)
            n += sum(1 for o in m.objects if not o.ok)
        return n

    def as_dict(self) -> dict[str, Any]:
        out = {
            "store": self.store,
            "prefix": self.prefix,
            "ok": self.ok,
            "plaintext_checked": self.plaintext_checked,
            "discrepancies": self.discrepancies,
            "manifests": [],
            "unlisted": self.unlisted,
        }
        for m in self.manifests:
            d = asdict(m)
            d["ok"] = m.ok
            for o, od in zip(m.objects, d["objects"]):
                od["ok"] = o.ok
            out["manifests"].append(d)
        return out


class _HashingReader:
    """Hashes and counts every byte read through it (the ciphertext, on its way to decryption)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.n += len(b)
        return b

    def readinto(self, buf: Any) -> int:
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def drain(self) -> None:
        while self.read(BLOCK):
            pass


@dataclass
class _Found:
    """What one read of an object proved (cached: re-docks list an object again)."""

    size: int
    cipher_sha256: str
    plain_sha256: str | None = None
    error: str | None = None


class Auditor:
    def __init__(self, store: Store, trusted: Sequence[Ed25519PublicKey],
                 identities: Sequence[Any] = (), prefix: str = "") -> None:
        self.store = store
        self.trusted = list(trusted)
        self.identities = list(identities)
        self.prefix = prefix.strip("/")
        self._cache: dict[str, _Found | None] = {}

    def run(self) -> Report:
        report = Report(self.store.url, self.prefix, bool(self.identities))
        keys = sorted(o.key for o in self.store.list(self.prefix))
        present = set(keys)
        listed: set[str] = set()
        for key in keys:
            if not key.endswith(MANIFEST_SUFFIX):
                continue
            check = self.check_manifest(key, present)
            listed |= {key, key + custody.SIG_SUFFIX}
            listed |= {o.key for o in check.objects if o.key}
            report.manifests.append(check)
        report.unlisted = [k for k in keys if k not in listed]
        return report

    def _read_all(self, key: str, limit: int) -> bytes:
        with self.store.open(key) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{key} is larger than {limit} bytes")
        return data

    def check_manifest(self, key: str, present: set[str]) -> ManifestCheck:
        check = ManifestCheck(key, SIG_MISSING)
        try:
            data = self._read_all(key, MAX_MANIFEST)
        except (DockdError, OSError, ValueError) as exc:
            check.detail = f"manifest unreadable: {exc}"
            return check
        sig_key = key + custody.SIG_SUFFIX
        if sig_key in present:
            try:
                signer = custody.verify(data, self._read_all(sig_key, custody.MAX_ARMOR), self.trusted,
                                        custody.MANIFEST_NAMESPACE)
                check.signature, check.signer = SIG_GOOD, custody.fingerprint(signer)
            except custody.SignatureError as exc:
                check.signature, check.detail = SIG_BAD, str(exc)
            except (DockdError, OSError, ValueError) as exc:
                check.signature, check.detail = SIG_BAD, f"signature unreadable: {exc}"
        else:
            check.detail = f"no signature ({sig_key})"
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or not str(doc.get("format", "")).startswith("dockd-manifest/"):
                raise ValueError("not a dockd manifest")
            items = doc.get("recordings")
            if not isinstance(items, list):
                raise ValueError("no recordings list")
        except (ValueError, UnicodeDecodeError) as exc:
            check.detail = (check.detail + "; " if check.detail else "") + f"manifest unparsable: {exc}"
            return check
        cam = doc.get("camera") if isinstance(doc.get("camera"), dict) else {}
        check.station, check.camera = _str(doc.get("station")), _str(cam.get("serial"))
        check.session = doc.get("session") if isinstance(doc.get("session"), int) else None
        check.docked_at = _str(doc.get("docked_at"))
        for item in items:
            check.objects.append(self.check_item(item if isinstance(item, dict) else {}, present))
        return check

    def check_item(self, item: dict[str, Any], present: set[str]) -> ObjectCheck:
        key = item.get("object_key")
        oc = ObjectCheck(_str(item.get("path")) or "?", key if isinstance(key, str) else None, OK,
                         size=item.get("size") if isinstance(item.get("size"), int) else None,
                         flagged=bool(item.get("flagged")))
        if oc.key is None:
            oc.status = NOT_COPIED
            return oc
        if oc.key not in present:
            if item.get("state") in STORED_STATES:
                oc.status, oc.detail = MISSING, "the station verified it, the store does not hold it"
            else:
                oc.status, oc.detail = PENDING, f"{item.get('state')} at release, not in the store"
            return oc
        found = self._read_object(oc.key)
        if found is None:
            oc.status, oc.detail = MISSING, "listed but gone when read"
            return oc
        want_size = item.get("ciphertext_size")
        if isinstance(want_size, int) and found.size != want_size:
            oc.status, oc.detail = SIZE_MISMATCH, f"{found.size} bytes, manifest says {want_size}"
        elif found.cipher_sha256 != item.get("ciphertext_sha256"):
            oc.status, oc.detail = CIPHERTEXT_MISMATCH, f"ciphertext SHA-256 is {found.cipher_sha256}"
        elif self.identities and found.error is not None:
            oc.status, oc.detail = UNDECRYPTABLE, found.error
        elif self.identities and found.plain_sha256 != item.get("plaintext_sha256"):
            oc.status, oc.detail = PLAINTEXT_MISMATCH, f"plaintext SHA-256 is {found.plain_sha256}"
        return oc

    def _read_object(self, key: str) -> _Found | None:
        if key in self._cache:
            return self._cache[key]
        found: _Found | None
        try:
            with self.store.open(key) as f:
                src = _HashingReader(f)
                plain, error = None, None
                if self.identities:
                    plain, error = _decrypt_hash(src, self.identities)
                src.drain()
                found = _Found(src.n, src.h.hexdigest(), plain, error)
        except ObjectMissingError:
            found = None
        except (DockdError, OSError) as exc:
            found = _Found(-1, "", None, f"{UNREADABLE}: {exc}")
        self._cache[key] = found
        return found


def _decrypt_hash(src: _HashingReader, identities: Sequence[Any]) -> tuple[str | None, str | None]:
    from .age import DecryptReader

    h = hashlib.sha256()
    try:
        for chunk in DecryptReader(src, identities).chunks():   # type: ignore[arg-type]
            h.update(chunk)
    except AgeError as exc:
        return None, str(exc)
    return h.hexdigest(), None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def render(report: Report, console: Any = None) -> None:
    """The summary table, then one line per discrepancy."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"dockd verify: {report.store}" + (f" ({report.prefix})" if report.prefix else ""))
    for col in ("manifest", "camera", "session", "signature", "objects", "ok", "pending", "problems"):
        table.add_column(col, justify="right" if col in ("session", "objects", "ok", "pending", "problems")
                         else "left")
    for m in report.manifests:
        problems = sum(1 for o in m.objects if not o.ok) + (m.signature != SIG_GOOD)
        sig = {SIG_GOOD: "[green]good[/]", SIG_BAD: "[red]BAD[/]", SIG_MISSING: "[red]missing[/]"}[m.signature]
        table.add_row(m.key.rsplit("/", 1)[-1], m.camera or "?", str(m.session or "?"), sig,
                      str(len(m.objects)), str(m.count(OK)), str(m.count(PENDING)),
                      f"[red]{problems}[/]" if problems else "0")
    console.print(table)
    for m in report.manifests:
        if m.detail:
            console.print(f"[red]✗[/] {m.key}: {m.detail}", highlight=False)
        for o in m.objects:
            if not o.ok:
                console.print(f"[red]✗[/] {o.key or o.path}: {o.status}: {o.detail}", highlight=False)
    if report.unlisted:
        console.print(f"{len(report.unlisted)} object(s) in no manifest (sessions interrupted before "
                      "their manifest was stored?)", highlight=False)
    what = "signatures, sizes, ciphertext and plaintext hashes" if report.plaintext_checked \
        else "signatures, sizes and ciphertext hashes (no identity: plaintext not checked)"
    verdict = "[green]all good[/]" if report.ok else f"[red]{plural(report.discrepancies, 'discrepancy')}[/]"
    console.print(f"{len(report.manifests)} manifest(s); checked {what}: {verdict}", highlight=False)
