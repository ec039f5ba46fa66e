"""Event markers from sidecars: read safely, carried into ledger, metadata and manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dockd import flags
from dockd.config import DevicesConfig
from dockd.device.events import CameraDocked
from dockd.device.profiles import FlagFrom
from dockd.station import Station
from dockd.model import RecState
from dockd.store.retry import RetryPolicy

from fakes import ScriptedStore

FLAGGED = "DCIM/100BWC/VID_20261120_0701.MP4"          # its XML says event="traffic-stop"
FLAGGED_XML = "DCIM/100BWC/VID_20261120_0701.XML"
ROUTINE = "DCIM/100BWC/VID_20261120_1133.MP4"          # event="none"

TEST_PROFILE = """
name = "bwc-events"
description = "The fixture camera, with its XML event attribute as the marker"
recordings = ["DCIM/**/*.MP4", "DCIM/**/*.JPG", "AUDIO/*.WAV"]
sidecars = [".XML"]
keep = ["SYSTEM/**"]

[flag_from]
sidecar_ext = ".XML"
field = "recording.event"
"""


# -- reading one sidecar ------------------------------------------------------------

def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("data, field, regex, want", [
    (b'<?xml version="1.0"?>\n<recording event="traffic-stop"/>', "recording.event", None, "traffic-stop"),
    (b"<Recording><EventFlag> PURSUIT </EventFlag></Recording>", "Recording.EventFlag", None, "PURSUIT"),
    (b'<r:Recording xmlns:r="urn:x"><r:EventFlag>arrest</r:EventFlag></r:Recording>', "recording.eventflag",
     None, "arrest"),
    (b'{"device": "SV5", "event": {"category": "use-of-force"}}', "event.category", None, "use-of-force"),
    (b'{"event": {"category": true}}', "event.category", None, "true"),
    (b'{"event": {"category": {"nested": 1}}}', "event.category", None, None),
    (b'{"event": {}}', "event.category", None, None),
    (b"<other event='x'/>", "recording.event", None, None),           # wrong root element
    (b"<Recording><EventFlag>A</EventFlag></Recording>", "Recording.Nope",
     r"<EventFlag>\s*([^<\s]+)\s*</EventFlag>", "A"),                 # field finds nothing: the regex
    (b"not xml at all, EVENT=stop", "a.b", r"EVENT=(\w+)", "stop"),
    (b'{"e": "a\\u0001b\xc3\xa9 c/d"}', "e", None, "a_b_ c/d"),        # cleaned for metadata
    (b"<recording event='a\x01b'/>", "recording.event", None, None),    # not XML: no marker
])
def test_read_marker(tmp_path, data, field, regex, want):
    rule = FlagFrom(sidecar_ext=".XML", field=field, regex=regex)
    assert flags.read_marker(write(tmp_path, "A.XML", data), rule) == want


def test_entities_are_never_expanded(tmp_path):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "traffic-stop">]>'
            b'<recording event="&a;"/>')
    rule = FlagFrom(sidecar_ext=".XML", field="recording.event")
    assert flags.read_marker(write(tmp_path, "A.XML", bomb), rule) is None


def test_a_symlinked_sidecar_is_not_followed(tmp_path):
    target = write(tmp_path, "secret.txt", b'<recording event="x"/>')
    os.symlink(target, tmp_path / "A.XML")
    with pytest.raises(OSError):
        flags.read_marker(tmp_path / "A.XML", FlagFrom(sidecar_ext=".XML", field="recording.event"))


def test_a_huge_sidecar_is_read_only_so_far(tmp_path):
    big = b'<recording event="x">' + b" " * (flags.MAX_SIDECAR * 2) + b"</recording>"
    p = write(tmp_path, "A.XML", big)
    assert flags.read_marker(p, FlagFrom(sidecar_ext=".XML", field="recording.event")) is None
    assert flags.read_marker(p, FlagFrom(sidecar_ext=".XML", regex=r'event="(\w+)"')) == "x"


@pytest.mark.parametrize("value, event", [
    ("traffic-stop", True), ("PURSUIT", True), ("1", True),
    ("none", False), ("NONE", False), ("", False), (" ", False), ("false", False), ("0", False), (None, False),
])
def test_is_event(value, event):
    assert flags.is_event(value) is event


# -- through the station ----------------------------------------------------------------

@pytest.fixture
def event_cfg(make_cfg, tmp_path):
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "bwc-events.toml").write_text(TEST_PROFILE)
    return make_cfg(devices=DevicesConfig(inbox_dir=tmp_path / "inbox", mount_dir=tmp_path / "mnt",
                                          profiles_dir=pdir))


class MetadataStore(ScriptedStore):
    """Records the metadata and legal-hold flag each object was put with."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.seen: dict[str, tuple[dict[str, str], bool]] = {}

    def scripted_error(self, item):
        self.seen[item.key] = (dict(item.blob.metadata), item.blob.flagged)
        return super().scripted_error(item)


