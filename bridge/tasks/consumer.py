"""The `bridge-tasks` channel's consumer: a wake-up message wakes the worker's task loop."""

from __future__ import annotations

import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async

from bridge.tasks.runner import run_due_tasks

logger = logging.getLogger(__name__)


class TaskConsumer(AsyncConsumer):
    """Routed by `ChannelNameRouter`; runs in `runworker bridge-tasks`.

    `BridgeWorker` puts its `TaskScheduler` in the scope as "tasks": a wake-up
    only sets its event, and the scheduler runs what is due, then sleeps until
    the next task falls due. Under channels' plain worker (no scheduler), a
    wake-up runs the due tasks here.
    """

    # No channel of its own: it only hears the bridge-tasks channel, and a private
    # channel's receive would be one more thing a Redis outage could end.
    channel_layer_alias = None

    async def tasks_wake(self, message: dict[str, Any]) -> None:
        scheduler = self.scope.get("tasks")
        if scheduler is not None:
            scheduler.wake()
        else:
            await database_sync_to_async(run_due_tasks)()

    async def tasks_reconcile(self, message: dict[str, Any]) -> None:
        """Older workers asked for sweeps this way; the reconciler now runs on its own timer."""
        await self.tasks_wake(message)
