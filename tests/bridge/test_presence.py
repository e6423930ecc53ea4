from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from bridge.models import Presence
from bridge.names import room_group
from bridge.services.identities import identity_get_or_create
from bridge.services.presence import presence_join, presence_list, presence_renew, presence_sweep
from bridge.services.rooms import room_create

pytestmark = pytest.mark.django_db(transaction=True)


def _setup() -> tuple[object, object, object]:
    room = room_create(slug="lobby")
    alice = identity_get_or_create(kind="user", name="alice")
    device = identity_get_or_create(kind="device", name="sensor-1")
    presence_join(room=room, identity=alice, connection="dead-server!1", ttl=timedelta(seconds=90))
    presence_join(room=room, identity=device, connection="mqtt:sensor-1")
    return room, alice, device


async def test_presence_of_a_server_that_stopped_renewing_expires_with_an_offline_event() -> None:
    room, alice, device = await database_sync_to_async(_setup)()
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(room_group("lobby"), listener)
    # The server died: nobody renews; time passes beyond the expiry.
    await database_sync_to_async(Presence.objects.filter(connection="dead-server!1").update)(expires=timezone.now() - timedelta(seconds=1))
    assert await database_sync_to_async(presence_list)(room=room) == [device]
    assert await database_sync_to_async(presence_sweep)() == 1
    event = await layer.receive(listener)
    assert event["type"] == "room.presence" and event["state"] == "offline"
    assert event["who"] == {"kind": "user", "name": "alice"}
    # Devices have no expiry: their presence follows their status and Last Will.
    assert await database_sync_to_async(lambda: list(Presence.objects.values_list("connection", flat=True)))() == ["mqtt:sensor-1"]


async def test_a_renewed_connection_stays_online() -> None:
    room, alice, device = await database_sync_to_async(_setup)()
    await database_sync_to_async(Presence.objects.filter(connection="dead-server!1").update)(expires=timezone.now() + timedelta(seconds=1))
    await database_sync_to_async(presence_renew)(connection="dead-server!1", ttl=timedelta(seconds=90))
    assert await database_sync_to_async(presence_sweep)() == 0
    assert {i.name for i in await database_sync_to_async(presence_list)(room=room)} == {"alice", "sensor-1"}
