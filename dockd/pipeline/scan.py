"""Scan: which files on a camera are recordings, chosen by its profile.

The camera's filesystem is hostile. We walk it with bytes paths (names need
not be UTF-8), never follow symlinks, read only regular files, guard against
directory loops by (dev, inode), bound the depth, and report everything we
skip. Files that are neither recordings nor their sidecars are left alone.
A directory that cannot be listed is reported apart (``unlisted``): what is
under it was never seen, so a session that meets one is not done.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MAX_DEPTH = 64
# A file identity's mtime is kept in nanoseconds in a SQLite INTEGER (64-bit): about the
# years 1678 to 2262. A camera claiming a time outside that is skipped (never deleted),
# rather than ending the whole session.
MAX_MTIME_NS = 2**63 - 1
MIN_MTIME_NS = -(2**63)


@dataclass(frozen=True)
class Entry:
    rel_path: bytes
    size: int
    mtime_ns: int
    role: str                      # "recording" | "sidecar"
    primary: bytes | None = None   # for a sidecar, its recording


@dataclass
class ScanResult:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[bytes, str]] = field(default_factory=list)
    ignored: int = 0               # regular files that are not ours: left alone
    # directories whose listing failed, with the error: their files were never seen
    unlisted: list[tuple[bytes, OSError]] = field(default_factory=list)
    # recordings one of whose sidecars is a file the scan could not take (its stat failed,
    # its mtime out of range): recording → why. Never wiped without it: the sidecar would
    # stay on the camera alone, and an event marker it carries would be lost
    held: dict[bytes, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)


def scan(root: Path, profile: Any, on_skip: Callable[[bytes, str], None] | None = None) -> ScanResult:
    """List the recordings and sidecars under ``root`` per ``profile``.

    ``profile`` provides ``is_recording(rel)``, ``is_kept(rel)`` and
    ``sidecars_for(rel, names_in_dir)`` over ``str`` paths (surrogate-escaped).
    A directory whose listing fails (the root's as ``b"."``) goes to ``unlisted``
    with its error, whatever the errno: whether that is a bad directory or the
    camera gone is the caller's question (it can ask the camera).
    """
    result = ScanResult()

    def skip(rel: bytes, reason: str) -> None:
        result.skipped.append((rel, reason))
        if on_skip:
            on_skip(rel, reason)

    root_b = os.fsencode(root)
    try:
        root_st = os.lstat(root_b)
    except OSError as exc:
        from ..errors import DeviceGoneError

        raise DeviceGoneError(f"cannot read camera root {root}: {exc.strerror}") from exc
    seen_dirs = {(root_st.st_dev, root_st.st_ino)}
    stack: list[tuple[bytes, int]] = [(b"", 0)]
    while stack:
        rel_dir, depth = stack.pop()
        abs_dir = os.path.join(root_b, rel_dir) if rel_dir else root_b
        files: dict[bytes, os.stat_result] = {}
        untaken: dict[bytes, str] = {}          # regular files (or unknown) the scan could not take
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            result.unlisted.append((rel_dir or b".", exc))
            continue
        for de in entries:
            rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as exc:
                skip(rel, f"cannot stat: {exc.strerror}")
                untaken[de.name] = f"cannot stat: {exc.strerror}"
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                skip(rel, "symlink (never followed)")
            elif stat.S_ISDIR(mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    skip(rel, "directory loop")
                elif depth + 1 > MAX_DEPTH:
                    skip(rel, f"deeper than {MAX_DEPTH} levels")
                else:
                    seen_dirs.add(key)
                    stack.append((rel, depth + 1))
            elif stat.S_ISREG(mode):
                if not MIN_MTIME_NS <= st.st_mtime_ns <= MAX_MTIME_NS:
                    skip(rel, "modification time out of range (the ledger keeps 64-bit nanoseconds)")
                    untaken[de.name] = "modification time out of range"
                else:
                    files[de.name] = st
            else:
                skip(rel, "not a regular file")
        _classify(rel_dir, files, profile, result)
        if untaken:
            _hold(rel_dir, files, untaken, profile, result)
    result.entries.sort(key=lambda e: (e.mtime_ns, e.rel_path))
    return result


def _classify(rel_dir: bytes, files: dict[bytes, os.stat_result], profile: Any, result: ScanResult) -> None:
    # A sidecar is named <stem>.<ext> or <name>.<ext>: index the directory by the part
    # before the last dot, so each recording is offered only the names that could be
    # its sidecars. (Offering every name made a camera of n files in one directory cost
    # n² comparisons: 10,000 photos took minutes.)
    by_base: dict[str, list[str]] = {}
    for n in files:
        name = os.fsdecode(n)
        by_base.setdefault(name.rpartition(".")[0].casefold(), []).append(name)
    claimed: set[bytes] = set()
    for name_b, st in sorted(files.items()):
        rel = os.path.join(rel_dir, name_b) if rel_dir else name_b
        rel_s = os.fsdecode(rel)
        if profile.is_kept(rel_s) or not profile.is_recording(rel_s):
            continue
        result.entries.append(Entry(rel, st.st_size, st.st_mtime_ns, "recording"))
        claimed.add(name_b)
        name_s = os.fsdecode(name_b)
        stem = name_s.rsplit(".", 1)[0] if "." in name_s[1:] else name_s
        candidates = by_base.get(stem.casefold(), []) + (
            by_base.get(name_s.casefold(), []) if name_s.casefold() != stem.casefold() else [])
        for side in profile.sidecars_for(rel_s, candidates):
            side_b = os.fsencode(os.path.basename(side))
            if side_b in claimed or side_b not in files:
                continue
            side_rel = os.path.join(rel_dir, side_b) if rel_dir else side_b
            if profile.is_kept(os.fsdecode(side_rel)):
                continue
            sst = files[side_b]
            result.entries.append(Entry(side_rel, sst.st_size, sst.st_mtime_ns, "sidecar", rel))
            claimed.add(side_b)
    result.ignored += len(files) - len(claimed)


def _hold(rel_dir: bytes, files: dict[bytes, os.stat_result], untaken: dict[bytes, str], profile: Any,
          result: ScanResult) -> None:
    """Hold each recording of this directory that a file the scan could not take may be a
    sidecar of (by the profile's own sidecar rule)."""
    names = [os.fsdecode(n) for n in untaken]
    for e in result.entries:
        if e.role != "recording" or os.path.dirname(e.rel_path) != rel_dir:
            continue
        for side in profile.sidecars_for(os.fsdecode(e.rel_path), names):
            side_b = os.fsencode(os.path.basename(side))
            if side_b in untaken and side_b not in files:
                shown = os.fsdecode(os.path.join(rel_dir, side_b) if rel_dir else side_b)
                result.held[e.rel_path] = f"kept with its sidecar {shown!r}, which could not be read ({untaken[side_b]})"
                break
