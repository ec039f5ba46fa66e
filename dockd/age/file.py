"""A whole age v1 file: header, payload nonce, STREAM payload.

This is where the file key lives, briefly: it is generated (or unwrapped),
used to derive the header MAC key and the payload key, and then dropped. Only
the payload AEAD outlives the constructor.
"""

from __future__ import annotations

import hmac
import io
import os
from typing import BinaryIO, Sequence

from ..errors import AgeError, AgeHeaderError, AgeNoIdentityError, AgeUnsupportedError
from . import format as fmt
from .keys import FILE_KEY_SIZE, X25519_STANZA_TYPE, Identity, Recipient, hkdf, new_file_key
from .stream import KEY_SIZE, StreamReader, StreamWriter, payload_size

# HKDF info labels. Distinct labels make the MAC key and the payload key
# independent even though both come from the same file key.
HEADER_LABEL = b"header"
PAYLOAD_LABEL = b"payload"
# The payload key is derived from the file key and this fresh nonce, so even a
# (forbidden) reused file key would not reuse a payload key.
PAYLOAD_NONCE_SIZE = 16

# Stanza types of native age recipients that dockd does not implement. A file
# wrapped only to these is declined (AgeUnsupportedError), not "no match".
DECLINED_STANZA_TYPES = frozenset({"scrypt", "mlkem768x25519", "p256tag", "mlkem768p256tag"})

# How much the header reader asks of the source at a time. Whatever it reads
# past the header is kept and served as the start of the payload.
_READ_BLOCK = 16 * 1024


def header_mac(file_key: bytes, header: fmt.Header) -> bytes:
    mac_key = hkdf(file_key, b"", HEADER_LABEL, KEY_SIZE)
    return hmac.new(mac_key, header.marshal_without_mac(), "sha256").digest()


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, PAYLOAD_LABEL, KEY_SIZE)


def encrypted_size(plaintext_size: int, header_size: int) -> int:
    """Total file size for a plaintext of ``plaintext_size`` bytes."""
    return header_size + PAYLOAD_NONCE_SIZE + payload_size(plaintext_size)


class Encryptor:
    """Stream plaintext into an age file written to ``out``.

    The header is written at construction. ``write()`` takes any amount of
    data; ``close()`` seals the final chunk and does not close ``out``. Used
    as a context manager, the final chunk is written only if the block exits
    cleanly, so a failed copy leaves a file that will not authenticate rather
    than a valid but short one. If ``out.write`` raises, abandon the file:
    it cannot be resumed.
    """

    def __init__(self, out: BinaryIO, recipients: Sequence[Recipient]) -> None:
        if isinstance(recipients, (str, bytes)) or not recipients:
            raise AgeError("age: at least one recipient is required")
        file_key = new_file_key()
        stanzas: list[fmt.Stanza] = []
        for recipient in recipients:
            stanzas.extend(recipient.wrap(file_key))
        header = fmt.Header(tuple(stanzas))
        header = fmt.Header(header.stanzas, header_mac(file_key, header))
        encoded = header.marshal()
        nonce = os.urandom(PAYLOAD_NONCE_SIZE)
        out.write(encoded)
        out.write(nonce)
        self.header_size = len(encoded)
        self.plaintext_size = 0
        self._recipients = len(stanzas)
        self._stream = StreamWriter(payload_key(file_key, nonce), out)
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Encryptor stanzas={self._recipients} plaintext_size={self.plaintext_size} "
            f"closed={self._closed}>"
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._stream.write(data)
        self.plaintext_size += n
        return n

    def close(self) -> None:
        self._stream.close()
        self._closed = True

    def retarget(self, out: BinaryIO) -> None:
        """Write what follows to ``out`` (a writer that hands out its output in blocks)."""
        self._stream._out = out

    @property
    def size(self) -> int:
        """Bytes this file occupies once closed (exact after close())."""
        return encrypted_size(self.plaintext_size, self.header_size)

    def __enter__(self) -> Encryptor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()


