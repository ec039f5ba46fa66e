"""``dockd verify`` as an auditor runs it: only the store, the station's public key, an identity."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dockd import custody
from dockd.age import Encryptor, format_identity_file, generate_identity
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.store.retry import RetryPolicy

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")


def dockd(*args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    pre = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "dockd", *pre, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def station(make_cfg, camera, identity, tmp_path):
    """A station that has ingested the fixture camera: (store dir, public key line, identity file, ledger)."""
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        assert st.run_session(CameraDocked("BWC0001", "generic", camera)).ok
        recs = st.ledger.recordings(serial="BWC0001")
        pub = st.station_key.public_line()
    finally:
        st.close()
    idf = tmp_path / "auditor.txt"
    idf.write_text(format_identity_file(identity))
    return tmp_path / "store", pub, idf, recs


def audit(store: Path, pub: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = dockd("verify", "--store", f"file://{store}", "--station-key", pub, "--json", *extra)
    return r, (json.loads(r.stdout) if r.stdout.strip() else {})


def statuses(report: dict) -> dict[str, str]:
    return {o["path"]: o["status"] for m in report["manifests"] for o in m["objects"]}


def manifest_path(store: Path) -> Path:
    (m,) = store.rglob("*.manifest.json")
    return m


@needs_ssh_keygen
def test_ssh_keygen_verifies_a_real_manifest(station, tmp_path):
    store, pub, _idf, _recs = station
    m = manifest_path(store)
    sig = Path(str(m) + ".sig")
    assert sig.is_file()
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'dockd@dock-01 namespaces="dockd-manifest" {pub.rsplit(" ", 1)[0]}\n')
    cmd = (f"ssh-keygen -Y verify -f {allowed} -I dockd@dock-01 -n dockd-manifest -s {sig} < {m}")
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'Good "dockd-manifest" signature for dockd@dock-01' in r.stdout + r.stderr
    # and the same tool rejects the manifest with one byte changed
    m.write_bytes(m.read_bytes().replace(b'"BWC0001"', b'"BWC0002"', 1))
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def test_an_untouched_store_verifies_with_plaintext(station):
    store, pub, idf, recs = station
    r, rep = audit(store, pub, "-i", str(idf))
    assert r.returncode == 0, r.stderr
    assert rep["ok"] and rep["plaintext_checked"] and rep["discrepancies"] == 0
    (m,) = rep["manifests"]
    assert m["signature"] == "good" and m["camera"] == "BWC0001"
    assert statuses(rep) == {r.name: "ok" for r in recs}
    assert rep["unlisted"] == []


def test_the_station_key_can_be_a_file_and_the_table_is_the_default(station, tmp_path):
    store, pub, _idf, _recs = station
    keyfile = tmp_path / "station.pub"
    keyfile.write_text(pub + "\n")
    r = dockd("verify", "--store", f"file://{store}", "--station-key", str(keyfile))
    assert r.returncode == 0, r.stderr
    assert "good" in r.stdout and "all good" in r.stdout and "plaintext not checked" in r.stdout


@pytest.mark.parametrize("with_identity", [False, True])
def test_a_flipped_byte_in_one_object_is_caught(station, with_identity):
    store, pub, idf, recs = station
    victim = next(r for r in recs if r.name.endswith("0701.MP4"))
    obj = store / victim.object_key
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x40
    obj.write_bytes(bytes(data))
    r, rep = audit(store, pub, *(["-i", str(idf)] if with_identity else []))
    assert r.returncode == 1
    assert "1 discrepancy between the store and its signed manifests" in r.stderr
    st = statuses(rep)
    assert st.pop(victim.name) == "ciphertext_mismatch"
    assert set(st.values()) == {"ok"}
    assert rep["manifests"][0]["signature"] == "good"


def test_a_removed_object_is_caught(station):
    store, pub, _idf, recs = station
    victim = next(r for r in recs if r.name.endswith(".WAV"))
    (store / victim.object_key).unlink()
    r, rep = audit(store, pub)
    assert r.returncode == 1
    st = statuses(rep)
    assert st.pop(victim.name) == "missing"
    assert set(st.values()) == {"ok"}


def test_a_truncated_object_is_a_size_mismatch(station):
    store, pub, _idf, recs = station
    obj = store / recs[0].object_key
    obj.write_bytes(obj.read_bytes()[:-1])
    r, rep = audit(store, pub)
    assert r.returncode == 1 and statuses(rep)[recs[0].name] == "size_mismatch"


def test_an_altered_manifest_fails_its_signature(station):
    """An attacker who swaps an object and fixes the manifest's hash to match still fails."""
    store, pub, _idf, recs = station
    m = manifest_path(store)
    doc = json.loads(m.read_text())
    doc["recordings"][0]["ciphertext_sha256"] = "0" * 64
    m.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    r, rep = audit(store, pub)
    assert r.returncode == 1
    (mc,) = rep["manifests"]
    assert mc["signature"] == "bad" and "altered" in mc["detail"]


