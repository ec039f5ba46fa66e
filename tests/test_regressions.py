"""Regressions found by the reliability campaigns (campaigns/), one test each."""

from __future__ import annotations

import hashlib
import os

from dockd.store.base import Blob, MemoryCheckpoint, put_one
from dockd.store.s3 import S3Store, digest_file

pytest_plugins = ["servers"]


def test_resume_after_learning_checksums_are_refused_aborts_the_old_upload(moto_server, tmp_path):
    """store-faults seed 0: a reset mid-part, while another upload learnt the server ignores
    x-amz-checksum-sha256. The resume started a fresh multipart upload and left the first one
    (and its parts) open in the bucket."""
    bucket = moto_server.new_bucket()
    store = S3Store(f"s3://{bucket}/site", **moto_server.store_kwargs(
        checksum="auto", multipart_threshold=moto_server.min_part_size, part_size=moto_server.min_part_size))
    data = os.urandom(moto_server.min_part_size * 3 + 17)
    path = tmp_path / "1.age"
    path.write_bytes(data)
    blob = Blob(path, len(data), hashlib.sha256(data).hexdigest())
    full = store._key("evidence/x/1.age")
    store.probe()
    # the first attempt: an upload created with checksums, then the connection died
    state = store._create_upload(full, blob, digest_file(path, moto_server.min_part_size))
    assert state.get("checksum")
    cp = MemoryCheckpoint(state)
    store._checksum_unsupported("another upload learnt it")
    put_one(store, "evidence/x/1.age", blob, cp)
    client = moto_server.client()
    assert client.head_object(Bucket=bucket, Key=full)["ContentLength"] == len(data)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert cp.load() is None


def test_a_file_dated_past_2262_is_skipped_not_a_crashed_session(make_cfg, tmp_path):
    """hostile campaign, mtimes layout: one file dated 9999 overflowed the ledger's 64-bit
    mtime_ns, and the OverflowError ended the whole session (nothing else was copied)."""
    from dockd.device.events import CameraDocked
    from dockd.station import Station
    from dockd.model import Phase
    from dockd.store.retry import RetryPolicy

    cam = tmp_path / "cam"
    (cam / "DCIM").mkdir(parents=True)
    (cam / "DCIM/FAR.MP4").write_bytes(b"far future")
    os.utime(cam / "DCIM/FAR.MP4", (253_402_300_000, 253_402_300_000))
    (cam / "DCIM/NOW.MP4").write_bytes(b"today")
    st = Station(make_cfg(), policy=RetryPolicy.immediate(2), patient=False)
    try:
        st.start()
        out = st.run_session(CameraDocked("CAMT", "generic", cam))
        events = [e["event"] for e in st.ledger.events(limit=1000)]
    finally:
        st.close()
    assert out.phase == Phase.DONE and out.wiped == 1
    assert (cam / "DCIM/FAR.MP4").read_bytes() == b"far future"      # never deleted
    assert not (cam / "DCIM/NOW.MP4").exists()
    assert "wipe.done" in events
