"""Fairness: three cameras docked at once share the upload pool fairly.

Criterion (processor sharing). Let camera i hold b_i bytes, B = sum of b_i,
and T the time from the first dock until the last recording of any camera is
verified; R = B / T is the station's measured throughput. Under ideal fair
sharing each busy camera gets an equal slice of R, so camera i finishes at

    f_i = (sum over j of min(b_j, b_i)) / R

(the small camera finishes first, having shared the pipe with the others for
its whole life; the largest finishes at T). We require every camera to finish
by 1.5 * f_i + 0.5 s (0.5 s for start-up and one file's granularity).

The test can fail: the small camera is named to be docked (coldplugged) last,
and a scheduler that serves cameras one after another, or in the order they
were docked, makes it finish near T, well past 1.5 * f_small = 0.64 T here.
Uploads are made the bottleneck (a shared rate limit) so that the pool's
scheduling, not disk reads, decides the order.
"""

from __future__ import annotations

import os
from datetime import datetime

from notify import DaemonProcess, NotifySocket, write_config

MiB = 1 << 20
FILE = 4 * MiB
CAMERAS = {"CAM-A": 12, "CAM-B": 12, "CAM-C": 4}    # files of 4 MiB: 48, 48, 16 MiB


def _ts(e: dict) -> float:
    return datetime.fromisoformat(e["ts"]).timestamp()


def test_three_cameras_finish_within_their_fair_share(tmp_path, identity):
    blob = os.urandom(FILE)
    for serial, n in CAMERAS.items():
        d = tmp_path / "inbox" / serial / "DCIM"
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"V{i:03d}.MP4").write_bytes(blob[i:] + blob[:i])
    extra = "[spool]\nmin_free = 0\n[upload]\nconcurrency = 2\nrate_limit = \"32MiB\"\n"
    cfg_path = write_config(tmp_path, str(identity.public()), extra)
    # every camera gets its own reader: reading is not what is being shared here
    cfg_path.write_text(cfg_path.read_text().replace("[devices]\n", "[devices]\nmax_readers = 3\n"))
    sock = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(cfg_path, sock)
    try:
        d.wait_event("session.done", 90, count=3)
        rc, _ = d.terminate()
    finally:
        d.kill()
        sock.close()
    assert rc == 0
    start = min(_ts(e) for e in d.events("device.docked"))
    finish = {s: max(_ts(e) for e in d.events("upload.verified") if e["camera"] == s) - start
              for s in CAMERAS}
    sizes = {s: n * FILE for s, n in CAMERAS.items()}
    assert all(len([e for e in d.events("upload.verified") if e["camera"] == s]) == n
               for s, n in CAMERAS.items())
    total_bytes, t_all = sum(sizes.values()), max(finish.values())
    rate = total_bytes / t_all
    for s, b in sizes.items():
        fair = sum(min(bj, b) for bj in sizes.values()) / rate
        assert finish[s] <= 1.5 * fair + 0.5, (
            f"{s} finished at {finish[s]:.2f}s, fair share {fair:.2f}s (T={t_all:.2f}s): {finish}")
    # and the criterion had teeth: the small camera's bound is well before the end
    small_fair = sum(min(bj, sizes["CAM-C"]) for bj in sizes.values()) / rate
    assert 1.5 * small_fair + 0.5 < t_all
