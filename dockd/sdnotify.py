"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def watchdog_interval(self) -> float | None:
        """Half the interval systemd expects keepalives in, or None when not asked."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def send(self, **fields: str | int) -> bool:
        if self._sock is None or not self.address:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto(msg, addr)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send(ready=1, status=status) if status else self.send(ready=1)

    def status(self, text: str) -> None:
        self.send(status=text.replace("\n", " ")[:200])

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def stopping(self) -> None:
        self.send(stopping=1)

    def reloading(self) -> None:
        self.send(reloading=1)
