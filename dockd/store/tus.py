"""``https://host/files/`` store: the tus 1.0 resumable-upload protocol.

Uploads speak tus 1.0 core, creation and termination, plus the checksum
extension when the server offers it (``OPTIONS`` → ``Tus-Extension: checksum``
and ``Tus-Checksum-Algorithm``; each PATCH then carries ``Upload-Checksum``).
``http://`` is accepted for loopback hosts only, or where
``store.trust_plain_http`` says so (see ``channel.py``); a bearer token never
crosses a network in clear, whatever it says.

Why a small client and not ``tuspy``: tuspy keeps resume state in its own
URL storage keyed by a file fingerprint, and retries on its own. Here the
upload URL and offset must live in the ledger (the ``Checkpoint``), saved
after every acknowledged PATCH, and ``RetryingStore`` must be the only thing
that retries; we also need every HTTP status mapped exactly onto the error
hierarchy. What is left is a few hundred lines over ``requests``.

**The server contract** (beyond tus 1.0; ``tests/tus-server/server.mjs``
implements it around the official ``@tus/server`` and ``@tus/file-store``):

* *Deterministic upload URLs.* The upload id is the hex SHA-256 of the full
  object key, which the client sends as the ``dockd-key`` Upload-Metadata
  entry (the server's ``namingFunction``). So a key always lives at
  ``<base><sha256(key)>``; ``verify``/``open``/``delete`` need no
  lookup, a retry can never make a second copy, and even a lost checkpoint
  finds its half-finished upload again with HEAD. ``put`` refuses a server
  whose ``Location`` is anything else.
* *Read-back:* ``GET <upload URL>`` returns a finished upload's bytes.
* *Listing:* ``GET <base>?prefix=P`` returns a JSON array of
  ``{key, size, offset, metadata}``.

What this backend promises, beyond the seam:

* **Resumable.** The checkpoint holds the upload URL, the offset the server
  acknowledged, and each acknowledged PATCH range. After a crash, HEAD
  gives the server's real offset and PATCHes continue from there. A
  checkpointed URL that answers 404/410 starts a new upload.
* **Proven.** Before any byte leaves, the spooled file is hashed and checked
  against the blob, so a short or altered spool file never reaches the
  store (and an upload already under way for it is terminated). ``verify``
  reads the object back and compares size and SHA-256 with the blob.
* **Idempotent.** A finished upload under the key with the same length and
  ``dockd-sha256`` metadata is not sent again; a different one is
  terminated and replaced.
* **Classified errors.** 5xx/408/429, timeouts and resets are transient;
  401/403 are auth failures; 409 (offset conflict) and 460 (checksum
  mismatch) are transient, and the retry re-syncs with HEAD; 412, 413 and
  other 4xx are permanent. Only ``RetryingStore`` decides to try again.

Keys arrive with ``store.prefix`` already at their head (pipeline/naming.py),
so ``from_config`` adds none; the constructor's ``prefix`` only namespaces a
store (tests give each case its own).

Authentication: a bearer token read from ``token_file`` (refused unless its
mode grants nothing to group or others; never logged), and/or a TLS client
certificate (``client_cert``, ``client_key``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import stat as stat_mod
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping
from urllib.parse import urlencode, urlparse

import requests

from ..errors import (
    ConfigError,
    IntegrityError,
    ObjectMissingError,
    PermanentStoreError,
    SpoolError,
    StoreAuthError,
    StoreError,
    StoreFullError,
    TransientStoreError,
)
from .base import Blob, Checkpoint, Item, ObjectInfo, Results, Store, each
from .channel import is_loopback, is_plain_http, open_channel, read_secret
from .keys import validate_key

import structlog

log = structlog.get_logger("dockd.store.tus")

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
READ_BLOCK = 1 << 20
# Upload-Metadata entries this client adds; the blob's own metadata goes beside them.
META_KEY = "dockd-key"
META_SHA256 = "dockd-sha256"
RESERVED_META = frozenset({META_KEY, META_SHA256})
# Upload-Checksum algorithms we can compute, best first.
CHECKSUM_ALGORITHMS = ("sha256", "sha1")
# tus checksum extension: the PATCH body did not match Upload-Checksum.
STATUS_CHECKSUM_MISMATCH = 460
TRANSIENT_STATUSES = frozenset({408, 409, 423, 425, 429, STATUS_CHECKSUM_MISMATCH})


# -- configuration helpers -------------------------------------------------------

def load_token(path: Path) -> str:
    """The bearer token in ``path``; refuse a file readable by group or others."""
    token = read_secret(path, "store.token_file").strip()
    if not token or any(c.isspace() or ord(c) < 0x21 for c in token):
        raise ConfigError("store.token_file", f"{path}: expected one token without spaces")
    return token


def upload_id(full_key: str) -> str:
    """The upload id a key lives under (the server's ``namingFunction``)."""
    return hashlib.sha256(full_key.encode("utf-8")).hexdigest()


def encode_metadata(meta: Mapping[str, str]) -> str:
    """tus Upload-Metadata: ``name b64(value)`` pairs joined by commas."""
    parts = []
    for name, value in meta.items():
        if not name or not name.isascii() or any(c in name for c in " ,") or \
                any(ord(c) < 0x21 or ord(c) > 0x7E for c in name):
            raise PermanentStoreError(f"metadata name {name!r} is not allowed in Upload-Metadata")
        parts.append(f"{name} {base64.b64encode(str(value).encode('utf-8')).decode()}")
    return ",".join(parts)


def decode_metadata(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (header or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition(" ")
        try:
            out[name] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value else ""
        except (ValueError, UnicodeDecodeError):
            out[name] = ""
    return out


# -- error classification -----------------------------------------------------------

def classify_status(status: int, what: str) -> StoreError:
    """What the caller should do about an HTTP status from a tus server."""
    msg = f"{what}: HTTP {status}"
    if status in (401, 403):
        return StoreAuthError(msg)
    if status == 404 or status == 410:
        return ObjectMissingError(msg)
    if status == 409:
        return TransientStoreError(f"{msg} (offset conflict; will re-sync with HEAD)")
    if status == STATUS_CHECKSUM_MISMATCH:
        return TransientStoreError(f"{msg} (checksum mismatch; the chunk was discarded)")
    if status == 412:
        return PermanentStoreError(f"{msg} (server does not speak tus {TUS_VERSION})")
    if status == 413:
        return PermanentStoreError(f"{msg} (object larger than the server accepts)")
    if status == 507:
        return StoreFullError(msg)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return TransientStoreError(msg)
    return PermanentStoreError(msg)


def classify_exception(exc: BaseException, what: str) -> StoreError:
    """Map a ``requests`` error (no response) onto the hierarchy."""
    if isinstance(exc, StoreError):
        return exc
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return PermanentStoreError(f"{what}: TLS certificate not trusted (see store.ca_bundle)")
        if any(s in text.lower() for s in ("certificate required", "bad certificate",
                                           "unknown ca", "certificate unknown",
                                           "access denied")):
            return StoreAuthError(f"{what}: TLS client certificate refused")
        return TransientStoreError(f"{what}: TLS error: {exc.__class__.__name__}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader)):
        return PermanentStoreError(f"{what}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)):
        return TransientStoreError(f"{what}: {exc.__class__.__name__}")
    if isinstance(exc, requests.exceptions.RequestException):
        return TransientStoreError(f"{what}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, OSError):
        return TransientStoreError(f"{what}: {exc.__class__.__name__}: {exc}")
    return PermanentStoreError(f"{what}: {exc.__class__.__name__}: {exc}")


# -- small pieces ----------------------------------------------------------------------

class _Head:
    """What HEAD says about an upload."""

    def __init__(self, resp: requests.Response) -> None:
        self.offset = int(resp.headers.get("Upload-Offset", "-1"))
        length = resp.headers.get("Upload-Length")
        self.length = int(length) if length is not None else None
        self.metadata = decode_metadata(resp.headers.get("Upload-Metadata"))

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset == self.length


class _ResponseReader(io.RawIOBase):
    """A GET response body as a read-only binary file; closing it ends the request."""

    def __init__(self, resp: requests.Response, what: str) -> None:
        self._resp = resp
        self._what = what
        resp.raw.decode_content = True

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._resp.raw.read(len(b))
        except Exception as exc:  # noqa: BLE001 - urllib3 raises several kinds
            raise classify_exception(exc, self._what) from exc
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


def _hash_spool(blob: Blob) -> tuple[str, int]:
    """Hash the spooled file. Reads ``blob.path`` directly: a local pass, not
    network bytes, so a throttled ``blob.open()`` must not count it."""
    h = hashlib.sha256()
    n = 0
    try:
        with open(blob.path, "rb") as f:
            while chunk := f.read(READ_BLOCK):
                h.update(chunk)
                n += len(chunk)
    except OSError as exc:
        raise SpoolError(f"cannot read spooled file {blob.path}: {exc.strerror}") from exc
    return h.hexdigest(), n


# -- the store ---------------------------------------------------------------------------

class TusStore(Store):
    """A tus 1.0 endpoint (with dockd's read-back/list companion) holding ciphertext.

    Thread-safe: one instance serves the whole upload pool (one HTTP session
    per thread). Construction does no network I/O; the server's extensions
    are learnt with OPTIONS on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        token: str | None = None,
        client_cert: Path | str | None = None,
        client_key: Path | str | None = None,
        ca_bundle: Path | str | None = None,
        verify_tls: bool = True,
        trust_plain_http: bool = False,
        chunk_size: int = 8 * 1024 * 1024,
        timeout: float = 60.0,
    ) -> None:
        u = urlparse(url)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise ConfigError("store.url", f"not a tus endpoint URL: {url!r}")
        plain_http = is_plain_http(url, "store.url", trust_plain_http)   # refused off loopback unless trusted
        if token and plain_http and not is_loopback(u.hostname):
            # whatever store.trust_plain_http says: that trusts the path's answers,
            # it does not hand the path a credential
            raise ConfigError("store.token_file", "a bearer token is never sent over plain http "
                              "off loopback; use https://")
        if u.query or u.fragment:
            raise ConfigError("store.url", "must not carry a query or fragment")
        if client_key is not None and client_cert is None:
            raise ConfigError("store.client_key", "needs store.client_cert too")
        if chunk_size < 1:
            raise ConfigError("store.chunk_size", "must be at least 1 byte")
        self.base = url if url.endswith("/") else url + "/"
        self.url = self.base
        self.prefix = prefix.strip("/")
        self._token = token
        self._cert: tuple[str, str] | str | None = None
        if client_cert is not None:
            self._cert = (str(client_cert), str(client_key)) if client_key else str(client_cert)
        # logs what weakens the channel
        self._verify = open_channel(url, store=url, key="store.url", trust_plain_http=trust_plain_http,
                                    verify_tls=verify_tls, ca_bundle=ca_bundle)
        self.chunk_size = chunk_size
        self.timeout = (min(10.0, timeout), timeout)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._checksum_algo: str | None = None
        self._extensions: frozenset[str] | None = None

    @classmethod
    def from_config(cls, sc: Any) -> "TusStore":
        token = load_token(Path(sc.token_file)) if sc.token_file else None
        if sc.client_key is not None:
            try:
                mode = Path(sc.client_key).stat().st_mode
            except OSError as exc:
                raise ConfigError("store.client_key", f"cannot read {sc.client_key}: {exc.strerror}") from None
            if mode & 0o077:
                raise ConfigError(
                    "store.client_key",
                    f"{sc.client_key} has mode {stat_mod.S_IMODE(mode):04o}; make it 0600 (or 0400)",
                )
        # no prefix here: store.prefix is already the first component of every
        # object key (pipeline/naming.py)
        return cls(
            sc.url, token=token, client_cert=sc.client_cert,
            client_key=sc.client_key, ca_bundle=sc.ca_bundle, verify_tls=sc.verify_tls,
            trust_plain_http=sc.trust_plain_http,
            chunk_size=sc.chunk_size, timeout=sc.timeout,
        )

    def __repr__(self) -> str:  # never print the token
        return f"TusStore({self.base!r}, prefix={self.prefix!r}, token={'set' if self._token else 'none'})"

    # -- plumbing -------------------------------------------------------------

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.verify = self._verify
            s.cert = self._cert
            s.headers["Tus-Resumable"] = TUS_VERSION
            if self._token:
                s.headers["Authorization"] = f"Bearer {self._token}"
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def _request(self, method: str, url: str, what: str, ok: tuple[int, ...],
                 missing_ok: bool = False, **kw: Any) -> requests.Response | None:
        """One HTTP call. Returns the response on an ``ok`` status, None on 404/410
        when ``missing_ok``; anything else raises a classified error."""
        kw.setdefault("timeout", self.timeout)
        kw.setdefault("allow_redirects", False)
        try:
            resp = self._session().request(method, url, **kw)
        except Exception as exc:  # noqa: BLE001 - classified below
            raise classify_exception(exc, what) from exc
        if resp.status_code in ok:
            return resp
        resp.close()
        if missing_ok and resp.status_code in (404, 410):
            return None
        raise classify_status(resp.status_code, what)

    def _full(self, key: str) -> str:
        return validate_key(key, self.prefix)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _url(self, full: str) -> str:
        return self.base + upload_id(full)

    def _learn(self) -> None:
        """OPTIONS once: which extensions and checksum algorithms the server has."""
        if self._extensions is not None:
            return
        resp = self._request("OPTIONS", self.base, "OPTIONS", ok=(200, 204))
        assert resp is not None
        ext = frozenset(e.strip() for e in resp.headers.get("Tus-Extension", "").split(",") if e.strip())
        algos = {a.strip().lower() for a in resp.headers.get("Tus-Checksum-Algorithm", "").split(",")}
        resp.close()
        missing = {"creation", "termination"} - ext
        if missing:
            raise PermanentStoreError(f"tus server lacks the {', '.join(sorted(missing))} extension")
        if "checksum" in ext:
            self._checksum_algo = next((a for a in CHECKSUM_ALGORITHMS if a in algos), None)
        self._extensions = ext

    def _head(self, full: str, what: str) -> _Head | None:
        resp = self._request("HEAD", self._url(full), f"{what} {full}", ok=(200, 204), missing_ok=True)
        if resp is None:
            return None
        head = _Head(resp)
        resp.close()
        if head.metadata.get(META_KEY) not in (None, full):
            # the id is a hash of the key: a different key here means the
            # server does not name uploads the way this client expects
            raise PermanentStoreError(f"{what} {full}: upload URL holds another key")
        return head

    def _terminate(self, url: str, what: str) -> None:
        self._request("DELETE", url, f"{what} (terminate)", ok=(200, 204), missing_ok=True)

    # -- put ---------------------------------------------------------------------

    def put(self, items: Iterable[Item]) -> Results:
        """Each item in turn (tus has no batches)."""
        return each(items, lambda item: self._put(item.key, item.blob, item.checkpoint))

    def _put(self, key: str, blob: Blob, checkpoint: Checkpoint) -> None:
        full = self._full(key)
        url = self._url(full)
        what = f"put {full}"
        state = checkpoint.load()
        sha, n = _hash_spool(blob)
        if n != blob.size or sha != blob.sha256:
            # never send a spool file that is not the blob; stop any upload of it
            if state and state.get("url"):
                self._terminate(state["url"], what)
                checkpoint.clear()
            raise IntegrityError(
                f"{what}: spooled file has {n} bytes sha256 {sha[:16]}, "
                f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
            )
        self._learn()
        if state and (state.get("url") != url or state.get("size") != blob.size
                      or state.get("sha256") != blob.sha256):
            if state.get("url") and state.get("url") != url:
                self._terminate(state["url"], what)
            checkpoint.clear()
            state = None

        head = self._head(full, "put")
        if head is not None:
            same = head.length == blob.size and head.metadata.get(META_SHA256) == blob.sha256
            if same and head.is_complete:
                log.info("store.already_present", key=full)
                checkpoint.clear()
                return
            if not same:
                log.info("upload.replacing", key=full, reason="different object under key")
                self._terminate(url, what)
                head = None
        if head is None:
            if state is not None:
                log.info("upload.restarting", key=full, reason="checkpointed upload is gone")
            self._create(full, url, blob, what)
            offset, parts = 0, []
        else:
            offset = head.offset
            parts = list(state.get("parts", [])) if state else []
            log.info("upload.resuming", key=full, offset=offset, size=blob.size)
        state = {"url": url, "offset": offset, "size": blob.size, "sha256": blob.sha256,
                 "parts": parts}
        checkpoint.save(state)
        try:
            self._send(url, blob, state, checkpoint, what)
        except IntegrityError:
            self._terminate(url, what)
            checkpoint.clear()
            raise
        except StoreError as exc:
            if not exc.retryable and not isinstance(exc, StoreAuthError):
                # the upload cannot finish: leave nothing behind
                try:
                    self._terminate(url, what)
                except StoreError:
                    pass
                checkpoint.clear()
            raise
        checkpoint.clear()

    def _create(self, full: str, url: str, blob: Blob, what: str) -> None:
        meta = dict(blob.metadata)
        clash = RESERVED_META & set(meta)
        if clash:
            raise PermanentStoreError(f"{what}: metadata may not use {sorted(clash)}")
        meta[META_KEY] = full
        meta[META_SHA256] = blob.sha256
        resp = self._request(
            "POST", self.base, what, ok=(201,),
            headers={"Upload-Length": str(blob.size), "Upload-Metadata": encode_metadata(meta)},
        )
        assert resp is not None
        location = resp.headers.get("Location", "")
        resp.close()
        if urlparse(location).path.rstrip("/").rsplit("/", 1)[-1] != upload_id(full):
            if location:
                try:
                    self._terminate(requests.compat.urljoin(self.base, location), what)
                except StoreError:
                    pass
            raise PermanentStoreError(
                f"{what}: server put the upload at {location!r}, not at the key's "
                "deterministic URL (needs the dockd namingFunction)"
            )

    def _send(self, url: str, blob: Blob, state: dict[str, Any], checkpoint: Checkpoint,
              what: str) -> None:
        offset = int(state["offset"])
        try:
            f = blob.open()
        except OSError as exc:
            raise SpoolError(f"cannot read spooled file {blob.path}: {exc.strerror}") from exc
        with f:
            f.seek(offset)
            while offset < blob.size:
                want = min(self.chunk_size, blob.size - offset)
                chunk = f.read(want)
                if len(chunk) != want:
                    raise IntegrityError(f"{what}: spooled file ended early at {offset + len(chunk)}")
                headers = {"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE}
                if self._checksum_algo:
                    digest = hashlib.new(self._checksum_algo, chunk).digest()
                    headers["Upload-Checksum"] = f"{self._checksum_algo} {base64.b64encode(digest).decode()}"
                try:
                    resp = self._request("PATCH", url, f"{what} @{offset}", ok=(200, 204),
                                         headers=headers, data=chunk)
                except ObjectMissingError as exc:
                    # the upload vanished (expired, terminated): the next try starts over
                    checkpoint.clear()
                    raise TransientStoreError(f"{exc} (upload gone; will start a new one)") from exc
                assert resp is not None
                new = int(resp.headers.get("Upload-Offset", "-1"))
                resp.close()
                if not offset < new <= offset + want:
                    raise TransientStoreError(f"{what}: server acknowledged offset {new} after "
                                              f"PATCH at {offset} of {want} bytes")
                state["parts"].append([offset, new])
                offset = state["offset"] = new
                checkpoint.save(state)
                f.seek(offset)

    # -- read side ---------------------------------------------------------------

    def verify(self, items: Iterable[Item]) -> Results:
        """Each item read back whole and hashed."""
        return each(items, lambda item: self._prove(item.key, item.blob), until_refused=False)

    def _prove(self, key: str, blob: Blob) -> ObjectInfo:
        full = self._full(key)
        head = self._head(full, "verify")
        if head is None or not head.is_complete:
            raise ObjectMissingError(f"{full}: not in store")
        if head.offset != blob.size:
            raise IntegrityError(f"{full}: store holds {head.offset} bytes, expected {blob.size}")
        with self.open(key) as f:
            sha = hashlib.sha256()
            n = 0
            while chunk := f.read(READ_BLOCK):
                sha.update(chunk)
                n += len(chunk)
        got = sha.hexdigest()
        if n != blob.size or got != blob.sha256:
            raise IntegrityError(
                f"{full}: store holds {n} bytes sha256 {got[:16]}, "
                f"expected {blob.size} bytes sha256 {blob.sha256[:16]}"
            )
        meta = {k: v for k, v in head.metadata.items() if k not in RESERVED_META}
        return ObjectInfo(key=key, size=n, sha256=got, metadata=meta)

    def open(self, key: str) -> BinaryIO:
        full = self._full(key)
        resp = self._request("GET", self._url(full), f"open {full}", ok=(200,), missing_ok=True,
                             stream=True)
        if resp is None:
            raise ObjectMissingError(f"{full}: not in store")
        return io.BufferedReader(_ResponseReader(resp, f"open {full}"), READ_BLOCK)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._terminate(self._url(full), f"delete {full}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        resp = self._request("GET", f"{self.base}?{urlencode({'prefix': full_prefix})}",
                             f"list {full_prefix or '/'}", ok=(200,))
        assert resp is not None
        try:
            entries = resp.json()
        except ValueError as exc:
            raise PermanentStoreError(f"list {full_prefix}: server did not answer JSON") from exc
        finally:
            resp.close()
        objs = []
        for e in entries:
            k, size, off = e.get("key"), e.get("size"), e.get("offset")
            if not isinstance(k, str) or not k.startswith(full_prefix) or size is None or off != size:
                continue          # unfinished uploads are not objects
            if self.prefix and not k.startswith(self.prefix + "/"):
                continue
            meta = {m: v for m, v in (e.get("metadata") or {}).items() if m not in RESERVED_META}
            objs.append(ObjectInfo(key=self._rel(k), size=int(size), metadata=meta))
        yield from sorted(objs, key=lambda o: o.key)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()
