"""S3Store against real servers (moto, Swift+s3api), with faults injected by a proxy."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from dockd.config import StoreConfig
from dockd.errors import (
    ConfigError,
    IntegrityError,
    ObjectMissingError,
    PermanentStoreError,
    StoreAuthError,
    TransientStoreError,
)
from dockd.store.base import Blob, Item, MemoryCheckpoint, ObjectInfo, Results, Store, put_one, verify_one
from dockd.store.retry import RetryingStore, RetryPolicy
from dockd.store.s3 import (
    S3Store,
    choose_part_size,
    digest_file,
    part_ranges,
    resolve_credentials,
)
from faultproxy import FaultProxy
from store_conformance import KEY, CrashingCheckpoint, SimulatedCrash, make_blob, stat_of

if TYPE_CHECKING:
    from servers import S3Endpoint

pytest_plugins = ["servers"]


class Retries:
    """Records RetryingStore's on_retry calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, BaseException]] = []

    def __call__(self, what: str, attempt: int, exc: BaseException, wait: float) -> None:
        self.calls.append((what, attempt, exc))


class CountingStore(Store):
    """Counts how often each call reaches the backend (to assert retry counts)."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.calls = inner, {"put": 0, "list": 0}
        self.url = inner.url

    def put(self, items) -> Results:  # noqa: ANN001
        items = list(items)
        self.calls["put"] += len(items)
        return self.inner.put(items)

    def verify(self, items) -> Results:  # noqa: ANN001
        return self.inner.verify(items)

    def open(self, key: str):  # noqa: ANN201
        return self.inner.open(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        return self.inner.list(prefix)


class Proxied:
    def __init__(self, ep: S3Endpoint, **store_kw: Any) -> None:
        self.ep = ep
        self.bucket = ep.new_bucket()
        self.proxy = FaultProxy(ep.port)
        self.part = ep.min_part_size
        self.store_kw = dict(multipart_threshold=4 * self.part, part_size=self.part)
        self.store_kw.update(store_kw)
        self.store = self.make_store()

    def make_store(self, **kw: Any) -> S3Store:
        args = self.ep.store_kwargs(**{**self.store_kw, **kw})
        args["endpoint_url"] = self.proxy.url
        return S3Store(f"s3://{self.bucket}/evidence", **args)

    def uploads(self) -> list[dict[str, Any]]:
        return self.ep.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def objects(self) -> list[str]:
        r = self.ep.client().list_objects_v2(Bucket=self.bucket)
        return [o["Key"] for o in r.get("Contents", [])]

    def part_puts(self) -> list[int]:
        return [r.part_number for r in self.proxy.requests
                if r.method == "PUT" and r.part_number is not None and r.answered_by_proxy is None]


@pytest.fixture
def moto_proxied(moto_server: S3Endpoint) -> Iterator[Proxied]:
    p = Proxied(moto_server)
    yield p
    p.proxy.close()


@pytest.fixture
def swift_proxied(swift_server: S3Endpoint) -> Iterator[Proxied]:
    p = Proxied(swift_server)
    yield p
    p.proxy.close()


def retrying(store: Store, attempts: int = 5) -> tuple[RetryingStore, Retries]:
    rec = Retries()
    return RetryingStore(store, RetryPolicy.immediate(attempts), on_retry=rec), rec


# -- faults ------------------------------------------------------------------------

def test_reset_mid_part_is_retried_and_resumes(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    p.store.probe()
    p.proxy.reset_after(int(2.5 * p.part))          # in the middle of part 3
    store, rec = retrying(p.store)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert p.proxy.resets == 1
    assert len(rec.calls) == 1 and isinstance(rec.calls[0][2], TransientStoreError)
    verify_one(store, KEY, blob)
    puts = p.part_puts()
    assert puts.count(1) == 1 and puts.count(2) == 1, f"finished parts were sent again: {puts}"
    assert puts.count(3) == 2                        # the reset part, then its retry
    assert p.uploads() == [] and p.objects() == [f"evidence/{KEY}"]


def test_reset_during_single_put_is_retried(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 3 * p.part)          # below the multipart threshold
    p.store.probe()
    p.proxy.reset_after(p.part)
    store, rec = retrying(p.store)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert p.proxy.resets == 1 and len(rec.calls) == 1
    verify_one(store, KEY, blob)


@pytest.mark.parametrize("status", [503, 429, 500])
def test_slowdown_burst_is_retried(moto_proxied: Proxied, tmp_path: Path, status: int) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 5 * p.part)          # multipart: bursts hit parts too
    p.proxy.slowdown(3, status)
    store, rec = retrying(p.store)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert [r.answered_by_proxy for r in p.proxy.requests].count(status) == 3
    assert len(rec.calls) == 3
    assert all(isinstance(c[2], TransientStoreError) for c in rec.calls)
    verify_one(store, KEY, blob)
    assert p.uploads() == []


def test_slowdown_longer_than_the_policy_gives_up_transient(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    p.proxy.slowdown(100)
    store, rec = retrying(p.store, attempts=3)
    with pytest.raises(TransientStoreError):
        put_one(store, KEY, make_blob(tmp_path, 100), MemoryCheckpoint())
    assert len(rec.calls) == 2


def test_stalled_socket_times_out_as_transient(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    inner = CountingStore(p.make_store(timeout=0.5))
    p.proxy.stall()
    store, rec = retrying(inner, attempts=2)
    t0 = time.monotonic()
    with pytest.raises(TransientStoreError, match="(?i)timeout|timed out"):
        stat_of(store, KEY)
    assert time.monotonic() - t0 < 10
    assert inner.calls["list"] == 2 and len(rec.calls) == 1
    p.proxy.clear()
    assert stat_of(store, KEY) is None                  # and it works once the network is back


def test_outage_is_transient_and_recovers(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 1000)
    p.proxy.outage()
    with pytest.raises(TransientStoreError):
        put_one(p.store, KEY, blob, MemoryCheckpoint())
    p.proxy.clear()
    put_one(p.store, KEY, blob, MemoryCheckpoint())
    verify_one(p.store, KEY, blob)


def test_auth_error_from_proxy_is_not_retried(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    inner = CountingStore(p.store)
    p.proxy.slowdown(10, status=403)
    store, rec = retrying(inner)
    with pytest.raises(StoreAuthError):
        put_one(store, KEY, make_blob(tmp_path, 100), MemoryCheckpoint())
    assert inner.calls["put"] == 1 and rec.calls == []
    assert len(p.proxy.requests) == 1


def test_bad_credentials_on_swift_fail_once_as_auth(swift_proxied: Proxied, tmp_path: Path) -> None:
    p = swift_proxied
    from dockd.store.s3 import Credentials

    inner = CountingStore(p.make_store(credentials=Credentials("test:tester", "not-the-secret")))
    store, rec = retrying(inner)
    with pytest.raises(StoreAuthError):
        put_one(store, KEY, make_blob(tmp_path, 100), MemoryCheckpoint())
    assert inner.calls["put"] == 1 and rec.calls == []
    assert len(p.proxy.requests) == 1
    with pytest.raises(StoreAuthError):              # read paths classify the same
        stat_of(p.make_store(credentials=Credentials("nobody:none", "x")), KEY)


def test_missing_bucket_is_permanent(moto_server: S3Endpoint, tmp_path: Path) -> None:
    store = S3Store("s3://no-such-bucket-here/evidence", **moto_server.store_kwargs())
    with pytest.raises(PermanentStoreError, match="no such bucket") as ei:
        put_one(store, KEY, make_blob(tmp_path, 10), MemoryCheckpoint())
    assert not ei.value.retryable


# -- resume after a crash -----------------------------------------------------------

CHILD = textwrap.dedent("""\
    import json, os, sys, time
    from pathlib import Path
    from dockd.store.base import Blob, put_one
    from dockd.store.s3 import S3Store, Credentials

    args = json.loads(sys.argv[1])
    cp_path = Path(args["checkpoint"])

    class FileCheckpoint:
        # the ledger stands in: durable on return, then the test kills us
        def load(self):
            return json.loads(cp_path.read_text()) if cp_path.exists() else None
        def save(self, state):
            tmp = cp_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, cp_path)
            if len(state["parts"]) >= args["crash_after"]:
                print("parts-saved", flush=True)
                time.sleep(3600)
        def clear(self):
            cp_path.unlink(missing_ok=True)

    kw = args["store"]
    kw["credentials"] = Credentials(*kw["credentials"])
    store = S3Store(args["url"], **kw)
    b = args["blob"]
    put_one(store, args["key"], Blob(Path(b["path"]), b["size"], b["sha256"]), FileCheckpoint())
    print("finished", flush=True)
