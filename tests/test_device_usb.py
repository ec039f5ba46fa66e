"""USB identity and mode switch through pyusb's backend interface (no hardware)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import usb.core

from dockd.device.events import UsbIdentity
from dockd.device.profiles import load_profiles
from dockd.device.usb import (
    FakeUsbBackend,
    FakeUsbDevice,
    UsbPort,
    identity_of,
    read_identity,
    switch_mode,
    switch_mode_at,
    usb_port_for,
)
from dockd.errors import SourceError


@pytest.fixture(scope="module")
def profiles():
    return load_profiles(None)


def port(bus=1, dev=9, **kw) -> UsbPort:
    base = dict(sys_path=Path("/sys/x"), busnum=bus, devnum=dev, vendor_id="3fd2", product_id="0200",
                bay="1-4", serial="SYSFS-SER", manufacturer="SysfsCo", product="SysfsCam")
    base.update(kw)
    return UsbPort(**base)


def test_identity_from_descriptors():
    b = FakeUsbBackend([FakeUsbDevice(1, 9, 0x3FD2, 0x0200, "Northwind Optics", "NW-200", "NW2-004711")])
    dev = usb.core.find(bus=1, address=9, backend=b)
    assert identity_of(dev) == UsbIdentity("3fd2", "0200", "NW2-004711", "Northwind Optics", "NW-200")


def test_read_identity_prefers_pyusb_and_fills_gaps_from_sysfs():
    b = FakeUsbBackend([FakeUsbDevice(1, 9, 0x3FD2, 0x0200, manufacturer="Live Co", serial=None)])
    ident = read_identity(port(), backend=b)
    assert ident == UsbIdentity("3fd2", "0200", "SYSFS-SER", "Live Co", "SysfsCam")
    assert b.opened == 1


def test_read_identity_device_not_found_uses_sysfs():
    ident = read_identity(port(dev=42), backend=FakeUsbBackend([]))
    assert ident == UsbIdentity("3fd2", "0200", "SYSFS-SER", "SysfsCo", "SysfsCam")


def test_strings_a_camera_refuses_are_none():
    d = FakeUsbDevice(1, 9, 0x3FD2, 0x0200, "M", "P", "S", langids=())   # no string support
    ident = identity_of(usb.core.find(bus=1, address=9, backend=FakeUsbBackend([d])))
    assert ident == UsbIdentity("3fd2", "0200", None, None, None)


def test_switch_mode_sends_the_profiles_vendor_request(profiles):
    b = FakeUsbBackend([FakeUsbDevice(2, 3, 0x3FD2, 0x02F0)])
    assert switch_mode_at(profiles["northwind-nw200"], 2, 3, backend=b) is True
    [t] = b.transfers
    assert (t.bus, t.address, t.request_type, t.request, t.value, t.index, t.data) == \
        (2, 3, 0x40, 0xA1, 0x0001, 0, b"MS\x02")


def test_switch_mode_without_mode_switch_sends_nothing(profiles):
    b = FakeUsbBackend([FakeUsbDevice(2, 3, 0x3FE7, 0x5005)])
    assert switch_mode(profiles["sentinel-sv5"], usb.core.find(backend=b)) is False
    assert b.transfers == []


def test_switch_mode_device_dropping_off_is_success(profiles):
    b = FakeUsbBackend([FakeUsbDevice(2, 3, 0x3FD2, 0x02F0, ctrl_error=errno.ENODEV)])
    assert switch_mode_at(profiles["northwind-nw200"], 2, 3, backend=b) is True


def test_switch_mode_stall_is_a_source_error(profiles):
    b = FakeUsbBackend([FakeUsbDevice(2, 3, 0x3FD2, 0x02F0, ctrl_error=errno.EPIPE)])
    with pytest.raises(SourceError, match="mode switch"):
        switch_mode_at(profiles["northwind-nw200"], 2, 3, backend=b)


def test_switch_mode_device_gone(profiles):
    with pytest.raises(SourceError, match="gone"):
        switch_mode_at(profiles["northwind-nw200"], 2, 3, backend=FakeUsbBackend([]))


def test_usb_port_for_walks_sysfs(tmp_path):
    udev = tmp_path / "devices/pci0000:00/usb1/1-1/1-1.4"
    block = udev / "1-1.4:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1"
    block.mkdir(parents=True)
    for k, v in {"idVendor": "3FD2", "idProduct": "0200", "busnum": "1", "devnum": "12",
                 "serial": "ABC\n"}.items():
        (udev / k).write_text(v)
    p = usb_port_for(block)
    assert (p.busnum, p.devnum, p.vendor_id, p.product_id, p.bay, p.serial, p.product) == \
        (1, 12, "3fd2", "0200", "1-1.4", "ABC", None)
    assert usb_port_for(tmp_path / "devices/virtual/block/loop0") is None
