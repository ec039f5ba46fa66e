"""The udev device source, and the docking logic it shares with the kernel source.

Translation and decision are kept apart from action (the udiskie lesson):

* ``block_info_from_udev`` turns a pyudev device into a ``BlockInfo``
  (plain data, tested with fake devices); ``camera_profile`` decides from it
  whether this is a camera, and which profile applies;
* ``Docker`` acts: it keeps one state per device, mounts, reads the USB
  identity, derives the serial and emits ``CameraDocked``/``CameraUndocked``.

Loop devices and card readers never send ``add``/``remove`` for media:
attaching and detaching is a ``change`` event after which the filesystem
properties appear or vanish. So the Docker works on state, not on action
names: "is this device a camera now?" compared with "did I dock it?".
udev's sticky ``TAGS`` keep ``dockd`` after the rule stops matching, so the
tag is read from ``CURRENT_TAGS`` where udev provides it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog

from ..config import DevicesConfig
from ..errors import DockdError, MountError
from .events import CameraDocked, CameraUndocked, Emit, UsbIdentity
from .mount import Mounter, read_camera_file
from .profiles import GENERIC, Profile, normalise_usb_id, profile_for_mode_switch, sanitise_serial
from .usb import read_identity, switch_mode_at, usb_port_for

log = structlog.get_logger("dockd.device")

TAG = "dockd"
SERIAL_FILE_LIMIT = 4096
SYS = Path("/sys")
# what udevd's own listeners ask for: a burst of uevents (a hub of cameras, a
# trigger) must not overflow the socket and lose an undock
MONITOR_BUFFER = 128 * 1024 * 1024


def medium_size(sys_path: Path) -> int:
    """Sectors of medium behind a block device's sysfs node; 0 if none or gone."""
    try:
        return int((sys_path / "size").read_text().strip())
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class BlockInfo:
    """What a source knows about one block device. Never leaves dockd.device."""

    devpath: str                     # the stable key: "/devices/virtual/block/loop0"
    action: str                      # "add", "change", "remove", "coldplug", ...
    devnode: str | None = None       # "/dev/loop0"
    sys_path: str | None = None      # "/sys/devices/virtual/block/loop0"
    is_tagged: bool = False          # udev tagged it "dockd" (udev source only)
    profile: str | None = None       # DOCKD_PROFILE (udev source only)
    fs_usage: str | None = None      # "filesystem" when a filesystem was found
    fs_type: str | None = None
    fs_label: str | None = None
    fs_uuid: str | None = None
    serial_short: str | None = None  # ID_SERIAL_SHORT

    @property
    def is_removed(self) -> bool:
        return self.action == "remove"

    @property
    def has_filesystem(self) -> bool:
        return self.fs_usage == "filesystem" and bool(self.fs_type)

    @property
    def name(self) -> str:
        return os.path.basename(self.devnode or self.devpath)


@dataclass(frozen=True)
class UsbDeviceInfo:
    """A USB device (not its block device): a candidate for a mode switch."""

    action: str
    vendor_id: str | None
    product_id: str | None
    busnum: int | None
    devnum: int | None


def _tags(props: Mapping[str, str]) -> set[str]:
    raw = props.get("CURRENT_TAGS")
    if raw is None:
        raw = props.get("TAGS", "")
    return {t for t in raw.split(":") if t}


def _none_if_empty(v: str | None) -> str | None:
    return v if v else None


def block_info_from_udev(device: Any, action: str | None = None, tag: str = TAG) -> BlockInfo:
    """Translate a pyudev ``Device`` (or anything with ``properties``,
    ``device_path``, ``sys_path``, ``device_node`` and ``action``)."""
    props: Mapping[str, str] = device.properties
    return BlockInfo(
        devpath=device.device_path,
        action=action or device.action or "coldplug",
        devnode=device.device_node or (f"/dev/{props['DEVNAME']}" if props.get("DEVNAME")
                                       and not props["DEVNAME"].startswith("/") else
                                       props.get("DEVNAME")),
        sys_path=device.sys_path,
        is_tagged=tag in _tags(props),
        profile=_none_if_empty(props.get("DOCKD_PROFILE")),
        fs_usage=_none_if_empty(props.get("ID_FS_USAGE")),
        fs_type=_none_if_empty(props.get("ID_FS_TYPE")),
        fs_label=_none_if_empty(props.get("ID_FS_LABEL")),
        fs_uuid=_none_if_empty(props.get("ID_FS_UUID")),
        serial_short=_none_if_empty(props.get("ID_SERIAL_SHORT")),
    )


