"""Object keys: the one check every backend makes before a key reaches its store.

Keys are built by ``pipeline/naming.py``; this refuses what no backend may
store whatever built it: an empty key or component, ``.`` or ``..``, control
characters, and a key (with the store's prefix) longer than ``MAX_KEY_BYTES``
of UTF-8 (S3's limit, kept by every backend so that a key is valid everywhere).
"""

from __future__ import annotations

from ..errors import PermanentStoreError

MAX_KEY_BYTES = 1024


def validate_key(key: str, prefix: str = "") -> str:
    """``key`` under ``prefix`` (``prefix/key``, or ``key`` with no prefix).

    Raises ``PermanentStoreError`` for a key no store may hold (see the module doc).
    """
    if not key or any(p in ("", ".", "..") for p in key.split("/")) \
            or any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise PermanentStoreError(f"invalid object key {key!r}")
    full = f"{prefix}/{key}" if prefix else key
    n = len(full.encode("utf-8", "surrogatepass"))
    if n > MAX_KEY_BYTES:
        raise PermanentStoreError(f"invalid object key {key!r}: {n} bytes, at most {MAX_KEY_BYTES}")
    return full