def test_a_missing_signature_or_a_foreign_key_fails(station, tmp_path):
    store, pub, _idf, _recs = station
    other = custody.StationKey.load_or_create(tmp_path / "other", "dock-99").public_line()
    r, rep = audit(store, other)
    assert r.returncode == 1
    assert rep["manifests"][0]["signature"] == "bad"
    assert "not a trusted station key" in rep["manifests"][0]["detail"]
    Path(str(manifest_path(store)) + ".sig").unlink()
    r, rep = audit(store, pub)
    assert r.returncode == 1 and rep["manifests"][0]["signature"] == "missing"


def test_a_wrong_identity_cannot_vouch_for_the_plaintext(station, tmp_path):
    store, pub, _idf, _recs = station
    stranger = tmp_path / "stranger.txt"
    stranger.write_text(format_identity_file(generate_identity()))
    r, rep = audit(store, pub, "-i", str(stranger))
    assert r.returncode == 1
    assert set(statuses(rep).values()) == {"undecryptable"}


def test_plaintext_hash_is_checked_not_assumed(station, make_cfg, identity):
    """A correctly signed manifest whose object decrypts to other bytes: only -i can see it."""
    store, pub, idf, recs = station
    victim = recs[0]
    buf = io.BytesIO()
    with Encryptor(buf, [identity.public()]) as enc:
        enc.write(b"not the recording")
    (store / victim.object_key).write_bytes(buf.getvalue())
    m = manifest_path(store)
    doc = json.loads(m.read_text())
    item = next(i for i in doc["recordings"] if i["path"] == victim.name)
    import hashlib
    item["ciphertext_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    item["ciphertext_size"] = len(buf.getvalue())
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    m.write_bytes(data)
    key = custody.StationKey.load_or_create(make_cfg().paths.state_dir, "dock-01")   # the station re-signs
    Path(str(m) + ".sig").write_text(key.sign(data))
    r, rep = audit(store, pub)
    assert r.returncode == 0, rep                      # sizes and ciphertext hashes all agree
    r, rep = audit(store, pub, "-i", str(idf))
    assert r.returncode == 1
    assert statuses(rep)[victim.name] == "plaintext_mismatch"


def test_prefix_and_empty_store(station, tmp_path):
    store, pub, _idf, _recs = station
    r, rep = audit(store, pub, "--prefix", "evidence/dock-01/BWC0001")
    assert r.returncode == 0 and len(rep["manifests"]) == 1
    r, _rep = audit(store, pub, "--prefix", "evidence/dock-02")
    assert r.returncode == 1 and "no manifests" in r.stderr


def test_objects_no_manifest_lists_are_reported_not_failed(station):
    store, pub, _idf, recs = station
    stray = store / "evidence" / "dock-01" / "BWC0001" / "stray.age"
    stray.write_bytes(b"x")
    r, rep = audit(store, pub)
    assert r.returncode == 0
    assert rep["unlisted"] == ["evidence/dock-01/BWC0001/stray.age"]


def test_a_bad_station_key_argument_is_a_usage_error(station):
    store, _pub, _idf, _recs = station
    r = dockd("verify", "--store", f"file://{store}", "--station-key", "/nonexistent/key.pub")
    assert r.returncode == 2 and "cannot read station key" in r.stderr