""")


def test_kill_9_mid_upload_then_resume_sends_only_missing_parts(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)   # 7 parts
    cp_path = tmp_path / "checkpoint.json"
    store_kw = p.ep.store_kwargs(**p.store_kw)
    store_kw["endpoint_url"] = p.proxy.url
    c = store_kw["credentials"]
    store_kw["credentials"] = [c.access_key_id, c.secret_access_key]
    args = {"checkpoint": str(cp_path), "crash_after": 3, "url": f"s3://{p.bucket}/evidence", "key": KEY,
            "store": store_kw, "blob": {"path": str(blob.path), "size": blob.size, "sha256": blob.sha256}}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE, text=True)
    try:
        said = []
        for line in child.stdout or []:        # log lines first, then our marker
            said.append(line)
            if line.strip() in ("parts-saved", "finished"):
                break
        assert said and said[-1].strip() == "parts-saved", f"child said {said!r}, exit {child.poll()}"
    finally:
        child.kill()                                  # SIGKILL: no cleanup runs
        child.wait()
    state = json.loads(cp_path.read_text())
    assert [x["n"] for x in state["parts"]] == [1, 2, 3]
    assert len(p.uploads()) == 1 and p.objects() == []

    # restart: a fresh store with the checkpoint the "ledger" kept
    p.proxy.clear_log()
    cp = MemoryCheckpoint(state)
    put_one(p.make_store(), KEY, blob, cp)
    reqs = p.proxy.requests
    assert any(r.method == "GET" and "uploadId" in r.query for r in reqs), "ListParts was not used"
    assert not any(r.method == "POST" and "uploads" in r.query for r in reqs), "a new upload was started"
    assert sorted(p.part_puts()) == [4, 5, 6, 7]
    sent = sum(r.body_sent for r in reqs if r.part_number is not None)
    assert sent == blob.size - 3 * p.part             # not restarted from byte zero
    assert cp.load() is None
    verify_one(p.store, KEY, blob)
    assert p.uploads() == [] and p.objects() == [f"evidence/{KEY}"]


def test_resume_reconciles_parts_the_checkpoint_missed(moto_proxied: Proxied, tmp_path: Path) -> None:
    """Crash after a part reached the server but before the checkpoint said so."""
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    cp = CrashingCheckpoint(parts=3)
    with pytest.raises(SimulatedCrash):
        put_one(p.store, KEY, blob, cp)
    state = cp.load()
    assert state is not None
    state["parts"] = state["parts"][:1]               # the ledger lags: it knows of part 1 only
    p.proxy.clear_log()
    put_one(p.make_store(), KEY, blob, MemoryCheckpoint(state))
    assert sorted(p.part_puts()) == [4, 5, 6, 7]      # ListParts said 2 and 3 were there
    verify_one(p.store, KEY, blob)
    assert p.uploads() == []


def test_permanent_failure_aborts_the_upload(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    cp = CrashingCheckpoint(parts=2)
    with pytest.raises(SimulatedCrash):
        put_one(p.store, KEY, blob, cp)
    assert len(p.uploads()) == 1
    # the spooled file is damaged before the restart: resuming must not complete
    data = bytearray(blob.path.read_bytes())
    data[-1] ^= 0xFF
    blob.path.write_bytes(bytes(data))
    with pytest.raises(PermanentStoreError):
        put_one(p.make_store(), KEY, blob, cp)
    assert cp.load() is None and p.uploads() == [] and p.objects() == []


class MutatingCheckpoint(MemoryCheckpoint):
    """Saves like the ledger; once ``after`` parts are up, changes the spooled file
    (a stray writer, a failing disk) while the upload goes on."""

    def __init__(self, path: Path, change: str, after: int = 1) -> None:
        super().__init__()
        self.path, self.change, self.after, self.changed = path, change, after, False

    def save(self, state: dict[str, Any]) -> None:
        super().save(state)
        if self.changed or len(state.get("parts", [])) < self.after:
            return
        self.changed = True
        if self.change == "flip":              # same size, a byte in a part not yet sent
            data = bytearray(self.path.read_bytes())
            data[-100] ^= 0xFF
            self.path.write_bytes(bytes(data))
        elif self.change == "truncate":
            os.truncate(self.path, self.path.stat().st_size - 1000)
        else:
            with open(self.path, "ab") as f:
                f.write(b"trailing bytes")


@pytest.mark.parametrize("change", ["flip", "truncate", "grow"])
@pytest.mark.parametrize("server", ["moto_server", "swift_server"])
def test_spool_file_changed_mid_upload_is_aborted_not_completed(
    server: str, change: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ep = request.getfixturevalue(server)
    part = ep.min_part_size
    bucket = ep.new_bucket()
    store, rec = retrying(S3Store(f"s3://{bucket}/e", **ep.store_kwargs(multipart_threshold=4 * part,
                                                                         part_size=part)))
    blob = make_blob(tmp_path, 6 * part + 1234)
    cp = MutatingCheckpoint(blob.path, change)
    with pytest.raises(IntegrityError, match="upload aborted|early") as ei:
        put_one(store, KEY, blob, cp)
    assert cp.changed and not ei.value.retryable and rec.calls == []
    c = ep.client()
    assert not c.list_objects_v2(Bucket=bucket).get("Contents")          # never completed
    assert not c.list_multipart_uploads(Bucket=bucket).get("Uploads")     # and its parts are gone
    assert cp.load() is None


class CountingReader:
    """A spool file opened through the blob, counting the bytes read from it."""

    def __init__(self, path: Path, counts: list[int]) -> None:
        self._f, self._counts = open(path, "rb"), counts

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._counts.append(len(data))
        return data

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        self._counts.append(n)
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "CountingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class CountingBlob(Blob):
    counts: list[int] = dataclasses.field(default_factory=list)

    def open(self) -> CountingReader:  # type: ignore[override]
        return CountingReader(self.path, self.counts)


@pytest.mark.parametrize("server", ["moto_server", "swift_server"])
def test_a_fresh_put_reads_the_spool_once_and_verify_reads_it_not_at_all(
    server: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dockd.store.s3.store as s3mod

    def no_pass_of_its_own(*a: Any, **kw: Any) -> None:
        raise AssertionError("the spooled file was hashed in a pass of its own")

    ep = request.getfixturevalue(server)
    part = ep.min_part_size
    store = S3Store(f"s3://{ep.new_bucket()}/e", **ep.store_kwargs(multipart_threshold=4 * part, part_size=part))
    monkeypatch.setattr(s3mod, "digest_file", no_pass_of_its_own)
    for name, size in (("small", part - 10), ("big", 6 * part + 1234)):
        b = make_blob(tmp_path, size, name)
        blob = CountingBlob(b.path, b.size, b.sha256, b.metadata)
        put_one(store, f"a/{name}.age", blob, MemoryCheckpoint())
        assert sum(blob.counts) == size, f"{name}: read {sum(blob.counts)} bytes of {size}"
        # verify proves it from the digest built while sending (with the per-part
        # SHA-256s where the server keeps checksums), not from the file
        blob.path.unlink()
        verify_one(store, f"a/{name}.age", blob)


def test_existing_object_is_not_uploaded_again(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    put_one(p.store, KEY, blob, MemoryCheckpoint())
    p.proxy.clear_log()
    put_one(p.make_store(), KEY, blob, MemoryCheckpoint())
    # nothing sent but the new store's probe (tagging a key that holds no object)
    assert [r.method for r in p.proxy.requests if r.method in ("PUT", "POST") and "tagging" not in r.query] == []


@pytest.mark.parametrize("server", ["moto_server", "swift_server"])
def test_new_bytes_go_straight_to_put_and_replace_what_is_under_the_key(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Spooled just now (Blob.new): no HEAD before the PUT, and an older object under
    the key (another spool's ciphertext of the same file) is replaced and proven."""
    ep = request.getfixturevalue(server)
    store = S3Store(f"s3://{ep.new_bucket()}/e", **ep.store_kwargs())
    put_one(store, "warm.age", make_blob(tmp_path, 10, "warm"), MemoryCheckpoint())   # probes done
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, event_name, **kw: sent.append(
        event_name.rsplit(".", 1)[-1]))
    old = make_blob(tmp_path, 1000, "old")
    put_one(store, "a/photo.age", old, MemoryCheckpoint())
    assert sent == ["HeadObject", "PutObject"]            # not new: looked for first
    sent.clear()
    fresh = make_blob(tmp_path, 1000, "fresh", new=True)
    put_one(store, "a/photo.age", fresh, MemoryCheckpoint())
    assert sent == ["PutObject"]
    verify_one(store, "a/photo.age", fresh)
    with pytest.raises(IntegrityError):
        verify_one(store, "a/photo.age", old)


