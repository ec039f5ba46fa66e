"""The upload queue's order: flagged first, then fair round-robin, oldest first per camera."""

from __future__ import annotations

from dockd.model import RecState, Recording
from dockd.pipeline.upload import Uploader
from dockd.store.retry import RetryPolicy


def rec(i: int, serial: str, flagged: bool = False) -> Recording:
    return Recording(id=i, serial=serial, rel_path=f"{i}.MP4".encode(), size=1, mtime_ns=i, role="recording",
                     state=RecState.SPOOLED, flagged=flagged)


def order(submitted: list[Recording]) -> list[int]:
    up = Uploader(ledger=None, store=None, spool=None, policy=RetryPolicy.immediate(), concurrency=1)  # type: ignore[arg-type]
    for r in submitted:
        up.submit(r)
    return [up._next() for _ in {r.id for r in submitted}]


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
