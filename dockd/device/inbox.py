"""Inbox source (watchdog): a subdirectory of ``inbox_dir`` is a docked camera.

Used by the embedded default and the demo, and by stations whose cameras are
mounted by something else. The directory's name is the camera serial (``serial_for``:
names that are not safe serials are made safe, and kept apart by a digest).

A directory in the inbox is not yet a camera. An automounter makes the
directory first and mounts the camera on it a moment later; a copy into the
inbox writes one file after another. A session started on either would find
nothing, or half, report done, and never hear of the rest. So a directory is a
camera:

* once it is a mount point (in ``/proc/self/mountinfo``, or on another device
  than the inbox): docked at once, and undocked when it is no longer one;
* or, not a mount point, once it holds at least one file and nothing in it has
  changed for ``quiet`` seconds (a camera copied or renamed into the inbox).

An empty directory that is not a mount point is never a camera. Directories
are looked at again on every ``poll()`` (the daemon calls it about once a
second): no event says that something was mounted. A camera directory that
disappears is an undock; one that reappears is a new dock.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..pipeline.naming import safe_component
from .events import CameraDocked, CameraUndocked, Emit
from .mount import current_mounts

# how long a directory that is not a mount point must stay unchanged before it is a camera
QUIET_SECONDS = 1.0


class InboxSource:
    def __init__(self, inbox_dir: Path, profile: str = "generic", quiet: float = QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inbox = Path(inbox_dir)
        self.profile = profile
        self.quiet = quiet
        self._clock = clock
        self._real = self.inbox                             # resolved at start, as mountinfo names it
        self._observer: Observer | None = None
        self._present: dict[str, bool] = {}                 # docked name -> docked as a mount point
        self._pending: dict[str, tuple[str | None, float]] = {}   # name -> (tree signature, since)
        self._lock = threading.Lock()
        self._emit: Emit | None = None

    def _is_candidate(self, path: Path) -> bool:
        return (path.parent == self.inbox and not path.name.startswith(".") and path.is_dir()
                and not path.is_symlink())

    def _appeared(self, path: Path) -> None:
        if self._emit is None or not self._is_candidate(path):
            return
        with self._lock:
            if path.name in self._present or path.name in self._pending:
                return
            self._pending[path.name] = (None, self._clock())
        self._consider(path.name, _mount_points())

    def _consider(self, name: str, mounts: set[Path]) -> None:
        """Dock the pending directory ``name`` if it is a camera now (see the module)."""
        path = self.inbox / name
        mounted = self._is_mount_point(path, mounts)
        sig = None if mounted else _tree_signature(path)
        now = self._clock()
        with self._lock:
            if name not in self._pending:
                return
            if not mounted:
                last, since = self._pending[name]
                if sig != last:
                    self._pending[name] = (sig, now)
                    return
                if sig is None or now - since < self.quiet:
                    return
            del self._pending[name]
            self._present[name] = mounted
        if self._emit is not None:
            self._emit(CameraDocked(serial=serial_for(name), profile=self.profile, mount=path))

    def _is_mount_point(self, path: Path, mounts: set[Path]) -> bool:
        """Mounted on: listed as a mount point (a bind mount of the inbox's own filesystem
        is seen only there), or on another device than the inbox."""
        if path in mounts or self._real / path.name in mounts:
            return True
        try:
            return os.stat(path).st_dev != os.stat(self.inbox).st_dev
        except OSError:
            return False

    def _vanished(self, path: Path) -> None:
        if path.parent != self.inbox or self._emit is None:
            return
        with self._lock:
            self._pending.pop(path.name, None)
            if path.name not in self._present:
                return
            del self._present[path.name]
        self._emit(CameraUndocked(serial=serial_for(path.name)))

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._real = self.inbox.resolve()
        source = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    source._appeared(Path(os.fsdecode(event.src_path)))

            def on_moved(self, event: FileSystemEvent) -> None:
                source._vanished(Path(os.fsdecode(event.src_path)))
                if event.is_directory:
                    source._appeared(Path(os.fsdecode(event.dest_path)))

            def on_deleted(self, event: FileSystemEvent) -> None:
                source._vanished(Path(os.fsdecode(event.src_path)))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.inbox), recursive=False)
        self._observer.start()
        self.poll()               # coldplug, after listening: nothing slips between

    def poll(self) -> None:
        """Look at every directory again: a pending one that is now a camera is docked
        (mounted on, or filled and quiet); a camera whose directory is gone (even without
        an inotify event: a full queue) or no longer mounted on is undocked. A directory
        no event announced is taken up here too."""
        mounts = _mount_points()
        with self._lock:
            present = dict(self._present)
        for name, was_mounted in present.items():
            path = self.inbox / name
            if not path.is_dir() or (was_mounted and not self._is_mount_point(path, mounts)):
                self._vanished(path)      # an emptied mount point waits for its next camera
        try:
            names = sorted(p.name for p in self.inbox.iterdir())
        except OSError:
            names = []
        for name in names:
            self._appeared(self.inbox / name)
        with self._lock:
            pending = list(self._pending)
        for name in pending:
            if self._is_candidate(self.inbox / name):
                self._consider(name, mounts)
            else:
                with self._lock:
                    self._pending.pop(name, None)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    def release(self, event: CameraDocked) -> None:
        """Nothing is mounted by us; the directory stays until someone removes it."""


def serial_for(name: str) -> str:
    """The camera serial an inbox directory stands for: its name, when that is a safe serial;
    else the name's safe form with a digest of the exact name, so two directories never
    share a serial (``TWO 1`` and ``TWO_1``, or two long names alike in their first 64
    characters), which would leave one camera unserved under the other's SAFE TO UNDOCK."""
    safe = safe_component(name, 64)
    if safe == name:
        return name
    return f"{safe_component(name, 55)}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}"


def _mount_points() -> set[Path]:
    try:
        return {e.target for e in current_mounts()}
    except OSError:
        return set()


def _tree_signature(root: Path) -> str | None:
    """A digest of every entry under ``root`` (name, type, size, mtime; symlinks not
    followed, each directory once), or None while it holds no file: equal digests a
    moment apart mean the tree is quiet. An entry that cannot be read counts with its
    error (the session reports it); it does not keep the directory from becoming a camera."""
    h = hashlib.sha256()
    has_file = False
    seen: set[tuple[int, int]] = set()
    stack = [os.fsencode(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            h.update(b"E%d\0%s\0" % (exc.errno or 0, d))
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                h.update(b"E%d\0%s\0" % (exc.errno or 0, e.path))
                has_file = True
                continue
            h.update(b"%s\0%o\0%d\0%d\0" % (e.path, st.st_mode, st.st_size, st.st_mtime_ns))
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen:      # a bind mount may loop
                    seen.add((st.st_dev, st.st_ino))
                    stack.append(e.path)
            else:
                has_file = True
    return h.hexdigest() if has_file else None
