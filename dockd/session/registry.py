"""The one serial → session map: the sessions running now, each camera's latest
progress (what ``dockd status`` shows), and the threads the daemon runs them on."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..device.events import CameraDocked, CameraUndocked

if TYPE_CHECKING:
    from .session import LiveSession, Session


@dataclass
class _Bay:
    thread: threading.Thread
    cancel: threading.Event
    ev: CameraDocked


class Sessions:
    """Thread-safe. A session registers itself while it runs (``begin``/``end``); its
    progress stays visible after it ends, until the camera's next session replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, "Session"] = {}
        self._live: dict[str, "LiveSession"] = {}
        self._bays: dict[str, _Bay] = {}

    # -- what sessions tell it ----------------------------------------------------

    def begin(self, session: "Session") -> None:
        with self._lock:
            self._running[session.ev.serial] = session
            self._live[session.ev.serial] = session.live

    def end(self, session: "Session") -> None:
        with self._lock:
            if self._running.get(session.ev.serial) is session:
                del self._running[session.ev.serial]

    # -- what others ask of it ----------------------------------------------------

    def is_docked(self, serial: str) -> bool:
        """A session is working with this camera now (its uploads come first)."""
        with self._lock:
            return serial in self._running

    def live(self, serial: str) -> "LiveSession | None":
        with self._lock:
            return self._live.get(serial)

    def snapshot(self) -> dict[str, "LiveSession"]:
        """Each camera's latest session progress (the objects themselves: read, never write)."""
        with self._lock:
            return dict(self._live)

    # -- the daemon's bays --------------------------------------------------------

    def dock(self, ev: CameraDocked, run: Callable[[threading.Event], None]) -> bool:
        """Run ``run(cancel)`` on a thread of its own for this camera, unless one is already
        serving it (a repeated add/change event). ``cancel`` is set when it is undocked."""
        with self._lock:
            cur = self._bays.get(ev.serial)
            if cur is not None and cur.thread.is_alive():
                return False
            cancel = threading.Event()
            t = threading.Thread(target=run, args=(cancel,), name=f"session-{ev.serial}", daemon=True)
            self._bays[ev.serial] = _Bay(t, cancel, ev)
        t.start()
        return True

    def undock(self, ev: CameraUndocked) -> tuple[bool, "LiveSession | None"]:
        """The camera left. Returns (False, None) if it was another device carrying the same
        serial (the camera served is still here: nothing is cancelled). Otherwise its session
        is cancelled, and the progress of a session already done with the camera is returned:
        the ledger must learn that bay is empty (a session still working records its own
        interruption, or its end sees the undock)."""
        with self._lock:
            cur = self._bays.get(ev.serial)
            if cur is not None and ev.device and cur.ev.device and ev.device != cur.ev.device:
                return False, None
            if cur is None:
                return True, None
            cur.cancel.set()
            live = self._live.get(ev.serial)
            done = live is not None and (live.safe_to_undock or not cur.thread.is_alive())
            return True, live if done else None

    def stop_all(self, deadline: float) -> None:
        """Cancel every session, and wait for each until ``deadline`` (time.monotonic)."""
        with self._lock:
            bays = list(self._bays.values())
        for b in bays:
            b.cancel.set()
        for b in bays:
            b.thread.join(max(0.0, deadline - time.monotonic()))
