"""A file's identity (serial, path, size, mtime) is a hint, never a proof of content.

Each test docks a camera directory with a real ``dockd ingest`` process and a
file:// store, changes what the camera holds between docks the way a camera
(or an attacker) can without changing the identity, and then judges by
content: every byte sequence that was on the camera when it docked is either
still on the camera or decrypts, from the store, to exactly those bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockd.age import decrypt, format_identity_file, generate_identity
from dockd.ledger import Ledger

from notify import write_config

MTIME = 946684800            # 2000-01-01: a camera whose clock reset


@pytest.fixture
def station(tmp_path: Path):
    ident = generate_identity()
    return ident, tmp_path


def ingest(tmp: Path, ident, cam: Path, extra: str = "") -> subprocess.CompletedProcess:
    cfg = write_config(tmp, str(ident.public()), "[spool]\nmin_free = 0\n" + extra)
    return subprocess.run([sys.executable, "-m", "dockd", "--config", str(cfg), "ingest", str(cam),
                           "--serial", "BWC1"], capture_output=True, text=True, timeout=120)


def put(cam: Path, rel: str, data: bytes, mtime: int = MTIME) -> None:
    p = cam / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))


def store_contents(tmp: Path, ident) -> dict[str, bytes]:
    """Every object in the store, decrypted: key → plaintext."""
    out = {}
    for p in (tmp / "store").rglob("*.age"):
        buf = io.BytesIO()
        with open(p, "rb") as f:
            decrypt(f, buf, [ident])
        out[p.relative_to(tmp / "store").as_posix()] = buf.getvalue()
    return out


def assert_nothing_lost(tmp: Path, ident, cam: Path, before: dict[str, bytes]) -> None:
    held = {hashlib.sha256(b).hexdigest() for b in store_contents(tmp, ident).values()}
    for rel, data in before.items():
        p = cam / rel
        if p.exists() and p.read_bytes() == data:
            continue
        assert hashlib.sha256(data).hexdigest() in held, f"{rel}: neither on the camera nor in the store"


def snapshot(cam: Path) -> dict[str, bytes]:
    return {p.relative_to(cam).as_posix(): p.read_bytes() for p in cam.rglob("*") if p.is_file()}


def test_a_new_clip_under_a_wiped_clips_identity_is_copied(station):
    ident, tmp = station
    cam = tmp / "cam"
    first, second = os.urandom(64 << 10), os.urandom(64 << 10)
    put(cam, "DCIM/V0001.MP4", first)
    r = ingest(tmp, ident, cam)
    assert r.returncode == 0, r.stderr
    assert not (cam / "DCIM/V0001.MP4").exists()
    # the camera's clock reset and its counter restarted: a different clip, same identity
    put(cam, "DCIM/V0001.MP4", second)
    before = snapshot(cam)
    r = ingest(tmp, ident, cam)
    assert r.returncode == 0, r.stderr
    assert_nothing_lost(tmp, ident, cam, before)
    got = sorted(store_contents(tmp, ident).values())
    assert got == sorted([first, second])         # both clips, each under a key of its own


def test_a_verified_clip_replaced_before_its_deferred_wipe_is_copied_not_deleted(station):
    """Dock 1 copies with ``after = "spooled"``: the camera is released before the wipe, which
    waits for the next dock. Before it, the camera holds a different clip with the same
    path, size and mtime: it must be copied, and the old copy kept."""
    ident, tmp = station
    cam = tmp / "cam"
    first, second = os.urandom(64 << 10), os.urandom(64 << 10)
    put(cam, "DCIM/V0001.MP4", first)
    r = ingest(tmp, ident, cam, '[wipe]\nafter = "spooled"\n')
    assert r.returncode == 0, r.stderr
    assert (cam / "DCIM/V0001.MP4").read_bytes() == first
    put(cam, "DCIM/V0001.MP4", second)
    before = snapshot(cam)
    r = ingest(tmp, ident, cam)
    assert_nothing_lost(tmp, ident, cam, before)
    assert sorted(store_contents(tmp, ident).values()) == sorted([first, second])
    assert r.returncode == 0, r.stderr
    assert not (cam / "DCIM/V0001.MP4").exists()    # wiped only once its own copy was proven
    led = Ledger(tmp / "state" / "ledger.sqlite3")
    try:
        replaced = led.events(limit=1000)
        assert [e for e in replaced if e["event"] == "recording.replaced"]
        assert led.verify_chain() > 0
    finally:
        led.close()


def test_a_clip_rewritten_in_place_with_its_mtime_restored_is_not_wiped_on_the_old_copy(station):
    ident, tmp = station
    cam = tmp / "cam"
    data = bytearray(os.urandom(3 << 20))
    put(cam, "DCIM/V0001.MP4", bytes(data))
    r = ingest(tmp, ident, cam, '[wipe]\nafter = "spooled"\n')
    assert r.returncode == 0, r.stderr
    with open(cam / "DCIM/V0001.MP4", "r+b") as f:      # 8 bytes in the middle's head block
        f.seek(100)
        f.write(b"TAMPERED")
    os.utime(cam / "DCIM/V0001.MP4", (MTIME, MTIME))
    data[100:108] = b"TAMPERED"
    before = snapshot(cam)
    r = ingest(tmp, ident, cam)
    assert_nothing_lost(tmp, ident, cam, before)
    assert bytes(data) in store_contents(tmp, ident).values()


def test_a_rewrite_in_a_block_no_sample_covers_is_caught_by_the_full_rehash(station):
    """The next dock re-reads a deferred wipe's file in full: a change in the middle of a
    large file, where no sample looks, is still found."""
    ident, tmp = station
    cam = tmp / "cam"
    data = bytearray(os.urandom(3 << 20))
    put(cam, "DCIM/V0001.MP4", bytes(data))
    assert ingest(tmp, ident, cam, '[wipe]\nafter = "spooled"\n').returncode == 0
    with open(cam / "DCIM/V0001.MP4", "r+b") as f:
        f.seek(len(data) // 2)
        f.write(b"TAMPERED")
    os.utime(cam / "DCIM/V0001.MP4", (MTIME, MTIME))
    data[len(data) // 2:len(data) // 2 + 8] = b"TAMPERED"
    before = snapshot(cam)
    ingest(tmp, ident, cam)
    assert_nothing_lost(tmp, ident, cam, before)
    assert bytes(data) in store_contents(tmp, ident).values()


def test_same_name_and_content_in_two_folders_get_two_keys_and_verify_clean(station):
    ident, tmp = station
    cam = tmp / "cam"
    same = os.urandom(32 << 10)
    put(cam, "DCIM/100BWC/VID0001.MP4", same)
    put(cam, "DCIM/101BWC/VID0001.MP4", same)
    r = ingest(tmp, ident, cam)
    assert r.returncode == 0, r.stderr
    objs = store_contents(tmp, ident)
    assert len(objs) == 2 and set(objs.values()) == {same}
    led = Ledger(tmp / "state" / "ledger.sqlite3")
    try:
        keys = [r.object_key for r in led.recordings(serial="BWC1")]
    finally:
        led.close()
    assert len(set(keys)) == 2
    cfg = tmp / "dockd.toml"
    key = subprocess.run([sys.executable, "-m", "dockd", "--config", str(cfg), "station-key"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "id.txt").write_text(format_identity_file(ident))
    v = subprocess.run([sys.executable, "-m", "dockd", "--config", str(cfg), "verify", "--station-key", key,
                        "-i", str(tmp / "id.txt")], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "mismatch" not in (v.stdout + v.stderr).lower()


def test_the_wipe_refuses_a_file_rewritten_in_place_after_it_was_read(tmp_path):
    """Within one session: the sample taken as the spool read the file no longer matches,
    though size and mtime were restored."""
    from dockd import log as dlog
    from dockd.model import RecState
    from dockd.pipeline.content import rehash
    from dockd.pipeline.wipe import wipe

    cam = tmp_path / "cam"
    data = os.urandom(2 << 20)
    put(cam, "DCIM/A.MP4", data)
    led = Ledger(tmp_path / "ledger.sqlite3")
    try:
        sid = led.open_session("CAMX", "generic", str(cam), None, None, {})
        st = (cam / "DCIM/A.MP4").stat()
        rec = led.upsert_found("CAMX", sid, "generic", b"DCIM/A.MP4", st.st_size, st.st_mtime_ns, "recording")
        sha, sample = rehash(os.fsencode(cam / "DCIM/A.MP4"), rec.size, rec.mtime_ns)
        assert sha == hashlib.sha256(data).hexdigest()
        for s in (RecState.SPOOLED, RecState.VERIFIED):
            rec = led.transition(rec.id, s, plain_sha256=sha)
        for offset in (100, len(data) - 50):          # the head block, then the tail block
            with open(cam / "DCIM/A.MP4", "r+b") as f:
                f.seek(offset)
                f.write(b"TAMPERED")
            os.utime(cam / "DCIM/A.MP4", ns=(st.st_mtime_ns, st.st_mtime_ns))
            res = wipe(cam, [rec], led, dlog.get(), os.stat(cam).st_dev, {rec.id: sample})
            assert res.wiped == [] and [r.id for r, _ in res.refused] == [rec.id]
            assert "content differs" in res.refused[0][1]
            assert (cam / "DCIM/A.MP4").exists()
            put(cam, "DCIM/A.MP4", data)
            os.utime(cam / "DCIM/A.MP4", ns=(st.st_mtime_ns, st.st_mtime_ns))
        res = wipe(cam, [rec], led, dlog.get(), os.stat(cam).st_dev, {})       # no sample: refused
        assert res.wiped == [] and (cam / "DCIM/A.MP4").exists()
        res = wipe(cam, [rec], led, dlog.get(), os.stat(cam).st_dev, {rec.id: sample})
        assert [r.id for r in res.wiped] == [rec.id] and not (cam / "DCIM/A.MP4").exists()
    finally:
        led.close()


@pytest.mark.parametrize("size", [0, 1, 4095, 256 << 10, (256 << 10) + 1, 512 << 10, (512 << 10) + 7, 3 << 20])
def test_a_sample_is_the_same_whatever_the_read_sizes(tmp_path, size):
    from dockd.pipeline.content import Sampler, rehash

    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    st = p.stat()
    _sha, whole = rehash(os.fsencode(p), size, st.st_mtime_ns)
    for step in (1 << 20, 4096, 65537):
        s = Sampler(size)
        for i in range(0, size, step):
            s.feed(data[i:i + step])
        assert s.sample() == whole
    fd = os.open(p, os.O_RDONLY)
    try:
        assert whole.matches(fd)
    finally:
        os.close(fd)


def test_a_new_ledger_on_the_same_station_never_reuses_an_object_key(station):
    """A rebuilt dock (a new state directory, the same station id) starts its recording ids
    again: the same clip docked there must not land on, and replace, the object the first
    ledger's signed manifest names."""
    ident, tmp = station
    cam = tmp / "cam"
    clip = os.urandom(5000)
    put(cam, "DCIM/V.MP4", clip)
    assert ingest(tmp, ident, cam).returncode == 0
    first = {p: p.read_bytes() for p in (tmp / "store").rglob("*.age")}
    (tmp / "state").rename(tmp / "state.old")                # the dock rebuilt
    put(cam, "DCIM/V.MP4", clip)
    assert ingest(tmp, ident, cam).returncode == 0
    after = {p: p.read_bytes() for p in (tmp / "store").rglob("*.age")}
    assert len(first) == 1 and len(after) == 2
    for p, data in first.items():
        assert after[p] == data                               # the first object, untouched


def test_a_recording_whose_sidecar_the_scan_cannot_take_stays_with_it(station):
    """The sidecar carrying a clip's event marker has an mtime the ledger cannot hold (or
    fails to stat): the scan skips it. Its recording must not be wiped on its own: the
    sidecar would stay on the camera alone, never copied, and the marker that keeps the
    footage as evidence would be lost. The session needs a human."""
    ident, tmp = station
    cam = tmp / "cam"
    put(cam, "DCIM/VID2.MP4", os.urandom(50_000))
    put(cam, "DCIM/VID2.XML", b"<x><event>pursuit</event></x>")
    far = 13_569_465_600                         # the year 2400: past what 64-bit nanoseconds hold
    os.utime(cam / "DCIM/VID2.XML", (far, far))
    put(cam, "DCIM/OTHER.MP4", os.urandom(20_000))
    r = ingest(tmp, ident, cam)
    assert r.returncode == 1, r.stdout + r.stderr
    assert (cam / "DCIM/VID2.MP4").exists() and (cam / "DCIM/VID2.XML").exists()
    assert not (cam / "DCIM/OTHER.MP4").exists()             # the rest of the camera goes on
    assert "VID2.XML" in r.stderr and "could not be read" in r.stderr
