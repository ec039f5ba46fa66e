"""The kernel-uevent device source: for docks without udevd (containers, initramfs-like systems).

Nothing here reads the udev database. Devices come from kernel uevents
(``Monitor.from_netlink(source="kernel")``) and, at start, from walking
/sys/class/block; dockd itself decides which are cameras:

1. a block device whose USB parent (walking sysfs up to the ``usb_device``)
   has a profile's ``vendor_id``/``product_id`` is a candidate;
2. a block device with *no* USB parent (a loop device) is a candidate only if
   some loaded profile has a label-only match (``match = [{fs_label = ...}]``).
   No shipped profile has one; they exist for tests (fixtures/profiles).
   A USB stick never matches by label alone.

Only candidates are probed, with ``blkid -p -o export`` (udev did not
probe them); anything else is never opened. The probe gives the fs type,
label and UUID; a candidate without a filesystem (a partition table, no
medium) is not a camera.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog

from ..config import DevicesConfig
from .mount import Mounter
from .profiles import Profile, has_label_only_matches, profile_for_label, profile_for_usb
from .udev import SYS, BlockInfo, ObservedSource, _safe, medium_size, usb_info_from_props
from .usb import usb_port_for

log = structlog.get_logger("dockd.device")

BLKID_TIMEOUT = 20.0

Probe = Callable[[str], dict[str, str]]


def blkid_probe(devnode: str) -> dict[str, str]:
    """Low-level probe (``-p``: no cache, no udev). Empty if nothing is found."""
    try:
        res = subprocess.run(["blkid", "-p", "-o", "export", "--", devnode], capture_output=True,
                             text=True, timeout=BLKID_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:
        return {}
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def read_uevent(sys_path: Path) -> dict[str, str]:
    try:
        text = (sys_path / "uevent").read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def kernel_block_info(props: Mapping[str, str], action: str, sys_root: Path = SYS) -> BlockInfo | None:
    """A block device from its uevent keys (``DEVPATH``, ``DEVNAME``, ``SUBSYSTEM``), no probe yet."""
    if props.get("SUBSYSTEM") != "block" or not props.get("DEVPATH"):
        return None
    devpath = props["DEVPATH"]
    name = props.get("DEVNAME")
    devnode = None if not name else name if name.startswith("/") else f"/dev/{name}"
    return BlockInfo(devpath=devpath, action=action, devnode=devnode,
                     sys_path=str(sys_root / devpath.lstrip("/")))


def kernel_camera_profile(info: BlockInfo, profiles: Mapping[str, Profile],
                          probe: Probe = blkid_probe) -> tuple[BlockInfo, Profile | None]:
    """The kernel-source decision. Returns the info completed by the probe (if
    one was run) and the profile, or None for "not a camera, not touched"."""
    if info.is_removed or not info.devnode or not info.sys_path:
        return info, None
    sys_path = Path(info.sys_path)
    if medium_size(sys_path) == 0:
        return info, None                                  # no medium, or a detached loop device
    port = usb_port_for(sys_path)
    if port is not None:
        if not any(m.vendor_id == port.vendor_id and m.product_id == port.product_id
                   for p in profiles.values() for m in p.match):
            return info, None
    elif not has_label_only_matches(profiles):
        return info, None
    found = probe(info.devnode)
    info = BlockInfo(devpath=info.devpath, action=info.action, devnode=info.devnode,
                     sys_path=info.sys_path, fs_usage=found.get("USAGE") or None,
                     fs_type=found.get("TYPE") or None, fs_label=found.get("LABEL") or None,
                     fs_uuid=found.get("UUID") or None)
    if not info.has_filesystem:
        return info, None
    if port is not None:
        return info, profile_for_usb(profiles, port.vendor_id, port.product_id, info.fs_label)
    return info, profile_for_label(profiles, info.fs_label)


class KernelSource(ObservedSource):
    """``DeviceSource`` on raw kernel uevents; same events and contract as ``UdevSource``."""

    source = "kernel"

    def __init__(self, config: DevicesConfig, profiles: Mapping[str, Profile], *,
                 context: Any = None, usb_backend: Any = None, mounter: Mounter | None = None,
                 probe: Probe = blkid_probe, sys_root: Path = SYS) -> None:
        self.config = config
        self.profiles = profiles
        self._context = context
        self._probe = probe
        self._sys = sys_root
        self.docker = self._docker(config, profiles, mounter, usb_backend)
        self._observer: Any = None

    def _on_uevent(self, props: Mapping[str, str], action: str) -> None:
        if props.get("SUBSYSTEM") == "usb":
            usb_dev = usb_info_from_props(props, action)
            if usb_dev is not None:
                self.docker.handle_usb(usb_dev)
            return
        info = kernel_block_info(props, action, self._sys)
        if info is None:
            return
        info, profile = kernel_camera_profile(info, self.profiles, self._probe)
        self.docker.handle(info, profile)

    def _on_device(self, device: Any) -> None:
        props = dict(device.properties)           # kernel-sourced: the uevent keys only
        props.setdefault("SUBSYSTEM", device.subsystem or "")
        self._on_uevent(props, device.action or "change")

    def coldplug(self) -> None:
        """Everything already present, from sysfs alone."""
        on_uevent = _safe(self._on_uevent)
        for d in sorted((self._sys / "bus/usb/devices").glob("*")):
            props = read_uevent(d)
            props.setdefault("SUBSYSTEM", "usb")
            on_uevent(props, "coldplug")
        for d in sorted((self._sys / "class/block").glob("*")):
            real = d.resolve()
            props = read_uevent(real)
            props["SUBSYSTEM"] = "block"
            props.setdefault("DEVPATH", "/" + str(real.relative_to(self._sys)))
            on_uevent(props, "coldplug")

    def _listen(self) -> None:
        import pyudev

        context = self._context or pyudev.Context()
        monitor = self._monitor(context, "kernel")
        monitor.start()
        self.coldplug()
        self._observe(monitor, _safe(self._on_device), "dockd-kernel")

