"""The station key and SSHSIG signatures, checked against the real ssh-keygen both ways."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from dockd import custody
from dockd.custody import SignatureError, StationKey
from dockd.errors import UsageError, VerifyFailed

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")

MESSAGE = b'{"format": "dockd-manifest/1", "recordings": []}\n'


def ssh_verify(tmp: Path, key: StationKey, message: bytes, sig: str, namespace: str = "dockd-manifest",
               identity: str | None = None) -> subprocess.CompletedProcess:
    allowed = tmp / "allowed_signers"
    allowed.write_text(key.allowed_signers_line(namespace) + "\n")
    (tmp / "msg.sig").write_text(sig)
    return subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", identity or key.comment,
         "-n", namespace, "-s", str(tmp / "msg.sig")],
        input=message, capture_output=True, timeout=30)


def test_key_is_made_once_private_and_in_openssh_format(tmp_path):
    k1 = StationKey.load_or_create(tmp_path / "state", "dock-07")
    path = tmp_path / "state" / custody.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    k2 = StationKey.load_or_create(tmp_path / "state", "dock-07")
    assert k1.public_line() == k2.public_line()                 # idempotent: never a second key
    assert k1.public_line().startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert k1.public_line().endswith(" dockd@dock-07")
    assert "PRIVATE" not in repr(k1) and k1.fingerprint in repr(k1)
    assert [p.name for p in path.parent.iterdir()] == [custody.KEY_FILE]   # no temp file left


@needs_ssh_keygen
def test_ssh_keygen_reads_the_key_file_and_agrees_on_the_fingerprint(tmp_path):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(k.path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == k.fingerprint
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(k.path)], capture_output=True, text=True, check=True)
    assert pub.stdout.split()[:2] == k.public_line().split()[:2]


def test_a_key_readable_by_others_is_refused(tmp_path):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    os.chmod(k.path, 0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        StationKey.load_or_create(tmp_path, "dock-01")


def test_a_symlinked_key_is_refused(tmp_path):
    k = StationKey.load_or_create(tmp_path / "a", "dock-01")
    (tmp_path / "b").mkdir()
    os.symlink(k.path, tmp_path / "b" / custody.KEY_FILE)
    with pytest.raises(UsageError):
        StationKey.load_or_create(tmp_path / "b", "dock-01")


@needs_ssh_keygen
def test_ssh_keygen_accepts_our_signature(tmp_path):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    sig = k.sign(MESSAGE)
    assert sig.startswith("-----BEGIN SSH SIGNATURE-----\n") and sig.endswith("-----END SSH SIGNATURE-----\n")
    r = ssh_verify(tmp_path, k, MESSAGE, sig)
    assert r.returncode == 0, r.stderr
    assert b'Good "dockd-manifest" signature for dockd@dock-01' in r.stdout + r.stderr


@needs_ssh_keygen
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1 << 16, (1 << 20) + 3])
def test_ssh_keygen_accepts_signatures_of_any_size(tmp_path, size):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    msg = os.urandom(size)
    assert ssh_verify(tmp_path, k, msg, k.sign(msg)).returncode == 0


@needs_ssh_keygen
def test_ssh_keygen_rejects_an_altered_message_or_another_namespace(tmp_path):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    sig = k.sign(MESSAGE)
    assert ssh_verify(tmp_path, k, MESSAGE.replace(b"[]", b"[ ]"), sig).returncode != 0
    assert ssh_verify(tmp_path, k, MESSAGE, k.sign(MESSAGE, "file"), namespace="dockd-manifest").returncode != 0


@needs_ssh_keygen
def test_we_accept_what_ssh_keygen_signs(tmp_path):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    msg = tmp_path / "manifest.json"
    msg.write_bytes(MESSAGE)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(k.path), "-n", "dockd-manifest", str(msg)],
                   capture_output=True, check=True, timeout=30)
    sig = (tmp_path / "manifest.json.sig").read_bytes()
    assert custody.verify(MESSAGE, sig, [k.public_key], "dockd-manifest") == k.public_key
    with pytest.raises(SignatureError, match="altered"):
        custody.verify(MESSAGE + b" ", sig, [k.public_key], "dockd-manifest")


def test_verify_names_what_is_wrong(tmp_path):
    k = StationKey.load_or_create(tmp_path / "a", "dock-01")
    other = StationKey.load_or_create(tmp_path / "b", "dock-02")
    sig = k.sign(MESSAGE)
    assert custody.verify(MESSAGE, sig, [other.public_key, k.public_key], "dockd-manifest") == k.public_key
    with pytest.raises(SignatureError, match="not a trusted station key"):
        custody.verify(MESSAGE, sig, [other.public_key], "dockd-manifest")
    with pytest.raises(SignatureError, match="namespace"):
        custody.verify(MESSAGE, sig, [k.public_key], "file")
    with pytest.raises(SignatureError, match="altered"):
        custody.verify(MESSAGE[:-1], sig, [k.public_key], "dockd-manifest")
    # a signature error is a verification failure: exit 1 from the CLI
    assert issubclass(SignatureError, VerifyFailed)


@pytest.mark.parametrize("mangle", [
    lambda s: "",
    lambda s: s.replace("-----END SSH SIGNATURE-----", ""),
    lambda s: s.replace("SSH SIGNATURE", "PGP SIGNATURE"),
    lambda s: s[:40] + "!" + s[41:],                                    # not base64
    lambda s: "\n".join(s.splitlines()[:2] + s.splitlines()[-1:]),      # truncated blob
    lambda s: s.replace(s.splitlines()[1], "A" * len(s.splitlines()[1])),   # no SSHSIG preamble
    lambda s: "x" * (custody.MAX_ARMOR + 1),
])
def test_malformed_signatures_are_refused_not_crashed_on(tmp_path, mangle):
    k = StationKey.load_or_create(tmp_path, "dock-01")
    with pytest.raises(SignatureError):
        custody.verify(MESSAGE, mangle(k.sign(MESSAGE)), [k.public_key], "dockd-manifest")


def test_every_byte_of_the_signature_blob_matters(tmp_path):
    """Flip each byte of the decoded blob: nothing but the reserved field may change it."""
    import base64

    k = StationKey.load_or_create(tmp_path, "dock-01")
    sig = k.sign(MESSAGE)
    blob = bytearray(custody._dearmor(sig))
    accepted = []
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        try:
            custody.verify(MESSAGE, custody._armor(bytes(bad)), [k.public_key], "dockd-manifest")
            accepted.append(i)
        except SignatureError:
            pass
    assert accepted == []
    assert base64.b64encode(bytes(blob)).decode()[:8] == "U1NIU0lH"    # "SSHSIG"


def test_public_keys_from_a_string_a_key_file_or_allowed_signers(tmp_path):
    k = StationKey.load_or_create(tmp_path / "a", "dock-01")
    k2 = StationKey.load_or_create(tmp_path / "b", "dock-02")
    assert custody.load_public_keys(k.public_line())[0].public_bytes_raw() == k.public_key.public_bytes_raw()
    f = tmp_path / "allowed_signers"
    f.write_text(f"# rotated in 2026\n{k.allowed_signers_line()}\n{k2.allowed_signers_line()}\n")
    assert len(custody.load_public_keys(str(f))) == 2
    (tmp_path / "k.pub").write_text(k.public_line() + "\n")
    assert len(custody.load_public_keys(str(tmp_path / "k.pub"))) == 1
    with pytest.raises(UsageError):
        custody.load_public_keys(str(tmp_path / "nope.pub"))
    with pytest.raises(UsageError):
        custody.load_public_keys("ssh-ed25519 AAAAnotakey")
    (tmp_path / "rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E user@host\n")
    with pytest.raises(UsageError, match="no ssh-ed25519"):
        custody.load_public_keys(str(tmp_path / "rsa.pub"))
