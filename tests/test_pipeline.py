"""The spine end to end over fixture cameras, with a file:// store."""


from __future__ import annotations

import hashlib
import io
import os
import re
import time


from dockd.age import decrypt
from dockd.config import WipeConfig
from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.errors import PermanentStoreError, StoreAuthError
from dockd.model import Phase, RecState
from dockd.store.retry import RetryPolicy


from fakes import ScriptedStore, transient

from sessionkit import (files, ingest)


def test_whole_path_verifies_wipes_and_leaves_other_files(make_cfg, camera, identity, tmp_path):
    before = files(camera)
    out, recs, events, chain = ingest(make_cfg(), camera)
    assert out.phase == Phase.DONE and out.ok
    assert {r.state for r in recs} == {RecState.WIPED}
    assert len(recs) == 6 and {r.role for r in recs} == {"recording", "sidecar"}
    after = files(camera)
    assert set(after) == {"SYSTEM/FIRMWARE.BIN", "SYSTEM/settings.ini"}
    assert after == {k: before[k] for k in after}     # untouched, byte for byte
    # every object decrypts to the original bytes, under its deterministic key
    store = tmp_path / "store"
    for r in recs:
        obj = store / r.object_key
        assert obj.is_file()
        assert re.fullmatch(rf".*\.{r.plain_sha256[:16]}\.[0-9a-f]{{8}}-{r.id}\.age", r.object_key), r.object_key
        buf = io.BytesIO()
        with open(obj, "rb") as f:
            decrypt(f, buf, [identity])
        assert buf.getvalue() == before[r.name]
        assert hashlib.sha256(buf.getvalue()).hexdigest() == r.plain_sha256
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == r.cipher_sha256
    # spool holds nothing verified
    assert list((tmp_path / "state" / "spool").glob("*.age")) == []
    names = [e["event"] for e in events]
    for ev in ("device.docked", "recording.spooled", "upload.verified", "wipe.done", "manifest.uploaded"):
        assert ev in names
    assert chain == len(events)


def test_manifest_lists_every_recording(make_cfg, camera, tmp_path):
    import json

    out, recs, _e, _c = ingest(make_cfg(), camera)
    (mpath,) = list((tmp_path / "store").rglob("*.manifest.json"))
    doc = json.loads(mpath.read_text())
    assert doc["station"] == "dock-01" and doc["camera"]["serial"] == "BWC0001"
    by_path = {i["path"]: i for i in doc["recordings"]}
    assert set(by_path) == {r.name for r in recs}
    for r in recs:
        item = by_path[r.name]
        assert (item["size"], item["plaintext_sha256"], item["ciphertext_sha256"], item["object_key"]) == (
            r.size, r.plain_sha256, r.cipher_sha256, r.object_key)


def test_transient_failures_then_success_still_verify(make_cfg, camera, tmp_path):
    store = ScriptedStore(tmp_path / "store", put_errors=transient(2))
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert out.ok
    assert all(r.state == RecState.WIPED for r in recs)
    assert store.attempts == store.puts + 2


def test_permanent_failure_means_no_wipe(make_cfg, camera, tmp_path):
    before = files(camera)
    store = ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("bucket gone"))
    out, recs, _e, _c = ingest(make_cfg(), camera, backend=store)
    assert out.phase == Phase.ATTENTION and not out.ok
    assert files(camera) == before
    assert all(r.state == RecState.FAILED and r.spool_path for r in recs)
    # not retried blindly: one attempt per recording
    assert all(r.attempts == 1 for r in recs)


def test_auth_failure_pauses_and_wipes_nothing(make_cfg, camera, tmp_path):
    before = files(camera)
    store = ScriptedStore(tmp_path / "store", always=lambda: StoreAuthError("403 InvalidAccessKeyId"))
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert not out.ok and files(camera) == before
    # the queue paused at the first refusal: one refused put per worker (2), no more
    recording_puts = [k for k in store.attempted if ".manifest.json" not in k]
    assert 1 <= len(recording_puts) <= 2, store.attempted
    assert all(r.state.is_safe and r.state != RecState.WIPED for r in recs)


def test_file_changed_after_spooling_is_not_wiped(make_cfg, camera, tmp_path):
    target = camera / "DCIM/100BWC/VID_20261120_0701.MP4"

    def touch_camera(key: str) -> None:
        if "VID_20261120_0701.MP4" in key:
            with open(target, "ab") as f:
                f.write(b"appended by the camera")

    store = ScriptedStore(tmp_path / "store", after_put=touch_camera)
    out, recs, events, _ = ingest(make_cfg(), camera, backend=store)
    assert target.exists() and target.read_bytes().endswith(b"appended by the camera")
    assert out.phase == Phase.ATTENTION
    assert [n for n, _ in out.refused] == ["DCIM/100BWC/VID_20261120_0701.MP4"]
    assert out.failed == []                           # reported once, as refused
    assert "wipe.refused" in [e["event"] for e in events]
    old = [r for r in recs if r.name.endswith("0701.MP4")]
    assert old[0].state == RecState.VERIFIED          # the old copy is safe, but not a licence to wipe
    others = [r for r in recs if not r.name.endswith("0701.MP4")]
    assert all(r.state == RecState.WIPED for r in others)


