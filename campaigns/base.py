"""What every campaign returns, and the shared context (identity, moto, scratch space)."""

from __future__ import annotations

import collections
import concurrent.futures
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dockd.age import generate_identity

from .invariants import Invariants


@dataclass
class Result:
    name: str
    runs: int = 0
    faults: collections.Counter = field(default_factory=collections.Counter)
    violations: list[tuple[Any, str]] = field(default_factory=list)
    unfinished: list[tuple[Any, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seed: Any, faults: dict[str, int] | collections.Counter, violations: list[str],
            unfinished: str | None = None) -> None:
        with self._lock:
            self.runs += 1
            self.faults.update(faults)
            self.violations += [(seed, v) for v in violations]
            if unfinished:
                self.unfinished.append((seed, unfinished))

    def run_seeds(self, seeds: list[Any], run: Callable[[Any], tuple[Any, list[str], str | None]],
                  workers: int) -> None:
        """Run ``run(seed)`` -> (faults, violations, unfinished) for each seed on ``workers``
        threads (the schedules mostly wait on their child processes), adding each result;
        a harness error is reported as an unfinished run, never hidden."""
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futs = {pool.submit(run, s): s for s in seeds}
            for f in concurrent.futures.as_completed(futs):
                s = futs[f]
                try:
                    faults, violations, unfinished = f.result()
                except Exception as exc:  # noqa: BLE001
                    faults, violations, unfinished = {}, [], f"harness error: {exc!r}"
                self.add(s, faults, violations, unfinished)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unfinished and self.skipped is None


class Context:
    """Shared by the campaigns of one runner invocation."""

    def __init__(self, size: str, keep: bool = False) -> None:
        self.size = size
        self.large = size == "large"
        self.identity = generate_identity()
        self.pub = str(self.identity.public())
        self.invariants = Invariants([self.identity])
        self.tmp = Path(tempfile.mkdtemp(prefix="dockd-campaign-"))
        self.keep = keep
        self._moto: Any = None
        self._moto_proc: Any = None
        self._lock = threading.Lock()

    def scratch(self, name: str) -> Path:
        p = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp))
        return p

    def moto(self) -> Any:
        """A moto S3 server (tests/servers.py), started on first use."""
        with self._lock:
            if self._moto is None:
                from servers import start_moto

                self._moto, self._moto_proc = start_moto(self.scratch("moto"))
            return self._moto

    def s3_station_extra(self, ep: Any, bucket: str, root: Path, endpoint_url: str | None = None) -> tuple[str, str]:
        creds = root / "s3.cred"
        root.mkdir(parents=True, exist_ok=True)
        creds.write_text(f"[default]\naws_access_key_id = {ep.access_key}\naws_secret_access_key = {ep.secret_key}\n")
        creds.chmod(0o600)
        extra = (f'endpoint_url = "{endpoint_url or ep.endpoint_url}"\nregion = "{ep.region}"\n'
                 f'addressing_style = "path"\ncredentials_file = "{creds}"\n'
                 f'multipart_threshold = {ep.min_part_size}\npart_size = {ep.min_part_size}\n')
        return f"s3://{bucket}/site", extra

    def close(self) -> None:
        if self._moto_proc is not None:
            from servers import stop

            stop(self._moto_proc)
        if not self.keep:
            subprocess.run(["rm", "-rf", str(self.tmp)], check=False)   # deep trees: shutil.rmtree recurses


def timed(fn):  # noqa: ANN001, ANN201
    def wrapper(ctx: Context, *a: Any, **kw: Any) -> Result:
        t0 = time.monotonic()
        res = fn(ctx, *a, **kw)
        res.seconds = time.monotonic() - t0
        return res
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
