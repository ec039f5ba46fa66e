"""USB identity and mode switching, through pyusb.

A block device's USB parent is found in sysfs (``usb_port_for``); its
descriptors are then read with pyusb (``read_identity``), with the strings
the kernel cached in sysfs as the fallback when pyusb cannot talk to it.
``switch_mode`` sends a profile's vendor control transfer to a camera that
enumerated in charging/MTP mode so it comes back as mass storage.

``FakeUsbBackend`` is a plain pyusb backend that serves descriptors from
memory and records control transfers, for tests and demos without hardware.
"""

from __future__ import annotations

import array
import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import usb.backend
import usb.core
import usb.util

from ..errors import SourceError
from .events import UsbIdentity
from .profiles import Profile, normalise_usb_id

USB_TIMEOUT_MS = 2000
_DESC_STRING = 0x03
_GET_DESCRIPTOR = 0x06


@dataclass(frozen=True)
class UsbPort:
    """The USB device (sysfs ``usb_device``) above a block device."""

    sys_path: Path
    busnum: int
    devnum: int
    vendor_id: str | None
    product_id: str | None
    bay: str                     # the port path, e.g. "1-1.4": stable per physical bay
    serial: str | None = None    # strings the kernel cached at enumeration
    manufacturer: str | None = None
    product: str | None = None


def _attr(d: Path, name: str) -> str | None:
    try:
        return (d / name).read_text(errors="replace").strip() or None
    except OSError:
        return None


def usb_port_for(sys_path: Path | str) -> UsbPort | None:
    """Walk up from a sysfs device to its ``usb_device`` parent; None if there is none
    (loop devices, virtio disks)."""
    try:
        d = Path(sys_path).resolve()
    except OSError:
        return None
    while d != d.parent and d.name != "devices":
        if (d / "idVendor").is_file() and (d / "busnum").is_file() and (d / "devnum").is_file():
            try:
                bus, dev = int(_attr(d, "busnum") or ""), int(_attr(d, "devnum") or "")
            except ValueError:
                return None
            return UsbPort(sys_path=d, busnum=bus, devnum=dev,
                           vendor_id=normalise_usb_id(_attr(d, "idVendor")),
                           product_id=normalise_usb_id(_attr(d, "idProduct")),
                           bay=d.name, serial=_attr(d, "serial"),
                           manufacturer=_attr(d, "manufacturer"), product=_attr(d, "product"))
        d = d.parent
    return None


def identity_from_sysfs(port: UsbPort) -> UsbIdentity:
    return UsbIdentity(vendor_id=port.vendor_id, product_id=port.product_id, serial=port.serial,
                       manufacturer=port.manufacturer, product=port.product)


def _string(dev: usb.core.Device, index: int) -> str | None:
    if not index:
        return None
    try:
        s = usb.util.get_string(dev, index)
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None
    if s is None:
        return None
    s = s.replace("\x00", "").strip()
    return s or None


def identity_of(dev: usb.core.Device) -> UsbIdentity:
    """Descriptors of an open pyusb device. Missing or unreadable strings are None."""
    return UsbIdentity(vendor_id=f"{dev.idVendor:04x}", product_id=f"{dev.idProduct:04x}",
                       serial=_string(dev, dev.iSerialNumber),
                       manufacturer=_string(dev, dev.iManufacturer),
                       product=_string(dev, dev.iProduct))


def find_device(bus: int, address: int, backend: Any = None) -> usb.core.Device | None:
    try:
        return usb.core.find(bus=bus, address=address, backend=backend)
    except (usb.core.NoBackendError, usb.core.USBError, ValueError):
        return None


def read_identity(port: UsbPort, backend: Any = None) -> UsbIdentity:
    """The camera's USB identity: pyusb first, each missing field from sysfs."""
    dev = find_device(port.busnum, port.devnum, backend)
    cached = identity_from_sysfs(port)
    if dev is None:
        return cached
    try:
        live = identity_of(dev)
    finally:
        usb.util.dispose_resources(dev)
    return UsbIdentity(**{k: v if v is not None else getattr(cached, k)
                          for k, v in live.as_dict().items()})


