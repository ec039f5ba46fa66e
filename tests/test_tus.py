"""The tus backend against the official Node tus server: resume, auth, errors.

The conformance suite (test_store_conformance.py) covers the Store contract;
these tests cover what is particular to tus: resuming from the server's
offset after a reset or a kill -9, the bearer token, the checksum extension
and how HTTP statuses are classified.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from dockd.config import StoreConfig
from dockd.errors import (
    ConfigError,
    ObjectMissingError,
    PermanentStoreError,
    StoreAuthError,
    StoreFullError,
    TransientStoreError,
)
from dockd.store.base import MemoryCheckpoint, put_one, verify_one
from dockd.store.retry import RetryingStore, RetryPolicy
from dockd.store.tus import TusStore, classify_status, upload_id
from faultproxy import FaultProxy
from store_conformance import CrashingCheckpoint, SimulatedCrash, make_blob, stat_of
from tus_server import TusServer, node_missing, start_tus_server

pytest_plugins = ["tus_server"]

REPO = Path(__file__).resolve().parents[1]
KEY = "dock-01/CAM-0001/2024-05-01/clip-0001.0123456789abcdef.age"
RESUME_SIZE = 4 * 1024 * 1024
RESUME_CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TusServer]:
    """A tus server without the checksum extension (@tus/server as shipped)."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    server = start_tus_server(tmp_path_factory.mktemp("tus-plain"), token="plain-token", checksum=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TusServer]:
    """A tus server that accepts objects of at most 1000 bytes."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    server = start_tus_server(tmp_path_factory.mktemp("tus-small"), max_size=1000)
    yield server
    server.stop()


@pytest.fixture(params=["checksum", "plain"])
def server(request: pytest.FixtureRequest) -> TusServer:
    return request.getfixturevalue("tus_server" if request.param == "checksum" else "plain_server")


def store_for(server: TusServer, prefix: str, url: str | None = None, **kw: Any) -> TusStore:
    return TusStore(url or server.url, prefix=prefix, **server.store_kwargs(**kw))


def patches(entries: list[dict[str, Any]], full: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("method") == "PATCH" and e.get("id") == upload_id(full)]


# -- resume ---------------------------------------------------------------------------

def test_upload_reset_at_half_resumes_from_half(server: TusServer, tmp_path: Path) -> None:
    """Done means: a tus upload that was interrupted at 50% resumes from 50%."""
    prefix = server.new_prefix()
    full = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, RESUME_SIZE)
    cp = MemoryCheckpoint()
    with FaultProxy(server.port) as proxy:
        url = f"{proxy.url}/files/"
        # the connection is reset once half the object (plus a little) has gone up
        proxy.reset_after(RESUME_SIZE // 2 + 40_000)
        with pytest.raises(TransientStoreError):
            put_one(store_for(server, prefix, url, chunk_size=RESUME_CHUNK), KEY, blob, cp)
        assert proxy.resets == 1
        first_body = sum(r.body_sent for r in proxy.requests if r.method == "PATCH")
        state = cp.load()
        assert state is not None and state["url"].endswith(upload_id(full))
        at_cut = server.settled_offset(full)      # what the server holds: the truth
        assert at_cut is not None
        assert state["offset"] <= at_cut        # the ledger may lag the server, never lead it
        assert 0.45 * RESUME_SIZE <= at_cut <= 0.55 * RESUME_SIZE
        if server.checksum:
            # an unverifiable partial chunk is discarded: whole chunks only
            assert at_cut % RESUME_CHUNK == 0
        with pytest.raises(ObjectMissingError):                  # not an object yet (a HEAD says)
            verify_one(store_for(server, prefix), KEY, blob)

        # restart: a new store instance, the checkpoint as the ledger kept it
        proxy.clear_log()
        log_mark = len(server.requests())
        put_one(store_for(server, prefix, url, chunk_size=RESUME_CHUNK), KEY, blob, cp)
        methods = [r.method for r in proxy.requests]
        resumed_body = sum(r.body_sent for r in proxy.requests if r.method == "PATCH")

    assert "POST" not in methods                          # same upload, not a new one
    assert methods.index("HEAD") < methods.index("PATCH")  # asked the server where it stood
    assert resumed_body == RESUME_SIZE - at_cut            # only the missing part went up
    server_side = patches(server.requests(log_mark, settle=0.2), full)
    assert int(server_side[0]["offset"]) == at_cut
    assert sum(e["received"] for e in server_side) == RESUME_SIZE - at_cut
    if server.checksum:
        assert all(e.get("checksum") == "sha1" for e in server_side)
    assert cp.load() is None
    verify_one(store_for(server, prefix), KEY, blob)
    print(f"\ntus resume ({'checksum' if server.checksum else 'plain'}): size {RESUME_SIZE}, "
          f"first attempt sent {first_body} body bytes, server held {at_cut} "
          f"({at_cut / RESUME_SIZE:.1%}) at the reset, checkpoint said {state['offset']}; "
          f"second attempt sent {resumed_body} ({resumed_body / RESUME_SIZE:.1%})")


CHILD = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from dockd.ledger import Ledger, LedgerCheckpoint
    from dockd.store.base import Blob, put_one
    from dockd.store.ratelimit import RateLimiter, ThrottledStore
    from dockd.store.tus import TusStore

    url, prefix, token, ledger_path, path, size, sha, rec_id = sys.argv[1:9]
    store = ThrottledStore(TusStore(url, prefix=prefix, token=token, chunk_size=64 * 1024),
                           RateLimiter(4 * 1024 * 1024))
    cp = LedgerCheckpoint(Ledger(Path(ledger_path)), int(rec_id))
    put_one(store, sys.argv[9], Blob(Path(path), int(size), sha), cp)
    print("finished")
""")


