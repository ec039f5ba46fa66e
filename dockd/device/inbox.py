"""Inbox source (watchdog): each subdirectory of ``inbox_dir`` is a docked camera.

Used by the embedded default and the demo, and by stations whose cameras are
mounted by something else. The directory's name is the camera serial. A
directory that disappears is an undock; one that reappears is a new dock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..pipeline.naming import safe_component
from .events import CameraDocked, CameraUndocked, Emit


class InboxSource:
    def __init__(self, inbox_dir: Path, profile: str = "generic") -> None:
        self.inbox = Path(inbox_dir)
        self.profile = profile
        self._observer: Observer | None = None
        self._present: set[str] = set()
        self._lock = threading.Lock()
        self._emit: Emit | None = None

    def _event_for(self, path: Path) -> CameraDocked | None:
        if path.parent != self.inbox or path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            return None
        serial = safe_component(path.name, 64)
        return CameraDocked(serial=serial, profile=self.profile, mount=path)

    def _appeared(self, path: Path) -> None:
        ev = self._event_for(path)
        if ev is None or self._emit is None:
            return
        with self._lock:
            if path.name in self._present:
                return
            self._present.add(path.name)
        self._emit(ev)

    def _vanished(self, path: Path) -> None:
        if path.parent != self.inbox or self._emit is None:
            return
        with self._lock:
            if path.name not in self._present:
                return
            self._present.discard(path.name)
        self._emit(CameraUndocked(serial=safe_component(path.name, 64)))

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.inbox.mkdir(parents=True, exist_ok=True)
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
        for p in sorted(self.inbox.iterdir()):   # coldplug, after listening: nothing slips between
            self._appeared(p)

    def poll(self) -> None:
        """A camera directory removed without an inotify event (a full inotify
        queue) is undocked all the same."""
        with self._lock:
            gone = [n for n in self._present if not (self.inbox / n).is_dir()]
        for name in gone:
            self._vanished(self.inbox / name)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    def release(self, event: CameraDocked) -> None:
        """Nothing is mounted by us; the directory stays until someone removes it."""
