"""Event markers: what a camera says about a recording, read from its sidecar.

A profile's ``flag_from`` names the sidecar extension and either a dotted
``field`` or a ``regex`` (or both: the field first). The marker's value is
*carried*: into the manifest, into object metadata. A value that is not one
of the "no event" words (``NO_EVENT``) makes the recording ``flagged``, and
its retention class evidential, so the store can put it under legal hold;
the recording's sidecars go with it.

Field paths:

* JSON: keys from the top object (``event.category``).
* XML: the first part names the root element, the rest child elements; the
  last part may instead name an attribute (``recording.event`` reads
  ``<recording event="traffic-stop"/>``; ``Recording.EventFlag`` reads
  ``<Recording><EventFlag>…</EventFlag></Recording>``). Names ignore case and
  XML namespaces.

A sidecar is camera data, so it is hostile: never a symlink, read up to
``MAX_SIDECAR`` bytes, no DTDs or entities, and a bad one means "no marker"
(reported), never a failed session.
"""

from __future__ import annotations

import json
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterable

from .device.profiles import FlagFrom

MAX_SIDECAR = 256 * 1024
MAX_VALUE = 64
NO_EVENT = frozenset({"", "none", "null", "no", "false", "0", "off", "-", "n/a", "routine"})
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/+-]+")     # object metadata is ASCII; keep it plain
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def clean_value(raw: str) -> str:
    """A marker value fit for a manifest and object metadata: printable ASCII, bounded."""
    return _UNSAFE.sub("_", raw.strip())[:MAX_VALUE].strip()


def is_event(value: str | None) -> bool:
    """True if a marker value means "this recording is an event" (not a "none" word)."""
    return value is not None and value.strip().casefold() not in NO_EVENT


def _read(path: Path) -> tuple[bytes, bool]:
    """Up to MAX_SIDECAR bytes of a regular file, never through a symlink; (data, whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path.name}: not a regular file")
        data = f.read(MAX_SIDECAR + 1)
    return data[:MAX_SIDECAR], len(data) <= MAX_SIDECAR


def _scalar(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        return str(v)
    return None


def _json_field(data: bytes, parts: list[str]) -> str | None:
    try:
        node: Any = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    for p in parts:
        if not isinstance(node, dict):
            return None
        key = next((k for k in node if isinstance(k, str) and k.casefold() == p.casefold()), None)
        if key is None:
            return None
        node = node[key]
    return _scalar(node)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].casefold()


def _xml_field(data: bytes, parts: list[str]) -> str | None:
    if _DTD.search(data):
        return None                   # no entity expansion from a camera, ever
    try:
        node = ET.fromstring(data)
    except (ET.ParseError, ValueError):
        return None
    if not parts or _local(node.tag) != parts[0].casefold():
        return None
    for i, p in enumerate(parts[1:], start=1):
        child = next((c for c in node if _local(c.tag) == p.casefold()), None)
        if child is None:
            if i == len(parts) - 1:
                attr = next((v for k, v in node.attrib.items() if _local(k) == p.casefold()), None)
                return attr
            return None
        node = child
    return node.text if node is not None else None


def read_marker(path: Path, rule: FlagFrom) -> str | None:
    """The marker in one sidecar per ``rule``, cleaned; None if it has none.

    Raises OSError when the sidecar cannot be read (the caller reports it).
    """
    data, whole = _read(path)
    value: str | None = None
    if rule.field and whole:
        parts = [p for p in rule.field.split(".") if p]
        head = data.lstrip()[:1]
        if head in (b"{", b"["):
            value = _json_field(data, parts)
        elif head == b"<" or data.startswith(b"\xef\xbb\xbf<"):
            value = _xml_field(data, parts)
    if value is None and rule.regex:
        m = re.search(rule.regex, data.decode("utf-8", "replace"))
        if m:
            value = m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
    return None if value is None else clean_value(value)


def markers(mount: Path, entries: Iterable[Any], rule: FlagFrom | None,
            on_error: Callable[[bytes, str], None] | None = None) -> dict[bytes, str]:
    """Camera path → marker, for each recording whose ``rule`` sidecar holds one,
    and for that recording's sidecars too (they are kept with it).

    ``entries`` are scan entries (``rel_path``, ``role``, ``primary``).
    """
    if rule is None:
        return {}
    entries = list(entries)
    ext = rule.sidecar_ext.casefold()
    out: dict[bytes, str] = {}
    for e in entries:
        if e.role != "sidecar" or e.primary is None:
            continue
        if not os.fsdecode(e.rel_path).casefold().endswith(ext):
            continue
        try:
            value = read_marker(Path(os.fsdecode(os.path.join(os.fsencode(mount), e.rel_path))), rule)
        except OSError as exc:
            if on_error:
                on_error(e.rel_path, getattr(exc, "strerror", None) or str(exc))
            continue
        if value is not None:
            out[e.primary] = value
    for e in entries:
        if e.role == "sidecar" and e.primary in out:
            out.setdefault(e.rel_path, out[e.primary])
    return out
