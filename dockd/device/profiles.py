"""Camera profiles: which devices are cameras, and which of their files are recordings.

A profile is data (``dockd/profiles/*.toml``, plus an operator's
``devices.profiles_dir`` that overrides by name). This module only parses it
and answers pure questions about relative paths; it never touches a device.

Glob rules, for ``recordings`` and ``keep``:

* patterns are anchored at the camera root and use ``/`` (``DCIM/*/*.MP4``);
* ``*`` and ``?`` never cross a ``/``; ``[...]`` is a character class;
* a whole segment ``**`` matches zero or more directories
  (``**/*.MP4`` finds an MP4 at any depth; ``SYSTEM/**`` is everything under
  ``SYSTEM``);
* matching ignores case (camera filesystems are FAT/exFAT).

Hostile paths (absolute, empty segments, ``.``/``..``) are never recordings
and are always "kept", so nothing that looks odd is ever deleted.
"""

from __future__ import annotations

import re
import tomllib
from functools import cached_property
from pathlib import Path, PurePath
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

PACKAGE_PROFILES = Path(__file__).resolve().parent.parent / "profiles"
GENERIC = "generic"

_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_EXT_RE = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_MAX_SERIAL = 64


# -- globs -------------------------------------------------------------------

def _class_body(body: str) -> str:
    """A ``[...]`` body as regex: characters escaped, reversed ranges dropped (as fnmatch does)."""
    items: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo <= hi:
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            items.append(re.escape(body[i]))
            i += 1
    return "".join(items)


def _segment_regex(seg: str) -> str:
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            while i + 1 < n and seg[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:              # no closing bracket: a literal "["
                out.append(re.escape(c))
            else:
                body = seg[i + 1:j]
                neg = body[:1] in ("!", "^")
                if neg:
                    body = body[1:]
                body = _class_body(body.replace("/", ""))
                out.append(f"[{'^/' if neg else ''}{body}]" if body else ("[^/]" if neg else "(?!)"))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a profile glob (rules in the module docstring). ``ValueError`` if malformed."""
    if not pattern or pattern.startswith("/"):
        raise ValueError(f"glob {pattern!r} must be relative to the camera root")
    parts = pattern.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"glob {pattern!r} has an empty, '.' or '..' segment")
    out: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _valid_regex(v: str | None) -> str | None:
    """A validator's check: the pattern compiles (None allowed)."""
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None
    return v


def _clean_relpath(relpath: str | PurePath) -> str | None:
    """The POSIX relative path, or None if it is hostile (absolute, '', '.', '..')."""
    s = relpath.as_posix() if isinstance(relpath, PurePath) else str(relpath)
    if not s or s.startswith("/") or "\x00" in s:
        return None
    if any(p in ("", ".", "..") for p in s.split("/")):
        return None
    return s


# -- the model -------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hex_id(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF:
        return f"{v:04x}"
    if isinstance(v, str):
        s = v.lower().removeprefix("0x")
        if re.fullmatch(r"[0-9a-f]{1,4}", s):
            return s.rjust(4, "0")
    raise ValueError(f"expected a USB id such as \"1a2b\", got {v!r}")


def normalise_usb_id(v: object) -> str | None:
    """``"0x1A2B"`` / ``"1a2b"`` / ``0x1a2b`` → ``"1a2b"``; None for None or garbage."""
    if v is None:
        return None
    try:
        return _hex_id(v)
    except ValueError:
        return None


class Match(_Model):
    """One way to recognise the camera.

    ``vendor_id`` + ``product_id`` match the USB device. ``fs_label``, when
    given with them, narrows the match. A label-only entry is honoured only
    for block devices with no USB parent (loop devices in tests, see
    docs/CAMERAS.md): a USB stick can never become a "camera" by its label.
    """

    vendor_id: str | None = None
    product_id: str | None = None
    fs_label: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("vendor_id", "product_id", mode="before")
    @classmethod
    def _hex(cls, v: object) -> str | None:
        return None if v is None else _hex_id(v)

    @model_validator(mode="after")
    def _complete(self) -> "Match":
        if (self.vendor_id is None) != (self.product_id is None):
            raise ValueError("vendor_id and product_id go together")
        if self.vendor_id is None and self.fs_label is None:
            raise ValueError("a match needs vendor_id + product_id, or fs_label")
        return self

    @property
    def is_label_only(self) -> bool:
        return self.vendor_id is None


class ModeSwitch(_Model):
    """A vendor control transfer that puts the camera into mass-storage mode.

    ``match`` lists the USB ids the camera shows *before* switching (defaults
    to the profile's own ids).
    """

    request_type: int = Field(ge=0, le=0xFF)
    request: int = Field(ge=0, le=0xFF)
    value: int = Field(default=0, ge=0, le=0xFFFF)
    index: int = Field(default=0, ge=0, le=0xFFFF)
    data_hex: str = Field(default="", pattern=r"^([0-9a-fA-F]{2})*$")
    match: list[Match] = Field(default_factory=list)

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.data_hex)

    @property
    def is_host_to_device(self) -> bool:
        return not self.request_type & 0x80


