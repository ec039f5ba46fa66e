"""A real sd_notify socket for tests, and ``dockd run`` as a real subprocess under it.

``NotifySocket`` binds a Unix datagram socket and collects what the daemon
sends (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1) with arrival times.
``DaemonProcess`` starts ``dockd --config CFG run`` with NOTIFY_SOCKET and
WATCHDOG_USEC set (as systemd does), keeps its JSON log lines, and stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DOCKD = [sys.executable, "-m", "dockd"] if not (REPO / ".venv/bin/dockd").exists() \
    else [str(REPO / ".venv/bin/dockd")]


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._recv, daemon=True)
        self._t.start()

    def _recv(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cv:
                self.messages.append((time.monotonic(), fields))
                self._cv.notify_all()

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        with self._cv:
            seen = 0
            while True:
                for _t, m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching notify message in {timeout}s; got {self.all()}")
                self._cv.wait(left)

    def times(self, key: str, value: str = "1") -> list[float]:
        with self._cv:
            return [t for t, m in self.messages if m.get(key) == value]

    def all(self) -> list[dict[str, str]]:
        with self._cv:
            return [m for _t, m in self.messages]

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._t.join(1)


class DaemonProcess:
    """``dockd run`` under a notify socket. Log lines (JSON) are parsed as they come."""

    def __init__(self, config: Path, notify: NotifySocket | None, watchdog_usec: int = 1_000_000,
                 env: dict[str, str] | None = None) -> None:
        full = dict(os.environ)
        full.pop("NOTIFY_SOCKET", None)
        full.update(env or {})
        full["PYTHONUNBUFFERED"] = "1"
        if notify is not None:
            full["NOTIFY_SOCKET"] = str(notify.path)
            full["WATCHDOG_USEC"] = str(watchdog_usec)
        self.proc = subprocess.Popen(DOCKD + ["--config", str(config), "run"], env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr = b""
        self._cv = threading.Condition()
        self._out = threading.Thread(target=self._read, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cv:
                self.raw.append(text)
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    pass
                self._cv.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._cv:
            return [ln for ln in self.lines if name is None or ln.get("event") == name]

    def wait_event(self, name: str, timeout: float, count: int = 1,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                hits = [ln for ln in self.lines if ln.get("event") == name and where(ln)]
                if len(hits) >= count:
                    return hits
                if self.proc.poll() is not None:
                    raise AssertionError(f"dockd exited ({self.proc.returncode}) waiting for {name}: "
                                         f"{self.stderr.decode(errors='replace')[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name} x{count} not logged in {timeout}s; last: {self.raw[-5:]}")
                self._cv.wait(min(left, 0.5))

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # say where it is stuck: the daemon dumps every thread's stack on SIGUSR1
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            self.kill()
            self._err.join(5)
            raise AssertionError(f"dockd did not stop within {timeout}s of SIGTERM; last lines "
                                 f"{self.raw[-8:]}; stacks:\n{self.stderr.decode(errors='replace')[-6000:]}") from None
        self._out.join(5)
        self._err.join(5)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(root: Path, recipient: str, extra: str = "", **paths: Path) -> Path:
    """A dockd.toml for a throwaway station under ``root`` with an inbox source and a file:// store."""
    p = {"state_dir": root / "state", "spool_dir": root / "state" / "spool", "runtime_dir": root / "run",
         "inbox_dir": root / "inbox", "store": root / "store"}
    p.update(paths)
    text = f"""
[paths]
state_dir = "{p['state_dir']}"
spool_dir = "{p['spool_dir']}"
runtime_dir = "{p['runtime_dir']}"
[encryption]
recipients = ["{recipient}"]
[store]
url = "file://{p['store']}"
[devices]
source = "inbox"
inbox_dir = "{p['inbox_dir']}"
[log]
level = "info"
format = "json"
{extra}
"""
    cfg = root / "dockd.toml"
    cfg.write_text(text)
    return cfg


def with_section(extra: str, section: str, body: str) -> str:
    return extra + f"\n[{section}]\n{body}\n"
