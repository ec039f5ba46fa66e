"""Scan over hostile camera filesystems: nothing outside, nothing special, nothing lost."""

from __future__ import annotations

import os

import pytest

from dockd.device.profiles import load_profiles
from dockd.pipeline.scan import MAX_DEPTH, scan


@pytest.fixture(scope="module")
def generic():
    return load_profiles()["generic"]


def rels(result):
    return {(e.rel_path, e.role) for e in result.entries}


def test_recordings_and_sidecars_are_paired_and_others_left(tmp_path, generic):
    d = tmp_path / "DCIM" / "100"
    d.mkdir(parents=True)
    for n in ("A.MP4", "A.XML", "A.GPS", "B.MOV", "C.XML", "notes.doc"):
        (d / n).write_bytes(b"x")
    (tmp_path / "FIRMWARE.bin").write_bytes(b"fw")
    res = scan(tmp_path, generic)
    assert rels(res) == {(b"DCIM/100/A.MP4", "recording"), (b"DCIM/100/A.XML", "sidecar"),
                         (b"DCIM/100/A.GPS", "sidecar"), (b"DCIM/100/B.MOV", "recording")}
    assert res.ignored == 3          # C.XML (no recording), notes.doc, FIRMWARE.bin: left alone
    side = {e.rel_path: e.primary for e in res.entries if e.role == "sidecar"}
    assert side[b"DCIM/100/A.XML"] == b"DCIM/100/A.MP4"


def test_symlinks_are_never_followed(tmp_path, generic):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SECRET.MP4").write_bytes(b"not the camera's")
    cam = tmp_path / "cam"
    cam.mkdir()
    (cam / "link.MP4").symlink_to("/etc/shadow")
    (cam / "up").symlink_to(outside)
    (cam / "loop").symlink_to(cam)
    (cam / "REAL.MP4").write_bytes(b"real")
    res = scan(cam, generic)
    assert rels(res) == {(b"REAL.MP4", "recording")}
    reasons = dict(res.skipped)
    assert {b"link.MP4", b"up", b"loop"} <= set(reasons)
    assert all("symlink" in reasons[k] for k in (b"link.MP4", b"up", b"loop"))


def test_special_files_and_bad_names(tmp_path, generic):
    os.mkfifo(tmp_path / "PIPE.MP4")
    bad = os.fsencode(tmp_path) + b"/\xff\xfe-bad.MP4"
    with open(bad, "wb") as f:
        f.write(b"v")
    ctl = tmp_path / "ctl\x01\x1b[31m.MP4"
    ctl.write_bytes(b"v")
    long = tmp_path / ("L" * 250 + ".MP4")
    long.write_bytes(b"v")
    dots = tmp_path / "..hidden..MP4"
    dots.write_bytes(b"v")
    res = scan(tmp_path, generic)
    got = {e.rel_path for e in res.entries}
    assert b"\xff\xfe-bad.MP4" in got and os.fsencode(ctl.name) in got
    assert os.fsencode(long.name) in got and b"..hidden..MP4" in got
    assert b"PIPE.MP4" not in got and "not a regular file" in dict(res.skipped)[b"PIPE.MP4"]


def test_deep_trees_are_bounded_not_fatal(tmp_path, generic):
    p = tmp_path
    for i in range(MAX_DEPTH + 5):
        p = p / "d"
    p.mkdir(parents=True)
    (p / "DEEP.MP4").write_bytes(b"v")
    (tmp_path / "TOP.MP4").write_bytes(b"v")
    res = scan(tmp_path, generic)
    assert {e.rel_path for e in res.entries} == {b"TOP.MP4"}
    assert any("deeper than" in why for _rel, why in res.skipped)


def test_keep_list_is_never_a_recording(tmp_path, generic):
    (tmp_path / "System Volume Information").mkdir()
    (tmp_path / "System Volume Information" / "X.MP4").write_bytes(b"v")
    assert scan(tmp_path, generic).entries == []


def test_unreadable_root_is_device_gone(tmp_path, generic):
    from dockd.errors import DeviceGoneError

    with pytest.raises(DeviceGoneError):
        scan(tmp_path / "missing", generic)


def _failing_scandir(monkeypatch, bad: bytes, err: int):
    """os.scandir, failing with ``err`` for directories whose path ends with ``bad``."""
    real = os.scandir

    def scandir(path):
        if os.fsencode(path).endswith(bad):
            raise OSError(err, os.strerror(err))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_directory_that_cannot_be_listed_is_reported_not_skipped(tmp_path, generic, monkeypatch):
    """Its files were never seen: the scan says so apart from what it chose to skip,
    with the error, and goes on with its siblings."""
    import errno

    for d in ("DCIM/100", "DCIM/101"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "A.MP4").write_bytes(b"v")
    _failing_scandir(monkeypatch, b"DCIM/101", errno.EIO)
    res = scan(tmp_path, generic)
    monkeypatch.undo()
    assert {e.rel_path for e in res.entries} == {b"DCIM/100/A.MP4"}
    assert [(rel, exc.errno) for rel, exc in res.unlisted] == [(b"DCIM/101", errno.EIO)]
    assert res.skipped == []


def test_a_sidecar_the_scan_cannot_take_holds_its_recording(tmp_path):
    """A file the scan skips (its mtime out of range here; a failed stat alike) that the
    profile would take for a recording's sidecar holds that recording; others are free."""
    from dockd.device.profiles import load_profiles
    from dockd.pipeline.scan import scan

    d = tmp_path / "DCIM"
    d.mkdir()
    for n in ("A.MP4", "A.XML", "B.MP4", "B.XML"):
        (d / n).write_bytes(b"x")
    far = 13_569_465_600
    os.utime(d / "A.XML", (far, far))
    res = scan(tmp_path, load_profiles()["generic"])
    assert set(res.held) == {b"DCIM/A.MP4"} and "A.XML" in res.held[b"DCIM/A.MP4"]
    assert {e.rel_path for e in res.entries} == {b"DCIM/A.MP4", b"DCIM/B.MP4", b"DCIM/B.XML"}
