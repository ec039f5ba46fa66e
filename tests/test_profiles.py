"""Camera profiles: loading, validation, matching, and each shipped layout."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockd.device.profiles import (
    PACKAGE_PROFILES,
    Profile,
    glob_regex,
    load_profiles,
    profile_for_label,
    profile_for_mode_switch,
    profile_for_usb,
    sanitise_serial,
)
from dockd.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "profiles"
RULES = Path(__file__).resolve().parent.parent / "udev-rules" / "90-dockd.rules"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Profile]:
    return load_profiles(None)


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text)
    return p


MINIMAL = 'name = "{name}"\nrecordings = ["**/*.MP4"]\n'


# -- loading ------------------------------------------------------------------------

def test_shipped_profiles_load(shipped):
    assert {"generic", "northwind-nw200", "sentinel-sv5"} <= set(shipped)
    assert all(p.name == n for n, p in shipped.items())


def test_package_profiles_dir_is_the_installed_data():
    assert PACKAGE_PROFILES.name == "profiles"
    assert (PACKAGE_PROFILES / "generic.toml").is_file()


def test_extra_dir_overrides_by_name_and_adds(tmp_path):
    write(tmp_path, "mine.toml", 'name = "generic"\ndescription = "site"\nrecordings = ["X/*.MP4"]\n')
    write(tmp_path, "other.toml", MINIMAL.format(name="site-cam"))
    profiles = load_profiles(tmp_path)
    assert profiles["generic"].description == "site"
    assert profiles["generic"].is_recording("X/a.mp4")
    assert not profiles["generic"].is_recording("DCIM/a.mp4")
    assert "site-cam" in profiles and "northwind-nw200" in profiles


def test_fixture_profiles_load():
    profiles = load_profiles(FIXTURES)
    assert profiles["bwctest"].matches_label("bwctest")


@pytest.mark.parametrize("text, key, problem", [
    ('name = "x"\nrecordings = ["a"]\nbogus = 1\n', "bogus", "unknown key"),
    ('name = "x"\n', "recordings", "required key is missing"),
    ('name = "Bad Name"\nrecordings = ["a"]\n', "name", "pattern"),
    ('name = "x"\nrecordings = ["../a"]\n', "recordings", "'..'"),
    ('name = "x"\nrecordings = ["/abs/*.MP4"]\n', "recordings", "relative"),
    ('name = "x"\nrecordings = ["a"]\nsidecars = ["XML"]\n', "sidecars", "extension"),
    ('name = "x"\nrecordings = ["a"]\nserial_from = "mac"\n', "serial_from", "file:"),
    ('name = "x"\nrecordings = ["a"]\nserial_from = "file:../etc/passwd"\n', "serial_from", "'..'"),
    ('name = "x"\nrecordings = ["a"]\nserial_regex = "(("\n', "serial_regex", "bad regex"),
    ('name = "x"\nrecordings = ["a"]\nmatch = [{vendor_id = "zz12", product_id = "0001"}]\n',
     "match.0.vendor_id", "usb id"),
    ('name = "x"\nrecordings = ["a"]\nmatch = [{vendor_id = "1234"}]\n', "match.0", "together"),
    ('name = "x"\nrecordings = ["a"]\nmatch = [{}]\n', "match.0", "fs_label"),
    ('name = "x"\nrecordings = ["a"]\n[mode_switch]\nrequest_type = 300\nrequest = 1\n',
     "mode_switch.request_type", "less than"),
    ('name = "x"\nrecordings = ["a"]\n[mode_switch]\nrequest_type = 64\nrequest = 1\ndata_hex = "abc"\n',
     "mode_switch.data_hex", "pattern"),
    ('name = "x"\nrecordings = ["a"]\n[flag_from]\nsidecar_ext = ".XML"\n', "flag_from", "field or regex"),
    ('name = "x"\nrecordings = [\n', "", "not valid TOML"),
])
def test_bad_profile_names_file_and_key(tmp_path, text, key, problem):
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as exc:
        load_profiles(tmp_path)
    assert exc.value.key == (f"{path}:{key}" if key else str(path))
    assert problem.lower() in exc.value.problem.lower()
    assert exc.value.exit_code == 2
    assert "\n" not in str(exc.value).strip().split("\n")[0] and str(path) in str(exc.value)


def test_duplicate_name_in_one_dir_is_an_error(tmp_path):
    write(tmp_path, "a.toml", MINIMAL.format(name="dup"))
    write(tmp_path, "b.toml", MINIMAL.format(name="dup"))
    with pytest.raises(ConfigError, match="also defined"):
        load_profiles(tmp_path)


def test_missing_extra_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_profiles(tmp_path / "nope")
    assert exc.value.key == "devices.profiles_dir"


def test_non_utf8_profile(tmp_path):
    (tmp_path / "x.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_profiles(tmp_path)


# -- matching ---------------------------------------------------------------------------

def test_profile_for_usb(shipped):
    assert profile_for_usb(shipped, "3fd2", "0200").name == "northwind-nw200"
    assert profile_for_usb(shipped, "0x3FD2", "201").name == "northwind-nw200"
    assert profile_for_usb(shipped, "3fe7", "5005").name == "sentinel-sv5"
    assert profile_for_usb(shipped, "3fe7", "5006") is None
    assert profile_for_usb(shipped, None, None) is None
    assert profile_for_usb(shipped, "garbage", "0200") is None


def test_generic_is_never_matched_by_usb_or_label(shipped):
    assert shipped["generic"].match == []
    assert profile_for_label(shipped, "BWCTEST") is None


def test_no_shipped_profile_matches_by_label_alone(shipped):
    # a USB stick must never become a camera by naming its volume
    for p in shipped.values():
        assert not any(m.is_label_only for m in p.match), p.name


def test_label_narrowed_usb_match_wins(tmp_path):
    write(tmp_path, "a.toml", 'name = "a"\nrecordings = ["*"]\nmatch = [{vendor_id = "1234", product_id = "0001"}]\n')
    write(tmp_path, "b.toml", 'name = "b"\nrecordings = ["*"]\n'
                              'match = [{vendor_id = "1234", product_id = "0001", fs_label = "CAM"}]\n')
    profiles = load_profiles(tmp_path)
    assert profile_for_usb(profiles, "1234", "0001", "cam").name == "b"
    assert profile_for_usb(profiles, "1234", "0001", "OTHER").name == "a"
    assert profile_for_usb(profiles, "1234", "0001").name == "a"
    assert profile_for_label(profiles, "CAM") is None     # narrowed entries are not label-only


def test_label_only_match(tmp_path):
    profiles = load_profiles(FIXTURES)
    assert profile_for_label(profiles, "BWCTEST").name == "bwctest"
    assert profile_for_label(profiles, " bwctest ").name == "bwctest"
    assert profile_for_label(profiles, "BWCTEST2") is None
    assert profile_for_label(profiles, None) is None


def test_mode_switch_match(shipped):
    assert profile_for_mode_switch(shipped, "3fd2", "02f0").name == "northwind-nw200"
    assert profile_for_mode_switch(shipped, "3fd2", "0200") is None   # already in storage mode
    assert profile_for_mode_switch(shipped, "3fe7", "5005") is None   # no mode switch


def test_udev_rule_tags_every_shipped_usb_id_with_its_profile(shipped):
    lines = [l for l in RULES.read_text().splitlines() if "idVendor" in l and not l.startswith("#")]
    tagged = {}
    for l in lines:
        vid = re.search(r'ATTRS\{idVendor\}=="([0-9a-f]{4})"', l).group(1)
        pid = re.search(r'ATTRS\{idProduct\}=="([0-9a-f]{4})"', l).group(1)
        prof = re.search(r'ENV\{DOCKD_PROFILE\}="([^"]+)"', l).group(1)
        assert 'TAG+="dockd"' in l and 'ENV{UDISKS_IGNORE}="1"' in l
        tagged[(vid, pid)] = prof
    expected = {(m.vendor_id, m.product_id): p.name for p in shipped.values()
                for m in p.match if not m.is_label_only}
    assert tagged == expected


# -- each shipped layout ------------------------------------------------------------------

NORTHWIND = {
    "DCIM/100BWC/NW200001.MP4": "recording",
    "DCIM/100BWC/NW200001.XML": "sidecar",
    "DCIM/100BWC/NW200001.SHA": "sidecar",
    "DCIM/100BWC/nw200002.mp4": "recording",
    "DCIM/101BWC/NW200003.JPG": "recording",
    "DCIM/100BWC/.thumbs/NW200001.JPG": "kept",
    "AUDIO/NW2A0001.WAV": "recording",
    "SYSTEM/DEVICE.INF": "kept",
    "SYSTEM/FW/NW200_v3.BIN": "kept",
    "SYSTEM/DEMO.MP4": "kept",
    "UPDATE.BIN": "kept",
    "DCIM/NW200009.MP4": "other",            # not in a DCIM subfolder
    "README.TXT": "other",
}

SENTINEL = {
    "RECORD/20240611/SV5_143005_0001.MP4": "recording",
    "RECORD/20240611/SV5_143005_0001.JSON": "sidecar",
    "RECORD/20240611/SV5_143005_0001.NMEA": "sidecar",
    "RECORD/20240611/SV5_143005_0003.WAV": "recording",
    "EVENT/20240611/SV5_150112_0002.MP4": "recording",
    "EVENT/20240611/SV5_150112_0002.JSON": "sidecar",
    "RECORD/latest/SV5_1.MP4": "other",      # not a YYYYMMDD folder
    "RECORD/2024061/SV5_1.MP4": "other",
    "FIRMWARE/sv5.bin": "kept",
    "FIRMWARE/sv5.mp4": "kept",
    "LOG/system.log": "kept",
    "CONFIG.INI": "kept",
}

GENERIC = {
    "DCIM/100MEDIA/CLIP0001.MP4": "recording",
    "DCIM/100MEDIA/CLIP0001.SRT": "sidecar",
    "DCIM/100MEDIA/CLIP0001.MP4.SHA256": "sidecar",
    "a/b/c/d/voice.m4a": "recording",
    "photo.HEIC": "recording",
    "clip.mts": "recording",
    "x.jpeg": "recording",
    "firmware.bin": "kept",
    "System Volume Information/IndexerVolumeGuid": "kept",
    "notes.docx": "other",
}


@pytest.mark.parametrize("name, layout", [("northwind-nw200", NORTHWIND),
                                          ("sentinel-sv5", SENTINEL), ("generic", GENERIC)])
def test_shipped_profile_against_its_layout(shipped, name, layout):
    profile = shipped[name]
    by_dir: dict[str, list[str]] = {}
    for rel in layout:
        d, _, base = rel.rpartition("/")
        by_dir.setdefault(d, []).append(base)
    sidecars_found = set()
    for rel, kind in layout.items():
        assert profile.is_recording(rel) == (kind == "recording"), rel
        assert profile.is_kept(rel) == (kind == "kept"), rel
        if kind == "recording":
            d = rel.rpartition("/")[0]
            sidecars_found.update(profile.sidecars_for(rel, by_dir[d]))
    assert sidecars_found == {r for r, k in layout.items() if k == "sidecar"}


def test_flag_from_and_serial_data_are_carried(shipped):
    nw = shipped["northwind-nw200"]
    assert nw.flag_from.sidecar_ext == ".XML" and nw.flag_from.regex
    assert nw.serial_file == "SYSTEM/DEVICE.INF"
    assert nw.serial_from_text("MODEL=NW200\nSERIAL=NW2-004711\n") == "NW2-004711"
    assert nw.serial_from_text("no serial here") is None
    assert nw.mode_switch.data == b"MS\x02" and nw.mode_switch.is_host_to_device
    sv = shipped["sentinel-sv5"]
    assert sv.flag_from.field == "event.category"
    assert sv.serial_from_text("SV5-AB12CD34") == "AB12CD34"


# -- path rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/DCIM/a.MP4", "../a.MP4", "DCIM/../a.MP4", "DCIM//a.MP4",
                                  "./a.MP4", "", "DCIM/a.MP4/", "a\x00.MP4"])
def test_hostile_paths_are_never_recordings_and_always_kept(shipped, path):
    p = shipped["generic"]
    assert not p.is_recording(path)
    assert p.is_kept(path)


def test_sidecars_for_rules(shipped):
    p = shipped["generic"]
    names = ["A.MP4", "A.XML", "a.json", "A.MP4.SHA256", "A.JPG", "AB.XML", "A.BIN", "B.XML", "A.X.XML"]
    assert p.sidecars_for("DCIM/A.MP4", names) == ["DCIM/A.MP4.SHA256", "DCIM/A.XML", "DCIM/a.json"]
    assert p.sidecars_for("A.MP4", ["A.XML"]) == ["A.XML"]
    assert p.sidecars_for("../A.MP4", ["A.XML"]) == []
    assert p.sidecars_for("DCIM/A.MP4", ["sub/A.XML"]) == []


def test_glob_star_does_not_cross_directories():
    r = glob_regex("DCIM/*.MP4")
    assert r.fullmatch("DCIM/a.mp4") and not r.fullmatch("DCIM/x/a.mp4")
    r = glob_regex("DCIM/**/*.MP4")
    assert r.fullmatch("DCIM/a.mp4") and r.fullmatch("DCIM/x/y/a.mp4")
    assert not r.fullmatch("OTHER/DCIM/a.mp4")
    r = glob_regex("SYSTEM/**")
    assert r.fullmatch("SYSTEM/a") and r.fullmatch("SYSTEM/a/b") and not r.fullmatch("SYSTEMX/a")
    assert glob_regex("[!a]*.MP4").fullmatch("b.mp4") and not glob_regex("[!a]*.MP4").fullmatch("a.mp4")
    assert glob_regex("a[.MP4").fullmatch("a[.mp4")      # unclosed bracket is literal
    assert glob_regex("[0-9][0-9].MP4").fullmatch("42.mp4")
    assert not glob_regex("[9-0].MP4").fullmatch("5.mp4")  # reversed range: empty, no crash


_seg_alphabet = st.sampled_from(list("abAB.-_ 1*?[]!"))  # ranges: lower-case only below
_name_alphabet = st.sampled_from(list("abAB.-_ 1[]!"))


@settings(max_examples=400, deadline=None)
@given(pattern=st.text(_seg_alphabet, min_size=1, max_size=8),
       name=st.text(_name_alphabet, min_size=1, max_size=8))
def test_single_segment_glob_agrees_with_fnmatch(pattern, name):
    if pattern in (".", "..") or name in (".", ".."):
        return
    # case-folded ranges differ between "lower both sides" and IGNORECASE; compare in one case
    pattern, name = pattern.lower(), name.lower()
    expected = fnmatch.fnmatchcase(name, pattern)
    assert bool(glob_regex(pattern).fullmatch(name)) == expected


_seg = st.text(st.sampled_from(list("abcXYZ._- ")), min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_seg, min_size=1, max_size=5), siblings=st.lists(_seg, max_size=8))
def test_recordings_sidecars_and_kept_never_overlap(shipped, parts, siblings):
    rel = "/".join(parts)
    for p in shipped.values():
        assert not (p.is_recording(rel) and p.is_kept(rel))
        for side in p.sidecars_for(rel, siblings + [parts[-1]]):
            assert side.rpartition("/")[0] == rel.rpartition("/")[0]
            assert side != rel and not p.is_kept(side) and not p.is_recording(side)


@given(st.text(max_size=200))
def test_sanitise_serial_output_is_safe(raw):
    s = sanitise_serial(raw)
    if s is not None:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", s)
        assert s not in (".", "..")


def test_sanitise_serial_examples():
    assert sanitise_serial("NW2-004711") == "NW2-004711"
    assert sanitise_serial("../../etc") == "_.._etc"
    assert sanitise_serial("a b/c") == "a_b_c"
    assert sanitise_serial("   ") is None
    assert sanitise_serial("///") is None
    assert len(sanitise_serial("x" * 500)) == 64
