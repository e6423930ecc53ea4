"""The `bridge-tasks` channel's consumer: a wake-up message runs what is due."""

from __future__ import annotations

import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async

from bridge.tasks.reconcile import reconcile
from bridge.tasks.runner import run_due_tasks

logger = logging.getLogger(__name__)


def _sweep() -> None:
    reconcile()
    run_due_tasks()


class TaskConsumer(AsyncConsumer):
    """Routed by `ChannelNameRouter`; runs in `runworker bridge-tasks`.

    Async with the database work in a thread: channels' worker hands a plain
    lambda as `send`, which a SyncConsumer would wrap (and warn about).
    """

    async def tasks_wake(self, message: dict[str, Any]) -> None:
        ran = await database_sync_to_async(run_due_tasks)()
        if ran:
            logger.debug("ran %s task(s)", ran)

    async def tasks_reconcile(self, message: dict[str, Any]) -> None:
        await database_sync_to_async(_sweep)()
