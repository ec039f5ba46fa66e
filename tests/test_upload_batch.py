"""Upload batches: small recordings are put and proven one by one, and their
``verified`` is one durable commit; a recording that fails holds back no other,
and no spool copy goes before its ``verified`` is committed."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from dockd import fsutil

from dockd.age import generate_identity
from dockd.errors import PermanentStoreError, TransientStoreError
from dockd.ledger import Ledger
from dockd.model import RecState, Recording
from dockd.pipeline.spool import GroupCommit, Spool
from dockd.pipeline.upload import Uploader
from dockd.store.retry import RetryingStore, RetryPolicy
from dockd.store.base import Result, Results
from fakes import ScriptedStore, transient


class Rig:
    def __init__(self, tmp_path: Path, n: int, store: ScriptedStore) -> None:
        self.ledger = Ledger(tmp_path / "ledger.db")
        self.spool = Spool(tmp_path / "spool", [generate_identity().public()])
        self.store = store
        cam = tmp_path / "cam"
        cam.mkdir()
        sid = self.ledger.open_session("BWC1", "generic", str(cam), None, None, {})
        group = GroupCommit(self.spool, lambda done: self.done.extend(done))
        self.done: list = []
        ids = []
        for i in range(n):
            p = cam / f"IMG{i:04d}.JPG"
            p.write_bytes(os.urandom(1000 + i))
            st = p.stat()
            rec = self.ledger.upsert_found("BWC1", sid, "generic", p.name.encode(), st.st_size, st.st_mtime_ns,
                                           "recording")
            group.spool(p, rec.id, st.st_size, st.st_mtime_ns)
            ids.append(rec.id)
        group.flush()
        group.close()
        self.recs: list[Recording] = [
            self.ledger.transition(sp.rec_id, RecState.SPOOLED, plain_sha256=sp.plain_sha256,
                                   cipher_sha256=sp.cipher_sha256, cipher_size=sp.cipher_size,
                                   object_key=f"st/BWC1/{sp.rec_id}.age", spool_path=str(sp.path))
            for sp in self.done]
        self.ids = ids
        self.up = Uploader(self.ledger, RetryingStore(store, RetryPolicy.immediate()), self.spool,
                           RetryPolicy.immediate(), concurrency=1)

    def run(self, stop: bool = True) -> None:
        for r in self.recs:                  # all queued before the one worker starts: one batch
            self.up.submit(r, fresh=True)
        self.up.start()
        assert self.up.wait_idle(self.ids, timeout=30)
        if stop:
            self.up.stop()

    def state(self, rec_id: int) -> RecState:
        return self.ledger.get(rec_id).state


@pytest.fixture
def durable_commits(monkeypatch):
    """Counts the outermost durable transactions of a ledger."""
    def watch(ledger: Ledger) -> list[int]:
        seen: list[int] = []
        real = ledger.tx

        @contextmanager
        def tx(durable: bool = False):
            outer = not ledger._db.in_transaction
            with real(durable) as db:
                yield db
            if durable and outer:
                seen.append(1)

        monkeypatch.setattr(ledger, "tx", tx)
        return seen
    return watch


def test_a_batch_of_small_recordings_is_verified_in_one_durable_commit(tmp_path, durable_commits):
    rig = Rig(tmp_path, 10, ScriptedStore(tmp_path / "store"))
    commits = durable_commits(rig.ledger)
    rig.run()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 10
    assert len(commits) == 1
    assert rig.store.puts == 10
    assert list(rig.spool.root.glob("*.age")) == []
    # the audit trail still says, for each, that the store took it and then that it was proven
    for rid in rig.ids:
        events = [e["event"] for e in rig.ledger.events(limit=1000) if e["recording_id"] == rid]
        assert events[-2:] == ["upload.uploaded", "upload.verified"]


def test_one_refused_put_holds_back_no_other_in_its_batch(tmp_path):
    rig = Rig(tmp_path, 5, ScriptedStore(tmp_path / "store", put_errors=[PermanentStoreError("refused")]))
    rig.run()
    first, rest = rig.ids[0], rig.ids[1:]
    assert rig.state(first) == RecState.FAILED
    assert [rig.state(i) for i in rest] == [RecState.VERIFIED] * 4
    assert [p.name for p in rig.spool.root.glob("*.age")] == [f"{first}.age"]   # kept for a retry


def test_a_row_that_cannot_commit_is_settled_alone_and_retried_later(tmp_path):
    rig: Rig

    def changed_under_us(key: str) -> None:
        if key == rig.recs[2].object_key:      # a row the batch's commit must refuse
            rig.ledger.transition(rig.recs[2].id, RecState.ATTENTION, error="test: moved under the upload")

    rig = Rig(tmp_path, 5, ScriptedStore(tmp_path / "store", after_put=changed_under_us))
    bad = rig.recs[2].id
    rig.run()
    assert [rig.state(i) for i in rig.ids if i != bad] == [RecState.VERIFIED] * 4
    assert rig.state(bad) == RecState.ATTENTION
    assert bad in rig.up.delayed_ids()                         # logged as a bug, tried again later
    assert (rig.spool.root / f"{bad}.age").exists()            # and its spool copy is still there


def test_no_spool_copy_goes_before_its_verified_is_committed(tmp_path, monkeypatch):
    rig = Rig(tmp_path, 6, ScriptedStore(tmp_path / "store"))
    other = Ledger(tmp_path / "ledger.db")        # what a restart after a crash would read
    seen: list[RecState] = []
    real = rig.spool.remove

    def remove(rec_id: int) -> None:
        seen.append(other.get(rec_id).state)
        real(rec_id)

    monkeypatch.setattr(rig.spool, "remove", remove)
    rig.run()
    assert seen == [RecState.VERIFIED] * 6


def test_a_recording_that_fails_early_in_a_slow_batch_is_retried_when_the_batch_ends(tmp_path):
    """Its retry falls due while the rest of the batch is still uploading: the timer must
    not hand it back then (a busy recording is not queued again), nor forget it."""
    slow = lambda key: time.sleep(0.25)          # noqa: E731 - 7 x 0.25 s outlasts a timer tick
    rig = Rig(tmp_path, 8, ScriptedStore(tmp_path / "store", put_errors=transient(5), after_put=slow))
    first = rig.recs[0].id
    rig.run(stop=False)
    deadline = time.monotonic() + 15
    while rig.state(first) != RecState.VERIFIED and time.monotonic() < deadline:
        time.sleep(0.1)
    rig.up.stop()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 8


def test_a_spool_copy_that_cannot_be_removed_does_not_stop_the_worker(tmp_path, monkeypatch):
    rig = Rig(tmp_path, 5, ScriptedStore(tmp_path / "store"))
    real = rig.spool.remove

    def remove(rec_id: int) -> None:
        if rec_id == rig.ids[0]:
            raise PermissionError(13, "Permission denied")
        real(rec_id)

    monkeypatch.setattr(rig.spool, "remove", remove)
    rig.run(stop=False)
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 5
    assert all(w.is_alive() for w in rig.up._workers)
    assert [p.name for p in rig.spool.root.glob("*.age")] == [f"{rig.ids[0]}.age"]   # left for the next start
    rig.up.stop()


def test_each_recording_is_read_again_just_before_its_put(tmp_path):
    """A re-dock may flag a recording while its batch is under way: its put carries the flag."""
    rig: Rig

    def flag_the_last(key: str) -> None:
        if key == rig.recs[0].object_key:
            r = rig.recs[-1]
            rig.ledger.upsert_found(r.serial, r.session_id, "generic", r.rel_path, r.size, r.mtime_ns,
                                    "recording", flagged=True)

    rig = Rig(tmp_path, 4, ScriptedStore(tmp_path / "store", after_put=flag_the_last))
    rig.run()
    assert rig.store.blobs[rig.recs[-1].object_key].flagged is True
    assert rig.store.blobs[rig.recs[1].object_key].flagged is False


def test_a_retried_put_is_no_longer_new(tmp_path):
    """A put that landed but whose answer was lost is tried again: those bytes may now be
    at the store, so the retry must let the backend look first."""
    seen: list[bool] = []

    class LostAnswer(ScriptedStore):
        def scripted_error(self, item):  # noqa: ANN001, ANN201
            seen.append(item.blob.new)
            return super().scripted_error(item)

        def put(self, items):  # noqa: ANN001, ANN201
            results = super().put(items)
            if len(seen) == 1:     # it landed; the answer did not
                lost = TransientStoreError("connection reset after the body was sent")
                return Results([Result(r.item, error=lost) for r in results])
            return results

    rig = Rig(tmp_path, 1, LostAnswer(tmp_path / "store"))
    rig.run()
    assert seen == [True, False]
    assert rig.state(rig.ids[0]) == RecState.VERIFIED


def test_a_put_that_needed_no_checkpoint_writes_none(tmp_path: Path) -> None:
    """A single PUT finds no checkpoint and saves none: its clear() must not cost a
    ledger transaction (one per photo). A checkpoint that held state is still cleared."""
    from dockd.ledger import Ledger, LedgerCheckpoint

    ledger = Ledger(tmp_path / "l.sqlite3")
    sid = ledger.open_session("CAM-0001", "generic", str(tmp_path), None, None, {})
    a = ledger.upsert_found("CAM-0001", sid, "generic", b"a.jpg", 10, 0, "photo")
    b = ledger.upsert_found("CAM-0001", sid, "generic", b"b.mp4", 10, 0, "video")
    ledger.checkpoint_save(b.id, {"upload_id": "u1"})
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    cp = LedgerCheckpoint(ledger, a.id)
    assert cp.load() is None
    cp.clear()
    assert not [s for s in statements if s.lstrip().upper().startswith(("DELETE", "BEGIN", "COMMIT"))]
    ledger._db.set_trace_callback(None)
    held = LedgerCheckpoint(ledger, b.id)
    assert held.load() == {"upload_id": "u1"}
    held.clear()
    assert ledger.checkpoint_load(b.id) is None
    saved = LedgerCheckpoint(ledger, a.id)          # nothing at first, then a state saved: cleared
    assert saved.load() is None
    saved.save({"upload_id": "u2"})
    saved.clear()
    assert ledger.checkpoint_load(a.id) is None


def test_a_batch_is_proven_by_the_stores_listing_when_it_can(tmp_path):
    """Put all, then one listing for the batch: what it proves needs no verify each;
    what it leaves out is verified alone."""
    rig: Rig

    def prove(items: list[tuple[str, object]]) -> set[str]:
        return {k for k, _ in items[:-1]}              # the store's listing lacks the last one

    rig = Rig(tmp_path, 6, ScriptedStore(tmp_path / "store", list_proof=prove))
    rig.run()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 6
    keys = [r.object_key for r in rig.recs]
    assert rig.store.listed == [keys]                   # one listing, for the whole batch
    assert rig.store.verified == [keys[-1]]             # only the one it did not prove
    assert list(rig.spool.root.glob("*.age")) == []


def test_a_failed_listing_leaves_each_recording_to_its_own_proof(tmp_path, capsys):
    def refuse(items: list[tuple[str, object]]) -> set[str]:
        raise TransientStoreError("listing timed out")

    rig = Rig(tmp_path, 4, ScriptedStore(tmp_path / "store", list_proof=refuse))
    rig.run()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 4
    assert sorted(rig.store.verified) == sorted(r.object_key for r in rig.recs)
    assert "upload.list_proof_failed" in capsys.readouterr().out


def test_a_proof_the_listing_gives_is_still_refused_when_the_put_failed(tmp_path):
    """A listing is asked only about what this batch put: a refused put is not proven by it."""
    rig = Rig(tmp_path, 4, ScriptedStore(tmp_path / "store", put_errors=[PermanentStoreError("refused")],
                                         list_proof=lambda items: {k for k, _ in items}))
    rig.run()
    first, rest = rig.ids[0], rig.ids[1:]
    assert rig.state(first) == RecState.FAILED
    assert [rig.state(i) for i in rest] == [RecState.VERIFIED] * 3
    assert rig.store.listed == [[r.object_key for r in rig.recs[1:]]]


def test_a_batch_to_file_store_shares_one_flush(tmp_path, monkeypatch):
    """file://: the batch's objects are written, then one syncfs and one directory
    fsync make them all durable, before any is proven."""
    store = tmp_path / "store"
    flushes = []
    real = fsutil.syncfs
    monkeypatch.setattr(fsutil, "syncfs", lambda path: (path == store and flushes.append(path)) or real(path))
    rig = Rig(tmp_path, 8, ScriptedStore(store))
    rig.run()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 8
    assert flushes == [store]                              # the spool's own flushes not counted


def test_a_batch_whose_flush_fails_is_put_again_and_verified(tmp_path, monkeypatch, capsys):
    import errno

    store = tmp_path / "store"
    real, failures = fsutil.syncfs, [OSError(errno.EIO, "Input/output error")]

    def syncfs(path) -> None:  # noqa: ANN001
        if failures and path == store:                     # the store's flush, not the spool's
            raise failures.pop()
        real(path)

    monkeypatch.setattr(fsutil, "syncfs", syncfs)
    rig = Rig(tmp_path, 5, ScriptedStore(store))
    rig.run(stop=False)                                    # the failed ones come back (transient)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(rig.state(i) != RecState.VERIFIED for i in rig.ids):
        time.sleep(0.05)
    rig.up.stop()
    assert [rig.state(i) for i in rig.ids] == [RecState.VERIFIED] * 5
    assert rig.store.puts == 10                            # each put twice: the first flush failed
    assert "upload.batch_flush_failed" in capsys.readouterr().out


def _wait_for(what, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_dead_store_mount_is_an_unreachable_store_and_recovers_by_itself(tmp_path, logs):
    """The store's directory replaced by a file (ENOTDIR, as a NAS mount gone bad gives
    ENOTCONN or ESTALE): the "already there?" look (verify, and its sweep of dead temp
    files) and the put fail. That is the store being unreachable: ``store.unreachable``,
    the recordings rescheduled with backoff; not a bug, not a permanent refusal. Once
    the directory is back they are verified with no one's help."""
    root = tmp_path / "store"
    root.mkdir()
    rig = Rig(tmp_path, 3, ScriptedStore(root))
    root.rename(tmp_path / "mounted")
    root.write_bytes(b"")
    for r in rig.recs:
        rig.up.submit(r)                     # not fresh: the store is asked first
    rig.up.start()
    try:
        assert _wait_for(lambda: all(rig.ledger.get(i).attempts >= 2 for i in rig.ids), 20)
        failed = [rig.ledger.get(i) for i in rig.ids]
        assert all(r.next_attempt_at is not None and "unreachable" in (r.last_error or "") for r in failed)
        (tmp_path / "store").unlink()
        (tmp_path / "mounted").rename(root)
        assert _wait_for(lambda: all(rig.state(i) == RecState.VERIFIED for i in rig.ids), 20)
    finally:
        rig.up.stop()
    names = [e["event"] for e in logs()]
    assert "upload.bug" not in names
    assert names.count("store.unreachable") == 1       # once per outage, not once per attempt
    assert "upload.failed" in names


class SteppedClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_retry_is_scheduled_on_the_monotonic_clock_given(tmp_path):
    """After a store outage the retry falls due by the monotonic clock the pool is given,
    whatever the wall clock does: an hour's backoff passes when that clock says so, and
    nothing else makes it pass (the ledger's wall-clock next_attempt_at is for people)."""
    rig = Rig(tmp_path, 1, ScriptedStore(tmp_path / "store", put_errors=transient(1)))
    clock = SteppedClock()
    hour = RetryPolicy(attempts=1, initial=3600, maximum=3600)
    up = Uploader(rig.ledger, RetryingStore(rig.store, RetryPolicy.immediate(1)), rig.spool, hour,
                  concurrency=1, clock=clock)
    rec = rig.recs[0]
    up.submit(rec, fresh=True)
    up.start()
    try:
        assert _wait_for(lambda: rec.id in up.delayed_ids(), 10)
        failed = rig.ledger.get(rec.id)
        assert failed.state == RecState.FAILED
        assert failed.next_attempt_at is not None and failed.next_attempt_at > time.time() + 1700
        clock.now += 1700                     # the backoff is uniform in [1800, 3600]: not yet due
        time.sleep(1.5)                       # a timer round or more: it must still be waiting
        assert rec.id in up.delayed_ids() and rig.state(rec.id) == RecState.FAILED
        clock.now += 1900
        assert _wait_for(lambda: rig.state(rec.id) == RecState.VERIFIED, 10)
    finally:
        up.stop()