def test_kill9_mid_upload_resumes_from_the_ledger(tus_server: TusServer, tmp_path: Path) -> None:
    """A process killed mid-upload leaves the URL and offset in the ledger;
    the next process resumes from there with HEAD + PATCH."""
    from dockd.ledger import Ledger, LedgerCheckpoint

    size = 8 * 1024 * 1024                     # 2 s at the child's 4 MiB/s rate limit
    prefix = tus_server.new_prefix()
    full = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, size)
    ledger_path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(ledger_path)
    sid = ledger.open_session("CAM-0001", "generic", str(tmp_path), None, None, {})
    rec = ledger.upsert_found("CAM-0001", sid, "generic", b"clip-0001.mp4", size, 0, "video")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, tus_server.url, prefix, tus_server.token or "",
         str(ledger_path), str(blob.path), str(size), blob.sha256, str(rec.id), KEY],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    offset = 0
    try:
        while time.monotonic() < deadline and child.poll() is None:
            with sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True) as db:
                row = db.execute("SELECT state FROM uploads WHERE recording_id=?", (rec.id,)).fetchone()
            if row is not None:
                offset = json.loads(row[0])["offset"]
                if offset >= size // 2:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            child.kill()
        out, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, f"child ended on its own: {out!r} {err.decode()[-2000:]}"
    held = tus_server.settled_offset(full)
    assert 0.45 * size <= offset <= held < 0.75 * size

    log_mark = len(tus_server.requests())
    store = TusStore(tus_server.url, prefix=prefix, **tus_server.store_kwargs())
    cp = LedgerCheckpoint(ledger, rec.id)
    assert cp.load()["offset"] == offset
    put_one(store, KEY, blob, cp)
    after = tus_server.requests(log_mark, settle=0.2)
    assert "POST" not in [e["method"] for e in after]
    sent = patches(after, full)
    assert int(sent[0]["offset"]) == held
    assert sum(e["received"] for e in sent) == size - held
    assert cp.load() is None
    verify_one(store, KEY, blob)
    print(f"\ntus kill -9: size {size}, ledger offset {offset} ({offset / size:.1%}), server held {held}; "
          f"resume sent {size - held} bytes ({(size - held) / size:.1%})")


