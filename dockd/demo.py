"""``dockd demo``: a whole dock → wipe cycle on fixture footage, no hardware, no setup.

It builds a throwaway station (age key pair, spool, ``file://`` store) in a
temporary directory, docks a copy of the fixture camera, runs the real
pipeline end to end, decrypts one recording back out of the store to prove
the round trip, and prints a short report.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import log
from .age import decrypt, format_identity_file, generate_identity
from .config import Config, DevicesConfig, EncryptionConfig, LogConfig, PathsConfig, StoreConfig
from .device.events import CameraDocked
from .station import Station
from .model import RecState

FIXTURE_SERIAL = "BWC0001"


def fixture_camera() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "fixtures" / "cameras" / FIXTURE_SERIAL,
                 here / "fixtures" / "cameras" / FIXTURE_SERIAL):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("fixture camera not found (fixtures/cameras/BWC0001)")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_demo(keep: bool = False, out=None) -> int:
    out = out or sys.stdout
    work = Path(tempfile.mkdtemp(prefix="dockd-demo-"))
    try:
        ident = generate_identity()
        (work / "store-identity.txt").write_text(format_identity_file(ident))
        (work / "store-identity.txt").chmod(0o600)
        cfg = Config(
            paths=PathsConfig(state_dir=work / "state", spool_dir=work / "state" / "spool",
                              runtime_dir=work / "run"),
            encryption=EncryptionConfig(recipients=[str(ident.public())]),
            store=StoreConfig(url=f"file://{work / 'store'}"),
            devices=DevicesConfig(inbox_dir=work / "inbox"),
            log=LogConfig(level="warning"),
            source="demo",
        )
        log.configure("warning", "console", stream=sys.stderr)
        camera = work / "inbox" / FIXTURE_SERIAL
        shutil.copytree(fixture_camera(), camera)
        before = _tree(camera)
        print(f"dockd demo — throwaway station in {work}", file=out)
        print(f"  docked camera {FIXTURE_SERIAL}: {len(before)} files", file=out)
        station = Station(cfg, patient=False)
        t0 = time.monotonic()
        try:
            station.start()
            outcome = station.run_session(CameraDocked(FIXTURE_SERIAL, "generic", camera))
            recs = station.ledger.recordings(serial=FIXTURE_SERIAL)
            seconds = time.monotonic() - t0
            after = _tree(camera)
            print(f"  session {outcome.session_id}: {outcome.phase.value} in {seconds:.2f}s — "
                  f"{outcome.found} recordings ({outcome.bytes} bytes) encrypted, uploaded, verified; "
                  f"{outcome.wiped} wiped", file=out)
            print(f"  left on camera (not recordings): {', '.join(sorted(after)) or 'nothing'}", file=out)
            for r in recs:
                print(f"    {r.state.value:8} {r.name:40} sha256 {r.plain_sha256[:16] if r.plain_sha256 else '-'}"
                      f"  → {r.object_key}", file=out)
            video = next(r for r in recs if r.role == "recording" and r.state == RecState.WIPED)
            buf = io.BytesIO()
            with station.store.open(video.object_key or "") as f:
                decrypt(f, buf, [ident])
            ok = hashlib.sha256(buf.getvalue()).hexdigest() == video.plain_sha256 == before[video.name]
            print(f"  round trip: decrypted {video.object_key} with the store's identity → "
                  f"sha256 {'matches' if ok else 'DOES NOT MATCH'} the camera's original", file=out)
            mkey = station.ledger.session(outcome.session_id)["manifest_key"]  # type: ignore[index]
            print(f"  manifest: {mkey}", file=out)
            print(f"  audit chain: {station.ledger.verify_chain()} events, intact", file=out)
        finally:
            station.close()
        if keep:
            print(f"  kept: {work} (identity in store-identity.txt)", file=out)
        good = outcome.ok and ok and not any(k.endswith((".MP4", ".XML", ".JPG", ".WAV")) for k in after)
        print("demo: OK" if good else "demo: FAILED", file=out)
        return 0 if good else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
