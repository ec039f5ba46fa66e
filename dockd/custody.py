"""Chain of custody: the station's Ed25519 key and SSHSIG signatures.

Each station has one Ed25519 key, made on first start in ``state_dir`` and
never sent anywhere. It signs every session manifest in OpenSSH's SSHSIG
format (openssh-portable ``PROTOCOL.sshsig``), so that anybody holding the
station's public key can check a manifest with a stock tool::

    ssh-keygen -Y verify -f allowed_signers -I dockd@<station> \\
        -n dockd-manifest -s manifest.json.sig < manifest.json

The key signs; it never decrypts. A stolen dock still reveals no footage, but
whoever holds this file can sign manifests as the station: revoke its public
key (docs/CUSTODY.md) if a dock goes missing.

Layers: SSH wire encoding (``_Wire``), the two SSHSIG structures (signed data,
signature blob), the armor, and ``StationKey`` on top.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import UsageError, VerifyFailed

KEY_FILE = "station_ed25519"
MANIFEST_NAMESPACE = "dockd-manifest"
SIG_SUFFIX = ".sig"

# PROTOCOL.sshsig
MAGIC = b"SSHSIG"
SIG_VERSION = 1
HASH_ALG = "sha512"                 # the spec allows sha256 or sha512; ssh-keygen signs with sha512
KEY_TYPE = "ssh-ed25519"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
ARMOR_WIDTH = 70                    # what ssh-keygen writes; any width is read
ED25519_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
MAX_ARMOR = 64 * 1024               # a signature is a few hundred bytes; refuse junk early
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


class SignatureError(VerifyFailed):
    """A signature is malformed, made by another key, or does not match the message."""

    msgid = "custody.signature_invalid"


# -- SSH wire encoding (RFC 4251 §5) ---------------------------------------------

def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


class _Wire:
    """Reads RFC 4251 fields; any overrun or leftover is a SignatureError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SignatureError(f"{self.what}: truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SignatureError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def public_key_blob(key: Ed25519PublicKey) -> bytes:
    """The SSH wire form of an Ed25519 public key (what ``ssh-ed25519 AAAA…`` base64-encodes)."""
    return _string(KEY_TYPE.encode()) + _string(key.public_bytes_raw())


def _parse_public_blob(blob: bytes) -> Ed25519PublicKey:
    w = _Wire(blob, "public key")
    kind = w.string()
    if kind != KEY_TYPE.encode():
        raise SignatureError(f"public key: type {kind[:40]!r} is not {KEY_TYPE}")
    raw = w.string()
    w.end()
    if len(raw) != ED25519_KEY_SIZE:
        raise SignatureError("public key: Ed25519 key has the wrong length")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(public_key_blob(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_key_line(key: Ed25519PublicKey, comment: str = "") -> str:
    text = f"{KEY_TYPE} {base64.b64encode(public_key_blob(key)).decode()}"
    return f"{text} {comment}" if comment else text


_KEY_LINE = re.compile(r"(?:^|\s)ssh-ed25519\s+([A-Za-z0-9+/=]+)")


def parse_public_keys(text: str) -> list[Ed25519PublicKey]:
    """Every ``ssh-ed25519 AAAA…`` key in ``text``: one key line, an ``authorized_keys``
    or an ``allowed_signers`` file. Raises UsageError when there is none."""
    keys: list[Ed25519PublicKey] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _KEY_LINE.search(line)
        if not m:
            continue
        try:
            blob = base64.b64decode(m.group(1), validate=True)
            keys.append(_parse_public_blob(blob))
        except (binascii.Error, SignatureError) as exc:
            raise UsageError(f"not a valid ssh-ed25519 public key: {exc}") from None
    if not keys:
        raise UsageError("no ssh-ed25519 public key found (expected 'ssh-ed25519 AAAA…')")
    return keys


def load_public_keys(file_or_string: str) -> list[Ed25519PublicKey]:
    """``--station-key``: a path to a key/allowed_signers file, or the key line itself."""
    if _KEY_LINE.search(file_or_string):
        return parse_public_keys(file_or_string)
    path = Path(file_or_string)
    try:
        return parse_public_keys(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read station key {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"station key {path} is not text") from None


# -- SSHSIG ------------------------------------------------------------------------

def _signed_data(namespace: str, hash_alg: str, message: bytes) -> bytes:
    """The bytes the key actually signs: the message is hashed first, then framed
    with its namespace, so a signature for one purpose is never valid for another."""
    digest = _HASHES[hash_alg](message).digest()
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_alg.encode())
            + _string(digest))


def _armor(blob: bytes) -> str:
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i:i + ARMOR_WIDTH] for i in range(0, len(b64), ARMOR_WIDTH)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n"


def _dearmor(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        if len(text) > MAX_ARMOR:
            raise SignatureError("signature file is too large")
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("signature is not ASCII armor") from None
    if len(text) > MAX_ARMOR:
        raise SignatureError("signature file is too large")
    body = text.strip()
    if not (body.startswith(ARMOR_BEGIN) and body.endswith(ARMOR_END)):
        raise SignatureError(f"signature is not armored ({ARMOR_BEGIN!r} … {ARMOR_END!r})")
    inner = "".join(body[len(ARMOR_BEGIN):-len(ARMOR_END)].split())
    try:
        return base64.b64decode(inner, validate=True)
    except binascii.Error:
        raise SignatureError("signature armor is not valid base64") from None


def sign(key: Ed25519PrivateKey, message: bytes, namespace: str) -> str:
    """An armored SSHSIG signature of ``message`` (``ssh-keygen -Y sign`` output)."""
    if not namespace:
        raise ValueError("SSHSIG needs a namespace")
    raw = key.sign(_signed_data(namespace, HASH_ALG, message))
    blob = (MAGIC + struct.pack(">I", SIG_VERSION) + _string(public_key_blob(key.public_key()))
            + _string(namespace.encode()) + _string(b"") + _string(HASH_ALG.encode())
            + _string(_string(KEY_TYPE.encode()) + _string(raw)))
    return _armor(blob)


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG blob. Parsing proves nothing; ``verify`` does."""

    public_key: Ed25519PublicKey
    namespace: str
    hash_alg: str
    raw: bytes

    @classmethod
    def parse(cls, armored: str | bytes) -> "Signature":
        w = _Wire(_dearmor(armored), "signature")
        if w.take(len(MAGIC)) != MAGIC:
            raise SignatureError("signature: no SSHSIG preamble")
        version = w.uint32()
        if version != SIG_VERSION:
            raise SignatureError(f"signature: unsupported SSHSIG version {version}")
        pub = _parse_public_blob(w.string())
        namespace = w.string()
        w.string()                                       # reserved: ignored, as the spec says
        hash_alg = w.string().decode("ascii", "replace")
        sig = _Wire(w.string(), "signature")
        w.end()
        if hash_alg not in _HASHES:
            raise SignatureError(f"signature: unsupported hash {hash_alg[:20]!r}")
        if sig.string() != KEY_TYPE.encode():
            raise SignatureError(f"signature: not an {KEY_TYPE} signature")
        raw = sig.string()
        sig.end()
        if len(raw) != ED25519_SIG_SIZE:
            raise SignatureError("signature: Ed25519 signature has the wrong length")
        return cls(pub, namespace.decode("utf-8", "replace"), hash_alg, raw)


def verify(message: bytes, armored: str | bytes, trusted: Sequence[Ed25519PublicKey],
           namespace: str) -> Ed25519PublicKey:
    """Check an SSHSIG signature of ``message`` against the ``trusted`` keys.

    Returns the key that made it. Raises SignatureError when the signature is
    malformed, is for another namespace, was made by a key not in ``trusted``,
    or does not match the message.
    """
    sig = Signature.parse(armored)
    if sig.namespace != namespace:
        raise SignatureError(f"signature is for namespace {sig.namespace[:40]!r}, not {namespace!r}")
    blob = public_key_blob(sig.public_key)
    signer = next((k for k in trusted if public_key_blob(k) == blob), None)
    if signer is None:
        raise SignatureError(f"signed by {fingerprint(sig.public_key)}, which is not a trusted station key")
    try:
        signer.verify(sig.raw, _signed_data(namespace, sig.hash_alg, message))
    except InvalidSignature:
        raise SignatureError("signature does not match: the manifest was altered") from None
    return signer


# -- the station key -------------------------------------------------------------

class StationKey:
    """The station's signing key, on disk in OpenSSH private-key format (mode 0600)."""

    def __init__(self, private: Ed25519PrivateKey, path: Path, comment: str) -> None:
        self._private = private
        self.path = path
        self.comment = comment

    def __repr__(self) -> str:   # never the key material
        return f"<StationKey {self.fingerprint} {self.path}>"

    @classmethod
    def load_or_create(cls, state_dir: Path, station_id: str) -> "StationKey":
        """The key in ``state_dir``, made on first call.

        Idempotent and safe against a crash or a second process: the key is
        written to a temporary file, synced, then linked into place, so the real
        name only ever holds a whole key and an existing key is never replaced.
        """
        path = Path(state_dir) / KEY_FILE
        comment = f"dockd@{station_id}"
        if not path.exists():
            _create(path)
        return cls(_load(path), path, comment)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def public_line(self) -> str:
        """``ssh-ed25519 AAAA… dockd@<station>``."""
        return public_key_line(self.public_key, self.comment)

    def allowed_signers_line(self, namespace: str = MANIFEST_NAMESPACE) -> str:
        """One line of an ``ssh-keygen -Y verify`` allowed_signers file for this key."""
        return f'{self.comment} namespaces="{namespace}" {public_key_line(self.public_key)}'

    def sign(self, message: bytes, namespace: str = MANIFEST_NAMESPACE) -> str:
        return sign(self._private, message, namespace)


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)           # fails if another process made one first: keep theirs
        except FileExistsError:
            pass
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise UsageError(f"station key {path} is readable by others; chmod 600 it")
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read station key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"station key {path} is not an unencrypted OpenSSH key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"station key {path} is not an Ed25519 key")
    return key