def test_lost_checkpoint_still_finds_the_upload(tus_server: TusServer, tmp_path: Path) -> None:
    """The upload URL is derived from the key, so even without a checkpoint a
    half-done upload is found with HEAD and continued, not duplicated."""
    prefix = tus_server.new_prefix()
    full = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, 8 * 64 * 1024)
    with pytest.raises(SimulatedCrash):
        put_one(store_for(tus_server, prefix), KEY, blob, CrashingCheckpoint(parts=3))
    held = tus_server.info(full)["offset"]
    assert held == 3 * 64 * 1024
    mark = len(tus_server.requests())
    put_one(store_for(tus_server, prefix), KEY, blob, MemoryCheckpoint())
    after = tus_server.requests(mark, settle=0.2)
    assert "POST" not in [e["method"] for e in after]
    assert sum(e["received"] for e in patches(after, full)) == blob.size - held
    verify_one(store_for(tus_server, prefix), KEY, blob)


def test_checkpointed_upload_gone_starts_a_new_one(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    full = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, 6 * 64 * 1024)
    cp = CrashingCheckpoint(parts=2)
    with pytest.raises(SimulatedCrash):
        put_one(store_for(tus_server, prefix), KEY, blob, cp)
    # the server expired the upload meanwhile
    uid = upload_id(full)
    (tus_server.data_dir / uid).unlink()
    (tus_server.data_dir / f"{uid}.json").unlink()
    mark = len(tus_server.requests())
    put_one(store_for(tus_server, prefix), KEY, blob, cp)
    after = tus_server.requests(mark, settle=0.2)
    assert [e["method"] for e in after if e["method"] in ("HEAD", "POST")] == ["HEAD", "POST"]
    assert sum(e["received"] for e in patches(after, full)) == blob.size
    assert cp.load() is None
    verify_one(store_for(tus_server, prefix), KEY, blob)


