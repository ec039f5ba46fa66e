"""Non-cameras: an exFAT USB stick (loop device) with no dockd tag and no matching profile,
attached while ``dockd run`` watches udev. It must never be mounted, read-write or at all."""

from __future__ import annotations

import time

from . import harness as h
from .base import Context, Result, timed


@timed
def campaign(ctx: Context, seed: int | None = None) -> Result:
    res = Result("non-camera")
    import loopcam

    why = loopcam.skip_reason()
    if why:
        res.skipped = why
        return res
    loopcam.ensure_udevd()
    sticks = 3 if ctx.large else 1
    for i in range(sticks):
        root = ctx.scratch(f"noncam-{i}")
        v: list[str] = []
        st = h.StationDirs(root, ctx.pub)
        st.write()
        st.config.write_text(st.config.read_text().replace('source = "inbox"', 'source = "udev"'))
        image = loopcam.make_camera_image(root / "stick.img", {"DCIM/100BWC/VID.MP4": 200_000, "notes.txt": 10},
                                          label=loopcam.unique_label("STK"))
        before = loopcam.read_image(image)
        p = h.daemon(st, root / "run.log")
        time.sleep(1.5)
        with loopcam.LoopCamera(image) as stick:
            loopcam.trigger()
            end = time.monotonic() + (8 if ctx.large else 3)
            while time.monotonic() < end:
                if loopcam.mounts_of(stick.dev):
                    v.append(f"stick {stick.dev} was mounted: {loopcam.mounts_of(stick.dev)}")
                    break
                time.sleep(0.05)
        p.signal(15)
        p.wait(30)
        evs = p.events()
        if any(e.get("event") == "device.docked" for e in evs):
            v.append("the stick was treated as a docked camera")
        if loopcam.read_image(image) != before:
            v.append("the stick's files changed")
        if not any(e.get("event") == "daemon.started" for e in evs):
            v.append("dockd run did not start (see its log)")
        res.add(i, {"untagged exFAT stick": 1}, v)
    return res
