"""The ledger itself: durable commits where the wipe depends on them, reads in bulk,
and schema migrations that keep every row and the audit chain."""

from __future__ import annotations

import pytest


def test_verified_commits_fsynced_once_whatever_the_nesting(tmp_path):
    """``verified`` guards the wipe: its commit runs with synchronous=FULL. Nested in a
    durable transaction it costs no extra checkpoint; nested in a light one it gets one."""
    from dockd.ledger import Ledger
    from dockd.model import RecState

    led = Ledger(tmp_path / "ledger.db")
    sid = led.open_session("CAM1", "generic", "/mnt", None, None, {})
    ids = [led.upsert_found("CAM1", sid, "generic", f"A{i}.MP4".encode(), 10, 1, "recording").id
           for i in range(2)]
    for rid in ids:
        for st in (RecState.SPOOLED, RecState.UPLOADED):
            led.transition(rid, st, plain_sha256="00" * 32, cipher_sha256="11" * 32, cipher_size=10,
                           object_key=f"k{rid}", spool_path=f"/s/{rid}.age")
    seen: list[str] = []
    led._db.set_trace_callback(seen.append)
    with led.tx(durable=True):
        led.transition(ids[0], RecState.VERIFIED)
        led.checkpoint_clear(ids[0])
    assert "PRAGMA synchronous=FULL" in seen and not any("wal_checkpoint" in s for s in seen)
    seen.clear()
    with led.tx():
        led.transition(ids[1], RecState.VERIFIED)
    assert "PRAGMA synchronous=FULL" not in seen and "PRAGMA wal_checkpoint(FULL)" in seen
    led._db.set_trace_callback(None)
    assert [led.get(i).state for i in ids] == [RecState.VERIFIED, RecState.VERIFIED]
    led.close()


def test_get_many_reads_in_the_order_given_across_chunks(tmp_path):
    from dockd.errors import LedgerError
    from dockd.ledger import Ledger

    led = Ledger(tmp_path / "ledger.db")
    sid = led.open_session("CAM1", "generic", "/mnt", None, None, {})
    with led.tx():
        ids = [led.upsert_found("CAM1", sid, "generic", f"F{i:04d}.JPG".encode(), i, 1, "recording").id
               for i in range(1203)]
    order = ids[::-1][:700] + ids[:3]
    got = led.get_many(order)
    assert [r.id for r in got] == order and [r.size for r in got[:2]] == [1202, 1201]
    assert led.get_many([]) == []
    with pytest.raises(LedgerError, match="no recording"):
        led.get_many([ids[0], 10**9])
    led.close()



def test_a_ledger_from_before_wipe_intents_is_migrated_and_keeps_its_chain(tmp_path, monkeypatch):
    """Schema v1 (every dock station in service) opens under v2: the new column is
    added, the rows and the audit chain are untouched, and a dockd that knows only v1
    refuses the migrated ledger rather than misread it."""
    from dockd import ledger as L
    from dockd.errors import LedgerError
    from dockd.model import RecState

    path = tmp_path / "ledger.sqlite3"
    v2 = L.MIGRATIONS[:]
    monkeypatch.setattr(L, "MIGRATIONS", v2[:1])          # a v1 dockd writes its rows
    monkeypatch.setattr(L, "SCHEMA_VERSION", 1)
    old = L.Ledger(path)
    sid = old.open_session("CAMX", "generic", "/mnt", None, None, {})
    with old.tx() as db:                                  # the row as v1 wrote it (v1's own SQL)
        rec_id = db.execute(
            "INSERT INTO recordings(serial, rel_path, size, mtime_ns, role, profile, session_id, state,"
            " flagged, created_at, updated_at) VALUES('CAMX', ?, 1, 1, 'recording', 'generic', ?, 'found',"
            " 0, 0, 0)", (b"DCIM/A.MP4", sid)).lastrowid
    old.close()
    monkeypatch.undo()
    led = L.Ledger(path)
    assert led.schema_version == len(v2) == L.SCHEMA_VERSION
    assert led.get(rec_id).state == RecState.FOUND and led.verify_chain() >= 1
    led.mark_wipe_started([rec_id])                       # the new column is there (a no-op: not verified)
    assert led.unconfirmed_wipes("CAMX") == []
    led.close()
    monkeypatch.setattr(L, "MIGRATIONS", v2[:1])
    monkeypatch.setattr(L, "SCHEMA_VERSION", 1)
    with pytest.raises(LedgerError, match="newer than this dockd"):
        L.Ledger(path)