def usb_info_from_props(props: Mapping[str, str], action: str) -> UsbDeviceInfo | None:
    """A ``usb_device`` from its uevent keys (``PRODUCT=3fd2/2f0/100``, ``BUSNUM``, ``DEVNUM``)."""
    if props.get("DEVTYPE") != "usb_device":
        return None
    parts = props.get("PRODUCT", "").split("/")
    try:
        bus = int(props["BUSNUM"]) if props.get("BUSNUM") else None
        dev = int(props["DEVNUM"]) if props.get("DEVNUM") else None
    except ValueError:
        bus = dev = None
    return UsbDeviceInfo(action=action,
                         vendor_id=normalise_usb_id(parts[0]) if len(parts) >= 2 else None,
                         product_id=normalise_usb_id(parts[1]) if len(parts) >= 2 else None,
                         busnum=bus, devnum=dev)


def camera_profile(info: BlockInfo, profiles: Mapping[str, Profile]) -> Profile | None:
    """The udev decision: tagged ``dockd``, carrying a filesystem, still present.
    ``DOCKD_PROFILE`` names the profile (``generic`` when absent); a tag naming
    an unknown profile is not a camera (a typo must not widen what is wiped)."""
    if info.is_removed or not info.is_tagged or not info.has_filesystem or not info.devnode:
        return None
    return profiles.get(info.profile or GENERIC)


def derive_serial(profile: Profile, usb: UsbIdentity, info: BlockInfo,
                  serial_file_text: str | None = None) -> str:
    """The camera's serial, sanitised to ``[A-Za-z0-9._-]``.

    ``serial_from`` picks the first candidate ("file:..." → the file's text,
    "label" → the fs label, "usb" → the USB serial); ``serial_regex`` applies
    to that source only. Then the fallbacks: USB serial,
    ID_SERIAL_SHORT, ``fs-<fs uuid>``, and last ``dev-<name>`` (not stable).
    """
    primary: str | None = None
    if profile.serial_from == "label":
        primary = profile.serial_from_text(info.fs_label)
    elif profile.serial_file is not None:
        primary = profile.serial_from_text(serial_file_text)
    # serial_regex describes the primary source; USB serials are only held to it
    # when they are the primary source
    usb_text = profile.serial_from_text if profile.serial_from == "usb" else sanitise_serial
    for candidate in (primary,
                      usb_text(usb.serial),
                      usb_text(info.serial_short),
                      sanitise_serial(f"fs-{info.fs_uuid}") if info.fs_uuid else None):
        if candidate:
            return candidate
    return sanitise_serial(f"dev-{info.name}") or "dev-unknown"


@dataclass
class _Tracked:
    event: CameraDocked
    fs_uuid: str | None
    released: bool = False


