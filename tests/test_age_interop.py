"""Interop with an independent implementation: the real ``age`` binary."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dockd.age import (
    Encryptor,
    decrypt,
    format_identity_file,
    generate_identity,
    parse_identity_file,
    parse_recipient,
)
from dockd.errors import AgeNoIdentityError

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
pytestmark = pytest.mark.skipif(
    not (AGE and AGE_KEYGEN), reason="the age and age-keygen binaries are not installed"
)

K = 64 * 1024
SIZES = [0, 1, K - 1, K, K + 1, 2 * K, 3 * K + 5, 1024 * 1024 + 3]


def run(*args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.fixture
def keygen_file(tmp_path: Path) -> Path:
    path = tmp_path / "keygen.txt"
    run(AGE_KEYGEN, "-o", str(path))
    return path


@pytest.fixture
def dockd_file(tmp_path: Path) -> tuple[Path, object]:
    identity = generate_identity()
    path = tmp_path / "dockd.txt"
    path.write_text(format_identity_file(identity))
    return path, identity


def test_age_keygen_files_parse_to_the_same_public_key(keygen_file: Path) -> None:
    text = keygen_file.read_text()
    (identity,) = parse_identity_file(text)
    public_comment = next(line for line in text.splitlines() if line.startswith("# public key: "))
    assert str(identity.public()) == public_comment.removeprefix("# public key: ")
    assert run(AGE_KEYGEN, "-y", str(keygen_file)).decode().strip() == str(identity.public())


def test_format_identity_file_is_accepted_by_age_keygen(dockd_file) -> None:
    path, identity = dockd_file
    assert run(AGE_KEYGEN, "-y", str(path)).decode().strip() == str(identity.public())


@pytest.mark.parametrize("size", SIZES)
def test_dockd_encrypts_age_decrypts(size: int, keygen_file: Path, dockd_file, tmp_path: Path) -> None:
    dockd_path, dockd_identity = dockd_file
    (keygen_identity,) = parse_identity_file(keygen_file.read_text())
    plaintext = os.urandom(size)
    out = io.BytesIO()
    recipients = [parse_recipient(str(keygen_identity.public())), dockd_identity.public()]
    with Encryptor(out, recipients) as enc:
        for i in range(0, size, 4096 + 3):
            enc.write(plaintext[i:i + 4096 + 3])
    encrypted = tmp_path / "x.age"
    encrypted.write_bytes(out.getvalue())
    # Each recipient's key opens it, whether age-keygen or dockd wrote the key file.
    for key in (keygen_file, dockd_path):
        assert run(AGE, "-d", "-i", str(key), str(encrypted)) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_age_encrypts_dockd_decrypts(size: int, keygen_file: Path, dockd_file) -> None:
    dockd_path, dockd_identity = dockd_file
    (keygen_identity,) = parse_identity_file(keygen_file.read_text())
    plaintext = os.urandom(size)
    ciphertext = run(
        AGE, "-r", str(keygen_identity.public()), "-r", str(dockd_identity.public()), stdin=plaintext
    )
    for identities in ([keygen_identity], [dockd_identity], parse_identity_file(dockd_path.read_text())):
        out = io.BytesIO()
        assert decrypt(io.BytesIO(ciphertext), out, identities) == size
        assert out.getvalue() == plaintext
    with pytest.raises(AgeNoIdentityError):
        decrypt(io.BytesIO(ciphertext), io.BytesIO(), [generate_identity()])


def test_age_refuses_a_tampered_dockd_file(dockd_file, tmp_path: Path) -> None:
    path, identity = dockd_file
    out = io.BytesIO()
    with Encryptor(out, [identity.public()]) as enc:
        enc.write(b"x" * (K + 1))
    data = bytearray(out.getvalue())
    data[-5] ^= 1
    encrypted = tmp_path / "t.age"
    encrypted.write_bytes(data)
    done = subprocess.run([AGE, "-d", "-i", str(path), str(encrypted)], capture_output=True, timeout=60)
    assert done.returncode != 0
