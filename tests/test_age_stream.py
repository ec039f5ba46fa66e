"""Encryptor/decryptor behaviour: chunk boundaries, tampering, fuzzing."""

from __future__ import annotations

import array
import io
import os
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockd.age import DecryptReader, Encryptor, decrypt, generate_identity
from dockd.errors import AgeError, AgeHeaderError, AgeNoIdentityError, AgePayloadError

K = 64 * 1024  # the spec's chunk size, written out independently of the code
TAG = 16
NONCE = 16
MiB = 1024 * 1024

IDENTITY = generate_identity()
OTHER = generate_identity()

SIZES = [0, 1, K - 1, K, K + 1, 2 * K - 1, 2 * K, 2 * K + 1, 3 * K, 3 * K + 1]
WRITES = [1, 4096, K, MiB, None]  # None: the whole plaintext in one write


def expected_size(header_size: int, n: int) -> int:
    chunks = 1 if n == 0 else (n + K - 1) // K
    return header_size + NONCE + n + TAG * chunks


def seal(plaintext: bytes, write_size: int | None = None, recipients=None) -> tuple[bytes, int]:
    out = io.BytesIO()
    enc = Encryptor(out, recipients or [IDENTITY.public()])
    step = write_size or max(1, len(plaintext))
    view = memoryview(plaintext)
    for i in range(0, len(plaintext), step):
        assert enc.write(view[i:i + step]) == len(view[i:i + step])
    enc.close()
    return out.getvalue(), enc.header_size


def open_(ciphertext: bytes, identities=None) -> bytes:
    out = io.BytesIO()
    n = decrypt(io.BytesIO(ciphertext), out, identities or [IDENTITY])
    assert n == len(out.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("write_size", WRITES, ids=lambda w: f"w{w or 'whole'}")
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"n{n}")
def test_boundary_round_trip(size: int, write_size: int | None) -> None:
    plaintext = random.Random(size).randbytes(size)
    ciphertext, header_size = seal(plaintext, write_size)
    assert len(ciphertext) == expected_size(header_size, size)
    assert ciphertext.startswith(b"age-encryption.org/v1\n")
    assert open_(ciphertext) == plaintext


def test_empty_plaintext_is_one_empty_final_chunk() -> None:
    ciphertext, header_size = seal(b"")
    assert len(ciphertext) == header_size + NONCE + TAG
    assert open_(ciphertext) == b""


def test_full_last_chunk_is_held_back_until_close() -> None:
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    start = len(out.getvalue())
    enc.write(b"x" * K)
    assert len(out.getvalue()) == start, "a full chunk may be the last: nothing sealed yet"
    enc.write(b"y")
    assert len(out.getvalue()) == start + K + TAG
    enc.close()
    assert open_(out.getvalue()) == b"x" * K + b"y"


def test_close_does_not_close_out_and_is_idempotent() -> None:
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    enc.write(b"abc")
    enc.close()
    size = len(out.getvalue())
    enc.close()
    assert not out.closed and len(out.getvalue()) == size
    with pytest.raises(ValueError):
        enc.write(b"more")


def test_writes_accept_any_buffer() -> None:
    words = array.array("I", range(1000))
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    enc.write(bytearray(b"ab"))
    enc.write(memoryview(words))
    enc.write(b"")
    enc.close()
    assert open_(out.getvalue()) == b"ab" + words.tobytes()
    assert enc.plaintext_size == 2 + len(words.tobytes())
    assert enc.size == len(out.getvalue())


def test_caller_may_reuse_its_buffer_after_write() -> None:
    buf = bytearray(b"a" * (K + 10))
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    enc.write(buf)
    buf[:] = b"b" * len(buf)
    enc.write(buf)
    enc.close()
    assert open_(out.getvalue()) == b"a" * (K + 10) + b"b" * (K + 10)


def test_context_manager_leaves_no_final_chunk_on_error() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with Encryptor(out, [IDENTITY.public()]) as enc:
            enc.write(b"partial" * 100)
            raise RuntimeError("camera pulled")
    with pytest.raises(AgePayloadError):
        open_(out.getvalue())


def test_several_recipients_each_open_the_file() -> None:
    third = generate_identity()
    ciphertext, _ = seal(b"evidence", recipients=[IDENTITY.public(), OTHER.public(), third.public()])
    assert ciphertext.count(b"\n-> X25519 ") == 3
    for ident in (IDENTITY, OTHER, third):
        assert open_(ciphertext, [ident]) == b"evidence"


