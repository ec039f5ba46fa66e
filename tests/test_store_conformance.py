"""The Store conformance suite, once per backend in ``STORE_BACKENDS``."""

from __future__ import annotations

from pathlib import Path

import pytest

from store_conformance import STORE_BACKENDS, BackendHandle, StoreConformance

pytest_plugins = ["servers", "tus_server"]


@pytest.fixture(params=list(STORE_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendHandle:
    handle = STORE_BACKENDS[request.param](request, tmp_path)
    yield handle
    handle.store.close()


class TestStoreConformance(StoreConformance):
    pass
