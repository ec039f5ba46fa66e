"""Header text and STREAM layer in isolation."""

from __future__ import annotations

import io
import os

import pytest

from dockd.age import format as fmt
from dockd.age import stream
from dockd.age.file import _Source
from dockd.errors import AgeHeaderError, AgePayloadError

K = 64 * 1024


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", bytes(range(256))])
def test_base64_round_trip_is_unpadded(data: bytes) -> None:
    text = fmt.b64encode(data)
    assert "=" not in text
    assert fmt.b64decode(text) == data


@pytest.mark.parametrize("bad", ["YQ==", "YR", "YWJ", "Y", "YW\n", "YW-_", "Y Q", "é"])
def test_non_canonical_base64_is_rejected(bad: str) -> None:
    # "YR" decodes to b"a" but with non-zero stray bits; "YWJ" likewise for b"ab".
    with pytest.raises(AgeHeaderError):
        fmt.b64decode(bad)


@pytest.mark.parametrize("size, lines", [(0, [""]), (47, ["x" * 63]), (48, ["x" * 64, ""]), (49, ["x" * 64, "x" * 2])])
def test_stanza_body_wraps_at_64_columns_and_ends_short(size: int, lines: list[str]) -> None:
    encoded = fmt.Stanza("t", ("a",), bytes(size)).marshal().decode()
    body_lines = encoded.split("\n")[1:-1]
    assert [len(line) for line in body_lines] == [len(line) for line in lines]
    parsed = fmt.parse(_Source(io.BytesIO(
        fmt.VERSION_LINE + encoded.encode() + b"--- " + fmt.b64encode(bytes(32)).encode() + b"\n"
    )))
    assert parsed.stanzas == (fmt.Stanza("t", ("a",), bytes(size)),)


def test_stanza_arguments_must_be_printable_words() -> None:
    for bad in [fmt.Stanza("two words"), fmt.Stanza("t", ("",)), fmt.Stanza("t\n")]:
        with pytest.raises(ValueError):
            bad.marshal()


def test_header_parse_stops_at_the_mac_line() -> None:
    header = fmt.Header((fmt.Stanza("X", ("y",), b"body"),), bytes(32))
    src = _Source(io.BytesIO(header.marshal() + b"PAYLOAD"))
    assert fmt.parse(src) == header
    assert src.read_exact(100) == b"PAYLOAD"


@pytest.mark.parametrize("text", [
    b"age-encryption.org/v1\n--- " + fmt.b64encode(bytes(32)).encode() + b"\n",  # no stanzas
    b"age-encryption.org/v1\n-> X " + b"a" * (fmt.MAX_LINE_SIZE + 10) + b"\n",
    b"age-encryption.org/v1\n" + b"-> X a\n\n" * (fmt.MAX_STANZAS + 1),
    b"age-encryption.org/v1\n" + (b"-> X a\n" + b"A" * 64 + b"\n") * 20000,
    b"age-encryption.org/v1\n-> X a\n",
    b"age-encryption.org/v1",
])
def test_hostile_or_truncated_headers_are_bounded_errors(text: bytes) -> None:
    with pytest.raises(AgeHeaderError):
        fmt.parse(_Source(io.BytesIO(text)))


@pytest.mark.parametrize("size", [0, 1, K - 1, K, K + 1, 2 * K, 2 * K + 1])
def test_fallback_without_aead_into_writes_the_same_bytes(size: int, monkeypatch) -> None:
    """Older cryptography releases lack encrypt_into; output must not change."""
    key = os.urandom(32)
    plaintext = os.urandom(size)

    def seal() -> bytes:
        out = io.BytesIO()
        w = stream.StreamWriter(key, out)
        w.write(plaintext)
        w.close()
        return out.getvalue()

    def open_(sealed: bytes) -> bytes:
        r = stream.StreamReader(key, _Source(io.BytesIO(sealed)))
        parts = []
        while (chunk := r.next_chunk()) is not None:
            parts.append(bytes(chunk))
        return b"".join(parts)

    fast = seal()
    monkeypatch.setattr(stream, "HAS_AEAD_INTO", False)
    slow = seal()
    assert slow == fast
    assert open_(fast) == plaintext
    with pytest.raises(AgePayloadError):
        open_(fast[:-1] + bytes([fast[-1] ^ 1]))


def test_payload_size_formula() -> None:
    assert stream.payload_size(0) == 16
    assert stream.payload_size(1) == 17
    assert stream.payload_size(K) == K + 16
    assert stream.payload_size(K + 1) == K + 1 + 32


def test_chunk_nonce_layout() -> None:
    assert stream.chunk_nonce(0, last=False) == bytes(12)
    assert stream.chunk_nonce(1, last=True) == bytes(10) + b"\x01\x01"
    assert stream.chunk_nonce(256, last=False) == bytes(9) + b"\x01\x00\x00"
    with pytest.raises(OverflowError):
        stream.chunk_nonce(1 << 88, last=False)
