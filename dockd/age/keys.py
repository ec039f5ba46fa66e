"""Recipients and identities: the two one-method interfaces, and X25519.

A recipient wraps a file key into stanzas; an identity unwraps it from the
stanzas addressed to it. X25519 is the only type dockd implements. The
hybrid post-quantum, plugin and tagged types are recognised so that they can
be declined by name (AgeUnsupportedError) rather than reported as garbage.

Secret keys never appear in repr(), str() or error messages; the only way to
get one out is ``X25519Identity.secret_key()``, which is meant for writing an
identity file.
"""

from __future__ import annotations

import hmac
import os
from datetime import datetime, timezone
from typing import Protocol, Sequence, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AgeHeaderError, AgeUnsupportedError, KeyFormatError
from . import bech32
from .format import Stanza, b64decode, b64encode

FILE_KEY_SIZE = 16  # 128-bit file key, fresh per file
X25519_KEY_SIZE = 32

RECIPIENT_HRP = "age"
IDENTITY_HRP = "AGE-SECRET-KEY-"
X25519_STANZA_TYPE = "X25519"
# HKDF info for the wrap key; binds the key to this recipient type.
X25519_LABEL = b"age-encryption.org/v1/X25519"
# Each wrap key encrypts exactly one file key (it is derived from a fresh
# ephemeral share), so a constant all-zero nonce is safe.
WRAP_NONCE = bytes(12)
WRAP_KEY_SIZE = 32
# The wrapped file key: 16 bytes plus the Poly1305 tag. Checked before
# decrypting, as the spec requires, to close partitioning-oracle attacks.
WRAPPED_FILE_KEY_SIZE = FILE_KEY_SIZE + 16

# Key types age defines that dockd declines, by their string prefixes.
_DECLINED_RECIPIENT_PREFIXES = {
    "age1pq1": "post-quantum hybrid (mlkem768x25519) recipients",
    "age1tag1": "tagged (p256tag) recipients",
    "age1tagpq1": "tagged post-quantum recipients",
}
_DECLINED_IDENTITY_PREFIXES = {
    "AGE-SECRET-KEY-PQ-1": "post-quantum hybrid (mlkem768x25519) identities",
    "AGE-PLUGIN-": "plugin identities",
}
# age's identity files may hold at most this much; beyond it, this is not one.
MAX_IDENTITY_FILE_SIZE = 16 * 1024 * 1024


@runtime_checkable
class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Stanzas that let the matching identity recover ``file_key``."""
        ...


@runtime_checkable
class Identity(Protocol):
    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """The file key, or None if no stanza is addressed to this identity.

        Raises AgeHeaderError if a stanza of this identity's type is malformed.
        """
        ...


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA-256, as age uses it everywhere (the X25519 wrap key, the header MAC key,
    the payload key)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class X25519Recipient:
    """An ``age1…`` public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != X25519_KEY_SIZE:
            raise KeyFormatError("X25519 recipient must be 32 bytes")
        self._raw = bytes(public_key)
        self._key = X25519PublicKey.from_public_bytes(self._raw)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self._raw)

    def __repr__(self) -> str:
        return f"X25519Recipient({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    @property
    def public_bytes(self) -> bytes:
        return self._raw

    def wrap(self, file_key: bytes) -> list[Stanza]:
        if len(file_key) != FILE_KEY_SIZE:
            raise ValueError("file key must be 16 bytes")
        ephemeral = X25519PrivateKey.generate()  # fresh per stanza and per file
        share = _raw_public(ephemeral.public_key())
        shared = ephemeral.exchange(self._key)
        wrap_key = hkdf(shared, share + self._raw, X25519_LABEL, WRAP_KEY_SIZE)
        body = ChaCha20Poly1305(wrap_key).encrypt(WRAP_NONCE, file_key, None)
        return [Stanza(X25519_STANZA_TYPE, (b64encode(share),), body)]