def test_rerun_after_success_is_a_noop(make_cfg, camera, tmp_path):
    ingest(make_cfg(), camera)
    store_before = files(tmp_path / "store")
    out, recs, _e, _c = ingest(make_cfg(), camera)
    assert out.ok and out.found == 0
    manifests = ("manifest.json", "manifest.json.sig")      # each session signs its own manifest
    objs = {k: v for k, v in files(tmp_path / "store").items() if not k.endswith(manifests)}
    assert objs == {k: v for k, v in store_before.items() if not k.endswith(manifests)}


def test_redock_of_verified_files_goes_straight_to_wipe(make_cfg, camera, tmp_path):
    cfg = make_cfg(wipe=WipeConfig(after="spooled"))
    from dockd.errors import TransientStoreError

    store = ScriptedStore(tmp_path / "store", always=lambda: TransientStoreError("store down"))
    out, recs, _e, _c = ingest(cfg, camera, backend=store)
    assert out.ok                                  # released: every recording durable in the spool
    # durable in the spool, none proven at the store (how far the failing uploads got
    # before the session released the camera is timing)
    assert all(r.is_durable and r.spool_path and r.state != RecState.VERIFIED for r in recs)
    assert len(files(camera)) == 8                  # nothing wiped without proof
    # the store comes back; the next start uploads from the spool
    cfg2 = make_cfg()
    st = Station(cfg2, policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    st.uploader.wait_idle([r.id for r in recs], timeout=30)
    states = {r.name: (st.ledger.get(r.id).state.value, st.ledger.get(r.id).last_error) for r in recs}
    assert all(v[0] == "verified" for v in states.values()), states
    spooled_events = sum(1 for e in st.ledger.events(limit=10000) if e["event"] == "recording.spooled")
    # re-dock: no second copy, straight to the wipe
    out2 = st.run_session(CameraDocked("BWC0001", "generic", camera))
    assert out2.ok and out2.wiped == 6
    assert sum(1 for e in st.ledger.events(limit=10000) if e["event"] == "recording.spooled") == spooled_events
    st.close()
    assert set(files(camera)) == {"SYSTEM/FIRMWARE.BIN", "SYSTEM/settings.ini"}


def test_the_wipe_waits_for_the_pool_to_finish_with_a_recording(make_cfg, camera, tmp_path, monkeypatch):
    """A batch commits ``verified``, then logs and removes its spool copies. A session
    that took the ledger's word and wiped in between could see a crash leave a wiped
    recording's copy behind (found by the crash campaign): the wipe waits for the pool."""
    from dockd.pipeline.spool import Spool

    removed: dict[int, float] = {}
    real_remove = Spool.remove

    def slow_remove(self, rec_id):
        time.sleep(0.2)                  # a slow disk, or a busy machine, after the commit
        real_remove(self, rec_id)
        removed[rec_id] = time.time()

    monkeypatch.setattr(Spool, "remove", slow_remove)
    out, recs, events, _ = ingest(make_cfg(), camera)
    assert out.ok and removed
    wiped_at = {e["recording_id"]: e["ts"] for e in events if e["event"] == "wipe.done"}
    assert set(removed) <= set(wiped_at)
    late = {i: round(removed[i] - wiped_at[i], 3) for i in removed if removed[i] > wiped_at[i]}
    assert not late, f"wiped before the pool removed their spool copies: {late}"


def test_store_copy_corrupted_is_deleted_and_retried(make_cfg, camera, tmp_path):
    hits = []

    def corrupt_store(key: str) -> None:
        if not hits and key.endswith(".age"):
            hits.append(key)
            p = tmp_path / "store" / key
            data = bytearray(p.read_bytes())
            data[-1] ^= 0xFF
            p.write_bytes(bytes(data))

    store = ScriptedStore(tmp_path / "store", after_stored=corrupt_store)
    cfg = make_cfg()
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=store, patient=True)
    st.start()
    out = st.run_session(CameraDocked("BWC0001", "generic", camera))
    events = [e["event"] for e in st.ledger.events(limit=10000)]
    st.close()
    assert hits and "upload.failed" in events
    assert out.ok


def test_growing_file_is_never_spooled_as_whole(make_cfg, tmp_path):
    cam = tmp_path / "cams" / "GROW"
    (cam / "DCIM").mkdir(parents=True)
    f = cam / "DCIM" / "LIVE.MP4"
    f.write_bytes(os.urandom(4 << 20))
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), patient=False)
    st.start()
    grown = []

    def progress(live, n):
        if not grown:
            with open(f, "ab") as fh:
                fh.write(b"x" * 100)
            grown.append(1)

    out = st.run_session(CameraDocked("GROW", "generic", cam), progress=progress)
    recs = st.ledger.recordings(serial="GROW")
    st.close()
    # the first version was abandoned; the grown file, scanned again, is what got verified
    good = [r for r in recs if r.state == RecState.WIPED]
    assert len(good) == 1 and good[0].size == (4 << 20) + 100
    assert any(r.state == RecState.SUPERSEDED for r in recs)
    assert out.ok
