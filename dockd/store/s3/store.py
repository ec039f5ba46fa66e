"""``s3://bucket/prefix`` store: AWS S3 and the S3 APIs of MinIO, Ceph, Swift...

What this backend promises, beyond the seam:

* **Resumable.** Objects above ``multipart_threshold`` go up in parts. The
  UploadId, the part size and each finished part (number, ETag, size) are
  saved to the ``Checkpoint`` after every part. After a crash, ``ListParts``
  is reconciled with the checkpoint and only the missing parts are sent.
  An upload that fails for good is aborted and its checkpoint cleared.
* **Proven.** Content-MD5 on every request that carries bytes; the SHA-256
  checksum (``x-amz-checksum-sha256``) where the server supports it. A part
  is read into memory once, hashed there and sent from there; the upload is
  completed only if the parts sent hash, together, to the blob's size and
  SHA-256, and is aborted otherwise, so a short, altered or changing spool
  file never becomes an object. A single PUT is hashed and checked before it
  is sent (in memory when it fits in a part). ``verify`` HEADs
  the object and checks the size plus the ETag computed locally (MD5, or
  MD5-of-MD5s with the part size recorded in the object's metadata) and the
  SHA-256 checksum when the server returns one, then reads back the object's
  last ``TAIL_PROOF`` bytes (kept from the upload) and its size from the
  ranged GET: HEAD's values are the server's word, which a liar can echo from
  our own Content-MD5 and checksum headers, while those bytes only the stored
  object can give. When the server gives neither ETag nor checksum in a
  comparable form (e.g. KMS-encrypted ETags), the object is read back whole
  and hashed.
* **Idempotent.** Keys are deterministic; an object already present with the
  right size and proof is not uploaded again.
* **One retry policy.** botocore's own retries are off; errors are classified
  (transient / auth / permanent) and ``RetryingStore`` decides.

Credentials, first found wins:

1. ``credentials_file`` from the config: an AWS ini file (``[default]`` or its
   only section) or plain ``key = value`` lines, with ``aws_access_key_id``,
   ``aws_secret_access_key`` and optionally ``aws_session_token``. Refused if
   its mode grants anything to group or others.
2. systemd credentials in ``$CREDENTIALS_DIRECTORY``: either the files
   ``aws_access_key_id`` and ``aws_secret_access_key`` (and optionally
   ``aws_session_token``), each holding just the value, or one file
   ``s3-credentials`` in the format of (1). E.g. in the unit:
   ``LoadCredential=s3-credentials:/etc/dockd/s3-credentials``.
3. boto3's own chain (``AWS_*`` environment variables, shared config,
   instance role).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote, urlencode, urlparse

import boto3
import botocore.exceptions as bce
from botocore.config import Config as BotoConfig

from ...errors import (
    ConfigError,
    IntegrityError,
    ObjectMissingError,
    PermanentStoreError,
    SpoolError,
    StoreAuthError,
    StoreError,
    StoreFullError,
    TransientStoreError,
    UsageError,
)
from ...manifest import EVIDENTIAL, retention_class_of
from ..base import (
    MAX_PROOFS_KEPT, Blob, Checkpoint, Item, MemoryCheckpoint, ObjectInfo, Result, Results, Store, each,
)
from ..channel import open_channel
from ..keys import validate_key
from .credentials import Credentials, resolve_credentials
from .digests import (
    MiB, READ_BLOCK, S3_MAX_PARTS, S3_MIN_PART_SIZE, TAIL_PROOF, Digest, _b64, _keep_tail, choose_part_size,
    digest_file, part_ranges, read_hashing,
)
from .features import ServerFeatures

import structlog

log = structlog.get_logger("dockd.store.s3")

LIST_PROOF_PAGES = 4     # _prove_listed reads at most this many pages of 1,000 keys

# Metadata we add next to the caller's (x-amz-meta-dockd-*).
META_PART_SIZE = "dockd-part-size"     # how the ETag was formed; verify recomputes it
META_SHA256 = "dockd-sha256"           # ciphertext SHA-256: a claim, for audit tools
TAG_RETENTION = "retention-class"      # object tag: the recording's retention class, for lifecycle rules

AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId", "AccountProblem",
    "AllAccessDisabled", "RequestExpired", "Unauthorized",
})
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "RequestTimeout", "InternalError", "ServiceUnavailable",
    "ServerError", "BadDigest", "IncompleteBody", "XAmzContentSHA256Mismatch",
    "OperationAborted", "RequestTimeTooSkewed",
})
FULL_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "StorageFull"})
# What a server says when it does not understand x-amz-checksum-*.
CHECKSUM_REJECTED_CODES = frozenset({
    "InvalidArgument", "InvalidRequest", "NotImplemented", "MalformedXML",
    "InvalidChecksum", "BadRequest",
})


# -- error classification -------------------------------------------------------

def classify(exc: BaseException, what: str) -> StoreError:
    """Map a botocore error to what the caller should do about it."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        msg = f"{what}: {code or status} {err.get('Message', '')}".rstrip()
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code not in ("NoSuchBucket", "NoSuchUpload")):
            return ObjectMissingError(msg)
        if code in AUTH_CODES or status in (401, 403):
            return StoreAuthError(msg)
        if code in TRANSIENT_CODES or status in (408, 429, 500, 502, 503, 504):
            return TransientStoreError(msg)
        if code in FULL_CODES or status == 507:
            return StoreFullError(msg)
        return PermanentStoreError(msg)
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return StoreAuthError(f"{what}: no usable S3 credentials ({exc.__class__.__name__})")
    if isinstance(exc, bce.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return PermanentStoreError(f"{what}: TLS certificate not trusted (see store.ca_bundle)")
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                        bce.ResponseStreamingError, ConnectionError, TimeoutError)):
        # timeouts, resets, refused connections, DNS hiccups
        return TransientStoreError(f"{what}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, bce.ParamValidationError):
        return PermanentStoreError(f"{what}: {exc}")
    if isinstance(exc, bce.BotoCoreError):
        return TransientStoreError(f"{what}: {exc.__class__.__name__}: {exc}")
    return PermanentStoreError(f"{what}: {exc.__class__.__name__}: {exc}")


def _code(exc: BaseException) -> str:
    if isinstance(exc, bce.ClientError):
        return str((exc.response.get("Error") or {}).get("Code", ""))
    return ""


class _SourceChanged(Exception):
    pass


class _ExactReader:
    """Gives exactly ``length`` bytes from ``f`` starting at ``offset``; short reads raise.

    botocore may rewind it (to resend after a redirect).
    """

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        self._f, self._start, self._len, self._pos = f, offset, length, 0
        f.seek(offset)

    def read(self, size: int = -1) -> bytes:
        left = self._len - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size == 0:
            return b""
        data = self._f.read(size)
        if len(data) < size:
            raise _SourceChanged(f"spooled file ended {self._len - self._pos - len(data)} bytes early")
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        else:
            pos = self._len + offset
        self._pos = max(0, min(pos, self._len))
        self._f.seek(self._start + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._len


class _BufferBody:
    """A request body over bytes already in memory, read without copying them.

    Its reads return slices of the one buffer (``memoryview``), which the
    socket sends as they are. Rewindable, as botocore wants a body to be.
    """

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def read(self, size: int = -1) -> memoryview:
        left = len(self._view) - self._pos
        if size is None or size < 0 or size > left:
            size = left
        out = self._view[self._pos:self._pos + size]
        self._pos += size
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(base + offset, len(self._view)))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


# -- the store --------------------------------------------------------------------

class S3Store(Store):
    """An S3 bucket (and key prefix) holding ciphertext objects.

    Thread-safe: one instance serves the whole upload pool. Construction does
    no network I/O; ``probe()`` (called lazily by ``put``) checks the bucket
    and learns its Object Lock setting, and the first upload learns whether
    the server honours SHA-256 checksums (``checksum="auto"``).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        ca_bundle: Path | str | None = None,
        verify_tls: bool = True,
        trust_plain_http: bool = False,
        credentials: Credentials | None = None,
        checksum: str = "auto",
        multipart_threshold: int = 200 * MiB,          # StoreConfig explains the default
        part_size: int = 16 * MiB,
        object_lock_mode: str | None = None,
        object_lock_days: int | None = None,
        legal_hold_flagged: bool = True,
        retention_class: str = "31d",
        tag_retention: bool = True,
        timeout: float = 60.0,
        min_part_size: int = S3_MIN_PART_SIZE,
        max_parts: int = S3_MAX_PARTS,
        max_connections: int = 16,
    ) -> None:
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc:
            raise UsageError(f"not an s3://bucket/prefix URL: {url!r}")
        if checksum not in ("auto", "sha256", "off"):
            raise UsageError(f"checksum must be auto, sha256 or off, not {checksum!r}")
        if object_lock_mode is not None and object_lock_mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise UsageError(f"object_lock_mode must be GOVERNANCE or COMPLIANCE, not {object_lock_mode!r}")
        if object_lock_mode and not object_lock_days:
            raise ConfigError("store.object_lock_days", "required when object_lock_mode is set")
        self.url = url
        self.bucket = u.netloc
        self.prefix = "/".join(p for p in (u.path.strip("/"), prefix.strip("/")) if p)
        self.checksum = checksum
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.object_lock_mode = object_lock_mode
        self.object_lock_days = object_lock_days
        self.legal_hold_flagged = legal_hold_flagged
        self.retention_class = retention_class
        self.tag_retention = tag_retention
        self.min_part_size = min_part_size
        self.max_parts = max_parts
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()    # one probe at a time: the first put of each worker waits
        # Digests ``put`` just computed, by the (SHA-256, size) the spooled file was checked
        # against: ``verify`` reuses them rather than reading and hashing the file once more.
        # Content-addressed, so always true of those bytes; dropped once verified, and bounded.
        self._digests: dict[tuple[str, int], Digest] = {}
        # Each upload thread's part buffer, reused part after part (see _buffer).
        self._buffers = threading.local()
        # None: not yet known (auto); True/False once decided
        self.features = ServerFeatures(checksum={"auto": None, "sha256": True, "off": False}[checksum])

        # refuses plain http off loopback (unless trusted); logs what weakens the channel
        verify = open_channel(endpoint_url, store=url, key="store.endpoint_url",
                              trust_plain_http=trust_plain_http, verify_tls=verify_tls, ca_bundle=ca_bundle)
        cfg = BotoConfig(
            region_name=region or "us-east-1",
            signature_version="s3v4",
            # Sign "UNSIGNED-PAYLOAD" rather than the body's SHA-256, which botocore
            # would otherwise compute over every byte sent to a plain-http endpoint
            # (and the server again to check it). The body stays bound to the
            # signature: every request that carries object bytes sends Content-MD5
            # (and x-amz-checksum-sha256 where used), and those headers are signed,
            # so a body altered in transit fails the server's check. Of the other
            # bodies, an altered CompleteMultipartUpload parts list gives an object
            # whose ETag is not the one computed locally, which verify refuses; the
            # lock requests are small and carry botocore's signed checksum header.
            s3={"addressing_style": addressing_style, "payload_signing_enabled": False},
            # RetryingStore is the only retry policy
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=max_connections,
            # we send Content-MD5 and x-amz-checksum-sha256 ourselves; botocore's
            # default CRC32 trailers break S3 servers other than AWS
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="dockd",
            tcp_keepalive=True,
        )
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
            aws_session_token=credentials.session_token if credentials else None,
        )
        self._new_client = lambda: session.client("s3", endpoint_url=endpoint_url, config=cfg, verify=verify)
        self.client = self._new_client()

    @classmethod
    def from_config(cls, cfg: Any, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> "S3Store":
        """Build from ``StoreConfig``. Credentials as described in the module doc."""
        if cfg.ca_bundle is not None and not Path(cfg.ca_bundle).is_file():
            raise ConfigError("store.ca_bundle", f"{cfg.ca_bundle} is not a file")
        kw: dict[str, Any] = dict(
            # cfg.prefix is the first component of every object key (pipeline/naming.py);
            # the store itself only adds the URL's path.
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            addressing_style=cfg.addressing_style,
            ca_bundle=cfg.ca_bundle,
            verify_tls=cfg.verify_tls,
            trust_plain_http=cfg.trust_plain_http,
            credentials=resolve_credentials(cfg.credentials_file, environ),
            checksum=cfg.checksum,
            multipart_threshold=cfg.multipart_threshold,
            part_size=cfg.part_size,
            object_lock_mode=cfg.object_lock_mode,
            object_lock_days=cfg.object_lock_days,
            legal_hold_flagged=cfg.legal_hold_flagged,
            retention_class=cfg.retention_class,
            tag_retention=cfg.tag_retention,
            timeout=cfg.timeout,
        )
        kw.update(overrides)
        return cls(cfg.url, **kw)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, prefix={self.prefix!r})"

    # -- keys ---------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return validate_key(key, self.prefix)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    # -- server features ------------------------------------------------------------

    def probe(self) -> ServerFeatures:
        """Check the bucket is reachable and learn whether it has Object Lock.

        Raises ``StoreAuthError`` / ``PermanentStoreError`` (no such bucket) /
        ``TransientStoreError``. Idempotent and cheap after the first call.
        """
        if self.features.probed:
            return self.features
        with self._probe_lock:
            if self.features.probed:
                return self.features
            return self._probe()

    def _probe(self) -> ServerFeatures:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"bucket {self.bucket}")
            if isinstance(err, ObjectMissingError):
                err = PermanentStoreError(f"bucket {self.bucket}: no such bucket")
            raise err from exc
        lock = False
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
            lock = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"bucket {self.bucket} object lock")
            if err.retryable or isinstance(err, StoreAuthError) and _code(exc) != "AccessDenied":
                raise err from exc
            lock = False  # not configured, or not implemented by this server
        if self.object_lock_mode and not lock:
            raise PermanentStoreError(
                f"store.object_lock_mode is {self.object_lock_mode} but bucket {self.bucket} "
                "has Object Lock disabled"
            )
        if self.tag_retention:
            self._probe_tagging()
        with self._lock:
            self.features.object_lock = lock
            self.features.probed = True
        log.info("store.probed", url=self.url, object_lock=lock, tagging=self.features.tagging)
        return self.features

    def _probe_tagging(self) -> None:
        """Learn whether the server keeps object tags, writing nothing.

        Tagging a key that holds no object is answered NoSuchKey by a server
        with tagging and NotImplemented by one without (Swift). Learnt here,
        no upload is sent with tags only to be refused and sent again (with
        a fresh connection pool) by every upload thread. Any other answer,
        such as a refusal of the checksum header botocore must add to this
        request, leaves the question to the first upload, which drops tags
        only if they themselves are refused.
        """
        key = self._key(f".dockd-probe/{os.urandom(8).hex()}")
        tags = {"TagSet": [{"Key": TAG_RETENTION, "Value": self.retention_class or EVIDENTIAL}]}
        try:
            self.client.put_object_tagging(Bucket=self.bucket, Key=key, Tagging=tags)
        except bce.ClientError as exc:
            code = _code(exc)
            message = str((exc.response.get("Error") or {}).get("Message", "")).lower()
            if code == "NotImplemented" and "checksum" not in message:
                with self._lock:
                    self.features.tagging = False
                    self.client = self._new_client()   # the refusal may close the connection
                log.warning("store.tagging_unsupported", url=self.url, code=code)
        except Exception:  # noqa: BLE001 - unanswered: the first upload learns it instead
            pass

    def _use_checksum(self) -> bool:
        return self.features.checksum is not False

    def _checksum_unsupported(self, why: str) -> None:
        with self._lock:
            if self.features.checksum is not False:
                log.warning("store.checksum_unsupported", url=self.url, why=why)
            self.features.checksum = False

    def _checksum_supported(self) -> None:
        with self._lock:
            if self.features.checksum is None:
                self.features.checksum = True

    def _may_retry_without(self, exc: BaseException, used_checksum: bool, used_tagging: bool) -> bool:
        """Drop an optional feature the server just refused; True if worth trying again.

        Tagging is optional (a retention hint for lifecycle rules): a server
        without it gets untagged objects. A checksum refused in auto mode
        means the server does not do them. Concurrent first uploads all send
        both; whichever answer comes first teaches the store, and the others,
        refused for the same reason, are tried again without.
        """
        if not isinstance(exc, bce.ClientError):
            return False
        code = _code(exc)
        message = str((exc.response.get("Error") or {}).get("Message", "")).lower()
        if used_tagging and code in CHECKSUM_REJECTED_CODES and "tagging" in message:
            with self._lock:
                first, self.features.tagging = self.features.tagging, False
            if first:
                log.warning("store.tagging_unsupported", url=self.url, code=code)
        elif (used_checksum and self.checksum == "auto" and self.features.checksum is not True
              and code in CHECKSUM_REJECTED_CODES):
            self._checksum_unsupported(f"server rejected it ({code})")
        else:
            return False
        # A server that refuses a request before reading its body may close the
        # connection a moment later (Swift does); do not reuse that pool.
        with self._lock:
            self.client = self._new_client()
        return True

    # -- object attributes ---------------------------------------------------------

    def _object_args(self, blob: Blob, part_size: int) -> dict[str, Any]:
        meta = {}
        for k, v in blob.metadata.items():
            name = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in k.lower())
            meta[name] = quote(str(v), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
        # a claim: the object is completed (or sent) only once its bytes hash to it
        meta[META_SHA256] = blob.sha256
        if part_size:
            meta[META_PART_SIZE] = str(part_size)
        args: dict[str, Any] = {"Metadata": meta, "ContentType": "application/octet-stream"}
        retention_class = retention_class_of(blob.flagged, self.retention_class)
        if self.tag_retention and retention_class and self.features.tagging:
            # the recording's own class: a lifecycle rule on the configured one (31d)
            # must never reach a flagged recording
            args["Tagging"] = urlencode({TAG_RETENTION: retention_class})
        args.update(self._lock_args(blob))
        return args

    def _lock_args(self, blob: Blob) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.features.object_lock:
            if self.object_lock_mode and self.object_lock_days:
                until = datetime.now(timezone.utc) + timedelta(days=self.object_lock_days)
                args["ObjectLockMode"] = self.object_lock_mode
                args["ObjectLockRetainUntilDate"] = until
            if blob.flagged and self.legal_hold_flagged:
                args["ObjectLockLegalHoldStatus"] = "ON"
        return args

    # -- put -------------------------------------------------------------------------

    def put(self, items: Iterable[Item]) -> Results:
        """Each item in turn: S3 has no batch upload."""
        return each(items, lambda item: self._put(item.key, item.blob, item.checkpoint))

    def _put(self, key: str, blob: Blob, checkpoint: Checkpoint) -> None:
        full = self._key(key)
        self.probe()
        multipart = blob.size > self.multipart_threshold
        ps = choose_part_size(blob.size, self.part_size, self.min_part_size, self.max_parts) if multipart else 0
        state = checkpoint.load()
        if state and state.get("upload_id") and state.get("key") == full:
            if state.get("size") == blob.size and state.get("sha256") == blob.sha256:
                multipart, ps = True, int(state["part_size"])
            else:  # a checkpoint for other bytes: not ours to resume
                self._abort(full, state["upload_id"], checkpoint)
                state = None
        else:
            state = None
        if multipart:
            # orphans are multipart uploads, and a blob this size is always sent in
            # parts: a single PUT has none to look for (one request saved per photo)
            self._reap_orphans(full, keep=state.get("upload_id") if state else None)

        # Usually the file is hashed as it is sent. Two rarer paths must know its
        # digest before sending anything: proving an object already under the key,
        # and matching the parts a resumed upload holds. They hash it first.
        digest: Digest | None = None
        # New bytes (spooled just now, see Blob.new) cannot be under the key already:
        # looking first could only lead to replacing what is there, as this does.
        existing = None if blob.new and state is None else self._head(full, "put")
        if existing is not None or state is not None:
            digest = digest_file(blob.path, ps)
            if digest.size != blob.size or digest.sha256 != blob.sha256:
                if state:
                    self._abort(full, state["upload_id"], checkpoint)
                raise IntegrityError(
                    f"put {key}: spooled file has {digest.size} bytes sha256 {digest.sha256[:16]}, "
                    f"expected {blob.size} bytes sha256 {blob.sha256[:16]}; nothing uploaded"
                )
            self._remember(digest)
            if existing is not None and self._proof(full, existing, blob, digest) is True:
                log.info("store.already_present", key=full)
                if state:
                    self._abort(full, state["upload_id"], checkpoint)
                checkpoint.clear()
                return

        if multipart:
            self._put_multipart(full, blob, ps, checkpoint, state, digest)
        else:
            self._put_single(full, blob, digest)
        checkpoint.clear()
        if self.features.object_lock:
            self._ensure_lock(full, blob)

    def _ensure_lock(self, full: str, blob: Blob) -> None:
        """Prove the retention and legal hold took; apply them if the upload dropped them.

        Some servers do not carry lock headers from CreateMultipartUpload to
        the finished object. Extending retention is always allowed.
        """
        want = self._lock_args(blob)
        head = self._head(full, "lock")
        try:
            if "ObjectLockMode" in want and head and head.get("ObjectLockMode") != want["ObjectLockMode"]:
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=full,
                    Retention={"Mode": want["ObjectLockMode"], "RetainUntilDate": want["ObjectLockRetainUntilDate"]},
                )
            if "ObjectLockLegalHoldStatus" in want and head and head.get("ObjectLockLegalHoldStatus") != "ON":
                self.client.put_object_legal_hold(Bucket=self.bucket, Key=full, LegalHold={"Status": "ON"})
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"lock {full}") from exc

    def _remember(self, digest: Digest) -> None:
        """Keep ``digest`` for ``verify``; only ever called with one proven to be the blob's."""
        with self._lock:
            self._digests[(digest.sha256, digest.size)] = digest
            while len(self._digests) > MAX_PROOFS_KEPT:
                self._digests.pop(next(iter(self._digests)), None)

    def _buffer(self, size: int) -> memoryview:
        """``size`` bytes of this thread's part buffer.

        Parts are read into it, hashed there and sent from it, so an upload
        thread holds one part in memory, and the same one from part to part.
        """
        buf = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._buffers.buf = bytearray(size)
        return memoryview(buf)[:size]

    def _put_single(self, full: str, blob: Blob, digest: Digest | None) -> None:
        what = f"put {full}"
        size = blob.size
        view: memoryview | None = None
        if size <= self.part_size:
            # Content-MD5 goes before the body: hash it in memory, then send those bytes.
            view = self._buffer(size)
            md5, sha = hashlib.md5(), hashlib.sha256()
            with blob.open() as f:
                got = read_hashing(f, view, (md5, sha), what)
                longer = got == size and f.read(1) != b""
            if got != size or longer or sha.hexdigest() != blob.sha256:
                found = (f"{got} bytes" if got != size else "more bytes" if longer
                         else f"sha256 {sha.hexdigest()[:16]}")
                raise IntegrityError(
                    f"{what}: spooled file has {found}, expected {size} bytes sha256 {blob.sha256[:16]}; "
                    "nothing uploaded"
                )
            digest = Digest(size, blob.sha256, 0, (md5.digest(),), (sha.digest(),), _keep_tail(b"", view))
        elif digest is None or digest.is_multipart:
            # Larger than a part (up to multipart_threshold): hash the file, then stream
            # it, so that memory stays at one part per upload thread. Content-MD5 makes
            # the server refuse bytes that changed in between.
            digest = digest_file(blob.path, 0)
            if digest.size != size or digest.sha256 != blob.sha256:
                raise IntegrityError(
                    f"{what}: spooled file has {digest.size} bytes sha256 {digest.sha256[:16]}, "
                    f"expected {size} bytes sha256 {blob.sha256[:16]}; nothing uploaded"
                )
        self._remember(digest)
        while True:
            use_sum = self._use_checksum()
            args = self._object_args(blob, 0)
            args.update(ContentLength=size, ContentMD5=_b64(digest.md5s[0]))
            if use_sum:
                args["ChecksumSHA256"] = digest.checksum_full
            try:
                if view is not None:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=_BufferBody(view), **args)
                else:
                    with blob.open() as f:
                        self.client.put_object(Bucket=self.bucket, Key=full, Body=_ExactReader(f, 0, size), **args)
            except _SourceChanged as exc:
                raise IntegrityError(f"{what}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - classified
                if self._may_retry_without(exc, use_sum, "Tagging" in args):
                    continue
                raise classify(exc, what) from exc
            break
        if use_sum and self.features.checksum is None:
            self._learn_checksum(full)

    def _learn_checksum(self, full: str) -> None:
        """After the first upload in auto mode: did the server keep our checksum?"""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"head {full}") from exc
        if head.get("ChecksumSHA256"):
            self._checksum_supported()
        else:
            self._checksum_unsupported("server ignored it")

    def _reap_orphans(self, full: str, keep: str | None) -> None:
        """Abort multipart uploads of this key that no checkpoint knows: a crash
        between CreateMultipartUpload and the checkpoint's first save leaves one.
        Keys are deterministic and one station writes its own, so any other
        upload of this key is ours and abandoned."""
        try:
            r = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"list uploads {full}")
            if isinstance(err, StoreAuthError) or err.retryable:
                raise err from exc
            return   # a server without ListMultipartUploads: nothing we can reap
        for u in r.get("Uploads") or []:
            if u.get("Key") == full and u.get("UploadId") != keep:
                self._abort(full, u["UploadId"], MemoryCheckpoint())

    def _abort(self, full: str, upload_id: str, checkpoint: Checkpoint) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort; a lifecycle rule reaps the rest
            if _code(exc) != "NoSuchUpload":
                log.warning("store.abort_failed", key=full, error=str(classify(exc, "abort")))
        checkpoint.clear()

    def _list_parts(self, full: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """Parts the server holds for ``upload_id``: {number: (etag, size)}, None if gone."""
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            try:
                r = self.client.list_parts(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                           PartNumberMarker=marker)
            except Exception as exc:  # noqa: BLE001 - classified
                if _code(exc) == "NoSuchUpload":
                    return None
                raise classify(exc, f"list parts {full}") from exc
            for p in r.get("Parts", []):
                parts[int(p["PartNumber"])] = (p["ETag"].strip('"'), int(p["Size"]))
            if not r.get("IsTruncated"):
                return parts
            marker = int(r["NextPartNumberMarker"])

    def _put_multipart(
        self, full: str, blob: Blob, part_size: int, checkpoint: Checkpoint, state: dict[str, Any] | None,
        digest: Digest | None,
    ) -> None:
        """Send the parts the server lacks, then complete.

        With ``digest`` None (a fresh upload), each part is hashed as it is
        sent and the digest is built from those hashes: the upload is completed
        only if it is the blob's. With a ``digest`` (a resume: it proved the file
        before any part was matched), each part sent must hash as it says.
        """
        ranges = part_ranges(blob.size, part_size)
        done: dict[int, dict[str, Any]] = {}
        if state is not None:
            assert digest is not None and digest.part_size == part_size
            held = self._list_parts(full, state["upload_id"])
            if held is None:  # completed or aborted meanwhile; the HEAD said no object
                checkpoint.clear()
                state = None
            else:
                for n, (etag, size) in held.items():
                    # a part counts only if the server has exactly our bytes for it
                    if 1 <= n <= len(ranges) and size == ranges[n - 1][1] and etag == digest.md5s[n - 1].hex():
                        done[n] = {"n": n, "etag": etag, "size": size}
                if state.get("checksum") and not self._use_checksum():
                    # parts were sent with checksums we can no longer complete with: start over,
                    # and abort the old upload so its parts are not left behind
                    self._abort(full, state["upload_id"], checkpoint)
                    state = None
                log.info("store.resume", key=full, parts_held=len(done), parts_total=len(ranges))
        if state is None:
            done = {}
            state = self._create_upload(full, blob, part_size)
            checkpoint.save(state)
        upload_id = state["upload_id"]
        use_sum = bool(state.get("checksum"))
        what = f"put {full}"
        try:
            whole = hashlib.sha256()
            md5s: list[bytes] = []
            sums: list[bytes] = []
            tail = b""          # parts go in order when digest is None, so this is the file's end
            buf = self._buffer(max(length for _, length in ranges))
            with blob.open() as f:
                for n, (off, length) in enumerate(ranges, start=1):
                    if n in done:
                        continue
                    view = buf[:length]
                    part_md5 = hashlib.md5()
                    part_sha = hashlib.sha256() if use_sum and digest is None else None
                    if digest is None:
                        hashers = (part_md5, whole) if part_sha is None else (part_md5, whole, part_sha)
                    else:
                        hashers = (part_md5,)
                    f.seek(off)
                    got = read_hashing(f, view, hashers, what)
                    if got != length:
                        raise IntegrityError(f"{what}: spooled file ended {length - got} bytes early in part {n}")
                    if digest is None:
                        tail = _keep_tail(tail, view)
                    md5 = part_md5.digest()
                    part_sum: bytes | None = None
                    if digest is None:
                        md5s.append(md5)
                        if part_sha is not None:
                            part_sum = part_sha.digest()
                            sums.append(part_sum)
                    elif md5 != digest.md5s[n - 1]:
                        raise IntegrityError(f"{what}: spooled file changed while uploading (part {n})")
                    elif use_sum:
                        part_sum = digest.sha256s[n - 1]
                    etag = self._upload_part(full, upload_id, n, view, md5, part_sum)
                    done[n] = {"n": n, "etag": etag, "size": length}
                    state["parts"] = [done[k] for k in sorted(done)]
                    checkpoint.save(state)
                longer = digest is None and f.read(1) != b""
            if digest is None:
                # What was sent is what was hashed; complete only if that is the blob.
                # Otherwise the except below aborts the upload.
                if longer or whole.hexdigest() != blob.sha256:
                    raise IntegrityError(
                        f"{what}: the spooled file is not the blob (it "
                        + ("is longer" if longer else f"hashed to sha256 {whole.hexdigest()[:16]}")
                        + f", expected {blob.size} bytes sha256 {blob.sha256[:16]}): damaged, or changed "
                        "while uploading; upload aborted"
                    )
                digest = Digest(blob.size, blob.sha256, part_size, tuple(md5s), tuple(sums), tail)
                self._remember(digest)
            self._complete(full, upload_id, digest, done, use_sum)
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, SpoolError):
                self._abort(full, upload_id, checkpoint)
                raise
            err = classify(exc, what)
            if not err.retryable and not isinstance(err, StoreAuthError):
                # failed for good: do not leave parts behind that nobody will complete
                self._abort(full, upload_id, checkpoint)
            raise err from exc

    def _create_upload(self, full: str, blob: Blob, part_size: int | Digest) -> dict[str, Any]:
        if isinstance(part_size, Digest):  # callers that hold one may pass it
            part_size = part_size.part_size
        while True:
            use_sum = self._use_checksum()
            args = self._object_args(blob, part_size)
            if use_sum:
                args["ChecksumAlgorithm"] = "SHA256"
            try:
                r = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **args)
            except Exception as exc:  # noqa: BLE001 - classified
                if self._may_retry_without(exc, use_sum, "Tagging" in args):
                    continue
                raise classify(exc, f"create upload {full}") from exc
            if use_sum and self.features.checksum is not True and r.get("ChecksumAlgorithm") is None:
                # a server that understands checksums echoes the algorithm (in auto mode,
                # another upload may have learnt meanwhile that this one does not)
                self._abort(full, r["UploadId"], MemoryCheckpoint())
                self._checksum_unsupported("server ignored it")
                continue
            return {
                "backend": "s3", "bucket": self.bucket, "key": full, "upload_id": r["UploadId"],
                "part_size": part_size, "size": blob.size, "sha256": blob.sha256,
                "checksum": use_sum, "parts": [],
            }

    def _upload_part(
        self, full: str, upload_id: str, n: int, data: memoryview, md5: bytes, part_sum: bytes | None,
    ) -> str:
        """Send part ``n`` from memory; ``md5`` (and ``part_sum``) were computed from ``data``."""
        args: dict[str, Any] = {"ContentMD5": _b64(md5), "ContentLength": len(data)}
        if part_sum is not None:
            args["ChecksumSHA256"] = _b64(part_sum)
        r = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n,
                                    Body=_BufferBody(data), **args)
        etag = str(r["ETag"]).strip('"')
        if etag != md5.hex():
            raise TransientStoreError(f"put {full}: part {n} stored with ETag {etag}, sent {md5.hex()}")
        return etag

    def _complete(self, full: str, upload_id: str, digest: Digest, done: dict[int, dict[str, Any]],
                  use_sum: bool) -> None:
        def parts(with_sum: bool) -> list[dict[str, Any]]:
            out = []
            for n in sorted(done):
                p: dict[str, Any] = {"PartNumber": n, "ETag": f'"{done[n]["etag"]}"'}
                if with_sum:
                    p["ChecksumSHA256"] = _b64(digest.sha256s[n - 1])
                out.append(p)
            return out

        try:
            try:
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                      MultipartUpload={"Parts": parts(use_sum)})
            except Exception as exc:  # noqa: BLE001 - classified
                # Another upload may have learnt meanwhile that this server takes no
                # checksums (Swift answers MalformedXML to checksummed parts lists).
                if not (use_sum and self.checksum == "auto" and _code(exc) in CHECKSUM_REJECTED_CODES):
                    raise
                self._checksum_unsupported(f"server rejected a checksummed complete ({_code(exc)})")
                use_sum = False
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                      MultipartUpload={"Parts": parts(False)})
        except Exception as exc:  # noqa: BLE001 - classified
            if _code(exc) == "NoSuchUpload":
                # completed by an attempt whose answer we lost? Then the object proves it.
                head = self._head(full, "complete")
                if head is not None:
                    return
            raise
        if use_sum and self.features.checksum is None:
            self._learn_checksum(full)

    # -- verify ------------------------------------------------------------------

    def _head(self, full: str, what: str) -> dict[str, Any] | None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if self._use_checksum():
            args["ChecksumMode"] = "ENABLED"
        try:
            return self.client.head_object(**args)
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"{what} {full}")
            if isinstance(err, ObjectMissingError):
                return None
            raise err from exc

    def _proof(self, full: str, head: Mapping[str, Any], blob: Blob, digest: Digest | None = None) -> bool | str:
        """True if the object is proven to be ``blob``; otherwise a reason string.

        ``head`` (size, ETag, SHA-256 checksum) is checked against digests computed
        locally, then the object's tail is read back (``_prove_tail``); without a
        comparable ETag or checksum, the whole object is read back and hashed."""
        size = int(head.get("ContentLength", -1))
        if size != blob.size:
            return f"holds {size} bytes, expected {blob.size}"
        etag = str(head.get("ETag", "")).strip('"')
        meta = head.get("Metadata") or {}
        md5_like = len(etag.split("-")[0]) == 32 and all(c in "0123456789abcdef" for c in etag.split("-")[0])
        proved = False
        if md5_like:
            if "-" in etag:
                try:
                    ps = int(meta.get(META_PART_SIZE) or 0)
                except ValueError:
                    ps = 0
                ps = ps or choose_part_size(blob.size, self.part_size, self.min_part_size, self.max_parts)
                want = digest if digest is not None and digest.part_size == ps else digest_file(blob.path, ps)
            else:
                want = digest if digest is not None and not digest.is_multipart else digest_file(blob.path, 0)
            if want.size != blob.size or want.sha256 != blob.sha256:
                return "the spooled file no longer matches the blob"
            if etag != want.etag:
                return f"ETag {etag} != {want.etag} computed locally"
            proved = True
        server_sum = head.get("ChecksumSHA256")
        if server_sum:
            # Single PUT: SHA-256 of the object. Multipart: SHA-256 of the parts'
            # SHA-256s ("composite"), reported with a "-N" suffix by AWS and
            # without one by some servers (moto).
            value = server_sum.split("-", 1)[0]
            local = digest if digest is not None else digest_file(blob.path, 0)
            candidates = {local.checksum_full}
            ps = int(meta.get(META_PART_SIZE) or 0)
            if ps:
                if local.part_size != ps or not local.has_part_sums:
                    local = digest_file(blob.path, ps)
                candidates.add(local.checksum_sha256.split("-", 1)[0])
            ok = value in candidates
            if not ok:
                return f"checksum-sha256 {server_sum} does not match the spooled file"
            proved = True
        if proved:
            # A HEAD's values are the server's word, which a liar can echo from our own
            # request headers: only the object itself can give its last bytes.
            return self._prove_tail(full, blob, digest)
        # No comparable proof from HEAD: read the object back and hash it.
        h, n = hashlib.sha256(), 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            for chunk in iter(lambda: body.read(READ_BLOCK), b""):
                h.update(chunk)
                n += len(chunk)
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"verify {full}") from exc
        if n != blob.size or h.hexdigest() != blob.sha256:
            return f"read back {n} bytes sha256 {h.hexdigest()[:16]}"
        return True

    def _prove_tail(self, full: str, blob: Blob, digest: Digest | None) -> bool | str:
        """True if the object's last bytes, and its size as the read-back gives it, are
        the blob's (one ranged GET of at most ``TAIL_PROOF`` bytes); else a reason."""
        if blob.size == 0:
            return True
        want = digest.tail if digest is not None and len(digest.tail) == min(TAIL_PROOF, blob.size) else None
        if want is None:
            try:
                with open(blob.path, "rb") as f:
                    f.seek(blob.size - min(TAIL_PROOF, blob.size))
                    want = f.read(TAIL_PROOF)
            except OSError as exc:
                raise SpoolError(f"verify {full}: cannot read the spooled file: {exc.strerror}") from exc
        start = blob.size - len(want)
        expected = f"bytes {start}-{blob.size - 1}/{blob.size}"
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=full, Range=f"bytes={start}-{blob.size - 1}")
            body = r["Body"]
            try:
                if r.get("ContentRange") is None:
                    # the server ignored the range: the whole object came back; hash it all
                    h, n = hashlib.sha256(), 0
                    for chunk in iter(lambda: body.read(READ_BLOCK), b""):
                        h.update(chunk)
                        n += len(chunk)
                    if n != blob.size or h.hexdigest() != blob.sha256:
                        return f"read back {n} bytes sha256 {h.hexdigest()[:16]}"
                    return True
                got = body.read(len(want) + 1)
            finally:
                body.close()
        except Exception as exc:  # noqa: BLE001 - classified
            if _code(exc) == "InvalidRange":
                return f"tail read-back refused: the object is shorter than {blob.size} bytes"
            raise classify(exc, f"verify {full}") from exc
        if r["ContentRange"] != expected:
            return f"tail read-back gave {r['ContentRange']}, expected {expected}"
        if got != want:
            return f"tail read-back: the last {len(want)} bytes differ from those sent"
        return True

    def verify(self, items: Iterable[Item]) -> Results:
        """One listing proves what it can of the batch (``_prove_listed``); each other
        item is proven alone (``_verify``: HEAD, then the tail read back). A listing
        that fails is the batch's ``batch_error`` and proves nothing."""
        items = list(items)
        listed: dict[str, ObjectInfo] = {}
        batch_error = None
        try:
            listed = self._prove_listed(items)
        except StoreError as exc:
            batch_error = exc
        results = Results(batch_error=batch_error)
        for item in items:
            if item.key in listed:
                results.append(Result(item, info=listed[item.key]))
            else:
                results.extend(each([item], lambda i: self._verify(i.key, i.blob), until_refused=False))
        return results

    def _verify(self, key: str, blob: Blob) -> ObjectInfo:
        full = self._key(key)
        head = self._head(full, "verify")
        if head is None:
            raise ObjectMissingError(f"{key}: not in store")
        proof = self._proof(full, head, blob, self._digests.get((blob.sha256, blob.size)))
        if proof is not True:
            raise IntegrityError(f"{key}: {proof}")
        self._digests.pop((blob.sha256, blob.size), None)
        return self._info(key, head, sha256=blob.sha256)

    def _prove_listed(self, items: Sequence[Item]) -> dict[str, ObjectInfo]:
        """One listing proves many objects this store has just sent in one PUT each:
        what it proves, by key.

        ``_verify`` HEADs one object to read back its size and ETag; a listing
        reads back the same two facts for up to a thousand. Only objects whose
        digest ``put`` computed as it sent them qualify: for a single PUT the
        ETag is the MD5 of the bytes, checked against that digest as ``verify``
        would, and its tail is read back as ``verify`` reads it. Anything else
        (a multipart ETag, an ETag that is not an MD5, a key the listing does
        not show yet, a size or tail that differs) is left to ``verify``, which
        says why. On a server that keeps SHA-256 checksums,
        which a HEAD reads back and a listing does not, nothing is proven here:
        ``verify`` checks the SHA-256 too. The listing starts just before the
        first key, stops after the last, and reads at most ``LIST_PROOF_PAGES``
        pages.
        """
        if self.features.checksum or not self.features.list_proof:
            return {}
        want: dict[str, tuple[str, Blob, Digest]] = {}
        for key, blob in ((i.key, i.blob) for i in items):
            digest = self._digests.get((blob.sha256, blob.size))
            if digest is not None and not digest.is_multipart:
                want[self._key(key)] = (key, blob, digest)
        if len(want) < 2:
            return {}              # one object: its HEAD costs no more than a listing
        keys = sorted(want)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": os.path.commonprefix(keys),
                                "StartAfter": keys[0][:-1], "MaxKeys": 1000}
        proven: set[str] = set()
        try:
            for _ in range(LIST_PROOF_PAGES):
                page = self.client.list_objects_v2(**args)
                contents = page.get("Contents", [])
                for o in contents:
                    got = want.get(o["Key"])
                    if (got is not None and int(o.get("Size", -1)) == got[1].size
                            and str(o.get("ETag", "")).strip('"') == got[2].etag
                            and self._prove_tail(o["Key"], got[1], got[2]) is True):
                        proven.add(got[0])
                if (not page.get("IsTruncated") or not contents
                        or contents[-1]["Key"] >= keys[-1] or len(proven) == len(want)):
                    break
                args["StartAfter"] = contents[-1]["Key"]
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"list {args['Prefix']}")
            if isinstance(err, StoreAuthError):
                self.features.list_proof = False     # not allowed to list: said once, then HEADs only
            raise err from exc
        out: dict[str, ObjectInfo] = {}
        with self._lock:
            for key in proven:
                _, blob, digest = want[self._key(key)]
                self._digests.pop((blob.sha256, blob.size), None)
                out[key] = ObjectInfo(key=key, size=blob.size, sha256=blob.sha256, etag=digest.etag)
        return out

    def _info(self, key: str, head: Mapping[str, Any], sha256: str | None = None) -> ObjectInfo:
        server_sum = head.get("ChecksumSHA256")
        if sha256 is None and server_sum and "-" not in server_sum:
            sha256 = base64.b64decode(server_sum).hex()
        return ObjectInfo(
            key=key,
            size=int(head.get("ContentLength", head.get("Size", 0))),
            sha256=sha256,
            etag=str(head.get("ETag", "")).strip('"') or None,
            metadata=dict(head.get("Metadata") or {}),
        )

    def open(self, key: str) -> BinaryIO:
        full = self._key(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"open {full}")
            if isinstance(err, ObjectMissingError):
                err = ObjectMissingError(f"{key}: not in store")
            raise err from exc

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc, f"delete {full}")
            if not isinstance(err, ObjectMissingError):
                raise err from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                for o in page.get("Contents", []):
                    yield ObjectInfo(key=self._rel(o["Key"]), size=int(o["Size"]),
                                     etag=str(o.get("ETag", "")).strip('"') or None)
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"list {base + prefix}") from exc

    def close(self) -> None:
        self.client.close()


