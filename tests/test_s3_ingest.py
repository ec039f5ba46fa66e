"""The whole path into real S3 servers (moto, Swift s3api): dock → verified → wiped."""

from __future__ import annotations

import hashlib
import io

import pytest

from dockd.age import decrypt
from dockd.config import StoreConfig
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.model import RecState
from dockd.store.retry import RetryPolicy

pytest_plugins = ["servers"]


@pytest.fixture(params=["moto_server", "swift_server"])
def s3(request):
    return request.getfixturevalue(request.param)


def test_ingest_into_s3_multipart_verifies_and_wipes(s3, make_cfg, camera, identity, tmp_path):
    bucket = s3.new_bucket()
    creds = tmp_path / "s3.cred"
    creds.write_text(f"aws_access_key_id={s3.access_key}\naws_secret_access_key={s3.secret_key}\n")
    creds.chmod(0o600)
    before = {p.relative_to(camera).as_posix(): p.read_bytes() for p in camera.rglob("*") if p.is_file()}
    cfg = make_cfg(store=StoreConfig(
        url=f"s3://{bucket}/site", endpoint_url=s3.endpoint_url, region=s3.region, addressing_style="path",
        credentials_file=creds, multipart_threshold=s3.min_part_size, part_size=s3.min_part_size, timeout=10))
    big = camera / "DCIM/100BWC/VID_LONG.MP4"
    big.write_bytes(hashlib.sha256(b"seed").digest() * (s3.min_part_size * 3 // 32 + 7))   # 3+ parts
    before["DCIM/100BWC/VID_LONG.MP4"] = big.read_bytes()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        out = st.run_session(CameraDocked("BWC0001", "generic", camera))
        recs = st.ledger.recordings(serial="BWC0001")
    finally:
        st.close()
    assert out.ok, (out.failed, out.refused)
    assert len(recs) == 7 and all(r.state == RecState.WIPED for r in recs)
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    keys = {o["Key"] for o in listed}
    assert {f"site/{r.object_key}" for r in recs} <= keys
    assert sum(1 for k in keys if k.endswith(".manifest.json")) == 1
    assert len(keys) == len(recs) + sum(1 for k in keys if k.endswith((".manifest.json", ".sig")))
    for r in recs:
        body = client.get_object(Bucket=bucket, Key=f"site/{r.object_key}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == r.cipher_sha256
        plain = io.BytesIO()
        decrypt(io.BytesIO(body), plain, [identity])
        assert plain.getvalue() == before[r.name]
    head = client.head_object(Bucket=bucket, Key=f"site/{next(r for r in recs if r.name.endswith('LONG.MP4')).object_key}")
    # multipart (MD5-of-MD5s-N); through config the S3 minimum part size (5 MiB) applies
    assert "-" in head["ETag"]
    assert head["Metadata"]["camera"] == "BWC0001"
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    left = {p.relative_to(camera).as_posix() for p in camera.rglob("*") if p.is_file()}
    assert left == {"SYSTEM/FIRMWARE.BIN", "SYSTEM/settings.ini"}


def test_flagged_recordings_are_tagged_evidential_not_the_configured_class(moto_server, make_cfg, camera,
                                                                           tmp_path):
    """A lifecycle rule on retention-class=31d must never reach evidence: each object is
    tagged with its recording's own class, by every path (single PUT in a batch of small
    files, multipart)."""
    from test_flags import FLAGGED, FLAGGED_XML, ROUTINE, TEST_PROFILE

    from dockd.config import DevicesConfig

    s3 = moto_server
    bucket = s3.new_bucket()
    creds = tmp_path / "s3.cred"
    creds.write_text(f"aws_access_key_id={s3.access_key}\naws_secret_access_key={s3.secret_key}\n")
    creds.chmod(0o600)
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "bwc-events.toml").write_text(TEST_PROFILE)
    threshold = 256 * 1024          # the flagged clip (300 kB) goes up in parts, the routine one (180 kB) whole
    cfg = make_cfg(
        store=StoreConfig(url=f"s3://{bucket}/site", endpoint_url=s3.endpoint_url, region=s3.region,
                          addressing_style="path", credentials_file=creds, multipart_threshold=threshold,
                          retention_class="31d", tag_retention=True, timeout=10),
        devices=DevicesConfig(inbox_dir=tmp_path / "inbox", mount_dir=tmp_path / "mnt", profiles_dir=pdir))
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        st.start()
        out = st.run_session(CameraDocked("BWC0001", "bwc-events", camera))
        recs = {r.name: r for r in st.ledger.recordings(serial="BWC0001")}
    finally:
        st.close()
    assert out.ok, (out.failed, out.refused)
    assert {n for n, r in recs.items() if r.flagged} == {FLAGGED, FLAGGED_XML}
    client = s3.client()

    def tag(name):
        tags = client.get_object_tagging(Bucket=bucket, Key=f"site/{recs[name].object_key}")["TagSet"]
        return {t["Key"]: t["Value"] for t in tags}.get("retention-class")

    def meta(name):
        return client.head_object(Bucket=bucket, Key=f"site/{recs[name].object_key}")

    assert "-" in meta(FLAGGED)["ETag"] and "-" not in meta(ROUTINE)["ETag"]     # both paths taken
    for name in recs:
        want = "evidential" if recs[name].flagged else "31d"
        assert tag(name) == want, name
        assert meta(name)["Metadata"]["retention-class"] == want, name     # tag and metadata agree
    # the session's manifest and signature: the custody record of evidence is kept as evidence
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="site/")["Contents"]]
    custody = [k for k in listed if ".manifest.json" in k]
    assert len(custody) == 2
    for k in custody:
        tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=k)["TagSet"]}
        assert tags.get("retention-class") == "evidential", k
