"""The official tus server (``tests/tus-server``) on loopback, for tests.

``start_tus_server`` runs ``node tests/tus-server/server.mjs`` with its own
data directory and request log; the session fixture ``tus_server`` is one
such server with a bearer token and the checksum extension on. The
conformance suite registers ``tus_backend``: each test gets its own key
prefix on the shared server, so tests never see each other's objects.

Needs ``node`` (>= 20.19) and the packages from ``npm install`` in
``tests/tus-server`` (``scripts/setup.sh --test`` does it; the fixture runs
``npm ci`` itself if they are missing). Without node the tests skip.

(PYTEST_DONT_REWRITE: test modules import this before pytest loads it as a
plugin; it has no asserts to rewrite.)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

TUS_SERVER_DIR = Path(__file__).resolve().parent / "tus-server"
START_TIMEOUT = 20.0
# Small chunks so a test-sized object takes several PATCHes (the default is 8 MiB).
TEST_CHUNK = 64 * 1024


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm); the tus tests need the official Node tus server"
    return None


def ensure_packages() -> None:
    if (TUS_SERVER_DIR / "node_modules" / "@tus" / "server").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("tests/tus-server has no node_modules and npm is missing; run scripts/setup.sh --test")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=TUS_SERVER_DIR, check=True)


@dataclass
class TusServer:
    """A running tus server and the back doors tests need."""

    url: str                     # the tus endpoint, e.g. http://127.0.0.1:PORT/files/
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    token: str | None = None
    token_file: Path | None = None
    checksum: bool = True
    stdout: Path | None = None

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    def requests(self, since: int = 0, settle: float = 0.0) -> list[dict[str, Any]]:
        """The server's request log from entry ``since`` on, oldest first.

        The server writes an entry when a response has gone out, so a client
        may be done before its last entries are; ``settle`` waits until the
        log has been quiet that long."""
        def read() -> list[str]:
            if not self.log_path.exists():
                return []
            return [line for line in self.log_path.read_text().splitlines() if line.strip()]

        lines = read()
        if settle:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(settle)
                now = read()
                if len(now) == len(lines):
                    break
                lines = now
        return [json.loads(line) for line in lines[since:]]

    def info(self, full_key: str) -> dict[str, Any] | None:
        """The file store's record of ``full_key``'s upload, with its offset on disk."""
        uid = hashlib.sha256(full_key.encode()).hexdigest()
        try:
            rec = json.loads((self.data_dir / f"{uid}.json").read_text())
            rec["offset"] = (self.data_dir / uid).stat().st_size
        except FileNotFoundError:
            return None
        return rec

    def settled_offset(self, full_key: str, quiet: float = 0.3, limit: float = 10.0) -> int | None:
        """The upload's offset once the server has stopped writing (after a reset,
        it may still be flushing what reached it)."""
        deadline = time.monotonic() + limit
        last = self.info(full_key)
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.info(full_key)
            if now == last:
                break
            last = now
        return None if last is None else last["offset"]

    def raw_put(self, full_key: str, data: bytes) -> None:
        """Replace an upload's bytes (and recorded length) behind the client's back."""
        uid = hashlib.sha256(full_key.encode()).hexdigest()
        rec = json.loads((self.data_dir / f"{uid}.json").read_text())
        (self.data_dir / uid).write_bytes(data)
        rec["size"] = len(data)
        (self.data_dir / f"{uid}.json").write_text(json.dumps(rec))

    def uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        out = []
        for f in sorted(self.data_dir.glob("*.json")):
            rec = json.loads(f.read_text())
            key = (rec.get("metadata") or {}).get("dockd-key", "")
            if key.startswith(prefix):
                data = self.data_dir / f.stem
                rec["offset"] = data.stat().st_size if data.exists() else None
                out.append(rec)
        return out

    def leftovers(self, prefix: str = "") -> list[str]:
        """Unfinished uploads under ``prefix``, and data files without a record."""
        bad = [f"unfinished {r['metadata'].get('dockd-key')} {r.get('offset')}/{r.get('size')}"
               for r in self.uploads(prefix) if r.get("offset") != r.get("size")]
        if not prefix:
            bad += [f"orphan {p.name}" for p in self.data_dir.iterdir()
                    if p.suffix != ".json" and not p.with_name(p.name + ".json").exists()]
        return bad

    def new_prefix(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"

    def store_kwargs(self, **kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict(token=self.token, chunk_size=TEST_CHUNK, timeout=10.0)
        base.update(kw)
        return base

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_tus_server(workdir: Path, *, token: str | None = None, checksum: bool = True,
                     max_size: int = 0) -> TusServer:
    ensure_packages()
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TUS_PORT="0", TUS_DIR=str(workdir / "data"), TUS_LOG=str(workdir / "requests.jsonl"),
               TUS_CHECKSUM="1" if checksum else "0", TUS_MAX_SIZE=str(max_size))
    token_file = None
    if token is not None:
        token_file = workdir / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        env["TUS_TOKEN_FILE"] = str(token_file)
    out = workdir / "stdout.log"
    proc = subprocess.Popen(["node", "server.mjs"], cwd=TUS_SERVER_DIR, env=env,
                            stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace") if out.exists() else ""
        if text.startswith("listening "):
            port = int(text.split()[1])
            return TusServer(f"http://127.0.0.1:{port}/files/", workdir / "data", workdir / "requests.jsonl",
                             proc, token, token_file, checksum, out)
        if proc.poll() is not None:
            raise RuntimeError(f"tus server exited with {proc.returncode}: {text[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"tus server did not start in {START_TIMEOUT}s (log {out})")


@pytest.fixture(scope="session")
def tus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TusServer]:
    """One tus server for the session: bearer token required, checksum extension on."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    server = start_tus_server(tmp_path_factory.mktemp("tus"), token=secrets.token_urlsafe(24))
    yield server
    server.stop()


def tus_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The conformance suite's ``tus`` entry: a fresh key prefix on the session server."""
    from store_conformance import BackendHandle

    from dockd.store.tus import TusStore

    server: TusServer = request.getfixturevalue("tus_server")
    prefix = server.new_prefix()

    def make() -> TusStore:
        return TusStore(server.url, prefix=prefix, **server.store_kwargs())

    return BackendHandle(
        "tus", make, 6 * TEST_CHUNK + 1234,
        lambda key, data: server.raw_put(f"{prefix}/{key}", data),
        lambda: server.leftovers(prefix + "/"),
        resumable=True,
    )