def run(cfg, camera, backend=None):
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=backend, patient=False)
    st.start()
    out = st.run_session(CameraDocked("BWC0001", "bwc-events", camera))
    return st, out


def test_fixture_marker_flags_the_recording_and_its_sidecar(event_cfg, camera, tmp_path):
    store = MetadataStore(tmp_path / "store")
    st, out = run(event_cfg, camera, store)
    try:
        assert out.ok
        recs = {r.name: r for r in st.ledger.recordings(serial="BWC0001")}
        assert {n for n, r in recs.items() if r.flagged} == {FLAGGED, FLAGGED_XML}
        assert all(r.state == RecState.WIPED for r in recs.values())
        # object metadata: the marker and the retention class, and legal hold asked for
        meta, hold = store.seen[recs[FLAGGED].object_key]
        assert (meta["event-marker"], meta["retention-class"], hold) == ("traffic-stop", "evidential", True)
        meta, hold = store.seen[recs[FLAGGED_XML].object_key]
        assert (meta["event-marker"], meta["retention-class"], hold) == ("traffic-stop", "evidential", True)
        meta, hold = store.seen[recs[ROUTINE].object_key]
        assert (meta["event-marker"], meta["retention-class"], hold) == ("none", "31d", False)
        meta, hold = store.seen[recs["AUDIO/REC_20261120_1402.WAV"].object_key]
        assert "event-marker" not in meta and meta["retention-class"] == "31d" and not hold
        # the manifest carries it per recording
        (mpath,) = (tmp_path / "store").rglob("*.manifest.json")
        doc = json.loads(mpath.read_text())
        assert doc["retention_class"] == "31d"
        items = {i["path"]: i for i in doc["recordings"]}
        assert (items[FLAGGED]["event_marker"], items[FLAGGED]["flagged"], items[FLAGGED]["retention_class"]) \
            == ("traffic-stop", True, "evidential")
        assert (items[ROUTINE]["event_marker"], items[ROUTINE]["flagged"], items[ROUTINE]["retention_class"]) \
            == ("none", False, "31d")
        # one audit event per flagged item, saying why
        flagged_events = [e for e in st.ledger.events(limit=1000) if e["event"] == "recording.flagged"]
        assert sorted(json.loads(e["data"])["path"] for e in flagged_events) == [FLAGGED, FLAGGED_XML]
        assert all(json.loads(e["data"])["marker"] == "traffic-stop" for e in flagged_events)
    finally:
        st.close()


def test_a_camera_is_read_evidential_first_then_oldest_first(event_cfg, camera, tmp_path):
    """The flagged recording, made the camera's newest file, is read first all the same."""
    newest = max(p.stat().st_mtime for p in camera.rglob("*") if p.is_file()) + 60
    for name in (FLAGGED, FLAGGED_XML):
        os.utime(camera / name, (newest, newest))
    st, out = run(event_cfg, camera, ScriptedStore(tmp_path / "store"))
    try:
        assert out.ok
        recs = {r.name: r for r in st.ledger.recordings(serial="BWC0001")}
        spooled = [json.loads(e["data"])["path"] for e in st.ledger.events(limit=1000)
                   if e["event"] == "recording.spooled"]
    finally:
        st.close()
    assert sorted(spooled[:2]) == sorted([FLAGGED, FLAGGED_XML])
    rest = [recs[p].mtime_ns for p in spooled[2:]]
    assert len(spooled) == len(recs) and rest == sorted(rest)
    assert rest[-1] < recs[FLAGGED].mtime_ns                 # so this is not the mtime order


