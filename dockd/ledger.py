"""The ledger: SQLite in WAL mode, the durable truth.

Every state change is committed before the action that depends on it, so
after a crash the ledger never claims more than happened.

Durability is paid for where something is destroyed. Commits are atomic
(WAL) and survive a crash of dockd; most are not fsynced on their own
(``synchronous=NORMAL``), because every state that guards nothing
destructive is re-derived idempotently at the next start if a power cut
loses it (a spooled file is copied again, an uploaded object is proven
again, a deleted file is recognised as already deleted). The one state the
wipe depends on, ``verified``, is committed with ``synchronous=FULL``, which
also makes every earlier commit durable: no file leaves a camera while the
ledger could still forget that it was verified.
The event table is append-only and hash-chained: each row carries the
SHA-256 of the previous row, so an edit anywhere breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import AuditChainError, LedgerDamagedError, LedgerError, LedgerFullError
from .fsutil import fsync_dir, make_dirs
from .model import TRANSITIONS, Phase, RecState, Recording, display_path

GENESIS = "0" * 64

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE cameras(
        serial TEXT PRIMARY KEY,
        profile TEXT NOT NULL,
        usb TEXT NOT NULL DEFAULT '{}',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE sessions(
        id INTEGER PRIMARY KEY,
        serial TEXT NOT NULL REFERENCES cameras(serial),
        profile TEXT NOT NULL,
        mount TEXT,
        device TEXT,
        bay TEXT,
        usb TEXT NOT NULL DEFAULT '{}',
        phase TEXT NOT NULL,
        docked_at REAL NOT NULL,
        undocked_at REAL,
        finished_at REAL,
        error TEXT,
        manifest_key TEXT
    );
    CREATE INDEX sessions_serial ON sessions(serial);
    CREATE TABLE recordings(
        id INTEGER PRIMARY KEY,
        serial TEXT NOT NULL,
        rel_path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        role TEXT NOT NULL,
        profile TEXT NOT NULL,
        session_id INTEGER REFERENCES sessions(id),
        state TEXT NOT NULL,
        plain_sha256 TEXT,
        cipher_sha256 TEXT,
        cipher_size INTEGER,
        object_key TEXT,
        spool_path TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL,
        flagged INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE(serial, rel_path, size, mtime_ns)
    );
    CREATE INDEX recordings_state ON recordings(state);
    CREATE TABLE uploads(
        recording_id INTEGER PRIMARY KEY REFERENCES recordings(id),
        state TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE events(
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        serial TEXT,
        session_id INTEGER,
        recording_id INTEGER,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    """,
    # v2: when a wipe began deleting a verified recording (written, durably, before the
    # unlink): after an interrupted wipe, dockd knows which absences are its own deletions
    """
    ALTER TABLE recordings ADD COLUMN wipe_started REAL;
    """,
    # v3: (serial, path, size, mtime) is a hint, not a proof of content. A camera whose
    # clock reset and whose file counter restarted writes a different clip under an identity
    # already seen, so an identity is unique only among the recordings still standing for a
    # file on the camera: not one wiped or superseded, nor one whose file the camera replaced
    # with different content (``replaced_at``: the copy stays, verified in the store).
    """
    CREATE TABLE recordings_v3(
        id INTEGER PRIMARY KEY,
        serial TEXT NOT NULL,
        rel_path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        role TEXT NOT NULL,
        profile TEXT NOT NULL,
        session_id INTEGER REFERENCES sessions(id),
        state TEXT NOT NULL,
        plain_sha256 TEXT,
        cipher_sha256 TEXT,
        cipher_size INTEGER,
        object_key TEXT,
        spool_path TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL,
        flagged INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        wipe_started REAL,
        replaced_at REAL
    );
    INSERT INTO recordings_v3(id, serial, rel_path, size, mtime_ns, role, profile, session_id, state,
        plain_sha256, cipher_sha256, cipher_size, object_key, spool_path, attempts, last_error,
        next_attempt_at, flagged, created_at, updated_at, wipe_started)
      SELECT id, serial, rel_path, size, mtime_ns, role, profile, session_id, state,
        plain_sha256, cipher_sha256, cipher_size, object_key, spool_path, attempts, last_error,
        next_attempt_at, flagged, created_at, updated_at, wipe_started FROM recordings;
    DROP TABLE recordings;
    ALTER TABLE recordings_v3 RENAME TO recordings;
    CREATE INDEX recordings_state ON recordings(state);
    CREATE INDEX recordings_identity ON recordings(serial, rel_path, size, mtime_ns);
    CREATE UNIQUE INDEX recordings_standing ON recordings(serial, rel_path, size, mtime_ns)
        WHERE state NOT IN ('wiped', 'superseded') AND replaced_at IS NULL;
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta(key, value) VALUES('ledger_id', lower(hex(randomblob(4))));
    """,
]

