"""Shared fixtures: a throwaway station (keys, spool, file:// store) and fixture cameras."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from dockd import log
from dockd.age import generate_identity
from dockd.config import (
    Config,
    DevicesConfig,
    EncryptionConfig,
    PathsConfig,
    SpoolConfig,
    StoreConfig,
    UploadConfig,
    WipeConfig,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CAMERA = REPO / "fixtures" / "cameras" / "BWC0001"


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    log.configure("warning", "json")


@pytest.fixture
def logs() -> Any:
    """The JSON log lines written so far (level info and up), as dicts."""
    buf = io.StringIO()
    log.configure("info", "json", stream=buf)
    yield lambda: [json.loads(x) for x in buf.getvalue().splitlines() if x.startswith("{")]
    log.configure("warning", "json")


@pytest.fixture(scope="session")
def identity() -> Any:
    return generate_identity()


@pytest.fixture
def make_cfg(tmp_path: Path, identity: Any) -> Callable[..., Config]:
    def make(**sections: Any) -> Config:
        base = dict(
            paths=PathsConfig(state_dir=tmp_path / "state", spool_dir=tmp_path / "state" / "spool",
                              runtime_dir=tmp_path / "run"),
            encryption=EncryptionConfig(recipients=[str(identity.public())]),
            store=StoreConfig(url=f"file://{tmp_path / 'store'}"),
            devices=DevicesConfig(inbox_dir=tmp_path / "inbox", mount_dir=tmp_path / "mnt"),
            upload=UploadConfig(concurrency=2, attempts=3, backoff_initial=0, backoff_max=0),
            spool=SpoolConfig(min_free=0),
            wipe=WipeConfig(after="verified"),
        )
        base.update(sections)
        return Config(**base)

    return make


@pytest.fixture
def camera(tmp_path: Path) -> Path:
    """A fresh copy of the fixture camera (the wipe deletes from it)."""
    dest = tmp_path / "cams" / "BWC0001"
    shutil.copytree(FIXTURE_CAMERA, dest)
    return dest