def test_reput_of_a_finished_object_sends_nothing(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    blob = make_blob(tmp_path, 100_000)
    put_one(store_for(tus_server, prefix), KEY, blob, MemoryCheckpoint())
    mark = len(tus_server.requests())
    put_one(store_for(tus_server, prefix), KEY, blob, MemoryCheckpoint())
    assert [e["method"] for e in tus_server.requests(mark, settle=0.2)] == ["OPTIONS", "HEAD"]


def test_other_object_under_the_key_is_replaced(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    old = make_blob(tmp_path, 3_000, "old")
    new = make_blob(tmp_path, 5_000, "new")
    store = store_for(tus_server, prefix)
    put_one(store, KEY, old, MemoryCheckpoint())
    put_one(store, KEY, new, MemoryCheckpoint())
    assert verify_one(store, KEY, new).size == 5_000
    assert [(o.key, o.size) for o in store.list()] == [(KEY, 5_000)]


def test_metadata_travels_with_the_object(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    blob = make_blob(tmp_path, 1_000)
    store = store_for(tus_server, prefix)
    put_one(store, KEY, blob, MemoryCheckpoint())
    info = stat_of(store, KEY)
    assert info is not None and dict(info.metadata) == dict(blob.metadata)
    rec = tus_server.info(f"{prefix}/{KEY}")
    assert rec["metadata"]["dockd-sha256"] == blob.sha256


# -- transient faults -------------------------------------------------------------------

def test_throttled_requests_are_retried_by_the_policy(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    blob = make_blob(tmp_path, 200_000)
    with FaultProxy(tus_server.port) as proxy:
        url = f"{proxy.url}/files/"
        proxy.slowdown(1, status=503)
        with pytest.raises(TransientStoreError):
            put_one(store_for(tus_server, prefix, url), KEY, blob, MemoryCheckpoint())
        proxy.slowdown(2, status=429)
        retries: list[int] = []
        store = RetryingStore(store_for(tus_server, prefix, url), RetryPolicy.immediate(5),
                              on_retry=lambda op, n, exc, wait: retries.append(n))
        put_one(store, KEY, blob, MemoryCheckpoint())
        assert retries == [1, 2]
    verify_one(store_for(tus_server, prefix), KEY, blob)


def test_server_down_is_transient(tus_server: TusServer) -> None:
    with socket.socket() as s:             # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = TusStore(f"http://127.0.0.1:{port}/files/", prefix="x", token=tus_server.token, timeout=2.0)
    with pytest.raises(TransientStoreError):
        stat_of(store, KEY)


def test_corrupted_chunk_is_refused_and_retryable(tus_server: TusServer, tmp_path: Path) -> None:
    """Checksum extension: a PATCH whose body does not match Upload-Checksum is
    discarded by the server (460) and the client may send it again."""
    prefix = tus_server.new_prefix()
    full = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, 6 * 64 * 1024)
    with pytest.raises(SimulatedCrash):
        put_one(store_for(tus_server, prefix), KEY, blob, CrashingCheckpoint(parts=1))
    store = store_for(tus_server, prefix)
    store._learn()
    assert store._checksum_algo == "sha1"
    body = b"x" * 1000
    with pytest.raises(TransientStoreError, match="460"):
        store._request("PATCH", store._url(full), "patch", ok=(204,), data=body, headers={
            "Upload-Offset": str(64 * 1024), "Content-Type": "application/offset+octet-stream",
            "Upload-Checksum": "sha1 " + "A" * 27 + "=",
        })
    assert tus_server.info(full)["offset"] == 64 * 1024   # nothing was written
    put_one(store, KEY, blob, MemoryCheckpoint())
    verify_one(store, KEY, blob)


def test_no_checksum_header_when_the_server_does_not_offer_it(plain_server: TusServer, tmp_path: Path) -> None:
    prefix = plain_server.new_prefix()
    store = store_for(plain_server, prefix)
    store._learn()
    assert store._checksum_algo is None
    put_one(store, KEY, make_blob(tmp_path, 70_000), MemoryCheckpoint())


# -- permanent errors -----------------------------------------------------------------------

def test_too_large_is_permanent_and_leaves_nothing(small_server: TusServer, tmp_path: Path) -> None:
    prefix = small_server.new_prefix()
    store = store_for(small_server, prefix)
    with pytest.raises(PermanentStoreError, match="413") as ei:
        put_one(store, KEY, make_blob(tmp_path, 2_000), MemoryCheckpoint())
    assert not ei.value.retryable
    assert small_server.uploads(prefix) == []
    put_one(store, KEY, make_blob(tmp_path, 900, "small"), MemoryCheckpoint())


@pytest.mark.parametrize("status,kind", [
    (401, StoreAuthError), (403, StoreAuthError), (404, ObjectMissingError), (410, ObjectMissingError),
    (409, TransientStoreError), (460, TransientStoreError), (429, TransientStoreError),
    (408, TransientStoreError), (500, TransientStoreError), (502, TransientStoreError),
    (503, TransientStoreError), (412, PermanentStoreError), (413, PermanentStoreError),
    (400, PermanentStoreError), (507, StoreFullError),
])
def test_status_classification(status: int, kind: type) -> None:
    err = classify_status(status, "op")
    assert type(err) is kind
    assert err.retryable == (kind in (TransientStoreError, StoreFullError))     # full: rescheduled


# -- authentication ----------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong", "missing"])
def test_refused_token_is_an_auth_error_and_not_retried(tus_server: TusServer, tmp_path: Path,
                                                         token: str | None) -> None:
    prefix = tus_server.new_prefix()
    mark = len(tus_server.requests())
    store = RetryingStore(TusStore(tus_server.url, prefix=prefix, token=token),
                          RetryPolicy.immediate(5))
    with pytest.raises(StoreAuthError) as ei:
        put_one(store, KEY, make_blob(tmp_path, 1_000), MemoryCheckpoint())
    assert not ei.value.retryable
    assert tus_server.token not in str(ei.value)
    assert [e["status"] for e in tus_server.requests(mark, settle=0.2)] == [401]   # one try, no retries
    with pytest.raises(StoreAuthError):
        stat_of(store, KEY)


def test_token_file_must_be_private(tus_server: TusServer, tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text((tus_server.token or "") + "\n")
    tf.chmod(0o644)
    cfg = StoreConfig(url=tus_server.url, token_file=tf)
    with pytest.raises(ConfigError) as ei:
        TusStore.from_config(cfg)
    assert ei.value.key == "store.token_file" and "0644" in str(ei.value)
    tf.chmod(0o600)
    store = TusStore.from_config(cfg)
    assert tus_server.token not in repr(store)
    key = f"{tus_server.new_prefix()}/{KEY}"
    put_one(store, key, make_blob(tmp_path, 500), MemoryCheckpoint())
    assert stat_of(store, key) is not None


def test_plain_http_only_on_loopback() -> None:
    with pytest.raises(ConfigError) as ei:
        TusStore("http://tus.example.org/files/", token="t")
    assert ei.value.key == "store.url"
    TusStore("http://localhost:1080/files/")
    TusStore("https://tus.example.org/files/")


def _channel_events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["event"] in ("store.plain_http", "store.tls_unverified")]


def test_trusted_plain_http_is_logged_and_never_carries_the_token() -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        TusStore("http://192.0.2.10:1080/files/", trust_plain_http=True)     # construction sends nothing
        TusStore("http://127.0.0.1:1080/files/", token="t")
    assert _channel_events(logs) == ["store.plain_http", "store.plain_http"]
    assert [e["loopback"] for e in logs if e["event"] == "store.plain_http"] == [False, True]
    with pytest.raises(ConfigError) as ei:
        TusStore("http://192.0.2.10:1080/files/", token="t", trust_plain_http=True)
    assert ei.value.key == "store.token_file"


def test_unverified_tls_is_logged_like_s3(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    with capture_logs() as logs:
        verified = TusStore("https://tus.example.org/files/")
        bundled = TusStore("https://tus.example.org/files/", ca_bundle=ca)
        unverified = TusStore.from_config(StoreConfig(url="https://tus.example.org/files/", verify_tls=False))
    assert _channel_events(logs) == ["store.tls_unverified"]
    assert [e for e in logs if e["event"] == "store.tls_unverified"][0]["store"] == "https://tus.example.org/files/"
    # and the sessions do what the log says
    assert verified._session().verify is True
    assert bundled._session().verify == str(ca)
    assert unverified._session().verify is False


def test_factory_routes_http_urls_to_tus(tus_server: TusServer, make_cfg: Any, tmp_path: Path) -> None:
    from dockd.store.factory import open_store

    tf = tmp_path / "token"
    tf.write_text(tus_server.token or "")
    tf.chmod(0o600)
    prefix = tus_server.new_prefix()
    cfg = make_cfg(store=StoreConfig(url=tus_server.url, token_file=tf, prefix=prefix, chunk_size=64 * 1024))
    store = open_store(cfg)
    # store.prefix already heads the keys the pipeline makes (pipeline/naming.py)
    key = f"{prefix}/{KEY}"
    blob = make_blob(tmp_path, 200_000)
    put_one(store, key, blob, MemoryCheckpoint())
    assert verify_one(store, key, blob).sha256 == hashlib.sha256(blob.path.read_bytes()).hexdigest()
    assert [o.key for o in store.list(f"{prefix}/")] == [key]
    assert tus_server.info(key) is not None        # not prefixed a second time
    with store.open(key) as f:
        assert f.read() == blob.path.read_bytes()


def test_blob_metadata_may_not_impersonate_dockd_keys(tus_server: TusServer, tmp_path: Path) -> None:
    prefix = tus_server.new_prefix()
    blob = make_blob(tmp_path, 100, metadata={"dockd-key": "other/key"})
    with pytest.raises(PermanentStoreError, match="may not use"):
        put_one(store_for(tus_server, prefix), KEY, blob, MemoryCheckpoint())
    assert tus_server.uploads(prefix) == []
