"""The CI-sized reliability campaigns (campaigns/), as part of the normal test run.

Each test runs one campaign at CI size and asserts zero invariant violations and
zero unfinished runs. The same code at large size writes docs/RELIABILITY.md.
"""

from __future__ import annotations

import pytest

from campaigns.base import Context
from campaigns.run import registry


@pytest.fixture(scope="module")
def ctx():
    c = Context("ci")
    yield c
    c.close()


@pytest.mark.parametrize("name", ["crash", "powercut", "store-faults", "local-faults", "camera-faults", "clock", "hostile",
                                  "non-camera", "fuzz"])
def test_campaign_ci_size_has_no_violations(ctx, name):
    res = registry()[name](ctx)
    if res.skipped:
        pytest.skip(res.skipped)
    assert res.runs > 0
    assert sum(res.faults.values()) > 0
    assert res.violations == [], res.violations[:10]
    assert res.unfinished == [], res.unfinished[:10]


def test_the_checker_catches_a_wiped_file_that_was_never_verified(ctx, tmp_path):
    """The invariants are not vacuous: delete a camera file behind dockd's back."""
    import random

    from campaigns import harness as h
    from campaigns.invariants import DirView, snapshot

    cam = h.small_camera(tmp_path / "cam", random.Random(1))
    before = snapshot(cam)
    (cam / "DCIM/100BWC/VID_0002.MP4").unlink()
    v = ctx.invariants.check(before=before, camera_after=snapshot(cam), store=DirView(tmp_path / "store"),
                             spool=tmp_path / "spool", ledger=tmp_path / "none.sqlite3")
    assert any(x.startswith("2:") and "VID_0002" in x for x in v)


def test_the_checker_judges_by_content_not_by_the_ledger(ctx, tmp_path):
    """A clip replaced under the identity of one the store holds, then deleted: the ledger's
    rows and the store agree with each other, yet the camera's bytes are nowhere."""
    import io
    import os

    from campaigns.invariants import DirView, snapshot
    from dockd.age import Encryptor

    cam = tmp_path / "cam"
    (cam / "DCIM").mkdir(parents=True)
    (cam / "DCIM/V0001.MP4").write_bytes(b"the clip that was copied")
    store = tmp_path / "store"
    store.mkdir()
    buf = io.BytesIO()
    with Encryptor(buf, [ctx.identity.public()]) as enc:
        enc.write(b"the clip that was copied")
    (store / "V0001.MP4.x.1.age").write_bytes(buf.getvalue())
    (cam / "DCIM/V0001.MP4").write_bytes(b"a different clip, same size")   # same path
    before = snapshot(cam)
    os.unlink(cam / "DCIM/V0001.MP4")
    v = ctx.invariants.check(before=before, camera_after=snapshot(cam), store=DirView(store),
                             spool=tmp_path / "spool", ledger=tmp_path / "none.sqlite3")
    assert any(x.startswith("1:") and "V0001" in x and "neither on the camera nor in the store" in x for x in v)
