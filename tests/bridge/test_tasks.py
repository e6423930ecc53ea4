from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from bridge.models import Room, Task
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import message_store
from bridge.services.rooms import room_create
from bridge.services.tasks import task_schedule, tasks_prune
from bridge.tasks.reconcile import reconcile
from bridge.tasks.registry import task
from bridge.tasks.runner import claim_one, lease_renew, requeue_expired, run_due_tasks

CALLS: list[int] = []


@task("test_counter")
def counter(*, n: int) -> None:
    CALLS.append(n)


@task("test_fails")
def fails() -> None:
    raise RuntimeError("boom")


@pytest.mark.django_db
def test_room_stats_task_updates_the_room() -> None:
    room = room_create(slug="lobby")
    alice = identity_get_or_create(kind="user", name="alice")
    for i in range(3):
        message_store(room=room, sender=alice, origin="web", text=str(i))
    Task.objects.update(due_at=timezone.now())
    assert run_due_tasks() == 1
    room.refresh_from_db()
    assert room.message_count == 3 and room.senders_24h == 1 and room.last_message_at is not None
    assert Task.objects.get().state == Task.State.DONE


@pytest.mark.django_db
def test_task_not_due_yet_waits() -> None:
    task_schedule(name="test_counter", key="later", args={"n": 1}, delay=timedelta(hours=1))
    assert run_due_tasks() == 0


@pytest.mark.django_db
def test_failing_task_is_retried_then_failed() -> None:
    task_schedule(name="test_fails", key="f")
    for _ in range(5):
        Task.objects.update(due_at=timezone.now())
        run_due_tasks()
    failed = Task.objects.get()
    assert failed.state == Task.State.FAILED and failed.attempts == 5
    assert "boom" in failed.last_error


@pytest.mark.django_db
def test_expired_lease_is_requeued() -> None:
    task_schedule(name="test_counter", key="k", args={"n": 7})
    Task.objects.update(state=Task.State.RUNNING, locked_until=timezone.now() - timedelta(seconds=1))
    assert requeue_expired() == 1
    assert Task.objects.get().state == Task.State.PENDING


@pytest.mark.django_db
def test_reconcile_schedules_retention_for_rooms_that_want_it() -> None:
    Room.objects.create(slug="keep")
    Room.objects.create(slug="short", retention_days=7)
    reconcile()
    assert list(Task.objects.values_list("name", "key")) == [("retention", f"retention:{Room.objects.get(slug='short').pk}")]

# Several workers side by side: tests/websocket/test_redis_processes.py runs two
# runworker processes over the same tasks.


@pytest.mark.django_db
def test_retention_deletes_only_old_messages() -> None:
    from bridge.models import Message
    from bridge.tasks.builtin import retention

    room = room_create(slug="short")
    alice = identity_get_or_create(kind="user", name="alice")
    old = message_store(room=room, sender=alice, origin="web", text="old").message
    message_store(room=room, sender=alice, origin="web", text="new")
    Message.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=8))
    retention(room=room.pk, days=7)
    assert list(Message.objects.values_list("text", flat=True)) == ["new"]


@pytest.mark.django_db
@override_settings(BRIDGE_TASK_KEEP_HOURS=168)
def test_finished_tasks_are_pruned_after_the_setting() -> None:
    old = timezone.now() - timedelta(days=8)
    for key, state, finished in (("old-done", "done", old), ("old-failed", "failed", old),
                                 ("new-done", "done", timezone.now()), ("old-pending", "pending", None)):
        Task.objects.create(name="test_counter", key=key, state=state, due_at=old, finished_at=finished)
    assert tasks_prune() == 2
    assert set(Task.objects.values_list("key", flat=True)) == {"new-done", "old-pending"}
    with override_settings(BRIDGE_TASK_KEEP_HOURS=0):
        Task.objects.update(finished_at=old)
        assert tasks_prune() == 0


@pytest.mark.django_db
@override_settings(BRIDGE_TASK_LEASE=60)
def test_a_running_task_keeps_its_lease_while_renewed() -> None:
    task_schedule(name="test_counter", key="k", args={"n": 1})
    claimed = claim_one()
    assert claimed is not None
    Task.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    assert lease_renew(pk=claimed.pk)
    assert requeue_expired() == 0  # renewed: still this worker's
    Task.objects.update(state=Task.State.DONE)
    assert not lease_renew(pk=claimed.pk)  # finished: a late heartbeat changes nothing
