"""Shared fixtures. Servers are started per test session on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Proc, redis_server


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_proc(service_dir: Path) -> Iterator[Proc]:
    proc = redis_server(service_dir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_proc: Proc) -> str:
    return str(redis_proc.extra["url"])
