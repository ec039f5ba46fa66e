"""Upload: a shared pool, bounded and fair across cameras.

A recording is queued as soon as it is in the spool. Workers take cameras in
turn (round-robin), flagged recordings first, then oldest first. Each job
puts the spooled ciphertext through the retrying store, proves it with
``verify``, commits ``verified`` and only then drops the spool copy.

Small recordings travel in batches: a worker takes up to ``BATCH_FILES`` of
them from the front of one queue, puts them as one batch and proves them as
one (the store shares what it can: one flush, one listing), and commits the
proven ones' ``verified`` together, in one durable commit instead of one
fsync each. A large recording is a batch of its own.

What happens on failure is decided by what the error says to do:
* transient, attempts spent → ``failed`` with ``next_attempt_at`` from the
  one retry policy; a timer re-queues it;
* the store is full → the same, rescheduled with the capped backoff (never retried
  within the call: space comes back only when someone frees it), ``store.full``;
* auth refused → the whole queue pauses (``store.auth_failed``) and probes
  the store until it accepts us again; nothing is burned;
* the store's copy differs → delete it, retry the recording;
* the spool copy no longer matches its hash → back to ``found`` (re-copied
  while the camera is docked) or ``attention``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator

from .. import log
from ..errors import (
    DockdError,
    IntegrityError,
    ObjectMissingError,
    StoreAuthError,
    StoreFullError,
)
from ..ledger import Ledger, LedgerCheckpoint
from ..model import RecState, Recording
from ..store.base import Blob, Item, Store, sha256_file, verify_one
from ..store.retry import RetryPolicy
from .spool import GROUP_BYTES, GROUP_FILE_MAX, Spool

AUTH_PROBE_SECONDS = 15.0
BUG_RETRY_SECONDS = 30.0
# A batch: recordings up to the spool's small-file size, up to BATCH_FILES of them and
# the spool's group size in bytes. Small enough that four workers share a camera of
# a few hundred photos; large enough that the commit is paid once per many files.
BATCH_FILES = 32


@dataclass(frozen=True)
class _Proven:
    """A recording the store is proven to hold, waiting for its batch's commit."""

    rec: Recording
    lg: Any
    blob: Blob
    put: bool                 # put by this attempt: ``uploaded`` is committed with ``verified``
    proven: bool = True       # False: put (or found there), its proof still to come


