"""Background loops that keep running: every task a process starts is kept here and watched.

`Supervisor.run(name, factory)` keeps a long-running coroutine alive: when it
raises, the failure is logged (once per streak), reported to `HEALTH` as
`loop:<name>`, and the coroutine is started again after a back-off that
doubles up to `backoff_max`. `Supervisor.every(name, interval, func)` runs
`func` every `interval` seconds the same way; the next run is scheduled by the
supervisor itself, never through a channel-layer message that can be lost.

    supervisor = Supervisor("worker")
    supervisor.every("reconcile", 30, reconcile_once)
    ...
    await supervisor.stop()   # cancels every loop and waits for them (bounded)

Nothing here swallows `CancelledError`: stopping is always possible.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.health import HEALTH, Health

logger = logging.getLogger(__name__)

# A dependency away (Redis, the database, a socket): an outage, said in one line with its
# error. Anything else is a bug of the loop and is logged with its traceback.
DEPENDENCY_AWAY = (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError,
                   OperationalError, InterfaceError)
HEALTHY_AFTER = 1.0  # seconds a restarted loop must keep running to count as recovered
STOP_GRACE = 10.0  # seconds `stop` waits for its loops to end
RECANCEL_AFTER = 1.0  # seconds after which a loop that has not ended is cancelled again


@dataclass
class LoopStats:
    runs: int = 0
    failures: int = 0
    last_ok: float | None = None
    last_error: str = ""


class Supervisor:
    def __init__(
        self,
        name: str,
        *,
        health: Health = HEALTH,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.name = name
        self.health = health
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.stats: dict[str, LoopStats] = {}

    def _check(self, loop: str) -> str:
        return f"loop:{self.name}.{loop}"

    def run(
        self,
        loop: str,
        factory: Callable[[], Awaitable[None]],
        *,
        critical: bool = False,
    ) -> asyncio.Task[None]:
        """Keep `factory()` running; restart it with back-off whenever it returns or raises."""
        return self._start(loop, self._keep_running(loop, factory, critical))

    def every(
        self,
        loop: str,
        interval: float,
        func: Callable[[], Awaitable[None]],
        *,
        first_delay: float = 0.0,
        critical: bool = False,
    ) -> asyncio.Task[None]:
        """Run `func()` now (after `first_delay`) and then every `interval` seconds."""
        return self._start(loop, self._periodic(loop, interval, func, first_delay, critical))

    def _start(self, loop: str, coro: Awaitable[None]) -> asyncio.Task[None]:
        if loop in self._tasks and not self._tasks[loop].done():
            raise RuntimeError(f"loop {loop!r} of {self.name} is already running")
        self.stats[loop] = LoopStats()
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}.{loop}")
        self._tasks[loop] = task
        return task

    def running(self, loop: str) -> bool:
        task = self._tasks.get(loop)
        return task is not None and not task.done()

    async def _keep_running(
        self, loop: str, factory: Callable[[], Awaitable[None]], critical: bool
    ) -> None:
        delay = self.backoff_initial
        stats = self.stats[loop]
        streak = 0
        while True:
            started = time.monotonic()
            try:
                await self._run_once(loop, factory, critical, healthy_now=streak == 0)
                stats.runs += 1
                logger.warning("%s.%s returned; starting it again", self.name, loop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a supervisor outlives its loops
                stats.failures += 1
                streak += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                self.health.failing(self._check(loop), stats.last_error, critical=critical)
                # Once per streak at WARNING (a 30 s Redis outage is one line, not twenty).
                logger.log(
                    logging.WARNING if streak == 1 else logging.DEBUG,
                    "%s.%s failed (%s); restarting in %.1f s",
                    self.name,
                    loop,
                    stats.last_error,
                    delay,
                    exc_info=stats.failures == 1 and not isinstance(exc, DEPENDENCY_AWAY),
                )
            if time.monotonic() - started > 60:
                delay = self.backoff_initial  # it ran for a while: a fresh failure, not a streak
                streak = 0
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _run_once(
        self,
        loop: str,
        factory: Callable[[], Awaitable[None]],
        critical: bool,
        *,
        healthy_now: bool,
    ) -> None:
        """Run the loop once. After a failure it counts as healthy again only once it has
        kept running for HEALTHY_AFTER seconds, so /readyz (and the log) do not flap
        between "recovered" and "failing" while a dependency is still away."""
        if healthy_now:
            self.health.ok(self._check(loop), critical=critical)
            await factory()
            return
        task = asyncio.ensure_future(factory())
        try:
            done, _ = await asyncio.wait({task}, timeout=HEALTHY_AFTER)
            if not done:
                self.health.ok(self._check(loop), critical=critical)
            await task
        finally:
            task.cancel()

    async def _periodic(
        self,
        loop: str,
        interval: float,
        func: Callable[[], Awaitable[None]],
        first_delay: float,
        critical: bool,
    ) -> None:
        stats = self.stats[loop]
        streak = 0
        if first_delay:
            await asyncio.sleep(first_delay)
        while True:
            try:
                await func()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next run may succeed
                streak += 1
                stats.failures += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                self.health.failing(self._check(loop), stats.last_error, critical=critical)
                if streak == 1:
                    logger.warning("%s.%s failed: %s", self.name, loop, stats.last_error,
                                   exc_info=not isinstance(exc, DEPENDENCY_AWAY))
                wait = min(self.backoff_initial * 2 ** (streak - 1), self.backoff_max, interval)
            else:
                streak = 0
                stats.runs += 1
                stats.last_ok = time.time()
                self.health.ok(self._check(loop), critical=critical)
                wait = interval
            await asyncio.sleep(wait)

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Cancel every loop and wait for them to end, at most `grace` seconds.

        A loop still running a second after its cancel is cancelled again: a library
        can swallow one cancellation (redis-py does, for a blocking command cancelled
        as its reply arrives: redis/redis-py#2028), and a process that waits on that
        loop never stops (a `runmqtt` hung on SIGTERM this way). One still running
        after `grace` is logged and left behind, so stopping always ends.
        """
        tasks = {loop: task for loop, task in self._tasks.items() if not task.done()}
        deadline = time.monotonic() + grace
        while tasks:
            for task in tasks.values():
                task.cancel()
            left = deadline - time.monotonic()
            if left <= 0:
                logger.error("%s: %s still running %.0f s after being cancelled; left behind",
                             self.name, ", ".join(sorted(tasks)), grace)
                break
            await asyncio.wait(tasks.values(), timeout=min(RECANCEL_AFTER, left))
            tasks = {loop: task for loop, task in tasks.items() if not task.done()}
        for loop, task in self._tasks.items():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a loop's last failure is already logged
            self.health.forget(self._check(loop))
        self._tasks.clear()
