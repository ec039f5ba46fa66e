"""Real S3 servers on loopback for the tests, started once per session.

* ``moto_server``: moto's standalone server (``python -m moto.server``) in a
  subprocess. Its minimum multipart part size is lowered (moto reads
  ``S3_UPLOAD_PART_MIN_SIZE``) so tests can use small parts.
* ``swift_server``: OpenStack Swift (account, container, object, proxy) with
  the s3api middleware in front of tempauth, one-device rings on a plain
  directory, memcached. Path-style; access key ``test:tester``, secret
  ``testing``. Skipped, with the reason, only when the swift binaries are
  absent.

Load with ``pytest_plugins = ["servers"]`` (a test module or the root
conftest). Each server is a ``S3Endpoint``; ``new_bucket()`` gives each test
its own bucket so tests never see each other's objects.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config as BotoConfig

# Smallest multipart part the test servers accept (S3 itself: 5 MiB).
TEST_MIN_PART = 64 * 1024
SWIFT_START_TIMEOUT = 30.0
MOTO_START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, deadline: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in time")


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class S3Endpoint:
    """A running S3 API endpoint and what a client needs to reach it."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    min_part_size: int = TEST_MIN_PART
    max_parts: int = 10_000
    has_object_lock: bool = True      # server implements Object Lock
    has_checksums: bool = True        # server implements x-amz-checksum-*
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def client(self, endpoint_url: str | None = None):  # noqa: ANN201
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self, lock: bool = False) -> str:
        name = f"t-{uuid.uuid4().hex[:20]}"
        kw: dict[str, Any] = {}
        if lock:
            kw["ObjectLockEnabledForBucket"] = True
        self.client().create_bucket(Bucket=name, **kw)
        return name

    def store_kwargs(self, **kw: Any) -> dict[str, Any]:
        """Keyword arguments for ``S3Store`` pointing at this server."""
        from dockd.store.s3 import Credentials

        base: dict[str, Any] = dict(
            endpoint_url=self.endpoint_url,
            region=self.region,
            addressing_style="path",
            credentials=Credentials(self.access_key, self.secret_key),
            min_part_size=self.min_part_size,
            max_parts=self.max_parts,
            timeout=10.0,
        )
        base.update(kw)
        return base


# -- moto ------------------------------------------------------------------------

def start_moto(workdir: Path) -> tuple[S3Endpoint, subprocess.Popen]:
    port = free_port()
    env = dict(os.environ, S3_UPLOAD_PART_MIN_SIZE=str(TEST_MIN_PART), MOTO_CALL_RESET_API="false")
    for k in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(k, None)
    log = workdir / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        wait_tcp(port, time.monotonic() + MOTO_START_TIMEOUT, proc, "moto")
    except Exception:
        stop(proc)
        raise
    ep = S3Endpoint("moto", f"http://127.0.0.1:{port}", "testing", "testing", logs={"moto": log})
    return ep, proc


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    ep, proc = start_moto(tmp_path_factory.mktemp("moto"))
    yield ep
    stop(proc)


# -- swift -----------------------------------------------------------------------

SWIFT_BINARIES = ("swift-ring-builder", "swift-proxy-server", "swift-account-server",
                  "swift-container-server", "swift-object-server")


def swift_missing() -> str | None:
    missing = [b for b in SWIFT_BINARIES if shutil.which(b) is None]
    if missing:
        return "OpenStack Swift is not installed (missing " + ", ".join(missing) + \
            "; apt-get install swift swift-proxy swift-account swift-container swift-object memcached)"
    return None