# -- integrity details ------------------------------------------------------------------

def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


@pytest.mark.parametrize("server", ["moto_server", "swift_server"])
def test_bytes_are_bound_by_signed_content_md5_not_a_payload_hash(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Over plain http botocore would SHA-256 every body to sign it; the signed
    Content-MD5 binds the bytes instead, and both servers take UNSIGNED-PAYLOAD."""
    ep = request.getfixturevalue(server)
    part = ep.min_part_size
    store = S3Store(f"s3://{ep.new_bucket()}/e", **ep.store_kwargs(multipart_threshold=4 * part, part_size=part))
    put_one(store, "warm.age", make_blob(tmp_path, 10, "warm"), MemoryCheckpoint())   # learns checksum support
    seen: list[tuple[str, str, str, str]] = []

    def record(request: Any, event_name: str, **kw: Any) -> None:
        h = request.headers
        seen.append((event_name.rsplit(".", 1)[-1], _text(h.get("X-Amz-Content-SHA256")),
                     _text(h.get("Content-MD5")), _text(h.get("Authorization"))))

    store.client.meta.events.register("before-send.s3", record)
    small, big = make_blob(tmp_path, 1000, "small"), make_blob(tmp_path, 6 * part + 1234, "big")
    put_one(store, "a/small.age", small, MemoryCheckpoint())
    put_one(store, "a/big.age", big, MemoryCheckpoint())
    verify_one(store, "a/small.age", small)
    verify_one(store, "a/big.age", big)
    sent = [s for s in seen if s[0] in ("PutObject", "UploadPart")]
    assert [s[0] for s in sent] == ["PutObject"] + ["UploadPart"] * 7
    for _, payload, md5, auth in sent:
        assert payload == "UNSIGNED-PAYLOAD" and md5
        assert "content-md5" in auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")


def test_etag_and_checksum_proofs_on_moto(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    put_one(p.store, KEY, blob, MemoryCheckpoint())
    assert p.store.features.checksum is True
    head = p.ep.client().head_object(Bucket=p.bucket, Key=f"evidence/{KEY}", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"') == digest_file(blob.path, p.part).etag
    assert head.get("ChecksumSHA256")
    md = head["Metadata"]
    assert md["camera"] == "CAM-0001" and md["station"] == "dock-01" and md["dockd-sha256"] == blob.sha256
    # every request that carried bytes also carried its MD5
    # (checked by the server: a corrupted part would be refused with BadDigest)


def test_checksum_off_sends_none(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    store = p.make_store(checksum="off")
    blob = make_blob(tmp_path, 1000)
    put_one(store, KEY, blob, MemoryCheckpoint())
    head = p.ep.client().head_object(Bucket=p.bucket, Key=f"evidence/{KEY}", ChecksumMode="ENABLED")
    assert not head.get("ChecksumSHA256")
    assert store.features.checksum is False
    verify_one(store, KEY, blob)


def test_part_size_never_exceeds_part_count_limit() -> None:
    size = 200 * 1024**3
    ps = choose_part_size(size, 16 * 1024**2)
    assert len(part_ranges(size, ps)) <= 10_000
    assert ps % (1024 * 1024) == 0
    assert choose_part_size(size, 16 * 1024**2) == ps        # deterministic
    assert choose_part_size(100, 1, min_part_size=5 * 1024**2) == 5 * 1024**2
    assert len(part_ranges(10 * 1024**2, choose_part_size(10 * 1024**2, 1, 1, max_parts=3))) <= 3


def test_many_small_parts_respect_server_part_limit(moto_proxied: Proxied, tmp_path: Path) -> None:
    p = moto_proxied
    store = p.make_store(max_parts=3)
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert len(set(p.part_puts())) == 3
    verify_one(store, KEY, blob)


# -- object lock, legal hold, tags -----------------------------------------------------

@pytest.mark.parametrize("size_parts", [1, 6], ids=["single", "multipart"])
def test_object_lock_legal_hold_and_tags_on_moto(moto_server: S3Endpoint, tmp_path: Path, size_parts: int) -> None:
    bucket = moto_server.new_bucket(lock=True)
    part = moto_server.min_part_size
    store = S3Store(f"s3://{bucket}/evidence", **moto_server.store_kwargs(
        multipart_threshold=4 * part, part_size=part, object_lock_mode="GOVERNANCE", object_lock_days=2,
        legal_hold_flagged=True, tag_retention=True, retention_class="7y"))
    flagged = make_blob(tmp_path, size_parts * part + 10, "flagged", flagged=True)
    plain = make_blob(tmp_path, size_parts * part + 10, "plain")
    kf, kp = "dock-01/CAM-1/2024-05-01/flagged.age", "dock-01/CAM-1/2024-05-01/plain.age"
    put_one(store, kf, flagged, MemoryCheckpoint())
    put_one(store, kp, plain, MemoryCheckpoint())
    assert store.features.object_lock is True
    c = moto_server.client()
    # (HEAD, not GetObjectRetention: moto's server answers that one with a 500)
    heads = {k: c.head_object(Bucket=bucket, Key=f"evidence/{k}") for k in (kf, kp)}
    for key, head in heads.items():
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert abs(until - (datetime.now(timezone.utc) + timedelta(days=2))) < timedelta(hours=1)
    # each object is tagged with its own retention class: a lifecycle rule on the
    # configured one must never reach a flagged (evidential) recording
    tags = {k: c.get_object_tagging(Bucket=bucket, Key=f"evidence/{k}")["TagSet"] for k in (kf, kp)}
    assert tags[kf] == [{"Key": "retention-class", "Value": "evidential"}]
    assert tags[kp] == [{"Key": "retention-class", "Value": "7y"}]
    assert heads[kf].get("ObjectLockLegalHoldStatus") == "ON"
    assert heads[kp].get("ObjectLockLegalHoldStatus") in (None, "OFF")
    verify_one(store, kf, flagged)


def test_lock_configured_but_bucket_unlocked_is_refused(moto_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_server.new_bucket(lock=False)
    store = S3Store(f"s3://{bucket}/e", **moto_server.store_kwargs(object_lock_mode="COMPLIANCE",
                                                                   object_lock_days=1))
    with pytest.raises(PermanentStoreError, match="Object Lock disabled"):
        put_one(store, KEY, make_blob(tmp_path, 10), MemoryCheckpoint())


def test_unlocked_bucket_gets_no_legal_hold(moto_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_server.new_bucket(lock=False)
    store = S3Store(f"s3://{bucket}/e", **moto_server.store_kwargs())
    blob = make_blob(tmp_path, 100, flagged=True)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert store.features.object_lock is False
    verify_one(store, KEY, blob)


# -- Swift ----------------------------------------------------------------------------------

def test_swift_capabilities_detected_absent_and_paths_adapt(swift_proxied: Proxied, tmp_path: Path) -> None:
    p = swift_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234, flagged=True)
    small = make_blob(tmp_path, 500, "small", flagged=True)
    put_one(p.store, "a/small.age", small, MemoryCheckpoint())
    put_one(p.store, KEY, blob, MemoryCheckpoint())
    features = p.store.features
    assert features.checksum is False and features.object_lock is False
    head = p.ep.client().head_object(Bucket=p.bucket, Key=f"evidence/{KEY}")
    assert head["ETag"].strip('"') == digest_file(blob.path, p.part).etag   # the ETag proof applies
    assert head["Metadata"]["camera"] == "CAM-0001"
    verify_one(p.store, KEY, blob)
    verify_one(p.store, "a/small.age", small)
    # once learnt, the unsupported features are not offered again
    p.proxy.clear_log()
    put_one(p.store, "a/other.age", make_blob(tmp_path, 700, "other"), MemoryCheckpoint())
    assert all(r.answered_by_proxy is None for r in p.proxy.requests)
    assert [r.method for r in p.proxy.requests].count("PUT") == 1


@pytest.mark.parametrize("server", ["moto", "swift"])
def test_the_probe_learns_tagging_without_writing_or_refused_uploads(server: str, request: pytest.FixtureRequest,
                                                                      tmp_path: Path) -> None:
    """Tagging a key with no object tells a server with tagging (NoSuchKey) from one
    without (NotImplemented): no object is written, and the first upload is sent once,
    with tags only where they are kept."""
    p: Proxied = request.getfixturevalue(f"{server}_proxied")
    put_one(p.store, "a/first.age", make_blob(tmp_path, 500, "first"), MemoryCheckpoint())
    puts = [r for r in p.proxy.requests if r.method == "PUT"]
    assert [("tagging" in r.query) for r in puts] == [True, False]     # the probe, then one upload
    assert p.store.features.tagging is (server == "moto")
    assert p.objects() == ["evidence/a/first.age"]                      # the probe wrote nothing
    tags = p.ep.client().get_object_tagging(Bucket=p.bucket, Key="evidence/a/first.age")["TagSet"]
    assert tags == ([{"Key": "retention-class", "Value": "31d"}] if server == "moto" else [])


@pytest.mark.parametrize("code, message, kept", [
    ("NotImplemented", "The requested resource is not implemented", False),     # Swift: no tagging
    ("NotImplemented", "x-amz-checksum-crc32 is not implemented", True),        # the header, not tags
    ("InvalidArgument", "Unsupported header x-amz-sdk-checksum-algorithm", True),
    ("AccessDenied", "Access Denied", True),
])
def test_the_tagging_probe_gives_up_tags_only_when_tagging_is_refused(code: str, message: str,
                                                                      kept: bool) -> None:
    from botocore.exceptions import ClientError

    store = S3Store("s3://b/p", endpoint_url="http://127.0.0.1:1", region="us-east-1")

    def refuse(**kw: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": message}}, "PutObjectTagging")

    store.client.put_object_tagging = refuse
    store._probe_tagging()
    assert store.features.tagging is kept


def test_a_refused_listing_is_asked_once(tmp_path: Path) -> None:
    """Credentials without s3:ListBucket: the first batch's listing is refused (and
    said, by the uploader); later batches are proven by HEAD without asking again."""
    from botocore.exceptions import ClientError

    store = S3Store("s3://b/p", endpoint_url="http://127.0.0.1:1", region="us-east-1", checksum="off")
    calls: list[int] = []

    def refuse(**kw: Any) -> None:
        calls.append(1)
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")

    store.client.list_objects_v2 = refuse
    blobs = [make_blob(tmp_path, 100 + i, f"b{i}") for i in range(2)]
    for b in blobs:
        store._remember(digest_file(b.path, 0))
    items = [Item(f"a/{i}.age", b) for i, b in enumerate(blobs)]
    assert isinstance(store.verify(items).batch_error, StoreAuthError)
    assert store.verify(items).batch_error is None       # not listed again: a HEAD each
    assert calls == [1]


@pytest.mark.parametrize("server", ["moto", "swift"])
def test_one_listing_proves_a_batch_of_single_puts(server: str, request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    """verify reads size and ETag back for a batch of objects with one listing. It
    proves only what it can check as verify would: not a multipart object, not one
    replaced behind the store's back, not one gone; verify then says why."""
    p: Proxied = request.getfixturevalue(f"{server}_proxied")
    day = "st/CAM-1/2026-11-21"
    blobs = {f"{day}/IMG{i:03d}.age": make_blob(tmp_path, 700 + i, f"p{i}") for i in range(5)}
    big_key, big = f"{day}/IMG002-LONG.age", make_blob(tmp_path, 6 * p.part + 1, "big")
    if server == "moto":
        # a store that sends SHA-256 checksums the server keeps: a listing does not show
        # them and a HEAD does, so the HEAD proves each
        summed = p.make_store(checksum="sha256")
        two = list(blobs.items())[:2]
        for k, b in two:
            put_one(summed, k, b, MemoryCheckpoint())
        p.proxy.clear_log()
        assert all(r.ok for r in summed.verify([Item(k, b) for k, b in two]))
        assert not [r for r in p.proxy.requests if "list-type" in r.query]
    for k, b in [*blobs.items(), (big_key, big)]:
        put_one(p.store, k, b, MemoryCheckpoint())
    raw = p.ep.client()
    raw.put_object(Bucket=p.bucket, Key=f"evidence/{day}/IMG003.age", Body=b"x" * 703)   # same size
    raw.delete_object(Bucket=p.bucket, Key=f"evidence/{day}/IMG004.age")
    raw.put_object(Bucket=p.bucket, Key=f"evidence/{day}/IMG001.zzz", Body=b"not ours")  # listed between
    p.proxy.clear_log()
    results = p.store.verify([Item(k, b) for k, b in [*blobs.items(), (big_key, big)]])
    # one listing, then the tail of each object it proves read back; no HEAD for those
    sent = [(r.method, "list-type" in r.query) for r in p.proxy.requests]
    assert sent[:4] == [("GET", True)] + [("GET", False)] * 3 and sent.count(("GET", True)) == 1
    errors = {r.item.key: type(r.error) for r in results}
    assert errors == {f"{day}/IMG000.age": type(None), f"{day}/IMG001.age": type(None),
                      f"{day}/IMG002.age": type(None), f"{day}/IMG003.age": IntegrityError,
                      f"{day}/IMG004.age": ObjectMissingError, big_key: type(None)}
    p.proxy.clear_log()
    verify_one(p.store, f"{day}/IMG000.age", blobs[f"{day}/IMG000.age"])       # one: HEAD it
    assert not [r for r in p.proxy.requests if "list-type" in r.query]


