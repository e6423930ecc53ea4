from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import override_settings

from bridge.models import Room, Task
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import message_store
from bridge.services.rooms import room_create
from bridge.tasks.worker import BridgeWorker
from project.asgi import application


@pytest.mark.django_db(transaction=True)
@override_settings(BRIDGE_RECONCILE_INTERVAL=60)
async def test_a_delayed_task_runs_when_due_without_waiting_for_the_reconciler() -> None:
    room = await database_sync_to_async(room_create)(slug="lobby")
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    worker = BridgeWorker(application=application, channels=["bridge-tasks"], channel_layer=get_channel_layer())
    running = asyncio.gather(worker.application_checker(), worker.handle())
    try:
        await asyncio.sleep(0.2)
        # Stats are coalesced: the task falls due 2 s after the message.
        await database_sync_to_async(message_store)(room=room, sender=alice, origin="web", text="hi")
        for _ in range(100):
            await asyncio.sleep(0.1)
            if await database_sync_to_async(lambda: Room.objects.get(pk=room.pk).message_count)() == 1:
                break
        state = await database_sync_to_async(lambda: list(Task.objects.values_list("state", "runs")))()
        assert state == [("done", 1)]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
