"""The upload queue's order: flagged first, then fair round-robin, oldest first per camera;
small recordings in batches cut from the front of one queue."""

from __future__ import annotations

from dockd.model import RecState, Recording
from dockd.pipeline.spool import GROUP_BYTES, GROUP_FILE_MAX
from dockd.pipeline.upload import BATCH_FILES, Uploader
from dockd.store.retry import RetryPolicy

BIG = GROUP_FILE_MAX + 1          # a recording that always travels alone


def rec(i: int, serial: str, flagged: bool = False, size: int = BIG) -> Recording:
    return Recording(id=i, serial=serial, rel_path=f"{i}.MP4".encode(), size=size, mtime_ns=i, role="recording",
                     state=RecState.SPOOLED, flagged=flagged)


def batches(submitted: list[Recording]) -> list[list[int]]:
    up = Uploader(ledger=None, store=None, spool=None, policy=RetryPolicy.immediate(), concurrency=1)  # type: ignore[arg-type]
    for r in submitted:
        up.submit(r)
    out: list[list[int]] = []
    while sum(map(len, out)) < len({r.id for r in submitted}):
        out.append(up._next())                 # type: ignore[arg-type]
    assert up.busy_ids() == {r.id for r in submitted}     # taken, still busy until done
    up._done([i for b in out for i in b])
    assert up.busy_ids() == set()
    return out


def order(submitted: list[Recording]) -> list[int]:
    return [i for b in batches(submitted) for i in b]


def test_round_robin_across_cameras_oldest_first_within():
    got = order([rec(1, "A"), rec(2, "A"), rec(3, "A"), rec(4, "B"), rec(5, "C"), rec(6, "B")])
    assert got == [1, 4, 5, 2, 6, 3]


def test_flagged_jump_every_camera_queue():
    got = order([rec(1, "A"), rec(2, "A"), rec(3, "B"), rec(4, "B", flagged=True), rec(5, "C", flagged=True)])
    assert got[:2] == [4, 5]
    assert sorted(got[2:]) == [1, 2, 3] and got[2:] == [1, 3, 2]


def test_resubmitting_a_queued_recording_is_a_noop():
    got = order([rec(1, "A"), rec(1, "A"), rec(2, "B")])
    assert got == [1, 2]


def test_small_recordings_travel_in_batches_from_one_camera_in_order():
    small = [rec(i, "A", size=64 << 10) for i in range(1, BATCH_FILES + 6)] + [rec(100, "B", size=64 << 10)]
    got = batches(small)
    assert got[0] == list(range(1, BATCH_FILES + 1))      # a full batch, oldest first
    assert got[1] == [100]                                # then the next camera's turn
    assert got[2] == list(range(BATCH_FILES + 1, BATCH_FILES + 6))


def test_a_large_recording_travels_alone_and_ends_a_batch():
    got = batches([rec(1, "A", size=10), rec(2, "A", size=20), rec(3, "A"), rec(4, "A", size=30),
                   rec(5, "A"), rec(6, "A")])
    assert got == [[1, 2], [3], [4], [5], [6]]


def test_a_batch_stays_within_the_group_size_in_bytes():
    per = GROUP_FILE_MAX                       # the largest small recording
    n = GROUP_BYTES // per + 3
    got = batches([rec(i, "A", size=per) for i in range(1, n + 1)])
    assert all(len(b) * per <= GROUP_BYTES for b in got)
    assert [i for b in got for i in b] == list(range(1, n + 1))
    assert len(got[0]) == GROUP_BYTES // per


def test_flagged_small_recordings_batch_together_ahead_of_the_rest():
    got = batches([rec(1, "A", size=10), rec(2, "B", flagged=True, size=10), rec(3, "C", flagged=True, size=10)])
    assert got == [[2, 3], [1]]
