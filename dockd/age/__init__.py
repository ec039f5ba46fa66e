"""age v1 (https://age-encryption.org/v1) for dockd, on ``cryptography``.

Layers, as in the reference implementation:

* ``keys``: recipients and identities (X25519, Bech32 ``age1…`` /
  ``AGE-SECRET-KEY-1…``), the two one-method interfaces;
* ``format``: the textual header (stanzas, canonical base64, MAC line);
* ``stream``: the STREAM payload (64 KiB ChaCha20-Poly1305 chunks);
* ``file``: a whole file, tying the three together.

Armor, scrypt (passphrases), plugins and post-quantum hybrid recipients are
declined with AgeUnsupportedError.
"""

from .file import DecryptReader, Encryptor, decrypt, encrypted_size
from .format import Stanza
from .keys import (
    Identity,
    Recipient,
    X25519Identity,
    X25519Recipient,
    format_identity_file,
    generate_identity,
    parse_identity,
    parse_identity_file,
    parse_recipient,
)

__all__ = [
    "DecryptReader",
    "Encryptor",
    "Identity",
    "Recipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "encrypted_size",
    "format_identity_file",
    "generate_identity",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
]
