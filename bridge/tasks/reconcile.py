"""What a lost wake-up or a stopped worker left behind, found again."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction

from bridge.models import Room
from bridge.services.presence import presence_sweep
from bridge.services.tasks import task_schedule, tasks_prune
from bridge.tasks.runner import requeue_expired

RETENTION_EVERY = timedelta(hours=1)


def reconcile() -> None:
    """Requeue tasks of dead workers, expire presence of dead servers, schedule retention,
    prune old finished tasks."""
    requeue_expired()
    presence_sweep()
    tasks_prune()
    default_days = settings.BRIDGE_RETENTION_DAYS
    for room in Room.objects.only("id", "retention_days"):
        days = room.retention_days or default_days
        if days:
            with transaction.atomic():
                task_schedule(
                    name="retention",
                    key=f"retention:{room.pk}",
                    args={"room": room.pk, "days": days},
                    delay=RETENTION_EVERY,
                )