@dataclass
class Docker:
    """Acts on decisions: one state per device path. Shared by both sources.

    ``handle(info, profile)`` docks when ``profile`` is set and the device is
    not yet docked (or its medium changed), and undocks when ``profile`` is
    None or the device was removed. It may be called for every event,
    repeatedly: unchanged devices are a no-op.
    """

    profiles: Mapping[str, Profile]
    mounter: Mounter
    usb_backend: Any = None
    emit: Emit | None = None
    _state: dict[str, _Tracked] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- decisions in, events out -------------------------------------------------

    def handle(self, info: BlockInfo, profile: Profile | None) -> None:
        with self._lock:
            tracked = self._state.get(info.devpath)
            if profile is None or info.is_removed:
                if tracked is not None:
                    self._undock(info.devpath)
                return
            if tracked is not None:
                if tracked.event.device == info.devnode and tracked.fs_uuid == info.fs_uuid:
                    return                      # a re-probe, our own (un)mount, a trigger
                self._undock(info.devpath)      # the medium changed under the same node
            self._dock(info, profile)

    def handle_usb(self, usb_dev: UsbDeviceInfo) -> None:
        """Switch a camera that enumerated in a non-storage mode. It comes back as
        a new USB device with its storage ids, and is docked then."""
        if usb_dev.action not in ("add", "coldplug") or usb_dev.busnum is None \
                or usb_dev.devnum is None:
            return
        profile = profile_for_mode_switch(self.profiles, usb_dev.vendor_id, usb_dev.product_id)
        if profile is None:
            return
        try:
            switch_mode_at(profile, usb_dev.busnum, usb_dev.devnum, self.usb_backend)
            log.info("device.mode_switched", profile=profile.name,
                     usb=f"{usb_dev.vendor_id}:{usb_dev.product_id}")
        except DockdError as exc:
            log.warning("device.mode_switch_failed", profile=profile.name, error=str(exc))

    def _dock(self, info: BlockInfo, profile: Profile) -> None:
        assert info.devnode is not None
        port = usb_port_for(info.sys_path) if info.sys_path else None
        usb = read_identity(port, self.usb_backend) if port else UsbIdentity()
        try:
            text = self._probe_serial_file(info, profile) if profile.serial_file else None
            serial = derive_serial(profile, usb, info, text)
            mount = self.mounter.mount(info.devnode, self._mount_name(serial, info), info.fs_type)
        except MountError as exc:
            log.error("device.mount_failed", device=info.devnode, profile=profile.name,
                      error=str(exc))
            return
        event = CameraDocked(serial=serial, profile=profile.name, mount=mount,
                             device=info.devnode, usb=usb, bay=port.bay if port else None)
        self._state[info.devpath] = _Tracked(event=event, fs_uuid=info.fs_uuid)
        log.debug("device.detected", camera=serial, profile=profile.name, device=info.devnode,
                 bay=event.bay, mount=str(mount))
        if self.emit is not None:
            self.emit(event)

    def _probe_serial_file(self, info: BlockInfo, profile: Profile) -> str | None:
        """Read ``serial_from = "file:..."`` through a short read-only mount."""
        assert info.devnode is not None and profile.serial_file is not None
        probe = self.mounter.mount(info.devnode, f".probe-{info.name}", info.fs_type,
                                   read_only=True)
        try:
            raw = read_camera_file(probe, profile.serial_file, SERIAL_FILE_LIMIT)
        finally:
            self.mounter.unmount(probe)
        return raw.decode("utf-8", "replace") if raw is not None else None

    def _mount_name(self, serial: str, info: BlockInfo) -> str:
        taken = {t.event.mount.name for p, t in self._state.items()
                 if p != info.devpath and not t.released}
        if serial not in taken:
            return serial
        log.warning("device.serial_clash", camera=serial, device=info.devnode)
        return f"{serial}_{info.name}"

    def _undock(self, devpath: str) -> None:
        tracked = self._state.pop(devpath)
        ev = tracked.event
        log.debug("device.gone", camera=ev.serial, device=ev.device)
        if self.emit is not None:
            self.emit(CameraUndocked(serial=ev.serial, device=ev.device))
        if not tracked.released:
            try:
                self.mounter.unmount(ev.mount, lazy=True)
            except MountError as exc:
                log.error("device.unmount_failed", camera=ev.serial, error=str(exc))

    # -- called by sessions and by stop --------------------------------------------

    def release(self, event: CameraDocked) -> None:
        """Sync and unmount; idempotent. The device stays known (as released) so the
        change event our own unmount causes does not dock it again."""
        with self._lock:
            self.mounter.unmount(event.mount)
            for tracked in self._state.values():
                if tracked.event.mount == event.mount and tracked.event.serial == event.serial:
                    tracked.released = True

    def release_all(self) -> None:
        with self._lock:
            for tracked in list(self._state.values()):
                if tracked.released:
                    continue
                try:
                    self.release(tracked.event)
                except MountError:
                    self.mounter.unmount(tracked.event.mount, lazy=True)
                    tracked.released = True

    def docked(self) -> list[CameraDocked]:
        with self._lock:
            return [t.event for t in self._state.values() if not t.released]

    def sweep(self, sys_root: Path = SYS) -> None:
        """Undock every tracked device the kernel says is gone (its sysfs node is
        missing, or it has no medium: size 0), whether or not an event said so.

        Uevents can be lost (a full netlink buffer, a udevd restart, a stuck
        worker); without this, a pulled camera would show as docked until the
        next restart. Never waits: when an event is being handled, the next
        sweep looks again.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            for devpath, tracked in list(self._state.items()):
                if medium_size(sys_root / devpath.lstrip("/")) > 0:
                    continue
                log.warning("device.vanished", camera=tracked.event.serial,
                            device=tracked.event.device)
                self._undock(devpath)
        finally:
            self._lock.release()


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    """Observer callbacks must never raise: an exception would end the listening thread."""
    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - logged, and the source keeps listening
            log.exception("device.event_failed", error=str(exc))
    return wrapper


class ObservedSource:
    """What the udev and kernel sources share: a pyudev observer thread feeding a
    ``Docker``, the same stop/release behaviour, and ``poll``: the daemon calls
    it every tick to catch what events missed (see ``Docker.sweep``), and to
    listen again if the listening thread died (pyudev ends it on a socket error
    such as ENOBUFS)."""

    docker: "Docker"
    _observer: Any = None
    _sys: Path = SYS
    _emit: Emit | None = None

    def _listen(self) -> None:
        raise NotImplementedError

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.docker.emit = emit
        self._listen()

    def poll(self) -> None:
        if self._observer is not None and not self._observer.is_alive() and self._emit is not None:
            log.error("device.source_restarted", source=getattr(self, "source", "?"))
            self._observer = None
            self._listen()                 # a fresh monitor; coldplug re-announces, de-duplicated
        self.docker.sweep(self._sys)

    @staticmethod
    def _monitor(context: Any, source: str) -> Any:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(context, source=source)
        try:
            monitor.set_receive_buffer_size(MONITOR_BUFFER)
        except OSError:
            pass                           # without CAP_NET_ADMIN the default stays; sweeps still run
        return monitor

    def _docker(self, config: DevicesConfig, profiles: Mapping[str, Profile], mounter: "Mounter | None",
                usb_backend: Any) -> "Docker":
        return Docker(profiles=profiles, mounter=mounter or Mounter(config.mount_dir, config.fuse_helpers),
                      usb_backend=usb_backend)

    def _observe(self, monitor: Any, callback: Any, name: str) -> None:
        import pyudev

        self._observer = pyudev.MonitorObserver(monitor, callback=callback, name=name)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.send_stop()
            self._observer.join(timeout=10)
            self._observer = None
        self.docker.release_all()

    def release(self, event: CameraDocked) -> None:
        self.docker.release(event)


class UdevSource(ObservedSource):
    """``DeviceSource`` on udevd: block devices the rule tagged ``dockd``.

    ``start`` binds the monitor first, then enumerates what is already
    present (coldplug), then listens in a thread named ``dockd-udev``; events
    that arrived meanwhile are de-duplicated by the Docker. ``emit`` is called
    from that thread. ``stop`` stops listening, then syncs and unmounts every
    camera not yet released (no ``CameraUndocked`` is emitted for those).
    ``tag`` is the udev tag that marks cameras; only tests change it, so that
    concurrent test runs never dock each other's loop cameras.
    """

    source = "udev"

    def __init__(self, config: DevicesConfig, profiles: Mapping[str, Profile], *,
                 context: Any = None, usb_backend: Any = None, mounter: Mounter | None = None,
                 tag: str = TAG) -> None:
        self.config = config
        self.tag = tag
        self.profiles = profiles
        self._context = context
        self.docker = self._docker(config, profiles, mounter, usb_backend)
        self._observer: Any = None

    def _on_device(self, device: Any, action: str | None = None) -> None:
        if device.subsystem == "usb":
            info = usb_info_from_props(device.properties, action or device.action or "coldplug")
            if info is not None:
                self.docker.handle_usb(info)
            return
        if device.subsystem != "block":
            return
        info = block_info_from_udev(device, action, self.tag)
        profile = camera_profile(info, self.profiles)
        if profile is None and info.is_tagged and info.has_filesystem and not info.is_removed:
            log.warning("device.ignored", device=info.devnode,
                        reason=f"unknown profile {info.profile!r}")
        self.docker.handle(info, profile)

    def _listen(self) -> None:
        import pyudev

        context = self._context or pyudev.Context()
        monitor = self._monitor(context, "udev")
        monitor.filter_by("block")
        monitor.filter_by("usb", "usb_device")
        monitor.start()
        on_device = _safe(self._on_device)
        for device in context.list_devices(subsystem="usb", DEVTYPE="usb_device"):
            on_device(device, "coldplug")
        for device in context.list_devices(subsystem="block"):
            on_device(device, "coldplug")
        self._observe(monitor, on_device, "dockd-udev")

