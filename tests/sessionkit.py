"""What the session, wipe, recovery and pipeline tests share: a camera's files, a
one-shot ingest, recordings verified by hand, and failures injected at the OS boundary."""

from __future__ import annotations

import os
from pathlib import Path


from dockd.device.events import CameraDocked
from dockd.station import Station
from dockd.model import RecState, Recording
from dockd.store.retry import RetryPolicy



RECORDING_EXTS = (".MP4", ".XML", ".JPG", ".WAV")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ingest(cfg, camera: Path, backend=None, serial="BWC0001", **kw):
    st = Station(cfg, policy=RetryPolicy.immediate(3), backend=backend, patient=False)
    try:
        st.start()
        out = st.run_session(CameraDocked(serial, "generic", camera), **kw)
        recs = st.ledger.recordings(serial=serial)
        events = st.ledger.events(limit=10000)
        chain = st.ledger.verify_chain()
    finally:
        st.close()
    return out, recs, events, chain


def samples(root, recs):
    """The content samples a session takes as it reads the files: what the wipe checks."""
    from dockd.errors import DockdError
    from dockd.pipeline.content import rehash

    out = {}
    for r in recs:
        path = os.path.join(os.fsencode(root), r.rel_path)
        try:
            out[r.id] = rehash(path, r.size, r.mtime_ns)[1]
        except DockdError:
            pass              # gone, or no longer what was copied: no sample
    return out


def verify_rec(ledger, sid: int, rel: bytes, size: int, mtime_ns: int, key: str = "k") -> Recording:
    """A recording of camera CAMX taken straight to verified in ``ledger``."""
    rec = ledger.upsert_found("CAMX", sid, "generic", rel, size, mtime_ns, "recording")
    rec = ledger.transition(rec.id, RecState.SPOOLED, plain_sha256="a" * 64, cipher_sha256="b" * 64,
                            cipher_size=50, object_key=key, spool_path="p")
    return ledger.transition(rec.id, RecState.VERIFIED)


def failing_for(real, suffix: str, err: int):
    """``real`` (an os function taking a path) failing with ``err`` for paths ending in ``suffix``."""
    def fn(path, *a, **k):
        if os.fsdecode(path).endswith(suffix):
            raise OSError(err, os.strerror(err))
        return real(path, *a, **k)
    return fn


def verified_on_camera(tmp_path: Path):
    """A ledger holding one verified recording, and the camera directory holding its file."""
    from dockd.ledger import Ledger

    cam = tmp_path / "cam"
    (cam / "DCIM").mkdir(parents=True)
    f = cam / "DCIM" / "A.MP4"
    f.write_bytes(b"footage")
    st = f.stat()
    ledger = Ledger(tmp_path / "l.sqlite3")
    sid = ledger.open_session("CAMX", "generic", str(cam), None, None, {})
    return cam, ledger, verify_rec(ledger, sid, b"DCIM/A.MP4", st.st_size, st.st_mtime_ns)


def failing_dir_fsync(err: int):
    real = os.fsync

    def fsync(fd):
        import stat as st_
        if st_.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(err, os.strerror(err))
        return real(fd)
    return fsync


def camera_eio_on_fsync(camera: Path, monkeypatch, then=None) -> None:
    """The camera's card fails its flushes (EIO), as a failing card does; ``then`` runs at the first."""
    import errno

    real = os.fsync
    cam_prefix = os.path.realpath(camera)

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(cam_prefix):
            if then is not None:
                then()
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def run_session(st: Station, docked: CameraDocked, **kw) -> tuple:
    """Start ``st``, run one session, close it: the outcome and the session's ledger row."""
    st.start()
    try:
        out = st.run_session(docked, **kw)
        return out, st.ledger.session(out.session_id)
    finally:
        st.close()
