"""Start-up: the ledger, the spool and the store reconciled after a stop, clean or not."""


from __future__ import annotations

import hashlib
import shutil
import threading


from dockd.config import StoreConfig, WipeConfig
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.errors import PermanentStoreError
from dockd.model import RecState
from dockd.store.retry import RetryPolicy


from fakes import ScriptedStore

from sessionkit import (ingest)


def test_restart_resumes_spooled_uploads(make_cfg, camera, tmp_path):
    cfg = make_cfg(wipe=WipeConfig(after="spooled"))
    ingest(cfg, camera, backend=ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("x")))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    # failed permanently: a new start re-queues them (a human fixed the store)
    summary = st.start()
    assert summary["resumed"] == 6
    ids = [r.id for r in st.ledger.recordings(serial="BWC0001")]
    st.uploader.wait_idle(ids, timeout=30)
    assert all(st.ledger.get(i).state == RecState.VERIFIED for i in ids)
    st.close()


def test_start_removes_a_wiped_recordings_leftover_spool_copy(make_cfg, camera, tmp_path):
    """A copy a crash (between the wipe's commit and the pool's cleanup) or a power cut
    (undoing an unsynced unlink) left behind: the store proved it before it was wiped."""
    cfg = make_cfg()
    out, recs, _e, _c = ingest(cfg, camera)
    assert out.ok
    wiped = [r for r in recs if r.state == RecState.WIPED]
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    try:
        left = st.spool.path_for(wiped[0].id)
        left.write_bytes(b"age-encryption.org/v1 leftover")
        unknown = st.spool.path_for(999_999)
        unknown.write_bytes(b"not ours to judge")
        summary = st.start()
        assert not left.exists() and summary["orphans"] == 1
        assert unknown.exists()          # no ledger row: never deleted
    finally:
        st.close()


def test_corrupt_spool_copy_is_caught_and_copied_again(make_cfg, camera, tmp_path):
    """A flipped bit in the spool never reaches the store as if it were good."""
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), patient=False)
    flipped = threading.Event()
    real_submit = st.uploader.submit

    def corrupt_then_submit(rec, fresh=False):
        if not flipped.is_set() and rec.name.endswith("0701.MP4"):
            p = st.spool.path_for(rec.id)
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0x01
            p.write_bytes(bytes(data))
            flipped.set()
        real_submit(rec, fresh)

    st.uploader.submit = corrupt_then_submit
    st.start()
    out = st.run_session(CameraDocked("BWC0001", "generic", camera))
    events = [e["event"] for e in st.ledger.events(limit=10000)]
    recs = st.ledger.recordings(serial="BWC0001")
    st.close()
    assert flipped.is_set()
    assert "recording.spool_corrupt" in events
    assert out.ok and all(r.state == RecState.WIPED for r in recs)
    # the object in the store is the re-spooled, good one
    for r in recs:
        assert hashlib.sha256((tmp_path / "store" / r.object_key).read_bytes()).hexdigest() == r.cipher_sha256


def test_a_fresh_spool_goes_straight_to_put_and_a_resumed_one_asks_first(make_cfg, camera, tmp_path):
    """Just spooled, a recording cannot be at the store: no "already there?" round trip
    before its first put (one request per photo on S3). One resumed after a restart
    may already be there (a crash after the put), so it asks first."""
    cam2 = tmp_path / "cams" / "BWC0002"
    shutil.copytree(camera, cam2)
    store = ScriptedStore(tmp_path / "store")
    out, recs, _e, _c = ingest(make_cfg(), camera, backend=store)
    assert out.ok
    verified = [k for k in store.verified if ".manifest.json" not in k]
    assert sorted(verified) == sorted(r.object_key for r in recs)    # the proof only
    assert all(store.blobs[r.object_key].new for r in recs)         # and the store need not look

    refused = ScriptedStore(tmp_path / "store2", always=lambda: PermanentStoreError("x"))
    cfg = make_cfg(wipe=WipeConfig(after="spooled"), store=StoreConfig(url=f"file://{tmp_path / 'store2'}"))
    _o, recs2, _e, _c = ingest(cfg, cam2, backend=refused, serial="BWC0002")
    healthy = ScriptedStore(tmp_path / "store2")
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=healthy, patient=False)
    st.start()                                          # resumes the spooled recordings
    st.uploader.wait_idle([r.id for r in recs2], timeout=30)
    st.close()
    for r in recs2:
        assert healthy.verified.count(r.object_key) == 2, (r.name, healthy.verified)   # asked, then proved
        assert healthy.blobs[r.object_key].new is False     # resumed: its put looks first too
