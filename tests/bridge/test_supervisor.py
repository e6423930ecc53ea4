"""The supervisor outlives its loops and tells the health registry."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from django.db import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.health import Health
from bridge.supervisor import HEALTHY_AFTER, Supervisor


async def test_a_failing_loop_is_restarted_and_reported() -> None:
    health = Health()
    supervisor = Supervisor("t", health=health, backoff_initial=0.01, backoff_max=0.02)
    calls = 0
    recovered = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("redis went away")
        recovered.set()
        await asyncio.Event().wait()

    supervisor.run("flaky", flaky, critical=True)
    await asyncio.wait_for(recovered.wait(), 2)
    assert calls == 3
    assert supervisor.stats["flaky"].failures == 2
    # Restarted after failures, it counts as recovered once it has kept running a while.
    assert not health.snapshot()["loop:t.flaky"].ok
    await asyncio.sleep(HEALTHY_AFTER + 0.1)
    assert health.snapshot()["loop:t.flaky"].ok
    await supervisor.stop()
    assert "loop:t.flaky" not in health.snapshot()


async def test_a_periodic_loop_keeps_its_schedule_after_failures() -> None:
    health = Health()
    supervisor = Supervisor("t", health=health, backoff_initial=0.01)
    runs: list[int] = []

    async def tick() -> None:
        runs.append(len(runs))
        if len(runs) == 2:
            raise TimeoutError("frozen")

    supervisor.every("tick", 0.02, tick, critical=True)
    while len(runs) < 2:
        await asyncio.sleep(0.005)
    # The failure shows until the next successful run.
    assert not health.ready() or len(runs) > 2
    while len(runs) < 5:
        await asyncio.sleep(0.005)
    assert health.ready()
    assert supervisor.stats["tick"].failures == 1
    await supervisor.stop()


@pytest.mark.parametrize(
    ("error", "traceback"),
    [(RedisConnectionError("Error 111 connecting"), False), (OperationalError("server closed"), False),
     (KeyError("a bug"), True)],
)
async def test_an_outage_is_one_line_and_a_bug_has_its_traceback(
    error: Exception, traceback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor("t", health=Health(), backoff_initial=0.01)
    failed = asyncio.Event()

    async def tick() -> None:
        failed.set()
        raise error

    supervisor.every("tick", 0.01, tick)
    await asyncio.wait_for(failed.wait(), 2)
    await asyncio.sleep(0.05)
    await supervisor.stop()
    lines = [r for r in caplog.records if "t.tick failed" in r.getMessage()]
    assert len(lines) == 1  # once per streak
    assert bool(lines[0].exc_info) is traceback


async def test_stop_cancels_again_a_loop_that_swallowed_its_cancellation() -> None:
    # What redis-py does to a blocking read cancelled as its reply arrives: the
    # cancellation is lost and the read goes on (a runmqtt hung on SIGTERM).
    supervisor = Supervisor("t", health=Health())
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    supervisor.run("stubborn", stubborn)
    await asyncio.sleep(0)
    task = supervisor._tasks["stubborn"]
    await asyncio.wait_for(supervisor.stop(grace=5), 4)
    assert swallowed == 1
    assert task.cancelled()


async def test_stop_ends_even_when_a_loop_never_does(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor("t", health=Health())

    async def immortal() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    supervisor.run("immortal", immortal)
    await asyncio.sleep(0)
    task = supervisor._tasks["immortal"]
    await asyncio.wait_for(supervisor.stop(grace=0.3), 2)
    assert not task.done()
    assert "t: immortal still running" in caplog.text
    task.get_coro().close()  # what asyncio.run would otherwise wait on forever


def test_health_logs_a_change_once_and_keeps_its_start() -> None:
    health = Health()
    health.failing("redis", ConnectionError("refused"))
    first = health.snapshot()["redis"].since
    health.failing("redis", ConnectionError("refused"))
    assert health.snapshot()["redis"].since == first
    body = health.as_json()
    assert body["status"] == "unavailable"
    health.ok("redis")
    assert health.as_json()["status"] == "ok"
    health.failing("janitor", "x", critical=False)
    assert health.ready()