# a recording that still stands for its file on the camera (see v3)
STANDING = "state NOT IN ('wiped', 'superseded') AND replaced_at IS NULL"

SCHEMA_VERSION = len(MIGRATIONS)

_REC_COLS = (
    "id, serial, rel_path, size, mtime_ns, role, state, session_id, plain_sha256, "
    "cipher_sha256, cipher_size, object_key, spool_path, attempts, last_error, "
    "next_attempt_at, flagged, profile, updated_at"
)


def _row_to_rec(row: sqlite3.Row) -> Recording:
    d = dict(row)
    d["state"] = RecState(d["state"])
    d["flagged"] = bool(d["flagged"])
    d["rel_path"] = bytes(d["rel_path"])
    return Recording(**d)


def event_hash(prev: str, ts: float, event: str, serial: str | None,
               session_id: int | None, recording_id: int | None, data: str) -> str:
    body = json.dumps([prev, repr(ts), event, serial, session_id, recording_id, data],
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


# the states each state may be reached from (itself included: a repeat is allowed)
_SOURCES: dict[RecState, tuple[str, ...]] = {
    new: tuple(s.value for s in RecState if s == new or new in TRANSITIONS[s]) for new in RecState
}


def _damaged(path: Path, what: str) -> LedgerDamagedError:
    return LedgerDamagedError(
        f"ledger {path} is damaged ({what}); dockd will not use or replace it: keep it as evidence, "
        "move it aside with its -wal and -shm files, and restore the state directory from a backup")


def ledger_error(path: Path, exc: BaseException) -> LedgerError:
    """One line for an operator about a failed SQLite call on the ledger at ``path``:
    what is wrong and what to do. A damaged file is never touched: it is evidence."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _damaged(path, str(exc))
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and _is_full(path.parent)):
        # a disk with no block left fails the -shm sizing as an I/O error, not as "full"
        return LedgerFullError(
            f"ledger {path}: the disk holding it is full ({exc}); dockd stopped here, and deletes "
            "nothing from a camera before the ledger has recorded it verified: free space there "
            "and run again")
    return LedgerError(f"ledger {path}: {exc}")


def _is_full(directory: Path) -> bool:
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


class Ledger:
    """Thread-safe: one connection guarded by a lock; every method is one transaction."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the ledger. An existing file that is not a sound ledger raises
        ``LedgerDamagedError`` and is left exactly as it was."""
        self.path = Path(path)
        make_dirs(self.path.parent)         # a state directory whose name a power cut can take takes the ledger
        self._lock = threading.RLock()
        self._late_durable = False
        self._tx_durable = False            # the open outer transaction commits FULL
        self._session_usb: dict[int, tuple[str, Any]] = {}
        self._ledger_id: str | None = None
        wal = self.path.with_name(self.path.name + "-wal")
        if not self.path.exists():
            self._create()
        elif self.path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size):
            # SQLite would take an empty file for a new database and write a fresh ledger
            # over it: a ledger truncated to nothing must be noticed, not replaced
            raise LedgerDamagedError(
                f"ledger {self.path} is empty (truncated?); dockd will not replace it: restore the "
                "state directory from a backup, or remove the empty file to start a new ledger")
        self._open(self.path)

    def _open(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")   # FULL per durable commit, see above
            self._migrate()                                 # leaves foreign_keys=ON
        except sqlite3.Error as exc:
            self._db.close()
            raise ledger_error(self.path, exc) from None

    def _create(self) -> None:
        """A new ledger is built under a name of its own and linked into place, durably: a
        crash or a power cut while it is made leaves no file at ``path``, never an empty
        one (which the next start would refuse as a truncated ledger). Two processes making
        it at once (``dockd status`` as ``dockd run`` starts) end with one ledger: the link
        never replaces a ledger already there, and the second opens the first's."""
        tmp = self.path.with_name(f"{self.path.name}.new-{os.getpid()}-{threading.get_ident()}")
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            p.unlink(missing_ok=True)
        try:
            self._open(tmp)
            self._db.close()                # the last connection: its WAL is folded in and removed
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)     # never over a ledger another process made meanwhile
            except FileExistsError:
                pass
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: cannot create it: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def check(self) -> None:
        """Read every page (``PRAGMA quick_check``): damage anywhere raises
        ``LedgerDamagedError`` now, before a session relies on the ledger."""
        try:
            with self._lock:
                rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.Error as exc:
            raise ledger_error(self.path, exc) from None
        if [r[0] for r in rows] != ["ok"]:
            raise _damaged(self.path, f"quick_check: {rows[0][0]}")

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One committed transaction. Nested calls join the outer one. ``durable``:
        fsynced on commit (SQLite takes the safety level only outside a transaction,
        so a durable call nested in a lighter one is made durable by a checkpoint,
        which fsyncs the WAL first, right after the outer commit)."""
        with self._lock:
            if self._db.in_transaction:
                # joined: durable already if the outer transaction is
                self._late_durable = self._late_durable or (durable and not self._tx_durable)
                yield self._db
                return
            self._late_durable = False
            self._tx_durable = durable
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._session_usb.clear()      # it may hold a row that was rolled back
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            if self._late_durable:
                self._late_durable = False
                self._db.execute("PRAGMA wal_checkpoint(FULL)")

    def _migrate(self) -> None:
        """Bring the schema up to date in one transaction. Foreign keys are off while it
        runs (SQLite's procedure for rebuilding a table others refer to: the switch only
        takes outside a transaction), and checked before the commit."""
        self._db.execute("PRAGMA foreign_keys=OFF")
        try:
            with self.tx() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"ledger {self.path} has schema v{version}, newer than this dockd (v{SCHEMA_VERSION})")
                for v in range(version, SCHEMA_VERSION):
                    for stmt in _split_sql(MIGRATIONS[v]):
                        db.execute(stmt)
                    db.execute(f"PRAGMA user_version={v + 1}")
                if version < SCHEMA_VERSION and db.execute("PRAGMA foreign_key_check").fetchone():
                    raise LedgerError(f"ledger {self.path}: migration left a dangling reference")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def ledger_id(self) -> str:
        """This ledger's own random name (8 hex digits), made with it: recording ids restart in
        a new ledger (a rebuilt dock, a state directory lost), so object keys carry both."""
        if self._ledger_id is None:
            with self._lock:
                self._ledger_id = str(self._db.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0])
        return self._ledger_id

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- events (audit log) ---------------------------------------------------

    def append_event(self, event: str, *, serial: str | None = None, session_id: int | None = None,
                     recording_id: int | None = None, **data: Any) -> None:
        """Append one event to the chain. An event about a session also records the
        camera's USB descriptors, so each line of the audit log names its device."""
        with self.tx() as db:
            if session_id is not None and "usb" not in data:
                known = self._session_usb.get(session_id)
                if known is None:
                    srow = db.execute("SELECT serial, usb FROM sessions WHERE id=?", (session_id,)).fetchone()
                    if srow is not None:
                        # written once, when the session opens: safe to remember
                        known = self._session_usb[session_id] = (srow["serial"], json.loads(srow["usb"] or "{}"))
                if known is not None:
                    data["usb"] = known[1]
                    serial = serial or known[0]
            row = db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            ts = time.time()
            blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
            h = event_hash(prev, ts, event, serial, session_id, recording_id, blob)
            db.execute(
                "INSERT INTO events(ts, event, serial, session_id, recording_id, data, prev_hash, hash)"
                " VALUES(?,?,?,?,?,?,?,?)",
                (ts, event, serial, session_id, recording_id, blob, prev, h),
            )

    def verify_chain(self) -> int:
        """Check the event chain; return the number of events. Raises at the first break."""
        prev = GENESIS
        n = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, event, serial, session_id, recording_id, data, prev_hash, hash"
                " FROM events ORDER BY id").fetchall()
        for r in rows:
            if r["prev_hash"] != prev:
                raise AuditChainError(f"audit chain broken at event {r['id']}: prev_hash does not match")
            h = event_hash(prev, r["ts"], r["event"], r["serial"], r["session_id"], r["recording_id"], r["data"])
            if h != r["hash"]:
                raise AuditChainError(f"audit chain broken at event {r['id']}: content was altered")
            prev = h
            n += 1
        return n

    def last_event(self, event: str, *, recording_id: int | None = None,
                   serial: str | None = None) -> dict[str, Any] | None:
        """The newest ``event`` (about ``recording_id`` / camera ``serial``, if given), or None."""
        q = "SELECT * FROM events WHERE event=?"
        args: tuple[Any, ...] = (event,)
        if recording_id is not None:
            q += " AND recording_id=?"
            args += (recording_id,)
        if serial is not None:
            q += " AND serial=?"
            args += (serial,)
        with self._lock:
            row = self._db.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return dict(row) if row else None

    def events(self, limit: int = 100, serial: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM events"
        args: tuple[Any, ...] = ()
        if serial:
            q += " WHERE serial=?"
            args = (serial,)
        q += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(q, args + (limit,)).fetchall()
        return [dict(r) for r in reversed(rows)]

    # -- cameras and sessions ------------------------------------------------

    def open_session(self, serial: str, profile: str, mount: str, device: str | None,
                     bay: str | None, usb: dict[str, Any]) -> int:
        now = time.time()
        usb_json = json.dumps(usb, sort_keys=True)
        with self.tx() as db:
            db.execute(
                "INSERT INTO cameras(serial, profile, usb, first_seen, last_seen) VALUES(?,?,?,?,?)"
                " ON CONFLICT(serial) DO UPDATE SET profile=excluded.profile, usb=excluded.usb,"
                " last_seen=excluded.last_seen",
                (serial, profile, usb_json, now, now),
            )
            # a camera has at most one live session
            db.execute(
                "UPDATE sessions SET phase=?, undocked_at=COALESCE(undocked_at, ?) WHERE serial=? AND phase NOT IN (?,?,?)",
                (Phase.INTERRUPTED.value, now, serial, *(p.value for p in Phase if p.is_final)),
            )
            cur = db.execute(
                "INSERT INTO sessions(serial, profile, mount, device, bay, usb, phase, docked_at)"
                " VALUES(?,?,?,?,?,?,?,?)",
                (serial, profile, mount, device, bay, usb_json, Phase.DOCKED.value, now),
            )
            sid = int(cur.lastrowid or 0)
            self.append_event("device.docked", serial=serial, session_id=sid, profile=profile,
                              device=device, bay=bay, usb=usb)
        return sid

    def set_phase(self, session_id: int, phase: Phase, error: str | None = None) -> None:
        now = time.time()
        with self.tx() as db:
            row = db.execute("SELECT serial FROM sessions WHERE id=?", (session_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no session {session_id}")
            db.execute(
                "UPDATE sessions SET phase=?, error=COALESCE(?, error),"
                " finished_at=CASE WHEN ? THEN ? ELSE finished_at END,"
                " undocked_at=CASE WHEN ?='interrupted' THEN COALESCE(undocked_at, ?) ELSE undocked_at END"
                " WHERE id=?",
                (phase.value, error, phase.is_final, now, phase.value, now, session_id),
            )
            self.append_event(f"session.{phase.value}", serial=row["serial"], session_id=session_id,
                              error=error)

    def mark_undocked(self, session_id: int) -> None:
        with self.tx() as db:
            row = db.execute("SELECT serial FROM sessions WHERE id=?", (session_id,)).fetchone()
            db.execute("UPDATE sessions SET undocked_at=COALESCE(undocked_at, ?) WHERE id=?",
                       (time.time(), session_id))
            self.append_event("device.undocked", serial=row["serial"] if row else None,
                              session_id=session_id)

    def set_manifest(self, session_id: int, key: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE sessions SET manifest_key=? WHERE id=?", (key, session_id))

    def session(self, session_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        return dict(row) if row else None

    def sessions(self, limit: int = 50, live_only: bool = False) -> list[dict[str, Any]]:
        q = "SELECT * FROM sessions"
        if live_only:
            q += " WHERE phase NOT IN ('done','interrupted','attention')"
        q += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            return [dict(r) for r in self._db.execute(q, (limit,)).fetchall()]

    def recover_sessions(self) -> int:
        """After a crash, sessions that were live are interrupted (their camera is
        re-announced by the source if still present). Returns how many."""
        with self.tx() as db:
            rows = db.execute(
                "SELECT id FROM sessions WHERE phase NOT IN ('done','interrupted','attention')").fetchall()
            for r in rows:
                self.set_phase(r["id"], Phase.INTERRUPTED, error="dockd restarted")
        return len(rows)

    # -- recordings -----------------------------------------------------------

    def upsert_found(self, serial: str, session_id: int, profile: str, rel_path: bytes,
                     size: int, mtime_ns: int, role: str, flagged: bool = False) -> Recording:
        """Record a file seen on the camera. The recording standing for that identity keeps
        its state; one that was wiped, superseded or replaced stands for nothing on the
        camera any more, so a file seen under its identity is a new recording, copied like
        any other (a camera whose clock reset and whose file counter restarted).
        A file seen is not deleted: a note that a wipe began deleting it is withdrawn
        (its unlink never reached the camera), so no later absence is taken for that
        wipe's, and the note never names a session other than the one that wrote it."""
        now = time.time()
        where = "serial=? AND rel_path=? AND size=? AND mtime_ns=? AND " + STANDING
        ident = (serial, rel_path, size, mtime_ns)
        with self.tx() as db:
            row = db.execute(f"UPDATE recordings SET session_id=?, flagged=MAX(flagged, ?), wipe_started=NULL"
                             f" WHERE {where} RETURNING {_REC_COLS}",
                             (session_id, int(flagged), *ident)).fetchone()
            if row is None:
                row = db.execute(
                    "INSERT INTO recordings(serial, rel_path, size, mtime_ns, role, profile, session_id,"
                    f" state, flagged, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?) RETURNING {_REC_COLS}",
                    (*ident, role, profile, session_id, RecState.FOUND.value, int(flagged), now, now),
                ).fetchone()
        return _row_to_rec(row)

    def mark_replaced(self, rec_id: int, reason: str) -> None:
        """The camera holds different content under this recording's identity: the
        recording keeps its state and its copy (the store's, or the spool's on its way
        there) but no longer stands for the camera's file, which a wipe must never delete
        on its strength. The file is a new recording (``upsert_found``)."""
        with self.tx() as db:
            row = db.execute("UPDATE recordings SET replaced_at=?, wipe_started=NULL WHERE id=? AND replaced_at"
                             " IS NULL RETURNING serial, session_id, rel_path, plain_sha256, object_key, state",
                             (time.time(), rec_id)).fetchone()
            if row is not None:
                self.append_event("recording.replaced", serial=row["serial"], session_id=row["session_id"],
                                  recording_id=rec_id, path=display_path(bytes(row["rel_path"])),
                                  sha256=row["plain_sha256"], object_key=row["object_key"],
                                  state=row["state"], reason=reason)

    def supersede(self, serial: str, rel_path: bytes, current_id: int) -> int:
        """Older versions of a camera file that were never copied and no longer exist
        on the camera become ``superseded``. Spooled versions keep uploading."""
        with self.tx() as db:
            rows = db.execute(
                "SELECT id FROM recordings WHERE serial=? AND rel_path=? AND id<>? AND spool_path IS NULL"
                " AND state IN ('found','failed')", (serial, rel_path, current_id)).fetchall()
            for r in rows:
                self.transition(r["id"], RecState.SUPERSEDED, event="recording.superseded",
                                error="rewritten on the camera before this version was copied")
        return len(rows)

    def mark_wipe_started(self, rec_ids: Iterable[int]) -> None:
        """Record, durably and before any unlink, that a wipe is about to delete these
        verified recordings: one commit for the batch."""
        self._update_ids("wipe_started=?", (time.time(),), rec_ids, "state='verified' AND ", durable=True)

    def clear_wipe_started(self, rec_ids: Iterable[int]) -> None:
        """Withdraw the note for recordings a wipe left on the camera (an unlink refused)."""
        self._update_ids("wipe_started=NULL", (), rec_ids)

    def unconfirmed_wipes(self, serial: str) -> list[Recording]:
        """Verified recordings of ``serial`` a wipe began deleting but never confirmed."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_REC_COLS} FROM recordings WHERE serial=? AND state='verified'"
                                    " AND wipe_started IS NOT NULL ORDER BY id", (serial,)).fetchall()
        return [_row_to_rec(r) for r in rows]

    def claim(self, rec_ids: Iterable[int], session_id: int) -> None:
        """Make ``session_id`` the session of these recordings (its wipe and manifest take them)."""
        self._update_ids("session_id=?", (session_id,), rec_ids)

    def _update_ids(self, assignment: str, args: tuple[Any, ...], rec_ids: Iterable[int], where: str = "",
                    durable: bool = False) -> None:
        """``UPDATE recordings SET <assignment> WHERE <where>id IN (…)`` for many ids, in one commit."""
        ids = list(rec_ids)
        if not ids:
            return
        with self.tx(durable=durable) as db:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                db.execute(f"UPDATE recordings SET {assignment} WHERE {where}id IN ({','.join('?' * len(chunk))})",
                           (*args, *chunk))

    def get(self, rec_id: int) -> Recording:
        with self._lock:
            row = self._db.execute(f"SELECT {_REC_COLS} FROM recordings WHERE id=?", (rec_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no recording {rec_id}")
        return _row_to_rec(row)

    def get_many(self, rec_ids: Iterable[int]) -> list[Recording]:
        """``get`` for many ids in a few queries, in the order given (unknown ids raise)."""
        ids = list(rec_ids)
        found: dict[int, Recording] = {}
        with self._lock:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT {_REC_COLS} FROM recordings WHERE id IN ({','.join('?' * len(chunk))})"
                for row in self._db.execute(q, chunk).fetchall():
                    rec = _row_to_rec(row)
                    found[rec.id] = rec
        missing = [i for i in ids if i not in found]
        if missing:
            raise LedgerError(f"no recording {missing[0]}")
        return [found[i] for i in ids]

    def recordings(self, *, serial: str | None = None, states: Iterable[RecState] | None = None,
                   session_id: int | None = None) -> list[Recording]:
        q = f"SELECT {_REC_COLS} FROM recordings WHERE 1=1"
        args: list[Any] = []
        if serial is not None:
            q += " AND serial=?"
            args.append(serial)
        if session_id is not None:
            q += " AND session_id=?"
            args.append(session_id)
        if states is not None:
            st = [s.value for s in states]
            q += f" AND state IN ({','.join('?' * len(st))})"
            args += st
        q += " ORDER BY flagged DESC, mtime_ns, id"
        with self._lock:
            return [_row_to_rec(r) for r in self._db.execute(q, args).fetchall()]

    def transition(self, rec_id: int, new: RecState, *, event: str | None = None,
                   error: str | None = None, next_attempt_at: float | None = None,
                   count_attempt: bool = False, **fields: Any) -> Recording:
        """Move a recording to ``new``, updating ``fields``; commit; log the event."""
        allowed = {"plain_sha256", "cipher_sha256", "cipher_size", "object_key", "spool_path", "attempts"}
        bad = set(fields) - allowed
        if bad:
            raise LedgerError(f"unknown recording fields {sorted(bad)}")
        sources = _SOURCES[new]
        with self.tx(durable=new == RecState.VERIFIED) as db:
            sets = ["state=?", "updated_at=?", "last_error=?", "next_attempt_at=?"]
            args: list[Any] = [new.value, time.time(), error, next_attempt_at]
            if count_attempt:
                sets.append("attempts=attempts+1")
            for k, v in fields.items():
                sets.append(f"{k}=?")
                args.append(v)
            # the legality check and the update in one statement: only a row in a state
            # that may move to ``new`` is updated
            row = db.execute(f"UPDATE recordings SET {', '.join(sets)} WHERE id=? AND state IN"
                             f" ({','.join('?' * len(sources))}) RETURNING {_REC_COLS}",
                             (*args, rec_id, *sources)).fetchone()
            if row is None:
                cur = self.get(rec_id)              # raises for an unknown id
                raise LedgerError(f"recording {rec_id}: illegal transition {cur.state.value} -> {new.value}")
            rec = _row_to_rec(row)
            if event:
                self.append_event(event, serial=rec.serial, session_id=rec.session_id,
                                  recording_id=rec_id, path=rec.name, size=rec.size,
                                  sha256=rec.plain_sha256, state=new.value, error=error,
                                  object_key=rec.object_key)
        return rec

    # -- upload checkpoints ------------------------------------------------

    def checkpoint_load(self, rec_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM uploads WHERE recording_id=?", (rec_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def checkpoint_save(self, rec_id: int, state: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO uploads(recording_id, state, updated_at) VALUES(?,?,?)"
                " ON CONFLICT(recording_id) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
                (rec_id, json.dumps(state), time.time()),
            )

    def checkpoint_clear(self, rec_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM uploads WHERE recording_id=?", (rec_id,))

    # -- summaries -------------------------------------------------------------

    def counts(self, **where: Any) -> dict[str, tuple[int, int]]:
        """state -> (count, bytes) for recordings matching ``where`` (serial/session_id)."""
        q = "SELECT state, COUNT(*), COALESCE(SUM(size),0) FROM recordings WHERE 1=1"
        args: list[Any] = []
        for k in ("serial", "session_id"):
            if where.get(k) is not None:
                q += f" AND {k}=?"
                args.append(where[k])
        q += " GROUP BY state"
        with self._lock:
            return {r[0]: (r[1], r[2]) for r in self._db.execute(q, args).fetchall()}


class LedgerCheckpoint:
    """``store.base.Checkpoint`` backed by the ledger's uploads table."""

    def __init__(self, ledger: Ledger, rec_id: int) -> None:
        self.ledger = ledger
        self.rec_id = rec_id
        self._empty = False          # True once known to hold nothing: clear() has nothing to do

    def load(self) -> dict[str, Any] | None:
        state = self.ledger.checkpoint_load(self.rec_id)
        self._empty = state is None
        return state

    def save(self, state: dict[str, Any]) -> None:
        self._empty = False
        self.ledger.checkpoint_save(self.rec_id, state)

    def clear(self) -> None:
        # A put that found no checkpoint and saved none (every single PUT) has nothing to
        # delete: skipping the empty write saves a ledger transaction per photo.
        if not self._empty:
            self.ledger.checkpoint_clear(self.rec_id)
            self._empty = True


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, the way sqlite3 itself sees them."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
