"""C2SP CCTV age test vectors (c2sp.org/CCTV/age).

Each vector file is a few ``key: value`` lines, a blank line, then the age
file (zlib-compressed if ``compressed: zlib``). ``expect:`` is one of
success, header failure, HMAC failure, payload failure, no match, armor
failure. ``payload:`` is the SHA-256 of the plaintext, or for a payload
failure of the plaintext released before the failure.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockd.age import decrypt, DecryptReader, parse_identity
from dockd.age import format as fmt
from dockd.age.file import payload_key
from dockd.age.stream import StreamWriter
from dockd.errors import (
    AgeError,
    AgeHeaderError,
    AgeNoIdentityError,
    AgePayloadError,
    AgeUnsupportedError,
)

KIT = Path(__file__).resolve().parents[2] / "shared" / "age-testkit"
MISSING = f"CCTV age vectors not found at {KIT} (expected ../shared/age-testkit)"

# Families dockd implements and must get exactly right.
IMPLEMENTED = ("x25519", "stream_", "header_", "hmac_", "stanza_", "empty", "version_")
# Families dockd declines (armor, passphrases, post-quantum hybrid).
DECLINED = ("armor_", "scrypt", "hybrid")


@dataclass
class Vector:
    name: str
    expect: str
    file: bytes
    payload_sha256: str | None = None
    file_key: bytes | None = None
    identities: list[str] = field(default_factory=list)
    passphrases: list[str] = field(default_factory=list)
    armored: bool = False


def load(path: Path) -> Vector:
    meta, sep, body = path.read_bytes().partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the vector header"
    v = Vector(path.name, "", b"")
    compressed = False
    for line in meta.decode("utf-8").split("\n"):
        key, _, value = line.partition(": ")
        if key == "expect":
            v.expect = value
        elif key == "payload":
            v.payload_sha256 = value
        elif key == "file key":
            v.file_key = bytes.fromhex(value)
        elif key == "identity":
            v.identities.append(value)
        elif key == "passphrase":
            v.passphrases.append(value)
        elif key == "armored":
            v.armored = True
        elif key == "compressed":
            assert value == "zlib", f"{path.name}: unknown compression {value}"
            compressed = True
        elif key != "comment":
            raise AssertionError(f"{path.name}: unknown vector header {key!r}")
    assert v.expect in {
        "success", "header failure", "HMAC failure", "payload failure", "no match", "armor failure"
    }, v.expect
    v.file = zlib.decompress(body) if compressed else body
    return v


def _params(prefixes: tuple[str, ...], only_success: bool = False) -> list:
    if not KIT.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))]
    names = sorted(p.name for p in KIT.iterdir() if p.name.startswith(prefixes))
    if only_success:
        names = [n for n in names if load(KIT / n).expect == "success"]
    return [pytest.param(n, id=n) for n in names]


def test_testkit_covers_every_required_family() -> None:
    if not KIT.is_dir():
        pytest.skip(MISSING)
    names = [p.name for p in KIT.iterdir()]
    for family in ("x25519", "stream_", "header_", "hmac_", "stanza_"):
        assert any(n.startswith(family) for n in names), family
    unknown = [n for n in names if not n.startswith(IMPLEMENTED + DECLINED)]
    assert not unknown, f"vector families this suite does not classify: {unknown}"


@pytest.mark.parametrize("name", _params(IMPLEMENTED))
def test_implemented_vector(name: str) -> None:
    v = load(KIT / name)
    identities = [parse_identity(s) for s in v.identities]
    out = io.BytesIO()
    if v.expect == "success":
        assert decrypt(io.BytesIO(v.file), out, identities) == len(out.getvalue())
        assert hashlib.sha256(out.getvalue()).hexdigest() == v.payload_sha256
        return
    expected = {
        "header failure": AgeHeaderError,
        "HMAC failure": AgeHeaderError,
        "payload failure": AgePayloadError,
        "no match": AgeNoIdentityError,
    }[v.expect]
    with pytest.raises(expected) as info:
        decrypt(io.BytesIO(v.file), out, identities)
    assert ("MAC" in str(info.value) and "bad" in str(info.value)) == (v.expect == "HMAC failure")
    if v.expect == "payload failure" and v.payload_sha256:
        # Only authenticated chunks are released, exactly those before the failure.
        assert hashlib.sha256(out.getvalue()).hexdigest() == v.payload_sha256


@pytest.mark.parametrize("name", _params(IMPLEMENTED, only_success=True))
def test_implemented_vector_through_reader(name: str) -> None:
    """The file-like reader agrees with decrypt(), read in odd sizes."""
    v = load(KIT / name)
    reader = DecryptReader(io.BytesIO(v.file), [parse_identity(s) for s in v.identities])
    parts = []
    while piece := reader.read(1000):
        assert len(piece) <= 1000
        parts.append(piece)
    assert reader.read(10) == b""
    assert hashlib.sha256(b"".join(parts)).hexdigest() == v.payload_sha256


@pytest.mark.parametrize("name", _params(IMPLEMENTED, only_success=True))
def test_vector_reencodes_identically(name: str) -> None:
    """Our header serialiser and STREAM writer reproduce the vector bytes.

    With the vector's file key and payload nonce, the encryptor side is
    deterministic, so this checks our writer against the reference one.
    """
    v = load(KIT / name)
    source = _source(v.file)
    header = fmt.parse(source)
    rest = source.read_exact(len(v.file))
    assert header.marshal() + rest == v.file
    plaintext = io.BytesIO()
    decrypt(io.BytesIO(v.file), plaintext, [parse_identity(s) for s in v.identities])
    assert v.file_key is not None
    nonce, payload = rest[:16], rest[16:]
    sealed = io.BytesIO()
    writer = StreamWriter(payload_key(v.file_key, nonce), sealed)
    writer.write(plaintext.getvalue())
    writer.close()
    assert sealed.getvalue() == payload


@pytest.mark.parametrize("name", _params(DECLINED))
def test_declined_vector(name: str) -> None:
    """Armor, scrypt and hybrid files are refused cleanly: an AgeError, and
    for files that are valid, specifically AgeUnsupportedError."""
    v = load(KIT / name)
    expected = AgeUnsupportedError if v.expect == "success" else AgeError
    with pytest.raises(expected):
        identities = [parse_identity(s) for s in v.identities]
        decrypt(io.BytesIO(v.file), io.BytesIO(), identities)


def test_hybrid_and_x25519_opens_with_the_x25519_identity() -> None:
    """An X25519 stanza beside a post-quantum one still opens with the X25519 key.

    The vector's own identity is post-quantum, which dockd declines. Its
    X25519 stanza is addressed to the X25519 key that scrypt_and_x25519 uses,
    so that identity must open it, and the header MAC (over both stanzas)
    must verify.
    """
    if not KIT.is_dir():
        pytest.skip(MISSING)
    mixed = load(KIT / "hybrid_and_x25519")
    assert {s.type for s in fmt.parse(_source(mixed.file)).stanzas} == {"X25519", "mlkem768x25519"}
    x25519_keys = [s for s in load(KIT / "scrypt_and_x25519").identities]
    out = io.BytesIO()
    decrypt(io.BytesIO(mixed.file), out, [parse_identity(s) for s in x25519_keys])
    assert hashlib.sha256(out.getvalue()).hexdigest() == mixed.payload_sha256


def _source(data: bytes):  # type: ignore[no-untyped-def]
    from dockd.age.file import _Source

    return _Source(io.BytesIO(data))