class Uploader:
    def __init__(
        self,
        ledger: Ledger,
        store: Store,
        spool: Spool,
        policy: RetryPolicy,
        *,
        concurrency: int = 4,
        max_integrity_retries: int = 5,
        metadata: Callable[[Recording], dict[str, str]] = lambda r: {},
        is_docked: Callable[[str], bool] = lambda serial: False,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` schedules retries: monotonic, so a wall clock stepped back (NTP on a
        dock whose clock ran fast) delays nothing. The ledger's ``next_attempt_at`` is
        wall-clock time, for people and for status; nothing waits on it."""
        self.ledger = ledger
        self.store = store
        self.spool = spool
        self.policy = policy
        self.max_integrity_retries = max_integrity_retries
        self.metadata = metadata
        self.is_docked = is_docked
        self.log = logger or log.get()
        self._clock = clock
        # One lock, three conditions, so a wake-up reaches only who it concerns: workers
        # wait for work (_cv), sessions for recordings to settle (_idle), the timer for
        # its next round (_tick_cv). One shared condition woke every thread at every
        # finished upload: on a camera of small files, most of the CPU went to futexes.
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        self._idle = threading.Condition(lock)
        self._tick_cv = threading.Condition(lock)
        self._queues: dict[str, collections.deque[int]] = collections.OrderedDict()
        self._flagged: collections.deque[int] = collections.deque()
        self._queued: set[int] = set()
        self._sizes: dict[int, int] = {}      # queued id -> bytes, to cut batches
        self._fresh: set[int] = set()         # spooled just now: not at the store yet
        self._active: set[int] = set()
        self._delayed: dict[int, float] = {}  # id -> when its next attempt is due, on self._clock
        self._stopping = False
        self._auth_paused: str | None = None
        self._trouble: str | None = None      # "store.full" or "store.unreachable", once logged
        self.last_success: float | None = None
        self.store_ok: bool | None = None
        self.last_store_error: str | None = None
        self._workers = [threading.Thread(target=self._work, name=f"upload-{i}", daemon=True)
                         for i in range(concurrency)]
        self._timer = threading.Thread(target=self._tick, name="upload-timer", daemon=True)
        self._started = False
        self._local = threading.local()

    # -- public -------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            for w in self._workers:
                w.start()
            self._timer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let in-flight uploads finish (or hit ``timeout``); queued ones stay in the ledger."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            self._idle.notify_all()
            self._tick_cv.notify_all()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            if w.is_alive():
                w.join(max(0.0, deadline - time.monotonic()))

    def submit(self, rec: Recording, fresh: bool = False) -> None:
        """Queue ``rec``. ``fresh``: spooled just now, so the store cannot hold it yet;
        its first attempt skips the "already there?" round trip (the put itself
        still proves an object it finds under the key)."""
        with self._cv:
            if fresh:
                self._fresh.add(rec.id)
            if rec.id in self._queued or rec.id in self._active:
                return
            self._delayed.pop(rec.id, None)
            self._sizes[rec.id] = rec.cipher_size or rec.size
            if rec.flagged:
                self._flagged.append(rec.id)     # evidential footage jumps every camera's queue
            else:
                self._queues.setdefault(rec.serial, collections.deque()).append(rec.id)
            self._queued.add(rec.id)
            self._cv.notify()

    def submit_later(self, rec_id: int, delay: float) -> None:
        """Queue ``rec_id`` again ``delay`` seconds from now (on the monotonic clock)."""
        with self._cv:
            self._delayed[rec_id] = self._clock() + delay

    @property
    def paused(self) -> str | None:
        return self._auth_paused

    def snapshot(self) -> dict[str, Any]:
        with self._cv:
            return {
                "queued": len(self._queued),
                "active": len(self._active),
                "delayed": len(self._delayed),
                "paused": self._auth_paused,
                "store_reachable": self.store_ok,
                "last_store_error": self.last_store_error,
                "last_success": self.last_success,
            }

    def busy_ids(self) -> set[int]:
        """Recordings queued or uploading right now."""
        with self._cv:
            return self._queued | self._active

    def active_ids(self) -> set[int]:
        """Recordings a worker holds right now (not those waiting in a queue)."""
        with self._cv:
            return set(self._active)

    def delayed_ids(self) -> set[int]:
        """Recordings waiting for their next attempt."""
        with self._cv:
            return set(self._delayed)

    def wait_idle(self, rec_ids: Iterable[int], timeout: float | None = None) -> bool:
        """Block until none of ``rec_ids`` is queued or uploading (delayed ones count as idle)."""
        ids = set(rec_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            # isdisjoint walks the smaller set and stops at the first hit: this runs at
            # every finished upload, and a camera of 10,000 photos must not make it O(n²)
            while not (ids.isdisjoint(self._queued) and ids.isdisjoint(self._active)):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.5 if left is None else min(left, 0.5))
        return True

    # -- machinery ------------------------------------------------------------

    def _next(self) -> list[int] | None:
        """The next batch. Flagged recordings first (any camera, in order); then
        round-robin over cameras, each camera's own queue oldest first (the spool order)."""
        with self._cv:
            while True:
                if self._stopping:
                    return None
                if self._flagged and not self._auth_paused:
                    return self._take(self._flagged)
                if self._queues and not self._auth_paused:
                    serial, q = next(iter(self._queues.items()))
                    batch = self._take(q)
                    del self._queues[serial]
                    if q:
                        self._queues[serial] = q     # to the back: the next camera goes next
                    return batch
                self._cv.wait(1.0)

    def _take(self, q: collections.deque[int]) -> list[int]:
        """The front of ``q`` and, if it is small, the small ones right behind it
        (the caller holds the lock)."""
        batch = [q.popleft()]
        total = self._sizes.pop(batch[0])
        if total <= GROUP_FILE_MAX:
            while q and len(batch) < BATCH_FILES:
                size = self._sizes[q[0]]
                if size > GROUP_FILE_MAX or total + size > GROUP_BYTES:
                    break
                batch.append(q.popleft())
                total += self._sizes.pop(batch[-1])
        self._queued.difference_update(batch)
        self._active.update(batch)
        return batch

    def _done(self, rec_ids: list[int]) -> None:
        with self._cv:
            self._active.difference_update(rec_ids)
            self._idle.notify_all()

    def _tick(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                now = self._clock()
                # one still in a worker's batch (failed early in it) waits for the batch to
                # end: submit() ignores a busy recording, and it would be in no queue at all
                due = [r for r, t in self._delayed.items() if t <= now and r not in self._active]
                for r in due:
                    del self._delayed[r]
            for r in due:
                try:
                    self.submit(self.ledger.get(r))
                except DockdError:
                    pass
            if self._auth_paused:
                self._probe_auth()
            with self._cv:
                self._tick_cv.wait(AUTH_PROBE_SECONDS if self._auth_paused else 1.0)

    def _probe_auth(self) -> None:
        try:
            list(self.store.list("__dockd_probe__/"))
        except StoreAuthError:
            return
        except DockdError:
            return
        with self._cv:
            self._auth_paused = None
            self._cv.notify_all()
        log.emit(self.log, "store.resumed", store=self.store.url)

    def _work(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            try:
                self.upload_batch(batch)
            except Exception as exc:  # a bug must not kill the pool
                for rec_id in batch:
                    self._bug(rec_id, exc)
            finally:
                self._done(batch)

    def _bug(self, rec_id: int, exc: BaseException) -> None:
        """A bug must not kill the pool: logged loudly, and the recording tried again later."""
        log.emit(self.log, "upload.bug", recording_id=rec_id, error=str(exc), exc_info=exc)
        self.submit_later(rec_id, BUG_RETRY_SECONDS)   # never strand it

    def upload_batch(self, rec_ids: list[int]) -> None:
        """Upload and prove each recording, then commit the proven ones together.
        Idempotent: may be called again after a crash.

        The store is given the batch's puts as one lazy batch: each recording is read
        from the ledger just before its put (a re-dock may have flagged it since the
        batch began), and one it holds already is not given it. Then one ``verify``
        proves what was put or found there."""
        proven: list[_Proven] = []
        seen: list[_Proven] = []           # put, or found at the store: to be proven, in order
        given: dict[str, _Proven] = {}     # key -> a recording whose put the store was given
        left = collections.deque(rec_ids)
        self._local.lgs = {}

        def items() -> Iterator[Item]:
            while left:
                rec_id = left.popleft()
                if self._stopping:
                    left.clear()           # the rest stay spooled in the ledger for the next start
                    return
                if self._auth_paused:
                    self.submit_later(rec_id, 0.0)   # back in line once resumed
                    continue
                try:
                    got = self._attempt(self.ledger.get(rec_id))
                except Exception as exc:
                    self._bug(rec_id, exc)
                    continue
                if not isinstance(got, _Proven):
                    continue
                if got.proven:
                    proven.append(got)
                    continue
                seen.append(got)
                if got.put:
                    key = got.rec.object_key or ""
                    given[key] = got
                    self._local.lg = self._local.lgs[key] = got.lg
                    yield Item(key, got.blob, LedgerCheckpoint(self.ledger, got.rec.id))

        results = self.store.put(items())
        refused = {r.item.key for r in results if not r.ok}
        unflushed = [given[r.item.key] for r in results if r.error is not None and r.error is results.batch_error]
        if unflushed:                      # what this batch put did not land: tried again
            log.emit(self.log, "upload.batch_flush_failed", camera=unflushed[0].rec.serial,
                     recordings=[p.rec.name for p in unflushed], error=str(results.batch_error))
        for r in results:
            if r.error is not None:
                p = given[r.item.key]
                self._store_failed(p.rec, p.lg, p.blob, r.error)
        for rec_id in left:                # not taken: the store refused our credentials
            self.submit_later(rec_id, 0.0)
        sent = [p for p in seen if not (p.put and p.rec.object_key in refused)]
        proven.extend(self._prove(sent))
        self._settle(proven)

    def _attempt(self, rec: Recording) -> RecState | _Proven:
        """One recording, up to its put: a ``_Proven`` to put (``put``), one the
        store holds already (not ``proven`` yet: the batch proves it), or one proven
        already (its spool copy is gone, the store had it). Failures are handled here."""
        lg = self.log.bind(camera=rec.serial, recording=rec.name, sha256=rec.plain_sha256)
        with self._cv:
            fresh = rec.id in self._fresh
            self._fresh.discard(rec.id)
        if rec.state in (RecState.VERIFIED, RecState.WIPED, RecState.ATTENTION):
            return rec.state
        if not rec.spool_path or not rec.object_key or rec.cipher_sha256 is None:
            return rec.state  # not spooled yet
        path = self.spool.path_for(rec.id)
        blob = Blob(path, int(rec.cipher_size or 0), rec.cipher_sha256, self.metadata(rec), rec.flagged,
                    new=fresh)
        key = rec.object_key

        if not path.exists():
            # Crash after the store had it? Then it may already be verifiable there.
            try:
                verify_one(self.store, key, blob)
            except DockdError:
                return self._back_to_found(rec, lg, "spool copy missing")
            return _Proven(rec, lg, blob, put=False)

        self._local.lg = self._local.lgs[key] = lg
        try:
            log.emit(lg, "upload.started", key=key, size=blob.size)
            put = fresh or not self._already_there(key, blob)
        except DockdError as exc:
            return self._store_failed(rec, lg, blob, exc)
        return _Proven(rec, lg, blob, put, proven=False)

    def _prove(self, sent: list[_Proven]) -> list[_Proven]:
        """``verify`` the recordings put (or found at the store) by this batch, in one
        batch: those proven. A recording the store took but could not prove is on
        record as ``uploaded`` before its failure is handled."""
        if not sent:
            return []
        try:
            results = self.store.verify([Item(p.rec.object_key or "", p.blob) for p in sent])
        except Exception as exc:
            for p in sent:
                self._bug(p.rec.id, exc)
            return []
        if results.batch_error is not None:     # each was proven alone instead, with retries
            log.emit(self.log, "upload.list_proof_failed", camera=sent[0].rec.serial,
                     recordings=[p.rec.name for p in sent], error=str(results.batch_error))
        proven = []
        for p, r in zip(sent, results):
            if r.ok:
                proven.append(replace(p, proven=True))
                continue
            rec, lg = p.rec, p.lg
            assert r.error is not None
            try:
                if p.put:       # the store took it, unproven: on record before what follows
                    rec = self.ledger.transition(rec.id, RecState.UPLOADED, event="upload.uploaded")
                    log.emit(lg, "upload.uploaded", key=rec.object_key)
                self._store_failed(rec, lg, p.blob, r.error)
            except Exception as exc:
                self._bug(rec.id, exc)
        return proven

    def _store_failed(self, rec: Recording, lg: Any, blob: Blob, exc: DockdError) -> RecState:
        """What a store error in a put or a proof means for the recording."""
        if isinstance(exc, StoreAuthError):
            with self._cv:
                first = self._auth_paused is None
                self._auth_paused = str(exc)
            self.store_ok = False
            self.last_store_error = str(exc)
            if first:
                log.emit(lg, "store.auth_failed", store=self.store.url, error=str(exc))
            self.submit_later(rec.id, 0.0)   # back in line once resumed
            return rec.state
        if isinstance(exc, IntegrityError):
            return self._integrity(rec, lg, blob, exc)
        if not isinstance(exc, ObjectMissingError):
            self._store_trouble(exc)
        return self._failed(rec, lg, exc)

    def _store_trouble(self, exc: DockdError) -> None:
        """Note a store error for status, and log once each time the store turns
        unreachable (a transient error) or full; the next verified upload clears it."""
        full = isinstance(exc, StoreFullError)
        kind = "store.full" if full else "store.unreachable" if exc.retryable else None
        with self._cv:
            first = kind is not None and self._trouble != kind
            self._trouble = kind or self._trouble
            if exc.retryable and not full:      # a full store answers: it is reachable
                self.store_ok = False
            self.last_store_error = str(exc)
        if first:
            log.emit(self.log, kind, store=self.store.url, error=str(exc))

    def on_store_retry(self, op: str, attempt: int, exc: BaseException, wait: float) -> None:
        """Hook for ``RetryingStore``: runs in the worker's thread, so it knows the
        recording (by the key in ``op``, "put KEY")."""
        lgs = getattr(self._local, "lgs", None) or {}
        lg = lgs.get(op.partition(" ")[2]) or getattr(self._local, "lg", None) or self.log
        log.emit(lg, "upload.retry", attempt=attempt, wait=round(wait, 2), error=str(exc), op=op)

    def _already_there(self, key: str, blob: Blob) -> bool:
        try:
            verify_one(self.store, key, blob)
            return True
        except (ObjectMissingError, IntegrityError):
            return False

    def _settle(self, proven: list[_Proven]) -> None:
        """``verified`` for all of ``proven`` (and ``uploaded`` before it, for what was
        put just now) with their resume states cleared: one durable commit. Only then
        are their spool copies dropped. If the batch cannot commit, each is tried alone,
        so one bad row holds back no other."""
        if not proven:
            return
        try:
            with self.ledger.tx(durable=True):
                for p in proven:
                    if p.put:
                        self.ledger.transition(p.rec.id, RecState.UPLOADED, event="upload.uploaded")
                    self.ledger.transition(p.rec.id, RecState.VERIFIED, event="upload.verified")
                    self.ledger.checkpoint_clear(p.rec.id)
        except Exception as exc:
            if len(proven) == 1:
                self._bug(proven[0].rec.id, exc)
                return
            for p in proven:
                self._settle([p])
            return
        with self._cv:
            self.store_ok = True
            self._trouble = None
        self.last_success = time.time()
        for p in proven:
            if p.put:
                log.emit(p.lg, "upload.uploaded", key=p.rec.object_key)
            log.emit(p.lg, "upload.verified", key=p.rec.object_key, size=p.blob.size)
            try:
                self.spool.remove(p.rec.id)
            except OSError as exc:     # verified all the same; the next start removes it
                log.emit(p.lg, "spool.remove_failed", error=str(exc))

    def _failed(self, rec: Recording, lg: Any, exc: DockdError, limit: int | None = None) -> RecState:
        """Record a failed round. Transient errors are retried for as long as it
        takes (an outage may last hours; the backoff is capped by the policy);
        permanent ones, or more than ``limit`` rounds, wait for a human."""
        attempts = rec.attempts + 1
        if not exc.retryable or (limit is not None and attempts >= limit):
            self.ledger.transition(rec.id, RecState.FAILED, event="upload.failed", error=str(exc),
                                   count_attempt=True, next_attempt_at=None)
            log.emit(lg, "upload.failed", attempts=attempts, next_attempt_in=None, error=str(exc))
            return RecState.FAILED
        wait = self.policy.delay(attempts)
        self.ledger.transition(rec.id, RecState.FAILED, event="upload.failed", error=str(exc),
                               count_attempt=True, next_attempt_at=time.time() + wait)
        log.emit(lg, "upload.failed", attempts=attempts, next_attempt_in=round(wait, 1), error=str(exc))
        self.submit_later(rec.id, wait)
        return RecState.FAILED

    def _integrity(self, rec: Recording, lg: Any, blob: Blob, exc: IntegrityError) -> RecState:
        # Whose copy is wrong? Ours, if the spool file no longer has its recorded hash.
        try:
            local = sha256_file(blob.path)
        except OSError:
            local = None
        if local != blob.sha256:
            self.spool.remove(rec.id)
            self.store.delete(rec.object_key or "")
            log.emit(lg, "recording.spool_corrupt", error="spool copy fails its hash")
            return self._back_to_found(rec, lg, "spool copy corrupt")
        log.emit(lg, "upload.integrity_failed", key=rec.object_key, error=str(exc))
        try:
            self.store.delete(rec.object_key or "")
        except DockdError:
            pass
        self.ledger.checkpoint_clear(rec.id)
        return self._failed(rec, lg, _Retry(str(exc)), limit=self.max_integrity_retries)

    def _back_to_found(self, rec: Recording, lg: Any, why: str) -> RecState:
        """The spool copy is lost or bad: copy again from the camera if it is here."""
        if self.is_docked(rec.serial):
            self.ledger.transition(rec.id, RecState.FOUND, event="recording.spool_corrupt", error=why,
                                   spool_path=None, cipher_sha256=None, cipher_size=None)
            return RecState.FOUND
        self.ledger.transition(rec.id, RecState.ATTENTION, event="recording.attention",
                               error=f"{why}; camera not docked: re-dock it to copy again",
                               spool_path=None, cipher_sha256=None, cipher_size=None)
        log.emit(lg, "recording.attention", error=why)
        return RecState.ATTENTION


class _Retry(DockdError):
    """An integrity mismatch at the store: worth another full upload."""

    msgid = "store.integrity_failed"
    retryable = True
