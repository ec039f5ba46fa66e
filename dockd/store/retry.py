"""The one retry policy, and the one wrapper that applies it to a Store.

Backends only classify their errors (``DockdError.retryable``); this module
alone decides whether and when to try again. The same ``RetryPolicy`` also
computes a recording's ``next_attempt_at`` once the in-call attempts are spent,
so there is one notion of backoff in the whole program.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

import tenacity

from ..errors import DockdError
from .base import Item, ObjectInfo, Result, Results, Store

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Worth another try within the same call (a full store is rescheduled instead)."""
    return isinstance(exc, DockdError) and exc.retryable and exc.retry_in_call


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped.

    ``attempts`` counts tries within one call. ``initial`` and ``maximum`` are
    seconds. A zero-wait policy for tests is ``RetryPolicy(initial=0, maximum=0)``,
    passed in, never patched in.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    @classmethod
    def immediate(cls, attempts: int = 5) -> "RetryPolicy":
        return cls(attempts=attempts, initial=0.0, maximum=0.0)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        exponent = min(max(0, attempt - 1), 64)    # recordings retry for as long as an outage lasts
        cap = min(self.maximum, self.initial * self.multiplier ** exponent)
        return (rng or random).uniform(cap / 2, cap) if cap > 0 else 0.0

    def call(
        self,
        fn: Callable[[], T],
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """Run ``fn``; retry it while it raises retryable errors."""

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            if on_retry is not None and rs.outcome is not None:
                exc = rs.outcome.exception()
                assert exc is not None
                wait = rs.next_action.sleep if rs.next_action else 0.0
                on_retry(rs.attempt_number, exc, wait)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=lambda rs: self.delay(rs.attempt_number),
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)


class RetryingStore(Store):
    """Wraps a store with the retry policy.

    In a batch, each item whose error is worth another try is tried again, alone
    with the others that are, after the policy's wait; the rest keep their first
    result. An item a batch's shared step took down (``Results.batch_error``) is
    not tried again here. ``put`` rewinds by re-opening the blob.
    """

    def __init__(
        self,
        inner: Store,
        policy: RetryPolicy,
        on_retry: Callable[[str, int, BaseException, float], None] | None = None,
    ) -> None:
        """``on_retry(op, attempt, error, wait)``, with ``op`` the verb and the key ("put KEY")."""
        self.inner = inner
        self.policy = policy
        self.url = inner.url
        self._on_retry = on_retry

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        def hook(attempt: int, exc: BaseException, wait: float) -> None:
            if self._on_retry:
                self._on_retry(f"{op} {key}", attempt, exc, wait)

        return self.policy.call(fn, hook)

    def _batch(self, op: str, items: Iterable[Item], run: Callable[[Iterable[Item]], Results],
               again: Callable[[Item], Item] = lambda item: item) -> Results:
        results: list[Result] = []
        todo: list[int] = []
        batch_error = None

        def worth_again(r: Result, shared: BaseException | None) -> bool:
            return r.error is not None and r.error is not shared and is_retryable(r.error)

        def attempt() -> list[int]:
            nonlocal todo, batch_error
            if not results and not todo:            # the first: the items as the caller gives them
                got = run(items)
                results.extend(got)
                todo = list(range(len(results)))
            else:
                got = run([again(results[i].item) for i in todo])
                for i, r in zip(todo, got):
                    results[i] = r
            batch_error = got.batch_error or batch_error
            todo = [i for i, r in zip(todo, got) if worth_again(r, got.batch_error)]
            return todo

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            wait = rs.next_action.sleep if rs.next_action else 0.0
            for i in todo:
                if self._on_retry:
                    self._on_retry(f"{op} {results[i].item.key}", rs.attempt_number, results[i].error, wait)

        tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.attempts),
            wait=lambda rs: self.policy.delay(rs.attempt_number),
            retry=tenacity.retry_if_result(bool),
            before_sleep=before_sleep,
            retry_error_callback=lambda rs: None,       # attempts spent: the last results stand
            reraise=True,
        )(attempt)
        return Results(results, batch_error)

    def put(self, items: Iterable[Item]) -> Results:
        # a retry may follow a put that landed with its answer lost: the bytes are no
        # longer new, so the backend looks before sending them again (Blob.new)
        return self._batch("put", items, self.inner.put,
                           lambda item: replace(item, blob=replace(item.blob, new=False)))

    def verify(self, items: Iterable[Item]) -> Results:
        return self._batch("verify", items, self.inner.verify)

    def open(self, key: str) -> BinaryIO:
        return self._call("open", key, lambda: self.inner.open(key))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix))))

    def close(self) -> None:
        self.inner.close()

    def unwrap(self) -> Store:
        """The store this one wraps (which may be a wrapper too)."""
        return self.inner