def test_no_recipients_is_refused() -> None:
    with pytest.raises(AgeError):
        Encryptor(io.BytesIO(), [])


def test_each_file_has_fresh_keys() -> None:
    a, _ = seal(b"same")
    b, _ = seal(b"same")
    assert a != b


def test_reprs_hold_nothing_secret() -> None:
    out = io.BytesIO()
    enc = Encryptor(out, [IDENTITY.public()])
    enc.write(b"secret plaintext")
    enc.close()
    reader = DecryptReader(io.BytesIO(out.getvalue()), [IDENTITY])
    for obj in (enc, reader, IDENTITY):
        text = repr(obj) + str(obj)
        assert "AGE-SECRET-KEY" not in text
        assert "secret plaintext" not in text
    assert "AGE-SECRET-KEY" not in repr(vars(enc))


# -- reader ----------------------------------------------------------------

def test_reader_is_file_like() -> None:
    plaintext = os.urandom(3 * K + 5)
    ciphertext, _ = seal(plaintext)
    reader = DecryptReader(io.BytesIO(ciphertext), [IDENTITY])
    assert reader.readable()
    assert reader.read(10) == plaintext[:10]
    assert reader.read(K) == plaintext[10:K]  # never crosses an unread chunk edge
    assert reader.read() == plaintext[K:]
    assert reader.read(1) == b""


def test_reader_works_over_a_non_seekable_unbuffered_source() -> None:
    plaintext = os.urandom(2 * K + 3)
    ciphertext, _ = seal(plaintext)
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb", buffering=0) as sink:
            view = memoryview(ciphertext)
            while view:  # a pipe takes partial writes
                view = view[sink.write(view[:4093]):]

    writer = threading.Thread(target=feed)
    writer.start()
    with open(r, "rb", buffering=0) as src:
        out = io.BytesIO()
        assert decrypt(src, out, [IDENTITY]) == len(plaintext)
    writer.join()
    assert out.getvalue() == plaintext


# -- tampering ---------------------------------------------------------------

PLAINTEXT = random.Random(7).randbytes(2 * K + 1000)
CIPHERTEXT, HEADER_SIZE = seal(PLAINTEXT)
PAYLOAD_START = HEADER_SIZE  # the payload nonce is part of the payload


def _payload_offsets() -> list[int]:
    end = len(CIPHERTEXT)
    chunk0 = HEADER_SIZE + NONCE
    offsets = {PAYLOAD_START, PAYLOAD_START + 15, chunk0, end - 1, end - TAG}
    for c in range(3):
        start = chunk0 + c * (K + TAG)
        offsets |= {start, start + 1, min(start + K - 1, end - 1), min(start + K + TAG - 1, end - 1)}
    return sorted(o for o in offsets if PAYLOAD_START <= o < end)


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[offset] ^= 1 << bit
    return bytes(b)


@pytest.mark.parametrize("offset", _payload_offsets())
def test_bit_flip_in_payload_is_caught(offset: int) -> None:
    with pytest.raises(AgePayloadError):
        open_(_flip(CIPHERTEXT, offset, offset % 8))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=PAYLOAD_START, max_value=len(CIPHERTEXT) - 1), st.integers(0, 7))
def test_any_bit_flip_in_payload_is_caught(offset: int, bit: int) -> None:
    with pytest.raises(AgePayloadError):
        open_(_flip(CIPHERTEXT, offset, bit))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=HEADER_SIZE - 1), st.integers(0, 7))
def test_any_bit_flip_in_header_is_caught(offset: int, bit: int) -> None:
    with pytest.raises((AgeHeaderError, AgeNoIdentityError)):
        open_(_flip(CIPHERTEXT, offset, bit))


@pytest.mark.parametrize("keep", [
    0, 10, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + NONCE - 1,
    HEADER_SIZE + NONCE, HEADER_SIZE + NONCE + TAG - 1, HEADER_SIZE + NONCE + K,
    HEADER_SIZE + NONCE + K + TAG, HEADER_SIZE + NONCE + 2 * (K + TAG),
    len(CIPHERTEXT) - 1,
])
def test_truncation_is_caught(keep: int) -> None:
    expected = AgePayloadError if keep >= HEADER_SIZE + NONCE else AgeHeaderError
    with pytest.raises(expected):
        open_(CIPHERTEXT[:keep])


