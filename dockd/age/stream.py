"""The age v1 payload: STREAM over ChaCha20-Poly1305 in 64 KiB chunks.

Each chunk is sealed under the payload key with a 12-byte nonce made of an
11-byte big-endian chunk counter and a 1-byte flag that is set only on the
final chunk. The counter stops chunks being reordered or dropped; the flag
stops the file being truncated at a chunk boundary. The nonce is never reused
because the payload key is fresh per file (derived from a fresh 16-byte nonce)
and the counter only moves forward within a file.

This layer sees only the payload key and ciphertext bytes; the header and file
key belong to ``dockd.age.file``.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import AgePayloadError

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16  # Poly1305
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
KEY_SIZE = 32
NONCE_SIZE = 12  # ChaCha20-Poly1305 (RFC 7539)
COUNTER_SIZE = 11  # big-endian, in the first 11 bytes of the nonce
LAST_CHUNK_FLAG = b"\x01"
NOT_LAST_CHUNK_FLAG = b"\x00"
# 2**88 chunks of 64 KiB is far beyond any file; the check is a tripwire, not a
# limit anyone will meet.
MAX_CHUNKS = 1 << (8 * COUNTER_SIZE)


# encrypt_into/decrypt_into (newer cryptography releases) seal and open in
# place, sparing a 64 KiB allocation per chunk; older releases fall back to
# encrypt/decrypt with identical output.
HAS_AEAD_INTO = hasattr(ChaCha20Poly1305, "encrypt_into") and hasattr(ChaCha20Poly1305, "decrypt_into")


def chunk_nonce(counter: int, last: bool) -> bytes:
    if counter >= MAX_CHUNKS:
        raise OverflowError("STREAM chunk counter exhausted")
    return counter.to_bytes(COUNTER_SIZE, "big") + (LAST_CHUNK_FLAG if last else NOT_LAST_CHUNK_FLAG)


def payload_size(plaintext_size: int) -> int:
    """Ciphertext bytes for ``plaintext_size`` bytes, not counting header or nonce.

    There is always at least one chunk: an empty plaintext is one empty final
    chunk, i.e. a bare tag.
    """
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return plaintext_size + chunks * TAG_SIZE


class StreamWriter:
    """Seal plaintext chunk by chunk into ``out``.

    A full chunk is held back until more data arrives or ``close()`` is
    called, because only then is it known whether it is the final chunk.
    Input that arrives in large blocks is sealed straight from the caller's
    buffer; only the last (held-back or partial) chunk of each write is
    copied.
    """

    def __init__(self, key: bytes, out: BinaryIO) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._out = out
        self._counter = 0
        self._into = HAS_AEAD_INTO
        self._pending = bytearray()  # at most CHUNK_SIZE bytes, not yet sealed
        self._sealed = bytearray(ENCRYPTED_CHUNK_SIZE)  # reused output buffer
        self._closed = False

    def __repr__(self) -> str:
        return f"<StreamWriter chunks={self._counter} closed={self._closed}>"

    def _seal(self, chunk: memoryview | bytearray, last: bool) -> None:
        nonce = chunk_nonce(self._counter, last)
        if self._into:
            sealed = memoryview(self._sealed)[: len(chunk) + TAG_SIZE]
            self._aead.encrypt_into(nonce, chunk, None, sealed)
            # Writers must not keep the buffer past write() (io contract), so
            # the same buffer serves every chunk.
            self._out.write(sealed)
        else:
            self._out.write(self._aead.encrypt(nonce, bytes(chunk), None))
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed age stream")
        view = memoryview(data).cast("B")
        total = len(view)
        if not total:
            return 0
        pending = self._pending
        if pending:
            room = CHUNK_SIZE - len(pending)
            if room:
                pending += view[:room]
                view = view[room:]
            if not view:
                return total  # still possibly the last chunk: hold it back
            self._seal(pending, last=False)
            pending.clear()
        # Everything but the last (possibly full) chunk can be sealed in place.
        end = len(view) - ((len(view) - 1) % CHUNK_SIZE + 1)
        for start in range(0, end, CHUNK_SIZE):
            self._seal(view[start:start + CHUNK_SIZE], last=False)
        pending += view[end:]
        return total

    def close(self) -> None:
        """Seal the final chunk. An empty stream is a single empty final chunk."""
        if self._closed:
            return
        self._seal(self._pending, last=True)
        self._pending.clear()
        self._closed = True


class ChunkSource(Protocol):
    def readinto_full(self, buf: memoryview) -> int: ...
    def at_eof(self) -> bool: ...


class StreamReader:
    """Open STREAM chunks one at a time.

    Plaintext is released only after its chunk authenticates, so a reader never
    sees unauthenticated bytes. An error is sticky: after one, every further
    call raises it again.
    """

    def __init__(self, key: bytes, src: ChunkSource) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._src = src
        self._counter = 0
        self._into = HAS_AEAD_INTO
        self._sealed = bytearray(ENCRYPTED_CHUNK_SIZE)
        self._plain = bytearray(CHUNK_SIZE)
        self._done = False
        self._error: AgePayloadError | None = None

    def __repr__(self) -> str:
        return f"<StreamReader chunks={self._counter} done={self._done}>"

    def _open(self, sealed: memoryview, last: bool) -> int | None:
        try:
            nonce = chunk_nonce(self._counter, last)
            if self._into:
                plain = memoryview(self._plain)[: len(sealed) - TAG_SIZE]
                return self._aead.decrypt_into(nonce, sealed, None, plain)
            opened = self._aead.decrypt(nonce, bytes(sealed), None)
        except InvalidTag:
            return None
        self._plain[: len(opened)] = opened
        return len(opened)

    def next_chunk(self) -> memoryview | None:
        """The next authenticated plaintext chunk, or None after the final one.

        The view is valid until the next call.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            return None
        try:
            return self._next_chunk()
        except AgePayloadError as exc:
            self._error = exc
            raise

    def _next_chunk(self) -> memoryview:
        n = self._src.readinto_full(memoryview(self._sealed))
        sealed = memoryview(self._sealed)[:n]
        if n == 0:
            raise AgePayloadError("payload truncated: no final chunk")
        if n < TAG_SIZE:
            raise AgePayloadError("payload truncated: chunk shorter than its tag")
        if n < ENCRYPTED_CHUNK_SIZE:
            # A short chunk can only be the final one, and it may be empty only
            # if it is also the first: otherwise the file could be extended by
            # an empty final chunk after a truncation point.
            if n == TAG_SIZE and self._counter:
                raise AgePayloadError("payload: empty final chunk after data")
            size, last = self._open(sealed, last=True), True
        else:
            # A full chunk is usually not the last, but may be: try both.
            size, last = self._open(sealed, last=False), False
            if size is None:
                size, last = self._open(sealed, last=True), True
        if size is None:
            raise AgePayloadError(
                f"payload chunk {self._counter} failed authentication (corrupted or tampered)"
            )
        self._counter += 1
        if last:
            self._done = True
            if not self._src.at_eof():
                # The final chunk itself is authentic; release it, then fail
                # on the next call, as the reference implementation does.
                self._error = AgePayloadError("payload: trailing data after the final chunk")
        return memoryview(self._plain)[:size]