def test_a_v2_ledger_migrates_and_a_wiped_identity_then_names_a_new_recording(tmp_path, monkeypatch):
    """Stations in service hold v2 ledgers, whose identities were unique whatever their
    state. Opened under v3, rows, upload checkpoints and the audit chain are kept, and a
    wiped identity seen again is a new recording."""
    from dockd import ledger as L
    from dockd.model import RecState

    path = tmp_path / "ledger.sqlite3"
    full = L.MIGRATIONS[:]
    monkeypatch.setattr(L, "MIGRATIONS", full[:2])
    monkeypatch.setattr(L, "SCHEMA_VERSION", 2)
    old = L.Ledger(path)
    sid = old.open_session("CAMX", "generic", "/mnt", None, None, {})
    with old.tx() as db:                # rows as v2 wrote them
        wiped = db.execute(
            "INSERT INTO recordings(serial, rel_path, size, mtime_ns, role, profile, session_id, state,"
            " plain_sha256, object_key, flagged, created_at, updated_at) VALUES('CAMX', ?, 5, 1, 'recording',"
            " 'generic', ?, 'wiped', 'aa', 'k1', 0, 0, 0)", (b"DCIM/V1.MP4", sid)).lastrowid
        spooled = db.execute(
            "INSERT INTO recordings(serial, rel_path, size, mtime_ns, role, profile, session_id, state,"
            " spool_path, flagged, created_at, updated_at) VALUES('CAMX', ?, 5, 1, 'recording', 'generic', ?,"
            " 'spooled', '/s/2.age', 0, 0, 0)", (b"DCIM/V2.MP4", sid)).lastrowid
        db.execute("INSERT INTO uploads(recording_id, state, updated_at) VALUES(?, '{}', 0)", (spooled,))
    chain = old.verify_chain()
    old.close()
    monkeypatch.undo()
    led = L.Ledger(path)
    try:
        assert led.schema_version == L.SCHEMA_VERSION == 3
        assert led.verify_chain() == chain
        assert led.get(wiped).state == RecState.WIPED and led.checkpoint_load(spooled) == {}
        sid2 = led.open_session("CAMX", "generic", "/mnt", None, None, {})
        again = led.upsert_found("CAMX", sid2, "generic", b"DCIM/V1.MP4", 5, 1, "recording")
        assert again.id != wiped and again.state == RecState.FOUND
        same = led.upsert_found("CAMX", sid2, "generic", b"DCIM/V2.MP4", 5, 1, "recording")
        assert same.id == spooled and same.state == RecState.SPOOLED
        assert led.upsert_found("CAMX", sid2, "generic", b"DCIM/V1.MP4", 5, 1, "recording").id == again.id
        led.mark_replaced(spooled, "test")       # no longer stands for the file: a new one does
        fresh = led.upsert_found("CAMX", sid2, "generic", b"DCIM/V2.MP4", 5, 1, "recording")
        assert fresh.id not in (spooled, again.id) and led.get(spooled).state == RecState.SPOOLED
        assert led.integrity_check() == "ok"
    finally:
        led.close()


def test_a_crash_while_a_new_ledger_is_made_leaves_none_not_an_empty_one(tmp_path, monkeypatch):
    """A station's first start dies (power cut, kill -9) right after SQLite created the file:
    an empty ledger at the real path would be refused at every later start as a truncated
    one. The new ledger is made under another name and renamed into place."""
    import sqlite3

    from dockd import ledger as L

    real = sqlite3.connect

    class Crash(BaseException):
        pass

    def connect(*a, **k):
        db = real(*a, **k)

        class Dying:
            def __getattr__(self, name):
                if name == "execute":
                    raise Crash("power cut")
                return getattr(db, name)

            def __setattr__(self, name, value):
                setattr(db, name, value)
        return Dying()

    path = tmp_path / "state" / "ledger.sqlite3"
    monkeypatch.setattr(L.sqlite3, "connect", connect)
    with pytest.raises(Crash):
        L.Ledger(path)
    monkeypatch.undo()
    assert not path.exists() or path.stat().st_size > 0
    led = L.Ledger(path)                # the next start makes it, whatever was left
    try:
        assert led.schema_version == L.SCHEMA_VERSION and led.integrity_check() == "ok"
    finally:
        led.close()
    assert not path.with_name(path.name + ".new").exists()


def test_a_second_process_making_the_ledger_never_replaces_the_first_ones(tmp_path, monkeypatch):
    """`dockd status` as `dockd run` starts on a new station: both see no ledger and make
    one. The second must open the first's, never replace it under a daemon already
    writing to it (which would then write to a file no one else can see)."""
    from pathlib import Path

    from dockd.ledger import Ledger

    path = tmp_path / "state" / "ledger.sqlite3"
    first = Ledger(path)
    try:
        sid = first.open_session("CAM1", "generic", "/mnt", None, None, {})
        real = Path.exists
        monkeypatch.setattr(Path, "exists", lambda p: False if p == path else real(p))   # it looked first
        second = Ledger(path)
        monkeypatch.undo()
        try:
            assert second.session(sid) is not None and second.ledger_id == first.ledger_id
        finally:
            second.close()
    finally:
        first.close()
    assert [p.name for p in path.parent.iterdir() if ".new" in p.name] == []
