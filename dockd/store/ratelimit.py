"""One upload rate limit shared by every upload, with an optional timetable.

A station on a thin link must not starve the police network during the day,
and may use all of it at night. ``RateLimiter`` is a token bucket shared by
all upload threads; the rate in force is looked up in the timetable (local
time of day) each time bytes are taken, so a change of period applies to
uploads already running.

Throttling happens where bytes leave for the network: a backend reads the
bytes it sends through ``blob.open()``. ``ThrottledStore`` hands the backend a
``ThrottledBlob`` whose ``open()`` returns a throttled reader; local hashing
passes that read ``blob.path`` directly are not throttled.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from .base import Blob, Item, ObjectInfo, Results, Store

# Most a single reservation can take at once, so that a change of timetable
# period or a competing upload is noticed within a fraction of a second.
MAX_GRANT = 64 * 1024

# How many seconds of tokens may accumulate while idle (the burst).
BURST_SECONDS = 1.0


@dataclass(frozen=True)
class Period:
    """``rate`` bytes/s (0 = unlimited) from ``start`` to ``end``, local time.

    ``end`` before ``start`` wraps past midnight (22:00-06:00).
    ``end == start`` means all day.
    """

    start: dtime
    end: dtime
    rate: int

    def contains(self, t: dtime) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


def _hhmm(s: str) -> dtime:
    h, m = s.split(":")
    return dtime(int(h), int(m))


class RateLimiter:
    """A thread-safe token bucket whose rate follows a timetable.

    ``acquire(n)`` blocks until ``n`` bytes may be sent. Reservations are
    taken in order under a lock and slept off outside it, so concurrent
    uploads share the rate roughly fairly. Clock, sleep and local time are
    arguments so tests need no patching.
    """

    def __init__(
        self,
        rate: int = 0,
        timetable: Iterable[Period] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        local_time: Callable[[], dtime] = lambda: datetime.now().time(),
    ) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.default_rate = rate
        self.timetable = tuple(timetable)
        self._clock = clock
        self._sleep = sleep
        self._local_time = local_time
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()
        self._last_rate: int | None = None

    @classmethod
    def from_config(cls, upload: Any, **kw: Any) -> "RateLimiter":
        """From ``UploadConfig`` (``rate_limit`` and ``timetable``)."""
        periods = [Period(_hhmm(e.start), _hhmm(e.end), int(e.rate_limit)) for e in upload.timetable]
        return cls(int(upload.rate_limit), periods, **kw)

    @property
    def is_limited(self) -> bool:
        return bool(self.default_rate) or any(p.rate for p in self.timetable)

    def rate_now(self) -> int:
        """Bytes/s in force now: the first timetable period that contains now, else the default."""
        t = self._local_time()
        for p in self.timetable:
            if p.contains(t):
                return p.rate
        return self.default_rate

    def acquire(self, n: int) -> None:
        """Block until ``n`` bytes may be sent."""
        while n > 0:
            take = min(n, MAX_GRANT)
            with self._lock:
                rate = self.rate_now()
                now = self._clock()
                if rate != self._last_rate:
                    # a new period starts with an empty bucket and no debt
                    self._tokens, self._last, self._last_rate = 0.0, now, rate
                if rate <= 0:
                    return
                burst = rate * BURST_SECONDS
                self._tokens = min(burst, self._tokens + (now - self._last) * rate)
                self._last = now
                self._tokens -= take
                wait = -self._tokens / rate if self._tokens < 0 else 0.0
            if wait > 0:
                self._sleep(wait)
            n -= take


class ThrottledReader:
    """A file wrapper whose ``read`` takes tokens from a shared ``RateLimiter``."""

    def __init__(self, raw: BinaryIO, limiter: RateLimiter) -> None:
        self._raw = raw
        self._limiter = limiter

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        out = []
        while size > 0:
            chunk = self._raw.read(min(size, MAX_GRANT))
            if not chunk:
                break
            self._limiter.acquire(len(chunk))
            out.append(chunk)
            size -= len(chunk)
        return b"".join(out)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def __enter__(self) -> "ThrottledReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ThrottledBlob(Blob):
    """A Blob whose ``open()`` is throttled by ``limiter``."""

    limiter: RateLimiter | None = None

    def open(self) -> BinaryIO:
        raw = open(self.path, "rb")
        if self.limiter is None:
            return raw
        return ThrottledReader(raw, self.limiter)  # type: ignore[return-value]

    @classmethod
    def wrap(cls, blob: Blob, limiter: RateLimiter) -> "ThrottledBlob":
        fields = {f.name: getattr(blob, f.name) for f in dataclasses.fields(Blob)}
        return cls(**fields, limiter=limiter)


class ThrottledStore(Store):
    """Wraps any backend so the bytes its ``put`` sends obey ``limiter``.

    Stack it inside ``RetryingStore`` (retries re-open the blob, which is
    throttled again). Everything else passes through.
    """

    def __init__(self, inner: Store, limiter: RateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter
        self.url = inner.url

    def put(self, items: Iterable[Item]) -> Results:
        if not self.limiter.is_limited:
            return self.inner.put(items)
        taken: list[Item] = []

        def throttled() -> Iterator[Item]:
            for item in items:
                taken.append(item)
                yield dataclasses.replace(item, blob=ThrottledBlob.wrap(item.blob, self.limiter))

        results = self.inner.put(throttled())
        # each result names the caller's item, not the throttled copy
        return Results([dataclasses.replace(r, item=i) for r, i in zip(results, taken)], results.batch_error)

    def verify(self, items: Iterable[Item]) -> Results:
        return self.inner.verify(items)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()

    def unwrap(self) -> Store:
        """The store this one wraps (which may be a wrapper too)."""
        return self.inner


def wrap_for_config(inner: Store, upload: Any) -> Store:
    """``inner`` throttled by ``UploadConfig.rate_limit``/``timetable``; unchanged when unlimited.

    Call once per process: the limiter it creates is the one all uploads share.
    """
    limiter = RateLimiter.from_config(upload)
    return ThrottledStore(inner, limiter) if limiter.is_limited else inner
