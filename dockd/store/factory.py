"""Build the configured store, wrapped in the one retry policy."""

from __future__ import annotations

from typing import Callable

from ..config import Config
from ..errors import ConfigError
from .base import Store
from .dirstore import DirStore
from .retry import RetryingStore, RetryPolicy


def policy_for(cfg: Config) -> RetryPolicy:
    u = cfg.upload
    return RetryPolicy(attempts=u.attempts, initial=u.backoff_initial, maximum=u.backoff_max)


def open_backend(cfg: Config) -> Store:
    url = cfg.store.url
    if url.startswith("file://"):
        return DirStore.from_url(url)
    if url.startswith("s3://"):
        from .s3 import S3Store

        return S3Store.from_config(cfg.store)
    if url.startswith(("https://", "http://")):
        from .tus import TusStore

        return TusStore.from_config(cfg.store)
    raise ConfigError("store.url", f"unsupported scheme in {url!r}")


def open_store(
    cfg: Config,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[str, int, BaseException, float], None] | None = None,
    backend: Store | None = None,
) -> RetryingStore:
    inner = backend or open_backend(cfg)
    try:
        from .ratelimit import wrap_for_config  # global rate limit + timetable, when configured
    except ImportError:
        wrap_for_config = None
    if wrap_for_config is not None:
        inner = wrap_for_config(inner, cfg.upload)
    return RetryingStore(inner, policy or policy_for(cfg), on_retry)