@pytest.mark.parametrize("checksum", ["auto", "off"])
def test_concurrent_first_uploads_to_swift_all_learn_what_it_lacks(swift_server: S3Endpoint, tmp_path: Path,
                                                                    checksum: str) -> None:
    """Four first uploads are all sent with tagging (and a checksum) before any answer
    comes back; the ones refused after another taught the store are tried again too."""
    ep = swift_server
    part = ep.min_part_size
    store = S3Store(f"s3://{ep.new_bucket()}/e", **ep.store_kwargs(multipart_threshold=part, part_size=part,
                                                                   checksum=checksum))
    store.probe()
    store.features.tagging = True          # as if the probe had no answer: the uploads learn it
    together = threading.Barrier(4, timeout=10)
    held = []

    def hold(**kw: Any) -> None:
        if len(held) < 8:            # the first two rounds of CreateMultipartUpload go out together
            held.append(1)
            together.wait()

    new_client = store._new_client

    def hooked() -> Any:
        c = new_client()
        c.meta.events.register("before-send.s3.CreateMultipartUpload", hold)
        return c

    store._new_client = hooked
    store.client = hooked()
    blobs = [make_blob(tmp_path, 3 * part + 5, f"b{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda ib: put_one(store, f"a/{ib[0]}.age", ib[1], MemoryCheckpoint()), enumerate(blobs)))
    for i, b in enumerate(blobs):
        verify_one(store, f"a/{i}.age", b)
    assert store.features.checksum is False
    assert not ep.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_a_refusal_after_another_upload_learnt_is_still_retried() -> None:
    from botocore.exceptions import ClientError

    store = S3Store("s3://b/p", endpoint_url="http://127.0.0.1:1", region="us-east-1")
    tagging = ClientError({"Error": {"Code": "NotImplemented", "Message": "Object tagging is not supported."}},
                          "CreateMultipartUpload")
    assert store._may_retry_without(tagging, used_checksum=False, used_tagging=True)
    assert store._may_retry_without(tagging, used_checksum=False, used_tagging=True)   # was in flight
    assert not store._may_retry_without(tagging, used_checksum=False, used_tagging=False)
    checksum = ClientError({"Error": {"Code": "InvalidArgument", "Message": "x-amz-checksum-sha256"}}, "PutObject")
    assert store._may_retry_without(checksum, used_checksum=True, used_tagging=False)
    assert store._may_retry_without(checksum, used_checksum=True, used_tagging=False)  # was in flight
    assert not store._may_retry_without(checksum, used_checksum=False, used_tagging=False)
    forced = S3Store("s3://b/p", endpoint_url="http://127.0.0.1:1", region="us-east-1", checksum="sha256")
    assert not forced._may_retry_without(checksum, used_checksum=True, used_tagging=False)


def test_swift_reset_mid_part_is_retried(swift_proxied: Proxied, tmp_path: Path) -> None:
    p = swift_proxied
    blob = make_blob(tmp_path, 6 * p.part + 1234)
    put_one(p.store, "warmup.age", make_blob(tmp_path, 10, "w"), MemoryCheckpoint())
    p.proxy.reset_after(int(2.5 * p.part))
    store, rec = retrying(p.store)
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert p.proxy.resets == 1 and len(rec.calls) == 1
    verify_one(store, KEY, blob)
    assert p.uploads() == []


# -- configuration and credentials -------------------------------------------------------------

def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = s3cr3t\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="0644") as ei:
        resolve_credentials(f, environ={})
    assert "s3cr3t" not in str(ei.value)
    f.chmod(0o600)
    c = resolve_credentials(f, environ={})
    assert c is not None and (c.access_key_id, c.secret_access_key) == ("AKIDEXAMPLE", "s3cr3t")
    assert "s3cr3t" not in repr(c)


def test_credentials_key_value_file_and_systemd_directory(tmp_path: Path) -> None:
    f = tmp_path / "kv"
    f.write_text("# station credentials\naws_access_key_id=AK1\naws_secret_access_key = SK1\n")
    f.chmod(0o600)
    c = resolve_credentials(f, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "nope")})
    assert c is not None and (c.access_key_id, c.secret_access_key) == ("AK1", "SK1")

    d = tmp_path / "creds.d"
    d.mkdir()
    (d / "aws_access_key_id").write_text("AK2\n")
    (d / "aws_secret_access_key").write_text("SK2\n")
    c = resolve_credentials(None, environ={"CREDENTIALS_DIRECTORY": str(d)})
    assert c is not None and (c.access_key_id, c.secret_access_key) == ("AK2", "SK2")

    d2 = tmp_path / "creds2.d"
    d2.mkdir()
    (d2 / "s3-credentials").write_text("[dockd]\naws_access_key_id=AK3\naws_secret_access_key=SK3\n")
    c = resolve_credentials(None, environ={"CREDENTIALS_DIRECTORY": str(d2)})
    assert c is not None and c.access_key_id == "AK3"

    assert resolve_credentials(None, environ={}) is None      # boto3's own chain

    bad = tmp_path / "bad"
    bad.write_text("aws_access_key_id=AK\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="aws_secret_access_key"):
        resolve_credentials(bad, environ={})


def test_from_config_end_to_end(moto_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_server.new_bucket()
    f = tmp_path / "creds"
    f.write_text(f"aws_access_key_id={moto_server.access_key}\naws_secret_access_key={moto_server.secret_key}\n")
    f.chmod(0o600)
    cfg = StoreConfig(url=f"s3://{bucket}/site", prefix="evidence", endpoint_url=moto_server.endpoint_url,
                      region="us-east-1", addressing_style="path", credentials_file=f, timeout=5)
    store = S3Store.from_config(cfg, min_part_size=moto_server.min_part_size)
    assert store.prefix == "site"   # store.prefix heads the object keys themselves (naming.py)
    blob = make_blob(tmp_path, 1000)
    put_one(store, KEY, blob, MemoryCheckpoint())
    verify_one(store, KEY, blob)
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"site/{KEY}"]
    assert [o.key for o in store.list()] == [KEY]


def test_invalid_keys_are_refused(moto_server: S3Endpoint, tmp_path: Path) -> None:
    store = S3Store("s3://b/p", **moto_server.store_kwargs())
    for bad in ("", "../x", "a//b", "a/./b", "a\nb", "x" * 2000):
        with pytest.raises(PermanentStoreError):
            stat_of(store, bad)


def test_bad_url_and_lock_settings() -> None:
    from dockd.errors import UsageError

    with pytest.raises(UsageError):
        S3Store("https://bucket/x")
    with pytest.raises(ConfigError, match="object_lock_days"):
        S3Store("s3://b", object_lock_mode="GOVERNANCE")


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    store = S3Store("s3://b", endpoint_url="https://127.0.0.1:1", region="us-east-1")
    assert store.client._endpoint.http_session._verify is True
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    store = S3Store("s3://b", endpoint_url="https://127.0.0.1:1", region="us-east-1", ca_bundle=ca)
    assert store.client._endpoint.http_session._verify == str(ca)
    cfg = store.client.meta.config
    assert cfg.retries["total_max_attempts"] == 1        # RetryingStore is the only retry policy


# -- the channel: plain http only on loopback or when trusted, and always logged ----------

def _store_events(logs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["event"], e) for e in logs if e["event"] in ("store.plain_http", "store.tls_unverified")]


