"""Shared fixtures. Servers are started per test session on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import postgres_server
from tests.support.processes import Proc, redis_server


@pytest.fixture(autouse=True)
def _layer_failures_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel-layer failure makes this process skip the layer for a few seconds
    (bridge.layer.SKIP_AFTER_FAILURE): one test's simulated outage must not silence the
    fan-out of the tests after it."""
    from bridge import layer

    monkeypatch.setattr(layer, "_last_failure", -layer.SKIP_AFTER_FAILURE)


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


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on a SQLite file and on a real PostgreSQL server of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
        return
    proc = postgres_server(tmp_path)
    try:
        yield str(proc.extra["url"])
    finally:
        proc.stop()
        shutil.rmtree(str(proc.extra["cleanup"]), ignore_errors=True)