def _swift_confs(d: Path, ports: dict[str, int], user: str) -> None:
    devices = d / "srv"
    (devices / "d1").mkdir(parents=True)
    common = f"""\
        [DEFAULT]
        swift_dir = {d}
        devices = {devices}
        mount_check = false
        user = {user}
        workers = 0
        log_level = WARNING
        log_address = {d}/no-syslog
        """
    (d / "swift.conf").write_text(textwrap.dedent("""\
        [swift-hash]
        swift_hash_path_suffix = dockd-tests
        swift_hash_path_prefix = dockd-tests
        [storage-policy:0]
        name = Policy-0
        default = yes
        """))
    for svc in ("account", "container", "object"):
        (d / f"{svc}-server.conf").write_text(textwrap.dedent(common) + textwrap.dedent(f"""\
            bind_ip = 127.0.0.1
            bind_port = {ports[svc]}
            [pipeline:main]
            pipeline = {svc}-server
            [app:{svc}-server]
            use = egg:swift#{svc}
            [{svc}-replicator]
            [{svc}-auditor]
            [{svc}-updater]
            """))
    (d / "proxy-server.conf").write_text(textwrap.dedent(common) + textwrap.dedent(f"""\
        bind_ip = 127.0.0.1
        bind_port = {ports["proxy"]}
        [pipeline:main]
        pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server
        [app:proxy-server]
        use = egg:swift#proxy
        account_autocreate = true
        [filter:s3api]
        use = egg:swift#s3api
        location = us-east-1
        dns_compliant_bucket_names = true
        min_segment_size = {TEST_MIN_PART}
        [filter:tempauth]
        use = egg:swift#tempauth
        user_test_tester = testing .admin
        [filter:cache]
        use = egg:swift#memcache
        memcache_servers = 127.0.0.1:{ports["memcached"]}
        [filter:catch_errors]
        use = egg:swift#catch_errors
        [filter:gatekeeper]
        use = egg:swift#gatekeeper
        [filter:healthcheck]
        use = egg:swift#healthcheck
        [filter:proxy-logging]
        use = egg:swift#proxy_logging
        [filter:listing_formats]
        use = egg:swift#listing_formats
        [filter:copy]
        use = egg:swift#copy
        [filter:slo]
        use = egg:swift#slo
        [filter:dlo]
        use = egg:swift#dlo
        """))


def _build_rings(d: Path, ports: dict[str, int]) -> None:
    for svc in ("account", "container", "object"):
        builder = str(d / f"{svc}.builder")
        for args in (["create", "2", "1", "1"],
                     ["add", f"r1z1-127.0.0.1:{ports[svc]}/d1", "1"],
                     ["rebalance"]):
            r = subprocess.run(["swift-ring-builder", builder, *args], capture_output=True, text=True)
            if r.returncode not in (0, 1):  # 1 = warnings
                raise RuntimeError(f"swift-ring-builder {svc} {args[0]} failed: {r.stdout}{r.stderr}")


def start_swift(d: Path) -> tuple[S3Endpoint, list[subprocess.Popen]]:
    import getpass

    ports = {k: free_port() for k in ("account", "container", "object", "proxy", "memcached")}
    _swift_confs(d, ports, getpass.getuser())
    _build_rings(d, ports)
    procs: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}
    try:
        if shutil.which("memcached"):
            logs["memcached"] = d / "memcached.log"
            procs.append(subprocess.Popen(
                ["memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0", "-m", "16",
                 *(["-u", "root"] if os.geteuid() == 0 else [])],
                stdout=open(logs["memcached"], "wb"), stderr=subprocess.STDOUT,
            ))
        for svc in ("account", "container", "object", "proxy"):
            logs[svc] = d / f"{svc}.log"
            procs.append(subprocess.Popen(
                [f"swift-{svc}-server", str(d / f"{svc}-server.conf"), "--verbose"],
                stdout=open(logs[svc], "wb"), stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        deadline = time.monotonic() + SWIFT_START_TIMEOUT
        for svc, proc in zip(("account", "container", "object", "proxy"), procs[-4:]):
            wait_tcp(ports[svc], deadline, proc, f"swift-{svc}-server (log {logs[svc]})")
        ep = S3Endpoint(
            "swift", f"http://127.0.0.1:{ports['proxy']}", "test:tester", "testing",
            max_parts=1000, has_object_lock=False, has_checksums=False, logs=logs,
        )
        # the proxy listens before tempauth/s3api answer reliably; wait for a signed call
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                ep.client().list_buckets()
                return ep, procs
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"swift s3api did not answer in time: {last}")
    except Exception:
        for p in procs:
            stop(p)
        raise


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    reason = swift_missing()
    if reason:
        pytest.skip(reason)
    # a short path: swift keeps unix sockets and lock files under its dirs
    d = Path(tempfile.mkdtemp(prefix="dockd-swift-"))
    try:
        ep, procs = start_swift(d)
    except Exception:
        shutil.rmtree(d, ignore_errors=True)
        raise
    yield ep
    for p in reversed(procs):
        stop(p)
    shutil.rmtree(d, ignore_errors=True)