class X25519Identity:
    """An ``AGE-SECRET-KEY-1…`` secret key."""

    __slots__ = ("_key", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._key = private_key
        self._public = X25519Recipient(_raw_public(private_key.public_key()))

    @classmethod
    def from_bytes(cls, secret: bytes) -> X25519Identity:
        if len(secret) != X25519_KEY_SIZE:
            raise KeyFormatError("X25519 identity must be 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(secret))

    def __repr__(self) -> str:
        return f"X25519Identity(public={str(self._public)!r})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("identities are not picklable: they hold a secret key")

    def public(self) -> X25519Recipient:
        return self._public

    def secret_key(self) -> str:
        """The ``AGE-SECRET-KEY-1…`` encoding. Handle as a secret."""
        raw = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return bech32.encode(IDENTITY_HRP, raw)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            file_key = self._unwrap_one(stanza)
            if file_key is not None:
                return file_key
        return None

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        if stanza.type != X25519_STANZA_TYPE:
            return None  # not ours; identities must ignore unknown stanzas
        if len(stanza.args) != 1:
            raise AgeHeaderError("X25519 stanza: wrong number of arguments")
        share = b64decode(stanza.args[0])
        if len(share) != X25519_KEY_SIZE:
            raise AgeHeaderError("X25519 stanza: share is not 32 bytes")
        if len(stanza.body) != WRAPPED_FILE_KEY_SIZE:
            raise AgeHeaderError("X25519 stanza: body is not 32 bytes")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            # cryptography refuses low-order points (all-zero shared secret).
            raise AgeHeaderError("X25519 stanza: low-order share") from None
        if hmac.compare_digest(shared, bytes(X25519_KEY_SIZE)):
            raise AgeHeaderError("X25519 stanza: low-order share")
        wrap_key = hkdf(shared, share + self._public.public_bytes, X25519_LABEL, WRAP_KEY_SIZE)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(WRAP_NONCE, stanza.body, None)
        except InvalidTag:
            return None  # addressed to another recipient


def generate_identity() -> X25519Identity:
    return X25519Identity(X25519PrivateKey.generate())


def parse_recipient(text: str) -> X25519Recipient:
    """Parse an ``age1…`` X25519 recipient.

    Raises KeyFormatError for anything malformed, AgeUnsupportedError for a
    valid age key type that dockd does not implement.
    """
    if not isinstance(text, str):
        raise KeyFormatError("recipient must be a string")
    for prefix, what in _DECLINED_RECIPIENT_PREFIXES.items():
        if text.lower().startswith(prefix):
            raise AgeUnsupportedError(f"{what} are not supported; use an X25519 age1… key")
    try:
        hrp, data = bech32.decode(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"malformed age recipient: {exc}") from None
    if hrp != RECIPIENT_HRP:
        if hrp.startswith(RECIPIENT_HRP + "1"):  # age1<plugin-name>1…
            raise AgeUnsupportedError("age plugin recipients are not supported")
        raise KeyFormatError("not an age recipient (expected age1…)")
    if len(data) != X25519_KEY_SIZE:
        raise KeyFormatError("malformed age recipient: wrong key length")
    return X25519Recipient(data)


def parse_identity(text: str) -> X25519Identity:
    """Parse one ``AGE-SECRET-KEY-1…`` line. Errors never quote the input."""
    for prefix, what in _DECLINED_IDENTITY_PREFIXES.items():
        if text.startswith(prefix):
            raise AgeUnsupportedError(f"{what} are not supported")
    try:
        hrp, data = bech32.decode(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"malformed age secret key: {exc}") from None
    if hrp != IDENTITY_HRP:
        raise KeyFormatError("not an age secret key (expected AGE-SECRET-KEY-1…)")
    if len(data) != X25519_KEY_SIZE:
        raise KeyFormatError("malformed age secret key: wrong key length")
    return X25519Identity.from_bytes(data)


def parse_identity_file(text: str) -> list[X25519Identity]:
    """Parse the identity file format that ``age-keygen`` writes.

    One key per line; blank lines and lines starting with "#" are ignored.
    """
    if len(text) > MAX_IDENTITY_FILE_SIZE:
        raise KeyFormatError("identity file too large")
    identities: list[X25519Identity] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")  # tolerate CRLF, as age does
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(parse_identity(line))
        except (KeyFormatError, AgeUnsupportedError) as exc:
            raise type(exc)(f"identity file line {number}: {exc}") from None
    if not identities:
        raise KeyFormatError("identity file holds no identities")
    return identities


def format_identity_file(identity: X25519Identity, created: datetime | None = None) -> str:
    """The text ``age-keygen`` would write for ``identity``."""
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return (
        f"# created: {when.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"# public key: {identity.public()}\n"
        f"{identity.secret_key()}\n"
    )


def new_file_key() -> bytes:
    return os.urandom(FILE_KEY_SIZE)
