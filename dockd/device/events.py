"""Domain events. The rest of dockd sees these, never a udev property."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Union


@dataclass(frozen=True)
class UsbIdentity:
    """What the USB descriptors say about a camera (all optional: some cameras lie)."""

    vendor_id: str | None = None      # "1234", lower-case hex, 4 digits
    product_id: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "product": self.product,
        }


@dataclass(frozen=True)
class CameraDocked:
    """A camera is mounted at ``mount`` and may be read (and, once verified, wiped)."""

    serial: str
    profile: str
    mount: Path
    device: str | None = None          # "/dev/sdb1"; None for inbox cameras
    usb: UsbIdentity = field(default_factory=UsbIdentity)
    bay: str | None = None             # the USB port path, e.g. "1-1.4"


@dataclass(frozen=True)
class CameraUndocked:
    """The camera went away (remove event, or its directory vanished)."""

    serial: str
    device: str | None = None


DeviceEvent = Union[CameraDocked, CameraUndocked]
Emit = Callable[[DeviceEvent], None]


class DeviceSource(Protocol):
    """Turns OS events into ``DeviceEvent``s.

    ``start`` reports devices already present (coldplug) and then listens in a
    background thread; it returns once listening. ``release`` is called when a
    session is finished with a camera: sync and unmount (idempotent: an
    already-unmounted camera is success).
    """

    def start(self, emit: Emit) -> None: ...

    def stop(self) -> None: ...

    def release(self, event: CameraDocked) -> None: ...

    def poll(self) -> None:
        """Called by the daemon's main loop about once a second: notice what no event
        announced (a camera gone without a report, a directory mounted on later)."""
