"""Durable tasks: recorded with their cause, woken through the channel layer."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge import layer, sql
from bridge.models import Task

logger = logging.getLogger(__name__)


def task_schedule(
    *, name: str, key: str, args: dict[str, Any] | None = None, delay: timedelta | None = None
) -> bool:
    """Record a task unless one with `key` is already pending. Returns whether it was new.

    Call it inside the transaction of whatever caused the task, then wake the
    workers after commit (`transaction.on_commit(tasks_wake)`).
    """
    # Hand-written (see bridge/sql.py): every stored batch asks this.
    if sql.fetchone(
        f"SELECT 1 FROM {sql.table(Task)} WHERE {sql.column(Task, 'key')} = %s"
        f" AND {sql.column(Task, 'state')} = %s LIMIT 1",
        [key, Task.State.PENDING.value],
    ):
        return False
    due = timezone.now() + (delay or timedelta(0))
    try:
        with transaction.atomic():
            Task.objects.create(name=name, key=key, args=args or {}, due_at=due)
    except IntegrityError:
        return False  # another writer recorded the same pending task first
    return True


def tasks_prune(*, now: datetime | None = None) -> int:
    """Delete done and failed tasks finished more than BRIDGE_TASK_KEEP_HOURS ago (0 keeps)."""
    hours = settings.BRIDGE_TASK_KEEP_HOURS
    if not hours:
        return 0
    cutoff = (now or timezone.now()) - timedelta(hours=hours)
    deleted, _ = Task.objects.filter(
        state__in=[Task.State.DONE, Task.State.FAILED], finished_at__lt=cutoff
    ).delete()
    return deleted


async def atasks_wake() -> None:
    """Nudge a worker. Losing this message only delays work: the reconciler finds it."""
    if not await layer.send(settings.BRIDGE_TASKS_CHANNEL, {"type": "tasks.wake"}):
        logger.info("could not wake the task workers; the reconciler will")


def tasks_wake() -> None:
    async_to_sync(atasks_wake)()