def test_markers_are_not_kept_once_their_recordings_are_settled(event_cfg, camera, tmp_path):
    """A daemon runs for months: the markers of a finished session are dropped, not kept
    one per recording it ever saw; the object metadata still carried them."""
    store = MetadataStore(tmp_path / "store")
    st, out = run(event_cfg, camera, store)
    try:
        assert out.ok
        recs = {r.name: r for r in st.ledger.recordings(serial="BWC0001")}
        assert store.seen[recs[ROUTINE].object_key][0]["event-marker"] == "none"
        assert len(st.markers) == 0
    finally:
        st.close()


def test_generic_profile_reads_no_marker_and_keeps_the_default_class(make_cfg, camera, tmp_path):
    store = MetadataStore(tmp_path / "store")
    st = Station(make_cfg(), policy=RetryPolicy.immediate(3), backend=store, patient=False)
    try:
        st.start()
        assert st.run_session(CameraDocked("BWC0001", "generic", camera)).ok
        assert not any(r.flagged for r in st.ledger.recordings(serial="BWC0001"))
        assert {m["retention-class"] for m, _hold in store.seen.values() if "role" in m} == {"31d"}
    finally:
        st.close()


def test_marker_survives_a_restart_for_uploads_resumed_from_the_spool(event_cfg, camera, tmp_path):
    from dockd.config import WipeConfig
    from dockd.errors import PermanentStoreError

    cfg = event_cfg.model_copy(update={"wipe": WipeConfig(after="spooled")})
    down = ScriptedStore(tmp_path / "store", always=lambda: PermanentStoreError("store down"))
    st, out = run(cfg, camera, down)
    st.close()
    store = MetadataStore(tmp_path / "store")
    st2 = Station(event_cfg, policy=RetryPolicy.immediate(3), backend=store, patient=False)
    try:
        st2.start()                          # a new process: nothing in memory
        ids = [r.id for r in st2.ledger.recordings(serial="BWC0001")]
        st2.uploader.wait_idle(ids, timeout=30)
        flagged = next(r for r in st2.ledger.recordings(serial="BWC0001") if r.name == FLAGGED)
        assert flagged.state == RecState.VERIFIED
        meta, hold = store.seen[flagged.object_key]
        assert (meta["event-marker"], meta["retention-class"], hold) == ("traffic-stop", "evidential", True)
    finally:
        st2.close()


def test_markers_cover_sidecars_and_report_what_cannot_be_read(tmp_path):
    from dockd.pipeline.scan import Entry

    write(tmp_path, "A.XML", b'<recording event="pursuit"/>')
    write(tmp_path, "A.SHA", b"00")
    os.symlink(tmp_path / "A.XML", tmp_path / "B.XML")      # swapped for a link after the scan
    entries = [Entry(b"A.MP4", 1, 1, "recording"), Entry(b"A.XML", 1, 1, "sidecar", b"A.MP4"),
               Entry(b"A.SHA", 1, 1, "sidecar", b"A.MP4"),
               Entry(b"B.MP4", 1, 1, "recording"), Entry(b"B.XML", 1, 1, "sidecar", b"B.MP4")]
    errors: list[bytes] = []
    got = flags.markers(tmp_path, entries, FlagFrom(sidecar_ext=".xml", field="recording.event"),
                        lambda rel, why: errors.append(rel))
    assert got == {b"A.MP4": "pursuit", b"A.XML": "pursuit", b"A.SHA": "pursuit"}
    assert errors == [b"B.XML"]
    assert flags.markers(tmp_path, entries, None) == {}