def test_truncation_at_a_chunk_boundary_releases_only_authentic_chunks() -> None:
    out = io.BytesIO()
    with pytest.raises(AgePayloadError):
        decrypt(io.BytesIO(CIPHERTEXT[: HEADER_SIZE + NONCE + K + TAG]), out, [IDENTITY])
    assert out.getvalue() == PLAINTEXT[:K]


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG, bytes(K + TAG)])
def test_trailing_data_is_caught(extra: bytes) -> None:
    with pytest.raises(AgePayloadError):
        open_(CIPHERTEXT + extra)


def test_reordered_chunks_are_caught() -> None:
    start = HEADER_SIZE + NONCE
    c0 = CIPHERTEXT[start:start + K + TAG]
    c1 = CIPHERTEXT[start + K + TAG:start + 2 * (K + TAG)]
    swapped = CIPHERTEXT[:start] + c1 + c0 + CIPHERTEXT[start + 2 * (K + TAG):]
    with pytest.raises(AgePayloadError):
        open_(swapped)


def test_wrong_identity_is_no_match() -> None:
    with pytest.raises(AgeNoIdentityError):
        open_(CIPHERTEXT, [OTHER])


def test_no_identities_is_no_match() -> None:
    with pytest.raises(AgeNoIdentityError):
        decrypt(io.BytesIO(CIPHERTEXT), io.BytesIO(), [])


def test_right_identity_among_wrong_ones_opens() -> None:
    assert open_(CIPHERTEXT, [OTHER, IDENTITY]) == PLAINTEXT


def test_payload_error_is_sticky() -> None:
    reader = DecryptReader(io.BytesIO(_flip(CIPHERTEXT, len(CIPHERTEXT) - 1)), [IDENTITY])
    assert reader.read(K) == PLAINTEXT[:K]
    assert reader.read(K) == PLAINTEXT[K:2 * K]
    for _ in range(2):
        with pytest.raises(AgePayloadError):
            reader.read(K)


# -- fuzzing -----------------------------------------------------------------

SMALL, _ = seal(b"hello, evidence", recipients=[IDENTITY.public(), OTHER.public()])
TWO_CHUNKS, _ = seal(random.Random(1).randbytes(K + 7))


def _decrypt_or_age_error(data: bytes) -> bytes | None:
    """Decrypt; any AgeError is a clean refusal. Anything else propagates."""
    try:
        return open_(data)
    except AgeError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=2048).map(lambda b: b"age-encryption.org/v1\n" + b),
    st.binary(max_size=512).map(lambda b: b"age-encryption.org/v1\n-> X25519 " + b),
))
def test_fuzz_arbitrary_bytes_only_raise_age_errors(data: bytes) -> None:
    assert _decrypt_or_age_error(data) is None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from([SMALL, TWO_CHUNKS]))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=8))
    return original, bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_files_never_decrypt_and_only_raise_age_errors(case: tuple[bytes, bytes]) -> None:
    original, data = case
    result = _decrypt_or_age_error(data)
    if data == original:
        assert result is not None
    else:
        # The header is canonical and MACed and the payload is authenticated,
        # so no change at all can still decrypt.
        assert result is None


# -- resources ---------------------------------------------------------------

class _CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        self.size += len(b)
        return len(b)


def test_memory_stays_constant_while_streaming() -> None:
    """Heap use beyond the caller's own buffers stays under 1 MiB however
    much is streamed: nothing accumulates per chunk or per write."""
    import tracemalloc

    block = os.urandom(MiB)
    ciphertext, _ = seal(os.urandom(16 * MiB))
    tracemalloc.start()
    try:
        enc = Encryptor(_CountingSink(), [IDENTITY.public()])
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(64):
            enc.write(block)
        enc.close()
        enc_peak = tracemalloc.get_traced_memory()[1] - base

        src, sink = io.BytesIO(ciphertext), _CountingSink()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert decrypt(src, sink, [IDENTITY]) == 16 * MiB
        dec_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert enc.plaintext_size == 64 * MiB
    assert enc_peak < MiB, enc_peak
    assert dec_peak < MiB, dec_peak
