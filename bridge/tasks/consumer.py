"""The `bridge-tasks` channel's consumer: a wake-up message runs what is due."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Min
from django.utils import timezone

from bridge.models import Task
from bridge.tasks.reconcile import reconcile
from bridge.tasks.runner import run_due_tasks

logger = logging.getLogger(__name__)


def _run_and_next_due() -> datetime | None:
    run_due_tasks()
    return Task.objects.filter(state=Task.State.PENDING).aggregate(due=Min("due_at"))["due"]


def _sweep() -> datetime | None:
    reconcile()
    return _run_and_next_due()


class TaskConsumer(AsyncConsumer):
    """Routed by `ChannelNameRouter`; runs in `runworker bridge-tasks`.

    Async with the database work in a thread: channels' worker hands a plain
    lambda as `send`, which a SyncConsumer would wrap (and warn about). After
    each run it sets a timer for the next task that falls due before the next
    reconciler sweep, so delayed tasks (coalesced room statistics) run on time.
    """

    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0

    async def tasks_wake(self, message: dict[str, Any]) -> None:
        self._wake_at(await database_sync_to_async(_run_and_next_due)())

    async def tasks_reconcile(self, message: dict[str, Any]) -> None:
        self._wake_at(await database_sync_to_async(_sweep)())

    def _wake_at(self, due: datetime | None) -> None:
        if due is None:
            return
        delay = max(0.0, (due - timezone.now()).total_seconds())
        if delay > settings.BRIDGE_RECONCILE_INTERVAL:
            return  # the reconciler will find it
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self.timer is not None and not self.timer.cancelled() and self.timer_due <= when:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = when
        self.timer = loop.call_at(when + 0.05, self._send_wake)

    def _send_wake(self) -> None:
        self.timer = None
        asyncio.ensure_future(
            self.channel_layer.send(settings.BRIDGE_TASKS_CHANNEL, {"type": "tasks.wake"})
        )
