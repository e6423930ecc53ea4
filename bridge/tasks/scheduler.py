"""The worker's task loop: run what is due when woken, and again when the next task falls due.

One per worker process, under its `Supervisor`. A wake-up (a `tasks.wake`
message, the reconciler) only sets an event; the loop itself sleeps until the
next pending task is due or the next running task's lease runs out (its worker
may have died), so nothing schedules its own next run through a channel-layer
message that can be lost.

While a task runs, its lease is renewed every third of BRIDGE_TASK_LEASE from
another thread: a task of a live worker is never taken over however long it
runs, and a task of a killed worker is taken over within one lease.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Min
from django.utils import timezone

from bridge.models import Task
from bridge.tasks.runner import claim_one, lease_renew, requeue_expired, run_claimed

logger = logging.getLogger(__name__)


def _next_due() -> datetime | None:
    """When there may be work next: a pending task falls due, or a running one's lease ends."""
    due = Task.objects.filter(state=Task.State.PENDING).aggregate(at=Min("due_at"))["at"]
    lease = Task.objects.filter(state=Task.State.RUNNING).aggregate(at=Min("locked_until"))["at"]
    times = [t for t in (due, lease) if t is not None]
    return min(times) if times else None


def _renew(pk: int) -> None:
    # A thread of its own (the task holds the database thread), its own connection.
    try:
        lease_renew(pk=pk)
    finally:
        connection.close()


class TaskScheduler:
    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self.ran = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: run every due task, then sleep until woken or the next one is due."""
        while True:
            self._wake.clear()
            await database_sync_to_async(requeue_expired)()
            while True:
                task = await database_sync_to_async(claim_one)()
                if task is None:
                    break
                await self._run_with_heartbeat(task)
                self.ran += 1
            due = await database_sync_to_async(_next_due)()
            await self._sleep_until(due)

    async def _run_with_heartbeat(self, task: Task) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(task.pk), name=f"lease of task {task.pk}")
        try:
            await database_sync_to_async(run_claimed)(task)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _heartbeat(self, pk: int) -> None:
        interval = settings.BRIDGE_TASK_LEASE / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await sync_to_async(_renew, thread_sensitive=False)(pk)
            except DatabaseError:  # a missed renewal: the next one may work; the lease has slack
                logger.warning("could not renew the lease of task %s", pk, exc_info=True)

    async def _sleep_until(self, due: datetime | None) -> None:
        timeout = float(settings.BRIDGE_RECONCILE_INTERVAL)
        if due is not None:
            timeout = min(timeout, max(0.0, (due - timezone.now()).total_seconds()) + 0.05)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