def test_plain_http_endpoint_off_loopback_is_refused_when_opened() -> None:
    from dockd.store.factory import open_backend

    with pytest.raises(ConfigError) as ei:
        S3Store("s3://b", endpoint_url="http://192.0.2.10:9000", region="us-east-1")
    assert ei.value.key == "store.endpoint_url" and "store.trust_plain_http" in str(ei.value)
    # a configuration built past validation (model_construct) is refused by the factory too
    from dockd.config import Config

    cfg = Config.model_construct(store=StoreConfig.model_construct(
        **{**StoreConfig().model_dump(), "url": "s3://evidence-bucket", "endpoint_url": "http://192.0.2.10:9000"}))
    with pytest.raises(ConfigError):
        open_backend(cfg)


def test_plain_http_on_loopback_is_accepted_and_logged_at_every_open(moto_server: S3Endpoint) -> None:
    from structlog.testing import capture_logs

    cfg = StoreConfig(url="s3://evidence-bucket", endpoint_url=moto_server.endpoint_url, region="us-east-1")
    with capture_logs() as logs:
        S3Store.from_config(cfg)
        S3Store.from_config(cfg)          # a second start (or a reload) says it again
    events = _store_events(logs)
    assert [name for name, _ in events] == ["store.plain_http"] * 2
    assert events[0][1]["loopback"] is True and events[0][1]["endpoint"] == moto_server.endpoint_url


