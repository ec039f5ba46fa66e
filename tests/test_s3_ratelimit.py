"""The shared upload rate limit: token bucket, timetable, and the store wrapper."""

from __future__ import annotations

import threading
import time
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dockd.config import TimetableEntry, UploadConfig
from dockd.store.base import MemoryCheckpoint, put_one, verify_one
from dockd.store.dirstore import DirStore
from dockd.store.ratelimit import Period, RateLimiter, ThrottledStore
from dockd.store.s3 import S3Store
from store_conformance import KEY, make_blob

if TYPE_CHECKING:
    from servers import S3Endpoint

pytest_plugins = ["servers"]


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self, local: dtime = dtime(12, 0)) -> None:
        self.now = 0.0
        self.slept = 0.0
        self.local = local

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s

    def limiter(self, rate: int, timetable: tuple[Period, ...] = ()) -> RateLimiter:
        return RateLimiter(rate, timetable, clock=self.clock, sleep=self.sleep, local_time=lambda: self.local)


def test_bucket_holds_the_rate() -> None:
    t = FakeTime()
    lim = t.limiter(1000)
    lim.acquire(5000)
    assert t.slept == pytest.approx(5.0, abs=0.01)
    lim.acquire(500)
    assert t.slept == pytest.approx(5.5, abs=0.01)


def test_idle_time_earns_at_most_one_second_of_burst() -> None:
    t = FakeTime()
    lim = t.limiter(1000)
    lim.acquire(1000)
    t.now += 100                                   # idle for a long time
    before = t.slept
    lim.acquire(3000)
    assert t.slept - before == pytest.approx(2.0, abs=0.01)


def test_zero_means_unlimited() -> None:
    t = FakeTime()
    lim = t.limiter(0)
    lim.acquire(10**9)
    assert t.slept == 0 and not lim.is_limited


def test_timetable_picks_the_period_including_past_midnight() -> None:
    night = Period(dtime(22, 0), dtime(6, 0), 0)          # unlimited at night
    office = Period(dtime(8, 0), dtime(17, 30), 500)
    t = FakeTime(dtime(23, 30))
    lim = t.limiter(2000, (night, office))
    assert lim.rate_now() == 0
    t.local = dtime(5, 59)
    assert lim.rate_now() == 0
    t.local = dtime(6, 0)
    assert lim.rate_now() == 2000                          # the default between periods
    t.local = dtime(9, 0)
    assert lim.rate_now() == 500
    lim.acquire(1000)
    assert t.slept == pytest.approx(2.0, abs=0.01)
    t.local = dtime(23, 0)                                 # the period changes mid-upload
    before = t.slept
    lim.acquire(10**8)
    assert t.slept == before


def test_from_config() -> None:
    cfg = UploadConfig(rate_limit="1MiB", timetable=[
        TimetableEntry(start="07:00", end="19:00", rate_limit="256KiB")])
    lim = RateLimiter.from_config(cfg, local_time=lambda: dtime(8, 0))
    assert lim.default_rate == 1024 * 1024 and lim.rate_now() == 256 * 1024


def test_shared_across_threads() -> None:
    """Two uploads together get the one rate, not twice it."""
    lim = RateLimiter(400_000)
    t0 = time.monotonic()
    threads = [threading.Thread(target=lim.acquire, args=(200_000,)) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    assert 0.85 <= elapsed <= 2.0, elapsed


def test_throttled_dirstore(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    store = ThrottledStore(DirStore(root), RateLimiter(500_000))
    blob = make_blob(tmp_path, 400_000)
    t0 = time.monotonic()
    put_one(store, KEY, blob, MemoryCheckpoint())
    assert 0.7 <= time.monotonic() - t0 <= 2.0
    verify_one(store, KEY, blob)


def test_throttled_s3_multipart_counts_each_byte_once(moto_server: S3Endpoint, tmp_path: Path) -> None:
    """Hashing the spool is not throttled; only the bytes sent are."""
    bucket = moto_server.new_bucket()
    part = moto_server.min_part_size
    inner = S3Store(f"s3://{bucket}/e", **moto_server.store_kwargs(multipart_threshold=2 * part, part_size=part))
    inner.probe()
    store = ThrottledStore(inner, RateLimiter(400_000))
    blob = make_blob(tmp_path, 6 * part)             # 393,216 bytes, ~1 s at this rate
    t0 = time.monotonic()
    put_one(store, KEY, blob, MemoryCheckpoint())
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 1.8, elapsed
    verify_one(store, KEY, blob)


def test_wrap_for_config(tmp_path: Path) -> None:
    from dockd.store.ratelimit import wrap_for_config

    inner = DirStore(tmp_path)
    assert wrap_for_config(inner, UploadConfig()) is inner
    wrapped = wrap_for_config(inner, UploadConfig(timetable=[
        TimetableEntry(start="08:00", end="18:00", rate_limit="1MiB")]))
    assert isinstance(wrapped, ThrottledStore) and wrapped.unwrap() is inner