class FlagFrom(_Model):
    """Where a recording's event marker/category lives. Carried, not interpreted here."""

    sidecar_ext: str
    field: str | None = None          # dotted path in a JSON/XML sidecar, e.g. "event.category"
    regex: str | None = None          # or: the first group of this regex over the sidecar text

    @field_validator("sidecar_ext")
    @classmethod
    def _ext(cls, v: str) -> str:
        if not _EXT_RE.match(v):
            raise ValueError(f"expected an extension such as \".XML\", got {v!r}")
        return v.upper()

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return _valid_regex(v)

    @model_validator(mode="after")
    def _one(self) -> "FlagFrom":
        if self.field is None and self.regex is None:
            raise ValueError("flag_from needs field or regex")
        return self


class Profile(_Model):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    match: list[Match] = Field(default_factory=list)
    recordings: list[str] = Field(min_length=1)
    sidecars: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    serial_from: str = "usb"
    serial_regex: str | None = None
    mode_switch: ModeSwitch | None = None
    flag_from: FlagFrom | None = None

    @field_validator("recordings", "keep")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for g in v:
            glob_regex(g)
        return v

    @field_validator("sidecars")
    @classmethod
    def _exts(cls, v: list[str]) -> list[str]:
        for e in v:
            if not _EXT_RE.match(e):
                raise ValueError(f"expected an extension such as \".XML\", got {e!r}")
        return [e.upper() for e in v]

    @field_validator("serial_from")
    @classmethod
    def _serial_from(cls, v: str) -> str:
        if v in ("usb", "label"):
            return v
        if v.startswith("file:"):
            if _clean_relpath(v[5:]) is None:
                raise ValueError("file: needs a path relative to the camera root, without '..'")
            return v
        raise ValueError('expected "usb", "label" or "file:<relative path>"')

    @field_validator("serial_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return _valid_regex(v)

    # compiled forms (cached_property works on frozen pydantic models: __dict__ is writable)
    @cached_property
    def _recording_res(self) -> tuple[re.Pattern[str], ...]:
        return tuple(glob_regex(g) for g in self.recordings)

    @cached_property
    def _keep_res(self) -> tuple[re.Pattern[str], ...]:
        return tuple(glob_regex(g) for g in self.keep)

    @property
    def serial_file(self) -> str | None:
        """The relative path named by ``serial_from = "file:..."``, else None."""
        return self.serial_from[5:] if self.serial_from.startswith("file:") else None

    def is_kept(self, relpath: str | PurePath) -> bool:
        """True if this path must never be deleted (a keep glob, or a hostile path)."""
        s = _clean_relpath(relpath)
        if s is None:
            return True
        return any(r.fullmatch(s) for r in self._keep_res)

    def is_recording(self, relpath: str | PurePath) -> bool:
        """True if the path matches a recording glob and is not kept."""
        s = _clean_relpath(relpath)
        if s is None:
            return False
        return any(r.fullmatch(s) for r in self._recording_res) and not self.is_kept(s)

    def sidecars_for(self, relpath: str | PurePath, names_in_dir: Iterable[str]) -> list[str]:
        """Relative paths of the sidecars of the recording ``relpath``.

        A sidecar sits in the same directory and is named ``<stem><ext>`` or
        ``<name><ext>`` (``A.MP4`` → ``A.XML`` or ``A.MP4.SHA256``), for an
        ``ext`` in ``sidecars``; names compare without case. ``names_in_dir``
        are bare names from that directory. Never returns the recording
        itself, another recording, or a kept file. Sorted, no duplicates.
        """
        s = _clean_relpath(relpath)
        if s is None or not self.sidecars:
            return []
        head, _, name = s.rpartition("/")
        prefix = f"{head}/" if head else ""
        stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
        bases = {stem.casefold(), name.casefold()}
        exts = {e.casefold() for e in self.sidecars}
        found: set[str] = set()
        for other in names_in_dir:
            if "/" in other or other.casefold() == name.casefold():
                continue
            base, dot, ext = other.rpartition(".")
            if not dot or not base or f".{ext}".casefold() not in exts:
                continue
            if base.casefold() in bases:
                rel = prefix + other
                if not self.is_kept(rel) and not self.is_recording(rel):
                    found.add(rel)
        return sorted(found)

    def serial_from_text(self, text: str | None) -> str | None:
        """Apply ``serial_regex`` (first group, else whole match) and sanitise; None if nothing usable."""
        if text is None:
            return None
        text = text.strip()
        if self.serial_regex is not None:
            m = re.search(self.serial_regex, text)
            if not m:
                return None
            text = m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
        return sanitise_serial(text)

    def matches_usb(self, vendor_id: str | None, product_id: str | None,
                    fs_label: str | None = None) -> bool:
        vid, pid = normalise_usb_id(vendor_id), normalise_usb_id(product_id)
        if vid is None or pid is None:
            return False
        for m in self.match:
            if m.vendor_id == vid and m.product_id == pid:
                if m.fs_label is None or _label_eq(m.fs_label, fs_label):
                    return True
        return False

    def matches_label(self, fs_label: str | None) -> bool:
        """Label-only match entries (for devices with no USB parent)."""
        return any(m.is_label_only and _label_eq(m.fs_label, fs_label) for m in self.match)

    def mode_switch_matches(self, vendor_id: str | None, product_id: str | None) -> bool:
        if self.mode_switch is None:
            return False
        vid, pid = normalise_usb_id(vendor_id), normalise_usb_id(product_id)
        ids = self.mode_switch.match or [m for m in self.match if not m.is_label_only]
        return any(m.vendor_id == vid and m.product_id == pid for m in ids)


def _label_eq(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def sanitise_serial(raw: str | None) -> str | None:
    """Keep ``[A-Za-z0-9._-]`` (others become ``_``), bounded, never ``.``/``..``-led; None if empty."""
    if raw is None:
        return None
    s = re.sub(r"[^A-Za-z0-9._-]", "_", raw.strip())[:_MAX_SERIAL]
    s = s.lstrip(".")
    if not s.strip("_"):
        return None
    return s


# -- lookup ---------------------------------------------------------------------

def _by_specificity(profiles: dict[str, Profile]) -> list[Profile]:
    # label-narrowed entries first, then by name, so the answer is deterministic
    return sorted(profiles.values(),
                  key=lambda p: (not any(m.fs_label and not m.is_label_only for m in p.match), p.name))


def profile_for_usb(profiles: dict[str, Profile], vendor_id: str | None, product_id: str | None,
                    fs_label: str | None = None) -> Profile | None:
    """The profile whose USB match fits, or None (then the device is not a camera)."""
    for p in _by_specificity(profiles):
        if p.matches_usb(vendor_id, product_id, fs_label):
            return p
    return None


def profile_for_label(profiles: dict[str, Profile], fs_label: str | None) -> Profile | None:
    """The profile with a label-only match for ``fs_label``. Only for devices without a USB parent."""
    for p in sorted(profiles.values(), key=lambda p: p.name):
        if p.matches_label(fs_label):
            return p
    return None


def has_label_only_matches(profiles: dict[str, Profile]) -> bool:
    return any(m.is_label_only for p in profiles.values() for m in p.match)


def profile_for_mode_switch(profiles: dict[str, Profile], vendor_id: str | None,
                            product_id: str | None) -> Profile | None:
    for p in sorted(profiles.values(), key=lambda p: p.name):
        if p.mode_switch_matches(vendor_id, product_id):
            return p
    return None


# -- loading ----------------------------------------------------------------------

def _load_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        raise ConfigError(f"{path}:{loc}", msg[:1].lower() + msg[1:]) from None


def _load_dir(directory: Path) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = _load_file(path)
        if profile.name in out:
            raise ConfigError(f"{path}:name",
                              f"profile {profile.name!r} is also defined in {origin[profile.name]}")
        out[profile.name] = profile
        origin[profile.name] = path
    return out


def load_profiles(extra_dir: Path | None = None) -> dict[str, Profile]:
    """The shipped profiles, then ``extra_dir``'s (same name = override).

    A bad file raises ``ConfigError`` naming the file and key. The result
    always contains ``generic``.
    """
    profiles = _load_dir(PACKAGE_PROFILES)
    if extra_dir is not None:
        if not extra_dir.is_dir():
            raise ConfigError("devices.profiles_dir", f"{extra_dir} is not a directory")
        profiles.update(_load_dir(extra_dir))
    if GENERIC not in profiles:
        raise ConfigError("devices.profiles_dir", f"no {GENERIC!r} profile (looked in {PACKAGE_PROFILES})")
    return profiles