def test_trust_plain_http_is_accepted_and_logged() -> None:
    from structlog.testing import capture_logs

    cfg = StoreConfig(url="s3://evidence-bucket", endpoint_url="http://192.0.2.10:9000", region="us-east-1",
                      trust_plain_http=True)
    with capture_logs() as logs:
        store = S3Store.from_config(cfg)      # construction sends nothing
    assert store.client.meta.endpoint_url == "http://192.0.2.10:9000"
    [(name, event)] = _store_events(logs)
    assert name == "store.plain_http" and event["loopback"] is False and event["store"] == "s3://evidence-bucket"


def test_https_logs_nothing_unless_tls_is_unverified() -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        S3Store("s3://b", endpoint_url="https://192.0.2.10:9000", region="us-east-1")
        S3Store("s3://b", region="us-east-1")                   # AWS's own endpoint
        unverified = S3Store("s3://b", region="us-east-1", verify_tls=False)
    assert [name for name, _ in _store_events(logs)] == ["store.tls_unverified"]
    assert unverified.client._endpoint.http_session._verify is False


# -- a lying store: what it proves is checked against what dockd sent ----------------------

@pytest.mark.parametrize("checksum", ["auto", "off"])
def test_a_store_that_keeps_less_and_echoes_what_was_sent_is_caught(
        moto_server: S3Endpoint, tmp_path: Path, checksum: str) -> None:
    """The server's HEAD (size, ETag, SHA-256 checksum) is its word, and a liar can echo
    Content-MD5 and x-amz-checksum-sha256 back. verify also reads back the object's
    tail, whose bytes and total size only the stored object can give."""
    from faultproxy import TruncatingProxy

    bucket = moto_server.new_bucket()
    with TruncatingProxy(moto_server.port, drop=1000) as liar:
        store = S3Store(f"s3://{bucket}/e", **moto_server.store_kwargs(endpoint_url=liar.url,
                                                                        checksum=checksum))
        blob = make_blob(tmp_path, 50_000)
        put_one(store, KEY, blob, MemoryCheckpoint())
        held = moto_server.client().head_object(Bucket=bucket, Key=f"e/{KEY}")["ContentLength"]
        assert held == blob.size - 1000                  # the store really kept less
        with pytest.raises(IntegrityError, match="tail"):
            verify_one(store, KEY, blob)
        assert liar.lies >= 1                            # and HEAD said it held it all
        with pytest.raises(IntegrityError):
            verify_one(RetryingStore(store, RetryPolicy.immediate(3)), KEY, blob)   # never retried into a pass


def test_a_listing_that_echoes_what_was_sent_proves_nothing(moto_server: S3Endpoint, tmp_path: Path) -> None:
    from faultproxy import TruncatingProxy

    bucket = moto_server.new_bucket()
    with TruncatingProxy(moto_server.port, drop=10) as liar:
        # without checksums (Swift, or checksum = "off") small objects are proven by a listing
        store = S3Store(f"s3://{bucket}/e", **moto_server.store_kwargs(endpoint_url=liar.url, checksum="off"))
        items = [(f"a/IMG{i}.age", make_blob(tmp_path, 3000 + i, f"b{i}")) for i in range(3)]
        for key, blob in items:
            put_one(store, key, blob, MemoryCheckpoint())
        liar.lies = 0
        results = store.verify([Item(k, b) for k, b in items])
        assert liar.lies >= 3                         # the listing did lie, for each of them
        for r in results:                             # and proved none: each verify caught it
            assert isinstance(r.error, IntegrityError) and "tail" in str(r.error)
