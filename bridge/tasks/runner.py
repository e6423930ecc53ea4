"""Claim due tasks and run them. Several workers may run this side by side.

A claim is one conditional UPDATE (pending -> running with a lease), so two
workers never run one task at once on any database. A task whose worker died
is pending again once its lease runs out.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from bridge.models import Task
from bridge.tasks import builtin  # noqa: F401 - registers the built-in tasks
from bridge.tasks.registry import run_task, task_func

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
CLAIM_BATCH = 20
# Set on SIGTERM (graceful stop): the task in hand finishes, nothing more is claimed.
STOPPING = threading.Event()
# Held while this process runs a task (reentrant: run_due_tasks holds it around run_claimed).
_BUSY = threading.RLock()


def claim_one() -> Task | None:
    """Take the next due task with a lease (one conditional UPDATE), or None."""
    if STOPPING.is_set():
        return None  # stopping (SIGTERM): claim nothing more
    now = timezone.now()
    lease = now + timedelta(seconds=settings.BRIDGE_TASK_LEASE)
    candidates = (
        Task.objects.filter(state=Task.State.PENDING, due_at__lte=now)
        .order_by("due_at")
        .values_list("pk", flat=True)[:CLAIM_BATCH]
    )
    for pk in candidates:
        claimed = Task.objects.filter(pk=pk, state=Task.State.PENDING).update(
            state=Task.State.RUNNING, locked_until=lease
        )
        if claimed:
            return Task.objects.get(pk=pk)
    return None


def lease_renew(*, pk: int) -> bool:
    """The heartbeat of a running task: push its lease forward (False if no longer ours)."""
    lease = timezone.now() + timedelta(seconds=settings.BRIDGE_TASK_LEASE)
    return bool(
        Task.objects.filter(pk=pk, state=Task.State.RUNNING).update(locked_until=lease)
    )


def requeue_expired() -> int:
    """Running tasks whose lease ran out (their worker died) become pending again."""
    now = timezone.now()
    expired = Task.objects.filter(state=Task.State.RUNNING, locked_until__lt=now)
    count = 0
    for task in expired:
        # If a newer pending task with the same key exists, this one is superseded.
        if Task.objects.filter(key=task.key, state=Task.State.PENDING).exists():
            count += Task.objects.filter(pk=task.pk, state=Task.State.RUNNING).update(
                state=Task.State.DONE, finished_at=now, last_error="superseded after lease expiry"
            )
        else:
            count += Task.objects.filter(
                Q(pk=task.pk) & Q(state=Task.State.RUNNING) & Q(locked_until__lt=now)
            ).update(state=Task.State.PENDING, locked_until=None)
    if count:
        logger.warning("requeued %s task(s) whose worker stopped before finishing", count)
    return count


def run_claimed(task: Task) -> None:
    """Run a task this worker claimed; done, or pending again (failed after MAX_ATTEMPTS)."""
    with _BUSY:
        func = task_func(task.name)
        now = timezone.now()
        if func is None:
            logger.error("task %s has unknown name %r; marking failed", task.pk, task.name)
            Task.objects.filter(pk=task.pk).update(
                state=Task.State.FAILED, finished_at=now, last_error=f"unknown task {task.name!r}"
            )
            return
        try:
            with transaction.atomic():
                run_task(task.name, task.args)
                Task.objects.filter(pk=task.pk).update(
                    state=Task.State.DONE,
                    finished_at=timezone.now(),
                    runs=task.runs + 1,
                    attempts=task.attempts + 1,
                )
        except Exception as exc:
            attempts = task.attempts + 1
            failed = attempts >= MAX_ATTEMPTS
            logger.exception("task %s (%s) failed, attempt %s", task.pk, task.name, attempts)
            Task.objects.filter(pk=task.pk).update(
                state=Task.State.FAILED if failed else Task.State.PENDING,
                attempts=attempts,
                last_error=f"{type(exc).__name__}: {exc}",
                locked_until=None,
                due_at=now + timedelta(seconds=2**attempts),
                finished_at=now if failed else None,
            )


def run_due_tasks(*, limit: int = 1000) -> int:
    """Run what is due now (until STOPPING); returns how many tasks ran."""
    ran = 0
    with _BUSY:
        while ran < limit and not STOPPING.is_set():
            task = claim_one()
            if task is None:
                break
            run_claimed(task)
            ran += 1
    return ran


def wait_idle(timeout: float) -> bool:
    """Whether the task in hand (if any) finished within `timeout` seconds."""
    if not _BUSY.acquire(timeout=timeout):
        return False
    _BUSY.release()
    return True