class _Source:
    """``src`` with a small look-ahead buffer, so the header can be read by
    lines without consuming any payload byte we cannot give back."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._src.read(_READ_BLOCK)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def readline_bounded(self, limit: int) -> bytes:
        """One line including its LF; at EOF, whatever is left (maybe b"")."""
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched, limit)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            searched = len(self._buf)
            if searched >= limit:
                raise AgeHeaderError("header: line or header too long")
            if not self._fill():
                line = bytes(self._buf)
                self._buf.clear()
                return line

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n and self._fill():
            pass
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readinto_full(self, view: memoryview) -> int:
        """Fill ``view`` unless EOF comes first; return the byte count."""
        n = min(len(self._buf), len(view))
        if n:
            view[:n] = self._buf[:n]
            del self._buf[:n]
        readinto = getattr(self._src, "readinto", None)
        while n < len(view) and not self._eof:
            if readinto is not None:
                got = readinto(view[n:])
            else:
                data = self._src.read(len(view) - n)
                got = len(data)
                view[n:n + got] = data
            if not got:
                self._eof = True
                break
            n += got
        return n

    def at_eof(self) -> bool:
        if self._buf:
            return False
        return not self._fill()


def _unwrap(header: fmt.Header, identities: Sequence[Identity]) -> bytes:
    if isinstance(identities, (str, bytes)):
        raise TypeError("identities must be a sequence of identities")
    file_key = None
    for identity in identities:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            break
    types = {s.type for s in header.stanzas}
    if file_key is None:
        if X25519_STANZA_TYPE not in types and types & DECLINED_STANZA_TYPES:
            declined = ", ".join(sorted(types & DECLINED_STANZA_TYPES))
            raise AgeUnsupportedError(f"file is encrypted to {declined} recipients, which dockd does not open")
        if not identities:
            raise AgeNoIdentityError("age: no identities given")
        raise AgeNoIdentityError("no identity matched any recipient stanza")
    if len(file_key) != FILE_KEY_SIZE:
        raise AgeHeaderError("header: unwrapped file key has the wrong length")
    if not hmac.compare_digest(header_mac(file_key, header), header.mac):
        raise AgeHeaderError("header: bad header MAC")
    return file_key


class DecryptReader(io.RawIOBase):
    """Plaintext of the age file in ``src``, authenticated chunk by chunk.

    The header is parsed, unwrapped and MAC-checked at construction, which
    raises AgeHeaderError, AgeNoIdentityError or AgeUnsupportedError. Reads
    raise AgePayloadError at the first chunk that fails; bytes returned before
    that were authentic but the file as a whole is not, and callers must
    discard them. ``close()`` does not close ``src``.
    """

    def __init__(self, src: BinaryIO, identities: Sequence[Identity]) -> None:
        super().__init__()
        self._src = _Source(src)
        header = fmt.parse(self._src)
        file_key = _unwrap(header, identities)
        nonce = self._src.read_exact(PAYLOAD_NONCE_SIZE)
        if len(nonce) != PAYLOAD_NONCE_SIZE:
            raise AgeHeaderError("payload nonce missing or short")
        self.header_size = len(header.marshal())
        self._stream = StreamReader(payload_key(file_key, nonce), self._src)
        self._unread = memoryview(b"")

    def __repr__(self) -> str:
        return f"<DecryptReader {self._stream!r}>"

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if not view:
            return 0
        if not self._unread:
            chunk = self._stream.next_chunk()
            if chunk is None:
                return 0
            self._unread = chunk
        n = min(len(view), len(self._unread))
        view[:n] = self._unread[:n]
        self._unread = self._unread[n:]
        return n

    def chunks(self):  # type: ignore[no-untyped-def]
        """Yield each authenticated chunk as a view valid until the next one."""
        if self._unread:
            chunk, self._unread = self._unread, memoryview(b"")
            yield chunk
        while (chunk := self._stream.next_chunk()) is not None:
            yield chunk


def decrypt(src: BinaryIO, dst: BinaryIO, identities: Sequence[Identity]) -> int:
    """Decrypt the age file in ``src`` into ``dst``; return the plaintext size.

    On AgePayloadError, ``dst`` holds an authentic prefix of the plaintext and
    must be discarded by the caller: the file was truncated or tampered with.
    """
    reader = DecryptReader(src, identities)
    total = 0
    for chunk in reader.chunks():
        dst.write(chunk)
        total += len(chunk)
    return total