def switch_mode(profile: Profile, device: usb.core.Device) -> bool:
    """Send ``profile.mode_switch`` to ``device``. False if the profile has none.

    A camera usually drops off the bus as it switches, so "no such device"
    after the request was sent counts as success. Other USB errors raise
    ``SourceError`` (retryable: the camera can be re-docked).
    """
    ms = profile.mode_switch
    if ms is None:
        return False
    data_or_len: bytes | int | None
    if ms.is_host_to_device:
        data_or_len = ms.data or None
    else:
        data_or_len = len(ms.data)
    try:
        device.ctrl_transfer(ms.request_type, ms.request, ms.value, ms.index, data_or_len,
                             timeout=USB_TIMEOUT_MS)
    except usb.core.USBError as exc:
        if exc.errno != errno.ENODEV:
            raise SourceError(f"mode switch for {profile.name} failed: {exc}",
                              profile=profile.name) from None
    finally:
        usb.util.dispose_resources(device)
    return True


def switch_mode_at(profile: Profile, bus: int, address: int, backend: Any = None) -> bool:
    dev = find_device(bus, address, backend)
    if dev is None:
        raise SourceError(f"USB device {bus}-{address} is gone", profile=profile.name)
    return switch_mode(profile, dev)


# -- a fake backend for tests -------------------------------------------------------------

@dataclass
class FakeUsbDevice:
    bus: int
    address: int
    vendor_id: int
    product_id: int
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    langids: tuple[int, ...] = (0x0409,)
    ctrl_error: int | None = None       # errno raised by vendor requests, e.g. ENODEV

    def strings(self) -> list[str | None]:
        return [None, self.manufacturer, self.product, self.serial]


class _Descriptor:
    def __init__(self, d: FakeUsbDevice) -> None:
        s = d.strings()
        self.bLength, self.bDescriptorType, self.bcdUSB = 18, 1, 0x0200
        self.bDeviceClass = self.bDeviceSubClass = self.bDeviceProtocol = 0
        self.bMaxPacketSize0, self.bcdDevice, self.bNumConfigurations = 64, 0x0100, 1
        self.idVendor, self.idProduct = d.vendor_id, d.product_id
        self.iManufacturer = 1 if s[1] is not None else 0
        self.iProduct = 2 if s[2] is not None else 0
        self.iSerialNumber = 3 if s[3] is not None else 0
        self.bus, self.address = d.bus, d.address
        self.port_number, self.port_numbers, self.speed = None, None, None


@dataclass
class CtrlTransfer:
    bus: int
    address: int
    request_type: int
    request: int
    value: int
    index: int
    data: bytes          # what was sent (OUT), or b"" for IN
    length: int          # buffer length


@dataclass
class FakeUsbBackend(usb.backend.IBackend):
    """Serves ``devices``' descriptors; records every control transfer in ``transfers``."""

    devices: list[FakeUsbDevice] = field(default_factory=list)
    transfers: list[CtrlTransfer] = field(default_factory=list)
    opened: int = 0
    closed: int = 0

    def enumerate_devices(self):  # type: ignore[no-untyped-def]
        return iter(self.devices)

    def get_device_descriptor(self, dev: FakeUsbDevice) -> _Descriptor:
        return _Descriptor(dev)

    def open_device(self, dev: FakeUsbDevice) -> FakeUsbDevice:
        self.opened += 1
        return dev

    def close_device(self, dev_handle: FakeUsbDevice) -> None:
        self.closed += 1

    def ctrl_transfer(self, dev_handle: FakeUsbDevice, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: array.array, timeout: int) -> int:
        d = dev_handle
        is_in = bool(bmRequestType & 0x80)
        self.transfers.append(CtrlTransfer(d.bus, d.address, bmRequestType, bRequest, wValue, wIndex,
                                           b"" if is_in else bytes(data), len(data)))
        if is_in and bmRequestType == 0x80 and bRequest == _GET_DESCRIPTOR \
                and wValue >> 8 == _DESC_STRING:
            idx = wValue & 0xFF
            if idx == 0:
                body = b"".join(l.to_bytes(2, "little") for l in d.langids)
            else:
                strings = d.strings()
                if idx >= len(strings) or strings[idx] is None or wIndex not in d.langids:
                    raise usb.core.USBError("Pipe error", None, errno.EPIPE)
                body = strings[idx].encode("utf-16-le")
            desc = bytes([2 + len(body), _DESC_STRING]) + body
            n = min(len(desc), len(data))
            data[:n] = array.array("B", desc[:n])
            return n
        if d.ctrl_error is not None:
            raise usb.core.USBError("fake error", None, d.ctrl_error)
        return 0 if is_in else len(data)
